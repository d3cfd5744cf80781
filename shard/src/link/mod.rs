//! The shard's end of the gateway ↔ shard links (protocol: `proto::link`, docs/cluster.md): a
//! listener, and per accepted link a thin tokio driver around the sans-IO [`session::LinkSession`].
//!
//! Driver loop per link: feed every complete frame in the read buffer to the session (unless it is
//! stalled waiting for a fresher ring), carry out its outputs in order (calls into the local shard
//! wait when the shard's queue is full, which pushes back on the gateway through TCP), then wait for
//! more bytes, the session's deadline, or a new ownership view. Frames to the gateway go through one
//! writer task per link, bounded in bytes: a session whose frames do not fit is a slow consumer.

pub mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::link::{self, Kind};
use proto::ShardId;
use router::Ownership;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use self::session::{LinkOutput, LinkSession, SessionConfig};
use crate::handle::{ConnId, ConnOut, ConnSink, Outlet, RoomCmd, ShardHandle};

/// Settings of a shard's link listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This shard.
    pub shard: ShardId,
    /// Bytes queued towards one gateway before sessions are dropped as slow consumers.
    pub max_link_bytes: usize,
    /// History reads in flight per link.
    pub max_history_in_flight: usize,
    /// Largest frame accepted from a gateway (the length field).
    pub max_frame: usize,
}

/// Accepts gateway links until `stop` turns true. `own` is this shard's ownership view (published
/// by its membership loop); `refresh` asks that loop to re-read the ring now.
pub async fn serve(
    listener: TcpListener,
    cfg: ServerConfig,
    shard: ShardHandle,
    own: watch::Receiver<Arc<Ownership>>,
    refresh: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let next_conn = Arc::new(AtomicU64::new(1));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_link(
            stream,
            peer,
            cfg.clone(),
            shard.clone(),
            own.clone(),
            refresh.clone(),
            next_conn.clone(),
        ));
    }
}

/// The outbound half of one link: an unbounded queue bounded by bytes.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl Outbox {
    /// Data frames respect the byte budget; control frames (end, kill, pong) always go.
    fn send(&self, frame: Vec<u8>, control: bool) -> bool {
        let len = frame.len();
        if !control && self.bytes.load(Ordering::Relaxed) + len > self.max_bytes {
            return false;
        }
        self.bytes.fetch_add(len, Ordering::Relaxed);
        if self.tx.send(frame).is_err() {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// A [`ConnSink`] target on the shard: one session of one link.
struct SessionOut {
    out: Outbox,
    session: u64,
}

impl SessionOut {
    fn data(&self, kind: Kind, parts: &[&[u8]]) -> bool {
        let mut v = Vec::new();
        link::encode_parts(kind, self.session, parts, &mut v);
        self.out.send(v, false)
    }

    fn control(&self, frame: &link::Frame<'_>) {
        self.out.send(link::to_vec(self.session, frame), true);
    }
}

impl Outlet for SessionOut {
    fn send(&self, msg: ConnOut) -> bool {
        match msg {
            ConnOut::Frame(b) => self.data(Kind::Frame, &[&b]),
            ConnOut::Text(b) => self.data(Kind::Text, &[&b]),
            ConnOut::Prefixed(p) => self.data(Kind::Frame, &[&p.0, &p.1]),
            ConnOut::Close(code, reason) => {
                self.close(code, &reason);
                true
            }
        }
    }

    fn kill(&self, code: u16) {
        self.control(&link::Frame::Kill { code });
    }

    fn close(&self, code: u16, reason: &str) {
        self.control(&link::Frame::End {
            code,
            reason: reason.into(),
        });
    }

    fn is_closed(&self) -> bool {
        self.out.tx.is_closed()
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    bytes: Arc<AtomicUsize>,
) {
    let mut w = BufWriter::with_capacity(64 << 10, w);
    while let Some(frame) = rx.recv().await {
        let mut n = frame.len();
        if w.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            n += more.len();
            if w.write_all(&more).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
        bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

async fn serve_link(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: ServerConfig,
    shard: ShardHandle,
    mut own: watch::Receiver<Arc<Ownership>>,
    refresh: Arc<Notify>,
    next_conn: Arc<AtomicU64>,
) {
    tracing::info!(%peer, "gateway link up");
    let (mut r, w) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let bytes = Arc::new(AtomicUsize::new(0));
    let out = Outbox {
        tx,
        bytes: bytes.clone(),
        max_bytes: cfg.max_link_bytes,
    };
    let writer = tokio::spawn(writer_task(w, rx, bytes));
    let mut core = LinkSession::new(
        Instant::now().into_std(),
        SessionConfig {
            shard: cfg.shard.clone(),
            max_history_in_flight: cfg.max_history_in_flight,
        },
        own.borrow_and_update().clone(),
        Box::new(move || ConnId(next_conn.fetch_add(1, Ordering::Relaxed))),
    );
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut own_open = true;
    'link: loop {
        // Every complete frame in the buffer, in order, unless one waits for a fresher ring.
        let mut used = 0;
        while !core.is_stalled() && !core.is_down() {
            match link::check(&buf[used..], cfg.max_frame) {
                Ok(Some(n)) => {
                    // Each frame is judged on the latest ownership view (a batch can take a while:
                    // every call into the shard may wait).
                    if own_open && own.has_changed().unwrap_or(false) {
                        let view = own.borrow_and_update().clone();
                        core.handle_ownership(Instant::now().into_std(), view);
                        if !carry_out(&mut core, &shard, &out, &refresh).await {
                            break 'link;
                        }
                    }
                    core.handle_frame(Instant::now().into_std(), &buf[used..used + n]);
                    used += n;
                    if !carry_out(&mut core, &shard, &out, &refresh).await {
                        break 'link;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    core.handle_error(&e);
                    carry_out(&mut core, &shard, &out, &refresh).await;
                    break 'link;
                }
            }
        }
        buf.drain(..used);
        if core.is_down() {
            break;
        }
        let sleep = crate::timer::sleep_until(core.poll_timeout());
        tokio::select! {
            // Bytes first: after a long wait on the shard (backpressure), frames that arrived
            // meanwhile prove the gateway alive before the silence timer is looked at.
            biased;
            // Cancel-safe: a read that loses the race has read nothing.
            n = r.read_buf(&mut buf), if !core.is_stalled() => match n {
                Ok(0) => core.handle_closed("gateway closed the link"),
                Ok(_) => {}
                Err(e) => core.handle_closed(&format!("gateway link failed: {e}")),
            },
            _ = sleep => core.handle_timeout(Instant::now().into_std()),
            changed = own.changed(), if own_open => match changed {
                Ok(()) => {
                    let view = own.borrow_and_update().clone();
                    core.handle_ownership(Instant::now().into_std(), view);
                }
                Err(_) => own_open = false,
            },
        }
        if !carry_out(&mut core, &shard, &out, &refresh).await {
            break;
        }
    }
    // Whatever ended the link, every session it carried is closed on the shard.
    if !core.is_down() {
        core.handle_closed("link driver stopped");
    }
    carry_out(&mut core, &shard, &out, &refresh).await;
    drop(out);
    writer.abort();
    tracing::info!(%peer, "gateway link down");
}

/// Carries out the session's outputs; false when the shard itself is gone (the link ends).
async fn carry_out(
    core: &mut LinkSession,
    shard: &ShardHandle,
    out: &Outbox,
    refresh: &Notify,
) -> bool {
    let sink = |session: u64| {
        ConnSink::remote(Arc::new(SessionOut {
            out: out.clone(),
            session,
        }))
    };
    let mut alive = true;
    while let Some(o) = core.poll_output() {
        match o {
            LinkOutput::Transmit(frame) => {
                out.send(frame, true);
            }
            LinkOutput::Open {
                conn,
                session,
                doc,
                actor,
                write,
            } => {
                if alive && !shard.open(conn, doc, actor, write, sink(session)).await {
                    alive = false;
                    core.handle_closed("the shard stopped");
                }
            }
            LinkOutput::Message { conn, bytes } => {
                if alive && !shard.message(conn, bytes).await {
                    alive = false;
                    core.handle_closed("the shard stopped");
                }
            }
            LinkOutput::Close { conn } => {
                if alive {
                    shard.close(conn).await;
                }
            }
            LinkOutput::Room {
                conn,
                session,
                user,
                access,
                room,
                rid,
                call,
                permit,
            } => {
                let cmd = RoomCmd {
                    conn,
                    user,
                    access,
                    room,
                    rid,
                    call,
                    permit,
                    sink: sink(session),
                };
                if alive && !shard.room(cmd).await {
                    alive = false;
                    core.handle_closed("the shard stopped");
                }
            }
            LinkOutput::RoomClose { conn } => {
                if alive {
                    shard.room_close(conn).await;
                }
            }
            LinkOutput::Refresh => refresh.notify_one(),
            LinkOutput::Down { reason } => {
                tracing::info!(%reason, "gateway link ends");
            }
        }
    }
    alive
}
