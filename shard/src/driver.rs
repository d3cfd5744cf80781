//! The tokio driver around [`ShardCore`]: owns the core, feeds it inputs from gateways and the store,
//! and carries out its outputs. The only code in this crate that awaits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::event::{Bytes, DocumentUpdatedV1};
use proto::{DocId, EventPayload, NewEvent, RoomId, Seq, ShardId, StreamId, UserId};
use store::{AppendRequest, EventLog, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::CoreConfig;
use crate::core::{ConnId, Output, ShardCore};
use crate::metrics::Metrics;
use crate::room::{RoomAccess, RoomCore, RoomOutput, RoomRequest};

/// What a shard sends to one client connection.
#[derive(Debug, Clone)]
pub enum ConnOut {
    /// A binary message.
    Frame(Arc<[u8]>),
    /// A text (JSON) message of the native protocol.
    Text(Arc<[u8]>),
    /// A binary message of the native protocol: a channel prefix (the document id) then the message.
    /// Boxed so that the enum stays three words.
    Prefixed(Box<Prefixed>),
    /// Close the socket with this code and reason. (`Box<str>`, not `String`: this enum sizes every
    /// slot of each socket's queue, allocated up front per connection.)
    Close(u16, Box<str>),
}

/// A channel prefix and the message after it.
pub type Prefixed = (Arc<[u8]>, Arc<[u8]>);

/// The shard's handle on one connection's outbound queue (bounded: a slow consumer is closed). On a
/// shard process the "connection" is a session of a gateway link ([`crate::link`]), and the sink
/// writes onto that link.
#[derive(Clone)]
pub struct ConnSink {
    target: Target,
    /// Set on a native-protocol (`/v1`) document channel: frames get this document's prefix, and a
    /// close ends the channel (`doc.closed`) instead of the socket.
    channel: Option<Arc<Channel>>,
}

#[derive(Clone)]
enum Target {
    Local(Local),
    Link(crate::link::SessionOut),
}

#[derive(Clone)]
struct Local {
    tx: mpsc::Sender<ConnOut>,
    /// Close code to use when the queue is dropped without a `Close` (0 = none).
    kill_code: Arc<AtomicU16>,
    /// Bytes queued and not yet written; the writer subtracts what it wrote.
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

struct Channel {
    doc: DocId,
    prefix: Arc<[u8]>,
}

/// The connection side of a [`ConnSink`].
pub struct ConnQueue {
    /// Messages from the shard.
    pub rx: mpsc::Receiver<ConnOut>,
    /// Close code set by the shard when it drops the connection (0 = none).
    pub kill_code: Arc<AtomicU16>,
    /// Bytes queued; subtract each frame's length after writing it.
    pub queued_bytes: Arc<AtomicUsize>,
}

impl ConnSink {
    /// A sink with room for `capacity` messages and `max_bytes` bytes, and its receiving end.
    pub fn new(capacity: usize, max_bytes: usize) -> (Self, ConnQueue) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let kill = Arc::new(AtomicU16::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        (
            Self {
                target: Target::Local(Local {
                    tx,
                    kill_code: kill.clone(),
                    queued_bytes: bytes.clone(),
                    max_bytes,
                }),
                channel: None,
            },
            ConnQueue {
                rx,
                kill_code: kill,
                queued_bytes: bytes,
            },
        )
    }

    /// A sink writing onto a gateway link session.
    pub(crate) fn link(out: crate::link::SessionOut) -> Self {
        Self {
            target: Target::Link(out),
            channel: None,
        }
    }

    /// The same socket's sink for one document of the native protocol: binary frames are prefixed
    /// with `prefix` (the lib0 var-string of the document id), and closing it ends only the channel.
    pub fn channel(&self, doc: DocId, prefix: Arc<[u8]>) -> Self {
        Self {
            channel: Some(Arc::new(Channel { doc, prefix })),
            ..self.clone()
        }
    }

    fn try_send(&self, out: ConnOut, len: usize) -> bool {
        match &self.target {
            Target::Local(l) => {
                if l.queued_bytes.load(Ordering::Relaxed) + len > l.max_bytes {
                    return false;
                }
                if l.tx.try_send(out).is_err() {
                    return false;
                }
                l.queued_bytes.fetch_add(len, Ordering::Relaxed);
                true
            }
            Target::Link(s) => s.send(out),
        }
    }

    /// Queues a binary message (prefixed on a `/v1` document channel); false when the socket is a
    /// slow consumer (or gone).
    pub fn try_send_frame(&self, msg: Arc<[u8]>) -> bool {
        match &self.channel {
            None => {
                let len = msg.len();
                self.try_send(ConnOut::Frame(msg), len)
            }
            Some(ch) => {
                let len = ch.prefix.len() + msg.len();
                self.try_send(ConnOut::Prefixed(Box::new((ch.prefix.clone(), msg))), len)
            }
        }
    }

    /// Queues a text (JSON) frame; false when the socket is a slow consumer (or gone).
    pub fn try_send_text(&self, msg: Arc<[u8]>) -> bool {
        let len = msg.len();
        self.try_send(ConnOut::Text(msg), len)
    }

    /// Marks the socket as closing with `code`: its writer sends the close frame once the queue
    /// holds nothing more for it. Used for slow consumers (the queue is full).
    pub fn kill(&self, code: u16) {
        match &self.target {
            Target::Local(l) => l.kill_code.store(code, Ordering::Relaxed),
            Target::Link(s) => s.kill(code),
        }
    }

    /// Whether the receiving side is gone.
    pub fn is_closed(&self) -> bool {
        match &self.target {
            Target::Local(l) => l.tx.is_closed(),
            Target::Link(s) => s.is_closed(),
        }
    }

    /// Ends what this sink carries: the whole socket (y-websocket), or only the document channel
    /// (`/v1`: a `doc.closed` frame; the client reopens the document to resync).
    pub fn close(&self, code: u16, reason: &str) {
        match (&self.channel, &self.target) {
            (_, Target::Link(s)) => s.close(code, reason),
            (None, Target::Local(l)) => {
                // The close goes in first, so a writer that sees the kill code finds it queued.
                let _ = l.tx.try_send(ConnOut::Close(code, reason.into()));
                self.kill(code);
            }
            (Some(ch), Target::Local(_)) => {
                let v = serde_json::json!({
                    "t": "doc.closed", "doc": ch.doc, "code": code, "reason": reason
                });
                let msg: Arc<[u8]> = serde_json::to_vec(&v).unwrap_or_default().into();
                if !self.try_send_text(msg) {
                    self.kill(1008);
                }
            }
        }
    }

    /// Closes the whole socket (also a `/v1` socket carrying this document channel) with `code`:
    /// the close is queued (so an idle writer wakes up) and the kill flag set.
    pub fn close_socket(&self, code: u16, reason: &str) {
        match &self.target {
            Target::Local(l) => {
                let _ = l.tx.try_send(ConnOut::Close(code, reason.into()));
                self.kill(code);
            }
            Target::Link(s) => s.kill(code),
        }
    }

    /// Queues a close frame without the kill flag (the shutdown path, where the queue drains first).
    fn send_close(&self, code: u16, reason: &str) {
        match &self.target {
            Target::Local(l) => {
                let _ = l.tx.try_send(ConnOut::Close(code, reason.into()));
            }
            Target::Link(s) => s.close(code, reason),
        }
    }
}

enum Cmd {
    Open {
        conn: ConnId,
        doc: DocId,
        actor: UserId,
        can_write: bool,
        sink: ConnSink,
    },
    Message {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    Close {
        conn: ConnId,
    },
    Loaded {
        doc: DocId,
        result: Result<(proto::Epoch, store::Loaded), StoreError>,
    },
    Appended {
        results: Vec<(Key, proto::Epoch, Seq, Result<(), StoreError>)>,
    },
    SnapshotDone {
        doc: DocId,
        result: Result<(), StoreError>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    Room(Box<RoomCmd>),
    RoomClose {
        conn: ConnId,
    },
    RoomLoaded {
        room: RoomId,
        result: Result<(proto::Epoch, store::Loaded), StoreError>,
    },
    RoomSnapshotDone {
        room: RoomId,
        result: Result<(), StoreError>,
    },
    Retain {
        owns: Owns,
        done: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
}

/// A native-protocol request about a room, with the socket's sink (for its replies and events).
pub struct RoomCmd {
    /// The socket (one id per socket for all its rooms).
    pub conn: ConnId,
    /// The authenticated user.
    pub user: UserId,
    /// The user's access in this room.
    pub access: RoomAccess,
    /// The room.
    pub room: RoomId,
    /// The request id, echoed in the reply.
    pub rid: Option<String>,
    /// The request.
    pub req: RoomCall,
    /// The socket's sink.
    pub sink: ConnSink,
}

/// A room request, or a history read (served from the store by the owner).
pub enum RoomCall {
    /// Handled by the room core.
    Request(RoomRequest),
    /// Events with `seq` in a range, oldest first: before `before` (the newest `limit` of them) or
    /// after `after`.
    History {
        /// Exclusive upper bound.
        before: Option<Seq>,
        /// Exclusive lower bound.
        after: Option<Seq>,
        /// At most this many (capped by `max_history_page`).
        limit: usize,
        /// Held until the reply is queued (the gateway bounds history reads in flight per socket).
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
}

/// A cheap, cloneable handle to a shard: one running in this process, or one reached over a gateway
/// link ([`crate::link::LinkClient`]).
#[derive(Clone)]
pub struct ShardHandle {
    id: ShardId,
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Local(mpsc::Sender<Cmd>),
    Remote(crate::link::LinkClient),
}

/// A predicate over keys: which streams this shard owns (after a ring change).
pub type Owns = Arc<dyn Fn(&StreamId) -> bool + Send + Sync>;

/// What a shard holds, for operators (`tandem ctl`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Loaded documents.
    pub docs: Vec<DocId>,
    /// Loaded rooms.
    pub rooms: Vec<RoomId>,
    /// Document connections.
    pub connections: usize,
    /// Room members (connections).
    pub room_connections: usize,
}

impl ShardHandle {
    /// A handle on a remote shard's link.
    pub fn remote(id: ShardId, link: crate::link::LinkClient) -> Self {
        Self {
            id,
            inner: Inner::Remote(link),
        }
    }

    /// The shard's id.
    pub fn id(&self) -> &ShardId {
        &self.id
    }

    /// The link, when the shard is remote.
    pub fn link(&self) -> Option<&crate::link::LinkClient> {
        match &self.inner {
            Inner::Remote(l) => Some(l),
            Inner::Local(_) => None,
        }
    }

    /// Whether both handles reach the shard the same way (the same driver, or the same link).
    pub fn same(&self, other: &ShardHandle) -> bool {
        match (&self.inner, &other.inner) {
            (Inner::Local(a), Inner::Local(b)) => a.same_channel(b),
            (Inner::Remote(a), Inner::Remote(b)) => a.same(b),
            _ => false,
        }
    }

    /// Whether the shard's driver is still running (remote: whether the link is up).
    pub fn is_alive(&self) -> bool {
        match &self.inner {
            Inner::Local(tx) => !tx.is_closed(),
            Inner::Remote(l) => l.is_connected(),
        }
    }

    /// Attaches a connection to `doc`.
    pub async fn open(
        &self,
        conn: ConnId,
        doc: DocId,
        actor: UserId,
        can_write: bool,
        sink: ConnSink,
    ) -> bool {
        match &self.inner {
            Inner::Local(tx) => tx
                .send(Cmd::Open {
                    conn,
                    doc,
                    actor,
                    can_write,
                    sink,
                })
                .await
                .is_ok(),
            Inner::Remote(l) => l.open(conn, doc, actor, can_write, sink).await,
        }
    }

    /// Delivers one binary message from a connection.
    pub async fn message(&self, conn: ConnId, bytes: Vec<u8>) -> bool {
        match &self.inner {
            Inner::Local(tx) => tx.send(Cmd::Message { conn, bytes }).await.is_ok(),
            Inner::Remote(l) => l.message(conn, bytes).await,
        }
    }

    /// Tells the shard a connection is gone.
    pub async fn close(&self, conn: ConnId) {
        match &self.inner {
            Inner::Local(tx) => {
                let _ = tx.send(Cmd::Close { conn }).await;
            }
            Inner::Remote(l) => l.close(conn).await,
        }
    }

    /// A native-protocol room request.
    pub async fn room(&self, cmd: RoomCmd) -> bool {
        match &self.inner {
            Inner::Local(tx) => tx.send(Cmd::Room(Box::new(cmd))).await.is_ok(),
            Inner::Remote(l) => l.room(cmd).await,
        }
    }

    /// Tells the shard a native-protocol socket is gone: it leaves every room of this shard.
    pub async fn room_close(&self, conn: ConnId) {
        match &self.inner {
            Inner::Local(tx) => {
                let _ = tx.send(Cmd::RoomClose { conn }).await;
            }
            Inner::Remote(l) => l.room_close(conn).await,
        }
    }

    /// Gives up every loaded document and room that `owns` says this shard no longer owns: their
    /// connections are closed (1012, "moved"; rooms get `room.closed` with code `moved`), committed
    /// state is snapshotted, and they leave memory. Returns once the driver has done it.
    pub async fn retain(&self, owns: Owns) {
        if let Inner::Local(tx) = &self.inner {
            let (done, wait) = oneshot::channel();
            if tx.send(Cmd::Retain { owns, done }).await.is_ok() {
                let _ = wait.await;
            }
        }
    }

    /// What the shard holds (remote shards answer on their admin endpoint instead).
    pub async fn stats(&self) -> Option<Stats> {
        let Inner::Local(tx) = &self.inner else {
            return None;
        };
        let (reply, wait) = oneshot::channel();
        tx.send(Cmd::Stats { reply }).await.ok()?;
        wait.await.ok()
    }

    /// Stops the shard: closes its connections, waits for in-flight appends, snapshots changed
    /// documents, and returns when everything is committed. (Remote: nothing; the process stops
    /// itself.)
    pub async fn shutdown(&self) {
        if let Inner::Local(tx) = &self.inner {
            let (done, wait) = oneshot::channel();
            if tx.send(Cmd::Shutdown { done }).await.is_ok() {
                let _ = wait.await;
            }
        }
    }
}

/// Starts a shard on the current tokio runtime.
pub fn spawn(
    id: ShardId,
    cfg: CoreConfig,
    store: Arc<dyn EventLog>,
    metrics: Metrics,
) -> ShardHandle {
    let (tx, rx) = mpsc::channel(8192);
    let (append_tx, append_rx) = mpsc::unbounded_channel();
    tokio::spawn(appender(
        store.clone(),
        append_rx,
        tx.clone(),
        metrics.clone(),
    ));
    let retain_events = cfg.retain_events;
    let rooms = RoomCore::new(cfg.rooms.clone(), cfg.idle_unload, cfg.snapshot_every);
    let max_history_page = cfg.rooms.max_history_page.max(1);
    let driver = Driver {
        retain_events,
        max_history_page,
        id: id.clone(),
        rooms,
        room_sinks: HashMap::new(),
        core: ShardCore::new(cfg),
        store,
        sinks: HashMap::new(),
        metrics,
        self_tx: tx.clone(),
        append_tx,
        batch: Vec::new(),
        shutdown: None,
        owns: None,
    };
    tokio::spawn(driver.run(rx));
    ShardHandle {
        id,
        inner: Inner::Local(tx),
    }
}

/// Which live object an append belongs to.
#[derive(Clone)]
enum Key {
    Doc(DocId),
    /// A room, with the event as committed (handed back to the room core for rendering).
    Room(RoomId, Box<proto::Event>),
}

type AppendItem = (Key, proto::Epoch, Seq, AppendRequest);

/// Hands appends to the store in order, grouping whatever queued up during the previous commit.
/// One batch in flight per shard keeps each document's seqs in order; the store groups across shards.
async fn appender(
    store: Arc<dyn EventLog>,
    mut rx: mpsc::UnboundedReceiver<Vec<AppendItem>>,
    back: mpsc::Sender<Cmd>,
    metrics: Metrics,
) {
    while let Some(mut items) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            items.extend(more);
        }
        let started = Instant::now();
        let (keys, reqs): (Vec<(Key, proto::Epoch, Seq)>, Vec<AppendRequest>) =
            items.into_iter().map(|(d, e, s, r)| ((d, e, s), r)).unzip();
        metrics.append_batch_events.observe(reqs.len() as f64);
        let results = store.append(reqs).await;
        metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        let results = keys
            .into_iter()
            .zip(results)
            .map(|((d, e, s), r)| (d, e, s, r))
            .collect();
        if back.send(Cmd::Appended { results }).await.is_err() {
            return;
        }
    }
}

struct Driver {
    id: ShardId,
    core: ShardCore,
    rooms: RoomCore,
    room_sinks: HashMap<ConnId, ConnSink>,
    max_history_page: usize,
    store: Arc<dyn EventLog>,
    sinks: HashMap<ConnId, ConnSink>,
    metrics: Metrics,
    self_tx: mpsc::Sender<Cmd>,
    append_tx: mpsc::UnboundedSender<Vec<AppendItem>>,
    batch: Vec<AppendItem>,
    shutdown: Option<oneshot::Sender<()>>,
    retain_events: Option<u64>,
    /// The latest ownership predicate (`retain`): opens and room requests for keys this shard does
    /// not own are refused, also when they were checked against an older ring before reaching here.
    owns: Option<Owns>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        loop {
            let deadline = match (self.core.poll_timeout(), self.rooms.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(Instant::from_std);
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                _ = sleep_until_opt(deadline) => {
                    let now = Instant::now().into_std();
                    self.core.handle_timeout(now);
                    self.rooms.handle_timeout(now);
                    self.drain();
                    continue;
                }
            };
            let Some(cmd) = cmd else { break };
            self.handle(cmd);
            // Take whatever else is queued before draining, so appends group into one batch.
            for _ in 0..256 {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => break,
                }
            }
            self.drain();
            if self.shutdown.is_some() && self.core.inflight() == 0 && self.rooms.inflight() == 0 {
                self.finish_shutdown().await;
                break;
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        let now = Instant::now().into_std();
        match cmd {
            Cmd::Open {
                conn,
                doc,
                actor,
                can_write,
                sink,
            } => {
                if self
                    .owns
                    .as_ref()
                    .is_some_and(|o| !o(&StreamId::Doc(doc.clone())))
                {
                    sink.close(1012, "not the owner, reconnect");
                    return;
                }
                self.sinks.insert(conn, sink);
                self.core.handle_open(now, conn, doc, actor, can_write);
            }
            Cmd::Message { conn, bytes } => self.core.handle_message(now, conn, bytes),
            Cmd::Close { conn } => {
                self.sinks.remove(&conn);
                self.core.handle_close(now, conn);
            }
            Cmd::Loaded { doc, result } => {
                if let Err(e) = &result {
                    tracing::warn!(shard = %self.id, %doc, error = %e, "document load failed");
                }
                self.core.handle_loaded(now, &doc, result);
            }
            Cmd::Appended { results } => {
                for (key, epoch, seq, result) in results {
                    if let Err(e) = &result {
                        match &key {
                            Key::Doc(doc) => {
                                tracing::warn!(shard = %self.id, %doc, %seq, error = %e, "append failed")
                            }
                            Key::Room(room, _) => {
                                tracing::warn!(shard = %self.id, %room, %seq, error = %e, "append failed")
                            }
                        }
                    }
                    let t = std::time::Instant::now();
                    match key {
                        Key::Doc(doc) => self.core.handle_appended(now, &doc, epoch, seq, result),
                        Key::Room(room, event) => {
                            if result.is_ok() {
                                self.metrics.room_events.inc();
                            }
                            let result = result.map(|()| *event);
                            self.rooms.handle_appended(now, &room, epoch, seq, result);
                        }
                    }
                    self.metrics
                        .apply_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
            }
            Cmd::Room(cmd) => {
                let RoomCmd {
                    conn,
                    user,
                    access,
                    room,
                    rid,
                    req,
                    sink,
                } = *cmd;
                let owned = self
                    .owns
                    .as_ref()
                    .is_none_or(|o| o(&StreamId::Room(room.clone())));
                match req {
                    RoomCall::Request(_) if !owned => {
                        let msg = crate::room::error_frame(
                            rid.as_deref(),
                            &room,
                            "unavailable",
                            crate::link::ROOM_MOVING,
                        );
                        if !sink.try_send_text(msg.into()) {
                            sink.kill(1008);
                        }
                    }
                    RoomCall::Request(req) => {
                        self.room_sinks.entry(conn).or_insert(sink);
                        self.rooms
                            .handle_request(now, conn, user, access, room, rid, req);
                    }
                    RoomCall::History {
                        before,
                        after,
                        limit,
                        permit,
                    } => self.history(sink, room, rid, (before, after, limit), permit),
                }
            }
            Cmd::RoomClose { conn } => {
                self.rooms.handle_close(now, conn);
                self.room_sinks.remove(&conn);
            }
            Cmd::RoomLoaded { room, result } => {
                if let Err(e) = &result {
                    tracing::warn!(shard = %self.id, %room, error = %e, "room load failed");
                }
                self.rooms.handle_loaded(now, &room, result);
            }
            Cmd::RoomSnapshotDone { room, result } => {
                if let Err(e) = &result {
                    tracing::debug!(shard = %self.id, %room, error = %e, "room snapshot not written");
                }
                self.rooms.handle_snapshot_written(&room, result);
            }
            Cmd::SnapshotDone { doc, result } => {
                if let Err(e) = &result {
                    tracing::debug!(shard = %self.id, %doc, error = %e, "snapshot not written");
                }
                self.core.handle_snapshot_written(now, &doc, result);
            }
            Cmd::Retain { owns, done } => {
                self.owns = Some(owns.clone());
                for doc in self.core.doc_ids() {
                    if !owns(&StreamId::Doc(doc.clone())) {
                        self.core.handle_release(now, &doc);
                    }
                }
                for room in self.rooms.room_ids() {
                    if !owns(&StreamId::Room(room.clone())) {
                        self.rooms.handle_release(now, &room);
                    }
                }
                let _ = done.send(());
            }
            Cmd::Stats { reply } => {
                let _ = reply.send(Stats {
                    docs: self.core.doc_ids(),
                    rooms: self.rooms.room_ids(),
                    connections: self.core.connections(),
                    room_connections: self.room_sinks.len(),
                });
            }
            Cmd::Shutdown { done } => {
                self.core.handle_shutdown(now);
                self.rooms.handle_shutdown(now);
                self.shutdown = Some(done);
            }
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Send { conn, msg } => {
                    let Some(sink) = self.sinks.get(&conn) else {
                        continue;
                    };
                    if !sink.try_send_frame(msg) {
                        // Slow consumer (or already gone): close it; the client reconnects and resyncs.
                        sink.kill(1008);
                        self.sinks.remove(&conn);
                        self.metrics.closes.with_label_values(&["1008"]).inc();
                        self.core.handle_close(Instant::now().into_std(), conn);
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(sink) = self.sinks.remove(&conn) {
                        sink.close(code, &reason);
                        self.metrics
                            .closes
                            .with_label_values(&[&code.to_string()])
                            .inc();
                    }
                }
                Output::Load { doc } => {
                    self.metrics.documents_loaded.inc();
                    let stream = StreamId::Doc(doc.clone());
                    self.spawn_load(stream, |result| Cmd::Loaded { doc, result });
                }
                Output::Append {
                    doc,
                    epoch,
                    seq,
                    actor,
                    update,
                } => {
                    // Identity and wall time are stamped here so the core stays free of clocks and RNGs.
                    let event = NewEvent {
                        id: uuid::Uuid::now_v7(),
                        actor,
                        ts: wall_ms(),
                        trace: None,
                        payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
                            update: Bytes(update),
                        }),
                    };
                    let req = AppendRequest {
                        stream: StreamId::Doc(doc.clone()),
                        epoch,
                        first_seq: seq,
                        events: vec![event],
                    };
                    self.batch.push((Key::Doc(doc), epoch, seq, req));
                }
                Output::Snapshot {
                    doc,
                    epoch,
                    snapshot,
                } => {
                    let store = self.store.clone();
                    let back = self.self_tx.clone();
                    let retain = self.retain_events;
                    tokio::spawn(async move {
                        let stream = StreamId::Doc(doc.clone());
                        let seq = snapshot.seq;
                        let result = store.write_snapshot(&stream, epoch, snapshot).await;
                        // Retention: events older than `retain` before the snapshot are no longer needed
                        // to load; without a setting, history is kept for replay.
                        if let (Ok(()), Some(keep)) = (&result, retain) {
                            if seq.0 > keep {
                                if let Err(e) = store.prune(&stream, epoch, Seq(seq.0 - keep)).await
                                {
                                    tracing::debug!(%doc, error = %e, "prune failed");
                                }
                            }
                        }
                        let _ = back.send(Cmd::SnapshotDone { doc, result }).await;
                    });
                }
                Output::Applied { .. } => self.metrics.updates_applied.inc(),
                Output::Unloaded { .. } => self.metrics.documents_loaded.dec(),
            }
        }
        while let Some(out) = self.rooms.poll_output() {
            self.room_output(out);
        }
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            let _ = self.append_tx.send(batch);
        }
    }

    /// Takes `stream` over (new epoch) and loads its snapshot and tail off the driver; the result comes
    /// back as the command `reply` builds.
    fn spawn_load(
        &self,
        stream: StreamId,
        reply: impl FnOnce(Result<(proto::Epoch, store::Loaded), StoreError>) -> Cmd + Send + 'static,
    ) {
        let store = self.store.clone();
        let back = self.self_tx.clone();
        let shard = self.id.clone();
        tokio::spawn(async move {
            let result = async {
                let epoch = store.acquire(&stream, &shard).await?;
                let loaded = store.load(&stream).await?;
                Ok((epoch, loaded))
            }
            .await;
            let _ = back.send(reply(result)).await;
        });
    }

    fn room_output(&mut self, out: RoomOutput) {
        match out {
            RoomOutput::Send { conn, msg } => {
                let Some(sink) = self.room_sinks.get(&conn) else {
                    return;
                };
                if !sink.try_send_text(msg) {
                    // Slow consumer: the socket closes (1008); its reader then reports it gone.
                    sink.kill(1008);
                    self.room_sinks.remove(&conn);
                    self.metrics.closes.with_label_values(&["1008"]).inc();
                    self.rooms.handle_close(Instant::now().into_std(), conn);
                }
            }
            RoomOutput::Load { room } => {
                self.metrics.rooms_loaded.inc();
                let stream = StreamId::Room(room.clone());
                self.spawn_load(stream, |result| Cmd::RoomLoaded { room, result });
            }
            RoomOutput::Append {
                room,
                epoch,
                seq,
                actor,
                payload,
            } => {
                let req = AppendRequest {
                    stream: StreamId::Room(room.clone()),
                    epoch,
                    first_seq: seq,
                    events: vec![NewEvent {
                        id: uuid::Uuid::now_v7(),
                        actor,
                        ts: wall_ms(),
                        trace: None,
                        payload,
                    }],
                };
                let event = Box::new(req.event(0));
                self.batch.push((Key::Room(room, event), epoch, seq, req));
            }
            RoomOutput::Snapshot {
                room,
                epoch,
                snapshot,
            } => {
                let store = self.store.clone();
                let back = self.self_tx.clone();
                tokio::spawn(async move {
                    let stream = StreamId::Room(room.clone());
                    let result = store.write_snapshot(&stream, epoch, snapshot).await;
                    let _ = back.send(Cmd::RoomSnapshotDone { room, result }).await;
                });
            }
            RoomOutput::Detached { conn } => {
                self.room_sinks.remove(&conn);
            }
            RoomOutput::Unloaded { .. } => self.metrics.rooms_loaded.dec(),
        }
    }

    /// `history`: read from the store (committed events only) and answer on the socket's sink.
    fn history(
        &self,
        sink: ConnSink,
        room: RoomId,
        rid: Option<String>,
        (before, after, limit): (Option<Seq>, Option<Seq>, usize),
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let limit = limit.clamp(1, self.max_history_page);
        // The newest page: up to the room's last seq when the room is loaded here.
        let before = match (before, after) {
            (None, None) => self.rooms.last_seq(&room).map(|s| s.next()),
            _ => before,
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            let stream = StreamId::Room(room.clone());
            let (from, keep_below) = match (after, before) {
                (Some(a), b) => (a, b),
                (None, Some(b)) => (Seq(b.0.saturating_sub(limit as u64 + 1)), Some(b)),
                // Neither: the newest page.
                (None, None) => (Seq(0), None),
            };
            let result = if after.is_none() && before.is_none() {
                newest(&*store, &stream, limit).await
            } else {
                store.read(&stream, from, limit).await
            };
            let v = match result {
                Ok(mut events) => {
                    if let Some(b) = keep_below {
                        events.retain(|e| e.seq < b);
                    }
                    serde_json::json!({ "t": "history", "id": rid, "room": room, "events": events })
                }
                Err(e) => {
                    tracing::warn!(%room, error = %e, "history read failed");
                    serde_json::json!({
                        "t": "error", "id": rid, "room": room, "code": "unavailable",
                        "message": "history could not be read, retry"
                    })
                }
            };
            if !sink.try_send_text(serde_json::to_vec(&v).unwrap_or_default().into()) {
                sink.kill(1008);
            }
            drop(permit);
        });
    }

    async fn finish_shutdown(&mut self) {
        self.core.handle_shutdown_flush(Instant::now().into_std());
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Snapshot {
                    doc,
                    epoch,
                    snapshot,
                } => {
                    let r = self
                        .store
                        .write_snapshot(&StreamId::Doc(doc.clone()), epoch, snapshot)
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(shard = %self.id, %doc, error = %e, "final snapshot not written (events are kept)");
                    }
                }
                Output::Unloaded { .. } => self.metrics.documents_loaded.dec(),
                Output::Close { conn, code, reason } => {
                    if let Some(sink) = self.sinks.remove(&conn) {
                        sink.send_close(code, &reason);
                    }
                }
                _ => {}
            }
        }
        self.rooms.handle_shutdown_flush();
        while let Some(out) = self.rooms.poll_output() {
            match out {
                RoomOutput::Snapshot {
                    room,
                    epoch,
                    snapshot,
                } => {
                    let r = self
                        .store
                        .write_snapshot(&StreamId::Room(room.clone()), epoch, snapshot)
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(shard = %self.id, %room, error = %e, "final room snapshot not written (events are kept)");
                    }
                }
                RoomOutput::Unloaded { .. } => self.metrics.rooms_loaded.dec(),
                _ => {}
            }
        }
        tracing::info!(shard = %self.id, "shard stopped, everything committed");
        if let Some(done) = self.shutdown.take() {
            let _ = done.send(());
        }
    }
}

/// The newest `limit` events of a room, oldest first (snapshot window + tail: bounded by the snapshot
/// cadence, not by the room's history).
async fn newest(
    store: &dyn EventLog,
    stream: &StreamId,
    limit: usize,
) -> Result<Vec<proto::Event>, StoreError> {
    let loaded = store.load(stream).await?;
    crate::room::newest_events(&loaded, limit)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        // A small slack groups nearby timers into one wake-up.
        Some(d) => tokio::time::sleep_until(d + Duration::from_millis(5)).await,
        None => std::future::pending().await,
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
