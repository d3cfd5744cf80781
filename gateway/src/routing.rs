//! Which shard handle serves a document: the ring plus the handles of the shards on it.

use std::collections::HashMap;

use proto::{DocId, RoomId, StreamId};
use router::Ring;
use shard::ShardHandle;

/// The gateway's routing table.
#[derive(Clone)]
pub struct Routes {
    ring: Ring,
    shards: HashMap<proto::ShardId, ShardHandle>,
}

impl Routes {
    /// A table over in-process shards, all of weight 1.
    pub fn new(shards: Vec<ShardHandle>) -> Self {
        let ring = Ring::uniform(1, shards.iter().map(|s| s.id().clone()));
        let shards = shards.into_iter().map(|s| (s.id().clone(), s)).collect();
        Self { ring, shards }
    }

    /// The owner of `doc`.
    pub fn shard_for(&self, doc: &DocId) -> Option<&ShardHandle> {
        let key = StreamId::Doc(doc.clone()).key();
        self.ring.owner(&key).and_then(|id| self.shards.get(id))
    }

    /// The owner of `room`.
    pub fn shard_for_room(&self, room: &RoomId) -> Option<&ShardHandle> {
        let key = StreamId::Room(room.clone()).key();
        self.ring.owner(&key).and_then(|id| self.shards.get(id))
    }

    /// Every shard handle.
    pub fn shards(&self) -> impl Iterator<Item = &ShardHandle> {
        self.shards.values()
    }
}
