//! The Redis Streams bus: committed events, published for other services to consume.
//!
//! [`BusLog`] wraps the system of record (any [`EventLog`]). Appends are acknowledged when the record
//! commits — Redis is never the ack gate — and the committed events are then handed to a publisher task
//! that adds them to Redis:
//! * per stream, `tandem:{doc:ID}` (hash tag = the stream name, Redis Cluster-safe), with the event's seq
//!   as the entry id (`SEQ-0`), so a re-publish is refused by Redis rather than duplicated, trimmed to
//!   about `stream_maxlen` entries;
//! * a global feed `tandem:feed` (auto ids, trimmed to about `feed_maxlen`) that downstream consumers
//!   read with consumer groups (see the webhook dispatcher).
//!
//! Every entry carries `bus_epoch`. The bus epoch lives in `tandem:bus:epoch`; when the publisher finds
//! it missing (Redis restarted without persistence, or was flushed) it starts a new epoch and refills
//! every stream it has published from the record, so consumers can tell that history was rebuilt
//! (Centrifugo-style). A stream's gap left by a crash between commit and publish is filled when the
//! stream is next loaded (the load compares the Redis stream's last seq with the record).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use std::collections::HashMap;

use proto::event::{Bytes, DocumentUpdatedV1};
use proto::{Epoch, Event, EventPayload, EventType, Seq, ShardId, StreamId, UserId};
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use crate::{AppendRequest, EventLog, Loaded, Snapshot, StoreError};

/// Bus settings.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379`.
    pub url: String,
    /// Approximate length kept per stream.
    pub stream_maxlen: usize,
    /// Approximate length kept in the global feed.
    pub feed_maxlen: usize,
}

impl BusConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream_maxlen: 10_000,
            feed_maxlen: 100_000,
        }
    }
}

/// The Redis key of a stream's bus entries.
pub fn stream_key(stream: &StreamId) -> String {
    format!("tandem:{{{stream}}}")
}

/// The global feed key.
pub const FEED_KEY: &str = "tandem:feed";
/// Streams remembered for a refill after Redis loses its data (a stream left out is still filled when
/// it is next loaded).
const MAX_REFILL_STREAMS: usize = 100_000;

/// The bus epoch key.
pub const EPOCH_KEY: &str = "tandem:bus:epoch";

/// An [`EventLog`] that publishes what its inner log commits.
pub struct BusLog {
    inner: Arc<dyn EventLog>,
    tx: mpsc::Sender<Vec<Event>>,
    conn: ConnectionManager,
}

impl BusLog {
    /// Connects to Redis and starts the publisher.
    pub async fn connect(inner: Arc<dyn EventLog>, cfg: BusConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
            .await
            .map_err(|_| StoreError::Unavailable("redis connect timeout".into()))?
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(65_536);
        let publisher = Publisher {
            inner: inner.clone(),
            conn: conn.clone(),
            cfg,
            epoch: None,
            published: VecDeque::new(),
            published_set: BTreeSet::new(),
        };
        tokio::spawn(publisher.run(rx));
        Ok(Self { inner, tx, conn })
    }

    /// The last seq of `stream` on the bus (0 when none).
    pub async fn last_published(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        last_seq(&mut self.conn.clone(), stream).await
    }
}

async fn last_seq(conn: &mut ConnectionManager, stream: &StreamId) -> Result<Seq, StoreError> {
    let v: redis::Value = redis::cmd("XREVRANGE")
        .arg(stream_key(stream))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    // [[id, [fields…]]]; the id is "SEQ-0".
    let id = match v {
        redis::Value::Array(items) => items.into_iter().next().and_then(|e| match e {
            redis::Value::Array(mut parts) if !parts.is_empty() => match parts.swap_remove(0) {
                redis::Value::BulkString(b) => String::from_utf8(b).ok(),
                redis::Value::SimpleString(s) => Some(s),
                _ => None,
            },
            _ => None,
        }),
        _ => None,
    };
    Ok(Seq(id
        .and_then(|s| s.split('-').next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)))
}

struct Publisher {
    inner: Arc<dyn EventLog>,
    conn: ConnectionManager,
    cfg: BusConfig,
    epoch: Option<String>,
    /// Streams published by this process, most recent last (refilled after a bus epoch change);
    /// bounded by `MAX_REFILL_STREAMS`, oldest forgotten first.
    published: VecDeque<StreamId>,
    published_set: BTreeSet<StreamId>,
}

impl Publisher {
    async fn run(mut self, mut rx: mpsc::Receiver<Vec<Event>>) {
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(mut events) = batch else { return };
                    while let Ok(more) = rx.try_recv() {
                        events.extend(more);
                        if events.len() > 4096 { break; }
                    }
                    self.publish_with_retry(events).await;
                }
                _ = check.tick() => {
                    if let Err(e) = self.ensure_epoch().await {
                        tracing::debug!(error = %e, "bus epoch check failed");
                    }
                }
            }
        }
    }

    /// Makes sure the bus epoch exists; after a loss, starts a new one and refills from the record.
    async fn ensure_epoch(&mut self) -> Result<(), StoreError> {
        let err = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        let current: Option<String> = redis::cmd("GET")
            .arg(EPOCH_KEY)
            .query_async(&mut self.conn)
            .await
            .map_err(err)?;
        match (self.epoch.clone(), current) {
            (Some(mine), Some(cur)) if mine == cur => Ok(()),
            (_, Some(cur)) => {
                // Another process started it, or this is our first look: adopt it.
                self.epoch = Some(cur);
                Ok(())
            }
            (had, None) => {
                let fresh = uuid::Uuid::now_v7().to_string();
                let set: Option<String> = redis::cmd("SET")
                    .arg(EPOCH_KEY)
                    .arg(&fresh)
                    .arg("NX")
                    .query_async(&mut self.conn)
                    .await
                    .map_err(err)?;
                let cur: Option<String> = if set.is_some() {
                    Some(fresh)
                } else {
                    redis::cmd("GET")
                        .arg(EPOCH_KEY)
                        .query_async(&mut self.conn)
                        .await
                        .map_err(err)?
                };
                self.epoch = cur;
                if had.is_some() {
                    tracing::warn!("the Redis bus lost its data (restart or flush): new bus epoch, refilling from the record");
                    self.refill().await?;
                }
                Ok(())
            }
        }
    }

    async fn refill(&mut self) -> Result<(), StoreError> {
        // Most recently published streams first, so the live ones catch up soonest.
        let streams: Vec<StreamId> = self.published.iter().rev().cloned().collect();
        for stream in streams {
            let last = self.inner.load(&stream).await?.last_seq();
            let from = Seq(last.0.saturating_sub(self.cfg.stream_maxlen as u64));
            let events = self
                .inner
                .read(&stream, from, self.cfg.stream_maxlen)
                .await?;
            self.publish(&events).await?;
        }
        Ok(())
    }

    async fn publish_with_retry(&mut self, events: Vec<Event>) {
        let mut delay = Duration::from_millis(50);
        loop {
            let r = match self.ensure_epoch().await {
                Ok(()) => self.publish(&events).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => return,
                Err(e) => {
                    // The record has these events; the bus catches up when Redis is back.
                    tracing::warn!(error = %e, events = events.len(), "bus publish failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn remember(&mut self, stream: &StreamId) {
        if self.published_set.insert(stream.clone()) {
            self.published.push_back(stream.clone());
            if self.published.len() > MAX_REFILL_STREAMS {
                if let Some(old) = self.published.pop_front() {
                    self.published_set.remove(&old);
                }
            }
        }
    }

    async fn publish(&mut self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let epoch = self.epoch.clone().unwrap_or_default();
        // Skip what is already on the bus (a retry, a refill, a load-time gap fill): one owner publishes a
        // stream, so the last published seq per stream is a reliable filter, and the feed gets no
        // duplicates.
        let mut last = std::collections::HashMap::new();
        for e in events {
            if !last.contains_key(&e.stream) {
                let seq = last_seq(&mut self.conn, &e.stream).await?;
                last.insert(e.stream.clone(), seq);
            }
        }
        let mut pipe = redis::pipe();
        let mut n = 0;
        for e in events {
            let Some(seen) = last.get_mut(&e.stream) else {
                continue;
            };
            if e.seq <= *seen {
                continue;
            }
            *seen = e.seq;
            n += 1;
            self.remember(&e.stream);
            let fields = entry_fields(e, &epoch);
            let mut add = redis::cmd("XADD");
            add.arg(stream_key(&e.stream))
                .arg("MAXLEN")
                .arg("~")
                .arg(self.cfg.stream_maxlen)
                .arg(format!("{}-0", e.seq.0));
            for (k, v) in &fields {
                add.arg(*k).arg(v.as_slice());
            }
            pipe.add_command(add).ignore();
            let mut feed = redis::cmd("XADD");
            feed.arg(FEED_KEY)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.cfg.feed_maxlen)
                .arg("*");
            for (k, v) in &fields {
                feed.arg(*k).arg(v.as_slice());
            }
            pipe.add_command(feed).ignore();
        }
        if n == 0 {
            return Ok(());
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

fn entry_fields(e: &Event, bus_epoch: &str) -> Vec<(&'static str, Vec<u8>)> {
    let payload = match &e.payload {
        EventPayload::DocumentUpdated(p) => p.update.0.clone(),
        other => other.to_stored(),
    };
    vec![
        ("id", e.id.to_string().into_bytes()),
        ("stream", e.stream.to_string().into_bytes()),
        ("seq", e.seq.0.to_string().into_bytes()),
        ("epoch", e.epoch.0.to_string().into_bytes()),
        ("type", e.payload.event_type().name().as_bytes().to_vec()),
        ("version", e.version.to_string().into_bytes()),
        ("actor", e.actor.as_str().as_bytes().to_vec()),
        ("ts", e.ts.to_string().into_bytes()),
        ("payload", payload),
        ("bus_epoch", bus_epoch.as_bytes().to_vec()),
    ]
}

#[async_trait]
impl EventLog for BusLog {
    async fn acquire(&self, stream: &StreamId, shard: &ShardId) -> Result<Epoch, StoreError> {
        self.inner.acquire(stream, shard).await
    }

    async fn append(&self, batch: Vec<AppendRequest>) -> Vec<Result<(), StoreError>> {
        let committed: Vec<Event> = batch
            .iter()
            .flat_map(|r| (0..r.events.len()).map(move |i| r.event(i)))
            .collect();
        let results = self.inner.append(batch.clone()).await;
        let mut publish = Vec::new();
        let mut at = 0;
        for (req, r) in batch.iter().zip(&results) {
            if r.is_ok() {
                publish.extend_from_slice(&committed[at..at + req.events.len()]);
            }
            at += req.events.len();
        }
        if !publish.is_empty() && self.tx.try_send(publish).is_err() {
            // The publisher is far behind; the gap is filled when the stream is next loaded.
            tracing::warn!("bus publisher queue full; events will be republished on the next load");
        }
        results
    }

    async fn load(&self, stream: &StreamId) -> Result<Loaded, StoreError> {
        let loaded = self.inner.load(stream).await?;
        // Fill a gap left by a crash between commit and publish (best effort: Redis may be down).
        if let Ok(published) = last_seq(&mut self.conn.clone(), stream).await {
            let missing: Vec<Event> = loaded
                .tail
                .iter()
                .filter(|e| e.seq > published)
                .cloned()
                .collect();
            if !missing.is_empty() {
                let _ = self.tx.try_send(missing);
            }
        }
        Ok(loaded)
    }

    async fn read(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.read(stream, after, limit).await
    }

    async fn prune(
        &self,
        stream: &StreamId,
        epoch: Epoch,
        through: Seq,
    ) -> Result<u64, StoreError> {
        self.inner.prune(stream, epoch, through).await
    }

    async fn write_snapshot(
        &self,
        stream: &StreamId,
        epoch: Epoch,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.inner.write_snapshot(stream, epoch, snapshot).await
    }
}

fn field<'a>(f: &'a HashMap<String, Vec<u8>>, k: &str) -> Result<&'a str, StoreError> {
    f.get(k)
        .and_then(|v| std::str::from_utf8(v).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("bus entry without {k}")))
}

/// Rebuilds the event envelope from a bus entry's fields (for consumers of the bus).
pub fn event_from_entry(f: &HashMap<String, Vec<u8>>) -> Result<Event, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("bus entry with invalid {what}"));
    let ty = EventType::from_name(field(f, "type")?).map_err(|_| bad("type"))?;
    let version: u16 = field(f, "version")?.parse().map_err(|_| bad("version"))?;
    let payload = f.get("payload").ok_or_else(|| bad("payload"))?;
    let payload = if ty == EventType::DocumentUpdated {
        EventPayload::DocumentUpdated(DocumentUpdatedV1 {
            update: Bytes(payload.clone()),
        })
    } else {
        EventPayload::from_stored(ty, version, payload).map_err(|_| bad("payload"))?
    };
    Ok(Event {
        id: field(f, "id")?.parse().map_err(|_| bad("id"))?,
        version,
        stream: StreamId::parse(field(f, "stream")?).map_err(|_| bad("stream"))?,
        seq: Seq(field(f, "seq")?.parse().map_err(|_| bad("seq"))?),
        epoch: Epoch(field(f, "epoch")?.parse().map_err(|_| bad("epoch"))?),
        actor: UserId::parse(field(f, "actor")?).map_err(|_| bad("actor"))?,
        ts: field(f, "ts")?.parse().map_err(|_| bad("ts"))?,
        trace: None,
        payload,
    })
}
