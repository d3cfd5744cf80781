//! The tokio driver around the shard's sans-IO cores ([`ShardCore`] for documents, [`RoomCore`] for
//! rooms): owns them, feeds them inputs from the edges and the store, and carries out their outputs.
//! The only code in this crate, with the link listener, that awaits.
//!
//! Run loop: wait for the next command or the cores' earliest deadline; handle it and whatever else
//! is queued (up to 256, so appends group into one batch); drain both cores' outputs; hand the batch
//! of appends to the appender task (one store call in flight per shard).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proto::event::{Bytes, DocumentUpdatedV1};
use proto::link::RoomCall;
use proto::v1::{ErrorCode, RequestId, ServerFrame};
use proto::{DocId, Event, EventPayload, NewEvent, RoomId, Seq, ShardId, StreamId, UserId};
use store::{AppendRequest, EventLog, Snapshot, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::CoreConfig;
use crate::core::{Output, ShardCore};
use crate::handle::{
    room_error, ConnId, ConnSink, Owns, Permit, PortFuture, RoomCmd, ShardHandle, ShardPort, Stats,
    ROOM_MOVING,
};
use crate::media::{MediaCmd, MediaHandle, MediaSettings, Persist};
use crate::metrics::Metrics;
use crate::room::{RoomCore, RoomOutput};
use crate::timer::{self, wall_ms};

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
    /// A call event for a room's log, from the media driver.
    CallEvent(Box<Persist>),
}

/// The edges' way into a driver of this process.
struct LocalPort {
    tx: mpsc::Sender<Cmd>,
}

impl ShardPort for LocalPort {
    fn open(
        &self,
        conn: ConnId,
        doc: DocId,
        actor: UserId,
        can_write: bool,
        sink: ConnSink,
    ) -> PortFuture<'_, bool> {
        Box::pin(async move {
            let cmd = Cmd::Open {
                conn,
                doc,
                actor,
                can_write,
                sink,
            };
            self.tx.send(cmd).await.is_ok()
        })
    }

    fn message(&self, conn: ConnId, bytes: Vec<u8>) -> PortFuture<'_, bool> {
        Box::pin(async move { self.tx.send(Cmd::Message { conn, bytes }).await.is_ok() })
    }

    fn close(&self, conn: ConnId) -> PortFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.tx.send(Cmd::Close { conn }).await;
        })
    }

    fn room(&self, cmd: RoomCmd) -> PortFuture<'_, bool> {
        Box::pin(async move { self.tx.send(Cmd::Room(Box::new(cmd))).await.is_ok() })
    }

    fn room_close(&self, conn: ConnId) -> PortFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.tx.send(Cmd::RoomClose { conn }).await;
        })
    }

    fn is_alive(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// A shard driver running in this process: the edges' [`ShardHandle`] on it, plus what only its
/// process may do (retain keys after a ring change, read its holdings, shut it down).
#[derive(Clone)]
pub struct LocalShard {
    handle: ShardHandle,
    tx: mpsc::Sender<Cmd>,
    media: Option<MediaHandle>,
}

impl LocalShard {
    /// The edges' handle.
    pub fn handle(&self) -> ShardHandle {
        self.handle.clone()
    }

    /// The shard's id.
    pub fn id(&self) -> &ShardId {
        self.handle.id()
    }

    /// Gives up every loaded document and room that `owns` says this shard no longer owns: their
    /// connections are closed (1012, "moved"; rooms get `room.closed` with code `moved`), committed
    /// state is snapshotted, and they leave memory; later opens of such keys are refused. Returns
    /// once the driver has done it.
    pub async fn retain(&self, owns: Owns) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Cmd::Retain { owns, done }).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The media socket's address as clients reach it (`None`: calls are off).
    pub fn media_addr(&self) -> Option<std::net::SocketAddr> {
        self.media.as_ref().map(|m| m.advertised)
    }

    /// The call core's counters (`None`: calls are off).
    pub async fn call_stats(&self) -> Option<signaling::CallStats> {
        self.media.as_ref()?.stats().await
    }

    /// What the shard holds.
    pub async fn stats(&self) -> Option<Stats> {
        let (reply, wait) = oneshot::channel();
        self.tx.send(Cmd::Stats { reply }).await.ok()?;
        wait.await.ok()
    }

    /// Stops the shard: closes its connections, waits for in-flight appends, snapshots changed
    /// documents, and returns when everything is committed.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Cmd::Shutdown { done }).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Starts a shard on the current tokio runtime; with `media`, its calls too (binding the UDP media
/// socket, which is the only way this fails).
pub fn spawn(
    id: ShardId,
    cfg: CoreConfig,
    store: Arc<dyn EventLog>,
    metrics: Metrics,
    media: Option<MediaSettings>,
) -> std::io::Result<LocalShard> {
    let (tx, rx) = mpsc::channel(8192);
    // Call events come back in their order on a channel of their own (never full: a handful per
    // join or leave, which the gateways rate-limit).
    let (persist_tx, persist_rx) = mpsc::unbounded_channel();
    let media = match media {
        Some(settings) => Some(crate::media::spawn(settings, persist_tx)?),
        None => None,
    };
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
        media: media.clone(),
    };
    tokio::spawn(driver.run(rx, persist_rx));
    Ok(LocalShard {
        handle: ShardHandle::new(id, Arc::new(LocalPort { tx: tx.clone() })),
        tx,
        media,
    })
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
    /// The media driver (calls), when enabled.
    media: Option<MediaHandle>,
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        mut calls: mpsc::UnboundedReceiver<Persist>,
    ) {
        loop {
            // A small slack groups nearby timers into one wake-up.
            let deadline = match (self.core.poll_timeout(), self.rooms.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|d| d + Duration::from_millis(5));
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                Some(p) = calls.recv() => Some(Cmd::CallEvent(Box::new(p))),
                _ = timer::sleep_until(deadline) => {
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

    fn owned(&self, key: StreamId) -> bool {
        self.owns.as_ref().is_none_or(|o| o(&key))
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
                if !self.owned(StreamId::Doc(doc.clone())) {
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
            Cmd::Appended { results } => self.appended(now, results),
            Cmd::Room(cmd) => self.room(now, *cmd),
            Cmd::RoomClose { conn } => {
                self.rooms.handle_close(now, conn);
                self.room_sinks.remove(&conn);
                if let Some(m) = &self.media {
                    m.tell(MediaCmd::Close { conn });
                }
            }
            Cmd::CallEvent(p) => {
                let Persist {
                    room,
                    actor,
                    payload,
                } = *p;
                self.rooms.handle_system_event(now, &room, actor, payload);
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
                        // The call first: its participants are told `moved`, not `left`.
                        if let Some(m) = &self.media {
                            m.tell(MediaCmd::Release {
                                room: room.clone(),
                                code: ErrorCode::Moved,
                                message: "the room moved to another shard: join the call again",
                            });
                        }
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
                if let Some(m) = &self.media {
                    for room in self.rooms.room_ids() {
                        m.tell(MediaCmd::Release {
                            room,
                            code: ErrorCode::ShuttingDown,
                            message: "the server is stopping: join the call again",
                        });
                    }
                }
                self.core.handle_shutdown(now);
                self.rooms.handle_shutdown(now);
                self.shutdown = Some(done);
            }
        }
    }

    fn appended(
        &mut self,
        now: std::time::Instant,
        results: Vec<(Key, proto::Epoch, Seq, Result<(), StoreError>)>,
    ) {
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

    fn room(&mut self, now: std::time::Instant, cmd: RoomCmd) {
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
        match call {
            RoomCall::Request { .. } if !self.owned(StreamId::Room(room.clone())) => {
                let msg = room_error(rid.as_ref(), &room, ErrorCode::Unavailable, ROOM_MOVING);
                sink.send_text_or_kill(msg.into());
            }
            RoomCall::Request { req } => {
                self.room_sinks.entry(conn).or_insert(sink);
                self.rooms
                    .handle_request(now, conn, user, access, room, rid, req);
            }
            RoomCall::History {
                before,
                after,
                limit,
            } => {
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                self.history(sink, room, rid, (before, after, limit), permit)
            }
            RoomCall::Call { .. } if !self.owned(StreamId::Room(room.clone())) => {
                let msg = room_error(rid.as_ref(), &room, ErrorCode::Unavailable, ROOM_MOVING);
                sink.send_text_or_kill(msg.into());
            }
            RoomCall::Call { req } => {
                let refusal = match &self.media {
                    None => Some((
                        ErrorCode::BadRequest,
                        "calls are not enabled on this server",
                    )),
                    Some(_) if self.shutdown.is_some() => {
                        Some((ErrorCode::ShuttingDown, "the server is stopping"))
                    }
                    Some(_) if !self.rooms.is_member(&room, conn) => Some((
                        ErrorCode::UnknownRoom,
                        "this socket has not joined the room (join it before its call)",
                    )),
                    Some(m) => {
                        let cmd = MediaCmd::Request {
                            conn,
                            user,
                            access,
                            room: room.clone(),
                            rid: rid.clone(),
                            req,
                            sink: sink.clone(),
                        };
                        (!m.try_send(cmd))
                            .then_some((ErrorCode::Limit, "the shard's call queue is full, retry"))
                    }
                };
                if let Some((code, message)) = refusal {
                    sink.send_text_or_kill(room_error(rid.as_ref(), &room, code, message).into());
                }
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
                        self.core.handle_close(Instant::now().into_std(), conn);
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(sink) = self.sinks.remove(&conn) {
                        sink.close(code, &reason);
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
                    let payload = EventPayload::DocumentUpdated(DocumentUpdatedV1 {
                        update: Bytes(update),
                    });
                    let req =
                        append_request(StreamId::Doc(doc.clone()), epoch, seq, actor, payload);
                    self.batch.push((Key::Doc(doc), epoch, seq, req));
                }
                Output::Snapshot {
                    doc,
                    epoch,
                    snapshot,
                } => {
                    let stream = StreamId::Doc(doc.clone());
                    self.spawn_snapshot(stream, epoch, snapshot, self.retain_events, |result| {
                        Cmd::SnapshotDone { doc, result }
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

    /// Writes a snapshot off the driver (then, with `retain`, prunes events older than that many
    /// before it); the result comes back as the command `reply` builds.
    fn spawn_snapshot(
        &self,
        stream: StreamId,
        epoch: proto::Epoch,
        snapshot: Snapshot,
        retain: Option<u64>,
        reply: impl FnOnce(Result<(), StoreError>) -> Cmd + Send + 'static,
    ) {
        let store = self.store.clone();
        let back = self.self_tx.clone();
        tokio::spawn(async move {
            let seq = snapshot.seq;
            let result = store.write_snapshot(&stream, epoch, snapshot).await;
            // Retention: events older than `retain` before the snapshot are no longer needed to
            // load; without a setting, history is kept for replay.
            if let (Ok(()), Some(keep)) = (&result, retain) {
                if seq.0 > keep {
                    if let Err(e) = store.prune(&stream, epoch, Seq(seq.0 - keep)).await {
                        tracing::debug!(%stream, error = %e, "prune failed");
                    }
                }
            }
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
                    self.rooms.handle_close(Instant::now().into_std(), conn);
                }
            }
            RoomOutput::Load { room } => {
                // A call of this room still running here (its members were detached by an unload
                // or a failure) ends before the room's log is read again.
                if let Some(m) = &self.media {
                    m.tell(MediaCmd::Release {
                        room: room.clone(),
                        code: ErrorCode::Unavailable,
                        message: "the room was reloaded: join the call again",
                    });
                }
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
                let req = append_request(StreamId::Room(room.clone()), epoch, seq, actor, payload);
                let event = Box::new(req.event(0));
                self.batch.push((Key::Room(room, event), epoch, seq, req));
            }
            RoomOutput::Snapshot {
                room,
                epoch,
                snapshot,
            } => {
                let stream = StreamId::Room(room.clone());
                self.spawn_snapshot(stream, epoch, snapshot, None, |result| {
                    Cmd::RoomSnapshotDone { room, result }
                });
            }
            RoomOutput::Detached { conn } => {
                self.room_sinks.remove(&conn);
            }
            RoomOutput::Departed { conn, room } => {
                if let Some(m) = &self.media {
                    m.tell(MediaCmd::Departed { conn, room });
                }
            }
            RoomOutput::Unloaded { .. } => self.metrics.rooms_loaded.dec(),
        }
    }

    /// `history`: read from the store (committed events only) and answer on the socket's sink.
    fn history(
        &self,
        sink: ConnSink,
        room: RoomId,
        rid: Option<RequestId>,
        (before, after, limit): (Option<Seq>, Option<Seq>, usize),
        permit: Option<Permit>,
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
            let msg = match result {
                Ok(mut events) => {
                    if let Some(b) = keep_below {
                        events.retain(|e| e.seq < b);
                    }
                    ServerFrame::<Event>::History {
                        id: rid,
                        room,
                        events,
                    }
                    .to_bytes()
                }
                Err(e) => {
                    tracing::warn!(%room, error = %e, "history read failed");
                    let message = "history could not be read, retry";
                    room_error(rid.as_ref(), &room, ErrorCode::Unavailable, message)
                }
            };
            sink.send_text_or_kill(msg.into());
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

/// One event to append at `seq`. Identity and wall time are stamped here so the cores stay free of
/// clocks and RNGs.
fn append_request(
    stream: StreamId,
    epoch: proto::Epoch,
    seq: Seq,
    actor: UserId,
    payload: EventPayload,
) -> AppendRequest {
    AppendRequest {
        stream,
        epoch,
        first_seq: seq,
        events: vec![NewEvent {
            id: uuid::Uuid::now_v7(),
            actor,
            ts: wall_ms(),
            trace: None,
            payload,
        }],
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
