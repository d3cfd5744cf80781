//! The shard core on a virtual clock: no sockets, no tasks. A harness plays the store (committing into
//! an in-memory log) and fake clients built on yrs, and steps time by hand.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proto::event::{Bytes, DocumentUpdatedV1};
use proto::yjs::hostile;
use proto::yjs::message::{self, Message};
use proto::{DocId, Epoch, Event, EventPayload, Seq, StreamId, UserId};
use shard::{ConnId, CoreConfig, Output, ShardCore};
use store::{Loaded, Snapshot, StoreError};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

#[derive(Default)]
struct Log {
    events: Vec<Event>,
    snapshot: Option<Snapshot>,
    epoch: u64,
}

struct Harness {
    core: ShardCore,
    now: Instant,
    logs: HashMap<DocId, Log>,
    inbox: HashMap<ConnId, Vec<Vec<u8>>>,
    closed: HashMap<ConnId, u16>,
    pending_loads: Vec<DocId>,
    pending_appends: Vec<(DocId, Epoch, Seq, UserId, Vec<u8>)>,
    unloaded: Vec<DocId>,
    auto_commit: bool,
}

fn doc_id(s: &str) -> DocId {
    DocId::parse(s).expect("valid id")
}

impl Harness {
    fn new(cfg: CoreConfig) -> Self {
        Self {
            core: ShardCore::new(cfg),
            now: Instant::now(),
            logs: HashMap::new(),
            inbox: HashMap::new(),
            closed: HashMap::new(),
            pending_loads: Vec::new(),
            pending_appends: Vec::new(),
            unloaded: Vec::new(),
            auto_commit: true,
        }
    }

    /// Drains outputs; loads are answered immediately, appends when `auto_commit` (else held).
    fn step(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.core.poll_output() {
                progressed = true;
                match out {
                    Output::Send { conn, msg } => {
                        self.inbox.entry(conn).or_default().push(msg.to_vec())
                    }
                    Output::Close { conn, code, .. } => {
                        self.closed.insert(conn, code);
                    }
                    Output::Load { doc } => self.pending_loads.push(doc),
                    Output::Append {
                        doc,
                        epoch,
                        seq,
                        actor,
                        update,
                    } => self.pending_appends.push((doc, epoch, seq, actor, update)),
                    Output::Snapshot {
                        doc,
                        epoch,
                        snapshot,
                    } => {
                        let log = self.logs.entry(doc.clone()).or_default();
                        let r = if log.epoch == epoch.0 {
                            log.snapshot = Some(snapshot);
                            Ok(())
                        } else {
                            Err(StoreError::StaleEpoch {
                                writer: epoch,
                                current: Epoch(log.epoch),
                            })
                        };
                        self.core.handle_snapshot_written(self.now, &doc, r);
                    }
                    Output::Applied { .. } => {}
                    Output::Unloaded { doc } => self.unloaded.push(doc),
                }
            }
            for doc in std::mem::take(&mut self.pending_loads) {
                progressed = true;
                let log = self.logs.entry(doc.clone()).or_default();
                log.epoch += 1;
                let after = log.snapshot.as_ref().map(|s| s.seq).unwrap_or_default();
                let loaded = Loaded {
                    snapshot: log.snapshot.clone(),
                    tail: log
                        .events
                        .iter()
                        .filter(|e| e.seq > after)
                        .cloned()
                        .collect(),
                };
                let epoch = Epoch(log.epoch);
                self.core.handle_loaded(self.now, &doc, Ok((epoch, loaded)));
            }
            if self.auto_commit {
                for (doc, epoch, seq, actor, update) in std::mem::take(&mut self.pending_appends) {
                    progressed = true;
                    self.commit(&doc, epoch, seq, actor, update);
                    self.core
                        .handle_appended(self.now, &doc, epoch, seq, Ok(()));
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn commit(&mut self, doc: &DocId, epoch: Epoch, seq: Seq, actor: UserId, update: Vec<u8>) {
        let log = self.logs.entry(doc.clone()).or_default();
        assert_eq!(log.epoch, epoch.0, "append under the current epoch");
        let last = log.events.last().map(|e| e.seq).unwrap_or_default();
        assert_eq!(seq, last.next(), "gap-free seqs");
        log.events.push(Event {
            id: uuid::Uuid::now_v7(),
            version: 1,
            stream: StreamId::Doc(doc.clone()),
            seq,
            epoch,
            actor,
            ts: 0,
            trace: None,
            payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
                update: Bytes(update),
            }),
        });
    }

    fn open(&mut self, conn: u64, doc: &str, can_write: bool) -> ConnId {
        let c = ConnId(conn);
        self.core.handle_open(
            self.now,
            c,
            doc_id(doc),
            UserId::parse("ada").expect("valid"),
            can_write,
        );
        self.step();
        c
    }

    fn send(&mut self, conn: ConnId, msg: Vec<u8>) {
        self.core.handle_message(self.now, conn, msg);
        self.step();
    }

    fn take(&mut self, conn: ConnId) -> Vec<Vec<u8>> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    fn core_state_vector(&self, doc: &str) -> Vec<u8> {
        let state = self.core.encode_state(&doc_id(doc)).expect("loaded");
        let d = Doc::new();
        d.transact_mut()
            .apply_update(Update::decode_v1(&state).expect("valid"))
            .expect("applies");
        let sv = d.transact().state_vector();
        sv.encode_v1()
    }

    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        // Step to every deadline on the way, like the driver would.
        while let Some(t) = self.core.poll_timeout() {
            if t > target {
                break;
            }
            self.now = self.now.max(t);
            self.core.handle_timeout(self.now);
            self.step();
        }
        self.now = target;
        self.core.handle_timeout(self.now);
        self.step();
    }
}

/// A fake client: a yrs doc whose edits are turned into y-websocket update messages.
struct Client {
    doc: Doc,
}

impl Client {
    fn new(id: u64) -> Self {
        Self {
            doc: Doc::with_client_id(id),
        }
    }

    fn insert(&self, at: u32, s: &str) -> Vec<u8> {
        let text = self.doc.get_or_insert_text("t");
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            text.insert(&mut txn, at, s);
        }
        let update = self.doc.transact().encode_diff_v1(&before);
        message::encode_update(&update)
    }

    fn receive(&self, msgs: &[Vec<u8>]) {
        for m in msgs {
            match Message::decode(m).expect("server sends valid messages") {
                Message::SyncStep2(u) | Message::Update(u) => {
                    let u = Update::decode_v1(u).expect("valid update");
                    self.doc.transact_mut().apply_update(u).expect("applies");
                }
                _ => {}
            }
        }
    }

    fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("t");
        text.get_string(&self.doc.transact())
    }

    fn sync_step1(&self) -> Vec<u8> {
        message::encode_sync_step1(&self.doc.transact().state_vector().encode_v1())
    }
}

fn kinds(msgs: &[Vec<u8>]) -> Vec<&'static str> {
    msgs.iter()
        .map(|m| match Message::decode(m).expect("valid") {
            Message::SyncStep1(_) => "step1",
            Message::SyncStep2(_) => "step2",
            Message::Update(_) => "update",
            Message::Awareness(_) => "awareness",
            Message::AuthPermissionDenied(_) => "denied",
            Message::QueryAwareness => "query",
        })
        .collect()
}

#[test]
fn sync_handshake_and_broadcast_after_commit() {
    let mut h = Harness::new(CoreConfig::default());
    let a = h.open(1, "d", true);
    let b = h.open(2, "d", true);
    assert_eq!(
        kinds(&h.take(a)),
        ["step1"],
        "server greets with its state vector"
    );
    assert_eq!(kinds(&h.take(b)), ["step1"]);

    let ca = Client::new(10);
    let cb = Client::new(11);
    h.auto_commit = false;
    h.send(a, ca.insert(0, "hello"));
    assert_eq!(h.pending_appends.len(), 1, "the update goes to the store");
    assert!(
        h.take(b).is_empty(),
        "nothing is broadcast before the commit"
    );
    // A newcomer syncing now does not see the uncommitted update either.
    let c = h.open(3, "d", true);
    let cc = Client::new(12);
    h.take(c);
    h.send(c, cc.sync_step1());
    cc.receive(&h.take(c));
    assert_eq!(cc.text(), "");

    h.auto_commit = true;
    h.step();
    let to_b = h.take(b);
    assert_eq!(kinds(&to_b), ["update"]);
    cb.receive(&to_b);
    assert_eq!(cb.text(), "hello");
    assert!(
        h.take(a).is_empty(),
        "the sender does not get its own update back"
    );

    // Sync step 1 from a fresh client returns the committed state as step 2.
    let cd = Client::new(13);
    let d = h.open(4, "d", true);
    h.take(d);
    h.send(d, cd.sync_step1());
    let reply = h.take(d);
    assert_eq!(kinds(&reply), ["step2"]);
    cd.receive(&reply);
    assert_eq!(cd.text(), "hello");
    assert_eq!(h.logs[&doc_id("d")].events.len(), 1);
}

#[test]
fn failed_append_shows_nothing_and_closes_the_document() {
    let mut h = Harness::new(CoreConfig::default());
    let a = h.open(1, "d", true);
    let b = h.open(2, "d", true);
    h.take(a);
    h.take(b);
    h.auto_commit = false;
    h.send(a, Client::new(10).insert(0, "lost?"));
    let (doc, epoch, seq, _, _) = h.pending_appends.pop().expect("one append");
    h.core.handle_appended(
        h.now,
        &doc,
        epoch,
        seq,
        Err(StoreError::Unavailable("disk".into())),
    );
    h.step();
    assert!(
        h.take(b).is_empty(),
        "an uncommitted update is never broadcast"
    );
    assert_eq!(h.closed.get(&a), Some(&1011));
    assert_eq!(h.closed.get(&b), Some(&1011));
    assert!(!h.core.is_loaded(&doc));
}

#[test]
fn messages_sent_while_loading_are_processed_after_load() {
    let mut h = Harness::new(CoreConfig::default());
    let c = ConnId(1);
    h.core.handle_open(
        h.now,
        c,
        doc_id("d"),
        UserId::parse("ada").expect("valid"),
        true,
    );
    // Do not step: the load is outstanding while the client already sends.
    h.core
        .handle_message(h.now, c, Client::new(10).insert(0, "early"));
    h.step();
    assert_eq!(h.logs[&doc_id("d")].events.len(), 1);
}

#[test]
fn read_only_updates_are_refused() {
    let mut h = Harness::new(CoreConfig::default());
    let r = h.open(1, "d", false);
    let w = h.open(2, "d", true);
    h.take(r);
    h.take(w);
    h.send(r, Client::new(10).insert(0, "nope"));
    assert_eq!(kinds(&h.take(r)), ["denied"]);
    assert!(h.take(w).is_empty());
    assert!(h.logs[&doc_id("d")].events.is_empty(), "nothing persisted");
    assert!(
        !h.closed.contains_key(&r),
        "a read-only client stays connected"
    );
}

#[test]
fn hostile_updates_are_refused_before_yrs_sees_them() {
    let mut h = Harness::new(CoreConfig::default());
    let w = h.open(2, "d", true);
    for (i, (name, update)) in hostile::all().into_iter().enumerate() {
        let c = h.open(100 + i as u64, "d", true);
        h.take(w);
        h.send(c, message::encode_update(&update));
        assert_eq!(h.closed.get(&c), Some(&1007), "{name}");
        assert!(h.take(w).is_empty(), "{name} was broadcast");
    }
    // The 10,000-deep array that aborts yrs 0.28.1 specifically.
    let c = h.open(99, "d", true);
    h.send(
        c,
        message::encode_update(&hostile::nested_any_array_update(10_000)),
    );
    assert_eq!(h.closed.get(&c), Some(&1007));
    assert!(h.logs[&doc_id("d")].events.is_empty(), "nothing persisted");
    // Malformed framing is a protocol error.
    let c = h.open(98, "d", true);
    h.send(c, vec![9, 9, 9]);
    assert_eq!(h.closed.get(&c), Some(&1002));
}

#[test]
fn document_size_limit_closes_with_1009() {
    let cfg = CoreConfig {
        max_doc_bytes: 200,
        ..CoreConfig::default()
    };
    let mut h = Harness::new(cfg);
    let a = h.open(1, "d", true);
    let ca = Client::new(10);
    h.send(a, ca.insert(0, &"x".repeat(100)));
    assert!(!h.closed.contains_key(&a));
    h.send(a, ca.insert(0, &"y".repeat(150)));
    assert_eq!(h.closed.get(&a), Some(&1009));
    assert_eq!(h.logs[&doc_id("d")].events.len(), 1);
}

fn awareness_msg(client: u64, clock: u64, json: &str) -> Vec<u8> {
    message::encode_awareness(&message::encode_awareness_update(&[(client, clock, json)]))
}

fn awareness_entries(msgs: &[Vec<u8>]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for m in msgs {
        if let Ok(Message::Awareness(u)) = Message::decode(m) {
            for e in message::decode_awareness_update(u).expect("valid") {
                out.push((e.client_id, e.state_json.to_owned()));
            }
        }
    }
    out
}

/// Relaying each update as received (the reference server's behaviour, `awareness_flush` = 0).
fn relay_config() -> CoreConfig {
    CoreConfig {
        awareness_flush: Duration::ZERO,
        ..CoreConfig::default()
    }
}

#[test]
fn awareness_reaches_peers_and_is_removed_on_close() {
    let mut h = Harness::new(relay_config());
    let a = h.open(1, "d", true);
    let b = h.open(2, "d", true);
    h.take(a);
    h.take(b);
    h.send(a, awareness_msg(10, 1, r#"{"user":"ada"}"#));
    assert_eq!(
        awareness_entries(&h.take(b)),
        [(10, r#"{"user":"ada"}"#.to_owned())]
    );
    // A late joiner is greeted with the current states.
    let c = h.open(3, "d", true);
    assert_eq!(
        awareness_entries(&h.take(c)),
        [(10, r#"{"user":"ada"}"#.to_owned())]
    );
    h.core.handle_close(h.now, a);
    h.step();
    assert_eq!(awareness_entries(&h.take(b)), [(10, "null".to_owned())]);
}

#[test]
fn awareness_expires_without_renewal() {
    let mut h = Harness::new(relay_config());
    let a = h.open(1, "d", true);
    let b = h.open(2, "d", true);
    h.send(a, awareness_msg(10, 1, r#"{"n":1}"#));
    h.take(b);
    h.advance(Duration::from_secs(20));
    assert!(
        awareness_entries(&h.take(b)).is_empty(),
        "still fresh at 20 s"
    );
    h.send(a, awareness_msg(10, 2, r#"{"n":2}"#));
    h.take(b);
    h.advance(Duration::from_secs(29));
    assert!(awareness_entries(&h.take(b)).is_empty(), "renewed at 20 s");
    h.advance(Duration::from_secs(2));
    assert_eq!(awareness_entries(&h.take(b)), [(10, "null".to_owned())]);
}

/// Coalesced awareness: many updates from many clients within one interval reach each peer as one
/// message holding each client's latest state; nothing leaves before the interval ends.
#[test]
fn awareness_changes_are_coalesced_per_interval() {
    let mut h = Harness::new(CoreConfig::default());
    let flush = CoreConfig::default().awareness_flush;
    assert!(!flush.is_zero());
    let a = h.open(1, "d", true);
    let b = h.open(2, "d", true);
    let c = h.open(3, "d", true);
    h.take(a);
    h.take(b);
    h.take(c);
    for clock in 1..=5 {
        h.send(
            a,
            awareness_msg(10, clock, &format!(r#"{{"cursor":{clock}}}"#)),
        );
        h.send(
            b,
            awareness_msg(20, clock, &format!(r#"{{"cursor":{}}}"#, clock * 10)),
        );
    }
    // A stale update (older clock) changes nothing.
    h.send(a, awareness_msg(10, 2, r#"{"cursor":"old"}"#));
    assert!(h.take(c).is_empty(), "nothing before the interval ends");
    h.advance(flush);
    let msgs = h.take(c);
    assert_eq!(msgs.len(), 1, "one message per interval");
    let mut got = awareness_entries(&msgs);
    got.sort();
    assert_eq!(
        got,
        [
            (10, r#"{"cursor":5}"#.to_owned()),
            (20, r#"{"cursor":50}"#.to_owned())
        ]
    );
    // The senders get the merged update too (y-protocols ignores its own state at the same clock).
    assert_eq!(awareness_entries(&h.take(a)).len(), 2);
    // Quiet interval: nothing more.
    h.advance(flush * 3);
    assert!(h.take(c).is_empty());
    // A late joiner is greeted with the current states at once.
    let d = h.open(4, "d", true);
    assert_eq!(awareness_entries(&h.take(d)).len(), 2);
    // A provider's destroy(): a null state, then the socket closes before the interval ends. The
    // removal still reaches the others, at once.
    h.send(a, awareness_msg(10, 6, "null"));
    h.core.handle_close(h.now, a);
    h.step();
    assert_eq!(awareness_entries(&h.take(c)), [(10, "null".to_owned())]);
    h.advance(flush * 2);
    assert!(h.take(c).is_empty(), "no second removal");
}

#[test]
fn idle_documents_unload_with_a_snapshot_and_reload_equal() {
    let cfg = CoreConfig {
        idle_unload: Duration::from_secs(30),
        snapshot_every: 3,
        ..CoreConfig::default()
    };
    let mut h = Harness::new(cfg);
    let a = h.open(1, "d", true);
    let ca = Client::new(10);
    for i in 0..5 {
        h.send(a, ca.insert(i, "z"));
    }
    let before = h.core.encode_state(&doc_id("d")).expect("loaded");
    assert_eq!(
        h.logs[&doc_id("d")].snapshot.as_ref().map(|s| s.seq),
        Some(Seq(3)),
        "compaction after 3 events"
    );
    h.core.handle_close(h.now, a);
    h.step();
    h.advance(Duration::from_secs(29));
    assert!(h.core.is_loaded(&doc_id("d")), "not yet idle long enough");
    h.advance(Duration::from_secs(2));
    assert!(!h.core.is_loaded(&doc_id("d")), "unloaded after 30 s idle");
    assert_eq!(
        h.logs[&doc_id("d")].snapshot.as_ref().map(|s| s.seq),
        Some(Seq(5))
    );

    // Reload on demand: the state equals what was there, and seqs continue gap-free.
    let b = h.open(2, "d", true);
    let after = h.core.encode_state(&doc_id("d")).expect("reloaded");
    let (d1, d2) = (Doc::new(), Doc::new());
    d1.transact_mut()
        .apply_update(Update::decode_v1(&before).expect("valid"))
        .expect("applies");
    d2.transact_mut()
        .apply_update(Update::decode_v1(&after).expect("valid"))
        .expect("applies");
    assert_eq!(d1.transact().state_vector(), d2.transact().state_vector());
    let cb = Client::new(11);
    h.take(b);
    h.send(b, cb.sync_step1());
    cb.receive(&h.take(b));
    assert_eq!(cb.text(), "zzzzz");
    h.send(b, cb.insert(0, "!"));
    assert_eq!(
        h.logs[&doc_id("d")].events.last().map(|e| e.seq),
        Some(Seq(6))
    );
    assert_eq!(h.logs[&doc_id("d")].epoch, 2, "the reload took a new epoch");
}

#[test]
fn empty_updates_are_not_persisted() {
    let mut h = Harness::new(CoreConfig::default());
    let a = h.open(1, "d", true);
    let empty = Doc::new()
        .transact()
        .encode_diff_v1(&StateVector::default());
    h.send(a, message::encode_sync_step2(&empty));
    assert!(h.logs[&doc_id("d")].events.is_empty());
    assert!(!h.closed.contains_key(&a));
}

#[test]
fn update_sequences_that_crash_yrs_do_not_crash_the_shard() {
    // Two updates that each pass validation; the second re-sends clocks with different content,
    // which segfaults yrs 0.28.1. The overlap guard must drop it before yrs sees it.
    let mut h = Harness::new(CoreConfig::default());
    let a = h.open(1, "d", true);
    let [first, second] = hostile::yrs_resend_segfault_updates();
    h.send(a, message::encode_update(&first));
    h.send(a, message::encode_update(&second));
    assert!(
        h.logs[&doc_id("d")].events.len() <= 1,
        "the re-sent range is not persisted"
    );

    // An update on which yrs panics (debug builds) is contained: the process lives on, the document
    // is dropped and reloads without the poisoned event.
    let b = h.open(2, "e", true);
    h.send(
        b,
        message::encode_update(&hostile::yrs_surrogate_split_update()),
    );
    let c = h.open(3, "e", true);
    let cc = Client::new(12);
    h.take(c);
    h.send(c, cc.insert(0, "still works"));
    let cd = Client::new(13);
    let d = h.open(4, "e", true);
    h.take(d);
    h.send(d, cd.sync_step1());
    cd.receive(&h.take(d));
    assert!(cd.text().contains("still works"), "{}", cd.text());
}

#[test]
fn honest_resends_are_deduplicated_not_refused() {
    let mut h = Harness::new(CoreConfig::default());
    let a = h.open(1, "d", true);
    let ca = Client::new(10);
    let m = ca.insert(0, "once");
    h.send(a, m.clone());
    h.send(a, m);
    assert!(!h.closed.contains_key(&a));
    assert_eq!(h.logs[&doc_id("d")].events.len(), 1);
    // A full-state sync step 2 that repeats known structs is not an error either.
    let full = ca
        .doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    h.send(a, message::encode_sync_step2(&full));
    assert!(!h.closed.contains_key(&a));
}

#[test]
fn a_resent_update_with_deletions_keeps_only_its_deletions() {
    let mut h = Harness::new(CoreConfig::default());
    let a = h.open(1, "d", true);
    let ca = Client::new(10);
    let cb = Client::new(20);
    h.send(a, ca.insert(0, "hello"));
    h.send(a, cb.insert(0, "world"));
    ca.receive(&[message::encode_update(
        &cb.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default()),
    )]);
    // Client 10 deletes from both clients' text, then re-sends its whole state: every struct is
    // known, so only the deletions are stored, encoded as yrs encodes a delete set.
    {
        let text = ca.doc.get_or_insert_text("t");
        let mut txn = ca.doc.transact_mut();
        text.remove_range(&mut txn, 8, 1);
        text.remove_range(&mut txn, 1, 2);
    }
    let full = ca
        .doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let before = h.logs[&doc_id("d")].events.len();
    h.send(a, message::encode_sync_step2(&full));
    assert!(!h.closed.contains_key(&a));
    let events = &h.logs[&doc_id("d")].events;
    assert_eq!(events.len(), before + 1);
    let mut expected = vec![0u8];
    expected.extend_from_slice(
        &Update::decode_v1(&full)
            .expect("valid")
            .delete_set()
            .encode_v1(),
    );
    match &events[before].payload {
        EventPayload::DocumentUpdated(p) => assert_eq!(p.update.0, expected),
        other => panic!("{other:?}"),
    }
    let cc = Client::new(30);
    let c = h.open(2, "d", true);
    h.take(c);
    h.send(c, cc.sync_step1());
    cc.receive(&h.take(c));
    assert_eq!(cc.text(), ca.text());
}

#[test]
fn the_resend_guard_survives_an_unload_and_reload() {
    // The first half of the crash pair is entirely pending in yrs (outside its state vector). After an
    // idle unload and reload, the guard must still know its clock range, so the second half, which
    // re-sends those clocks with different content, never reaches yrs.
    let mut h = Harness::new(CoreConfig::default());
    let [first, second] = hostile::yrs_resend_segfault_updates();
    let a = h.open(1, "d", true);
    h.send(a, message::encode_update(&first));
    h.core.handle_close(h.now, a);
    h.step();
    h.advance(Duration::from_secs(31));
    assert!(!h.core.is_loaded(&doc_id("d")));
    let b = h.open(2, "d", true);
    let before = h.logs[&doc_id("d")].events.len();
    h.send(b, message::encode_update(&second));
    assert_eq!(
        h.logs[&doc_id("d")].events.len(),
        before,
        "the re-sent range is not persisted"
    );
}

#[test]
fn a_gap_in_a_clients_clocks_is_refused() {
    let mut h = Harness::new(CoreConfig::default());
    let a = h.open(1, "d", true);
    let ca = Client::new(10);
    let _skipped = ca.insert(0, "one");
    h.send(a, ca.insert(3, "two"));
    assert_eq!(
        h.closed.get(&a),
        Some(&1013),
        "structs that would stay pending are refused"
    );
    assert!(h.logs[&doc_id("d")].events.is_empty());
}

#[test]
fn awareness_floods_are_refused() {
    let cfg = CoreConfig {
        max_awareness_clients_per_conn: 2,
        ..CoreConfig::default()
    };
    let mut h = Harness::new(cfg);
    let a = h.open(1, "d", true);
    let b = h.open(2, "d", true);
    h.send(a, awareness_msg(10, 1, "{}"));
    h.send(a, awareness_msg(11, 1, "{}"));
    assert!(!h.closed.contains_key(&a));
    h.take(b);
    let many: Vec<(u64, u64, &str)> = (100..200).map(|c| (c, 1, "{}")).collect();
    h.send(
        a,
        message::encode_awareness(&message::encode_awareness_update(&many)),
    );
    assert_eq!(h.closed.get(&a), Some(&1008));
    let seen = awareness_entries(&h.take(b));
    assert!(
        seen.iter().all(|(c, _)| *c < 100),
        "the flood was not relayed"
    );
}

#[test]
fn shared_types_cannot_nest_past_the_limit() {
    use yrs::{Array, ArrayPrelim, ArrayRef};
    let cfg = CoreConfig {
        max_type_depth: 8,
        ..CoreConfig::default()
    };
    let mut h = Harness::new(cfg);
    let a = h.open(1, "d", true);
    let client = Doc::with_client_id(10);
    let mut cur: ArrayRef = client.get_or_insert_array("a");
    let mut accepted = 0;
    for level in 1..=10 {
        let before = client.transact().state_vector();
        {
            let mut txn = client.transact_mut();
            cur = cur.insert(&mut txn, 0, ArrayPrelim::default());
        }
        let update = client.transact().encode_diff_v1(&before);
        h.send(a, message::encode_update(&update));
        if h.closed.contains_key(&a) {
            assert_eq!(level, 9, "refused exactly past the limit");
            break;
        }
        accepted = level;
    }
    assert_eq!(accepted, 8);
    assert_eq!(h.closed.get(&a), Some(&1007));
    assert_eq!(
        h.logs[&doc_id("d")].events.len(),
        8,
        "the too-deep level is not persisted"
    );

    // After a reload the tracker is rebuilt from the log and still refuses the next level.
    h.advance(Duration::from_secs(31));
    assert!(!h.core.is_loaded(&doc_id("d")));
    let b = h.open(2, "d", true);
    // Re-send the refused level 9 from a fresh connection.
    let server_sv = StateVector::decode_v1(&h.core_state_vector("d")).expect("sv");
    let again = client.transact().encode_diff_v1(&server_sv);
    h.send(b, message::encode_update(&again));
    assert_eq!(h.closed.get(&b), Some(&1007));
}
