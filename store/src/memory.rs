//! An in-memory event log for unit tests and simulations (not durable).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use proto::{Epoch, Event, Seq, ShardId, StreamId};

use crate::{AppendRequest, EventLog, Loaded, Snapshot, StoreError};

#[derive(Default)]
struct Stream {
    epoch: Epoch,
    events: Vec<Event>,
    snapshot: Option<Snapshot>,
}

/// A [`EventLog`] kept in a mutex-protected map.
#[derive(Default)]
pub struct MemoryLog {
    inner: Mutex<(HashMap<StreamId, Stream>, HashSet<uuid_key::Key>)>,
}

mod uuid_key {
    /// Event ids, as raw bytes.
    pub type Key = [u8; 16];
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (HashMap<StreamId, Stream>, HashSet<uuid_key::Key>)> {
        // A panic while holding the lock only happens in a failing test; keep going with the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn acquire(&self, stream: &StreamId, _shard: &ShardId) -> Result<Epoch, StoreError> {
        let mut g = self.lock();
        let s = g.0.entry(stream.clone()).or_default();
        s.epoch = s.epoch.next();
        Ok(s.epoch)
    }

    async fn append(&self, batch: Vec<AppendRequest>) -> Vec<Result<(), StoreError>> {
        let mut g = self.lock();
        let (streams, ids) = &mut *g;
        batch
            .iter()
            .map(|req| {
                let s = streams.entry(req.stream.clone()).or_default();
                let retried = !req.events.is_empty()
                    && req.events.iter().enumerate().all(|(i, e)| {
                        s.events
                            .iter()
                            .any(|x| x.id == e.id && x.seq.0 == req.first_seq.0 + i as u64)
                    });
                if retried {
                    return Ok(());
                }
                StoreError::check_epoch(req.epoch, s.epoch)?;
                let last = s
                    .events
                    .last()
                    .map(|e| e.seq)
                    .or(s.snapshot.as_ref().map(|x| x.seq))
                    .unwrap_or_default();
                if req.first_seq != last.next() {
                    return Err(StoreError::SeqConflict {
                        expected: last.next(),
                        got: req.first_seq,
                    });
                }
                if req.events.iter().any(|e| ids.contains(e.id.as_bytes())) {
                    return Err(StoreError::Duplicate);
                }
                for i in 0..req.events.len() {
                    ids.insert(*req.events[i].id.as_bytes());
                    s.events.push(req.event(i));
                }
                Ok(())
            })
            .collect()
    }

    async fn load(&self, stream: &StreamId) -> Result<Loaded, StoreError> {
        let g = self.lock();
        let Some(s) = g.0.get(stream) else {
            return Ok(Loaded::default());
        };
        let after = s.snapshot.as_ref().map(|x| x.seq).unwrap_or_default();
        Ok(Loaded {
            snapshot: s.snapshot.clone(),
            tail: s.events.iter().filter(|e| e.seq > after).cloned().collect(),
        })
    }

    async fn read(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let g = self.lock();
        Ok(g.0
            .get(stream)
            .map(|s| {
                s.events
                    .iter()
                    .filter(|e| e.seq > after)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn prune(
        &self,
        stream: &StreamId,
        epoch: Epoch,
        through: Seq,
    ) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let s = g.0.entry(stream.clone()).or_default();
        StoreError::check_epoch(epoch, s.epoch)?;
        if s.snapshot.as_ref().is_none_or(|x| x.seq < through) {
            return Ok(0);
        }
        let before = s.events.len();
        s.events.retain(|e| e.seq > through);
        Ok((before - s.events.len()) as u64)
    }

    async fn write_snapshot(
        &self,
        stream: &StreamId,
        epoch: Epoch,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        let s = g.0.entry(stream.clone()).or_default();
        StoreError::check_epoch(epoch, s.epoch)?;
        s.snapshot = Some(snapshot);
        Ok(())
    }
}
