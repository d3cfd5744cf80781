//! What a shard process does with the cluster's membership, sans-IO.
//!
//! Inputs: ring views read from Redis ([`ShardMember::handle_view`]), lease events
//! ([`ShardMember::handle_lease`]), whether the shard still holds keys while draining
//! ([`ShardMember::handle_holdings`]), a stop signal, and time. Outputs ([`ShardMember::poll_output`]):
//! read the view now, publish a new [`Ownership`] (the link listener refuses keys it does not
//! cover), give up keys the new ownership does not cover, report holdings, stop.
//!
//! Rules:
//! * the shard serves only while its lease is held, it is on the agreed ring and not draining;
//! * a lost lease drops every key at once (others may own them now), then the ring is re-read;
//! * a ring change gives up exactly the keys that moved away;
//! * a draining shard stops once it has held nothing for [`DRAINED_AFTER`] (late opens from gateways
//!   on an older ring are refused meanwhile);
//! * a lease held by another process with the same id stops the shard.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::ShardId;

use super::lease::LeaseEvent;
use super::View;
use crate::Ownership;

/// How long a draining shard must hold nothing before it counts as drained.
pub const DRAINED_AFTER: Duration = Duration::from_millis(500);

/// Why the shard stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The operator stopped it (SIGTERM / Ctrl-C).
    Signal,
    /// A drain emptied it.
    Drained,
    /// Another process took this shard id's lease.
    Replaced,
}

/// What the core asks its driver to do, in order.
#[derive(Debug, Clone)]
pub enum MemberOutput {
    /// Read the membership view now; answer with `handle_view` (or `handle_sync_failed`).
    Sync,
    /// Publish this ownership view (to the link listener and the admin endpoint).
    Publish(Arc<Ownership>),
    /// Give up every loaded key this view does not own (all of them when it does not serve);
    /// the shard refuses such keys from now on.
    Retain(Arc<Ownership>),
    /// Report whether the shard still holds any key; answer with `handle_holdings`.
    CheckHoldings,
    /// Stop the process (after handing everything over).
    Exit(Exit),
}

/// The membership state machine of one shard process.
pub struct ShardMember {
    me: ShardId,
    poll: Duration,
    own: Arc<Ownership>,
    next_sync: Instant,
    drained_since: Option<Instant>,
    exit: Option<Exit>,
    out: VecDeque<MemberOutput>,
}

impl ShardMember {
    /// Shard `me`, registered at `now`, re-reading the ring every `poll`.
    pub fn new(now: Instant, me: ShardId, poll: Duration) -> Self {
        Self {
            me,
            poll,
            own: Arc::new(Ownership::default()),
            next_sync: now,
            drained_since: None,
            exit: None,
            out: VecDeque::new(),
        }
    }

    /// The ownership view last published.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.own
    }

    /// Why the shard stops, once decided.
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// The next output, if any. Drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<MemberOutput> {
        self.out.pop_front()
    }

    /// When `handle_timeout` has work next (`None` once stopping).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.exit.is_none().then_some(self.next_sync)
    }

    /// Timers: the periodic ring read.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.exit.is_none() && now >= self.next_sync {
            self.sync(now);
        }
    }

    /// Something (a gateway with a newer ring, a lost lease) says the ring should be read now.
    pub fn handle_refresh(&mut self, now: Instant) {
        if self.exit.is_none() {
            self.sync(now);
        }
    }

    fn sync(&mut self, now: Instant) {
        self.next_sync = now + self.poll;
        self.out.push_back(MemberOutput::Sync);
    }

    /// The operator asked the process to stop.
    pub fn handle_signal(&mut self) {
        self.stop(Exit::Signal);
    }

    fn stop(&mut self, why: Exit) {
        if self.exit.is_none() {
            self.exit = Some(why);
            self.out.push_back(MemberOutput::Exit(why));
        }
    }

    /// The lease keeper reported an event.
    pub fn handle_lease(&mut self, now: Instant, ev: LeaseEvent) {
        if self.exit.is_some() {
            return;
        }
        let off = Arc::new(Ownership {
            ring: self.own.ring.clone(),
            serving: false,
            draining: self.own.draining,
        });
        self.own = off.clone();
        self.out.push_back(MemberOutput::Publish(off.clone()));
        self.out.push_back(MemberOutput::Retain(off));
        match ev {
            LeaseEvent::Replaced => self.stop(Exit::Replaced),
            LeaseEvent::Lost => self.sync(now),
        }
    }

    /// A view could not be read (Redis unreachable): keep serving what we hold; the next period
    /// tries again.
    pub fn handle_sync_failed(&mut self, _now: Instant) {}

    /// A view read from Redis.
    pub fn handle_view(&mut self, _now: Instant, view: &View) {
        if self.exit.is_some() {
            return;
        }
        let draining = view.draining.contains(&self.me);
        let serving = !draining && view.ring.contains(&self.me);
        let changed = self.own.ring.version() != view.ring.version()
            || self.own.serving != serving
            || self.own.draining != draining;
        if changed {
            let moved_keys =
                self.own.ring.version() != view.ring.version() || self.own.serving != serving;
            let own = Arc::new(Ownership {
                ring: view.ring.clone(),
                serving,
                draining,
            });
            self.own = own.clone();
            self.out.push_back(MemberOutput::Publish(own.clone()));
            if moved_keys {
                self.out.push_back(MemberOutput::Retain(own));
            }
        }
        if draining {
            self.out.push_back(MemberOutput::CheckHoldings);
        } else {
            self.drained_since = None;
        }
    }

    /// Whether a draining shard still holds keys.
    pub fn handle_holdings(&mut self, now: Instant, empty: bool) {
        if self.exit.is_some() || !self.own.draining {
            return;
        }
        match (empty, self.drained_since) {
            (false, _) => self.drained_since = None,
            (true, None) => self.drained_since = Some(now),
            // Empty for a moment (late opens from gateways with an older ring were refused): done.
            (true, Some(t)) if now.saturating_duration_since(t) >= DRAINED_AFTER => {
                self.stop(Exit::Drained)
            }
            (true, Some(_)) => {}
        }
    }
}
