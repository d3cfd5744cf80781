//! Shard configuration: limits and timers of the core.

use std::time::Duration;

use proto::yjs::validate::Limits;
use serde::{Deserialize, Serialize};

/// Limits and timers of [`crate::ShardCore`]. Every limit is configurable (see the README).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CoreConfig {
    /// Unload a document this long after its last connection left (its state stays in the store).
    #[serde(with = "secs")]
    pub idle_unload: Duration,
    /// Drop an awareness state not renewed for this long (y-protocols clients renew every 15 s).
    #[serde(with = "secs")]
    pub awareness_timeout: Duration,
    /// Awareness coalescing: changes are gathered per document and broadcast at most once per this
    /// interval, as one update holding the latest state of every client that changed, instead of
    /// relaying every client's update to every other connection (O(n²) messages per document).
    /// Zero relays each update as received (the y-websocket reference server's behaviour).
    #[serde(with = "secs")]
    pub awareness_flush: Duration,
    /// Write a snapshot after this many events since the last one.
    pub snapshot_every: u64,
    /// Retention: after each snapshot, delete events older than this many before it. `None` keeps the
    /// whole history (needed to replay or time-travel to any point).
    pub retain_events: Option<u64>,
    /// Refuse updates that would grow a document's stored size past this many bytes.
    pub max_doc_bytes: usize,
    /// Largest accepted Yjs update, in bytes.
    pub max_update_bytes: usize,
    /// Deepest accepted nesting inside an update (lib0 Any values, JSON content).
    pub max_update_depth: usize,
    /// Deepest nesting of shared types (Y.Array in Y.Map in …) a document may reach; yrs recurses per
    /// level when it deletes or garbage-collects nested types.
    pub max_type_depth: u32,
    /// Largest awareness update, in bytes.
    pub max_awareness_bytes: usize,
    /// Awareness client ids one connection may announce (the stock provider uses one).
    pub max_awareness_clients_per_conn: usize,
    /// Live awareness states per document.
    pub max_awareness_states_per_doc: usize,
    /// Chat, presence and typing limits and timers.
    pub rooms: RoomConfig,
}

/// Limits and timers of rooms (chat, presence, typing). Every limit is configurable (see the README).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    /// Events of a room kept in memory by its owner: what resume can replay and where retried sends,
    /// edits and deletions are recognised. Older history is read from the store (`history`).
    pub history_window: usize,
    /// Largest chat message text (UTF-8 bytes).
    pub max_chat_bytes: usize,
    /// Largest presence state of one connection (bytes of its JSON).
    pub max_presence_bytes: usize,
    /// Connections one room admits.
    pub max_members: usize,
    /// Presence and typing changes of a room are gathered and broadcast at most once per this interval
    /// (one `presence` frame and one `typing` frame per member at most), however many members chatter.
    #[serde(with = "secs")]
    pub presence_flush: Duration,
    /// A typing indicator not renewed for this long stops by itself.
    #[serde(with = "secs")]
    pub typing_timeout: Duration,
    /// After a room is loaded by a new owner, users its log lists as present who do not rejoin within
    /// this time are announced as left (`user.left`): the ghosts of a dead owner's connections.
    #[serde(with = "secs")]
    pub presence_grace: Duration,
    /// Most events one `history` request returns.
    pub max_history_page: usize,
    /// Events of one room waiting for the store; beyond it sends are refused (`limit`).
    pub max_inflight: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            history_window: 1000,
            max_chat_bytes: 16 * 1024,
            max_presence_bytes: 1024,
            max_members: 10_000,
            presence_flush: Duration::from_millis(100),
            typing_timeout: Duration::from_secs(5),
            presence_grace: Duration::from_secs(10),
            max_history_page: 100,
            max_inflight: 4096,
        }
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            idle_unload: Duration::from_secs(30),
            awareness_timeout: Duration::from_secs(30),
            awareness_flush: Duration::from_millis(50),
            snapshot_every: 500,
            retain_events: None,
            max_doc_bytes: 64 * 1024 * 1024,
            max_update_bytes: 1024 * 1024,
            max_update_depth: 32,
            max_type_depth: 64,
            max_awareness_bytes: 64 * 1024,
            max_awareness_clients_per_conn: 16,
            max_awareness_states_per_doc: 10_000,
            rooms: RoomConfig::default(),
        }
    }
}

impl CoreConfig {
    /// The validator limits derived from this configuration.
    pub fn limits(&self) -> Limits {
        Limits {
            max_depth: self.max_update_depth,
            max_update_bytes: self.max_update_bytes,
        }
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}
