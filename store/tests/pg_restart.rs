//! PostgreSQL stopped and started mid-run: appends fail closed (never acknowledged while the record is
//! down) and resume afterwards, with every acknowledged event present exactly once and no gap.
//!
//! Stops and starts the real local PostgreSQL cluster with `pg_ctlcluster` (the test suite runs as root on
//! the development and CI machines). Its own test binary, so no other test shares the outage; a guard
//! starts PostgreSQL again even if an assertion fails.

use std::process::Command;
use std::time::{Duration, Instant};

use proto::{NewEvent, Seq, ShardId};
use store::postgres::PgLog;
use store::{AppendRequest, EventLog, StoreError};

mod common;
use common::*;

fn cluster(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL cluster config in /etc/postgresql (install postgresql)")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL version folder");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

/// Starts PostgreSQL again when dropped, whatever happened in between.
struct Restart;
impl Drop for Restart {
    fn drop(&mut self) {
        cluster("start");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_closed_and_resumes() {
    let url = std::env::var("TANDEM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    let log = PgLog::connect(&url)
        .await
        .expect("PostgreSQL is required for this test");
    let stream = stream(&format!("restart-{}", unique()));
    let epoch = log
        .acquire(&stream, &ShardId::parse("s").expect("valid"))
        .await
        .expect("acquire");
    let req = |seq: u64, e: &NewEvent| AppendRequest {
        stream: stream.clone(),
        epoch,
        first_seq: Seq(seq),
        events: vec![e.clone()],
    };
    let mut acked: Vec<(u64, uuid::Uuid)> = Vec::new();
    for i in 1..=20 {
        let e = ev(i as u8);
        assert_eq!(log.append(vec![req(i, &e)]).await, vec![Ok(())]);
        acked.push((i, e.id));
    }

    let guard = Restart;
    cluster("stop");
    // While the record is down nothing is acknowledged.
    let pending = ev(21);
    let r = log.append(vec![req(21, &pending)]).await.remove(0);
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "append during the outage: {r:?}"
    );
    drop(guard); // starts PostgreSQL

    // The same request, retried unchanged, goes through once the record is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match log.append(vec![req(21, &pending)]).await.remove(0) {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(Instant::now() < deadline, "appends did not resume: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    acked.push((21, pending.id));
    for i in 22..=40 {
        let e = ev(i as u8);
        assert_eq!(log.append(vec![req(i, &e)]).await, vec![Ok(())]);
        acked.push((i, e.id));
    }
    // Every acknowledged event is in the record exactly once, gap-free, with its id.
    let stored = log
        .read(&stream, Seq(0), 1000)
        .await
        .expect("read after restart");
    let stored: Vec<(u64, uuid::Uuid)> = stored.iter().map(|e| (e.seq.0, e.id)).collect();
    assert_eq!(stored, acked);
}
