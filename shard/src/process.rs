//! `tandem shard`: one shard process of a cluster, over PostgreSQL (the record) and Redis
//! (membership and the bus). README "Running a cluster" and docs/cluster.md describe it.
//!
//! [`start`] opens the store, starts the driver, the link listener and the admin endpoint, and
//! registers the shard's lease; [`Started::run`] then keeps its membership until the shutdown
//! future resolves, a drain empties it, or another process takes its id. The membership decisions
//! are the sans-IO [`router::membership::member::ShardMember`] and
//! [`router::membership::lease::LeaseKeeper`]; the loops here only carry them out.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus::Registry;
use proto::{ShardId, StreamId};
use router::membership::lease::{LeaseEvent, LeaseKeeper};
use router::membership::member::{Exit, MemberOutput, ShardMember};
use router::membership::{Lease, MemberInfo, Membership};
use router::Ownership;
use serde::{Deserialize, Serialize};
use store::{Backend, BackendConfig};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::config::{CallsConfig, CoreConfig};
use crate::driver::LocalShard;
use crate::handle::Stats;
use crate::link::{self, ServerConfig};
use crate::metrics::{self, Metrics};
use crate::timer::{self, wall_ms};

/// Everything a shard process runs with (also the shape of its `--config` TOML file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessConfig {
    /// This shard's id (stable across restarts: the ring places keys by id).
    pub id: Option<ShardId>,
    /// Where the gateway link listens.
    pub link_listen: SocketAddr,
    /// Where the admin HTTP endpoint (`/stats`, `/metrics`, `/healthz`) listens.
    pub admin_listen: SocketAddr,
    /// The address gateways dial for the link, when it differs from `link_listen` (NAT, 0.0.0.0).
    pub advertise: Option<String>,
    /// Relative weight on the ring.
    pub weight: f64,
    /// Lease length (ms): a shard that stops renewing leaves the ring this long after its last
    /// renewal.
    pub lease_ms: u64,
    /// Bytes queued towards one gateway before its slowest sessions are dropped.
    pub max_link_bytes: usize,
    /// Room history reads in flight per gateway link; more get a `limit` error.
    pub link_history_in_flight: usize,
    /// Largest link frame accepted from a gateway (bytes).
    pub max_link_frame: usize,
    /// Cluster name: processes with the same Redis and name form one cluster.
    pub cluster: String,
    /// How often the ring is re-read from Redis (ms).
    pub ring_poll_ms: u64,
    /// The record and the bus (a cluster needs PostgreSQL and Redis).
    pub store: BackendConfig,
    /// Limits and timers of documents and rooms.
    pub core: CoreConfig,
    /// Calls: the media socket, limits, TURN.
    pub calls: CallsConfig,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            id: None,
            link_listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 7500)),
            advertise: None,
            weight: 1.0,
            lease_ms: 1500,
            max_link_bytes: 256 << 20,
            link_history_in_flight: 64,
            max_link_frame: proto::link::MAX_FRAME,
            cluster: "default".into(),
            ring_poll_ms: 100,
            store: BackendConfig::default(),
            core: CoreConfig::default(),
            calls: CallsConfig::default(),
        }
    }
}

impl ProcessConfig {
    /// Checks what a shard process cannot run without; returns the shard id.
    pub fn validate(&self) -> anyhow::Result<ShardId> {
        let id = self.id.clone().context("--id is required")?;
        if self.store.database_url.is_none() {
            bail!("--database-url is required for cluster roles");
        }
        if self.store.redis_url.is_none() {
            bail!("--redis-url is required for cluster roles");
        }
        if !(self.weight.is_finite() && self.weight > 0.0) {
            bail!("--weight must be a positive number");
        }
        if self.lease_ms < 300 {
            bail!("--lease-ms must be at least 300");
        }
        if self.max_link_frame < proto::link::HEADER_LEN {
            bail!("the largest link frame must hold at least a frame header");
        }
        Ok(id)
    }
}

/// What `/stats` on a shard's admin endpoint answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdminStats {
    /// The shard.
    pub id: String,
    /// Ring version the shard serves under.
    pub ring_version: u64,
    /// Whether it takes keys (false while draining or after losing its lease).
    pub serving: bool,
    /// Whether it is draining.
    pub draining: bool,
    /// Updates applied plus room events committed, since start (a counter: rates come from two reads).
    pub events_total: u64,
    /// What the driver holds.
    #[serde(flatten)]
    pub held: Stats,
}

/// A registered shard process, serving links; [`Started::run`] keeps it in the cluster.
pub struct Started {
    id: ShardId,
    cfg: ProcessConfig,
    backend: Backend,
    shard: LocalShard,
    membership: Membership,
    info: MemberInfo,
    token: String,
    own_tx: watch::Sender<Arc<Ownership>>,
    refresh: Arc<Notify>,
    stop_tx: watch::Sender<bool>,
}

/// Runs a shard process: [`start`], then [`Started::run`] until `shutdown` resolves.
pub async fn run(cfg: ProcessConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    start(cfg).await?.run(shutdown).await
}

/// Opens the store, starts the driver, the link listener and the admin endpoint, and registers the
/// shard's lease (waiting out a crashed predecessor's).
pub async fn start(cfg: ProcessConfig) -> anyhow::Result<Started> {
    let id = cfg.validate()?;
    let backend = Backend::open(&cfg.store).await?;
    let registry = Registry::new();
    let metrics = Metrics::new(&registry);
    let shard = crate::driver::spawn(
        id.clone(),
        cfg.core.clone(),
        backend.log(),
        metrics.clone(),
        cfg.calls.settings(0),
    )
    .with_context(|| format!("binding --media-listen {}", cfg.calls.listen))?;
    let link_listener = tokio::net::TcpListener::bind(cfg.link_listen)
        .await
        .with_context(|| format!("binding --link-listen {}", cfg.link_listen))?;
    let link_addr = match &cfg.advertise {
        Some(a) => a.clone(),
        None => link_listener.local_addr()?.to_string(),
    };
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", cfg.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?.to_string();
    let redis_url = cfg.store.redis_url.clone().unwrap_or_default();
    let membership = Membership::connect(&redis_url, &cfg.cluster)
        .await
        .context("connecting to Redis for membership")?;
    let (own_tx, own_rx) = watch::channel(Arc::new(Ownership::default()));
    let refresh = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(link::serve(
        link_listener,
        ServerConfig {
            shard: id.clone(),
            max_link_bytes: cfg.max_link_bytes,
            max_history_in_flight: cfg.link_history_in_flight,
            max_frame: cfg.max_link_frame,
        },
        shard.handle(),
        own_rx.clone(),
        refresh.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(admin_server(
        admin_listener,
        Admin {
            id: id.clone(),
            shard: shard.clone(),
            registry,
            metrics,
            own: own_rx,
        },
        stop_rx,
    ));
    let info = MemberInfo {
        id: id.clone(),
        link: link_addr,
        admin: admin_addr,
        weight: format!("{}", cfg.weight),
        started_ms: wall_ms(),
        lease_ms: cfg.lease_ms,
    };
    let token = uuid::Uuid::now_v7().to_string();
    let lease = Duration::from_millis(cfg.lease_ms);
    // A predecessor with this id that crashed holds its lease until it lapses: wait for that.
    let deadline = Instant::now() + lease * 4;
    loop {
        match membership
            .renew(&info, &token, lease)
            .await
            .context("registering with Redis")?
        {
            Lease::Held | Lease::Taken => break,
            Lease::Conflict if Instant::now() < deadline => {
                tokio::time::sleep(lease / 4).await;
            }
            Lease::Conflict => {
                bail!("another live process holds shard id {id}'s lease; shard ids must be unique")
            }
        }
    }
    // A restart means the operator wants this shard serving: a drain mark left by an unfinished
    // drain is cleared.
    membership.set_draining(&id, false).await?;
    tracing::info!(shard = %id, link = %info.link, admin = %info.admin, "shard registered");
    Ok(Started {
        id,
        cfg,
        backend,
        shard,
        membership,
        info,
        token,
        own_tx,
        refresh,
        stop_tx,
    })
}

impl Started {
    /// The address gateways dial.
    pub fn link_addr(&self) -> &str {
        &self.info.link
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> &str {
        &self.info.admin
    }

    /// The shard's id.
    pub fn id(&self) -> &ShardId {
        &self.id
    }

    /// Keeps the shard in the cluster until `shutdown` resolves (graceful: leaves the ring, hands
    /// its keys over, commits), a drain empties it, or another process takes its id (an error).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let lease = Duration::from_millis(self.cfg.lease_ms);
        let leases = spawn_renewal(
            self.membership.clone(),
            self.info.clone(),
            self.token.clone(),
            lease,
        );
        let poll = Duration::from_millis(self.cfg.ring_poll_ms.max(10));
        let exit = self.membership_loop(leases, poll, shutdown).await;
        // Leaving: out of the ring at once, hand everything over, commit, stop.
        let _ = self.membership.release(&self.id, &self.token).await;
        let off = Arc::new(Ownership {
            ring: self.own_tx.borrow().ring.clone(),
            serving: false,
            draining: self.own_tx.borrow().draining,
        });
        self.own_tx.send_replace(off);
        self.shard.retain(Arc::new(|_: &StreamId| false)).await;
        self.shard.shutdown().await;
        let _ = self.stop_tx.send(true);
        self.backend.close().await;
        tracing::info!(shard = %self.id, ?exit, "shard stopped");
        if exit == Exit::Replaced {
            bail!(
                "another process took shard id {}'s lease; this one stopped",
                self.id
            );
        }
        Ok(())
    }

    /// Carries out [`ShardMember`]'s decisions until it says stop.
    async fn membership_loop(
        &self,
        mut leases: mpsc::Receiver<LeaseEvent>,
        poll: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> Exit {
        let mut core = ShardMember::new(Instant::now().into_std(), self.id.clone(), poll);
        tokio::pin!(shutdown);
        let mut signalled = false;
        loop {
            while let Some(out) = core.poll_output() {
                match out {
                    MemberOutput::Sync => match self.membership.sync().await {
                        Ok(view) => core.handle_view(Instant::now().into_std(), &view),
                        Err(e) => {
                            tracing::debug!(error = %e, "ring sync failed");
                            core.handle_sync_failed(Instant::now().into_std());
                        }
                    },
                    MemberOutput::Publish(own) => {
                        tracing::info!(shard = %self.id, version = own.ring.version(), members = own.ring.members().len(), serving = own.serving, "ring changed");
                        self.own_tx.send_replace(own);
                    }
                    MemberOutput::Retain(own) => {
                        let me = self.id.clone();
                        self.shard
                            .retain(Arc::new(move |k: &StreamId| own.owns(&me, k)))
                            .await;
                    }
                    MemberOutput::CheckHoldings => {
                        let empty = self
                            .shard
                            .stats()
                            .await
                            .is_some_and(|s| s.docs.is_empty() && s.rooms.is_empty());
                        core.handle_holdings(Instant::now().into_std(), empty);
                    }
                    MemberOutput::Exit(why) => return why,
                }
            }
            let sleep = timer::sleep_until(core.poll_timeout());
            tokio::select! {
                _ = &mut shutdown, if !signalled => {
                    signalled = true;
                    core.handle_signal();
                }
                ev = leases.recv() => {
                    // The renewal task only ends after reporting a replacement.
                    let ev = ev.unwrap_or(LeaseEvent::Replaced);
                    tracing::warn!(shard = %self.id, ?ev, "lease lost; dropping every key before serving again");
                    core.handle_lease(Instant::now().into_std(), ev);
                }
                _ = sleep => core.handle_timeout(Instant::now().into_std()),
                _ = self.refresh.notified() => core.handle_refresh(Instant::now().into_std()),
            }
        }
    }
}

/// Renews the lease on its own task (so that a busy driver never delays it); reports what the
/// [`LeaseKeeper`] makes of the answers.
fn spawn_renewal(
    membership: Membership,
    info: MemberInfo,
    token: String,
    lease: Duration,
) -> mpsc::Receiver<LeaseEvent> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut keeper = LeaseKeeper::new(Instant::now().into_std(), lease);
        while let Some(due) = keeper.poll_timeout() {
            tokio::time::sleep_until(Instant::from_std(due)).await;
            let Some(sent) = keeper.handle_timeout(Instant::now().into_std()) else {
                continue;
            };
            let answer = membership.renew(&info, &token, lease).await;
            if let Err(e) = &answer {
                tracing::warn!(shard = %info.id, error = %e, "lease renewal failed");
            }
            if let Some(ev) = keeper.handle_renewed(sent, answer) {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// What the admin endpoint reads.
#[derive(Clone)]
struct Admin {
    id: ShardId,
    shard: LocalShard,
    registry: Registry,
    metrics: Metrics,
    own: watch::Receiver<Arc<Ownership>>,
}

impl Admin {
    async fn answer(&self, path: &str) -> (u16, String, &'static str) {
        match path {
            "/stats" => {
                let held = self.shard.stats().await.unwrap_or_default();
                let o = self.own.borrow().clone();
                let s = AdminStats {
                    id: self.id.to_string(),
                    ring_version: o.ring.version(),
                    serving: o.serving,
                    draining: o.draining,
                    events_total: self.metrics.updates_applied.get()
                        + self.metrics.room_events.get(),
                    held,
                };
                let body = serde_json::to_string(&s).expect("stats always serialize");
                (200, body, "application/json")
            }
            "/metrics" => (
                200,
                metrics::render(&self.registry),
                "text/plain; version=0.0.4",
            ),
            "/healthz" => (200, "ok\n".to_owned(), "text/plain"),
            _ => (404, "not found\n".to_owned(), "text/plain"),
        }
    }
}

async fn admin_server(
    listener: tokio::net::TcpListener,
    admin: Admin,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let admin = admin.clone();
                    async move {
                        let (status, body, ctype) = admin.answer(req.uri().path()).await;
                        let resp = hyper::Response::builder()
                            .status(status)
                            .header("content-type", ctype)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}
