//! Command-line configuration of the serving roles: clap options (each also an env var `TANDEM_…`)
//! over an optional TOML file, validated once into the role's config type.
//!
//! Options come in groups so that each role takes exactly the settings that apply to it:
//! [`StoreOpts`] (the record and the bus), [`EdgeOpts`] (the WebSocket edge: limits, JWT, origins),
//! [`CoreOpts`] (documents and rooms on their owner), [`CallOpts`] (calls: the media socket, limits,
//! TURN). `tandem dev` takes all four; `tandem shard` the store, core and call ones
//! ([`crate::cluster::ShardOpts`]); `tandem gateway` the edge ones ([`crate::cluster::GatewayOpts`]).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use gateway::GatewayConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shard::{CallsConfig, CoreConfig};
use store::BackendConfig;

/// Everything `tandem dev` runs with (also the shape of the `--config` TOML file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DevConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Folder holding the embedded store (`tandem.db`).
    pub data: PathBuf,
    /// In-process shards the documents are spread over.
    pub shards: usize,
    /// PostgreSQL URL: use PostgreSQL as the event log instead of the embedded SQLite file.
    pub database_url: Option<String>,
    /// Redis URL: publish committed events to Redis Streams (the bus; never the ack gate).
    pub redis_url: Option<String>,
    /// Edge settings.
    pub gateway: GatewayConfig,
    /// Shard settings.
    pub shard: CoreConfig,
    /// Calls.
    pub calls: CallsConfig,
}

impl Default for DevConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 1234)),
            data: PathBuf::from(".tandem"),
            shards: 2,
            database_url: None,
            redis_url: None,
            gateway: GatewayConfig::default(),
            shard: CoreConfig::default(),
            calls: CallsConfig::default(),
        }
    }
}

impl DevConfig {
    /// The store settings.
    pub fn store(&self) -> BackendConfig {
        BackendConfig {
            data: self.data.clone(),
            database_url: self.database_url.clone(),
            redis_url: self.redis_url.clone(),
        }
    }
}

/// Reads a TOML config file, or the default when none is given.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
        }
        None => Ok(T::default()),
    }
}

/// Where events live.
#[derive(Debug, Args)]
pub struct StoreOpts {
    /// Data folder for the embedded store [default: .tandem].
    #[arg(long, env = "TANDEM_DATA")]
    pub data: Option<PathBuf>,
    /// PostgreSQL URL (e.g. postgres://user@127.0.0.1:5432/tandem): the event log lives there instead of
    /// the embedded SQLite file; migrations are applied on start.
    #[arg(long, env = "TANDEM_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis URL (e.g. redis://127.0.0.1:6379): committed events are published to Redis Streams
    /// (`tandem:{doc:ID}` per document, `tandem:feed` for consumers).
    #[arg(long, env = "TANDEM_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

impl StoreOpts {
    /// Applies the flags given to `c`.
    pub fn apply(self, c: &mut BackendConfig) {
        if let Some(v) = self.data {
            c.data = v;
        }
        if let Some(v) = self.database_url {
            c.database_url = Some(v);
        }
        if let Some(v) = self.redis_url {
            c.redis_url = Some(v);
        }
    }
}

/// The WebSocket edge: authentication, origins, per-socket limits.
#[derive(Debug, Args)]
pub struct EdgeOpts {
    /// Address to listen on [default: 127.0.0.1:1234].
    #[arg(long, env = "TANDEM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HS256 secret: enables JWT auth (and turns anonymous access off).
    #[arg(long, env = "TANDEM_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// PEM file with an ES256 public key: enables ES256 tokens (and turns anonymous access off).
    #[arg(long, env = "TANDEM_JWT_ES256_PUBLIC_KEY")]
    pub jwt_es256_public_key: Option<PathBuf>,
    /// Required JWT audience [default: tandem].
    #[arg(long, env = "TANDEM_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required JWT issuer [default: tandem].
    #[arg(long, env = "TANDEM_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Allowed browser Origin (repeatable; none = any).
    #[arg(
        long = "allow-origin",
        env = "TANDEM_ALLOW_ORIGINS",
        value_delimiter = ','
    )]
    pub allow_origin: Vec<String>,
    /// Messages queued per socket before it is closed as a slow consumer [default: 1024].
    #[arg(long, env = "TANDEM_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// Sustained messages per second read from one socket (0 = unlimited) [default: 500].
    #[arg(long, env = "TANDEM_MAX_MESSAGES_PER_SEC")]
    pub max_messages_per_sec: Option<u32>,
    /// Burst of messages allowed above the sustained rate [default: 1000].
    #[arg(long, env = "TANDEM_MESSAGE_BURST")]
    pub message_burst: Option<u32>,
    /// Documents one /v1 socket may have open [default: 100].
    #[arg(long, env = "TANDEM_MAX_DOCS_PER_CONN")]
    pub max_docs_per_conn: Option<usize>,
    /// Rooms one /v1 socket may have joined [default: 100].
    #[arg(long, env = "TANDEM_MAX_ROOMS_PER_CONN")]
    pub max_rooms_per_conn: Option<usize>,
}

impl EdgeOpts {
    /// Applies the flags given to `c` (and `listen`).
    pub fn apply(self, c: &mut GatewayConfig, listen: &mut SocketAddr) -> anyhow::Result<()> {
        if let Some(v) = self.listen {
            *listen = v;
        }
        if let Some(v) = self.jwt_hs256_secret {
            c.auth.hs256_secret = Some(v);
        }
        if let Some(path) = self.jwt_es256_public_key {
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("reading ES256 public key {}", path.display()))?;
            c.auth.es256_public_key_pem = Some(pem);
        }
        if let Some(v) = self.jwt_audience {
            c.auth.audience = v;
        }
        if let Some(v) = self.jwt_issuer {
            c.auth.issuer = v;
        }
        if !self.allow_origin.is_empty() {
            c.allowed_origins = self.allow_origin;
        }
        if let Some(v) = self.outbound_queue {
            c.outbound_queue = v;
        }
        if let Some(v) = self.max_messages_per_sec {
            c.max_messages_per_sec = v;
        }
        if let Some(v) = self.message_burst {
            c.message_burst = v;
        }
        if let Some(v) = self.max_docs_per_conn {
            c.max_docs_per_conn = v;
        }
        if let Some(v) = self.max_rooms_per_conn {
            c.max_rooms_per_conn = v;
        }
        Ok(())
    }
}

/// Checks the edge settings.
pub fn validate_edge(c: &GatewayConfig) -> anyhow::Result<()> {
    if c.max_message_bytes < 64 {
        bail!("--max-message-bytes must be at least 64");
    }
    if c.outbound_queue == 0 {
        bail!("--outbound-queue must be at least 1");
    }
    if c.auth.hs256_secret.as_ref().is_some_and(|s| s.len() < 16) {
        bail!("the HS256 secret must be at least 16 bytes");
    }
    Ok(())
}

/// Documents and rooms on their owner.
#[derive(Debug, Args)]
pub struct CoreOpts {
    /// Largest stored document size in bytes [default: 67108864].
    #[arg(long, env = "TANDEM_MAX_DOC_BYTES")]
    pub max_doc_bytes: Option<usize>,
    /// Deepest nesting accepted inside a Yjs update [default: 32].
    #[arg(long, env = "TANDEM_MAX_UPDATE_DEPTH")]
    pub max_update_depth: Option<usize>,
    /// Seconds after the last client leaves before a document is unloaded [default: 30].
    #[arg(long, env = "TANDEM_IDLE_UNLOAD_SECS")]
    pub idle_unload_secs: Option<f64>,
    /// Seconds an awareness state lives without renewal [default: 30].
    #[arg(long, env = "TANDEM_AWARENESS_TIMEOUT_SECS")]
    pub awareness_timeout_secs: Option<f64>,
    /// Awareness changes of a document are broadcast together at most once per this many
    /// milliseconds (0 = relay each update as received) [default: 50].
    #[arg(long, env = "TANDEM_AWARENESS_FLUSH_MS")]
    pub awareness_flush_ms: Option<u64>,
    /// Retention: after each snapshot, keep only this many older events (default: keep everything).
    #[arg(long, env = "TANDEM_RETAIN_EVENTS")]
    pub retain_events: Option<u64>,
    /// Events between snapshots [default: 500].
    #[arg(long, env = "TANDEM_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Events per room kept in memory for resume and retry detection [default: 1000].
    #[arg(long, env = "TANDEM_HISTORY_WINDOW")]
    pub history_window: Option<usize>,
    /// Largest chat message text in bytes [default: 16384].
    #[arg(long, env = "TANDEM_MAX_CHAT_BYTES")]
    pub max_chat_bytes: Option<usize>,
    /// Largest presence state (JSON bytes) of one connection [default: 1024].
    #[arg(long, env = "TANDEM_MAX_PRESENCE_BYTES")]
    pub max_presence_bytes: Option<usize>,
    /// Connections one room admits [default: 10000].
    #[arg(long, env = "TANDEM_MAX_ROOM_MEMBERS")]
    pub max_room_members: Option<usize>,
    /// Presence and typing changes of a room are broadcast at most once per this many milliseconds
    /// [default: 100].
    #[arg(long, env = "TANDEM_PRESENCE_FLUSH_MS")]
    pub presence_flush_ms: Option<u64>,
    /// A typing indicator not renewed for this many milliseconds stops [default: 5000].
    #[arg(long, env = "TANDEM_TYPING_TIMEOUT_MS")]
    pub typing_timeout_ms: Option<u64>,
    /// After a room is loaded, users its log lists as present who do not rejoin within this many
    /// seconds are announced as left [default: 10].
    #[arg(long, env = "TANDEM_PRESENCE_GRACE_SECS")]
    pub presence_grace_secs: Option<f64>,
    /// Most events one history request returns [default: 100].
    #[arg(long, env = "TANDEM_MAX_HISTORY_PAGE")]
    pub max_history_page: Option<usize>,
}

impl CoreOpts {
    /// Applies the flags given to `c`.
    pub fn apply(self, c: &mut CoreConfig) -> anyhow::Result<()> {
        if let Some(v) = self.max_doc_bytes {
            c.max_doc_bytes = v;
        }
        if let Some(v) = self.max_update_depth {
            c.max_update_depth = v;
        }
        if let Some(v) = self.idle_unload_secs {
            c.idle_unload = Duration::try_from_secs_f64(v).context("--idle-unload-secs")?;
        }
        if let Some(v) = self.awareness_timeout_secs {
            c.awareness_timeout =
                Duration::try_from_secs_f64(v).context("--awareness-timeout-secs")?;
        }
        if let Some(v) = self.awareness_flush_ms {
            c.awareness_flush = Duration::from_millis(v);
        }
        if let Some(v) = self.retain_events {
            c.retain_events = Some(v);
        }
        if let Some(v) = self.snapshot_every {
            c.snapshot_every = v;
        }
        let rooms = &mut c.rooms;
        if let Some(v) = self.history_window {
            rooms.history_window = v;
        }
        if let Some(v) = self.max_chat_bytes {
            rooms.max_chat_bytes = v;
        }
        if let Some(v) = self.max_presence_bytes {
            rooms.max_presence_bytes = v;
        }
        if let Some(v) = self.max_room_members {
            rooms.max_members = v;
        }
        if let Some(v) = self.presence_flush_ms {
            rooms.presence_flush = Duration::from_millis(v);
        }
        if let Some(v) = self.typing_timeout_ms {
            rooms.typing_timeout = Duration::from_millis(v);
        }
        if let Some(v) = self.presence_grace_secs {
            rooms.presence_grace =
                Duration::try_from_secs_f64(v).context("--presence-grace-secs")?;
        }
        if let Some(v) = self.max_history_page {
            rooms.max_history_page = v;
        }
        Ok(())
    }
}

/// Checks the document and room settings.
pub fn validate_core(c: &CoreConfig) -> anyhow::Result<()> {
    if c.rooms.history_window == 0 {
        bail!("--history-window must be at least 1");
    }
    if c.rooms.max_history_page == 0 {
        bail!("--max-history-page must be at least 1");
    }
    if c.snapshot_every == 0 {
        bail!("--snapshot-every must be at least 1");
    }
    // yrs recurses on nesting; the validator's limit is what keeps its stack safe.
    if c.max_update_depth == 0 || c.max_update_depth > 256 {
        bail!("--max-update-depth must be between 1 and 256");
    }
    Ok(())
}

/// Calls on the room's owner: the UDP media socket, limits, TURN.
#[derive(Debug, Args)]
pub struct CallOpts {
    /// Serve no calls (call requests get `bad_request`).
    #[arg(long, env = "TANDEM_NO_CALLS")]
    pub no_calls: bool,
    /// Where the UDP media socket binds; port 0 picks a free one, in-process shards of `tandem dev`
    /// take consecutive ports from a non-zero one [default: 127.0.0.1:0].
    #[arg(long, env = "TANDEM_MEDIA_LISTEN")]
    pub media_listen: Option<SocketAddr>,
    /// The IP address clients reach the media socket at (put in answers as the host candidate); a
    /// shard's public address in a cluster [default: the bound address, 127.0.0.1 for 0.0.0.0].
    #[arg(long, env = "TANDEM_MEDIA_ADVERTISE")]
    pub media_advertise: Option<IpAddr>,
    /// Participants per call [default: 50].
    #[arg(long, env = "TANDEM_MAX_CALL_PARTICIPANTS")]
    pub max_call_participants: Option<usize>,
    /// Tracks one participant may publish at once [default: 4].
    #[arg(long, env = "TANDEM_MAX_CALL_TRACKS")]
    pub max_call_tracks: Option<usize>,
    /// Largest SDP offer in bytes [default: 524288].
    #[arg(long, env = "TANDEM_MAX_SDP_BYTES")]
    pub max_sdp_bytes: Option<usize>,
    /// Cap per forwarded video track in bits/s; higher simulcast layers are not forwarded
    /// [default: 4000000].
    #[arg(long, env = "TANDEM_MAX_TRACK_BITRATE")]
    pub max_track_bitrate: Option<u64>,
    /// Downstream budget per participant: layers are chosen to fit it (with --call-bwe on, the
    /// estimate's starting value), bits/s [default: 1500000].
    #[arg(long, env = "TANDEM_CALL_INITIAL_BITRATE")]
    pub call_initial_bitrate: Option<u64>,
    /// Bandwidth estimation per subscriber: `on` (str0m's TWCC estimator paces what is sent, layers
    /// follow the estimate, video that does not fit pauses; experimental, see README) or `off` (no
    /// pacing; layers fit --call-initial-bitrate as a fixed budget) [default: off].
    #[arg(long, env = "TANDEM_CALL_BWE")]
    pub call_bwe: Option<OnOff>,
    /// With more audio tracks in a call than this, forward only this many loudest (0 = all)
    /// [default: 0].
    #[arg(long, env = "TANDEM_CALL_AUDIO_TOP_N")]
    pub call_audio_top_n: Option<usize>,
    /// Seconds a participant's media may stay disconnected before it is removed [default: 10].
    #[arg(long, env = "TANDEM_CALL_ICE_TIMEOUT_SECS")]
    pub call_ice_timeout_secs: Option<f64>,
    /// Call requests per participant per second [default: 50].
    #[arg(long, env = "TANDEM_CALL_SIGNAL_RATE")]
    pub call_signal_rate: Option<u32>,
    /// A TURN server URL handed to clients (repeat for several): `turn:host:3478?transport=udp`.
    #[arg(long = "turn-url", env = "TANDEM_TURN_URLS", value_delimiter = ',')]
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn `static-auth-secret`): clients get
    /// credentials valid for --turn-ttl-secs (the TURN REST scheme).
    #[arg(long, env = "TANDEM_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Lifetime of TURN credentials in seconds [default: 86400].
    #[arg(long, env = "TANDEM_TURN_TTL_SECS")]
    pub turn_ttl_secs: Option<u64>,
}

impl CallOpts {
    /// Applies the flags given to `c`.
    pub fn apply(self, c: &mut CallsConfig) -> anyhow::Result<()> {
        if self.no_calls {
            c.enabled = false;
        }
        if let Some(v) = self.media_listen {
            c.listen = v;
        }
        if let Some(v) = self.media_advertise {
            c.advertise = Some(v);
        }
        if let Some(v) = self.max_call_participants {
            c.max_participants = v;
        }
        if let Some(v) = self.max_call_tracks {
            c.max_tracks = v;
        }
        if let Some(v) = self.max_sdp_bytes {
            c.max_sdp_bytes = v;
        }
        if let Some(v) = self.max_track_bitrate {
            c.max_track_bitrate = v;
        }
        if let Some(v) = self.call_initial_bitrate {
            c.initial_bitrate = v;
        }
        if let Some(v) = self.call_bwe {
            c.bwe = v == OnOff::On;
        }
        if let Some(v) = self.call_audio_top_n {
            c.audio_top_n = v;
        }
        if let Some(v) = self.call_ice_timeout_secs {
            c.ice_timeout = Duration::try_from_secs_f64(v).context("--call-ice-timeout-secs")?;
        }
        if let Some(v) = self.call_signal_rate {
            c.signal_rate = v;
        }
        if !self.turn_urls.is_empty() {
            c.turn_urls = self.turn_urls;
        }
        if let Some(v) = self.turn_secret {
            c.turn_secret = Some(v);
        }
        if let Some(v) = self.turn_ttl_secs {
            c.turn_ttl_secs = v;
        }
        validate_calls(c)
    }
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Checks the call settings.
pub fn validate_calls(c: &CallsConfig) -> anyhow::Result<()> {
    if c.max_participants == 0 {
        bail!("--max-call-participants must be at least 1");
    }
    if c.max_tracks == 0 {
        bail!("--max-call-tracks must be at least 1");
    }
    if c.signal_rate == 0 {
        bail!("--call-signal-rate must be at least 1");
    }
    if let Some(u) = c
        .turn_urls
        .iter()
        .find(|u| !(u.starts_with("turn:") || u.starts_with("turns:") || u.starts_with("stun:")))
    {
        bail!("--turn-url {u}: must start with turn:, turns: or stun:");
    }
    Ok(())
}

/// `tandem dev` options; each overrides the config file.
#[derive(Debug, Args)]
pub struct DevOpts {
    /// TOML file with any of the settings below (flags and env vars win over it).
    #[arg(long, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Number of in-process shards [default: 2].
    #[arg(long, env = "TANDEM_SHARDS")]
    pub shards: Option<usize>,
    /// Largest WebSocket message (and Yjs update) in bytes [default: 1048576].
    #[arg(long, env = "TANDEM_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    #[command(flatten)]
    pub store: StoreOpts,
    #[command(flatten)]
    pub edge: EdgeOpts,
    #[command(flatten)]
    pub core: CoreOpts,
    #[command(flatten)]
    pub calls: CallOpts,
}

impl DevOpts {
    /// Merges file, env and flags, and validates the result.
    pub fn into_config(self) -> anyhow::Result<DevConfig> {
        let mut c: DevConfig = load(self.config.as_deref())?;
        let mut store = c.store();
        self.store.apply(&mut store);
        c.data = store.data;
        c.database_url = store.database_url;
        c.redis_url = store.redis_url;
        self.edge.apply(&mut c.gateway, &mut c.listen)?;
        self.core.apply(&mut c.shard)?;
        self.calls.apply(&mut c.calls)?;
        if let Some(v) = self.shards {
            c.shards = v;
        }
        if let Some(v) = self.max_message_bytes {
            c.gateway.max_message_bytes = v;
            c.shard.max_update_bytes = v;
        }
        // `tandem dev` is the zero-setup mode: anonymous unless a key is configured.
        let auth = &mut c.gateway.auth;
        auth.allow_anonymous = auth.hs256_secret.is_none() && auth.es256_public_key_pem.is_none();
        if c.shards == 0 || c.shards > 64 {
            bail!("--shards must be between 1 and 64");
        }
        validate_edge(&c.gateway)?;
        validate_core(&c.shard)?;
        Ok(c)
    }
}
