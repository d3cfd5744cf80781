//! The Redis Streams bus against the real PostgreSQL and Redis: publish after commit, and a Redis flush
//! mid-run loses nothing acknowledged and is refilled from the record under a new bus epoch.

use std::sync::Arc;
use std::time::Duration;

use proto::{Seq, ShardId, StreamId};
use store::bus::{stream_key, BusConfig, BusLog, EPOCH_KEY, FEED_KEY};
use store::postgres::PgLog;
use store::{AppendRequest, EventLog};

mod common;
use common::*;

/// A Redis database of its own (index 9), so flushing it does not disturb anything else.
fn redis_url() -> String {
    std::env::var("TANDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/9".to_owned())
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis is required for this test ({}): {e}", redis_url()))
}

/// An XRANGE entry: its id and field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

async fn stream_seqs(con: &mut redis::aio::MultiplexedConnection, stream: &StreamId) -> Vec<u64> {
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(stream_key(stream))
        .arg("-")
        .arg("+")
        .query_async(con)
        .await
        .expect("xrange");
    entries
        .iter()
        .filter_map(|(id, _)| id.split('-').next().and_then(|n| n.parse().ok()))
        .collect()
}

async fn wait_for_seqs(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &StreamId,
    want: &[u64],
) {
    for _ in 0..200 {
        if stream_seqs(con, stream).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "bus stream {stream} has {:?}, expected {want:?}",
        stream_seqs(con, stream).await
    );
}

#[tokio::test]
async fn redis_flush_mid_run_loses_nothing_and_the_bus_refills() {
    let mut con = redis().await;
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut con)
        .await
        .expect("flushdb");
    let pg: Arc<dyn EventLog> = Arc::new(
        PgLog::connect(&database_url())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}")),
    );
    let log = BusLog::connect(pg.clone(), BusConfig::new(redis_url()))
        .await
        .expect("bus");
    let stream = stream(&format!("bus-{}", unique()));
    let epoch = log
        .acquire(&stream, &ShardId::parse("s").expect("valid"))
        .await
        .expect("acquire");
    let append = |i: u64| AppendRequest {
        stream: stream.clone(),
        epoch,
        first_seq: Seq(i),
        events: vec![ev(i as u8)],
    };

    for i in 1..=10 {
        assert_eq!(log.append(vec![append(i)]).await, vec![Ok(())]);
    }
    wait_for_seqs(&mut con, &stream, &(1..=10).collect::<Vec<_>>()).await;
    let first_epoch: Option<String> = redis::cmd("GET")
        .arg(EPOCH_KEY)
        .query_async(&mut con)
        .await
        .expect("get");
    assert!(first_epoch.is_some());
    let feed_len: usize = redis::cmd("XLEN")
        .arg(FEED_KEY)
        .query_async(&mut con)
        .await
        .expect("xlen");
    assert!(feed_len >= 10);

    // Redis loses everything; appends keep being acknowledged (Redis is not the ack gate).
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut con)
        .await
        .expect("flushdb");
    for i in 11..=20 {
        assert_eq!(log.append(vec![append(i)]).await, vec![Ok(())]);
    }
    // The record holds every acknowledged event exactly once.
    let stored = pg.read(&stream, Seq(0), 100).await.expect("read");
    assert_eq!(
        stored.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    // The bus notices the loss, starts a new epoch and refills the stream from the record.
    wait_for_seqs(&mut con, &stream, &(1..=20).collect::<Vec<_>>()).await;
    let second_epoch: Option<String> = redis::cmd("GET")
        .arg(EPOCH_KEY)
        .query_async(&mut con)
        .await
        .expect("get");
    assert!(
        second_epoch.is_some() && second_epoch != first_epoch,
        "a new bus epoch"
    );
}
