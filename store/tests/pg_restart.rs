//! PostgreSQL restarted mid-run: appends fail closed (never acknowledged while the record is down) and
//! resume afterwards, with every acknowledged event present exactly once and no gap.
//!
//! Restarts the real local PostgreSQL cluster with `pg_ctlcluster` (the test suite runs as root on the
//! development and CI machines). Its own test binary, so no other test shares the outage.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::event::{Bytes, DocumentUpdatedV1};
use proto::{DocId, EventPayload, NewEvent, Seq, ShardId, StreamId, UserId};
use store::postgres::PgLog;
use store::{AppendRequest, EventLog};

fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL cluster config in /etc/postgresql (install postgresql)")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL version folder");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "restarting PostgreSQL failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_fails_closed_and_resumes() {
    let url = std::env::var("TANDEM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    let log = Arc::new(
        PgLog::connect(&url)
            .await
            .expect("PostgreSQL is required for this test"),
    );
    let stream = StreamId::Doc(
        DocId::parse(&format!("restart-{}", uuid::Uuid::now_v7().simple())).expect("valid"),
    );
    let epoch = log
        .acquire(&stream, &ShardId::parse("s").expect("valid"))
        .await
        .expect("acquire");

    let writer = {
        let log = log.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            let mut acked: Vec<(u64, uuid::Uuid)> = Vec::new();
            let mut failures = 0u32;
            let mut acked_after_outage = 0u32;
            let mut next = 1u64;
            let deadline = Instant::now() + Duration::from_secs(12);
            // A request is retried unchanged until it is acknowledged (same id: a retry of a commit whose
            // ack was lost is a no-op, not a duplicate).
            let mut pending: Option<NewEvent> = None;
            while Instant::now() < deadline {
                let e = pending.take().unwrap_or_else(|| NewEvent {
                    id: uuid::Uuid::now_v7(),
                    actor: UserId::parse("ada").expect("valid"),
                    ts: next as i64,
                    trace: None,
                    payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
                        update: Bytes(vec![1]),
                    }),
                });
                let r = log
                    .append(vec![AppendRequest {
                        stream: stream.clone(),
                        epoch,
                        first_seq: Seq(next),
                        events: vec![e.clone()],
                    }])
                    .await
                    .remove(0);
                match r {
                    Ok(()) => {
                        acked.push((next, e.id));
                        next += 1;
                        if failures > 0 {
                            acked_after_outage += 1;
                        }
                    }
                    Err(err) => {
                        assert!(
                            err.is_retryable(),
                            "unexpected error during the outage: {err}"
                        );
                        failures += 1;
                        pending = Some(e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, failures, acked_after_outage)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    restart_postgres();
    let (acked, failures, after) = writer.await.expect("writer");
    assert!(failures > 0, "the outage was observed as failed appends");
    assert!(
        after > 10,
        "appends resumed after the restart ({after} acked after it)"
    );
    // Every acknowledged event is in the record exactly once, gap-free, with its id.
    let stored = log
        .read(&stream, Seq(0), 100_000)
        .await
        .expect("read after restart");
    let stored: Vec<(u64, uuid::Uuid)> = stored.iter().map(|e| (e.seq.0, e.id)).collect();
    assert_eq!(stored, acked);
}
