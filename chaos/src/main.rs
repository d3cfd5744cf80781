//! `chaos run --scenario NAME|all --duration SECS --seed N`.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use chaos::scenario::{self, RunConfig, Scenario};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Fault injection against a real Tandem cluster, with offline invariant checks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one scenario (or `all`, one after the other).
    Run(RunOpts),
}

#[derive(clap::Args)]
struct RunOpts {
    /// shard-kill | shard-pause | gateway-kill | redis-restart | postgres-restart | drain | all
    #[arg(long)]
    scenario: String,
    /// Seconds of workload and faults per scenario.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// A long soak: 600 seconds per scenario (overrides --duration).
    #[arg(long)]
    soak: bool,
    /// Seed for every random choice (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Documents in the workload.
    #[arg(long, default_value_t = 6)]
    docs: usize,
    /// Writers per document.
    #[arg(long, default_value_t = 3)]
    writers: usize,
    /// Chat rooms.
    #[arg(long, default_value_t = 3)]
    rooms: usize,
    /// Chat clients per room.
    #[arg(long, default_value_t = 2)]
    chatters: usize,
    /// Milliseconds between one client's edits or messages.
    #[arg(long, default_value_t = 150)]
    interval_ms: u64,
    /// Shard processes.
    #[arg(long, default_value_t = 3)]
    shards: usize,
    /// Gateway processes.
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    /// Shard lease (ms).
    #[arg(long, default_value_t = 1500)]
    lease_ms: u64,
    /// The tandem binary (default: next to this one, built if missing).
    #[arg(long)]
    tandem: Option<PathBuf>,
    /// Folder for process logs.
    #[arg(long, default_value = "target/chaos-logs")]
    logs: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let Cmd::Run(o) = Cli::parse().cmd;
    let scenarios: Vec<Scenario> = if o.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        match Scenario::parse(&o.scenario) {
            Some(s) => vec![s],
            None => bail!("unknown scenario {:?}", o.scenario),
        }
    };
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let tandem = chaos::cluster::tandem_binary(o.tandem.clone())?;
    let duration = Duration::from_secs(if o.soak { 600 } else { o.duration });
    println!("seed={seed}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut failed = false;
    for (i, s) in scenarios.into_iter().enumerate() {
        let cfg = RunConfig {
            scenario: s,
            duration,
            seed: seed.wrapping_add(i as u64),
            docs: o.docs,
            writers: o.writers,
            rooms: o.rooms,
            chatters: o.chatters,
            interval_ms: o.interval_ms,
            shards: o.shards,
            gateways: o.gateways,
            lease_ms: o.lease_ms,
            tandem: tandem.clone(),
            logs: o.logs.clone(),
        };
        println!(
            "scenario={} seed={} duration={}s shards={} gateways={}",
            s.name(),
            cfg.seed,
            duration.as_secs(),
            o.shards,
            o.gateways
        );
        match rt.block_on(scenario::run(&cfg)) {
            Ok(out) => {
                for d in &out.verdict.details {
                    println!("  violation: {d}");
                }
                println!("{} {}", s.name(), out.summary());
                failed |= !out.ok();
            }
            Err(e) => {
                println!("{}: the run failed: {e:#}", s.name());
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
