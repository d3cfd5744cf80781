//! The gateway's end of the gateway ↔ shard links (protocol: `proto::link`, docs/cluster.md).
//!
//! [`LinkClient`] is a [`ShardPort`]: a [`ShardHandle`] built on it reaches a shard process, and the
//! rest of the gateway cannot tell it from a shard in this process. It connects (and reconnects) in
//! the background; every client connection routed to the shard is a session multiplexed on it. The
//! decisions (session routing, pings, the silence timeout, eviction after a ring change, what a
//! dropped link ends) are the sans-IO [`session::ClientSession`]; this module only moves bytes and
//! carries out its outputs.

pub mod session;

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::link::{self, Frame, RoomCall, LINK_TIMEOUT};
use proto::v1::{ErrorCode, RoomRequest};
use proto::{DocId, ShardId, StreamId, UserId};
use shard::handle::{ConnId, ConnSink, PortFuture, RoomCmd, ShardHandle, ShardPort};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use self::session::{Carries, ClientOutput, ClientSession};

/// The session core and the queue towards the shard (present while connected).
struct State {
    core: ClientSession<ConnSink>,
    tx: Option<mpsc::Sender<Vec<u8>>>,
}

struct ClientInner {
    shard: ShardId,
    queue_frames: usize,
    addr: Mutex<String>,
    state: Mutex<State>,
    /// The gateway's ring version, sent with every open.
    ring: AtomicU64,
    stopped: AtomicBool,
    /// Wakes the link's reader when the link is stopped.
    stop_notify: Notify,
    /// Notified when the shard reports a newer ring.
    on_ring_hint: Arc<Notify>,
}

impl ClientInner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers session `id` and returns the queue to the shard (`None`: the link is down).
    fn register(&self, id: u64, sink: ConnSink, carries: Carries) -> Option<mpsc::Sender<Vec<u8>>> {
        let mut st = self.state();
        let tx = st.tx.clone()?;
        st.core.register(id, sink, carries).then_some(tx)
    }

    fn sender(&self) -> Option<mpsc::Sender<Vec<u8>>> {
        self.state().tx.clone()
    }

    fn forget(&self, id: u64) {
        self.state().core.forget(id);
    }

    /// Sends a session-ending frame, bounded: a congested link is dropped by the silence timeout,
    /// which ends the session too.
    async fn send_end(&self, frame: Vec<u8>) {
        if let Some(tx) = self.sender() {
            let _ = tokio::time::timeout(LINK_TIMEOUT, tx.send(frame)).await;
        }
    }
}

/// A gateway's link to one shard. Cheap to clone; clones share the link.
#[derive(Clone)]
pub struct LinkClient {
    inner: Arc<ClientInner>,
}

impl LinkClient {
    /// Starts linking to `shard` at `addr`; at most `queue_frames` frames wait to be written to it
    /// (a client's reader waits beyond that).
    pub fn start(
        shard: ShardId,
        addr: String,
        queue_frames: usize,
        on_ring_hint: Arc<Notify>,
    ) -> Self {
        let inner = Arc::new(ClientInner {
            queue_frames: queue_frames.max(1),
            shard,
            addr: Mutex::new(addr),
            state: Mutex::new(State {
                core: ClientSession::new(),
                tx: None,
            }),
            ring: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            stop_notify: Notify::new(),
            on_ring_hint,
        });
        tokio::spawn(connect_loop(inner.clone()));
        Self { inner }
    }

    /// A [`ShardHandle`] on this link (every handle of one link is the `same`).
    pub fn handle(&self) -> ShardHandle {
        ShardHandle::new(self.inner.shard.clone(), self.inner.clone())
    }

    /// The shard.
    pub fn shard(&self) -> &ShardId {
        &self.inner.shard
    }

    /// Whether both are the same link (not only the same shard id).
    pub fn same(&self, other: &LinkClient) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Updates the address (a restarted shard may listen elsewhere).
    pub fn set_addr(&self, addr: &str) {
        *self.inner.addr.lock().unwrap_or_else(|e| e.into_inner()) = addr.to_owned();
    }

    /// Whether the link is connected.
    pub fn is_connected(&self) -> bool {
        self.inner.state().core.is_connected()
    }

    /// Records the gateway's ring version (sent with opens).
    pub fn set_ring_version(&self, v: u64) {
        self.inner.ring.store(v, Ordering::Relaxed);
    }

    /// Stops the link for good (the shard left the membership): every session ends.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        self.inner.stop_notify.notify_waiters();
        step(&self.inner, &mut Outputs::new(), |core| core.stop());
        self.inner.state().tx = None;
    }

    /// Ends every session whose key `owns` says this shard no longer owns (after a ring change):
    /// documents close their client (1012, "moved"; the shard is told), rooms get `room.closed` with
    /// code `moved` (the client rejoins; the join is routed to the new owner).
    pub fn evict(&self, owns: impl Fn(&StreamId) -> bool) {
        step(&self.inner, &mut Outputs::new(), |core| core.evict(owns));
    }
}

impl ShardPort for ClientInner {
    fn open(
        &self,
        conn: ConnId,
        doc: DocId,
        actor: UserId,
        can_write: bool,
        sink: ConnSink,
    ) -> PortFuture<'_, bool> {
        Box::pin(async move {
            let frame = Frame::Open(link::Open {
                doc: doc.clone(),
                actor,
                write: can_write,
                ring: self.ring.load(Ordering::Relaxed),
            });
            let Some(tx) = self.register(conn.0, sink, Carries::Doc(doc)) else {
                return false;
            };
            if tx.send(link::to_vec(conn.0, &frame)).await.is_err() {
                self.forget(conn.0);
                return false;
            }
            true
        })
    }

    fn message(&self, conn: ConnId, bytes: Vec<u8>) -> PortFuture<'_, bool> {
        Box::pin(async move {
            let Some(tx) = self.sender() else {
                return false;
            };
            tx.send(link::to_vec(conn.0, &Frame::Msg(&bytes)))
                .await
                .is_ok()
        })
    }

    fn close(&self, conn: ConnId) -> PortFuture<'_, ()> {
        Box::pin(async move {
            self.forget(conn.0);
            self.send_end(link::to_vec(conn.0, &Frame::Close)).await;
        })
    }

    fn room(&self, cmd: RoomCmd) -> PortFuture<'_, bool> {
        Box::pin(async move {
            let RoomCmd {
                conn,
                user,
                access,
                room,
                rid,
                call,
                permit,
                sink,
            } = cmd;
            // The session carries the rooms it joined (for re-routing and link loss); other
            // requests only need the session registered (replies come back on it).
            let (joins, leaves) = match &call {
                RoomCall::Request {
                    req: RoomRequest::Join { .. },
                } => (true, false),
                RoomCall::Request {
                    req: RoomRequest::Leave,
                } => (false, true),
                _ => (false, false),
            };
            // The gateway's per-socket history slot is given back once the request is on the link
            // (the shard bounds history reads per link).
            drop(permit);
            let frame = link::to_vec(
                conn.0,
                &Frame::Room(Box::new(link::Room {
                    user,
                    access,
                    room: room.clone(),
                    rid,
                    call,
                    ring: self.ring.load(Ordering::Relaxed),
                })),
            );
            let rooms = if joins {
                BTreeSet::from([room.clone()])
            } else {
                BTreeSet::new()
            };
            let Some(tx) = self.register(conn.0, sink, Carries::Rooms(rooms)) else {
                return false;
            };
            if leaves {
                self.state().core.left_room(conn.0, &room);
            }
            tx.send(frame).await.is_ok()
        })
    }

    fn room_close(&self, conn: ConnId) -> PortFuture<'_, ()> {
        Box::pin(async move {
            self.forget(conn.0);
            self.send_end(link::to_vec(conn.0, &Frame::RoomClose)).await;
        })
    }

    fn is_alive(&self) -> bool {
        self.state().core.is_connected()
    }
}

type Outputs = VecDeque<ClientOutput<ConnSink>>;

/// Feeds the core one input (`f`, under the lock) and carries out what it asks, through `outs` (a
/// buffer the caller reuses, so a frame costs no allocation here). True when the link is dead.
fn step(
    inner: &ClientInner,
    outs: &mut Outputs,
    f: impl FnOnce(&mut ClientSession<ConnSink>),
) -> bool {
    {
        let mut st = inner.state();
        f(&mut st.core);
        outs.extend(std::iter::from_fn(|| st.core.poll_output()));
    }
    carry_out(inner, outs)
}

/// Carries out the core's outputs, emptying `outs` (never waits: it runs on the link's reader and
/// under callers that must not block). True when one of them said the link is dead.
fn carry_out(inner: &ClientInner, outs: &mut Outputs) -> bool {
    let mut dead = false;
    while let Some(o) = outs.pop_front() {
        match o {
            ClientOutput::Deliver {
                session,
                sink,
                text,
                payload,
            } => {
                let ok = if text {
                    sink.try_send_text(payload)
                } else {
                    sink.try_send_frame(payload)
                };
                if !ok {
                    let mut st = inner.state();
                    st.core.handle_slow_consumer(session);
                    outs.extend(std::iter::from_fn(|| st.core.poll_output()));
                }
            }
            ClientOutput::End { sink, code, reason } => sink.close(code, &reason),
            ClientOutput::Kill { sink, code, reason } => sink.close_socket(code, reason),
            ClientOutput::Moved { sink, room } => {
                let frame = proto::v1::Frame::RoomClosed {
                    room,
                    code: ErrorCode::Moved,
                    message: "room moved to another shard, rejoin".into(),
                };
                sink.send_text_or_kill(frame.to_bytes().into());
            }
            ClientOutput::Transmit(frame) => {
                if let Some(tx) = inner.state().tx.as_ref() {
                    let _ = tx.try_send(frame);
                }
            }
            ClientOutput::RingHint => inner.on_ring_hint.notify_one(),
            ClientOutput::Dead { reason } => {
                dead = true;
                tracing::warn!(shard = %inner.shard, %reason, "dropping the link");
            }
        }
    }
    dead
}

async fn connect_loop(inner: Arc<ClientInner>) {
    let mut delay = Duration::from_millis(50);
    while !inner.stopped.load(Ordering::Relaxed) {
        let addr = inner.addr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let stream =
            match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(&addr)).await {
                Ok(Ok(s)) => s,
                _ => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                    continue;
                }
            };
        delay = Duration::from_millis(50);
        let _ = stream.set_nodelay(true);
        tracing::info!(shard = %inner.shard, %addr, "link up");
        let (r, w) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(inner.queue_frames);
        {
            let mut st = inner.state();
            if inner.stopped.load(Ordering::Relaxed) {
                return;
            }
            st.tx = Some(tx);
            st.core.connected(Instant::now().into_std());
        }
        // Writer: gateway → shard, every queued frame in one flush.
        let writer = tokio::spawn(async move {
            let mut w = BufWriter::with_capacity(64 << 10, w);
            while let Some(frame) = rx.recv().await {
                if w.write_all(&frame).await.is_err() {
                    return;
                }
                while let Ok(more) = rx.try_recv() {
                    if w.write_all(&more).await.is_err() {
                        return;
                    }
                }
                if w.flush().await.is_err() {
                    return;
                }
            }
        });
        tokio::select! {
            _ = read_link(&inner, r) => {}
            _ = inner.stop_notify.notified() => {}
        }
        writer.abort();
        let sessions = {
            let mut st = inner.state();
            st.tx = None;
            st.core.sessions()
        };
        if sessions > 0 {
            tracing::warn!(shard = %inner.shard, sessions, "link down; ending its sessions");
        }
        step(&inner, &mut Outputs::new(), |core| {
            core.disconnected("shard unavailable, reconnect")
        });
    }
}

/// Reads frames from the shard until the link ends (EOF, an error, silence, a bad frame).
async fn read_link(inner: &ClientInner, mut r: tokio::net::tcp::OwnedReadHalf) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut outs = Outputs::new();
    loop {
        let mut used = 0;
        loop {
            match link::check(&buf[used..], link::MAX_FRAME) {
                Ok(Some(n)) => {
                    let frame = &buf[used..used + n];
                    used += n;
                    let now = Instant::now().into_std();
                    if step(inner, &mut outs, |core| core.handle_frame(now, frame)) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    step(inner, &mut outs, |core| core.handle_error(&e));
                    return;
                }
            }
        }
        buf.drain(..used);
        if inner.stopped.load(Ordering::Relaxed) {
            return;
        }
        let deadline = inner.state().core.poll_timeout().map(Instant::from_std);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Cancel-safe: a read that loses the race has read nothing.
            n = r.read_buf(&mut buf) => match n {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(shard = %inner.shard, error = %e, "link read failed");
                    return;
                }
            },
            _ = sleep => {
                let now = Instant::now().into_std();
                if step(inner, &mut outs, |core| core.handle_timeout(now)) {
                    return;
                }
            }
        }
    }
}
