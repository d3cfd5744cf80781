//! `tandem ctl`: operator commands for a cluster. Reads membership from Redis and asks each shard's
//! admin endpoint (`/stats`) what it holds.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use proto::{DocId, RoomId, ShardId, StreamId};
use router::membership::{Membership, View};
use router::{Member, Ring};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use shard::process::AdminStats;

/// `tandem ctl` options.
#[derive(Debug, Args)]
pub struct CtlOpts {
    /// Redis URL (membership).
    #[arg(
        long,
        env = "TANDEM_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Cluster name.
    #[arg(long, env = "TANDEM_CLUSTER", default_value = "default")]
    pub cluster: String,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

/// The operator commands.
#[derive(Debug, Subcommand)]
pub enum CtlCmd {
    /// Shards: list them.
    #[command(subcommand)]
    Shards(ShardsCmd),
    /// The ring: plan a change (dry run).
    #[command(subcommand)]
    Ring(RingCmd),
    /// One shard: drain it.
    #[command(subcommand)]
    Shard(ShardCmd),
    /// Documents: where one lives.
    #[command(subcommand)]
    Doc(LocateCmd),
    /// Rooms: where one lives.
    #[command(subcommand)]
    Room(LocateCmd),
}

/// `tandem ctl shards …`
#[derive(Debug, Subcommand)]
pub enum ShardsCmd {
    /// Id, address, weight, lease age, documents and rooms loaded, connections, event rate.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `tandem ctl ring …`
#[derive(Debug, Subcommand)]
pub enum RingCmd {
    /// How many loaded keys would move, and where, if the ring changed so (nothing is changed).
    Plan {
        /// Add a shard `ID[:WEIGHT]`.
        #[arg(long)]
        add: Option<String>,
        /// Remove a shard (what a drain does).
        #[arg(long)]
        remove: Option<String>,
        /// Change a weight `ID=WEIGHT`.
        #[arg(long)]
        weight: Option<String>,
        /// Print JSON (every moving key) instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

/// `tandem ctl shard …`
#[derive(Debug, Subcommand)]
pub enum ShardCmd {
    /// Live handoff: the shard leaves the ring, hands each key to its new owner, and exits when empty.
    Drain {
        /// The shard.
        id: String,
        /// Give up waiting after this long (the drain itself continues).
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Cancels a drain that has not finished (the shard rejoins the ring).
    Undrain {
        /// The shard.
        id: String,
    },
}

/// `tandem ctl doc|room locate ID`
#[derive(Debug, Subcommand)]
pub enum LocateCmd {
    /// The owner on the current ring, and which shards have it loaded.
    Locate {
        /// The document or room id.
        id: String,
    },
}

/// Runs one command.
#[allow(clippy::print_stdout)]
pub async fn run(o: CtlOpts) -> anyhow::Result<()> {
    let m = Membership::connect(&o.redis_url, &o.cluster)
        .await
        .context("connecting to Redis")?;
    let view = m.sync().await.context("reading membership")?;
    match o.cmd {
        CtlCmd::Shards(ShardsCmd::List { json }) => shards_list(&m, &view, json).await,
        CtlCmd::Ring(RingCmd::Plan {
            add,
            remove,
            weight,
            json,
        }) => {
            let after = planned_ring(&view.ring, add, remove, weight)?;
            ring_plan(&view, &after, json).await
        }
        CtlCmd::Shard(ShardCmd::Drain { id, timeout_secs }) => {
            drain(&m, &view, &id, Duration::from_secs(timeout_secs)).await
        }
        CtlCmd::Shard(ShardCmd::Undrain { id }) => {
            let id = ShardId::parse(&id).context("shard id")?;
            m.set_draining(&id, false).await?;
            println!("{id}: drain cancelled");
            Ok(())
        }
        CtlCmd::Doc(LocateCmd::Locate { id }) => {
            let doc = DocId::parse(&id).context("document id")?;
            locate(&view, StreamId::Doc(doc)).await
        }
        CtlCmd::Room(LocateCmd::Locate { id }) => {
            let room = RoomId::parse(&id).context("room id")?;
            locate(&view, StreamId::Room(room)).await
        }
    }
}

/// GET `path` from `addr` (HTTP/1.0, the body as text).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(3), io)
        .await
        .context("timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("bad HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

async fn stats(admin: &str) -> anyhow::Result<AdminStats> {
    Ok(serde_json::from_str(&http_get(admin, "/stats").await?)?)
}

/// Every registered shard's stats (a shard that does not answer is left out, with a warning).
async fn all_stats(view: &View) -> BTreeMap<ShardId, AdminStats> {
    let mut out = BTreeMap::new();
    for m in &view.members {
        match stats(&m.admin).await {
            Ok(s) => {
                out.insert(m.id.clone(), s);
            }
            Err(e) => eprintln!("warning: {} ({}) did not answer: {e:#}", m.id, m.admin),
        }
    }
    out
}

#[allow(clippy::print_stdout)]
async fn shards_list(m: &Membership, view: &View, json: bool) -> anyhow::Result<()> {
    let first = all_stats(view).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = all_stats(view).await;
    let mut rows = Vec::new();
    for info in &view.members {
        let ttl = m.lease_ttl_ms(&info.id).await.ok().flatten();
        let lease_age = ttl.map(|t| info.lease_ms as i64 - t);
        let s = second.get(&info.id);
        let rate = match (first.get(&info.id), s) {
            (Some(a), Some(b)) => b.events_total.saturating_sub(a.events_total) as f64,
            _ => f64::NAN,
        };
        let state = if view.draining.contains(&info.id) {
            "draining"
        } else if view.ring.contains(&info.id) {
            "serving"
        } else {
            "joining"
        };
        rows.push(serde_json::json!({
            "id": info.id, "link": info.link, "admin": info.admin, "weight": info.weight(),
            "state": state, "lease_age_ms": lease_age,
            "docs": s.map(|s| s.held.docs.len()), "rooms": s.map(|s| s.held.rooms.len()),
            "connections": s.map(|s| s.held.connections + s.held.room_connections),
            "events_per_sec": if rate.is_nan() { None } else { Some(rate) },
            "ring_version": s.map(|s| s.ring_version),
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("ring version {}", view.ring.version());
    println!(
        "{:<16} {:<22} {:>6} {:>9} {:>10} {:>7} {:>7} {:>7} {:>9}",
        "ID", "LINK", "WEIGHT", "STATE", "LEASE AGE", "DOCS", "ROOMS", "CONNS", "EVENTS/S"
    );
    let dash = |v: &serde_json::Value| {
        if v.is_null() {
            "-".to_owned()
        } else {
            v.to_string()
        }
    };
    for r in rows {
        println!(
            "{:<16} {:<22} {:>6} {:>9} {:>10} {:>7} {:>7} {:>7} {:>9}",
            r["id"].as_str().unwrap_or_default(),
            r["link"].as_str().unwrap_or_default(),
            r["weight"],
            r["state"].as_str().unwrap_or_default(),
            r["lease_age_ms"]
                .as_i64()
                .map_or("-".to_owned(), |v| format!("{v} ms")),
            dash(&r["docs"]),
            dash(&r["rooms"]),
            dash(&r["connections"]),
            dash(&r["events_per_sec"]),
        );
    }
    Ok(())
}

/// The ring after `--add`, `--remove` or `--weight`.
pub fn planned_ring(
    ring: &Ring,
    add: Option<String>,
    remove: Option<String>,
    weight: Option<String>,
) -> anyhow::Result<Ring> {
    match (add, remove, weight) {
        (Some(a), None, None) => {
            let (id, w) = match a.split_once(':') {
                Some((id, w)) => (id, w.parse::<f64>().context("--add ID:WEIGHT")?),
                None => (a.as_str(), 1.0),
            };
            let id = ShardId::parse(id).context("--add")?;
            if ring.contains(&id) {
                bail!("{id} is already on the ring (use --weight)");
            }
            Ok(ring.with(Member { id, weight: w }))
        }
        (None, Some(r), None) => {
            let id = ShardId::parse(&r).context("--remove")?;
            if !ring.contains(&id) {
                bail!("{id} is not on the ring");
            }
            Ok(ring.without(&id))
        }
        (None, None, Some(w)) => {
            let (id, w) = w.split_once('=').context("--weight ID=WEIGHT")?;
            let id = ShardId::parse(id).context("--weight")?;
            let w: f64 = w.parse().context("--weight ID=WEIGHT")?;
            if !ring.contains(&id) {
                bail!("{id} is not on the ring");
            }
            Ok(ring.with(Member { id, weight: w }))
        }
        _ => bail!("give exactly one of --add, --remove, --weight"),
    }
}

fn name(s: &Option<ShardId>) -> String {
    s.as_ref().map_or("(none)".to_owned(), |s| s.to_string())
}

#[allow(clippy::print_stdout)]
async fn ring_plan(view: &View, after: &Ring, json: bool) -> anyhow::Result<()> {
    let stats = all_stats(view).await;
    let keys: Vec<String> = stats
        .values()
        .flat_map(|s| {
            let docs = s.held.docs.iter().map(|d| StreamId::Doc(d.clone()).key());
            let rooms = s.held.rooms.iter().map(|r| StreamId::Room(r.clone()).key());
            docs.chain(rooms)
        })
        .collect();
    let moves = router::plan(&view.ring, after, keys.iter().map(String::as_str));
    let moved: usize = moves.values().map(Vec::len).sum();
    if json {
        let list: Vec<serde_json::Value> = moves
            .iter()
            .flat_map(|((from, to), ks)| {
                ks.iter().map(
                    move |k| serde_json::json!({ "key": k, "from": name(from), "to": name(to) }),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "loaded": keys.len(), "moving": moved, "moves": list })
        );
        return Ok(());
    }
    println!(
        "ring version {} → planned: {} of {} loaded keys move ({:.1} %)",
        view.ring.version(),
        moved,
        keys.len(),
        if keys.is_empty() {
            0.0
        } else {
            100.0 * moved as f64 / keys.len() as f64
        }
    );
    for ((from, to), ks) in &moves {
        println!("  {:<16} → {:<16} {:>7}", name(from), name(to), ks.len());
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn drain(m: &Membership, view: &View, id: &str, timeout: Duration) -> anyhow::Result<()> {
    let id = ShardId::parse(id).context("shard id")?;
    let Some(info) = view.info(&id).cloned() else {
        bail!("{id} is not registered");
    };
    if view.ring.members().len() <= 1 && view.ring.contains(&id) {
        bail!("{id} is the only shard on the ring; nothing could take its keys");
    }
    let before = stats(&info.admin).await.ok();
    if let Some(s) = &before {
        println!(
            "draining {id}: {} documents, {} rooms, {} connections",
            s.held.docs.len(),
            s.held.rooms.len(),
            s.held.connections + s.held.room_connections
        );
    }
    m.set_draining(&id, true).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let v = m.sync().await?;
        if v.info(&id).is_none() {
            println!("{id}: drained and exited");
            return Ok(());
        }
        match stats(&info.admin).await {
            Ok(s) => println!(
                "  {id}: {} documents, {} rooms, {} connections left",
                s.held.docs.len(),
                s.held.rooms.len(),
                s.held.connections + s.held.room_connections
            ),
            Err(_) => println!("  {id}: stopping"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{id} still holds keys after {timeout:?} (the drain continues; `tandem ctl shard undrain {id}` cancels it)");
        }
    }
}

#[allow(clippy::print_stdout)]
async fn locate(view: &View, key: StreamId) -> anyhow::Result<()> {
    let k = key.key();
    let owner = view.ring.owner(&k);
    println!(
        "{k}: owner {} (ring version {})",
        owner.map_or("(none: empty ring)".to_owned(), |o| o.to_string()),
        view.ring.version()
    );
    for (id, s) in all_stats(view).await {
        let loaded = match &key {
            StreamId::Doc(d) => s.held.docs.contains(d),
            StreamId::Room(r) => s.held.rooms.contains(r),
        };
        if loaded {
            println!("  loaded on {id}");
        }
    }
    Ok(())
}
