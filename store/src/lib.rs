//! Tandem's event log: an append-only, fenced, per-stream log of events plus snapshots.
//!
//! The [`EventLog`] trait is what shards write through. Its contract (DESIGN.md invariants 1, 4 and 5):
//! * `append` returns `Ok` only after the events are durably committed; callers broadcast or acknowledge
//!   only after that.
//! * Appends are fenced: a request whose epoch is not the stream's current epoch is refused
//!   ([`StoreError::StaleEpoch`]).
//! * `seq` is gap-free: a request must start exactly at the stream's next seq ([`StoreError::SeqConflict`]).
//!   That check, made inside the committing transaction, is what keeps a log gap-free when an earlier
//!   append failed while later ones were already queued.
//! * Event ids are unique. Re-appending a request whose events are all committed at exactly those seqs
//!   (a retry) succeeds as a no-op; any other reuse of an id is refused with [`StoreError::Duplicate`].
//!
//! Backends: [`sqlite::SqliteLog`] (the embedded default of `tandem dev`, with group commit) and
//! [`memory::MemoryLog`] (unit tests and simulations). PostgreSQL and Redis Streams come with the event
//! store issue.

#![forbid(unsafe_code)]

pub mod backend;
pub mod bus;
pub mod error;
mod group;
pub mod memory;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use proto::{Epoch, Event, NewEvent, Seq, ShardId, StreamId};

pub use backend::{Backend, BackendConfig};
pub use error::StoreError;

/// One stream's share of an append: consecutive events starting at `first_seq`, written under `epoch`.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// The stream written to.
    pub stream: StreamId,
    /// The writer's fencing epoch; must equal the stream's current epoch.
    pub epoch: Epoch,
    /// The seq of the first event; must be the stream's last seq + 1.
    pub first_seq: Seq,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl AppendRequest {
    /// The committed form of the `i`-th event (its seq is `first_seq + i`).
    pub fn event(&self, i: usize) -> Event {
        let e = &self.events[i];
        Event {
            id: e.id,
            version: e.payload.event_type().version(),
            stream: self.stream.clone(),
            seq: Seq(self.first_seq.0 + i as u64),
            epoch: self.epoch,
            actor: e.actor.clone(),
            ts: e.ts,
            trace: e.trace.clone(),
            payload: e.payload.clone(),
        }
    }
}

/// The latest snapshot of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The last seq folded into `state`.
    pub seq: Seq,
    /// The encoded state (for documents: a Yjs update v1 holding the whole document).
    pub state: Vec<u8>,
}

/// What a new owner loads: the latest snapshot and every event after it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Events after the snapshot's seq (or all events), in seq order.
    pub tail: Vec<Event>,
}

impl Loaded {
    /// The last seq present in the stream (0 when empty).
    pub fn last_seq(&self) -> Seq {
        self.tail
            .last()
            .map(|e| e.seq)
            .or(self.snapshot.as_ref().map(|s| s.seq))
            .unwrap_or_default()
    }
}

/// The event log every backend implements.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Takes ownership of `stream` for `shard`: increments and returns the stream's epoch. Any append
    /// still in flight under an older epoch will be refused.
    async fn acquire(&self, stream: &StreamId, shard: &ShardId) -> Result<Epoch, StoreError>;

    /// Appends several streams' events in one durable commit (group commit). Returns one result per
    /// request, in order; a failed request writes nothing of itself and does not affect the others.
    async fn append(&self, batch: Vec<AppendRequest>) -> Vec<Result<(), StoreError>>;

    /// Loads the latest snapshot and the tail after it.
    async fn load(&self, stream: &StreamId) -> Result<Loaded, StoreError>;

    /// Reads events with `seq > after`, at most `limit`, in seq order.
    async fn read(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// Retention: deletes the stream's events with `seq <= through`, but only when a snapshot at or after
    /// `through` exists (so loading never needs them). Returns how many were deleted. Fenced by `epoch`.
    async fn prune(&self, stream: &StreamId, epoch: Epoch, through: Seq)
        -> Result<u64, StoreError>;

    /// Stores a snapshot folding every event up to and including `seq`. Refused under a stale epoch.
    async fn write_snapshot(
        &self,
        stream: &StreamId,
        epoch: Epoch,
        snapshot: Snapshot,
    ) -> Result<(), StoreError>;
}
