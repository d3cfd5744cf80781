//! A short run of every chaos scenario: real shard and gateway processes, private PostgreSQL and
//! Redis, faults injected, invariants checked offline. (Long soaks: `cargo run -p chaos --release --
//! run --scenario all --soak`.)

use std::sync::Mutex;
use std::time::Duration;

use chaos::scenario::{run, RunConfig, Scenario};

/// One cluster at a time: the machine has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn short(scenario: Scenario, seed: u64) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tandem = chaos::cluster::tandem_binary(None).expect("tandem binary");
    let cfg = RunConfig {
        scenario,
        duration: Duration::from_secs(12),
        seed,
        docs: 4,
        writers: 2,
        rooms: 2,
        chatters: 2,
        interval_ms: 150,
        shards: 3,
        gateways: 2,
        lease_ms: 1500,
        tandem,
        logs: std::env::temp_dir().join(format!("tandem-chaos-test-{}", std::process::id())),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(run(&cfg)).expect("the run completes");
    eprintln!("{} seed={seed} {}", scenario.name(), out.summary());
    for d in &out.verdict.details {
        eprintln!("  violation: {d}");
    }
    assert!(out.faults > 0, "no fault was injected");
    assert!(
        out.verdict.acked > 100,
        "too little was acknowledged to mean anything"
    );
    assert!(out.verdict.acked_messages > 10, "no chat got through");
    assert!(
        !out.recovery_ms.is_empty(),
        "nothing was acknowledged after a fault"
    );
    if scenario == Scenario::ShardPause {
        assert!(
            out.fenced_appends > 0,
            "the woken zombie never tried to write (the fence was not exercised)"
        );
    }
    if scenario == Scenario::Drain {
        assert!(out.planned_moves > 0, "the plan moved nothing");
    }
    if scenario == Scenario::CallOwnerKill {
        assert!(
            out.call_joins > 3,
            "the participants never rejoined the call"
        );
        assert!(
            !out.media_gaps_ms.is_empty(),
            "no media gap: the kill did not interrupt the call"
        );
    }
    assert!(out.ok(), "{}", out.summary());
}

#[test]
fn shard_kill() {
    short(Scenario::ShardKill, 11);
}

#[test]
fn shard_pause_past_the_lease() {
    short(Scenario::ShardPause, 12);
}

#[test]
fn gateway_kill() {
    short(Scenario::GatewayKill, 13);
}

#[test]
fn redis_restart() {
    short(Scenario::RedisRestart, 14);
}

#[test]
fn postgres_restart() {
    short(Scenario::PostgresRestart, 15);
}

#[test]
fn drain_matches_the_ring_plan() {
    let _ = Scenario::Drain;
    short(Scenario::Drain, 16);
}

#[test]
fn call_owner_kill() {
    short(Scenario::CallOwnerKill, 17);
}
