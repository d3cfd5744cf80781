//! `tandem shard` and `tandem gateway`: the two roles of a cluster, as separate processes over
//! PostgreSQL (the record) and Redis (membership and the bus). See README "Running a cluster" and
//! docs/cluster.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use gateway::{Gateway, Routes};
use http_body_util::Full;
use hyper::body::Bytes;
use proto::{ShardId, StreamId};
use router::membership::{Lease, MemberInfo, Membership, View};
use router::Ring;
use shard::link::{LinkClient, Ownership, ServerConfig};
use shard::metrics::Metrics;
use shard::ShardHandle;
use tokio::sync::{watch, Notify};

use crate::config::{DevConfig, DevOpts};
use crate::dev::{shutdown_signal, Store};

/// Settings every cluster process shares.
#[derive(Debug, clap::Args)]
pub struct ClusterOpts {
    /// Cluster name: processes with the same Redis and name form one cluster.
    #[arg(long, env = "TANDEM_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// How often each process re-reads the ring from Redis (ms).
    #[arg(long, env = "TANDEM_RING_POLL_MS", default_value_t = 100)]
    pub ring_poll_ms: u64,
}

/// `tandem shard` options.
#[derive(Debug, clap::Args)]
pub struct ShardOpts {
    /// This shard's id (stable across restarts: the ring places keys by id).
    #[arg(long, env = "TANDEM_SHARD_ID")]
    pub id: String,
    /// Address the gateway link listens on.
    #[arg(long, env = "TANDEM_LINK_LISTEN", default_value = "127.0.0.1:7400")]
    pub link_listen: SocketAddr,
    /// Address of the admin HTTP endpoint (`/stats`, `/metrics`, `/healthz`).
    #[arg(long, env = "TANDEM_ADMIN_LISTEN", default_value = "127.0.0.1:7500")]
    pub admin_listen: SocketAddr,
    /// Address gateways should dial for the link, when it differs from --link-listen (NAT, 0.0.0.0).
    #[arg(long, env = "TANDEM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Relative weight on the ring.
    #[arg(long, env = "TANDEM_WEIGHT", default_value_t = 1.0)]
    pub weight: f64,
    /// Lease length (ms): a shard that stops renewing leaves the ring this long after its last renewal.
    #[arg(long, env = "TANDEM_LEASE_MS", default_value_t = 1500)]
    pub lease_ms: u64,
    /// Bytes queued towards one gateway before its slowest sessions are dropped.
    #[arg(long, env = "TANDEM_MAX_LINK_BYTES", default_value_t = 256 << 20)]
    pub max_link_bytes: usize,
    /// Room history reads in flight per gateway link; more get a `limit` error.
    #[arg(long, env = "TANDEM_LINK_HISTORY_IN_FLIGHT", default_value_t = 64)]
    pub link_history_in_flight: usize,
    #[command(flatten)]
    pub cluster: ClusterOpts,
    #[command(flatten)]
    pub common: DevOpts,
}

/// `tandem gateway` options.
#[derive(Debug, clap::Args)]
pub struct GatewayOpts {
    /// How long a connection waits for its key's owner to be reachable (ms) before it is refused.
    #[arg(long, env = "TANDEM_ROUTE_WAIT_MS", default_value_t = 3000)]
    pub route_wait_ms: u64,
    /// Frames queued towards one shard before client readers wait.
    #[arg(long, env = "TANDEM_LINK_QUEUE_FRAMES", default_value_t = 4096)]
    pub link_queue_frames: usize,
    /// Serve without a JWT key (anyone can read and write everything). For tests only.
    #[arg(long, env = "TANDEM_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    #[command(flatten)]
    pub cluster: ClusterOpts,
    #[command(flatten)]
    pub common: DevOpts,
}

fn require<'a>(v: &'a Option<String>, flag: &str) -> anyhow::Result<&'a str> {
    v.as_deref()
        .with_context(|| format!("{flag} is required for cluster roles"))
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What `/stats` on a shard's admin endpoint answers.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
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
    /// Gateway links... and what the driver holds.
    #[serde(flatten)]
    pub held: shard::driver::Stats,
}

/// Runs a shard process until SIGTERM (graceful: leaves the ring, hands its keys over, commits) or
/// until a drain empties it.
pub async fn run_shard(o: ShardOpts) -> anyhow::Result<()> {
    let cfg: DevConfig = o.common.into_config()?;
    let redis_url = require(&cfg.redis_url, "--redis-url")?.to_owned();
    require(&cfg.database_url, "--database-url")?;
    let id = ShardId::parse(&o.id).context("--id")?;
    if !(o.weight.is_finite() && o.weight > 0.0) {
        bail!("--weight must be a positive number");
    }
    if o.lease_ms < 300 {
        bail!("--lease-ms must be at least 300");
    }
    let store = Store::open(&cfg).await?;
    let metrics = Metrics::new();
    let handle = shard::driver::spawn(id.clone(), cfg.shard.clone(), store.log(), metrics.clone());
    let link_listener = tokio::net::TcpListener::bind(o.link_listen)
        .await
        .with_context(|| format!("binding --link-listen {}", o.link_listen))?;
    let link_addr = o
        .advertise
        .clone()
        .unwrap_or(link_listener.local_addr()?.to_string());
    let admin_listener = tokio::net::TcpListener::bind(o.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", o.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?.to_string();
    let membership = Membership::connect(&redis_url, &o.cluster.cluster)
        .await
        .context("connecting to Redis for membership")?;
    let (own_tx, own_rx) = watch::channel(Arc::new(Ownership::default()));
    let refresh = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(shard::link::serve(
        link_listener,
        ServerConfig {
            shard: id.clone(),
            max_link_bytes: o.max_link_bytes,
            max_history_in_flight: o.link_history_in_flight,
        },
        handle.clone(),
        own_rx.clone(),
        refresh.clone(),
        stop_rx.clone(),
    ));
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(admin_server(
        admin_listener,
        id.clone(),
        handle.clone(),
        metrics.clone(),
        own_rx.clone(),
        draining.clone(),
        stop_rx,
    ));
    let info = MemberInfo {
        id: id.clone(),
        link: link_addr.clone(),
        admin: admin_addr.clone(),
        weight: format!("{}", o.weight),
        started_ms: wall_ms(),
        lease_ms: o.lease_ms,
    };
    let token = uuid::Uuid::now_v7().to_string();
    let lease = Duration::from_millis(o.lease_ms);
    // A predecessor with this id that crashed holds its lease until it lapses: wait for that.
    let deadline = tokio::time::Instant::now() + lease * 4;
    loop {
        match membership
            .renew(&info, &token, lease)
            .await
            .context("registering with Redis")?
        {
            Lease::Held | Lease::Taken => break,
            Lease::Conflict if tokio::time::Instant::now() < deadline => {
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
    println!("tandem shard {id}: link on {link_addr}, admin on http://{admin_addr}");
    tracing::info!(shard = %id, link = %link_addr, admin = %admin_addr, "shard registered");
    let leases = spawn_renewal(membership.clone(), info.clone(), token.clone(), lease);
    let exit = membership_loop(
        &id,
        &membership,
        leases,
        Duration::from_millis(o.cluster.ring_poll_ms.max(10)),
        &handle,
        &own_tx,
        &refresh,
        &draining,
    )
    .await;
    // Leaving: out of the ring at once, hand everything over, commit, stop.
    let _ = membership.release(&id, &token).await;
    own_tx.send_modify(|o| {
        *o = Arc::new(Ownership {
            ring: o.ring.clone(),
            serving: false,
        })
    });
    handle.retain(Arc::new(|_: &StreamId| false)).await;
    handle.shutdown().await;
    let _ = stop_tx.send(true);
    store.close().await;
    tracing::info!(shard = %id, ?exit, "shard stopped");
    if matches!(exit, Exit::Replaced) {
        bail!("another process took shard id {id}'s lease; this one stopped");
    }
    Ok(())
}

/// What the renewal task reports.
#[derive(Debug)]
enum LeaseEvent {
    /// The lease lapsed (or this process was paused longer than it): others may own our keys.
    Lost,
    /// Another process holds this id's lease.
    Replaced,
}

/// Renews the lease every third of it, on its own task (so that a busy driver never delays it).
fn spawn_renewal(
    membership: Membership,
    info: MemberInfo,
    token: String,
    lease: Duration,
) -> tokio::sync::mpsc::Receiver<LeaseEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            // Taken before the request: the lease runs from when Redis saw it, not from the reply.
            let sent = tokio::time::Instant::now();
            let stalled = sent.duration_since(last) >= lease;
            let event = match membership.renew(&info, &token, lease).await {
                Ok(Lease::Held) => {
                    last = sent;
                    stalled.then_some(LeaseEvent::Lost)
                }
                Ok(Lease::Taken) => {
                    last = sent;
                    Some(LeaseEvent::Lost)
                }
                Ok(Lease::Conflict) => Some(LeaseEvent::Replaced),
                Err(e) => {
                    // Keep serving: while Redis is unreachable nobody can change the ring, and the
                    // store's fence keeps a takeover safe anyway. When Redis answers again a lapsed
                    // lease comes back as `Taken` and every key is dropped then.
                    tracing::warn!(shard = %info.id, error = %e, "lease renewal failed");
                    None
                }
            };
            let replaced = matches!(event, Some(LeaseEvent::Replaced));
            if let Some(e) = event {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            if replaced {
                return;
            }
        }
    });
    rx
}

/// Why a shard's membership loop ended.
#[derive(Debug)]
enum Exit {
    Signal,
    Drained,
    Replaced,
}

#[allow(clippy::too_many_arguments)]
async fn membership_loop(
    id: &ShardId,
    membership: &Membership,
    mut leases: tokio::sync::mpsc::Receiver<LeaseEvent>,
    poll: Duration,
    handle: &ShardHandle,
    own_tx: &watch::Sender<Arc<Ownership>>,
    refresh: &Notify,
    draining: &std::sync::atomic::AtomicBool,
) -> Exit {
    let mut sync = tokio::time::interval(poll);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut drained_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => return Exit::Signal,
            ev = leases.recv() => {
                let replaced = matches!(ev, Some(LeaseEvent::Replaced) | None);
                tracing::warn!(shard = %id, ?ev, "lease lost; dropping every key before serving again");
                own_tx.send_modify(|o| *o = Arc::new(Ownership { ring: o.ring.clone(), serving: false }));
                handle.retain(Arc::new(|_: &StreamId| false)).await;
                if replaced {
                    return Exit::Replaced;
                }
                refresh.notify_one();
            }
            _ = sync.tick() => {}
            _ = refresh.notified() => {}
        }
        let view = match membership.sync().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "ring sync failed");
                continue;
            }
        };
        let is_draining = view.draining.contains(id);
        draining.store(is_draining, std::sync::atomic::Ordering::Relaxed);
        let serving = !is_draining && view.ring.contains(id);
        let changed = {
            let cur = own_tx.borrow();
            cur.ring.version() != view.ring.version() || cur.serving != serving
        };
        if changed {
            tracing::info!(shard = %id, version = view.ring.version(), members = view.ring.members().len(), serving, "ring changed");
            let own = Arc::new(Ownership {
                ring: view.ring.clone(),
                serving,
            });
            own_tx.send_replace(own.clone());
            let me = id.clone();
            handle
                .retain(Arc::new(move |k: &StreamId| own.owns(&me, k)))
                .await;
        }
        if is_draining {
            let empty = handle
                .stats()
                .await
                .is_some_and(|s| s.docs.is_empty() && s.rooms.is_empty());
            match (empty, drained_since) {
                (true, None) => drained_since = Some(tokio::time::Instant::now()),
                // Empty for a moment (late opens from gateways with an older ring were refused): done.
                (true, Some(t)) if t.elapsed() >= Duration::from_millis(500) => {
                    return Exit::Drained
                }
                (false, _) => drained_since = None,
                _ => {}
            }
        }
    }
}

async fn admin_server(
    listener: tokio::net::TcpListener,
    id: ShardId,
    handle: ShardHandle,
    metrics: Metrics,
    own: watch::Receiver<Arc<Ownership>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let (id, handle, metrics, own, draining) = (
            id.clone(),
            handle.clone(),
            metrics.clone(),
            own.clone(),
            draining.clone(),
        );
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (id, handle, metrics, own, draining) = (
                        id.clone(),
                        handle.clone(),
                        metrics.clone(),
                        own.clone(),
                        draining.clone(),
                    );
                    async move {
                        let (status, body, ctype) = match req.uri().path() {
                            "/stats" => {
                                let held = handle.stats().await.unwrap_or_default();
                                let o = own.borrow().clone();
                                let s = AdminStats {
                                    id: id.to_string(),
                                    ring_version: o.ring.version(),
                                    serving: o.serving,
                                    draining: draining.load(std::sync::atomic::Ordering::Relaxed),
                                    events_total: metrics.updates_applied.get()
                                        + metrics.room_events.get(),
                                    held,
                                };
                                (
                                    200,
                                    serde_json::to_string(&s).unwrap_or_default(),
                                    "application/json",
                                )
                            }
                            "/metrics" => (200, metrics.render(), "text/plain; version=0.0.4"),
                            "/healthz" => (200, "ok\n".to_owned(), "text/plain"),
                            _ => (404, "not found\n".to_owned(), "text/plain"),
                        };
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

/// Runs a gateway process until SIGTERM.
pub async fn run_gateway(o: GatewayOpts) -> anyhow::Result<()> {
    let mut cfg: DevConfig = o.common.into_config()?;
    let redis_url = require(&cfg.redis_url, "--redis-url")?.to_owned();
    let has_key = !cfg.gateway.auth.allow_anonymous;
    if !has_key && !o.allow_anonymous {
        bail!("tandem gateway needs a JWT key (--jwt-hs256-secret or --jwt-es256-public-key); --allow-anonymous is for tests only");
    }
    if o.allow_anonymous && !has_key {
        tracing::warn!("ANONYMOUS ACCESS: --allow-anonymous is set; anyone who can reach this port can read and write everything");
    }
    cfg.gateway.auth.allow_anonymous = !has_key;
    let membership = Membership::connect(&redis_url, &o.cluster.cluster)
        .await
        .context("connecting to Redis for membership")?;
    let metrics = Metrics::new();
    let routes = Routes::with_ring(
        Ring::default(),
        Vec::new(),
        Duration::from_millis(o.route_wait_ms),
    );
    let hint = Arc::new(Notify::new());
    let gw = Arc::new(Gateway::new(
        cfg.gateway.clone(),
        routes.clone(),
        metrics.clone(),
    )?);
    let listener = gateway::server::bind(cfg.listen, cfg.gateway.listen_backlog)
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let watcher = tokio::spawn(watch_ring(
        membership,
        routes,
        hint,
        Duration::from_millis(o.cluster.ring_poll_ms.max(10)),
        o.link_queue_frames,
    ));
    println!(
        "tandem gateway: listening on http://{addr} (ws://{addr}/doc/{{docId}}, ws://{addr}/v1)"
    );
    gateway::serve(listener, gw.clone(), shutdown_signal()).await?;
    watcher.abort();
    gw.close_sessions();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while metrics.connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
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
        let handles: Vec<ShardHandle> = links
            .values()
            .map(|l| ShardHandle::remote(l.shard().clone(), l.clone()))
            .collect();
        routes.set(view.ring.clone(), handles);
        for l in links.values() {
            l.set_ring_version(version);
            let ring = &view.ring;
            let me = l.shard().clone();
            l.evict(|k| ring.owner(&k.key()) == Some(&me));
        }
    }
}
