//! `tandem webhooks` as a real process against the real Redis bus (fed by the real PostgreSQL record):
//! signed at-least-once delivery with retries, and a dead-letter stream for undeliverable events.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use proto::event::{Bytes, DocumentUpdatedV1};
use proto::{DocId, EventPayload, NewEvent, Seq, ShardId, StreamId, UserId};
use sha2::Sha256;
use store::bus::{BusConfig, BusLog};
use store::postgres::PgLog;
use store::{AppendRequest, EventLog};

const SECRET: &str = "webhook-test-secret";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    status: u16,
}

/// An HTTP endpoint that fails the first `fail_first` requests with 500, then answers 200.
fn receiver(fail_first: usize) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let log: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || loop {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut headers = HashMap::new();
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let status = {
                    let mut g = seen.lock().expect("lock");
                    let status = if g.len() < fail_first { 500 } else { 200 };
                    g.push(Received {
                        headers,
                        body,
                        status,
                    });
                    status
                };
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                if stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            });
        }
    });
    (port, log)
}

fn ev(i: u8) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7(),
        actor: UserId::parse("ada").expect("valid"),
        ts: 1,
        trace: None,
        payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
            update: Bytes(vec![i]),
        }),
    }
}

fn dispatcher(redis_url: &str, target: &str, group: &str, max_attempts: u32) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args([
                "webhooks",
                "--redis-url",
                redis_url,
                "--target",
                target,
                "--secret",
                SECRET,
            ])
            .args([
                "--retry-ms",
                "10",
                "--group",
                group,
                "--max-attempts",
                &max_attempts.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tandem webhooks"),
    )
}

fn verify_signature(r: &Received) -> bool {
    let (Some(ts), Some(sig)) = (
        r.headers.get("x-tandem-timestamp"),
        r.headers.get("x-tandem-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    *sig == format!("sha256={hex}")
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_dead_lettered() {
    let redis_url = "redis://127.0.0.1:6379/11";
    let mut con = redis::Client::open(redis_url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is required for this test");
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut con)
        .await
        .expect("flushdb");
    let db = std::env::var("TANDEM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into());
    let pg: Arc<dyn EventLog> = Arc::new(
        PgLog::connect(&db)
            .await
            .expect("PostgreSQL is required for this test"),
    );
    let log = BusLog::connect(pg, BusConfig::new(redis_url))
        .await
        .expect("bus");
    let stream = StreamId::Doc(
        DocId::parse(&format!("hook-{}", uuid::Uuid::now_v7().simple())).expect("valid"),
    );
    let epoch = log
        .acquire(&stream, &ShardId::parse("s").expect("valid"))
        .await
        .expect("acquire");
    let mut ids = HashSet::new();
    for i in 1..=3u8 {
        let e = ev(i);
        ids.insert(e.id.to_string());
        let r = log
            .append(vec![AppendRequest {
                stream: stream.clone(),
                epoch,
                first_seq: Seq(u64::from(i)),
                events: vec![e],
            }])
            .await;
        assert_eq!(r, vec![Ok(())]);
    }

    // Delivery with two failed attempts first: every event arrives, signed, at least once.
    let (port, received) = receiver(2);
    let _d = dispatcher(
        redis_url,
        &format!("http://127.0.0.1:{port}/hook"),
        "hooks",
        5,
    );
    let mut delivered = HashSet::new();
    for _ in 0..400 {
        delivered = received
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| r.headers.get("x-tandem-event-id").cloned())
            .collect();
        if delivered == ids {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(delivered, ids, "every event delivered");
    let all = received.lock().expect("lock").clone();
    assert!(
        all.len() >= 5,
        "two failures were retried: {} requests",
        all.len()
    );
    for r in &all {
        assert!(verify_signature(r), "bad signature");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(v["type"], "document.updated");
        assert_eq!(v["stream"], stream.to_string());
        assert_eq!(v["actor"], "ada");
    }

    // An endpoint that never answers: after the attempts, events go to the dead-letter stream.
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let _d2 = dispatcher(
        redis_url,
        &format!("http://127.0.0.1:{closed}/hook"),
        "dead",
        2,
    );
    let mut dead = 0usize;
    for _ in 0..400 {
        dead = redis::cmd("XLEN")
            .arg("tandem:webhooks:dead")
            .query_async(&mut con)
            .await
            .expect("xlen");
        if dead >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(dead, 3, "all three events dead-lettered");
}
