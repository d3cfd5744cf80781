//! `bench`: Tandem's load harness. Run `bench --help`; docs/benchmarks.md has the commands behind
//! its tables.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use bench::scenario::{
    self, call, chat_fanout, cold_load, doc_fanout, idle, presence_churn, reconnect, sweep,
    Scenario,
};
use bench::target::TargetOpts;
use bench::wire::Dialect;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Tandem's bench harness: realistic load against Tandem and the servers people run today",
    after_help = "Every scenario takes --targets (default: tandem); `bench compare SCENARIO` runs the same \
                  workload against tandem, hocuspocus and y-websocket-server in one run. Reports go to \
                  --out (default bench-results/): report.json, report.md, chart.svg."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Scenario(ScenarioCmd),
    /// Run a scenario against Tandem and the peers side by side (default targets:
    /// tandem,hocuspocus,y-websocket-server) and print Tandem's ratio to each.
    Compare {
        #[command(subcommand)]
        scenario: ScenarioCmd,
    },
    /// Durable appends to PostgreSQL: events/s and append→ack latency, group commit on and off.
    StoreAppend {
        #[arg(
            long,
            env = "TANDEM_DATABASE_URL",
            default_value = "postgres://root@127.0.0.1:5432/test"
        )]
        database_url: String,
        #[arg(long, default_value_t = 64)]
        writers: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 32)]
        payload: usize,
        /// `on`, `off` or `both`.
        #[arg(long, default_value = "both")]
        group_commit: String,
    },
    /// (internal) One load-generator process of idle-connections.
    #[command(hide = true)]
    IdleWorker {
        #[arg(long)]
        url_template: String,
        #[arg(long)]
        dialect: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long)]
        docs: usize,
        #[arg(long)]
        source: Option<IpAddr>,
        #[arg(long, default_value_t = 20.0)]
        heartbeat: f64,
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
    },
}

#[derive(Subcommand, Clone)]
enum ScenarioCmd {
    /// D documents × E editors typing R edits/s (+ awareness) over the y-websocket protocol:
    /// send → every other editor has it, p50…max, and throughput. --sweep finds the knee.
    DocFanout(FanoutArgs),
    /// Hold N idle WebSockets (several worker processes, several source addresses): connect rate
    /// and the server's RSS per socket.
    IdleConnections(IdleArgs),
    /// Drop N connected clients at once and reconnect them: time until all are synced again.
    ReconnectStorm(StormArgs),
    /// Open a large document (B4 trace size class): initial sync time warm and after a restart.
    ColdLoad(ColdArgs),
    /// One room of M members on the native protocol (/v1); one sender sends N chat messages at R/s:
    /// send → each member has it (p50…max), → all members have it, → ack. Tandem and socketio.
    ChatFanout(ChatArgs),
    /// One room of M members; T typists toggle typing and move a cursor R times/s each: frames and
    /// bytes each member receives per second (the presence/typing budget). Tandem and socketio.
    PresenceChurn(ChurnArgs),
    /// P synthetic WebRTC participants (str0m) per room, camera (simulcast) + microphone each, all
    /// subscribed to each other: forwarding latency through the SFU, frame loss, join time, server
    /// CPU per forwarded stream.
    Call(CallArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Comma-separated: tandem, hocuspocus, y-websocket-server, or ws://IP:PORT/prefix.
    #[arg(long)]
    targets: Option<String>,
    /// TOML file with [target], [doc-fanout], [sweep], [idle-connections], [reconnect-storm],
    /// [cold-load] tables (command-line flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder for reports.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The tandem binary [default: next to bench, else on PATH].
    #[arg(long)]
    tandem_bin: Option<PathBuf>,
    /// Tandem's store: postgres (durable, the default) or sqlite.
    #[arg(long)]
    tandem_store: Option<String>,
    /// Extra argument passed to `tandem dev` (repeatable).
    #[arg(long = "tandem-arg", allow_hyphen_values = true)]
    tandem_args: Vec<String>,
    #[arg(long, env = "TANDEM_DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, env = "BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// Folder with the peers' package.json.
    #[arg(long)]
    peers_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    docs: Option<usize>,
    #[arg(long)]
    editors: Option<usize>,
    /// Edits per second per editor.
    #[arg(long)]
    rate: Option<f64>,
    /// Awareness updates per second per editor [default: the edit rate].
    #[arg(long)]
    awareness_rate: Option<f64>,
    /// Measured seconds.
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds to wait after the last send for edits in flight (then they count as missing).
    #[arg(long)]
    grace: Option<f64>,
    /// Raise the per-editor rate step by step; report the highest load with p99 under the threshold.
    #[arg(long)]
    sweep: bool,
    /// Per-editor rates of the sweep's steps [default: 1,2,4,8,16,32,64].
    #[arg(long, value_delimiter = ',')]
    sweep_rates: Option<Vec<f64>>,
    /// Measured seconds per sweep step [default: 10].
    #[arg(long)]
    step_duration: Option<f64>,
    /// p99 threshold of the sweep, in ms [default: 100].
    #[arg(long)]
    threshold_ms: Option<f64>,
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    connections: Option<usize>,
    #[arg(long)]
    docs: Option<usize>,
    /// Sockets per load-generator process (≤ 19,000).
    #[arg(long)]
    per_worker: Option<usize>,
    /// Seconds between client pings.
    #[arg(long)]
    heartbeat: Option<f64>,
    /// Seconds to hold all sockets.
    #[arg(long)]
    hold: Option<f64>,
}

#[derive(Args, Clone)]
struct StormArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    clients: Option<usize>,
    #[arg(long)]
    docs: Option<usize>,
    #[arg(long)]
    rounds: Option<usize>,
}

#[derive(Args, Clone)]
struct ChatArgs {
    #[command(flatten)]
    common: Common,
    /// Receiving members of the room.
    #[arg(long)]
    members: Option<usize>,
    /// Messages sent.
    #[arg(long)]
    messages: Option<usize>,
    /// Messages per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds to wait for late deliveries after the last send.
    #[arg(long)]
    grace: Option<f64>,
}

#[derive(Args, Clone)]
struct CallArgs {
    #[command(flatten)]
    common: Common,
    /// Participants per room.
    #[arg(long)]
    participants: Option<usize>,
    /// Rooms (calls).
    #[arg(long)]
    rooms: Option<usize>,
    /// Seconds of media measured after everyone joined.
    #[arg(long)]
    duration: Option<f64>,
    /// One video stream per camera instead of three simulcast layers.
    #[arg(long)]
    no_simulcast: bool,
    /// Quality every subscriber asks of every camera: high, medium, low.
    #[arg(long)]
    quality: Option<String>,
    /// Video frames per second.
    #[arg(long)]
    fps: Option<u32>,
    /// Bytes per frame of the top video layer.
    #[arg(long)]
    video_bytes: Option<usize>,
}

#[derive(Args, Clone)]
struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    /// Members of the room (distinct users).
    #[arg(long)]
    members: Option<usize>,
    /// Members who type and move their cursor.
    #[arg(long)]
    typists: Option<usize>,
    /// Typing toggles and cursor moves per typist per second (each).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured.
    #[arg(long)]
    duration: Option<f64>,
}

#[derive(Args, Clone)]
struct ColdArgs {
    #[command(flatten)]
    common: Common,
    /// Operations in the synthetic trace.
    #[arg(long)]
    ops: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    loads: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
struct ConfigFile {
    target: Option<TargetOpts>,
    doc_fanout: Option<doc_fanout::Params>,
    sweep: Option<sweep::Params>,
    idle_connections: Option<idle::Params>,
    reconnect_storm: Option<reconnect::Params>,
    cold_load: Option<cold_load::Params>,
    chat_fanout: Option<chat_fanout::Params>,
    presence_churn: Option<presence_churn::Params>,
    call: Option<call::Params>,
}

fn load_config(c: &Common) -> anyhow::Result<ConfigFile> {
    match &c.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        }
        None => Ok(ConfigFile::default()),
    }
}

fn target_opts(c: &Common, cfg: &ConfigFile) -> TargetOpts {
    let mut o = cfg.target.clone().unwrap_or_default();
    if let Some(v) = &c.tandem_bin {
        o.tandem_bin = Some(v.clone());
    }
    if let Some(v) = &c.tandem_store {
        o.tandem_store = v.clone();
    }
    if let Some(v) = &c.database_url {
        o.database_url = v.clone();
    }
    if let Some(v) = &c.redis_url {
        o.redis_url = v.clone();
    }
    if let Some(v) = &c.peers_dir {
        o.peers_dir = v.clone();
    }
    o.tandem_args.extend(c.tandem_args.iter().cloned());
    o
}

fn set<T: Copy>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// Runs `scenario` against the targets the command line names (or its defaults).
async fn dispatch<S: Scenario>(
    scenario: S,
    c: &Common,
    cfg: &ConfigFile,
    compare: bool,
) -> anyhow::Result<()> {
    let opts = target_opts(c, cfg);
    let kinds = S::PROTOCOL.targets(c.targets.as_deref(), compare)?;
    scenario::run_and_report(&scenario, &kinds, opts, &c.out).await
}

async fn run_scenario(s: ScenarioCmd, compare: bool) -> anyhow::Result<()> {
    match s {
        ScenarioCmd::DocFanout(a) => {
            let cfg = load_config(&a.common)?;
            let mut p = cfg.doc_fanout.clone().unwrap_or_default();
            set(&mut p.docs, a.docs);
            set(&mut p.editors, a.editors);
            set(&mut p.rate, a.rate);
            if a.awareness_rate.is_some() {
                p.awareness_rate = a.awareness_rate;
            }
            set(&mut p.duration, a.duration);
            set(&mut p.warmup, a.warmup);
            set(&mut p.grace, a.grace);
            if !a.sweep {
                return dispatch(p, &a.common, &cfg, compare).await;
            }
            let mut sw = cfg.sweep.clone().unwrap_or_default();
            if let Some(r) = a.sweep_rates {
                sw.rates = r;
            }
            set(&mut sw.step_duration, a.step_duration);
            set(&mut sw.threshold_ms, a.threshold_ms);
            let s = sweep::Sweep {
                fanout: p,
                sweep: sw,
            };
            dispatch(s, &a.common, &cfg, compare).await
        }
        ScenarioCmd::IdleConnections(a) => {
            let cfg = load_config(&a.common)?;
            let mut p = cfg.idle_connections.clone().unwrap_or_default();
            set(&mut p.connections, a.connections);
            set(&mut p.docs, a.docs);
            set(&mut p.per_worker, a.per_worker);
            set(&mut p.heartbeat, a.heartbeat);
            set(&mut p.hold, a.hold);
            dispatch(p, &a.common, &cfg, compare).await
        }
        ScenarioCmd::ReconnectStorm(a) => {
            let cfg = load_config(&a.common)?;
            let mut p = cfg.reconnect_storm.clone().unwrap_or_default();
            set(&mut p.clients, a.clients);
            set(&mut p.docs, a.docs);
            set(&mut p.rounds, a.rounds);
            dispatch(p, &a.common, &cfg, compare).await
        }
        ScenarioCmd::ColdLoad(a) => {
            let cfg = load_config(&a.common)?;
            let mut p = cfg.cold_load.clone().unwrap_or_default();
            set(&mut p.ops, a.ops);
            set(&mut p.batch, a.batch);
            set(&mut p.loads, a.loads);
            dispatch(p, &a.common, &cfg, compare).await
        }
        ScenarioCmd::ChatFanout(a) => {
            let cfg = load_config(&a.common)?;
            let mut p = cfg.chat_fanout.clone().unwrap_or_default();
            set(&mut p.members, a.members);
            set(&mut p.messages, a.messages);
            set(&mut p.rate, a.rate);
            set(&mut p.grace, a.grace);
            dispatch(p, &a.common, &cfg, compare).await
        }
        ScenarioCmd::Call(a) => {
            let cfg = load_config(&a.common)?;
            let mut p = cfg.call.clone().unwrap_or_default();
            set(&mut p.participants, a.participants);
            set(&mut p.rooms, a.rooms);
            set(&mut p.duration, a.duration);
            set(&mut p.fps, a.fps);
            set(&mut p.video_bytes, a.video_bytes);
            if a.no_simulcast {
                p.simulcast = false;
            }
            if let Some(q) = a.quality.clone() {
                if !matches!(q.as_str(), "high" | "medium" | "low") {
                    anyhow::bail!("--quality {q}: expected high, medium or low");
                }
                p.quality = q;
            }
            dispatch(p, &a.common, &cfg, compare).await
        }
        ScenarioCmd::PresenceChurn(a) => {
            let cfg = load_config(&a.common)?;
            let mut p = cfg.presence_churn.clone().unwrap_or_default();
            set(&mut p.members, a.members);
            set(&mut p.typists, a.typists);
            set(&mut p.rate, a.rate);
            set(&mut p.duration, a.duration);
            dispatch(p, &a.common, &cfg, compare).await
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let work = async {
        match cli.cmd {
            Cmd::Scenario(s) => run_scenario(s, false).await,
            Cmd::Compare { scenario } => run_scenario(scenario, true).await,
            Cmd::StoreAppend {
                database_url,
                writers,
                duration,
                payload,
                group_commit,
            } => {
                bench::store_append::run(&database_url, writers, duration, payload, &group_commit)
                    .await
            }
            Cmd::IdleWorker {
                url_template,
                dialect,
                count,
                offset,
                docs,
                source,
                heartbeat,
                concurrency,
            } => {
                let d = match dialect.as_str() {
                    "hocuspocus" => Dialect::Hocuspocus,
                    "y-websocket" => Dialect::YWebsocket,
                    other => anyhow::bail!("--dialect {other}: expected y-websocket or hocuspocus"),
                };
                idle::worker(
                    url_template,
                    d,
                    count,
                    offset,
                    docs,
                    source,
                    heartbeat,
                    concurrency,
                )
                .await
            }
        }
    };
    // Ctrl-C stops the run; started servers die with their handles (kill_on_drop).
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\nbench: interrupted");
            std::process::exit(130);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_with_every_table() {
        let cfg: ConfigFile =
            toml::from_str(include_str!("../bench.example.toml")).expect("example parses");
        assert_eq!(cfg.doc_fanout.expect("doc-fanout").editors, 50);
        assert_eq!(cfg.sweep.expect("sweep").threshold_ms, 100.0);
        assert_eq!(cfg.idle_connections.expect("idle").connections, 18_000);
        assert_eq!(cfg.reconnect_storm.expect("storm").clients, 2_000);
        assert_eq!(cfg.cold_load.expect("cold").ops, 260_000);
        assert_eq!(cfg.target.expect("target").tandem_store, "postgres");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ConfigFile>("[doc-fanout]\ndocs = 1\n[nope]\n").is_err());
    }
}
