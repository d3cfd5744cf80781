//! The gateway ↔ shard link: one TCP connection per (gateway, shard pair), carrying many sessions.
//!
//! Wire format (docs/cluster.md, "The link protocol"): every frame is
//! `u32 length (big-endian, of what follows) ‖ u8 kind ‖ u64 session (big-endian) ‖ payload`.
//! A session is one y-websocket connection, one `/v1` document channel, or one `/v1` socket's rooms;
//! the gateway picks its id (unique on the link). Frames of one session keep their order.
//!
//! Gateway → shard: `OPEN` (JSON `{doc, actor, write, ring}`), `MSG` (a y-websocket message), `CLOSE`,
//! `ROOM` (JSON room request), `ROOM_CLOSE`, `PING`.
//! Shard → gateway: `FRAME` (binary message for the client), `TEXT` (JSON text frame), `END` (`u16`
//! close code ‖ UTF-8 reason: the session is over), `KILL` (`u16` code: close the client socket, slow
//! consumer), `RING` (JSON `{version}`: the shard saw a newer ring; refresh), `PONG`.
//!
//! The shard checks ownership on `OPEN` and `ROOM` against its own view of the ring: a key it does not
//! own is refused (`END` 1012 "not the owner"; a room request gets an `unavailable` error), so a
//! gateway with a stale ring never makes a non-owner load a key.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::{DocId, RoomId, Seq, ShardId, StreamId, UserId};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::driver::{ConnOut, ConnSink, RoomCall, RoomCmd, ShardHandle};
use crate::room::{error_frame, RoomAccess, RoomRequest};
use crate::ConnId;

/// The message of the `unavailable` error a room request gets from a shard that no longer owns it.
pub const ROOM_MOVING: &str = "the room is moving to another shard, retry";

/// How often a gateway pings each link.
pub const PING_EVERY: Duration = Duration::from_secs(2);

/// A link with no frame for this long is dropped (by either side).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(6);

/// Largest frame accepted on a link (a document message is bounded far below this by the gateway).
pub const MAX_FRAME: usize = 64 << 20;

/// Frame kinds.
pub mod kind {
    /// gateway → shard: attach a session to a document.
    pub const OPEN: u8 = 1;
    /// gateway → shard: a y-websocket message of the session.
    pub const MSG: u8 = 2;
    /// gateway → shard: the session's client is gone.
    pub const CLOSE: u8 = 3;
    /// gateway → shard: a room request.
    pub const ROOM: u8 = 4;
    /// gateway → shard: the session's socket is gone (leave every room).
    pub const ROOM_CLOSE: u8 = 5;
    /// Either way: liveness probe.
    pub const PING: u8 = 6;
    /// Answer to `PING`.
    pub const PONG: u8 = 7;
    /// shard → gateway: a binary message for the client.
    pub const FRAME: u8 = 16;
    /// shard → gateway: a text message for the client.
    pub const TEXT: u8 = 17;
    /// shard → gateway: the session ended (code, reason).
    pub const END: u8 = 18;
    /// shard → gateway: close the client's socket (code).
    pub const KILL: u8 = 19;
    /// shard → gateway: a newer ring exists.
    pub const RING: u8 = 20;
}

/// Encodes one frame.
pub fn encode(kind: u8, session: u64, payload: &[u8]) -> Vec<u8> {
    let len = 1 + 8 + payload.len();
    let mut v = Vec::with_capacity(4 + len);
    v.extend_from_slice(&(len as u32).to_be_bytes());
    v.push(kind);
    v.extend_from_slice(&session.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Reads one frame: `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(u8, u64, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(9..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("link frame of {len} bytes"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    let kind = buf[0];
    let session = u64::from_be_bytes(buf[1..9].try_into().unwrap_or_default());
    buf.drain(..9);
    Ok(Some((kind, session, buf)))
}

fn end_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(reason.as_bytes());
    v
}

fn parse_end(p: &[u8]) -> (u16, String) {
    if p.len() < 2 {
        return (1011, String::new());
    }
    (
        u16::from_be_bytes([p[0], p[1]]),
        String::from_utf8_lossy(&p[2..]).into_owned(),
    )
}

#[derive(Serialize, Deserialize)]
struct OpenWire {
    doc: DocId,
    actor: UserId,
    write: bool,
    ring: u64,
}

#[derive(Serialize, Deserialize)]
struct RoomWire {
    user: UserId,
    access: RoomAccess,
    room: RoomId,
    rid: Option<String>,
    call: CallWire,
    ring: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum CallWire {
    Request {
        req: RoomRequest,
    },
    History {
        before: Option<Seq>,
        after: Option<Seq>,
        limit: usize,
    },
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

// ---------------------------------------------------------------------------------------------
// Shard side

/// The outbound half of one link on the shard: an unbounded queue bounded by bytes.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl Outbox {
    /// Data frames respect the byte budget; control frames (end, kill) always go.
    fn send(&self, kind: u8, session: u64, payload: &[u8], control: bool) -> bool {
        let frame = encode(kind, session, payload);
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
#[derive(Clone)]
pub struct SessionOut {
    out: Outbox,
    session: u64,
}

impl SessionOut {
    pub(crate) fn send(&self, msg: ConnOut) -> bool {
        match msg {
            ConnOut::Frame(b) => self.out.send(kind::FRAME, self.session, &b, false),
            ConnOut::Text(b) => self.out.send(kind::TEXT, self.session, &b, false),
            ConnOut::Prefixed(p) => {
                let mut v = p.0.to_vec();
                v.extend_from_slice(&p.1);
                self.out.send(kind::FRAME, self.session, &v, false)
            }
            ConnOut::Close(code, reason) => {
                self.out
                    .send(kind::END, self.session, &end_payload(code, &reason), true)
            }
        }
    }

    pub(crate) fn kill(&self, code: u16) {
        self.out
            .send(kind::KILL, self.session, &code.to_be_bytes(), true);
    }

    pub(crate) fn close(&self, code: u16, reason: &str) {
        self.out
            .send(kind::END, self.session, &end_payload(code, reason), true);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.out.tx.is_closed()
    }
}

/// This shard's view of ownership, published by its membership task.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    /// The ring this shard last read.
    pub ring: router::Ring,
    /// False while the shard must not take keys (lease lost and not yet re-established, draining,
    /// shutting down).
    pub serving: bool,
}

impl Ownership {
    /// Whether `me` owns `key` under this view.
    pub fn owns(&self, me: &ShardId, key: &StreamId) -> bool {
        self.serving && self.ring.owner(&key.key()) == Some(me)
    }
}

/// Settings of a shard's link listener.
#[derive(Clone)]
pub struct ServerConfig {
    /// This shard.
    pub shard: ShardId,
    /// Bytes queued towards one gateway before sessions are dropped as slow consumers.
    pub max_link_bytes: usize,
    /// History reads in flight per link.
    pub max_history_in_flight: usize,
}

/// Accepts gateway links until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    cfg: ServerConfig,
    handle: ShardHandle,
    own: watch::Receiver<Arc<Ownership>>,
    refresh: Arc<tokio::sync::Notify>,
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
            handle.clone(),
            own.clone(),
            refresh.clone(),
            next_conn.clone(),
        ));
    }
}

async fn serve_link(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: ServerConfig,
    handle: ShardHandle,
    mut own: watch::Receiver<Arc<Ownership>>,
    refresh: Arc<tokio::sync::Notify>,
    next_conn: Arc<AtomicU64>,
) {
    tracing::info!(%peer, "gateway link up");
    let (r, w) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let bytes = Arc::new(AtomicUsize::new(0));
    let out = Outbox {
        tx,
        bytes: bytes.clone(),
        max_bytes: cfg.max_link_bytes,
    };
    let writer = tokio::spawn(writer_task(w, rx, bytes));
    let mut r = tokio::io::BufReader::with_capacity(64 << 10, r);
    let mut docs: HashMap<u64, ConnId> = HashMap::new();
    let mut rooms: HashMap<u64, ConnId> = HashMap::new();
    let history = Arc::new(Semaphore::new(cfg.max_history_in_flight.max(1)));
    loop {
        // Gateways ping every PING_EVERY: a link silent for LINK_TIMEOUT is dead (a vanished host
        // sends no reset), and its sessions end.
        let frame = match tokio::time::timeout(LINK_TIMEOUT, read_frame(&mut r)).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "gateway link failed");
                break;
            }
            Err(_) => {
                tracing::warn!(%peer, "gateway link silent for {LINK_TIMEOUT:?}; dropping it");
                break;
            }
        };
        let (k, session, payload) = frame;
        match k {
            kind::OPEN => {
                let Ok(o) = serde_json::from_slice::<OpenWire>(&payload) else {
                    out.send(kind::END, session, &end_payload(1002, "bad open"), true);
                    continue;
                };
                let key = StreamId::Doc(o.doc.clone());
                if !owns(&cfg.shard, &key, o.ring, &mut own, &refresh).await {
                    send_ring_hint(&out, &own);
                    out.send(
                        kind::END,
                        session,
                        &end_payload(1012, "not the owner, reconnect"),
                        true,
                    );
                    continue;
                }
                let conn = ConnId(next_conn.fetch_add(1, Ordering::Relaxed));
                if let Some(old) = docs.insert(session, conn) {
                    handle.close(old).await;
                }
                let sink = ConnSink::link(SessionOut {
                    out: out.clone(),
                    session,
                });
                if !handle.open(conn, o.doc, o.actor, o.write, sink).await {
                    break;
                }
            }
            kind::MSG => {
                if let Some(conn) = docs.get(&session) {
                    if !handle.message(*conn, payload).await {
                        break;
                    }
                }
            }
            kind::CLOSE => {
                if let Some(conn) = docs.remove(&session) {
                    handle.close(conn).await;
                }
            }
            kind::ROOM => {
                let Ok(w) = serde_json::from_slice::<RoomWire>(&payload) else {
                    out.send(kind::KILL, session, &1002u16.to_be_bytes(), true);
                    continue;
                };
                let key = StreamId::Room(w.room.clone());
                if !owns(&cfg.shard, &key, w.ring, &mut own, &refresh).await {
                    send_ring_hint(&out, &own);
                    let e = error_frame(w.rid.as_deref(), &w.room, "unavailable", ROOM_MOVING);
                    out.send(kind::TEXT, session, &e, true);
                    continue;
                }
                let conn = *rooms
                    .entry(session)
                    .or_insert_with(|| ConnId(next_conn.fetch_add(1, Ordering::Relaxed)));
                let sink = ConnSink::link(SessionOut {
                    out: out.clone(),
                    session,
                });
                let req = match w.call {
                    CallWire::Request { req } => RoomCall::Request(req),
                    CallWire::History {
                        before,
                        after,
                        limit,
                    } => match history.clone().try_acquire_owned() {
                        Ok(permit) => RoomCall::History {
                            before,
                            after,
                            limit,
                            permit: Some(permit),
                        },
                        // Never wait here: the reader serves every session of the link.
                        Err(_) => {
                            let e = error_frame(
                                w.rid.as_deref(),
                                &w.room,
                                "limit",
                                "too many history requests in flight on this shard, retry",
                            );
                            out.send(kind::TEXT, session, &e, true);
                            continue;
                        }
                    },
                };
                let cmd = RoomCmd {
                    conn,
                    user: w.user,
                    access: w.access,
                    room: w.room,
                    rid: w.rid,
                    req,
                    sink,
                };
                if !handle.room(cmd).await {
                    break;
                }
            }
            kind::ROOM_CLOSE => {
                if let Some(conn) = rooms.remove(&session) {
                    handle.room_close(conn).await;
                }
            }
            kind::PING => {
                out.send(kind::PONG, session, &[], true);
            }
            _ => {
                tracing::warn!(%peer, kind = k, "unknown link frame; dropping the link");
                break;
            }
        }
    }
    for (_, conn) in docs {
        handle.close(conn).await;
    }
    for (_, conn) in rooms {
        handle.room_close(conn).await;
    }
    drop(out);
    writer.abort();
    tracing::info!(%peer, "gateway link down");
}

fn send_ring_hint(out: &Outbox, own: &watch::Receiver<Arc<Ownership>>) {
    let v = own.borrow().ring.version();
    let p = serde_json::to_vec(&serde_json::json!({ "version": v })).unwrap_or_default();
    out.send(kind::RING, 0, &p, true);
}

/// Whether this shard owns `key`; when the gateway's ring is newer than ours, refresh ours first.
async fn owns(
    me: &ShardId,
    key: &StreamId,
    gateway_ring: u64,
    own: &mut watch::Receiver<Arc<Ownership>>,
    refresh: &tokio::sync::Notify,
) -> bool {
    let (mine, version) = {
        let o = own.borrow_and_update();
        (o.owns(me, key), o.ring.version())
    };
    if mine || gateway_ring <= version {
        return mine;
    }
    refresh.notify_one();
    let _ = tokio::time::timeout(Duration::from_millis(500), own.changed()).await;
    let o = own.borrow();
    o.owns(me, key)
}

// ---------------------------------------------------------------------------------------------
// Gateway side

/// What a session carries, for re-routing after a ring change.
enum Carries {
    Doc(DocId),
    Rooms(BTreeSet<RoomId>),
}

struct Session {
    sink: ConnSink,
    carries: Carries,
}

struct State {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    sessions: HashMap<u64, Session>,
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
    stop_notify: tokio::sync::Notify,
    /// Notified when the shard reports a newer ring.
    on_ring_hint: Arc<tokio::sync::Notify>,
}

/// A gateway's link to one shard: connects (and reconnects) in the background; sessions are
/// multiplexed on it. When the link drops, every session on it ends: document sessions close their
/// client (1012; y-websocket clients reconnect and resync), room sessions close their socket (1012;
/// the client reconnects and resumes every room).
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
        on_ring_hint: Arc<tokio::sync::Notify>,
    ) -> Self {
        let inner = Arc::new(ClientInner {
            queue_frames: queue_frames.max(1),
            shard,
            addr: Mutex::new(addr),
            state: Mutex::new(State {
                tx: None,
                sessions: HashMap::new(),
            }),
            ring: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            stop_notify: tokio::sync::Notify::new(),
            on_ring_hint,
        });
        tokio::spawn(connect_loop(inner.clone()));
        Self { inner }
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
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tx
            .is_some()
    }

    /// Records the gateway's ring version (sent with opens).
    pub fn set_ring_version(&self, v: u64) {
        self.inner.ring.store(v, Ordering::Relaxed);
    }

    /// Stops the link for good (the shard left the membership): every session ends.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        self.inner.stop_notify.notify_waiters();
        let (tx, sessions) = {
            let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            (st.tx.take(), std::mem::take(&mut st.sessions))
        };
        drop(tx);
        end_all(sessions, "shard left the cluster, reconnect");
    }

    /// Ends every session whose key `owns` says this shard no longer owns (after a ring change):
    /// documents close their client (1012, "moved"; the shard is told), rooms get `room.closed` with
    /// code `moved` (the client rejoins; the join is routed to the new owner).
    pub fn evict(&self, owns: impl Fn(&StreamId) -> bool) {
        let mut ended: Vec<(u64, ConnSink)> = Vec::new();
        let mut moved_rooms: Vec<(ConnSink, RoomId)> = Vec::new();
        let tx = {
            let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<u64> = st.sessions.keys().copied().collect();
            for id in ids {
                let Some(s) = st.sessions.get_mut(&id) else {
                    continue;
                };
                match &mut s.carries {
                    Carries::Doc(doc) => {
                        if !owns(&StreamId::Doc(doc.clone())) {
                            if let Some(s) = st.sessions.remove(&id) {
                                ended.push((id, s.sink));
                            }
                        }
                    }
                    Carries::Rooms(rooms) => {
                        let gone: Vec<RoomId> = rooms
                            .iter()
                            .filter(|r| !owns(&StreamId::Room((*r).clone())))
                            .cloned()
                            .collect();
                        for r in gone {
                            rooms.remove(&r);
                            moved_rooms.push((s.sink.clone(), r));
                        }
                    }
                }
            }
            st.tx.clone()
        };
        for (id, sink) in ended {
            sink.close(1012, "document moved to another shard, reconnect");
            if let Some(tx) = &tx {
                let _ = tx.try_send(encode(kind::CLOSE, id, &[]));
            }
        }
        for (sink, room) in moved_rooms {
            let v = serde_json::json!({
                "t": "room.closed", "room": room, "code": "moved",
                "message": "room moved to another shard, rejoin"
            });
            if !sink.try_send_text(serde_json::to_vec(&v).unwrap_or_default().into()) {
                sink.kill(1008);
            }
        }
    }

    fn register(&self, id: u64, sink: ConnSink, carries: Carries) -> Option<mpsc::Sender<Vec<u8>>> {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let tx = st.tx.clone()?;
        match (st.sessions.get_mut(&id), carries) {
            (Some(s), Carries::Rooms(new)) => {
                if let Carries::Rooms(rooms) = &mut s.carries {
                    rooms.extend(new);
                }
            }
            (_, carries) => {
                st.sessions.insert(id, Session { sink, carries });
            }
        }
        Some(tx)
    }

    fn sender(&self) -> Option<mpsc::Sender<Vec<u8>>> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tx
            .clone()
    }

    fn forget(&self, id: u64) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sessions
            .remove(&id);
    }

    pub(crate) async fn open(
        &self,
        conn: ConnId,
        doc: DocId,
        actor: UserId,
        write: bool,
        sink: ConnSink,
    ) -> bool {
        let payload = serde_json::to_vec(&OpenWire {
            doc: doc.clone(),
            actor,
            write,
            ring: self.inner.ring.load(Ordering::Relaxed),
        })
        .unwrap_or_default();
        let Some(tx) = self.register(conn.0, sink, Carries::Doc(doc)) else {
            return false;
        };
        if tx.send(encode(kind::OPEN, conn.0, &payload)).await.is_err() {
            self.forget(conn.0);
            return false;
        }
        true
    }

    pub(crate) async fn message(&self, conn: ConnId, bytes: Vec<u8>) -> bool {
        let Some(tx) = self.sender() else {
            return false;
        };
        tx.send(encode(kind::MSG, conn.0, &bytes)).await.is_ok()
    }

    pub(crate) async fn close(&self, conn: ConnId) {
        self.forget(conn.0);
        if let Some(tx) = self.sender() {
            // Bounded: a congested link is dropped by the ping timeout, which ends the session too.
            let _ =
                tokio::time::timeout(LINK_TIMEOUT, tx.send(encode(kind::CLOSE, conn.0, &[]))).await;
        }
    }

    pub(crate) async fn room(&self, cmd: RoomCmd) -> bool {
        let RoomCmd {
            conn,
            user,
            access,
            room,
            rid,
            req,
            sink,
        } = cmd;
        // The session carries the rooms it joined (for re-routing and link loss); other requests
        // only need the session registered (replies come back on it).
        let (joins, leaves) = match &req {
            RoomCall::Request(RoomRequest::Join { .. }) => (true, false),
            RoomCall::Request(RoomRequest::Leave) => (false, true),
            _ => (false, false),
        };
        let (call, permit) = match req {
            RoomCall::Request(req) => (CallWire::Request { req }, None),
            RoomCall::History {
                before,
                after,
                limit,
                permit,
            } => (
                CallWire::History {
                    before,
                    after,
                    limit,
                },
                permit,
            ),
        };
        // The gateway's per-socket history permit is released once the request is on the link (the
        // shard bounds history reads per link).
        drop(permit);
        let payload = serde_json::to_vec(&RoomWire {
            user,
            access,
            room: room.clone(),
            rid,
            call,
            ring: self.inner.ring.load(Ordering::Relaxed),
        })
        .unwrap_or_default();
        let rooms = if joins {
            BTreeSet::from([room.clone()])
        } else {
            BTreeSet::new()
        };
        let Some(tx) = self.register(conn.0, sink, Carries::Rooms(rooms)) else {
            return false;
        };
        if leaves {
            let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(Session {
                carries: Carries::Rooms(set),
                ..
            }) = st.sessions.get_mut(&conn.0)
            {
                set.remove(&room);
            }
        }
        tx.send(encode(kind::ROOM, conn.0, &payload)).await.is_ok()
    }

    pub(crate) async fn room_close(&self, conn: ConnId) {
        self.forget(conn.0);
        if let Some(tx) = self.sender() {
            let _ =
                tokio::time::timeout(LINK_TIMEOUT, tx.send(encode(kind::ROOM_CLOSE, conn.0, &[])))
                    .await;
        }
    }
}

fn end_all(sessions: HashMap<u64, Session>, reason: &str) {
    for (_, s) in sessions {
        match s.carries {
            Carries::Doc(_) => s.sink.close(1012, reason),
            // The socket's rooms lived on this shard: the client reconnects and resumes them.
            Carries::Rooms(rooms) if !rooms.is_empty() => s.sink.close_socket(1012, reason),
            Carries::Rooms(_) => {}
        }
    }
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
        inner.state.lock().unwrap_or_else(|e| e.into_inner()).tx = Some(tx.clone());
        // Writer: gateway → shard, batched.
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
        let pinger = {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PING_EVERY);
                loop {
                    tick.tick().await;
                    if tx.send(encode(kind::PING, 0, &[])).await.is_err() {
                        return;
                    }
                }
            })
        };
        tokio::select! {
            _ = read_link(&inner, r, &tx) => {}
            _ = inner.stop_notify.notified() => {}
        }
        pinger.abort();
        writer.abort();
        let sessions = {
            let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.tx = None;
            std::mem::take(&mut st.sessions)
        };
        if !sessions.is_empty() {
            tracing::warn!(shard = %inner.shard, sessions = sessions.len(), "link down; ending its sessions");
        }
        end_all(sessions, "shard unavailable, reconnect");
    }
}

async fn read_link(
    inner: &ClientInner,
    r: tokio::net::tcp::OwnedReadHalf,
    tx: &mpsc::Sender<Vec<u8>>,
) {
    let mut r = tokio::io::BufReader::with_capacity(64 << 10, r);
    loop {
        // The shard answers every ping: silence means a dead or stopped (SIGSTOP) shard.
        let frame = match tokio::time::timeout(LINK_TIMEOUT, read_frame(&mut r)).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(shard = %inner.shard, error = %e, "link read failed");
                return;
            }
            Err(_) => {
                tracing::warn!(shard = %inner.shard, "link silent for {LINK_TIMEOUT:?}; dropping it");
                return;
            }
        };
        if inner.stopped.load(Ordering::Relaxed) {
            return;
        }
        let (k, session, payload) = frame;
        match k {
            kind::FRAME | kind::TEXT => {
                let sink = {
                    let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.sessions.get(&session).map(|s| s.sink.clone())
                };
                let Some(sink) = sink else { continue };
                let ok = if k == kind::FRAME {
                    sink.try_send_frame(payload.into())
                } else {
                    sink.try_send_text(payload.into())
                };
                if !ok {
                    // The client is a slow consumer: close it and end the session on the shard.
                    sink.close_socket(1008, "slow consumer");
                    let carries_doc = {
                        let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                        st.sessions
                            .remove(&session)
                            .map(|s| matches!(s.carries, Carries::Doc(_)))
                    };
                    let k = if carries_doc == Some(true) {
                        kind::CLOSE
                    } else {
                        kind::ROOM_CLOSE
                    };
                    let _ = tx.try_send(encode(k, session, &[]));
                }
            }
            kind::END => {
                let s = inner
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sessions
                    .remove(&session);
                if let Some(s) = s {
                    let (code, reason) = parse_end(&payload);
                    s.sink.close(code, &reason);
                }
            }
            kind::KILL => {
                let s = inner
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sessions
                    .remove(&session);
                if let Some(s) = s {
                    let (code, _) = parse_end(&payload);
                    s.sink.close_socket(code, "closed by the shard");
                }
            }
            kind::RING => inner.on_ring_hint.notify_one(),
            kind::PONG | kind::PING => {}
            _ => {
                tracing::warn!(shard = %inner.shard, kind = k, "unknown link frame");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        buf.extend(encode(kind::MSG, 7, b"hello"));
        buf.extend(encode(kind::END, u64::MAX, &end_payload(1012, "moved")));
        let mut r = std::io::Cursor::new(buf);
        let (k, s, p) = read_frame(&mut r).await.expect("io").expect("frame");
        assert_eq!((k, s, p.as_slice()), (kind::MSG, 7, &b"hello"[..]));
        let (k, s, p) = read_frame(&mut r).await.expect("io").expect("frame");
        assert_eq!((k, s), (kind::END, u64::MAX));
        assert_eq!(parse_end(&p), (1012, "moved".to_owned()));
        assert!(read_frame(&mut r).await.expect("io").is_none());
    }

    #[tokio::test]
    async fn oversized_frames_are_refused() {
        let mut r = std::io::Cursor::new(((MAX_FRAME + 1) as u32).to_be_bytes().to_vec());
        assert!(read_frame(&mut r).await.is_err());
        let mut r = std::io::Cursor::new(3u32.to_be_bytes().to_vec());
        assert!(read_frame(&mut r).await.is_err());
    }
}
