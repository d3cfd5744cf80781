//! One WebSocket connection: a reader that forwards binary messages to the owning shard, and a writer
//! that sends what the shard queues for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use proto::{DocId, UserId};
use shard::{ConnId, ConnOut, ConnSink, ShardHandle};
use tokio::sync::Mutex;

use crate::server::Gateway;

/// What the pre-upgrade checks decided about a connection.
pub struct ConnParams {
    /// The connection's number.
    pub conn: ConnId,
    /// Its document.
    pub doc: DocId,
    /// Its user.
    pub actor: UserId,
    /// Whether its updates are accepted.
    pub can_write: bool,
}

type Io = TokioIo<Upgraded>;
type Writer = Arc<Mutex<fastwebsockets::WebSocketWrite<tokio::io::WriteHalf<Io>>>>;

/// Close code for a WebSocket protocol error detected by the frame reader.
fn close_code_for(e: &WebSocketError) -> Option<u16> {
    match e {
        WebSocketError::FrameTooLarge => Some(1009),
        WebSocketError::InvalidUTF8 => Some(1007),
        WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) => None,
        // Already answered with 1002 by the obligated send.
        WebSocketError::InvalidCloseCode => None,
        _ => Some(1002),
    }
}

async fn send_close(w: &Writer, code: u16, reason: &str, timeout: Duration) {
    let mut w = w.lock().await;
    let _ = tokio::time::timeout(timeout, w.write_frame(Frame::close(code, reason.as_bytes()))).await;
}

/// Runs a connection until either side closes it.
pub async fn run(gw: Arc<Gateway>, shard: ShardHandle, p: ConnParams, mut ws: WebSocket<Io>) {
    let max = gw.cfg.max_message_bytes;
    // The frame reader's own cap (one frame) must admit a full message plus its header.
    ws.set_max_message_size(max.saturating_add(16));
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let write_timeout = Duration::from_secs(gw.cfg.write_timeout_secs.max(1));
    let (mut reader, writer) = ws.split(tokio::io::split);
    let writer: Writer = Arc::new(Mutex::new(writer));
    let (sink, mut out, kill) = ConnSink::new(gw.cfg.outbound_queue);
    gw.metrics.connections.inc();
    if !shard.open(p.conn, p.doc.clone(), p.actor.clone(), p.can_write, sink).await {
        send_close(&writer, 1011, "shard unavailable", write_timeout).await;
        gw.metrics.connections.dec();
        return;
    }

    let reader_task = {
        let writer = writer.clone();
        let shard = shard.clone();
        let gw = gw.clone();
        let conn = p.conn;
        tokio::spawn(async move {
            let mut partial: Option<Vec<u8>> = None;
            loop {
                let mut obligated = |frame: Frame<'static>| {
                    let writer = writer.clone();
                    async move {
                        let mut w = writer.lock().await;
                        w.write_frame(frame).await
                    }
                };
                let frame = match reader.read_frame(&mut obligated).await {
                    Ok(f) => f,
                    Err(e) => {
                        if let Some(code) = close_code_for(&e) {
                            gw.metrics.closes.with_label_values(&[&code.to_string()]).inc();
                            send_close(&writer, code, "protocol error", write_timeout).await;
                        }
                        break;
                    }
                };
                let message = match frame.opcode {
                    OpCode::Binary if frame.fin => {
                        if partial.is_some() {
                            send_close(&writer, 1002, "expected continuation", write_timeout).await;
                            break;
                        }
                        frame.payload.to_vec()
                    }
                    OpCode::Binary => {
                        if partial.is_some() {
                            send_close(&writer, 1002, "expected continuation", write_timeout).await;
                            break;
                        }
                        partial = Some(frame.payload.to_vec());
                        continue;
                    }
                    OpCode::Continuation => {
                        let Some(buf) = partial.as_mut() else {
                            send_close(&writer, 1002, "unexpected continuation", write_timeout).await;
                            break;
                        };
                        if buf.len() + frame.payload.len() > max {
                            gw.metrics.closes.with_label_values(&["1009"]).inc();
                            send_close(&writer, 1009, "message too big", write_timeout).await;
                            break;
                        }
                        buf.extend_from_slice(&frame.payload);
                        if !frame.fin {
                            continue;
                        }
                        partial.take().unwrap_or_default()
                    }
                    OpCode::Text => {
                        gw.metrics.closes.with_label_values(&["1003"]).inc();
                        send_close(&writer, 1003, "binary messages only", write_timeout).await;
                        break;
                    }
                    OpCode::Close => break,
                    OpCode::Ping | OpCode::Pong => continue,
                };
                if message.len() > max {
                    gw.metrics.closes.with_label_values(&["1009"]).inc();
                    send_close(&writer, 1009, "message too big", write_timeout).await;
                    break;
                }
                if !shard.message(conn, message).await {
                    send_close(&writer, 1011, "shard unavailable", write_timeout).await;
                    break;
                }
            }
            shard.close(conn).await;
        })
    };

    // Writer: runs until the shard drops or closes this connection.
    loop {
        let item = out.recv().await;
        let killed = kill.load(Ordering::Relaxed);
        match item {
            Some(ConnOut::Frame(msg)) if killed == 0 => {
                let mut w = writer.lock().await;
                let frame = Frame::new(true, OpCode::Binary, None, Payload::Borrowed(&msg));
                match tokio::time::timeout(write_timeout, w.write_frame(frame)).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            Some(ConnOut::Close(code, reason)) => {
                send_close(&writer, code, &reason, write_timeout).await;
                break;
            }
            _ => {
                let code = if killed == 0 { 1001 } else { killed };
                let reason = if code == 1008 { "slow consumer" } else { "closing" };
                send_close(&writer, code, reason, write_timeout).await;
                break;
            }
        }
    }
    // Give the client a moment to answer our close frame, then tear the reader down.
    let abort = reader_task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), reader_task).await.is_err() {
        abort.abort();
        shard.close(p.conn).await;
    }
    gw.metrics.connections.dec();
}
