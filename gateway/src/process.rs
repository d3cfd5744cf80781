//! `tandem gateway`: one gateway process of a cluster. It terminates WebSockets like `tandem dev`,
//! and routes each document and room to its owner over one link per shard process; a ring watcher
//! keeps the routing table equal to the cluster's ring (README "Running a cluster",
//! docs/cluster.md).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use prometheus::Registry;
use proto::ShardId;
use router::membership::{Membership, View};
use router::Ring;
use serde::{Deserialize, Serialize};
use shard::handle::ShardHandle;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::GatewayConfig;
use crate::link::LinkClient;
use crate::metrics::Metrics;
use crate::routing::Routes;
use crate::state::Gateway;

/// Everything a gateway process runs with (also the shape of its `--config` TOML file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Redis URL (membership).
    pub redis_url: Option<String>,
    /// Cluster name: processes with the same Redis and name form one cluster.
    pub cluster: String,
    /// How often the ring is re-read from Redis (ms).
    pub ring_poll_ms: u64,
    /// How long a connection waits for its key's owner to be reachable (ms) before it is refused.
    pub route_wait_ms: u64,
    /// Frames queued towards one shard before client readers wait.
    pub link_queue_frames: usize,
    /// Serve without a JWT key (anyone can read and write everything). For tests only.
    pub allow_anonymous: bool,
    /// Edge settings (limits, JWT, origins).
    pub edge: GatewayConfig,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 1234)),
            redis_url: None,
            cluster: "default".into(),
            ring_poll_ms: 100,
            route_wait_ms: 3000,
            link_queue_frames: 4096,
            allow_anonymous: false,
            edge: GatewayConfig::default(),
        }
    }
}

impl ProcessConfig {
    /// Checks what a gateway cannot run without, and settles anonymous access: only with
    /// `allow_anonymous` and no key.
    pub fn validate(mut self) -> anyhow::Result<Self> {
        if self.redis_url.is_none() {
            bail!("--redis-url is required for cluster roles");
        }
        let auth = &mut self.edge.auth;
        let has_key = auth.hs256_secret.is_some() || auth.es256_public_key_pem.is_some();
        if !has_key && !self.allow_anonymous {
            bail!("tandem gateway needs a JWT key (--jwt-hs256-secret or --jwt-es256-public-key); --allow-anonymous is for tests only");
        }
        auth.allow_anonymous = !has_key;
        Ok(self)
    }
}

/// A gateway bound to its port, watching the ring.
pub struct Started {
    cfg: ProcessConfig,
    listener: TcpListener,
    gw: Arc<Gateway>,
    membership: Membership,
    routes: Routes,
}

/// Runs a gateway process: [`start`], then [`Started::run`] until `shutdown` resolves.
pub async fn run(cfg: ProcessConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    start(cfg).await?.run(shutdown).await
}

/// Connects to Redis and binds the client port.
pub async fn start(cfg: ProcessConfig) -> anyhow::Result<Started> {
    let cfg = cfg.validate()?;
    if cfg.edge.auth.allow_anonymous {
        tracing::warn!("ANONYMOUS ACCESS: --allow-anonymous is set; anyone who can reach this port can read and write everything");
    }
    let redis_url = cfg.redis_url.clone().unwrap_or_default();
    let membership = Membership::connect(&redis_url, &cfg.cluster)
        .await
        .context("connecting to Redis for membership")?;
    let registry = Registry::new();
    let metrics = Metrics::new(&registry);
    let routes = Routes::with_ring(
        Ring::default(),
        Vec::new(),
        Duration::from_millis(cfg.route_wait_ms),
    );
    let gw = Arc::new(Gateway::new(cfg.edge.clone(), routes.clone(), metrics)?);
    let listener = crate::server::bind(cfg.listen, cfg.edge.listen_backlog)
        .with_context(|| format!("binding {}", cfg.listen))?;
    Ok(Started {
        cfg,
        listener,
        gw,
        membership,
        routes,
    })
}

impl Started {
    /// The bound client address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then closes the `/v1` sockets (1001) and waits up to 3 s for
    /// the connections to end.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let watcher = tokio::spawn(watch_ring(
            self.membership,
            self.routes,
            Arc::new(Notify::new()),
            Duration::from_millis(self.cfg.ring_poll_ms.max(10)),
            self.cfg.link_queue_frames,
        ));
        crate::server::serve(self.listener, self.gw.clone(), shutdown).await?;
        watcher.abort();
        self.gw.close_sessions();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while self.gw.metrics().connections.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Keeps the gateway's routing table equal to the cluster's ring: links to every registered shard,
/// and sessions whose key moved are ended (the client reconnects to the new owner).
async fn watch_ring(
    membership: Membership,
    routes: Routes,
    hint: Arc<Notify>,
    poll: Duration,
    queue_frames: usize,
) {
    let mut links: HashMap<ShardId, LinkClient> = HashMap::new();
    let mut version = u64::MAX;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = hint.notified() => {}
        }
        let view: View = match membership.sync().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "ring sync failed");
                continue;
            }
        };
        let mut changed = view.ring.version() != version;
        // Links: one per registered shard (draining ones included: their sessions end over it).
        for m in &view.members {
            match links.get(&m.id) {
                Some(l) => l.set_addr(&m.link),
                None => {
                    links.insert(
                        m.id.clone(),
                        LinkClient::start(m.id.clone(), m.link.clone(), queue_frames, hint.clone()),
                    );
                    changed = true;
                }
            }
        }
        let gone: Vec<ShardId> = links
            .keys()
            .filter(|id| view.info(id).is_none())
            .cloned()
            .collect();
        for id in gone {
            if let Some(l) = links.remove(&id) {
                l.stop();
                changed = true;
            }
        }
        if !changed {
            continue;
        }
        version = view.ring.version();
        tracing::info!(version, members = view.ring.members().len(), "ring changed");
        let handles: Vec<ShardHandle> = links.values().map(LinkClient::handle).collect();
        routes.set(view.ring.clone(), handles);
        for l in links.values() {
            l.set_ring_version(version);
            let ring = &view.ring;
            let me = l.shard().clone();
            l.evict(|k| ring.owner(&k.key()) == Some(&me));
        }
    }
}
