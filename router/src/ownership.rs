//! A shard's view of what it owns.

use proto::{ShardId, StreamId};

use crate::Ring;

/// A shard's ownership view, published by its membership loop: the ring it last read and whether
/// it takes keys at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ownership {
    /// The ring this shard last read.
    pub ring: Ring,
    /// False while the shard must not take keys (lease lost and not yet re-established, draining,
    /// shutting down, not on the ring).
    pub serving: bool,
    /// The shard is being drained (it left the ring and hands its keys over).
    pub draining: bool,
}

impl Ownership {
    /// Whether `me` owns `key` under this view.
    pub fn owns(&self, me: &ShardId, key: &StreamId) -> bool {
        self.serving && self.ring.owner(&key.key()) == Some(me)
    }
}
