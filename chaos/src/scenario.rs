//! One chaos run: services, cluster, workload, faults, settle, checks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use proto::{DocId, RoomId, ShardId, StreamId};
use router::Ring;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::check::{check, Verdict};
use crate::cluster::Cluster;
use crate::rng::Rng;
use crate::services::{Postgres, Redis};
use crate::workload::{self, doc_name, room_name, Ctx, Record, Replica};

/// The faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// SIGKILL a random shard that owns workload keys, restart it a few seconds later.
    ShardKill,
    /// SIGSTOP an owning shard past its lease, then SIGCONT (a zombie wakes up).
    ShardPause,
    /// SIGKILL a random gateway, restart it.
    GatewayKill,
    /// Kill Redis (it keeps nothing: membership, leases and the bus are gone), start it again.
    RedisRestart,
    /// Immediate shutdown of PostgreSQL (crash recovery on start), start it again.
    PostgresRestart,
    /// `tandem ctl shard drain` a random shard under load (checked against `ring plan`), then
    /// restart it (it rejoins and takes its keys back).
    Drain,
    /// A call of synthetic WebRTC participants in a chat room; SIGKILL the room's owner, restart
    /// it: participants rejoin the call on the new owner (and back), the media gap is measured.
    CallOwnerKill,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 7] = [
        Scenario::ShardKill,
        Scenario::ShardPause,
        Scenario::GatewayKill,
        Scenario::RedisRestart,
        Scenario::PostgresRestart,
        Scenario::Drain,
        Scenario::CallOwnerKill,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::ShardKill => "shard-kill",
            Scenario::ShardPause => "shard-pause",
            Scenario::GatewayKill => "gateway-kill",
            Scenario::RedisRestart => "redis-restart",
            Scenario::PostgresRestart => "postgres-restart",
            Scenario::Drain => "drain",
            Scenario::CallOwnerKill => "call-owner-kill",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Scenario> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The fault.
    pub scenario: Scenario,
    /// How long the workload and faults run.
    pub duration: Duration,
    /// Every random choice derives from it.
    pub seed: u64,
    /// Documents.
    pub docs: usize,
    /// Writers per document.
    pub writers: usize,
    /// Chat rooms.
    pub rooms: usize,
    /// Chat clients per room.
    pub chatters: usize,
    /// Milliseconds between one client's edits (or messages).
    pub interval_ms: u64,
    /// Shard processes.
    pub shards: usize,
    /// Gateway processes.
    pub gateways: usize,
    /// Shard lease (ms).
    pub lease_ms: u64,
    /// The tandem binary.
    pub tandem: PathBuf,
    /// Where process logs go.
    pub logs: PathBuf,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The invariant checks.
    pub verdict: Verdict,
    /// Faults injected.
    pub faults: usize,
    /// Per fault and affected key: time from the fault until that key acknowledged a new event (ms).
    pub recovery_ms: Vec<f64>,
    /// Drain: moved keys found loaded somewhere other than where `ring plan` said.
    pub plan_mismatches: u64,
    /// Drain: keys `ring plan` said would move.
    pub planned_moves: u64,
    /// Socket connections the clients made (reconnects included).
    pub connects: u64,
    /// Chat resumes that could not recover.
    pub resets: u64,
    /// Faulted keys that never acknowledged anything written after the fault.
    pub unrecovered: u64,
    /// Chat clients left with unacknowledged messages (or stuck) after the settle period.
    pub stuck_clients: u64,
    /// Events a client never saw although it stayed joined (see `Record::client_gaps`).
    pub client_gaps: u64,
    /// Appends the store refused for a stale epoch (a fenced-out owner tried to write), from the
    /// shard logs.
    pub fenced_appends: u64,
    /// call-owner-kill: every pause in a participant's received media (ms), failovers included.
    pub media_gaps_ms: Vec<f64>,
    /// call-owner-kill: participants whose media was not flowing at the end of the run.
    pub call_stalled: u64,
    /// call-owner-kill: times participants joined the call (first joins and rejoins).
    pub call_joins: u64,
}

impl Outcome {
    /// Whether the run passed.
    pub fn ok(&self) -> bool {
        self.verdict.ok()
            && self.plan_mismatches == 0
            && self.unrecovered == 0
            && self.stuck_clients == 0
            && self.client_gaps == 0
            && self.call_stalled == 0
    }

    /// A percentile of the media gaps (0 when there are none).
    pub fn media_gap(&self, p: f64) -> f64 {
        percentile(&self.media_gaps_ms, p)
    }

    /// A percentile of the recovery times (0 when there are none).
    pub fn recovery(&self, p: f64) -> f64 {
        percentile(&self.recovery_ms, p)
    }

    /// The summary line.
    pub fn summary(&self) -> String {
        let v = &self.verdict;
        format!(
            "acked={} lost={} diverged={} duplicates={} stale_writes={} recovery_p99_ms={:.0} recovery_p50_ms={:.0} gaps={} faults={} acked_messages={} planned_moves={} plan_mismatches={} unrecovered={} stuck_clients={} client_gaps={} fenced_appends={} connects={} resets={}",
            v.acked,
            v.lost,
            v.diverged,
            v.duplicates,
            v.stale_writes,
            self.recovery(99.0),
            self.recovery(50.0),
            v.gaps,
            self.faults,
            v.acked_messages,
            self.planned_moves,
            self.plan_mismatches,
            self.unrecovered,
            self.stuck_clients,
            self.client_gaps,
            self.fenced_appends,
            self.connects,
            self.resets,
        ) + &if self.call_joins > 0 {
            format!(
                " call_joins={} media_gap_p50_ms={:.0} media_gap_p99_ms={:.0} call_stalled={}",
                self.call_joins,
                self.media_gap(50.0),
                self.media_gap(99.0),
                self.call_stalled
            )
        } else {
            String::new()
        }
    }
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

struct Fault {
    at: Instant,
    /// Docs and rooms whose service the fault interrupted.
    docs: Vec<usize>,
    rooms: Vec<usize>,
}

fn ring_of(c: &Cluster) -> Ring {
    Ring::uniform(1, c.shard_specs.iter().map(|s| s.id.clone()))
}

fn doc_key(d: usize) -> String {
    StreamId::Doc(DocId::parse(&doc_name(d)).expect("valid id")).key()
}

fn room_key(r: usize) -> String {
    StreamId::Room(RoomId::parse(&room_name(r)).expect("valid id")).key()
}

/// Runs one scenario end to end.
pub async fn run(cfg: &RunConfig) -> anyhow::Result<Outcome> {
    let mut rng = Rng::new(cfg.seed);
    let mut pg = Postgres::start().await.context("starting PostgreSQL")?;
    let mut redis = Redis::start().await.context("starting Redis")?;
    let logs = cfg.logs.join(cfg.scenario.name());
    let _ = std::fs::remove_dir_all(&logs);
    let mut cluster = Cluster::start(
        &cfg.tandem,
        &logs,
        &pg.url(),
        &redis.url(),
        cfg.shards,
        cfg.gateways,
        cfg.lease_ms,
    )
    .await?;
    let record: workload::Shared = Arc::default();
    let ctx = Ctx {
        gateways: cluster.gateway_ports.clone(),
        record: record.clone(),
        interval_ms: cfg.interval_ms,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let mut writer_tasks = Vec::new();
    let mut finals: Vec<Vec<Arc<Mutex<Option<Replica>>>>> = Vec::new();
    for d in 0..cfg.docs {
        let mut slots = Vec::new();
        for w in 0..cfg.writers {
            let slot: Arc<Mutex<Option<Replica>>> = Arc::default();
            slots.push(slot.clone());
            writer_tasks.push(tokio::spawn(workload::doc_writer(
                ctx.clone(),
                d,
                w,
                rng.fork(),
                stop_rx.clone(),
                done_rx.clone(),
                slot,
            )));
        }
        finals.push(slots);
    }
    let mut chat_tasks = Vec::new();
    for r in 0..cfg.rooms {
        for c in 0..cfg.chatters {
            chat_tasks.push(tokio::spawn(workload::chat_client(
                ctx.clone(),
                r,
                c,
                rng.fork(),
                stop_rx.clone(),
            )));
        }
    }
    // call-owner-kill: a call in room 0 (where chat clients talk too), one participant per gateway
    // and one more.
    let mut call_peers = Vec::new();
    if cfg.scenario == Scenario::CallOwnerKill {
        for i in 0..3 {
            let port = cluster.gateway_ports[i % cluster.gateway_ports.len()];
            let pc = bench::callpeer::PeerConfig {
                url: format!("ws://127.0.0.1:{port}/v1"),
                token: None,
                room: room_name(0),
                index: i as u32,
                video: true,
                audio: true,
                simulcast: false,
                quality: "high".into(),
                fps: 15,
                video_bytes: 600,
            };
            let stats: bench::callpeer::Shared = Arc::default();
            let task = tokio::spawn(bench::callpeer::run(pc, stats.clone(), stop_rx.clone()));
            call_peers.push((stats, task));
        }
    }
    // Warm up: every key loaded and acknowledging (and the call connected).
    tokio::time::sleep(Duration::from_secs(if call_peers.is_empty() {
        2
    } else {
        4
    }))
    .await;
    let started = Instant::now();
    let mut faults: Vec<Fault> = Vec::new();
    let mut out = Outcome::default();
    let all_docs: Vec<usize> = (0..cfg.docs).collect();
    let all_rooms: Vec<usize> = (0..cfg.rooms).collect();
    while started.elapsed() + Duration::from_secs(1) < cfg.duration {
        tokio::time::sleep(rng.millis(1000, 3000)).await;
        let ring = ring_of(&cluster);
        let owned_by = |id: &ShardId| -> (Vec<usize>, Vec<usize>) {
            (
                (0..cfg.docs)
                    .filter(|d| ring.owner(&doc_key(*d)) == Some(id))
                    .collect(),
                (0..cfg.rooms)
                    .filter(|r| ring.owner(&room_key(*r)) == Some(id))
                    .collect(),
            )
        };
        match cfg.scenario {
            Scenario::CallOwnerKill => {
                // The owner of the call's room.
                let i = (0..cluster.shard_specs.len())
                    .find(|i| owned_by(&cluster.shard_specs[*i].id).1.contains(&0))
                    .context("no shard owns the call's room")?;
                let (docs, rooms) = owned_by(&cluster.shard_specs[i].id);
                let at = Instant::now();
                cluster.kill_shard(i).await;
                faults.push(Fault { at, docs, rooms });
                tokio::time::sleep(rng.millis(3000, 5000)).await;
                cluster.start_shard(i).await?;
                cluster.wait_ring(cfg.shards).await?;
            }
            Scenario::ShardKill | Scenario::ShardPause => {
                // A random shard among those owning workload keys.
                let owners: Vec<usize> = (0..cluster.shard_specs.len())
                    .filter(|i| {
                        let (d, r) = owned_by(&cluster.shard_specs[*i].id);
                        !d.is_empty() || !r.is_empty()
                    })
                    .collect();
                let i = owners[rng.below(owners.len() as u64) as usize];
                let (docs, rooms) = owned_by(&cluster.shard_specs[i].id);
                let at = Instant::now();
                if cfg.scenario == Scenario::ShardKill {
                    cluster.kill_shard(i).await;
                    faults.push(Fault { at, docs, rooms });
                    tokio::time::sleep(rng.millis(3000, 5000)).await;
                    cluster.start_shard(i).await?;
                } else {
                    cluster.pause_shard(i).await?;
                    faults.push(Fault { at, docs, rooms });
                    tokio::time::sleep(
                        Duration::from_millis(cfg.lease_ms) + rng.millis(1000, 2500),
                    )
                    .await;
                    cluster.resume_shard(i).await?;
                }
                cluster.wait_ring(cfg.shards).await?;
            }
            Scenario::GatewayKill => {
                let i = rng.below(cfg.gateways as u64) as usize;
                let at = Instant::now();
                cluster.kill_gateway(i).await;
                faults.push(Fault {
                    at,
                    docs: all_docs.clone(),
                    rooms: all_rooms.clone(),
                });
                tokio::time::sleep(rng.millis(1000, 3000)).await;
                cluster.start_gateway(i).await?;
            }
            Scenario::RedisRestart => {
                let at = Instant::now();
                redis.kill().await?;
                faults.push(Fault {
                    at,
                    docs: all_docs.clone(),
                    rooms: all_rooms.clone(),
                });
                tokio::time::sleep(rng.millis(200, 1500)).await;
                redis.restart().await?;
                cluster.wait_ring(cfg.shards).await?;
            }
            Scenario::PostgresRestart => {
                let at = Instant::now();
                faults.push(Fault {
                    at,
                    docs: all_docs.clone(),
                    rooms: all_rooms.clone(),
                });
                pg.restart(rng.millis(200, 1500)).await?;
            }
            Scenario::Drain => {
                let i = rng.below(cluster.shard_specs.len() as u64) as usize;
                let id = cluster.shard_specs[i].id.clone();
                let (docs, rooms) = owned_by(&id);
                let plan = cluster
                    .ctl(&["ring", "plan", "--remove", id.as_str(), "--json"])
                    .await?;
                let plan: serde_json::Value = serde_json::from_str(&plan)?;
                let at = Instant::now();
                cluster
                    .ctl(&["shard", "drain", id.as_str(), "--timeout-secs", "60"])
                    .await?;
                faults.push(Fault { at, docs, rooms });
                // Clients moved; give them a moment to land, then compare with the plan.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let (checked, mismatched) = compare_plan(&cluster, &plan).await?;
                out.planned_moves += checked;
                out.plan_mismatches += mismatched;
                cluster.start_shard(i).await?;
                cluster.wait_ring(cfg.shards).await?;
            }
        }
        out.faults += 1;
    }
    // The call: media must flow again for everyone once the faults healed.
    if !call_peers.is_empty() {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let now = std::time::Instant::now();
        for (stats, _) in &call_peers {
            let s = stats.lock().unwrap_or_else(|e| e.into_inner());
            out.media_gaps_ms
                .extend(s.gaps.iter().map(|g| g.as_secs_f64() * 1000.0));
            out.call_joins += u64::from(s.joins);
            let flowing = s
                .last_frame
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(2));
            if !flowing {
                out.call_stalled += 1;
            }
        }
    }
    // Settle: faults healed; stop writing, let every client reconnect and converge.
    stop_tx.send_replace(true);
    for (_, t) in call_peers {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    for t in chat_tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    done_tx.send_replace(true);
    for t in writer_tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let writers: Vec<Vec<Option<Replica>>> = finals
        .iter()
        .map(|slots| {
            slots
                .iter()
                .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take())
                .collect()
        })
        .collect();
    let mut fresh = Vec::new();
    for d in 0..cfg.docs {
        fresh.push(workload::fresh_load(&ctx, d, &mut rng).await);
    }
    let log = store::postgres::PgLog::connect(&pg.url())
        .await
        .context("reading the record")?;
    let rec = std::mem::take(&mut *record.lock().unwrap_or_else(|e| e.into_inner()));
    out.verdict = check(&log, &rec, &writers, &fresh, cfg.rooms).await?;
    log.close().await;
    let (samples, unrecovered) = recovery(&rec, &faults);
    out.recovery_ms = samples;
    out.unrecovered = unrecovered;
    out.client_gaps = rec.client_gaps;
    out.connects = rec.connects;
    out.resets = rec.resets;
    cluster.stop().await;
    out.fenced_appends = count_in_logs(&logs, "stale epoch");
    drop(redis);
    drop(pg);
    Ok(out)
}

/// For every fault and affected key: the time until the first event written after the fault was
/// acknowledged; and how many affected keys never acknowledged one.
fn recovery(rec: &Record, faults: &[Fault]) -> (Vec<f64>, u64) {
    let mut out = Vec::new();
    let mut never = 0;
    for f in faults {
        for d in &f.docs {
            let first = rec
                .doc_acks
                .get(d)
                .into_iter()
                .flatten()
                .filter(|(w, _)| *w >= f.at)
                .map(|(_, a)| *a)
                .min();
            match first {
                Some(a) => out.push(a.duration_since(f.at).as_secs_f64() * 1000.0),
                None => never += 1,
            }
        }
        for r in &f.rooms {
            let first = rec
                .chat_acked
                .iter()
                .filter(|((room, _), (_, _, _, w))| room == r && *w >= f.at)
                .map(|(_, (_, _, a, _))| *a)
                .min();
            match first {
                Some(a) => out.push(a.duration_since(f.at).as_secs_f64() * 1000.0),
                None => never += 1,
            }
        }
    }
    (out, never)
}

/// Checks `tandem ctl ring plan --json` output against where the moved keys are loaded now (via
/// `tandem ctl doc|room locate`). Returns (keys checked, keys loaded elsewhere than planned).
async fn compare_plan(cluster: &Cluster, plan: &serde_json::Value) -> anyhow::Result<(u64, u64)> {
    let mut checked = 0;
    let mut bad = 0;
    for m in plan["moves"].as_array().cloned().unwrap_or_default() {
        let key = m["key"].as_str().unwrap_or_default();
        let to = m["to"].as_str().unwrap_or_default();
        let (kind, id) = match key.split_once(':') {
            Some(("doc", id)) => ("doc", id),
            Some(("room", id)) => ("room", id),
            _ => continue,
        };
        // Every workload key is in use, so a moved key is reloaded, exactly where the plan said.
        let deadline = Instant::now() + Duration::from_secs(10);
        let loaded = loop {
            let out = cluster.ctl(&[kind, "locate", id]).await?;
            let loaded: Vec<String> = out
                .lines()
                .filter_map(|l| l.trim().strip_prefix("loaded on ").map(str::to_owned))
                .collect();
            if loaded == [to] || Instant::now() >= deadline {
                break loaded;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        checked += 1;
        if loaded != [to] {
            bad += 1;
            eprintln!("chaos: {key} planned to move to {to}, loaded on {loaded:?}");
        }
    }
    Ok((checked, bad))
}

/// Lines containing `needle` in the shard logs of a run.
fn count_in_logs(logs: &std::path::Path, needle: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir(logs) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('s'))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|t| t.lines().filter(|l| l.contains(needle)).count() as u64)
        .sum()
}
