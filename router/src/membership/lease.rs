//! Keeping a shard's lease, sans-IO: renew every third of the lease; a lease that lapsed (Redis
//! forgot it, or this process was paused longer than the lease) means other shards may own our keys
//! now; a lease held by another process with our id means we must stop.
//!
//! Driver contract: sleep until [`LeaseKeeper::poll_timeout`]; call [`LeaseKeeper::handle_timeout`],
//! which says when a renewal is due (the instant it is sent, taken before the request: the lease runs
//! from when Redis saw it, not from the reply); send it; hand the answer to
//! [`LeaseKeeper::handle_renewed`] and act on the event it returns. Renewals run on their own task so
//! that a busy shard never delays them.

use std::time::{Duration, Instant};

use super::Lease;

/// What a renewal's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The lease lapsed (or this process was paused longer than it): others may own our keys.
    Lost,
    /// Another process holds this id's lease: stop.
    Replaced,
}

/// The renewal schedule and the last instant the lease was known held.
#[derive(Debug, Clone)]
pub struct LeaseKeeper {
    lease: Duration,
    every: Duration,
    /// When the last renewal that found the lease ours (or took it) was sent.
    last: Instant,
    next: Instant,
    replaced: bool,
}

impl LeaseKeeper {
    /// The lease was registered at `now`; the first renewal is due at once.
    pub fn new(now: Instant, lease: Duration) -> Self {
        Self {
            lease,
            every: lease / 3,
            last: now,
            next: now,
            replaced: false,
        }
    }

    /// When the next renewal is due (`None` once replaced: nothing more to do).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.replaced).then_some(self.next)
    }

    /// At `now`: `Some(now)` when a renewal must be sent now (the instant to hand back with its
    /// answer).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Instant> {
        if self.replaced || now < self.next {
            return None;
        }
        // From now, not from when it was due: a late renewal does not cause a burst.
        self.next = now + self.every;
        Some(now)
    }

    /// The answer to the renewal sent at `sent` (`Err`: Redis did not answer).
    pub fn handle_renewed<E>(
        &mut self,
        sent: Instant,
        answer: Result<Lease, E>,
    ) -> Option<LeaseEvent> {
        let stalled = sent.saturating_duration_since(self.last) >= self.lease;
        match answer {
            Ok(Lease::Held) => {
                self.last = sent;
                stalled.then_some(LeaseEvent::Lost)
            }
            Ok(Lease::Taken) => {
                self.last = sent;
                Some(LeaseEvent::Lost)
            }
            Ok(Lease::Conflict) => {
                self.replaced = true;
                Some(LeaseEvent::Replaced)
            }
            // Keep serving: while Redis is unreachable nobody can change the ring, and the store's
            // fence keeps a takeover safe anyway. When Redis answers again a lapsed lease comes back
            // as `Taken` and every key is dropped then.
            Err(_) => None,
        }
    }
}
