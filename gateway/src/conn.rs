//! One WebSocket connection: a reader that forwards binary messages to the owning shard, and a writer
//! that sends what the shard queues for it.

use std::sync::atomic::{AtomicBool, Ordering};
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
struct Out {
    writer: Writer,
    closed: Arc<AtomicBool>,
}

impl Out {
    async fn close(&self, code: u16, reason: &str, timeout: Duration) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
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

/// Runs a connection until either side closes it.
pub async fn run(gw: Arc<Gateway>, shard: ShardHandle, p: ConnParams, mut ws: WebSocket<Io>) {
    let max = gw.cfg.max_message_bytes;
    // The frame reader's own cap (one frame) must admit a full message plus its header.
    ws.set_max_message_size(max.saturating_add(16));
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let write_timeout = Duration::from_secs(gw.cfg.write_timeout_secs.max(1));
    let (mut reader, writer) = ws.split(|io| {
        let (r, w) = tokio::io::split(io);
        (r, crate::batch_io::BatchWriter::new(w))
    });
    let writer: Writer = Arc::new(Mutex::new(writer));
    let (sink, queue) = ConnSink::new(gw.cfg.outbound_queue, gw.cfg.outbound_queue_bytes);
    let shard::ConnQueue {
        rx: mut out,
        kill_code: kill,
        queued_bytes,
    } = queue;
    let idle_timeout = Duration::from_secs(gw.cfg.idle_timeout_secs.max(1));
    let ping_every = Duration::from_secs(gw.cfg.ping_interval_secs.max(1));
    gw.metrics.connections.inc();
    if !Box::pin(shard.open(p.conn, p.doc.clone(), p.actor.clone(), p.can_write, sink)).await {
        let mut w = writer.lock().await;
        let _ = Box::pin(tokio::time::timeout(
            write_timeout,
            send_now(&mut w, Frame::close(1011, b"shard unavailable")),
        ))
        .await;
        drop(w);
        gw.metrics.connections.dec();
        return;
    }

    let out_half = Out {
        writer: writer.clone(),
        closed: Arc::new(AtomicBool::new(false)),
    };

    let reader_task = {
        let out_half = out_half.clone();
        let shard = shard.clone();
        let gw = gw.clone();
        let conn = p.conn;
        let reader_fut = async move {
            let mut partial: Option<Vec<u8>> = None;
            let mut bucket = RateLimit::new(gw.cfg.max_messages_per_sec, gw.cfg.message_burst);
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
                        match tokio::time::timeout_at(until, reader.read_frame(&mut obligated))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => break,
                        }
                    }
                    // Cancelling on idle timeout is fine for the same reason: the socket is dropped.
                    None => {
                        match tokio::time::timeout(idle_timeout, reader.read_frame(&mut obligated))
                            .await
                        {
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
                            gw.metrics
                                .closes
                                .with_label_values(&[&code.to_string()])
                                .inc();
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
                let refuse = |code: u16| {
                    gw.metrics
                        .closes
                        .with_label_values(&[&code.to_string()])
                        .inc();
                    code
                };
                let mut frame = frame;
                // RFC 6455 §5.1: a server must close on a frame from the client that is not masked.
                let masked = is_masked(&mut frame);
                let message = match frame.opcode {
                    _ if !masked => Err(refuse(1002)),
                    OpCode::Binary if partial.is_some() => Err(refuse(1002)),
                    OpCode::Binary if frame.fin => Ok(frame.payload.to_vec()),
                    OpCode::Binary => {
                        partial = Some(frame.payload.to_vec());
                        continue;
                    }
                    OpCode::Continuation => match partial.as_mut() {
                        None => Err(refuse(1002)),
                        Some(buf) if buf.len() + frame.payload.len() > max => Err(refuse(1009)),
                        Some(buf) => {
                            buf.extend_from_slice(&frame.payload);
                            if !frame.fin {
                                continue;
                            }
                            Ok(partial.take().unwrap_or_default())
                        }
                    },
                    OpCode::Text => Err(refuse(1003)),
                    OpCode::Close => break,
                    OpCode::Ping | OpCode::Pong => continue,
                };
                let message = match message {
                    Ok(m) if m.len() > max => Err(refuse(1009)),
                    other => other,
                };
                match message {
                    Ok(m) => {
                        Box::pin(bucket.take()).await;
                        if !Box::pin(shard.message(conn, m)).await {
                            out_half
                                .close(1011, "shard unavailable", write_timeout)
                                .await;
                            break;
                        }
                    }
                    Err(code) => {
                        partial = None;
                        Box::pin(out_half.close(code, reason_for(code), write_timeout)).await;
                        draining = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                }
            }
            Box::pin(shard.close(conn)).await;
        };
        tokio::spawn(reader_fut)
    };

    // Writer: runs until the shard drops or closes this connection. It also pings every
    // `ping_every`, so a silent but healthy client answers with a pong within the reader's idle timeout.
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
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
            match item {
                Some(ConnOut::Frame(msg)) => {
                    queued_bytes.fetch_sub(msg.len(), Ordering::Relaxed);
                    // Being closed (killed): skip queued frames and look for the close with its reason.
                    if killed == 0 {
                        if out_half.closed.load(Ordering::SeqCst) {
                            stop = true;
                            break;
                        }
                        batch_bytes += msg.len();
                        batch_frames += 1;
                        let frame = Frame::new(true, OpCode::Binary, None, Payload::Borrowed(&msg));
                        if Box::pin(tokio::time::timeout(write_timeout, w.write_frame(frame)))
                            .await
                            .map_or(true, |r| r.is_err())
                        {
                            stop = true;
                            break;
                        }
                    }
                }
                Some(ConnOut::Close(code, reason)) => {
                    drop(w);
                    Box::pin(out_half.close(code, &reason, write_timeout)).await;
                    stop = true;
                    w = out_half.writer.lock().await;
                    break;
                }
                None => {
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
    // Give the client a moment to answer our close frame, then tear the reader down.
    let abort = reader_task.abort_handle();
    if Box::pin(tokio::time::timeout(Duration::from_secs(2), reader_task))
        .await
        .is_err()
    {
        abort.abort();
        Box::pin(shard.close(p.conn)).await;
    }
    gw.metrics.connections.dec();
}

/// Per-socket token bucket. Over the limit the reader waits instead of reading on, which pushes back on
/// the client through TCP flow control: nothing is dropped and the connection stays up.
struct RateLimit {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl RateLimit {
    fn new(per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_sec: f64::from(per_sec),
            burst,
            tokens: burst,
            last: tokio::time::Instant::now(),
        }
    }

    async fn take(&mut self) {
        if self.per_sec <= 0.0 {
            return;
        }
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / self.per_sec;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.tokens = 1.0;
            self.last = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimit;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn rate_limit_allows_the_burst_then_paces() {
        let mut r = RateLimit::new(10, 5);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            r.take().await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the burst passes without waiting"
        );
        for _ in 0..10 {
            r.take().await;
        }
        // Ten more at 10/s take about a second of (virtual) time.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(950) && waited <= Duration::from_millis(1050),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_unlimited() {
        let mut r = RateLimit::new(0, 1);
        let start = tokio::time::Instant::now();
        for _ in 0..1000 {
            r.take().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
