//! A minimal WebSocket client for load generation: fastwebsockets over hyper's client handshake,
//! split into a reader (answers pings) and a shared writer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketRead, WebSocketWrite};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::sync::Mutex;

type Io = TokioIo<Upgraded>;
pub type Reader = WebSocketRead<tokio::io::ReadHalf<Io>>;
pub type Writer = Arc<Mutex<WebSocketWrite<tokio::io::WriteHalf<Io>>>>;

struct Spawner;

impl<Fut> hyper::rt::Executor<Fut> for Spawner
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// A `ws://host:port/path` URL split into its parts.
#[derive(Debug, Clone)]
pub struct WsUrl {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl WsUrl {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("only ws:// URLs are supported: {url}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{host}: expected IP:PORT"))?;
        Ok(Self {
            addr,
            host: host.to_string(),
            path: path.to_string(),
        })
    }
}

/// Opens a WebSocket, optionally from a chosen local IP (to spread ports over 127.0.0.x).
pub async fn connect(
    url: &WsUrl,
    path: &str,
    local: Option<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<(Reader, Writer)> {
    let fut = async {
        let sock = if url.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local {
            sock.bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding {ip}"))?;
        }
        let stream = sock.connect(url.addr).await?;
        stream.set_nodelay(true)?;
        let req = Request::builder()
            .method("GET")
            .uri(path)
            .header("Host", &url.host)
            .header("Upgrade", "websocket")
            .header("Connection", "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())?;
        let (mut ws, _resp) = fastwebsockets::handshake::client(&Spawner, req, stream)
            .await
            .map_err(|e| anyhow!("websocket handshake: {e}"))?;
        ws.set_auto_pong(false);
        ws.set_auto_close(false);
        ws.set_max_message_size(256 << 20);
        let (r, w) = ws.split(tokio::io::split);
        anyhow::Ok((r, Arc::new(Mutex::new(w))))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("connect timed out after {timeout:?}"))?
}

/// What [`read`] returns: a data message, or the end of the connection.
pub enum Msg {
    Binary(Vec<u8>),
    Text(Vec<u8>),
    Closed(Option<u16>),
}

/// Reads the next data message, answering pings and close frames through `writer`.
pub async fn read(reader: &mut Reader, writer: &Writer) -> Msg {
    loop {
        let mut ignore = |_f: Frame<'_>| async { Ok::<(), WebSocketError>(()) };
        let frame = match reader.read_frame(&mut ignore).await {
            Ok(f) => f,
            Err(_) => return Msg::Closed(None),
        };
        match frame.opcode {
            OpCode::Binary => return Msg::Binary(frame.payload.to_vec()),
            OpCode::Text => return Msg::Text(frame.payload.to_vec()),
            OpCode::Ping => {
                let data = frame.payload.to_vec();
                let mut w = writer.lock().await;
                let _ = w.write_frame(Frame::pong(Payload::Owned(data))).await;
            }
            OpCode::Close => {
                let code = (frame.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                let mut w = writer.lock().await;
                let _ = w.write_frame(Frame::close(code.unwrap_or(1000), b"")).await;
                return Msg::Closed(code);
            }
            _ => {}
        }
    }
}

/// Sends one binary message.
pub async fn send(writer: &Writer, bytes: Vec<u8>) -> anyhow::Result<()> {
    let mut w = writer.lock().await;
    w.write_frame(Frame::binary(Payload::Owned(bytes)))
        .await
        .map_err(|e| anyhow!("send: {e}"))
}

/// Sends one text message.
pub async fn send_text(writer: &Writer, text: String) -> anyhow::Result<()> {
    let mut w = writer.lock().await;
    w.write_frame(Frame::text(Payload::Owned(text.into_bytes())))
        .await
        .map_err(|e| anyhow!("send: {e}"))
}

pub async fn ping(writer: &Writer) -> anyhow::Result<()> {
    let mut w = writer.lock().await;
    w.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"")))
        .await
        .map_err(|e| anyhow!("ping: {e}"))
}

pub async fn close(writer: &Writer) {
    let mut w = writer.lock().await;
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        w.write_frame(Frame::close(1000, b"bench done")),
    )
    .await;
}
