//! `bench`: Tandem's load harness. Run `bench --help`; the README's Benchmarks section has the
//! commands behind its tables.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bench::report::{self, Machine, Row, Series};
use bench::scenario::{chat_fanout, cold_load, doc_fanout, idle, presence_churn, reconnect};
use bench::target::{Kind, Target, TargetOpts};
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
    Scenario(Scenario),
    /// Run a scenario against Tandem and the peers side by side (default targets:
    /// tandem,hocuspocus,y-websocket-server) and print Tandem's ratio to each.
    Compare {
        #[command(subcommand)]
        scenario: Scenario,
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
enum Scenario {
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
    sweep: Option<SweepCfg>,
    idle_connections: Option<idle::Params>,
    reconnect_storm: Option<reconnect::Params>,
    cold_load: Option<cold_load::Params>,
    chat_fanout: Option<chat_fanout::Params>,
    presence_churn: Option<presence_churn::Params>,
}

#[derive(Deserialize, Clone)]
#[serde(default, deny_unknown_fields)]
struct SweepCfg {
    rates: Vec<f64>,
    step_duration: f64,
    threshold_ms: f64,
}

impl Default for SweepCfg {
    fn default() -> Self {
        Self {
            rates: vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            step_duration: 10.0,
            threshold_ms: 100.0,
        }
    }
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

fn targets(c: &Common, compare: bool) -> anyhow::Result<Vec<Kind>> {
    let list = c.targets.clone().unwrap_or_else(|| {
        if compare {
            "tandem,hocuspocus,y-websocket-server".into()
        } else {
            "tandem".into()
        }
    });
    let kinds = parse_kinds(&list)?;
    if kinds.contains(&Kind::SocketIo) {
        anyhow::bail!("socketio serves chat only: use it with chat-fanout");
    }
    Ok(kinds)
}

/// A comma-separated target list.
fn parse_kinds(list: &str) -> anyhow::Result<Vec<Kind>> {
    list.split(',').map(|s| Kind::parse(s.trim())).collect()
}

/// Targets of chat scenarios: Tandem and the Socket.IO peer (`compare` runs both).
fn chat_targets(c: &Common, compare: bool) -> anyhow::Result<Vec<Kind>> {
    let list = c.targets.clone().unwrap_or_else(|| {
        if compare {
            "tandem,socketio".into()
        } else {
            "tandem".into()
        }
    });
    let kinds = parse_kinds(&list)?;
    if let Some(k) = kinds
        .iter()
        .find(|k| matches!(k, Kind::Hocuspocus | Kind::YWebsocketServer))
    {
        anyhow::bail!(
            "{} has no chat: chat-fanout runs against tandem and socketio",
            k.name()
        );
    }
    Ok(kinds)
}

fn set<T: Copy>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// Writes report.json / report.md / chart.svg and prints the Markdown.
fn write_reports(
    dir: &Path,
    json: &serde_json::Value,
    md: &str,
    svg: Option<&str>,
) -> anyhow::Result<()> {
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(json)?)?;
    std::fs::write(dir.join("report.md"), md)?;
    if let Some(svg) = svg {
        std::fs::write(dir.join("chart.svg"), svg)?;
    }
    println!("{md}");
    println!("reports: {}", dir.display());
    Ok(())
}

/// An outcome that records how its target persists.
trait Persisted {
    fn set_persistence(&mut self, how: String);
}

macro_rules! persisted {
    ($($t:ty),*) => {$(
        impl Persisted for $t {
            fn set_persistence(&mut self, how: String) {
                self.persistence = how;
            }
        }
    )*};
}
persisted!(
    doc_fanout::Outcome,
    idle::Outcome,
    reconnect::Outcome,
    cold_load::Outcome,
    chat_fanout::Outcome,
    presence_churn::Outcome
);

/// Starts each target in turn, runs `run` against it, stops it (also when the run failed), and
/// stamps each outcome with how its target persists.
async fn on_each_target<O: Persisted>(
    kinds: &[Kind],
    opts: &TargetOpts,
    mut run: impl AsyncFnMut(&mut Target, &Kind) -> anyhow::Result<O>,
) -> anyhow::Result<Vec<O>> {
    let mut out = Vec::with_capacity(kinds.len());
    for k in kinds {
        let mut t = Target::start(k, opts).await?;
        let r = run(&mut t, k).await;
        t.stop().await;
        let mut o = r?;
        o.set_persistence(k.persistence(opts));
        out.push(o);
    }
    Ok(out)
}

/// Writes a comparison report: title, machine, command, how each target persists, the table, a note.
#[allow(clippy::too_many_arguments)]
fn publish(
    scenario: &str,
    title: &str,
    kinds: &[Kind],
    opts: &TargetOpts,
    rows: &[Row],
    note: &str,
    runs: serde_json::Value,
    out: &Path,
    svg: Option<&str>,
) -> anyhow::Result<()> {
    let names: Vec<String> = kinds.iter().map(Kind::name).collect();
    let mut md = header(title, &command_line());
    md.push_str(&persistence_notes(kinds, opts));
    md.push_str(&report::table(&names, rows));
    md.push_str(note);
    let dir = report::results_dir(out, scenario)?;
    let json = serde_json::json!({
        "scenario": scenario,
        "command": command_line(),
        "machine": Machine::read(),
        "runs": runs,
    });
    write_reports(&dir, &json, &md, svg)
}

fn header(title: &str, command: &str) -> String {
    format!(
        "# {title}\n\nMachine: {}.\n\nCommand: `{command}`\n\n",
        Machine::read().line()
    )
}

fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(a) = args.first_mut() {
        *a = "bench".into();
    }
    args.join(" ")
}

fn persistence_notes(kinds: &[Kind], opts: &TargetOpts) -> String {
    let mut s = String::from("How each target persists:\n\n");
    for k in kinds {
        let _ = writeln!(s, "- **{}**: {}", k.name(), k.persistence(opts));
    }
    s.push('\n');
    s
}

async fn run_fanout(a: FanoutArgs, compare: bool) -> anyhow::Result<()> {
    let cfg = load_config(&a.common)?;
    let opts = target_opts(&a.common, &cfg);
    let kinds = targets(&a.common, compare)?;
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
    let mut sw = cfg.sweep.clone().unwrap_or_default();
    if let Some(r) = a.sweep_rates.clone() {
        sw.rates = r;
    }
    set(&mut sw.step_duration, a.step_duration);
    set(&mut sw.threshold_ms, a.threshold_ms);
    let names: Vec<String> = kinds.iter().map(Kind::name).collect();

    if !a.sweep {
        let outcomes = on_each_target(&kinds, &opts, async |t, k| {
            doc_fanout::run(t, &p, &format!("doc-fanout {}", k.name())).await
        })
        .await?;
        let series: Vec<Series> = outcomes
            .iter()
            .flat_map(|o| {
                let x = o.offered_edits_per_sec;
                [
                    Series {
                        name: format!("{} p50", o.target),
                        points: vec![(x, o.edit_latency.p50_ms)],
                        dashed: true,
                    },
                    Series {
                        name: format!("{} p99", o.target),
                        points: vec![(x, o.edit_latency.p99_ms)],
                        dashed: false,
                    },
                ]
            })
            .collect();
        let svg = report::svg_chart(
            "doc-fanout: send → every other editor has it",
            "offered edits/s",
            "latency ms",
            &series,
        );
        return publish(
            "doc-fanout",
            &format!(
                "doc-fanout: {} documents × {} editors × {} edits/s",
                p.docs, p.editors, p.rate
            ),
            &kinds,
            &opts,
            &fanout_rows(&outcomes),
            &fanout_notes(&outcomes),
            serde_json::to_value(&outcomes)?,
            &a.common.out,
            Some(&svg),
        );
    }

    // Sweep: raise the per-editor rate until p99 crosses the threshold (or edits go missing).
    let mut steps: Vec<Vec<doc_fanout::Outcome>> = Vec::new();
    let mut knees: Vec<Option<f64>> = Vec::new();
    for k in &kinds {
        let t = Target::start(k, &opts).await?;
        let mut mine = Vec::new();
        let mut knee = None;
        for &rate in &sw.rates {
            let mut sp = p.clone();
            sp.rate = rate;
            sp.duration = sw.step_duration;
            let label = format!(
                "sweep {} {:.0} edits/s",
                k.name(),
                sp.offered_edits_per_sec()
            );
            match doc_fanout::run(&t, &sp, &label).await {
                Ok(mut o) => {
                    o.persistence = k.persistence(&opts);
                    let ok = step_passes(&o, sw.threshold_ms);
                    eprintln!(
                        "{label}: edit p99 {:.1} ms, missing {}, {}",
                        o.edit_latency.p99_ms,
                        o.missing_deliveries,
                        if ok { "pass" } else { "over the threshold" }
                    );
                    if ok {
                        knee = Some(o.offered_edits_per_sec);
                    }
                    mine.push(o);
                    if !ok {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("{label}: failed: {e:#}");
                    let mut o = doc_fanout::Outcome {
                        target: k.name(),
                        params: sp.clone(),
                        offered_edits_per_sec: sp.offered_edits_per_sec(),
                        ..Default::default()
                    };
                    o.errors.push(format!("{e:#}"));
                    mine.push(o);
                    break;
                }
            }
        }
        t.stop().await;
        steps.push(mine);
        knees.push(knee);
    }
    let mut md = header(
        &format!(
            "doc-fanout sweep: {} documents × {} editors, p99 threshold {} ms",
            p.docs, p.editors, sw.threshold_ms
        ),
        &command_line(),
    );
    md.push_str(&persistence_notes(&kinds, &opts));
    md.push_str("Edit latency p99 (ms) at each offered load (edits/s over all editors); ✗ = over the threshold, edits missing or the run failed:\n\n| offered edits/s |");
    for n in &names {
        let _ = write!(md, " {n} |");
    }
    md.push_str("\n|---:|");
    md.push_str(&"---:|".repeat(names.len()));
    md.push('\n');
    for &rate in &sw.rates {
        let load = p.docs as f64 * p.editors as f64 * rate;
        if !steps
            .iter()
            .any(|s| s.iter().any(|o| o.params.rate == rate))
        {
            continue;
        }
        let _ = write!(md, "| {load:.0} |");
        for s in &steps {
            match s.iter().find(|o| o.params.rate == rate) {
                Some(o) if !o.errors.is_empty() && o.edit_latency.count == 0 => {
                    md.push_str(" ✗ failed |")
                }
                Some(o) => {
                    let mark = if step_passes(o, sw.threshold_ms) {
                        ""
                    } else {
                        " ✗"
                    };
                    let _ = write!(md, " {:.1}{mark} |", o.edit_latency.p99_ms);
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    let mut row = Row::new(
        "knee: highest offered edits/s with p99 under the threshold",
        false,
        0,
    );
    row.values = knees.clone();
    md.push('\n');
    md.push_str(&report::table(&names, &[row]));
    md.push_str("\nA knee at the last step means the target never crossed the threshold: the sweep's top rate (or the load generator) was the limit.\n");
    let series: Vec<Series> = steps
        .iter()
        .zip(&names)
        .flat_map(|(s, n)| {
            let ok: Vec<&doc_fanout::Outcome> =
                s.iter().filter(|o| o.edit_latency.count > 0).collect();
            [
                Series {
                    name: format!("{n} p50"),
                    points: ok
                        .iter()
                        .map(|o| (o.offered_edits_per_sec, o.edit_latency.p50_ms))
                        .collect(),
                    dashed: true,
                },
                Series {
                    name: format!("{n} p99"),
                    points: ok
                        .iter()
                        .map(|o| (o.offered_edits_per_sec, o.edit_latency.p99_ms))
                        .collect(),
                    dashed: false,
                },
            ]
        })
        .collect();
    let svg = report::svg_chart(
        "doc-fanout sweep: latency vs offered load",
        "offered edits/s",
        "edit latency ms",
        &series,
    );
    let dir = report::results_dir(&a.common.out, "doc-fanout-sweep")?;
    let json = serde_json::json!({
        "scenario": "doc-fanout-sweep",
        "command": command_line(),
        "machine": Machine::read(),
        "threshold_ms": sw.threshold_ms,
        "knees": names.iter().zip(&knees).map(|(n, k)| serde_json::json!({"target": n, "knee_edits_per_sec": k})).collect::<Vec<_>>(),
        "steps": steps,
    });
    write_reports(&dir, &json, &md, Some(&svg))
}

/// A sweep step passes when p99 is under the threshold, nothing went missing and no socket dropped.
fn step_passes(o: &doc_fanout::Outcome, threshold_ms: f64) -> bool {
    o.edit_latency.count > 0
        && o.edit_latency.p99_ms <= threshold_ms
        && o.missing_deliveries == 0
        && o.disconnects == 0
        && o.errors.is_empty()
}

fn fanout_rows(o: &[doc_fanout::Outcome]) -> Vec<Row> {
    let mut r = report::Rows::new(o);
    r.add("edit p50 ms", true, 2, |o| Some(o.edit_latency.p50_ms))
        .add("edit p95 ms", true, 2, |o| Some(o.edit_latency.p95_ms))
        .add("edit p99 ms", true, 2, |o| Some(o.edit_latency.p99_ms))
        .add("edit p99.9 ms", true, 2, |o| Some(o.edit_latency.p999_ms))
        .add("edit max ms", true, 1, |o| Some(o.edit_latency.max_ms))
        .add("delivery p50 ms", true, 2, |o| {
            Some(o.delivery_latency.p50_ms)
        })
        .add("delivery p99 ms", true, 2, |o| {
            Some(o.delivery_latency.p99_ms)
        })
        .add("edits/s (all received)", false, 0, |o| {
            Some(o.edits_per_sec)
        })
        .add("deliveries/s", false, 0, |o| Some(o.deliveries_per_sec))
        .add("missing deliveries", true, 0, |o| {
            Some(o.missing_deliveries as f64)
        })
        .add("dropped sockets", true, 0, |o| Some(o.disconnects as f64))
        .add("server CPU %", true, 0, |o| Some(o.server.cpu_pct))
        .add("server RSS max MB", true, 1, |o| Some(o.server.rss_max_mb))
        .add("load generator CPU %", true, 0, |o| Some(o.loadgen_cpu_pct))
        .add("connect+sync p99 ms", true, 1, |o| {
            Some(o.connect_latency.p99_ms)
        });
    r.done()
}

fn fanout_notes(o: &[doc_fanout::Outcome]) -> String {
    let mut s = String::from(
        "\n`edit` = intended send time → the last other editor has the edit; `delivery` = → one other editor has it. \
         Latency counts from the intended send time (open loop), so a stalled server is charged for the stall. \
         Ratios: how many times better the first target is (below 1: worse).\n",
    );
    for x in o {
        if let (Some(a), Some(c)) = (x.server_apply_p95_ms, x.server_commit_p95_ms) {
            let _ = writeln!(
                s,
                "\n{}: server-side processing p95 (from its /metrics): apply {:.3} ms, append → durable commit {:.3} ms.",
                x.target, a, c
            );
        }
        if !x.errors.is_empty() {
            let _ = writeln!(s, "\n{} errors: {}", x.target, x.errors.join("; "));
        }
    }
    s
}

async fn run_idle(a: IdleArgs, compare: bool) -> anyhow::Result<()> {
    let cfg = load_config(&a.common)?;
    let opts = target_opts(&a.common, &cfg);
    let kinds = targets(&a.common, compare)?;
    let mut p = cfg.idle_connections.clone().unwrap_or_default();
    set(&mut p.connections, a.connections);
    set(&mut p.docs, a.docs);
    set(&mut p.per_worker, a.per_worker);
    set(&mut p.heartbeat, a.heartbeat);
    set(&mut p.hold, a.hold);
    let outcomes = on_each_target(&kinds, &opts, async |t, k| {
        idle::run(t, &p, &format!("idle-connections {}", k.name())).await
    })
    .await?;
    let mut r = report::Rows::new(&outcomes);
    r.add("sockets held", false, 0, |o| Some(o.connected as f64))
        .add("failed to connect", true, 0, |o| Some(o.failed as f64))
        .add("dropped while held", true, 0, |o| Some(o.dropped as f64))
        .add("connect rate /s", false, 0, |o| Some(o.connect_rate))
        .add("connect+sync p99 ms", true, 1, |o| Some(o.connect_p99_ms))
        .add("server RSS, documents loaded MB", true, 1, |o| {
            Some(o.rss_base_mb)
        })
        .add("server RSS, all sockets MB", true, 1, |o| {
            Some(o.rss_held_mb)
        })
        .add("server KiB per idle socket", true, 2, |o| {
            Some(o.kib_per_socket)
        })
        .add("server CPU while idle %", true, 1, |o| {
            Some(o.server_cpu_idle_pct)
        });
    publish(
        "idle-connections",
        &format!("idle-connections: {} sockets over {} documents", p.connections, p.docs),
        &kinds,
        &opts,
        &r.done(),
        "\nKiB per idle socket = (server RSS with every socket open − RSS with one socket per document) / the other sockets. Each socket completed the initial sync of its document, then idled with client heartbeats.\n",
        serde_json::to_value(&outcomes)?,
        &a.common.out,
        None,
    )
}

async fn run_storm(a: StormArgs, compare: bool) -> anyhow::Result<()> {
    let cfg = load_config(&a.common)?;
    let opts = target_opts(&a.common, &cfg);
    let kinds = targets(&a.common, compare)?;
    let mut p = cfg.reconnect_storm.clone().unwrap_or_default();
    set(&mut p.clients, a.clients);
    set(&mut p.docs, a.docs);
    set(&mut p.rounds, a.rounds);
    let outcomes = on_each_target(&kinds, &opts, async |t, k| {
        reconnect::run(t, &p, &format!("reconnect-storm {}", k.name())).await
    })
    .await?;
    let mut r = report::Rows::new(&outcomes);
    r.add("resync p50 ms", true, 1, |o| Some(o.resync.p50_ms))
        .add("resync p99 ms", true, 1, |o| Some(o.resync.p99_ms))
        .add("all resynced (worst round) ms", true, 0, |o| {
            Some(o.all_resynced_ms.iter().copied().fold(0.0, f64::max))
        })
        .add("failed reconnects", true, 0, |o| Some(o.failed as f64))
        .add("server CPU %", true, 0, |o| Some(o.server.cpu_pct))
        .add("server RSS max MB", true, 1, |o| Some(o.server.rss_max_mb));
    publish(
        "reconnect-storm",
        &format!(
            "reconnect-storm: {} clients over {} documents, {} storms",
            p.clients, p.docs, p.rounds
        ),
        &kinds,
        &opts,
        &r.done(),
        "",
        serde_json::to_value(&outcomes)?,
        &a.common.out,
        None,
    )
}

async fn run_cold(a: ColdArgs, compare: bool) -> anyhow::Result<()> {
    let cfg = load_config(&a.common)?;
    let opts = target_opts(&a.common, &cfg);
    let kinds = targets(&a.common, compare)?;
    let mut p = cfg.cold_load.clone().unwrap_or_default();
    set(&mut p.ops, a.ops);
    set(&mut p.batch, a.batch);
    set(&mut p.loads, a.loads);
    let outcomes = on_each_target(&kinds, &opts, async |t, k| {
        cold_load::run(t, &opts, &p, &format!("cold-load {}", k.name())).await
    })
    .await?;
    let mut r = report::Rows::new(&outcomes);
    r.add("warm load p50 ms", true, 1, |o| Some(o.warm.p50_ms))
        .add("warm load max ms", true, 1, |o| Some(o.warm.max_ms))
        .add("cold load (after restart) p50 ms", true, 1, |o| {
            o.cold.map(|c| c.p50_ms)
        })
        .add("cold load max ms", true, 1, |o| o.cold.map(|c| c.max_ms))
        .add("initial sync bytes", true, 0, |o| Some(o.sync_bytes as f64))
        .add("build (send the trace) s", true, 1, |o| Some(o.build_secs))
        .add("server RSS with the document MB", true, 1, |o| {
            Some(o.server_rss_mb)
        });
    publish(
        "cold-load",
        &format!("cold-load: {} operations (B4 size class)", p.ops),
        &kinds,
        &opts,
        &r.done(),
        "\nA target without persistence has no cold load: its document is gone after a restart (–).\n",
        serde_json::to_value(&outcomes)?,
        &a.common.out,
        None,
    )
}

async fn run_chat(a: ChatArgs, compare: bool) -> anyhow::Result<()> {
    let cfg = load_config(&a.common)?;
    let opts = target_opts(&a.common, &cfg);
    let kinds = chat_targets(&a.common, compare)?;
    let mut p = cfg.chat_fanout.clone().unwrap_or_default();
    set(&mut p.members, a.members);
    set(&mut p.messages, a.messages);
    set(&mut p.rate, a.rate);
    set(&mut p.grace, a.grace);
    let outcomes = on_each_target(&kinds, &opts, async |t, k| {
        chat_fanout::run(t, &p, &format!("chat-fanout {}", k.name())).await
    })
    .await?;
    let mut r = report::Rows::new(&outcomes);
    r.add("delivery p50 ms", true, 1, |o| Some(o.delivery.p50_ms))
        .add("delivery p95 ms", true, 1, |o| Some(o.delivery.p95_ms))
        .add("delivery p99 ms", true, 1, |o| Some(o.delivery.p99_ms))
        .add("delivery max ms", true, 1, |o| Some(o.delivery.max_ms))
        .add("all members have it p50 ms", true, 1, |o| {
            Some(o.all_members.p50_ms)
        })
        .add("all members have it p99 ms", true, 1, |o| {
            Some(o.all_members.p99_ms)
        })
        .add("sender ack p50 ms", true, 1, |o| Some(o.ack.p50_ms))
        .add("sender ack p99 ms", true, 1, |o| Some(o.ack.p99_ms))
        .add("deliveries", false, 0, |o| Some(o.deliveries as f64))
        .add("missing deliveries", true, 0, |o| Some(o.missing as f64))
        .add("duplicate deliveries", true, 0, |o| {
            Some(o.duplicates as f64)
        })
        .add("member join p99 ms", true, 1, |o| Some(o.join.p99_ms))
        .add("server CPU %", true, 0, |o| Some(o.server.cpu_pct))
        .add("server RSS max MB", true, 1, |o| Some(o.server.rss_max_mb));
    publish(
        "chat-fanout",
        &format!(
            "chat-fanout: one room of {} members, {} messages at {}/s from one sender",
            p.members, p.messages, p.rate
        ),
        &kinds,
        &opts,
        &r.done(),
        "\nLatency is measured from each message's intended send time (open loop) to the moment a member's socket delivered the committed `event` frame. The Socket.IO peer relays without storing anything; Tandem commits every message to its store before delivering it. Hocuspocus and y-websocket-server have no chat.\n",
        serde_json::to_value(&outcomes)?,
        &a.common.out,
        None,
    )
}

async fn run_churn(a: ChurnArgs, compare: bool) -> anyhow::Result<()> {
    let cfg = load_config(&a.common)?;
    let mut opts = target_opts(&a.common, &cfg);
    // Distinct users need tokens: Tandem runs with the harness's own HS256 secret.
    opts.tandem_args.extend([
        "--jwt-hs256-secret".to_string(),
        presence_churn::BENCH_JWT_SECRET.to_string(),
    ]);
    let kinds = chat_targets(&a.common, compare)?;
    let mut p = cfg.presence_churn.clone().unwrap_or_default();
    set(&mut p.members, a.members);
    set(&mut p.typists, a.typists);
    set(&mut p.rate, a.rate);
    set(&mut p.duration, a.duration);
    let outcomes = on_each_target(&kinds, &opts, async |t, k| {
        presence_churn::run(t, &p, &format!("presence-churn {}", k.name())).await
    })
    .await?;
    let mut r = report::Rows::new(&outcomes);
    r.add("frames per member per s", true, 1, |o| {
        Some(o.frames_per_member_per_sec)
    })
    .add("relaying every change would be", false, 0, |o| {
        Some(o.relay_frames_per_member_per_sec)
    })
    .add("KB per member per s", true, 1, |o| {
        Some(o.bytes_per_member_per_sec / 1000.0)
    })
    .add("server frames per s", true, 0, |o| {
        Some(o.server_frames_per_sec)
    })
    .add("changes sent per s", false, 0, |o| Some(o.changes_per_sec))
    .add("server CPU %", true, 0, |o| Some(o.server.cpu_pct))
    .add("server RSS max MB", true, 1, |o| Some(o.server.rss_max_mb));
    publish(
        "presence-churn",
        &format!(
            "presence-churn: one room of {} members, {} typists × {} typing toggles and {} cursor moves per second",
            p.members, p.typists, p.rate, p.rate
        ),
        &kinds,
        &opts,
        &r.done(),
        "\nTandem gathers presence and typing changes per room and sends each member at most one `presence` and one `typing` frame per `--presence-flush-ms` (100 ms); the Socket.IO peer relays every change to the rest of the room, as typical Socket.IO chat code does.\n",
        serde_json::to_value(&outcomes)?,
        &a.common.out,
        None,
    )
}

async fn run_scenario(s: Scenario, compare: bool) -> anyhow::Result<()> {
    match s {
        Scenario::DocFanout(a) => run_fanout(a, compare).await,
        Scenario::IdleConnections(a) => run_idle(a, compare).await,
        Scenario::ReconnectStorm(a) => run_storm(a, compare).await,
        Scenario::ColdLoad(a) => run_cold(a, compare).await,
        Scenario::ChatFanout(a) => run_chat(a, compare).await,
        Scenario::PresenceChurn(a) => run_churn(a, compare).await,
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
