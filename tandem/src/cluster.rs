//! `tandem shard` and `tandem gateway`: the two roles of a cluster, as separate processes over
//! PostgreSQL (the record) and Redis (membership and the bus). Options here; the roles themselves
//! are library entry points (`shard::process`, `gateway::process`). See README "Running a cluster"
//! and docs/cluster.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use proto::ShardId;

use crate::config::{
    load, validate_core, validate_edge, CallOpts, CoreOpts, DevConfig, EdgeOpts, StoreOpts,
};
use crate::dev::shutdown_signal;

/// Settings every cluster process shares.
#[derive(Debug, clap::Args)]
pub struct ClusterOpts {
    /// Cluster name: processes with the same Redis and name form one cluster [default: default].
    #[arg(long, env = "TANDEM_CLUSTER")]
    pub cluster: Option<String>,
    /// How often each process re-reads the ring from Redis (ms) [default: 100].
    #[arg(long, env = "TANDEM_RING_POLL_MS")]
    pub ring_poll_ms: Option<u64>,
}

/// `tandem shard` options; each overrides the config file.
#[derive(Debug, clap::Args)]
pub struct ShardOpts {
    /// TOML file with any of the settings (the shape of `shard::process::ProcessConfig`).
    #[arg(long, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// This shard's id (stable across restarts: the ring places keys by id).
    #[arg(long, env = "TANDEM_SHARD_ID")]
    pub id: Option<String>,
    /// Address the gateway link listens on [default: 127.0.0.1:7400].
    #[arg(long, env = "TANDEM_LINK_LISTEN")]
    pub link_listen: Option<SocketAddr>,
    /// Address of the admin HTTP endpoint (`/stats`, `/metrics`, `/healthz`) [default: 127.0.0.1:7500].
    #[arg(long, env = "TANDEM_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Address gateways should dial for the link, when it differs from --link-listen (NAT, 0.0.0.0).
    #[arg(long, env = "TANDEM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Relative weight on the ring [default: 1].
    #[arg(long, env = "TANDEM_WEIGHT")]
    pub weight: Option<f64>,
    /// Lease length (ms): a shard that stops renewing leaves the ring this long after its last
    /// renewal [default: 1500].
    #[arg(long, env = "TANDEM_LEASE_MS")]
    pub lease_ms: Option<u64>,
    /// Bytes queued towards one gateway before its slowest sessions are dropped [default: 268435456].
    #[arg(long, env = "TANDEM_MAX_LINK_BYTES")]
    pub max_link_bytes: Option<usize>,
    /// Room history reads in flight per gateway link; more get a `limit` error [default: 64].
    #[arg(long, env = "TANDEM_LINK_HISTORY_IN_FLIGHT")]
    pub link_history_in_flight: Option<usize>,
    /// Largest Yjs update in bytes (the gateways' message limit) [default: 1048576].
    #[arg(long, env = "TANDEM_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    #[command(flatten)]
    pub cluster: ClusterOpts,
    #[command(flatten)]
    pub store: StoreOpts,
    #[command(flatten)]
    pub core: CoreOpts,
    #[command(flatten)]
    pub calls: CallOpts,
    /// Edge settings are the gateways' business; a shard accepts them (one set of flags or
    /// environment can serve every role) and ignores them.
    #[command(
        flatten,
        next_help_heading = "Edge settings (accepted and ignored by a shard)"
    )]
    pub ignored_edge: EdgeOpts,
    /// Ignored by a shard.
    #[arg(long, env = "TANDEM_SHARDS", hide = true)]
    pub shards: Option<usize>,
}

impl ShardOpts {
    /// Merges file, env and flags, and validates the result.
    pub fn into_config(self) -> anyhow::Result<shard::process::ProcessConfig> {
        let mut c = load_role(
            self.config.as_deref(),
            &[
                "gateway",
                "shard",
                "listen",
                "shards",
                "data",
                "database_url",
                "redis_url",
            ],
            |dev: DevConfig| shard::process::ProcessConfig {
                store: dev.store(),
                core: dev.shard,
                ..Default::default()
            },
        )?;
        if let Some(v) = self.id {
            c.id = Some(ShardId::parse(&v).context("--id")?);
        }
        if let Some(v) = self.link_listen {
            c.link_listen = v;
        }
        if let Some(v) = self.admin_listen {
            c.admin_listen = v;
        }
        if let Some(v) = self.advertise {
            c.advertise = Some(v);
        }
        if let Some(v) = self.weight {
            c.weight = v;
        }
        if let Some(v) = self.lease_ms {
            c.lease_ms = v;
        }
        if let Some(v) = self.max_link_bytes {
            c.max_link_bytes = v;
        }
        if let Some(v) = self.link_history_in_flight {
            c.link_history_in_flight = v;
        }
        if let Some(v) = self.max_message_bytes {
            c.core.max_update_bytes = v;
        }
        if let Some(v) = self.cluster.cluster {
            c.cluster = v;
        }
        if let Some(v) = self.cluster.ring_poll_ms {
            c.ring_poll_ms = v;
        }
        self.store.apply(&mut c.store);
        self.core.apply(&mut c.core)?;
        self.calls.apply(&mut c.calls)?;
        validate_core(&c.core)?;
        c.validate()?;
        Ok(c)
    }
}

/// `tandem gateway` options; each overrides the config file.
#[derive(Debug, clap::Args)]
pub struct GatewayOpts {
    /// TOML file with any of the settings (the shape of `gateway::process::ProcessConfig`).
    #[arg(long, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL (membership).
    #[arg(long, env = "TANDEM_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// How long a connection waits for its key's owner to be reachable (ms) before it is refused
    /// [default: 3000].
    #[arg(long, env = "TANDEM_ROUTE_WAIT_MS")]
    pub route_wait_ms: Option<u64>,
    /// Frames queued towards one shard before client readers wait [default: 4096].
    #[arg(long, env = "TANDEM_LINK_QUEUE_FRAMES")]
    pub link_queue_frames: Option<usize>,
    /// Serve without a JWT key (anyone can read and write everything). For tests only.
    #[arg(long, env = "TANDEM_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Largest WebSocket message in bytes [default: 1048576].
    #[arg(long, env = "TANDEM_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    #[command(flatten)]
    pub cluster: ClusterOpts,
    #[command(flatten)]
    pub edge: EdgeOpts,
    /// Document and room settings are the shards' business; a gateway accepts them and ignores
    /// them.
    #[command(
        flatten,
        next_help_heading = "Document and room settings (accepted and ignored by a gateway)"
    )]
    pub ignored_core: CoreOpts,
    /// Call settings are the shards' business too.
    #[command(
        flatten,
        next_help_heading = "Call settings (accepted and ignored by a gateway)"
    )]
    pub ignored_calls: CallOpts,
    /// Ignored by a gateway (the record is the shards' business).
    #[arg(long, env = "TANDEM_DATABASE_URL", hide = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Ignored by a gateway.
    #[arg(long, env = "TANDEM_DATA", hide = true)]
    pub data: Option<PathBuf>,
    /// Ignored by a gateway.
    #[arg(long, env = "TANDEM_SHARDS", hide = true)]
    pub shards: Option<usize>,
}

impl GatewayOpts {
    /// Merges file, env and flags, and validates the result.
    pub fn into_config(self) -> anyhow::Result<gateway::process::ProcessConfig> {
        let mut c = load_role(
            self.config.as_deref(),
            &["gateway", "shard", "shards", "data", "database_url"],
            |dev: DevConfig| gateway::process::ProcessConfig {
                listen: dev.listen,
                redis_url: dev.redis_url,
                edge: dev.gateway,
                ..Default::default()
            },
        )?;
        if let Some(v) = self.redis_url {
            c.redis_url = Some(v);
        }
        if let Some(v) = self.route_wait_ms {
            c.route_wait_ms = v;
        }
        if let Some(v) = self.link_queue_frames {
            c.link_queue_frames = v;
        }
        if self.allow_anonymous {
            c.allow_anonymous = true;
        }
        if let Some(v) = self.max_message_bytes {
            c.edge.max_message_bytes = v;
        }
        if let Some(v) = self.cluster.cluster {
            c.cluster = v;
        }
        if let Some(v) = self.cluster.ring_poll_ms {
            c.ring_poll_ms = v;
        }
        self.edge.apply(&mut c.edge, &mut c.listen)?;
        validate_edge(&c.edge)?;
        c.validate()
    }
}

/// Reads a role's config file: its own shape, or (recognised by any of `legacy` among its top-level
/// keys) a `tandem dev` file, converted by `from_dev` — cluster roles read those before they had
/// config types of their own.
fn load_role<T: serde::de::DeserializeOwned + Default>(
    path: Option<&Path>,
    legacy: &[&str],
    from_dev: impl FnOnce(DevConfig) -> T,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    if table.keys().any(|k| legacy.contains(&k.as_str())) {
        let dev: DevConfig = load(Some(path))?;
        return Ok(from_dev(dev));
    }
    load(Some(path))
}

/// Runs a shard process until SIGTERM (graceful: leaves the ring, hands its keys over, commits) or
/// until a drain empties it.
pub async fn run_shard(cfg: shard::process::ProcessConfig) -> anyhow::Result<()> {
    let started = shard::process::start(cfg).await?;
    println!(
        "tandem shard {}: link on {}, admin on http://{}",
        started.id(),
        started.link_addr(),
        started.admin_addr()
    );
    started.run(shutdown_signal()).await
}

/// Runs a gateway process until SIGTERM.
pub async fn run_gateway(cfg: gateway::process::ProcessConfig) -> anyhow::Result<()> {
    let started = gateway::process::start(cfg).await?;
    let addr = started.local_addr()?;
    println!(
        "tandem gateway: listening on http://{addr} (ws://{addr}/doc/{{docId}}, ws://{addr}/v1)"
    );
    started.run(shutdown_signal()).await
}
