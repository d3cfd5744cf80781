//! The event-log contract, checked against every embedded backend.

use std::sync::Arc;

use proto::event::{Bytes, DocumentUpdatedV1};
use proto::{DocId, Epoch, EventPayload, NewEvent, Seq, ShardId, StreamId, UserId};
use store::memory::MemoryLog;
use store::sqlite::SqliteLog;
use store::{AppendRequest, EventLog, Snapshot, StoreError};

fn stream(name: &str) -> StreamId {
    StreamId::Doc(DocId::parse(name).expect("valid id"))
}

fn ev(byte: u8) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7(),
        actor: UserId::parse("ada").expect("valid"),
        ts: 1,
        trace: None,
        payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
            update: Bytes(vec![byte]),
        }),
    }
}

fn req(s: &StreamId, epoch: Epoch, first: u64, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream: s.clone(),
        epoch,
        first_seq: Seq(first),
        events,
    }
}

async fn contract(log: Arc<dyn EventLog>) {
    let shard = ShardId::parse("s1").expect("valid");
    let a = stream("a");
    let b = stream("b");
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

    // Fencing: after a takeover, the old epoch cannot append or snapshot.
    let ea2 = log.acquire(&a, &shard).await.expect("re-acquire");
    assert_eq!(ea2, Epoch(2));
    let r = log.append(vec![req(&a, ea, 4, vec![ev(6)])]).await;
    assert!(matches!(r[0], Err(StoreError::StaleEpoch { .. })), "{r:?}");
    let snap = Snapshot {
        seq: Seq(3),
        state: vec![7, 7],
    };
    assert!(log.write_snapshot(&a, ea, snap.clone()).await.is_err());

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
    let shard = ShardId::parse("s1").expect("valid");
    let mut tasks = Vec::new();
    for w in 0..16 {
        let log = log.clone();
        let s = stream(&format!("w{w}"));
        let epoch = log.acquire(&s, &shard).await.expect("acquire");
        tasks.push(tokio::spawn(async move {
            for i in 1..=50u64 {
                let r = log.append(vec![req(&s, epoch, i, vec![ev(i as u8)])]).await;
                assert_eq!(r, vec![Ok(())]);
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    log.close().await;
    // Reopen: everything acknowledged is on disk, exactly once, gap-free.
    let log = SqliteLog::open(&path).await.expect("reopen");
    for w in 0..16 {
        let evs = log
            .read(&stream(&format!("w{w}")), Seq(0), 1000)
            .await
            .expect("read");
        assert_eq!(
            evs.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>()
        );
    }
}
