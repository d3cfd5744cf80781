//! Which shard serves a document or room: the ring plus a handle on every shard of it. `tandem dev`
//! builds a fixed table of in-process shards; a cluster gateway replaces the table whenever the
//! membership's ring version changes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use proto::{DocId, RoomId, ShardId, StreamId};
use router::Ring;
use shard::handle::ShardHandle;

/// The gateway's routing table (cheap to clone; clones share the table).
#[derive(Clone)]
pub struct Routes {
    table: Arc<RwLock<Table>>,
    /// How long a connection waits for its key's owner to become reachable (the ring to settle
    /// after a shard failure) before it is refused.
    wait: Duration,
    /// A cluster gateway (the table follows membership) rather than `tandem dev`'s fixed table.
    cluster: bool,
}

struct Table {
    ring: Ring,
    shards: HashMap<ShardId, ShardHandle>,
}

impl Routes {
    /// A table over in-process shards, all of weight 1.
    pub fn new(shards: Vec<ShardHandle>) -> Self {
        let ring = Ring::uniform(1, shards.iter().map(|s| s.id().clone()));
        let mut r = Self::with_ring(ring, shards, Duration::ZERO);
        r.cluster = false;
        r
    }

    /// A table over `ring` and the handles of its members; connections wait up to `wait` for an
    /// owner that is not reachable yet.
    pub fn with_ring(ring: Ring, shards: Vec<ShardHandle>, wait: Duration) -> Self {
        let shards = shards.into_iter().map(|s| (s.id().clone(), s)).collect();
        Self {
            table: Arc::new(RwLock::new(Table { ring, shards })),
            wait,
            cluster: true,
        }
    }

    /// Replaces the ring and the handles.
    pub fn set(&self, ring: Ring, shards: Vec<ShardHandle>) {
        let shards = shards.into_iter().map(|s| (s.id().clone(), s)).collect();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Table { ring, shards };
    }

    /// The current ring.
    pub fn ring(&self) -> Ring {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ring
            .clone()
    }

    fn owner_now(&self, key: &str) -> Option<ShardHandle> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.ring.owner(key).and_then(|id| t.shards.get(id)).cloned()
    }

    /// The owner of `key` once it is reachable, waiting up to the configured time for the ring to
    /// settle (a dead owner leaves the ring when its lease expires); `None` if it never is.
    pub async fn owner(&self, key: &str) -> Option<ShardHandle> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let found = self.owner_now(key);
            if let Some(h) = &found {
                if h.is_alive() {
                    return found;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The owner of `doc` (see [`Routes::owner`]).
    pub async fn shard_for(&self, doc: &DocId) -> Option<ShardHandle> {
        self.owner(&StreamId::Doc(doc.clone()).key()).await
    }

    /// The owner of `room` (see [`Routes::owner`]).
    pub async fn shard_for_room(&self, room: &RoomId) -> Option<ShardHandle> {
        self.owner(&StreamId::Room(room.clone()).key()).await
    }

    /// `/healthz`: in `tandem dev`, every in-process shard runs; in a cluster, the ring is not empty
    /// and at least one shard is reachable (one dead shard is the cluster's business, not a reason
    /// for a load balancer to drop every gateway).
    pub fn healthy(&self) -> bool {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        if self.cluster {
            !t.ring.members().is_empty() && t.shards.values().any(ShardHandle::is_alive)
        } else {
            t.shards.values().all(ShardHandle::is_alive)
        }
    }

    /// Every shard handle.
    pub fn shards(&self) -> Vec<ShardHandle> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .shards
            .values()
            .cloned()
            .collect()
    }
}
