//! The tokio driver around [`ShardCore`]: owns the core, feeds it inputs from gateways and the store,
//! and carries out its outputs. The only code in this crate that awaits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::event::{Bytes, DocumentUpdatedV1};
use proto::{DocId, EventPayload, NewEvent, Seq, ShardId, StreamId, UserId};
use store::{AppendRequest, EventLog, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::CoreConfig;
use crate::core::{ConnId, Output, ShardCore};
use crate::metrics::Metrics;

/// What a shard sends to one client connection.
#[derive(Debug, Clone)]
pub enum ConnOut {
    /// A binary message.
    Frame(Arc<[u8]>),
    /// Close the socket with this code and reason. (`Box<str>`, not `String`: this enum sizes every
    /// slot of each socket's queue, allocated up front per connection.)
    Close(u16, Box<str>),
}

/// The shard's handle on one connection's outbound queue (bounded: a slow consumer is closed).
#[derive(Clone)]
pub struct ConnSink {
    tx: mpsc::Sender<ConnOut>,
    /// Close code to use when the queue is dropped without a `Close` (0 = none).
    kill_code: Arc<AtomicU16>,
    /// Bytes queued and not yet written; the writer subtracts what it wrote.
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
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
                tx,
                kill_code: kill.clone(),
                queued_bytes: bytes.clone(),
                max_bytes,
            },
            ConnQueue {
                rx,
                kill_code: kill,
                queued_bytes: bytes,
            },
        )
    }

    fn try_send_frame(&self, msg: Arc<[u8]>) -> bool {
        let len = msg.len();
        if self.queued_bytes.load(Ordering::Relaxed) + len > self.max_bytes {
            return false;
        }
        if self.tx.try_send(ConnOut::Frame(msg)).is_err() {
            return false;
        }
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        true
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
        results: Vec<(DocId, proto::Epoch, Seq, Result<(), StoreError>)>,
    },
    SnapshotDone {
        doc: DocId,
        result: Result<(), StoreError>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A cheap, cloneable handle to a running shard.
#[derive(Clone)]
pub struct ShardHandle {
    id: ShardId,
    tx: mpsc::Sender<Cmd>,
}

impl ShardHandle {
    /// The shard's id.
    pub fn id(&self) -> &ShardId {
        &self.id
    }

    /// Whether the shard's driver is still running.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed()
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
        self.tx
            .send(Cmd::Open {
                conn,
                doc,
                actor,
                can_write,
                sink,
            })
            .await
            .is_ok()
    }

    /// Delivers one binary message from a connection.
    pub async fn message(&self, conn: ConnId, bytes: Vec<u8>) -> bool {
        self.tx.send(Cmd::Message { conn, bytes }).await.is_ok()
    }

    /// Tells the shard a connection is gone.
    pub async fn close(&self, conn: ConnId) {
        let _ = self.tx.send(Cmd::Close { conn }).await;
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
    let driver = Driver {
        retain_events,
        id: id.clone(),
        core: ShardCore::new(cfg),
        store,
        sinks: HashMap::new(),
        metrics,
        self_tx: tx.clone(),
        append_tx,
        batch: Vec::new(),
        shutdown: None,
    };
    tokio::spawn(driver.run(rx));
    ShardHandle { id, tx }
}

type AppendItem = (DocId, proto::Epoch, Seq, AppendRequest);

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
        let (keys, reqs): (Vec<(DocId, proto::Epoch, Seq)>, Vec<AppendRequest>) =
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
    store: Arc<dyn EventLog>,
    sinks: HashMap<ConnId, ConnSink>,
    metrics: Metrics,
    self_tx: mpsc::Sender<Cmd>,
    append_tx: mpsc::UnboundedSender<Vec<AppendItem>>,
    batch: Vec<AppendItem>,
    shutdown: Option<oneshot::Sender<()>>,
    retain_events: Option<u64>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        loop {
            let deadline = self.core.poll_timeout().map(Instant::from_std);
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                _ = sleep_until_opt(deadline) => {
                    self.core.handle_timeout(Instant::now().into_std());
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
            if self.shutdown.is_some() && self.core.inflight() == 0 {
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
                for (doc, epoch, seq, result) in results {
                    if let Err(e) = &result {
                        tracing::warn!(shard = %self.id, %doc, %seq, error = %e, "append failed");
                    }
                    let t = std::time::Instant::now();
                    self.core.handle_appended(now, &doc, epoch, seq, result);
                    self.metrics
                        .apply_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
            }
            Cmd::SnapshotDone { doc, result } => {
                if let Err(e) = &result {
                    tracing::debug!(shard = %self.id, %doc, error = %e, "snapshot not written");
                }
                self.core.handle_snapshot_written(now, &doc, result);
            }
            Cmd::Shutdown { done } => {
                self.core.handle_shutdown(now);
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
                        sink.kill_code.store(1008, Ordering::Relaxed);
                        self.sinks.remove(&conn);
                        self.metrics.closes.with_label_values(&["1008"]).inc();
                        self.core.handle_close(Instant::now().into_std(), conn);
                    }
                }
                Output::Close { conn, code, reason } => {
                    if let Some(sink) = self.sinks.remove(&conn) {
                        sink.kill_code.store(code, Ordering::Relaxed);
                        let _ = sink.tx.try_send(ConnOut::Close(code, reason.into()));
                        self.metrics
                            .closes
                            .with_label_values(&[&code.to_string()])
                            .inc();
                    }
                }
                Output::Load { doc } => {
                    self.metrics.documents_loaded.inc();
                    let store = self.store.clone();
                    let back = self.self_tx.clone();
                    let shard = self.id.clone();
                    tokio::spawn(async move {
                        let stream = StreamId::Doc(doc.clone());
                        let result = async {
                            let epoch = store.acquire(&stream, &shard).await?;
                            let loaded = store.load(&stream).await?;
                            Ok((epoch, loaded))
                        }
                        .await;
                        let _ = back.send(Cmd::Loaded { doc, result }).await;
                    });
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
                    self.batch.push((doc, epoch, seq, req));
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
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            let _ = self.append_tx.send(batch);
        }
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
                        let _ = sink.tx.try_send(ConnOut::Close(code, reason.into()));
                    }
                }
                _ => {}
            }
        }
        tracing::info!(shard = %self.id, "shard stopped, everything committed");
        if let Some(done) = self.shutdown.take() {
            let _ = done.send(());
        }
    }
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
