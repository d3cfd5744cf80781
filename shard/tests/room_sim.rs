//! The room core on a virtual clock: a harness plays the store (an in-memory log per room, appends
//! committed on demand) and reads what each connection was sent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proto::v1::{Position, RequestId, RoomRequest};
use proto::Access as RoomAccess;
use proto::{Epoch, Event, EventPayload, NewEvent, RoomId, Seq, StreamId, UserId};
use serde_json::Value;
use shard::room::{RoomCore, RoomOutput};
use shard::{ConnId, RoomConfig};
use store::{AppendRequest, Loaded, Snapshot, StoreError};

#[derive(Default)]
struct Log {
    events: Vec<Event>,
    snapshot: Option<Snapshot>,
    epoch: u64,
}

struct Harness {
    core: RoomCore,
    now: Instant,
    logs: HashMap<RoomId, Log>,
    inbox: HashMap<ConnId, Vec<Value>>,
    pending: Vec<(RoomId, Epoch, Seq, UserId, EventPayload)>,
    auto_commit: bool,
    next_id: u64,
}

fn room(s: &str) -> RoomId {
    RoomId::parse(s).expect("valid id")
}

fn user(s: &str) -> UserId {
    UserId::parse(s).expect("valid id")
}

fn cfg() -> RoomConfig {
    RoomConfig {
        presence_flush: Duration::from_millis(100),
        typing_timeout: Duration::from_secs(5),
        presence_grace: Duration::from_secs(10),
        ..RoomConfig::default()
    }
}

impl Harness {
    fn new(cfg: RoomConfig) -> Self {
        Self {
            core: RoomCore::new(cfg, Duration::from_secs(30), 500),
            now: Instant::now(),
            logs: HashMap::new(),
            inbox: HashMap::new(),
            pending: Vec::new(),
            auto_commit: true,
            next_id: 1,
        }
    }

    fn step(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.core.poll_output() {
                progressed = true;
                match out {
                    RoomOutput::Send { conn, msg } => self
                        .inbox
                        .entry(conn)
                        .or_default()
                        .push(serde_json::from_slice(&msg).expect("frames are JSON")),
                    RoomOutput::Load { room } => {
                        let log = self.logs.entry(room.clone()).or_default();
                        log.epoch += 1;
                        let after = log.snapshot.as_ref().map_or(0, |s| s.seq.0);
                        let loaded = Loaded {
                            snapshot: log.snapshot.clone(),
                            tail: log
                                .events
                                .iter()
                                .filter(|e| e.seq.0 > after)
                                .cloned()
                                .collect(),
                        };
                        let epoch = Epoch(log.epoch);
                        self.core
                            .handle_loaded(self.now, &room, Ok((epoch, loaded)));
                    }
                    RoomOutput::Append {
                        room,
                        epoch,
                        seq,
                        actor,
                        payload,
                    } => self.pending.push((room, epoch, seq, actor, payload)),
                    RoomOutput::Snapshot {
                        room,
                        epoch,
                        snapshot,
                    } => {
                        let log = self.logs.entry(room.clone()).or_default();
                        assert_eq!(log.epoch, epoch.0);
                        log.snapshot = Some(snapshot);
                        self.core.handle_snapshot_written(&room, Ok(()));
                    }
                    RoomOutput::Detached { .. }
                    | RoomOutput::Departed { .. }
                    | RoomOutput::Unloaded { .. } => {}
                }
            }
            if self.auto_commit && !self.pending.is_empty() {
                self.commit_all();
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    /// Commits every held append in order (as the store would) and hands the results back.
    fn commit_all(&mut self) {
        for (room, epoch, seq, actor, payload) in std::mem::take(&mut self.pending) {
            let log = self.logs.entry(room.clone()).or_default();
            assert_eq!(log.epoch, epoch.0, "fenced");
            assert_eq!(
                log.events.last().map_or(0, |e| e.seq.0) + 1,
                seq.0,
                "gap-free"
            );
            let req = AppendRequest {
                stream: StreamId::Room(room.clone()),
                epoch,
                first_seq: seq,
                events: vec![NewEvent {
                    id: uuid::Uuid::from_u128(u128::from(self.next_id)),
                    actor,
                    ts: 0,
                    trace: None,
                    payload,
                }],
            };
            self.next_id += 1;
            let event = req.event(0);
            log.events.push(event.clone());
            self.core
                .handle_appended(self.now, &room, epoch, seq, Ok(event));
        }
    }

    fn fail_all(&mut self) {
        for (room, epoch, seq, _, _) in std::mem::take(&mut self.pending) {
            self.core.handle_appended(
                self.now,
                &room,
                epoch,
                seq,
                Err(StoreError::Unavailable("down".into())),
            );
        }
    }

    fn req(&mut self, conn: u64, who: &str, r: &str, rid: Option<&str>, req: RoomRequest) {
        self.req_as(conn, who, RoomAccess::Write, r, rid, req);
    }

    fn req_as(
        &mut self,
        conn: u64,
        who: &str,
        access: RoomAccess,
        r: &str,
        rid: Option<&str>,
        req: RoomRequest,
    ) {
        self.core.handle_request(
            self.now,
            ConnId(conn),
            user(who),
            access,
            room(r),
            rid.map(|r| RequestId::parse(r).expect("valid request id")),
            req,
        );
        self.step();
    }

    fn join(&mut self, conn: u64, who: &str, r: &str) -> Value {
        self.req(
            conn,
            who,
            r,
            Some("j"),
            RoomRequest::Join {
                since: None,
                state: None,
            },
        );
        self.take(conn)
            .into_iter()
            .find(|m| m["t"] == "joined")
            .expect("joined reply")
    }

    fn send(&mut self, conn: u64, who: &str, r: &str, rid: &str, text: &str) {
        self.req(
            conn,
            who,
            r,
            Some(rid),
            RoomRequest::Send { text: text.into() },
        );
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.core.poll_timeout().is_some_and(|t| t <= self.now) {
            self.core.handle_timeout(self.now);
        }
        self.step();
    }

    fn take(&mut self, conn: u64) -> Vec<Value> {
        self.inbox.remove(&ConnId(conn)).unwrap_or_default()
    }

    fn of_type(&mut self, conn: u64, t: &str) -> Vec<Value> {
        self.take(conn)
            .into_iter()
            .filter(|m| m["t"] == t)
            .collect()
    }

    fn chat_texts(events: &[Value]) -> Vec<String> {
        events
            .iter()
            .filter(|m| m["event"]["type"] == "chat.message.sent")
            .map(|m| {
                m["event"]["payload"]["text"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    }
}

#[test]
fn a_message_is_shown_and_acked_only_after_commit() {
    let mut h = Harness::new(cfg());
    h.join(1, "ada", "r");
    h.join(2, "bob", "r");
    h.take(1);
    h.take(2);
    h.auto_commit = false;
    h.send(1, "ada", "r", "m1", "hello");
    assert!(h.inbox.is_empty(), "nothing before the commit");
    assert_eq!(h.pending.len(), 1);
    h.commit_all();
    h.step();
    let to_bob = h.take(2);
    assert_eq!(Harness::chat_texts(&to_bob), vec!["hello"]);
    let to_ada = h.take(1);
    let ack = to_ada.iter().find(|m| m["t"] == "ack").expect("ack");
    assert_eq!(ack["id"], "m1");
    assert_eq!(ack["seq"], 3, "after the two user.joined events");
    assert_eq!(ack["epoch"], 1);
    assert_eq!(
        Harness::chat_texts(&to_ada),
        vec!["hello"],
        "the sender's tabs get it too"
    );
}

#[test]
fn a_failed_append_shows_nothing_and_closes_the_room() {
    let mut h = Harness::new(cfg());
    h.join(1, "ada", "r");
    h.join(2, "bob", "r");
    h.take(1);
    h.take(2);
    h.auto_commit = false;
    h.send(1, "ada", "r", "m1", "lost?");
    h.fail_all();
    h.step();
    let to_ada = h.take(1);
    assert!(to_ada
        .iter()
        .any(|m| m["t"] == "error" && m["id"] == "m1" && m["code"] == "unavailable"));
    assert!(to_ada.iter().any(|m| m["t"] == "room.closed"));
    assert!(Harness::chat_texts(&to_ada).is_empty());
    let to_bob = h.take(2);
    assert!(to_bob.iter().all(|m| m["t"] == "room.closed"), "{to_bob:?}");
    // Rejoining loads the room again under a new epoch; the retry (same id) is appended once.
    h.auto_commit = true;
    h.join(1, "ada", "r");
    h.send(1, "ada", "r", "m1", "lost?");
    let log = &h.logs[&room("r")];
    assert_eq!(log.epoch, 2);
    let sent: Vec<_> = log
        .events
        .iter()
        .filter(|e| matches!(e.payload, EventPayload::ChatMessageSent(_)))
        .collect();
    assert_eq!(sent.len(), 1);
}

#[test]
fn retries_are_acknowledged_once_in_flight_and_after_commit() {
    let mut h = Harness::new(cfg());
    h.join(1, "ada", "r");
    h.take(1);
    h.auto_commit = false;
    h.send(1, "ada", "r", "m1", "once");
    // A second tab of the same user retries the same id while the first is in flight.
    h.join(2, "ada", "r");
    h.send(2, "ada", "r", "m1", "once");
    assert_eq!(h.pending.len(), 1, "one append for two requests");
    h.commit_all();
    h.step();
    let acks: Vec<Value> = h.of_type(2, "ack");
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["duplicate"], true);
    let seq = acks[0]["seq"].clone();
    h.auto_commit = true;
    h.send(1, "ada", "r", "m1", "once");
    let acks = h.of_type(1, "ack");
    assert_eq!(acks.last().map(|a| a["seq"].clone()), Some(seq.clone()));
    assert_eq!(
        acks.last().map(|a| a["duplicate"].clone()),
        Some(Value::Bool(true))
    );
    // Ids are per user: bob may use the same id for his own message.
    h.join(3, "bob", "r");
    h.send(3, "bob", "r", "m1", "mine");
    let bob_ack = h.of_type(3, "ack");
    assert_ne!(bob_ack[0]["seq"], seq);
    assert_eq!(bob_ack[0].get("duplicate"), None);
}

#[test]
fn resume_replays_exactly_the_missed_events_or_says_why_not() {
    let mut h = Harness::new(RoomConfig {
        history_window: 6,
        ..cfg()
    });
    h.join(1, "ada", "r");
    for i in 0..3 {
        h.send(1, "ada", "r", &format!("a{i}"), &format!("m{i}"));
    }
    let log_epoch = Epoch(h.logs[&room("r")].epoch);
    let resume = |h: &mut Harness, conn: u64, since: Position| -> Value {
        h.req(
            conn,
            "bob",
            "r",
            Some("j"),
            RoomRequest::Join {
                since: Some(since),
                state: None,
            },
        );
        h.take(conn)
            .into_iter()
            .find(|m| m["t"] == "joined")
            .expect("joined")
    };
    // seq 2 is m0: replay m1, m2.
    let j = resume(
        &mut h,
        2,
        Position {
            epoch: log_epoch,
            seq: Seq(2),
        },
    );
    assert_eq!(j["recovered"], true);
    let texts: Vec<&str> = j["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["payload"]["text"].as_str())
        .collect();
    assert_eq!(texts, vec!["m1", "m2"]);
    // A wrong epoch at that seq: the client's history is not this log's.
    let j = resume(
        &mut h,
        3,
        Position {
            epoch: Epoch(99),
            seq: Seq(2),
        },
    );
    assert_eq!(
        (j["recovered"].clone(), j["reason"].clone()),
        (Value::Bool(false), "epoch_changed".into())
    );
    // A position past the end.
    let j = resume(
        &mut h,
        4,
        Position {
            epoch: log_epoch,
            seq: Seq(500),
        },
    );
    assert_eq!(j["reason"], "unknown_position");
    // Push seq 2 out of the six-event window.
    for i in 3..9 {
        h.send(1, "ada", "r", &format!("a{i}"), &format!("m{i}"));
    }
    let j = resume(
        &mut h,
        5,
        Position {
            epoch: log_epoch,
            seq: Seq(2),
        },
    );
    assert_eq!(j["reason"], "too_old");
    // The position the reply carries is the newest event's.
    let last = h.logs[&room("r")].events.last().cloned().expect("events");
    assert_eq!(j["position"]["seq"], last.seq.0);
    assert_eq!(j["position"]["epoch"], last.epoch.0);
}

#[test]
fn resume_works_across_a_reload_from_snapshot_and_tail() {
    let mut h = Harness::new(RoomConfig {
        history_window: 50,
        ..cfg()
    });
    // Snapshots every 500 events by default: force a few via a small core.
    h.core = RoomCore::new(
        RoomConfig {
            history_window: 50,
            ..cfg()
        },
        Duration::from_secs(30),
        4,
    );
    h.join(1, "ada", "r");
    for i in 0..10 {
        h.send(1, "ada", "r", &format!("a{i}"), &format!("m{i}"));
    }
    assert!(
        h.logs[&room("r")].snapshot.is_some(),
        "snapshots were written"
    );
    let old = h.logs[&room("r")].events[4].clone();
    // Everyone leaves; the room unloads after the idle period and loads again on the next join.
    h.req(1, "ada", "r", Some("l"), RoomRequest::Leave);
    h.advance(Duration::from_secs(31));
    assert_eq!(h.core.loaded_rooms(), 0);
    h.req(
        2,
        "bob",
        "r",
        Some("j"),
        RoomRequest::Join {
            since: Some(Position {
                epoch: old.epoch,
                seq: old.seq,
            }),
            state: None,
        },
    );
    let j = h.of_type(2, "joined").pop().expect("joined");
    assert_eq!(j["recovered"], true, "{j}");
    let seqs: Vec<u64> = j["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let want: Vec<u64> =
        ((old.seq.0 + 1)..=h.logs[&room("r")].events.last().map_or(0, |e| e.seq.0 - 1)).collect();
    // The replay ends before bob's own user.joined (appended after the reply).
    assert_eq!(seqs, want);
    // A retry of a message sent before the reload is still recognised.
    h.join(3, "ada", "r");
    h.send(3, "ada", "r", "a9", "m9");
    assert_eq!(h.of_type(3, "ack")[0]["duplicate"], true);
}

#[test]
fn presence_merges_tabs_and_announces_users_once() {
    let mut h = Harness::new(cfg());
    h.join(1, "ada", "r");
    h.join(2, "ada", "r");
    let j = h.join(3, "bob", "r");
    let presence = j["presence"].as_array().expect("presence");
    assert_eq!(presence.len(), 2);
    assert_eq!(presence[0]["user"], "ada");
    assert_eq!(presence[0]["connections"], 2);
    let users: Vec<String> = h.logs[&room("r")]
        .events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::UserJoined(p) => Some(p.user.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        users,
        vec!["ada", "bob"],
        "one user.joined per user, not per tab"
    );
    // The latest state set by any tab is the user's.
    h.req(
        1,
        "ada",
        "r",
        None,
        RoomRequest::Presence {
            state: serde_json::json!({"tab": 1}),
        },
    );
    h.req(
        2,
        "ada",
        "r",
        None,
        RoomRequest::Presence {
            state: serde_json::json!({"tab": 2}),
        },
    );
    h.take(3);
    h.advance(Duration::from_millis(150));
    let p = h.of_type(3, "presence");
    assert_eq!(p.len(), 1, "one coalesced frame");
    assert_eq!(p[0]["set"][0]["state"]["tab"], 2);
    // Closing one tab changes the count but announces nothing; the last one leaves.
    h.core.handle_close(h.now, ConnId(1));
    h.step();
    h.core.handle_close(h.now, ConnId(2));
    h.step();
    h.advance(Duration::from_millis(150));
    let p = h.of_type(3, "presence");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["gone"][0], "ada");
    let left = h.logs[&room("r")]
        .events
        .iter()
        .filter(|e| matches!(e.payload, EventPayload::UserLeft(_)))
        .count();
    assert_eq!(left, 1);
}

#[test]
fn fifty_typists_cost_one_frame_per_member_per_flush() {
    let mut h = Harness::new(cfg());
    for c in 0..50u64 {
        h.join(c, &format!("u{c}"), "r");
    }
    h.advance(Duration::from_millis(150));
    h.inbox.clear();
    for round in 0..5 {
        for c in 0..50u64 {
            h.req(
                c,
                &format!("u{c}"),
                "r",
                None,
                RoomRequest::Typing {
                    on: round % 2 == 0 || c % 2 == 0,
                },
            );
        }
    }
    assert!(h.inbox.is_empty(), "typing is never relayed as received");
    h.advance(Duration::from_millis(150));
    for c in 0..50u64 {
        let frames = h.take(c);
        assert_eq!(frames.len(), 1, "one typing frame per member: {frames:?}");
        assert_eq!(frames[0]["t"], "typing");
        assert_eq!(frames[0]["users"].as_array().map(Vec::len), Some(50));
    }
    // Nothing is persisted for typing.
    assert!(h.logs[&room("r")]
        .events
        .iter()
        .all(|e| e.payload.event_type().is_persisted()));
    // Indicators expire when not renewed.
    h.advance(Duration::from_secs(6));
    let f = h.of_type(0, "typing");
    assert_eq!(
        f.last().map(|m| m["users"].as_array().map(Vec::len)),
        Some(Some(0))
    );
}

#[test]
fn ghosts_of_a_dead_owner_leave_after_the_grace_period() {
    let mut h = Harness::new(cfg());
    h.join(1, "ada", "r");
    h.join(2, "bob", "r");
    // The owner dies: a new core (new epoch) loads the same log; only ada comes back.
    h.core = RoomCore::new(cfg(), Duration::from_secs(30), 500);
    h.inbox.clear();
    h.join(11, "ada", "r");
    h.advance(Duration::from_secs(5));
    let kinds = |h: &Harness| -> Vec<String> {
        h.logs[&room("r")]
            .events
            .iter()
            .map(|e| format!("{} {}", e.payload.event_type().name(), e.actor))
            .collect()
    };
    assert_eq!(kinds(&h), vec!["user.joined ada", "user.joined bob"]);
    h.advance(Duration::from_secs(6));
    assert_eq!(
        kinds(&h),
        vec!["user.joined ada", "user.joined bob", "user.left bob"]
    );
    assert_eq!(h.logs[&room("r")].epoch, 2);
}

#[test]
fn bad_requests_change_nothing() {
    let mut h = Harness::new(RoomConfig {
        max_chat_bytes: 10,
        max_presence_bytes: 20,
        ..cfg()
    });
    h.join(1, "ada", "r");
    let before = h.logs[&room("r")].events.len();
    let cases: Vec<(RoomRequest, &str)> = vec![
        (
            RoomRequest::Send {
                text: "x".repeat(11),
            },
            "too_large",
        ),
        (
            RoomRequest::Send {
                text: String::new(),
            },
            "bad_request",
        ),
        (
            RoomRequest::Edit {
                target: Seq(1),
                text: "x".into(),
            },
            "not_found",
        ),
        (RoomRequest::Delete { target: Seq(77) }, "not_found"),
        (
            RoomRequest::Presence {
                state: serde_json::json!({"k": "v".repeat(30)}),
            },
            "too_large",
        ),
    ];
    for (i, (req, code)) in cases.into_iter().enumerate() {
        let rid = format!("b{i}");
        h.req(1, "ada", "r", Some(&rid), req);
        let e = h.of_type(1, "error");
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0]["id"].as_str(), e[0]["code"].as_str()),
            (Some(rid.as_str()), Some(code))
        );
    }
    h.req(
        2,
        "eve",
        "other",
        Some("s"),
        RoomRequest::Send { text: "hi".into() },
    );
    assert_eq!(h.of_type(2, "error")[0]["code"], "unknown_room");
    h.req_as(
        3,
        "rita",
        RoomAccess::Read,
        "r",
        Some("j"),
        RoomRequest::Join {
            since: None,
            state: None,
        },
    );
    h.req_as(
        3,
        "rita",
        RoomAccess::Read,
        "r",
        Some("s"),
        RoomRequest::Send { text: "hi".into() },
    );
    assert_eq!(h.of_type(3, "error")[0]["code"], "forbidden");
    let after: Vec<&str> = h.logs[&room("r")].events[before..]
        .iter()
        .map(|e| e.payload.event_type().name())
        .collect();
    assert_eq!(after, vec!["user.joined"], "only rita's join was appended");
}

#[test]
fn leaving_the_last_room_replies_before_detaching_the_socket() {
    let mut core = RoomCore::new(cfg(), Duration::from_secs(30), 500);
    let now = Instant::now();
    let r = room("r");
    core.handle_request(
        now,
        ConnId(1),
        user("ada"),
        RoomAccess::Write,
        r.clone(),
        Some(RequestId::parse("j").expect("valid")),
        RoomRequest::Join {
            since: None,
            state: None,
        },
    );
    while let Some(o) = core.poll_output() {
        if let RoomOutput::Load { room } = o {
            core.handle_loaded(now, &room, Ok((Epoch(1), Loaded::default())));
        }
    }
    core.handle_request(
        now,
        ConnId(1),
        user("ada"),
        RoomAccess::Write,
        r,
        Some(RequestId::parse("l").expect("valid")),
        RoomRequest::Leave,
    );
    let outs: Vec<RoomOutput> = std::iter::from_fn(|| core.poll_output()).collect();
    let left = outs.iter().position(|o| {
        matches!(o, RoomOutput::Send { msg, .. }
        if serde_json::from_slice::<Value>(msg).is_ok_and(|v| v["t"] == "left"))
    });
    let detached = outs
        .iter()
        .position(|o| matches!(o, RoomOutput::Detached { conn: ConnId(1) }));
    assert!(left.is_some() && detached.is_some(), "{outs:?}");
    assert!(
        left < detached,
        "the reply must go out while the sink is still there"
    );
}

#[test]
fn requests_queued_behind_a_failed_load_each_get_an_error() {
    let mut core = RoomCore::new(cfg(), Duration::from_secs(30), 500);
    let now = Instant::now();
    let r = room("r");
    core.handle_request(
        now,
        ConnId(1),
        user("ada"),
        RoomAccess::Write,
        r.clone(),
        Some(RequestId::parse("j1").expect("valid")),
        RoomRequest::Join {
            since: None,
            state: None,
        },
    );
    core.handle_request(
        now,
        ConnId(1),
        user("ada"),
        RoomAccess::Write,
        r.clone(),
        Some(RequestId::parse("m1").expect("valid")),
        RoomRequest::Send { text: "hi".into() },
    );
    core.handle_request(
        now,
        ConnId(2),
        user("bob"),
        RoomAccess::Write,
        r.clone(),
        Some(RequestId::parse("j2").expect("valid")),
        RoomRequest::Join {
            since: None,
            state: None,
        },
    );
    while core.poll_output().is_some() {}
    core.handle_loaded(now, &r, Err(StoreError::Unavailable("down".into())));
    let mut errors: Vec<(u64, String)> = Vec::new();
    let mut detached = Vec::new();
    while let Some(o) = core.poll_output() {
        match o {
            RoomOutput::Send { conn, msg } => {
                let v: Value = serde_json::from_slice(&msg).expect("json");
                if v["t"] == "error" {
                    assert_eq!(v["code"], "unavailable");
                    errors.push((conn.0, v["id"].as_str().unwrap_or("").to_owned()));
                }
            }
            RoomOutput::Detached { conn } => detached.push(conn.0),
            _ => {}
        }
    }
    errors.sort();
    assert_eq!(
        errors,
        vec![(1, "j1".into()), (1, "m1".into()), (2, "j2".into())]
    );
    detached.sort();
    assert_eq!(detached, vec![1, 2]);
    assert_eq!(core.loaded_rooms(), 0);
}

#[test]
fn a_snapshot_taken_with_events_in_flight_holds_only_committed_ones() {
    let mut h = Harness::new(cfg());
    h.core = RoomCore::new(cfg(), Duration::from_secs(30), 2);
    h.join(1, "ada", "r");
    h.auto_commit = false;
    h.join(2, "bob", "r"); // bob's user.joined stays in flight
    h.send(1, "ada", "r", "m1", "one");
    // Commit only the first held append (bob's join), keep ada's message in flight.
    let first = h.pending.remove(0);
    let rest = std::mem::take(&mut h.pending);
    h.pending.push(first);
    h.commit_all();
    h.pending = rest;
    h.step();
    h.commit_all();
    h.step();
    let snap = h.logs[&room("r")]
        .snapshot
        .clone()
        .expect("a snapshot at seq 3");
    let v: Value = serde_json::from_slice(&snap.state).expect("json");
    let seqs: Vec<u64> = v["window"]
        .as_array()
        .expect("window")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs,
        (1..=snap.seq.0).collect::<Vec<_>>(),
        "exactly the events up to the snapshot's seq"
    );
    assert_eq!(v["present"], serde_json::json!(["ada", "bob"]));
}
