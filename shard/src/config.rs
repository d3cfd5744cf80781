//! Shard configuration: limits and timers of the core.

use std::net::{IpAddr, SocketAddr};
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

/// Calls: the media socket, limits and TURN (`--media-*`, `--call-*`, `--turn-*`; see the README).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallsConfig {
    /// Whether this shard serves calls at all.
    pub enabled: bool,
    /// Where the UDP media socket binds (port 0: any free port; in-process shards of `tandem dev`
    /// take consecutive ports from a non-zero one).
    pub listen: SocketAddr,
    /// The address clients reach the media socket at (its host candidate); default: the bound
    /// address, or 127.0.0.1 when bound to 0.0.0.0.
    pub advertise: Option<IpAddr>,
    /// Participants per call.
    pub max_participants: usize,
    /// Tracks one participant may publish at once.
    pub max_tracks: usize,
    /// Largest SDP offer, in bytes.
    pub max_sdp_bytes: usize,
    /// Bitrate cap per forwarded video track, bits/s (higher simulcast layers are skipped).
    pub max_track_bitrate: u64,
    /// Downstream estimate per participant before the estimator has one, bits/s.
    pub initial_bitrate: u64,
    /// Estimate each subscriber's bandwidth and pace to it (see `signaling::CallConfig::bwe`).
    pub bwe: bool,
    /// Let the estimator probe above its estimate (see `signaling::CallConfig::bwe_probe`).
    pub bwe_probe: bool,
    /// With more audio tracks in a call than this, only this many loudest are forwarded (0 = all).
    pub audio_top_n: usize,
    /// A participant whose media connection is lost this long is removed (seconds).
    #[serde(with = "secs")]
    pub ice_timeout: Duration,
    /// A participant whose media never connects within this long is removed (seconds).
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Call requests per participant per second.
    pub signal_rate: u32,
    /// TURN server URLs handed to clients (`turn:host:3478`, `turns:…`).
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn `static-auth-secret`): clients get
    /// time-limited credentials (the TURN REST scheme).
    pub turn_secret: Option<String>,
    /// How long TURN credentials stay valid (seconds).
    pub turn_ttl_secs: u64,
}

impl Default for CallsConfig {
    fn default() -> Self {
        let c = signaling::CallConfig::default();
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            max_participants: c.max_participants,
            max_tracks: c.max_tracks,
            max_sdp_bytes: c.max_sdp_bytes,
            max_track_bitrate: c.max_track_bitrate,
            initial_bitrate: c.initial_bitrate,
            bwe: c.bwe,
            bwe_probe: c.bwe_probe,
            audio_top_n: c.audio_top_n,
            ice_timeout: c.ice_timeout,
            connect_timeout: c.connect_timeout,
            signal_rate: c.signal_rate,
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl_secs: 86_400,
        }
    }
}

impl CallsConfig {
    /// The media driver's settings (`None` when calls are off), binding at `listen` shifted by
    /// `port_offset` (the in-process shard's index) when its port is not 0.
    pub fn settings(&self, port_offset: u16) -> Option<crate::media::MediaSettings> {
        if !self.enabled {
            return None;
        }
        let mut listen = self.listen;
        if listen.port() != 0 {
            listen.set_port(listen.port().saturating_add(port_offset));
        }
        let static_servers = if self.turn_secret.is_none() && !self.turn_urls.is_empty() {
            vec![proto::v1::IceServer {
                urls: self.turn_urls.clone(),
                username: None,
                credential: None,
            }]
        } else {
            Vec::new()
        };
        let turn = self
            .turn_secret
            .as_ref()
            .filter(|_| !self.turn_urls.is_empty())
            .map(|secret| signaling::turn::TurnConfig {
                urls: self.turn_urls.clone(),
                secret: secret.clone(),
                ttl_secs: self.turn_ttl_secs,
            });
        Some(crate::media::MediaSettings {
            listen,
            advertise: self.advertise,
            call: signaling::CallConfig {
                candidates: Vec::new(),
                ice_servers: static_servers,
                max_participants: self.max_participants,
                max_tracks: self.max_tracks,
                max_sdp_bytes: self.max_sdp_bytes,
                max_track_bitrate: self.max_track_bitrate,
                initial_bitrate: self.initial_bitrate,
                bwe: self.bwe,
                bwe_probe: self.bwe_probe,
                audio_top_n: self.audio_top_n,
                ice_timeout: self.ice_timeout,
                connect_timeout: self.connect_timeout,
                signal_rate: self.signal_rate,
                ..signaling::CallConfig::default()
            },
            turn,
        })
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
