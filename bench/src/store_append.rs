//! `bench store-append`: sustained durable appends to the PostgreSQL event log, append→ack latency,
//! group commit on vs off in one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::event::{Bytes, DocumentUpdatedV1};
use proto::{DocId, EventPayload, NewEvent, Seq, ShardId, StreamId, UserId};
use store::postgres::PgLog;
use store::{AppendRequest, EventLog};

struct RunResult {
    events: u64,
    secs: f64,
    lat_us: Vec<u64>,
}

async fn run_once(
    url: &str,
    group: bool,
    writers: usize,
    dur: Duration,
    payload: usize,
) -> anyhow::Result<RunResult> {
    let log = Arc::new(
        PgLog::connect_with(url, group)
            .await
            .context("connecting to PostgreSQL")?,
    );
    let shard = ShardId::parse("bench").expect("valid id");
    let run = uuid::Uuid::now_v7().simple().to_string();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let stream = StreamId::Doc(DocId::parse(&format!("bench-{run}-{w}")).expect("valid id"));
        let epoch = log.acquire(&stream, &shard).await?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut seq = 1u64;
            while start.elapsed() < dur {
                let e = NewEvent {
                    id: uuid::Uuid::now_v7(),
                    actor: UserId::parse("bench").expect("valid id"),
                    ts: 0,
                    trace: None,
                    payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
                        update: Bytes(vec![7; payload]),
                    }),
                };
                let t = Instant::now();
                let r = log
                    .append(vec![AppendRequest {
                        stream: stream.clone(),
                        epoch,
                        first_seq: Seq(seq),
                        events: vec![e],
                    }])
                    .await;
                if r.first().is_some_and(|r| r.is_ok()) {
                    lat.push(t.elapsed().as_micros() as u64);
                    seq += 1;
                }
            }
            lat
        }));
    }
    let mut lat_us = Vec::new();
    for t in tasks {
        lat_us.extend(t.await?);
    }
    let secs = start.elapsed().as_secs_f64();
    log.close().await;
    lat_us.sort_unstable();
    Ok(RunResult {
        events: lat_us.len() as u64,
        secs,
        lat_us,
    })
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)] as f64 / 1000.0
}

/// Runs the store benchmark and prints a Markdown table.
pub async fn run(
    database_url: &str,
    writers: usize,
    duration: u64,
    payload: usize,
    group_commit: &str,
) -> anyhow::Result<()> {
    let modes: Vec<bool> = match group_commit {
        "on" => vec![true],
        "off" => vec![false],
        _ => vec![false, true],
    };
    println!("store-append: {writers} writers, {duration} s each, {payload}-byte events, PostgreSQL synchronous_commit=on");
    println!("| group commit | events | events/s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for group in modes {
        let r = run_once(
            database_url,
            group,
            writers,
            Duration::from_secs(duration),
            payload,
        )
        .await?;
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            if group { "on" } else { "off" },
            r.events,
            r.events as f64 / r.secs,
            pct(&r.lat_us, 0.50),
            pct(&r.lat_us, 0.99),
            pct(&r.lat_us, 1.0)
        );
    }
    Ok(())
}
