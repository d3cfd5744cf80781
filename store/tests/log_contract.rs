//! The event-log contract, checked against every embedded backend.

use std::sync::Arc;

use proto::{Epoch, Seq, ShardId};
use store::memory::MemoryLog;
use store::sqlite::SqliteLog;
use store::{EventLog, Snapshot, StoreError};

mod common;
use common::*;

async fn contract(log: Arc<dyn EventLog>) {
    let shard = ShardId::parse("s1").expect("valid");
    // Unique names, so the contract also runs against a long-lived PostgreSQL database.
    let run = unique();
    let a = stream(&format!("a-{run}"));
    let b = stream(&format!("b-{run}"));
    let ea = log.acquire(&a, &shard).await.expect("acquire a");
    let eb = log.acquire(&b, &shard).await.expect("acquire b");
    assert_eq!(ea, Epoch(1));

    // Group of two streams in one call, both succeed.
    let r = log
        .append(vec![
            req(&a, ea, 1, vec![ev(1), ev(2)]),
            req(&b, eb, 1, vec![ev(9)]),
        ])
        .await;
    assert_eq!(r, vec![Ok(()), Ok(())]);

    // A gap is refused, and does not affect its neighbour in the batch.
    let r = log
        .append(vec![
            req(&a, ea, 5, vec![ev(3)]),
            req(&b, eb, 2, vec![ev(10)]),
        ])
        .await;
    assert_eq!(
        r[0],
        Err(StoreError::SeqConflict {
            expected: Seq(3),
            got: Seq(5)
        })
    );
    assert_eq!(r[1], Ok(()));

    // Duplicate ids are refused and write nothing.
    let dup = ev(4);
    assert_eq!(
        log.append(vec![req(&a, ea, 3, vec![dup.clone()])]).await,
        vec![Ok(())]
    );
    let r = log.append(vec![req(&a, ea, 4, vec![ev(5), dup])]).await;
    assert_eq!(r, vec![Err(StoreError::Duplicate)]);

    // Several requests of one stream in one call keep their own results, however the store groups
    // them: a retried (committed) request followed by a new one is a no-op, then a commit.
    let c = stream(&format!("c-{run}"));
    let ec = log.acquire(&c, &shard).await.expect("acquire c");
    let first = req(&c, ec, 1, vec![ev(20)]);
    assert_eq!(log.append(vec![first.clone()]).await, vec![Ok(())]);
    let r = log
        .append(vec![first.clone(), req(&c, ec, 2, vec![ev(21)])])
        .await;
    assert_eq!(r, vec![Ok(()), Ok(())]);
    // A valid request followed by one reusing its id: the first commits, the second is refused.
    let x = ev(22);
    let r = log
        .append(vec![
            req(&c, ec, 3, vec![x.clone()]),
            req(&c, ec, 4, vec![x]),
        ])
        .await;
    assert_eq!(r, vec![Ok(()), Err(StoreError::Duplicate)]);
    let got = log.read(&c, Seq(0), 100).await.expect("read c");
    assert_eq!(
        got.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    // Fencing: after a takeover, the old epoch cannot append or snapshot.
    let ea2 = log.acquire(&a, &shard).await.expect("re-acquire");
    assert_eq!(ea2, Epoch(2));
    let r = log.append(vec![req(&a, ea, 4, vec![ev(6)])]).await;
    assert!(matches!(r[0], Err(StoreError::StaleEpoch { .. })), "{r:?}");
    let snap = Snapshot {
        seq: Seq(3),
        state: vec![7, 7],
    };
    assert!(
        matches!(
            log.write_snapshot(&a, ea, snap.clone()).await,
            Err(StoreError::StaleEpoch { .. })
        ),
        "a stale epoch cannot snapshot"
    );

    // Load = snapshot + tail.
    let loaded = log.load(&a).await.expect("load");
    assert!(loaded.snapshot.is_none());
    assert_eq!(
        loaded.tail.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(loaded.tail[2].actor.as_str(), "ada");
    log.write_snapshot(
        &a,
        ea2,
        Snapshot {
            seq: Seq(2),
            state: vec![1],
        },
    )
    .await
    .expect("snapshot");
    let loaded = log.load(&a).await.expect("load");
    assert_eq!(loaded.snapshot.as_ref().map(|s| s.seq), Some(Seq(2)));
    assert_eq!(
        loaded.tail.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(loaded.last_seq(), Seq(3));
    let r = log.append(vec![req(&a, ea2, 4, vec![ev(8)])]).await;
    assert_eq!(r, vec![Ok(())]);
    let page = log.read(&a, Seq(1), 2).await.expect("read");
    assert_eq!(page.iter().map(|e| e.seq.0).collect::<Vec<_>>(), vec![2, 3]);

    // Retention: nothing beyond the latest snapshot (seq 2) is pruned; under it, events go; load is
    // unchanged; a stale epoch cannot prune.
    assert_eq!(
        log.prune(&a, ea2, Seq(3)).await,
        Ok(0),
        "seq 3 is not covered by a snapshot"
    );
    assert!(
        matches!(
            log.prune(&a, ea, Seq(2)).await,
            Err(StoreError::StaleEpoch { .. })
        ),
        "a stale epoch cannot prune"
    );
    assert_eq!(log.prune(&a, ea2, Seq(2)).await, Ok(2));
    let left = log.read(&a, Seq(0), 100).await.expect("read");
    assert_eq!(left.iter().map(|e| e.seq.0).collect::<Vec<_>>(), vec![3, 4]);
    let loaded = log.load(&a).await.expect("load");
    assert_eq!(loaded.snapshot.as_ref().map(|s| s.seq), Some(Seq(2)));
    assert_eq!(
        loaded.tail.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![3, 4]
    );
    // Appends continue gap-free after pruning.
    assert_eq!(
        log.append(vec![req(&a, ea2, 5, vec![ev(9)])]).await,
        vec![Ok(())]
    );
}

#[tokio::test]
async fn memory_log_keeps_the_contract() {
    contract(Arc::new(MemoryLog::new())).await;
}

#[tokio::test]
async fn sqlite_log_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SqliteLog::open(&dir.path().join("t.db"))
        .await
        .expect("open");
    contract(Arc::new(log)).await;
}

#[tokio::test]
async fn sqlite_group_commit_keeps_every_acked_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let log = Arc::new(SqliteLog::open(&path).await.expect("open"));
    let streams = write_concurrently(log.clone(), "w").await;
    log.close().await;
    // Reopen: everything acknowledged is on disk, exactly once, gap-free.
    let log = SqliteLog::open(&path).await.expect("reopen");
    assert_all_acked_once(&log, &streams).await;
}

#[tokio::test]
async fn postgres_log_keeps_the_contract() {
    contract(pg().await).await;
}

#[tokio::test]
async fn postgres_group_commit_keeps_every_acked_event_once() {
    let log = pg().await;
    let streams = write_concurrently(log.clone(), &format!("gc-{}", unique())).await;
    assert_all_acked_once(log.as_ref(), &streams).await;
}

#[tokio::test]
async fn postgres_fencing_refuses_a_stale_writer_racing_a_takeover() {
    let log = pg().await;
    let s = stream(&format!("fence-{}", uuid::Uuid::now_v7().simple()));
    let old = log
        .acquire(&s, &ShardId::parse("old").expect("valid"))
        .await
        .expect("acquire");
    let writer = {
        let log = log.clone();
        let s = s.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 1..=200u64 {
                match log
                    .append(vec![req(&s, old, i, vec![ev(1)])])
                    .await
                    .remove(0)
                {
                    Ok(()) => acked.push(i),
                    Err(e) => {
                        assert!(e.is_fenced(), "{e}");
                        break;
                    }
                }
            }
            acked
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let new = log
        .acquire(&s, &ShardId::parse("new").expect("valid"))
        .await
        .expect("takeover");
    assert!(new > old);
    let acked = writer.await.expect("writer");
    let stored = log.read(&s, Seq(0), 1000).await.expect("read");
    assert_eq!(
        stored.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        acked,
        "exactly the acked events"
    );
    assert!(stored.iter().all(|e| e.epoch == old));
    // The new owner continues right after the last acked seq.
    let next = acked.len() as u64 + 1;
    assert_eq!(
        log.append(vec![req(&s, new, next, vec![ev(2)])]).await,
        vec![Ok(())]
    );
    let r = log.append(vec![req(&s, old, next + 1, vec![ev(3)])]).await;
    assert!(matches!(r[0], Err(StoreError::StaleEpoch { .. })));
}
