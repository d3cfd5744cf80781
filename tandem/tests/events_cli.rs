//! `tandem events …` against real logs (SQLite file and PostgreSQL): replay (time travel), verify, show.

use std::process::Command;
use std::sync::Arc;

use proto::event::{Bytes, DocumentUpdatedV1};
use proto::{DocId, EventPayload, NewEvent, Seq, ShardId, StreamId, UserId};
use store::postgres::PgLog;
use store::sqlite::SqliteLog;
use store::{AppendRequest, EventLog, Snapshot};
use yrs::{Doc, Map, ReadTxn, StateVector, Text, Transact};

/// Appends five edits (one per seq, timestamps 1000, 2000, … ms) and a snapshot at seq 3.
async fn seed(log: Arc<dyn EventLog>, doc: &str) {
    let stream = StreamId::Doc(DocId::parse(doc).expect("valid"));
    let epoch = log
        .acquire(&stream, &ShardId::parse("t").expect("valid"))
        .await
        .expect("acquire");
    let client = Doc::with_client_id(7);
    let text = client.get_or_insert_text("text");
    let map = client.get_or_insert_map("map");
    for i in 1..=5u64 {
        let before = client.transact().state_vector();
        {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, &format!("{i}"));
            map.insert(&mut txn, format!("k{i}"), i as f64);
        }
        let update = client.transact().encode_diff_v1(&before);
        let ev = NewEvent {
            id: uuid::Uuid::now_v7(),
            actor: UserId::parse("ada").expect("valid"),
            ts: 1000 * i as i64,
            trace: None,
            payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
                update: Bytes(update),
            }),
        };
        let r = log
            .append(vec![AppendRequest {
                stream: stream.clone(),
                epoch,
                first_seq: Seq(i),
                events: vec![ev],
            }])
            .await;
        assert_eq!(r, vec![Ok(())]);
        if i == 3 {
            let state = client
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            log.write_snapshot(&stream, epoch, Snapshot { seq: Seq(3), state })
                .await
                .expect("snapshot");
        }
    }
}

fn tandem(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn check_replay_and_verify(source: &[&str], doc: &str) {
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["events".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(source.iter().map(|s| s.to_string()));
        v.extend(["--doc".to_string(), doc.to_string()]);
        v
    };
    let run = |extra: &[&str]| {
        let args = with(extra);
        tandem(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (ok, out, err) = run(&["replay", "--until", "2"]);
    assert!(ok, "{err}");
    assert_eq!(
        json(&out),
        serde_json::json!({"text": "21", "map": {"k1": 1, "k2": 2}})
    );
    // By time: events at or before 3.5 s after the epoch are seqs 1..=3.
    let (ok, out, err) = run(&["replay", "--until", "1970-01-01T00:00:03.500Z"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["text"], "321");
    let (ok, out, _) = run(&["replay"]);
    assert!(ok);
    assert_eq!(json(&out)["text"], "54321");
    let (ok, out, err) = run(&["verify"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("snapshot at seq 3") && out.contains("equal"),
        "{out}"
    );
    let (ok, out, _) = run(&["show"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 6, "header + 5 events: {out}");
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.contains("document.updated") && l.contains("ada")),
        "{out}"
    );
}

#[tokio::test]
async fn events_tools_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        SqliteLog::open(&dir.path().join("tandem.db"))
            .await
            .expect("open"),
    );
    seed(log.clone(), "travel").await;
    log.close().await;
    let data = dir.path().to_str().expect("utf-8 path");
    check_replay_and_verify(&["--data", data], "travel");
}

#[tokio::test]
async fn events_tools_on_postgres() {
    let url = std::env::var("TANDEM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    let log = Arc::new(
        PgLog::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required for this test ({url}): {e}")),
    );
    let doc = format!("travel-{}", uuid::Uuid::now_v7().simple());
    seed(log.clone(), &doc).await;
    check_replay_and_verify(&["--database-url", &url], &doc);
}

#[tokio::test]
async fn verify_detects_a_snapshot_that_differs_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        SqliteLog::open(&dir.path().join("tandem.db"))
            .await
            .expect("open"),
    );
    seed(log.clone(), "bad").await;
    // A snapshot claiming seq 4 but holding other content.
    let other = Doc::with_client_id(9);
    other
        .get_or_insert_text("text")
        .insert(&mut other.transact_mut(), 0, "forged");
    let state = other
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let stream = StreamId::Doc(DocId::parse("bad").expect("valid"));
    let epoch = proto::Epoch(1);
    log.write_snapshot(&stream, epoch, Snapshot { seq: Seq(4), state })
        .await
        .expect("snapshot");
    log.close().await;
    let (ok, out, err) = tandem(&[
        "events",
        "verify",
        "--data",
        dir.path().to_str().expect("utf-8"),
        "--doc",
        "bad",
    ]);
    assert!(!ok, "{out}");
    assert!(err.contains("verification failed"), "{err}");
}

#[tokio::test]
async fn replay_after_retention_starts_from_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        SqliteLog::open(&dir.path().join("tandem.db"))
            .await
            .expect("open"),
    );
    seed(log.clone(), "pruned").await;
    let stream = StreamId::Doc(DocId::parse("pruned").expect("valid"));
    assert_eq!(log.prune(&stream, proto::Epoch(1), Seq(3)).await, Ok(3));
    log.close().await;
    let data = dir.path().to_str().expect("utf-8");
    let run = |extra: &[&str]| {
        let mut args = vec!["events"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--data", data, "--doc", "pruned"]);
        tandem(&args)
    };
    let (ok, _, err) = run(&["replay", "--until", "2"]);
    assert!(!ok);
    assert!(err.contains("pruned") && err.contains("seq 3"), "{err}");
    let (ok, out, err) = run(&["replay", "--until", "4"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["text"], "4321");
    let (ok, out, _) = run(&["replay"]);
    assert!(ok);
    assert_eq!(json(&out)["text"], "54321");
    let (ok, _, err) = run(&["verify"]);
    assert!(!ok);
    assert!(err.contains("pruned"), "{err}");
}

// Multi-threaded: the test blocks on the child's output while the bus publisher runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_history_then_follows_the_bus() {
    use std::io::BufRead;
    let url = std::env::var("TANDEM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    let redis_url = "redis://127.0.0.1:6379/12";
    let pg: Arc<dyn EventLog> =
        Arc::new(PgLog::connect(&url).await.expect("PostgreSQL is required"));
    let bus = Arc::new(
        store::bus::BusLog::connect(pg, store::bus::BusConfig::new(redis_url))
            .await
            .expect("Redis is required"),
    );
    let doc = format!("tail-{}", uuid::Uuid::now_v7().simple());
    seed(bus.clone(), &doc).await; // seqs 1..=5 before tail starts
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "events",
            "tail",
            "--database-url",
            &url,
            "--redis-url",
            redis_url,
            "--doc",
            &doc,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn tail");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // History first.
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("history line");
        seqs.push(
            line.split_whitespace()
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .expect("seq"),
        );
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    // Then new events arrive live through the bus.
    let stream = StreamId::Doc(DocId::parse(&doc).expect("valid"));
    let epoch = proto::Epoch(1);
    for i in 6..=7u64 {
        let e = NewEvent {
            id: uuid::Uuid::now_v7(),
            actor: UserId::parse("ada").expect("valid"),
            ts: 0,
            trace: None,
            payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
                update: Bytes(vec![0, 0]),
            }),
        };
        let r = bus
            .append(vec![AppendRequest {
                stream: stream.clone(),
                epoch,
                first_seq: Seq(i),
                events: vec![e],
            }])
            .await;
        assert_eq!(r, vec![Ok(())]);
    }
    let mut live = Vec::new();
    while live.len() < 2 {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("live line");
        live.push(
            line.split_whitespace()
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .expect("seq"),
        );
    }
    assert_eq!(live, vec![6, 7]);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn room_show_and_replay_print_the_chat_as_it_was() {
    use proto::event::{
        CallParticipantV1, CallV1, ChatMessageDeletedV1, ChatMessageEditedV1, ChatMessageSentV1,
        ScreenShareV1, UserPresenceV1,
    };
    use proto::RoomId;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        SqliteLog::open(&dir.path().join("tandem.db"))
            .await
            .expect("open"),
    );
    let stream = StreamId::Room(RoomId::parse("team").expect("valid"));
    let epoch = log
        .acquire(&stream, &ShardId::parse("t").expect("valid"))
        .await
        .expect("acquire");
    let ada = UserId::parse("ada").expect("valid");
    let bob = UserId::parse("bob").expect("valid");
    let payloads = [
        (
            ada.clone(),
            EventPayload::UserJoined(UserPresenceV1 { user: ada.clone() }),
        ),
        (
            bob.clone(),
            EventPayload::UserJoined(UserPresenceV1 { user: bob.clone() }),
        ),
        (
            ada.clone(),
            EventPayload::ChatMessageSent(ChatMessageSentV1 {
                client_msg_id: "m1".into(),
                text: "helo".into(),
            }),
        ),
        (
            bob.clone(),
            EventPayload::ChatMessageSent(ChatMessageSentV1 {
                client_msg_id: "m2".into(),
                text: "oops".into(),
            }),
        ),
        (
            ada.clone(),
            EventPayload::ChatMessageEdited(ChatMessageEditedV1 {
                client_msg_id: "e1".into(),
                target: Seq(3),
                text: "hello".into(),
            }),
        ),
        (
            bob.clone(),
            EventPayload::ChatMessageDeleted(ChatMessageDeletedV1 {
                client_msg_id: "d1".into(),
                target: Seq(4),
            }),
        ),
        (
            bob.clone(),
            EventPayload::UserLeft(UserPresenceV1 { user: bob.clone() }),
        ),
        (
            ada.clone(),
            EventPayload::CallStarted(CallV1 {
                call: "c1".into(),
                user: ada.clone(),
            }),
        ),
        (
            ada.clone(),
            EventPayload::CallParticipantJoined(CallParticipantV1 {
                call: "c1".into(),
                user: ada.clone(),
                participant: "p1".into(),
                reason: None,
            }),
        ),
        (
            ada.clone(),
            EventPayload::ScreenShareStarted(ScreenShareV1 {
                user: ada.clone(),
                track: "p1-2".into(),
            }),
        ),
        (
            ada.clone(),
            EventPayload::ScreenShareStopped(ScreenShareV1 {
                user: ada.clone(),
                track: "p1-2".into(),
            }),
        ),
        (
            ada.clone(),
            EventPayload::CallParticipantLeft(CallParticipantV1 {
                call: "c1".into(),
                user: ada.clone(),
                participant: "p1".into(),
                reason: Some("left".into()),
            }),
        ),
        (
            ada.clone(),
            EventPayload::CallEnded(CallV1 {
                call: "c1".into(),
                user: ada.clone(),
            }),
        ),
    ];
    for (i, (actor, payload)) in payloads.into_iter().enumerate() {
        let r = log
            .append(vec![AppendRequest {
                stream: stream.clone(),
                epoch,
                first_seq: Seq(i as u64 + 1),
                events: vec![NewEvent {
                    id: uuid::Uuid::now_v7(),
                    actor,
                    ts: 1000 * (i as i64 + 1),
                    trace: None,
                    payload,
                }],
            }])
            .await;
        assert_eq!(r, vec![Ok(())]);
    }
    log.close().await;
    let data = dir.path().to_str().expect("utf-8 path");
    let (ok, out, err) = tandem(&["events", "show", "--data", data, "--room", "team"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 14, "header + 13 events: {out}");
    assert!(out.contains("chat.message.edited"), "{out}");
    assert!(out.contains("call.participant.joined"), "{out}");
    // Who was in which call: during the screen share, then at the end.
    let (ok, out, err) = tandem(&[
        "events", "replay", "--data", data, "--room", "team", "--until", "10",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    let call = &v["calls"][0];
    assert_eq!(
        (call["call"].as_str(), call["started_by"].as_str()),
        (Some("c1"), Some("ada"))
    );
    assert!(call["ended"].is_null(), "{call}");
    assert_eq!(call["participants"][0]["user"], "ada");
    assert!(call["participants"][0]["left"].is_null());
    assert!(call["screen_shares"][0]["stopped"].is_null());
    // Time travel: before the edit and the deletion, then at the end.
    let (ok, out, err) = tandem(&[
        "events", "replay", "--data", data, "--room", "team", "--until", "4",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["present"], serde_json::json!(["ada", "bob"]));
    let texts: Vec<&str> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, vec!["helo", "oops"]);
    let (ok, out, err) = tandem(&["events", "replay", "--data", data, "--room", "team"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["present"], serde_json::json!(["ada"]));
    assert_eq!(v["messages"][0]["text"], "hello");
    assert!(v["messages"][0]["edited"].is_string());
    assert_eq!(v["messages"][1]["text"], serde_json::Value::Null);
    assert!(v["messages"][1]["deleted"].is_string());
    let call = &v["calls"][0];
    assert!(call["ended"].is_string(), "{call}");
    assert_eq!(call["participants"][0]["reason"], "left");
    assert!(call["screen_shares"][0]["stopped"].is_string());
    let (ok, _, err) = tandem(&["events", "show", "--data", data]);
    assert!(
        !ok && err.contains("--doc"),
        "one of --doc/--room is required: {err}"
    );
}
