//! Helpers shared by the store's integration tests (each test file uses a subset).
#![allow(dead_code)]

use std::sync::Arc;

use proto::event::{Bytes, DocumentUpdatedV1};
use proto::{DocId, Epoch, EventPayload, NewEvent, Seq, ShardId, StreamId, UserId};
use store::postgres::PgLog;
use store::{AppendRequest, EventLog};

/// A document stream.
pub fn stream(name: &str) -> StreamId {
    StreamId::Doc(DocId::parse(name).expect("valid id"))
}

/// A unique suffix so runs against the long-lived PostgreSQL database never collide.
pub fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A one-byte `document.updated` event by `ada`.
pub fn ev(byte: u8) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7(),
        actor: UserId::parse("ada").expect("valid"),
        ts: i64::from(byte),
        trace: None,
        payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
            update: Bytes(vec![byte]),
        }),
    }
}

/// An append request of `events` starting at `first`.
pub fn req(s: &StreamId, epoch: Epoch, first: u64, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream: s.clone(),
        epoch,
        first_seq: Seq(first),
        events,
    }
}

/// The PostgreSQL service the test suite runs against (`scripts/test` makes sure it is up).
pub fn database_url() -> String {
    std::env::var("TANDEM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// A connected PostgreSQL log; a missing service fails the test loudly.
pub async fn pg() -> Arc<PgLog> {
    Arc::new(PgLog::connect(&database_url()).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is required for this test ({}): {e}. Start it or set TANDEM_TEST_DATABASE_URL.",
            database_url()
        )
    }))
}

/// 16 writers append 50 single-event requests each, concurrently, each on its own stream; every append
/// must be acknowledged. Returns the streams.
pub async fn write_concurrently(log: Arc<dyn EventLog>, prefix: &str) -> Vec<StreamId> {
    let shard = ShardId::parse("s1").expect("valid");
    let mut tasks = Vec::new();
    for w in 0..16 {
        let log = log.clone();
        let s = stream(&format!("{prefix}-{w}"));
        let epoch = log.acquire(&s, &shard).await.expect("acquire");
        tasks.push(tokio::spawn(async move {
            for i in 1..=50u64 {
                let r = log.append(vec![req(&s, epoch, i, vec![ev(i as u8)])]).await;
                assert_eq!(r, vec![Ok(())]);
            }
            s
        }));
    }
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await.expect("writer task"));
    }
    streams
}

/// Every stream holds exactly seqs 1..=50.
pub async fn assert_all_acked_once(log: &dyn EventLog, streams: &[StreamId]) {
    for s in streams {
        let evs = log.read(s, Seq(0), 1000).await.expect("read");
        assert_eq!(
            evs.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>(),
            "{s}"
        );
    }
}
