//! A WebSocket after the upgrade, whatever it speaks: a reader that reassembles messages, enforces
//! RFC 6455, the message size and the per-socket rate, and hands each message to an [`Inbound`]
//! (the y-websocket endpoint or a `/v1` session); and a writer that sends what the shards (and, on
//! `/v1`, the session) queue for it, pings, and closes.
//!
//! fastwebsockets' `read_frame` is not cancel-safe, so the reader never races it in a `select!`; it
//! is cancelled only when the connection is being torn down anyway (idle timeout, draining).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use shard::handle::{ConnOut, ConnQueue, ConnSink};
use tokio::sync::Mutex;

use crate::metrics::Metrics;
use crate::rate::TokenBucket;
use crate::state::Gateway;

pub(crate) type Io = TokioIo<Upgraded>;
type Sock = crate::batch_io::BatchWriter<tokio::io::WriteHalf<Io>>;
type Writer = Arc<Mutex<fastwebsockets::WebSocketWrite<Sock>>>;

/// Writes one frame and sends it (the socket's writer buffers until flushed).
async fn send_now(
    w: &mut fastwebsockets::WebSocketWrite<Sock>,
    frame: Frame<'_>,
) -> Result<(), WebSocketError> {
    w.write_frame(frame).await?;
    w.flush().await
}

/// Close code for a WebSocket protocol error detected by the frame reader.
fn close_code_for(e: &WebSocketError) -> Option<u16> {
    match e {
        WebSocketError::FrameTooLarge => Some(1009),
        WebSocketError::InvalidUTF8 => Some(1007),
        WebSocketError::ConnectionClosed
        | WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_) => None,
        // Already answered with 1002 by the obligated send.
        WebSocketError::InvalidCloseCode => None,
        _ => Some(1002),
    }
}

/// The connection's write half plus whether a close frame has gone out (RFC 6455 allows one).
#[derive(Clone)]
pub(crate) struct Out {
    writer: Writer,
    closed: Arc<AtomicBool>,
    metrics: Metrics,
}

impl Out {
    /// Sends the socket's one close frame (later calls do nothing), counted by code.
    pub(crate) async fn close(&self, code: u16, reason: &str, timeout: Duration) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.metrics.closed(code);
        let mut w = self.writer.lock().await;
        let _ = tokio::time::timeout(
            timeout,
            send_now(&mut w, Frame::close(code, reason.as_bytes())),
        )
        .await;
    }
}

/// Whether the client masked the frame (fastwebsockets keeps the key but does not expose it directly;
/// the header it would re-encode carries the mask bit).
fn is_masked(frame: &mut Frame<'_>) -> bool {
    let mut head = [0u8; 16];
    frame.fmt_head(&mut head);
    head[1] & 0x80 != 0
}

fn reason_for(code: u16) -> &'static str {
    match code {
        1001 => "going away",
        1002 => "protocol error",
        1003 => "binary messages only",
        1007 => "invalid payload",
        1008 => "slow consumer",
        1009 => "message too big",
        _ => "closing",
    }
}

/// Most frames (and bytes) the writer sends in one flush.
const MAX_BATCH_FRAMES: usize = 256;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What a socket's reader hands each complete message to.
pub(crate) trait Inbound: Send {
    /// One complete message (`text`: a text message, already checked to be UTF-8). `Err` closes the
    /// socket with that code and reason.
    fn message(
        &mut self,
        text: bool,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), (u16, &'static str)>> + Send;
    /// The socket is gone (after the last message).
    fn finish(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// A socket after the upgrade: its read half, its write half and its outbound queue.
pub(crate) struct Socket {
    pub reader: fastwebsockets::WebSocketRead<tokio::io::ReadHalf<Io>>,
    pub out: Out,
    pub queue: ConnQueue,
    /// The shard's (and, on `/v1`, the gateway's) handle on the outbound queue.
    pub sink: ConnSink,
    pub write_timeout: Duration,
}

impl Socket {
    pub fn new(gw: &Gateway, mut ws: WebSocket<Io>) -> Self {
        let max = gw.cfg.max_message_bytes;
        // The frame reader's own cap (one frame) must admit a full message plus its header.
        ws.set_max_message_size(max.saturating_add(16));
        ws.set_auto_close(true);
        ws.set_auto_pong(true);
        let (reader, writer) = ws.split(|io| {
            let (r, w) = tokio::io::split(io);
            (r, crate::batch_io::BatchWriter::new(w))
        });
        let (sink, queue) = ConnSink::new(gw.cfg.outbound_queue, gw.cfg.outbound_queue_bytes);
        Self {
            reader,
            out: Out {
                writer: Arc::new(Mutex::new(writer)),
                closed: Arc::new(AtomicBool::new(false)),
                metrics: gw.metrics.clone(),
            },
            queue,
            sink,
            write_timeout: Duration::from_secs(gw.cfg.write_timeout_secs.max(1)),
        }
    }
}

/// Reads frames until the client closes, the socket fails, or `inbound` refuses a message; assembles
/// fragmented messages, enforces the message size and the per-socket rate, and answers protocol
/// errors with their close codes. Text messages are refused (1003) unless `allow_text`.
pub(crate) async fn read_loop<I: Inbound>(
    gw: Arc<Gateway>,
    mut reader: fastwebsockets::WebSocketRead<tokio::io::ReadHalf<Io>>,
    out_half: Out,
    allow_text: bool,
    mut inbound: I,
) {
    let max = gw.cfg.max_message_bytes;
    let write_timeout = Duration::from_secs(gw.cfg.write_timeout_secs.max(1));
    let idle_timeout = Duration::from_secs(gw.cfg.idle_timeout_secs.max(1));
    let mut partial: Option<(bool, Vec<u8>)> = None;
    let mut bucket = TokenBucket::new(
        tokio::time::Instant::now().into_std(),
        gw.cfg.max_messages_per_sec,
        gw.cfg.message_burst,
    );
    // Set when this side closed because of the client's input: keep reading (and discarding)
    // until the client's close frame or EOF, so the close frame is not lost to a TCP reset
    // caused by unread data.
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        let mut obligated = |frame: Frame<'static>| {
            let writer = out_half.writer.clone();
            let closed = out_half.closed.clone();
            async move {
                if frame.opcode == OpCode::Close && closed.swap(true, Ordering::SeqCst) {
                    return Ok(());
                }
                // Lock and write under one deadline: a client that never reads must not
                // wedge the reader (and through the lock, the writer) forever.
                let write = async {
                    let mut w = writer.lock().await;
                    send_now(&mut w, frame).await
                };
                // Boxed: this future lives inside the read future, which is alive (and
                // sized for it) the whole time a socket idles.
                match Box::pin(tokio::time::timeout(write_timeout, write)).await {
                    Ok(r) => r,
                    Err(_) => Err(WebSocketError::ConnectionClosed),
                }
            }
        };
        let read = match draining {
            // Cancelling a read is fine here: the connection is being torn down.
            Some(until) => {
                match tokio::time::timeout_at(until, reader.read_frame(&mut obligated)).await {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
            // Cancelling on idle timeout is fine for the same reason: the socket is dropped.
            None => {
                match tokio::time::timeout(idle_timeout, reader.read_frame(&mut obligated)).await {
                    Ok(r) => r,
                    Err(_) => {
                        Box::pin(out_half.close(1001, "idle timeout", write_timeout)).await;
                        break;
                    }
                }
            }
        };
        let frame = match read {
            Ok(f) => f,
            Err(e) => {
                if let (Some(code), None) = (close_code_for(&e), draining) {
                    Box::pin(out_half.close(code, reason_for(code), write_timeout)).await;
                }
                break;
            }
        };
        if draining.is_some() {
            if frame.opcode == OpCode::Close {
                break;
            }
            continue;
        }
        let mut frame = frame;
        // RFC 6455 §5.1: a server must close on a frame from the client that is not masked.
        let masked = is_masked(&mut frame);
        let message = match frame.opcode {
            _ if !masked => Err(1002),
            OpCode::Text if !allow_text => Err(1003),
            OpCode::Binary | OpCode::Text if partial.is_some() => Err(1002),
            OpCode::Binary | OpCode::Text if frame.fin => {
                Ok((frame.opcode == OpCode::Text, frame.payload.to_vec()))
            }
            OpCode::Binary | OpCode::Text => {
                partial = Some((frame.opcode == OpCode::Text, frame.payload.to_vec()));
                continue;
            }
            OpCode::Continuation => match partial.as_mut() {
                None => Err(1002),
                Some((_, buf)) if buf.len() + frame.payload.len() > max => Err(1009),
                Some((_, buf)) => {
                    buf.extend_from_slice(&frame.payload);
                    if !frame.fin {
                        continue;
                    }
                    Ok(partial.take().unwrap_or_default())
                }
            },
            OpCode::Close => break,
            OpCode::Ping | OpCode::Pong => continue,
        };
        let message = match message {
            Ok((_, m)) if m.len() > max => Err(1009),
            // RFC 6455 §8.1: a text message that is not UTF-8 fails the connection (1007).
            Ok((true, m)) if std::str::from_utf8(&m).is_err() => Err(1007),
            other => other,
        };
        let failed = match message {
            Ok((text, m)) => {
                if let Some(until) = bucket.take(tokio::time::Instant::now().into_std()) {
                    Box::pin(tokio::time::sleep_until(until.into())).await;
                }
                match Box::pin(inbound.message(text, m)).await {
                    Ok(()) => None,
                    Err((code, reason)) => {
                        Box::pin(out_half.close(code, reason, write_timeout)).await;
                        break;
                    }
                }
            }
            Err(code) => Some(code),
        };
        if let Some(code) = failed {
            partial = None;
            Box::pin(out_half.close(code, reason_for(code), write_timeout)).await;
            draining = Some(tokio::time::Instant::now() + Duration::from_secs(2));
        }
    }
    Box::pin(inbound.finish()).await;
}

/// Sends what the shards (and, on `/v1`, the gateway) queue for the socket until the queue ends or
/// closes it, or `closing` turns true (server shutdown: 1001). It also pings every `ping_interval`,
/// so a silent but healthy client answers with a pong within the reader's idle timeout.
pub(crate) async fn write_loop(
    gw: &Gateway,
    out_half: &Out,
    queue: ConnQueue,
    write_timeout: Duration,
    mut closing: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let ConnQueue {
        rx: mut out,
        kill_code: kill,
        queued_bytes,
    } = queue;
    let ping_every = Duration::from_secs(gw.cfg.ping_interval_secs.max(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut scratch: Vec<u8> = Vec::new();
    loop {
        let shutdown = async {
            match closing.as_mut() {
                Some(rx) => {
                    let _ = rx.wait_for(|c| *c).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let item = tokio::select! {
            item = out.recv() => item,
            _ = ping.tick() => {
                let write = async {
                    let mut w = out_half.writer.lock().await;
                    send_now(&mut w, Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]))).await
                };
                match Box::pin(tokio::time::timeout(write_timeout, write)).await {
                    Ok(Ok(())) => continue,
                    _ => break,
                }
            }
            _ = shutdown => {
                Box::pin(out_half.close(1001, reason_for(1001), write_timeout)).await;
                break;
            }
        };
        // Every frame already queued goes out in one flush (see batch_io): batching only when frames
        // queue up faster than they leave, never waiting for more.
        let mut item = item;
        let mut batch_frames = 0usize;
        let mut batch_bytes = 0usize;
        let mut stop = false;
        let mut w = out_half.writer.lock().await;
        loop {
            let killed = kill.load(Ordering::Relaxed);
            let data = match &item {
                Some(ConnOut::Frame(msg)) => Some((OpCode::Binary, &msg[..], msg.len())),
                Some(ConnOut::Text(msg)) => Some((OpCode::Text, &msg[..], msg.len())),
                Some(ConnOut::Prefixed(pm)) => {
                    let (prefix, msg) = &**pm;
                    scratch.clear();
                    scratch.extend_from_slice(prefix);
                    scratch.extend_from_slice(msg);
                    Some((OpCode::Binary, &scratch[..], scratch.len()))
                }
                _ => None,
            };
            match (data, item.as_ref()) {
                (Some((opcode, bytes, len)), _) => {
                    queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    // Being closed (killed): skip queued frames and look for the close with its reason.
                    if killed == 0 {
                        if out_half.closed.load(Ordering::SeqCst) {
                            stop = true;
                            break;
                        }
                        batch_bytes += len;
                        batch_frames += 1;
                        let frame = Frame::new(true, opcode, None, Payload::Borrowed(bytes));
                        if Box::pin(tokio::time::timeout(write_timeout, w.write_frame(frame)))
                            .await
                            .map_or(true, |r| r.is_err())
                        {
                            stop = true;
                            break;
                        }
                    }
                }
                (None, Some(ConnOut::Close(code, reason))) => {
                    drop(w);
                    Box::pin(out_half.close(*code, reason, write_timeout)).await;
                    stop = true;
                    w = out_half.writer.lock().await;
                    break;
                }
                (None, _) => {
                    drop(w);
                    let code = if killed == 0 { 1001 } else { killed };
                    Box::pin(out_half.close(code, reason_for(code), write_timeout)).await;
                    stop = true;
                    w = out_half.writer.lock().await;
                    break;
                }
            }
            if batch_frames >= MAX_BATCH_FRAMES || batch_bytes >= MAX_BATCH_BYTES {
                break;
            }
            item = match out.try_recv() {
                Ok(next) => Some(next),
                // Killed with nothing more queued (a slow consumer whose queue other senders keep
                // open): close now.
                Err(tokio::sync::mpsc::error::TryRecvError::Empty)
                    if kill.load(Ordering::Relaxed) != 0 =>
                {
                    None
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
        let flushed = Box::pin(tokio::time::timeout(write_timeout, w.flush()))
            .await
            .is_ok_and(|r| r.is_ok());
        drop(w);
        if stop || !flushed {
            break;
        }
    }
}
