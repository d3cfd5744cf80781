//! The life of one key (a document or a room) on its owner, shared by both cores: loading (requests
//! queue up), ready under an epoch, appends in flight in seq order, snapshots every so many events,
//! and idleness before an unload.
//!
//! ```text
//!   new ──Load──▶ Loading{queued} ──handle_loaded(epoch, snapshot+tail)──▶ Ready{epoch}
//!                                                                             │ assign → Append(seq)
//!                                                                             │ commit(epoch, seq) → applied
//!   release / failure / idle unload ◀─────────────────────────────────────────┘
//! ```
//!
//! Pure bookkeeping: no clock (instants come in), no IO, no knowledge of what the key holds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proto::{Epoch, Seq};
use store::StoreError;

/// Loading or serving.
pub(crate) enum Phase<Q> {
    /// Waiting for the store; what arrives meanwhile queues up.
    Loading {
        /// Requests to process once loaded, in arrival order.
        queued: VecDeque<Q>,
    },
    /// Serving under this fencing epoch.
    Ready {
        /// The epoch acquired by this load.
        epoch: Epoch,
    },
}

/// An append sent to the store and not yet answered.
pub(crate) struct InFlight<P> {
    pub epoch: Epoch,
    pub seq: Seq,
    pub item: P,
}

/// The lifecycle state of one key. `Q` is a request queued while loading, `P` what an append in
/// flight remembers until its commit.
pub(crate) struct Lifecycle<Q, P> {
    pub phase: Phase<Q>,
    /// Last committed (and applied) seq.
    pub applied: Seq,
    /// Next seq to assign.
    pub next: Seq,
    /// Appends in seq order.
    pub inflight: VecDeque<InFlight<P>>,
    /// Events committed since the last snapshot.
    pub since_snapshot: u64,
    /// Since when nobody is attached (`None` while someone is).
    pub idle_since: Option<Instant>,
}

impl<Q, P> Lifecycle<Q, P> {
    /// A key being loaded.
    pub fn loading() -> Self {
        Self {
            phase: Phase::Loading {
                queued: VecDeque::new(),
            },
            applied: Seq(0),
            next: Seq(1),
            inflight: VecDeque::new(),
            since_snapshot: 0,
            idle_since: None,
        }
    }

    /// The epoch, once ready.
    pub fn epoch(&self) -> Option<Epoch> {
        match self.phase {
            Phase::Ready { epoch } => Some(epoch),
            Phase::Loading { .. } => None,
        }
    }

    /// Whether the key serves.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready { .. })
    }

    /// Queues `q` while loading, unless `from` (its sender, by `same`) already has `max` queued.
    /// Returns `q` back when the queue refuses it or the key is not loading.
    pub fn queue(&mut self, q: Q, max: usize, same: impl Fn(&Q) -> bool) -> Result<(), Q> {
        match &mut self.phase {
            Phase::Loading { queued } if queued.iter().filter(|x| same(x)).count() < max => {
                queued.push_back(q);
                Ok(())
            }
            _ => Err(q),
        }
    }

    /// The load finished: serve under `epoch`, continuing after `last_seq` (`tail` events since the
    /// snapshot). Returns what queued up meanwhile.
    pub fn ready(
        &mut self,
        now: Instant,
        epoch: Epoch,
        last_seq: Seq,
        tail: u64,
        attached: bool,
    ) -> VecDeque<Q> {
        self.applied = last_seq;
        self.next = last_seq.next();
        self.since_snapshot = tail;
        if !attached {
            self.idle_since = Some(now);
        }
        match std::mem::replace(&mut self.phase, Phase::Ready { epoch }) {
            Phase::Loading { queued } => queued,
            Phase::Ready { .. } => VecDeque::new(),
        }
    }

    /// Assigns the next seq to an append of `item`; `None` while loading.
    pub fn assign(&mut self, item: P) -> Option<(Epoch, Seq)> {
        let epoch = self.epoch()?;
        let seq = self.next;
        self.next = seq.next();
        self.inflight.push_back(InFlight { epoch, seq, item });
        Some((epoch, seq))
    }

    /// Whether `(epoch, seq)` is the oldest append in flight (answers for anything else belong to an
    /// older incarnation of the key and are ignored).
    pub fn is_next_answer(&self, epoch: Epoch, seq: Seq) -> bool {
        self.inflight.front().map(|p| (p.epoch, p.seq)) == Some((epoch, seq))
    }

    /// The oldest append in flight committed: it is now applied.
    pub fn committed(&mut self) -> Option<InFlight<P>> {
        let p = self.inflight.pop_front()?;
        self.applied = p.seq;
        self.since_snapshot += 1;
        Some(p)
    }

    /// Ready with nothing in flight: a snapshot would hold everything accepted.
    pub fn is_quiet(&self) -> bool {
        self.inflight.is_empty() && self.is_ready()
    }

    /// Somebody attached: not idle.
    pub fn attached(&mut self) {
        self.idle_since = None;
    }

    /// The last one detached at `now`.
    pub fn detached(&mut self, now: Instant) {
        self.idle_since = Some(now);
    }

    /// When the key may be unloaded (idle, quiet), if ever.
    pub fn unload_at(&self, idle_unload: Duration) -> Option<Instant> {
        self.idle_since
            .filter(|_| self.is_quiet())
            .map(|t| t + idle_unload)
    }

    /// Whether the key is due for unloading at `now` (`attached`: somebody still uses it).
    pub fn unload_due(&self, now: Instant, idle_unload: Duration, attached: bool) -> bool {
        !attached && self.unload_at(idle_unload).is_some_and(|t| now >= t)
    }

    /// Takes a snapshot point when there is something new to snapshot: `(epoch, applied)`.
    pub fn snapshot_point(&mut self) -> Option<(Epoch, Seq)> {
        let epoch = self.epoch()?;
        if self.since_snapshot == 0 {
            return None;
        }
        self.since_snapshot = 0;
        Some((epoch, self.applied))
    }

    /// The store answered a snapshot; a failed one is retried at the next threshold (a fenced one
    /// never: another owner has the key).
    pub fn snapshot_written(&mut self, result: &Result<(), StoreError>) {
        if let Err(e) = result {
            if !e.is_fenced() {
                self.since_snapshot = self.since_snapshot.max(1);
            }
        }
    }
}
