//! The workload: document writers (y-websocket) making uniquely tagged edits, and chat clients
//! (native protocol `/v1`) sending uniquely identified messages. Every client reconnects to a random
//! gateway when its socket drops (what a load balancer without sticky sessions does), and resyncs the
//! way the stock clients do: a writer answers the server's sync step 1 with everything the server
//! lacks; a chat client rejoins with `since` and re-sends unacknowledged messages with the same ids.
//!
//! What counts as acknowledged:
//! * a document edit: once another client has received it (the server broadcasts only committed
//!   updates, so that is a committed edit somebody observed);
//! * a chat message: once its sender got the `ack` (sent only after commit).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bench::ws::{self, Msg, WsUrl};
use proto::yjs::message::{self, Message};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use yrs::types::{Change, Observable};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Any, Array, Doc, Out, ReadTxn, StateVector, Transact, Update};

use crate::rng::Rng;

/// The document id of doc `i`.
pub fn doc_name(i: usize) -> String {
    format!("chaos-d{i}")
}

/// The room id of room `i`.
pub fn room_name(i: usize) -> String {
    format!("chaos-r{i}")
}

/// Everything the clients observed, for the offline checks.
#[derive(Default)]
pub struct Record {
    /// Tag → (doc, written at).
    pub written: HashMap<String, (usize, Instant)>,
    /// Tag → (doc, acknowledged at).
    pub acked: HashMap<String, (usize, Instant)>,
    /// Per doc: (written, acknowledged) of each acknowledged tag.
    pub doc_acks: BTreeMap<usize, Vec<(Instant, Instant)>>,
    /// (room, message id) → (epoch, seq, acknowledged at, written at).
    pub chat_acked: HashMap<(usize, String), (u64, u64, Instant, Instant)>,
    /// Acks for one message id with different seqs.
    pub ack_conflicts: u64,
    /// One message id seen by a client at two different seqs.
    pub visible_duplicates: u64,
    /// Chat resumes that could not recover (`recovered: false`).
    pub resets: u64,
    /// A client received an event whose seq skipped past one it never saw (outside a reset).
    pub client_gaps: u64,
    /// Socket (re)connections made.
    pub connects: u64,
}

/// A shared, lockable record.
pub type Shared = Arc<Mutex<Record>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Record> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every client needs.
#[derive(Clone)]
pub struct Ctx {
    /// Gateway ports.
    pub gateways: Vec<u16>,
    /// The record.
    pub record: Shared,
    /// Milliseconds between one client's edits or messages (jittered ±50 %).
    pub interval_ms: u64,
}

async fn connect(ctx: &Ctx, rng: &mut Rng, path: &str) -> Option<(ws::Reader, ws::Writer)> {
    let port = ctx.gateways[rng.below(ctx.gateways.len() as u64) as usize];
    let url = WsUrl::parse(&format!("ws://127.0.0.1:{port}/")).ok()?;
    let r = ws::connect(&url, path, None, Duration::from_secs(5))
        .await
        .ok();
    if r.is_some() {
        lock(&ctx.record).connects += 1;
    }
    r
}

/// Forwards one socket's messages to a channel (fastwebsockets reads are not cancel-safe, so the
/// read never races a timer).
fn spawn_reader(mut reader: ws::Reader, writer: ws::Writer) -> mpsc::Receiver<Msg> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let m = ws::read(&mut reader, &writer).await;
            let end = matches!(m, Msg::Closed(_));
            if tx.send(m).await.is_err() || end {
                return;
            }
        }
    });
    rx
}

/// A client's full replica of a document, with the tags it has seen.
pub struct Replica {
    /// The document.
    pub doc: Doc,
    array: yrs::ArrayRef,
}

impl Replica {
    /// An empty replica; `on_insert` sees every tag integrated (local or remote).
    pub fn new(client_id: u64, on_insert: impl Fn(&str) + Send + Sync + 'static) -> Self {
        let doc = Doc::with_client_id(client_id);
        let array = doc.get_or_insert_array("tags");
        array.observe("chaos", move |txn, e| {
            for c in e.delta(txn) {
                if let Change::Added(values) = c {
                    for v in values {
                        if let Out::Any(Any::String(s)) = v {
                            on_insert(s);
                        }
                    }
                }
            }
        });
        Self { doc, array }
    }

    /// Applies an update v1 from the server.
    pub fn apply(&self, update: &[u8]) -> bool {
        let Ok(u) = Update::decode_v1(update) else {
            return false;
        };
        self.doc.transact_mut().apply_update(u).is_ok()
    }

    /// Appends `tag`; returns the update carrying it.
    pub fn push(&self, tag: &str) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        self.array.push_back(&mut txn, tag);
        txn.encode_update_v1()
    }

    /// The encoded state vector.
    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// Everything the server lacks, given its state vector.
    pub fn diff(&self, sv: &[u8]) -> Vec<u8> {
        let sv = StateVector::decode_v1(sv).unwrap_or_default();
        self.doc.transact().encode_state_as_update_v1(&sv)
    }

    /// The tags, in document order.
    pub fn tags(&self) -> Vec<String> {
        let txn = self.doc.transact();
        self.array
            .iter(&txn)
            .filter_map(|v| match v {
                Out::Any(Any::String(s)) => Some(s.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Whether pending (not yet integrable) structs remain.
    pub fn has_pending(&self) -> bool {
        self.doc.transact().store().pending_update().is_some()
    }
}

/// A document writer: edits doc `doc` until `stop`, then keeps its socket to converge until `done`.
pub async fn doc_writer(
    ctx: Ctx,
    doc: usize,
    writer: usize,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
    mut done: watch::Receiver<bool>,
    out: Arc<Mutex<Option<Replica>>>,
) {
    let prefix = format!("d{doc}.w{writer}.");
    let rec = ctx.record.clone();
    let mine = prefix.clone();
    let replica = Replica::new((doc * 64 + writer + 1) as u64, move |tag| {
        if tag.starts_with(&mine) {
            return;
        }
        let now = Instant::now();
        let mut r = lock(&rec);
        if r.acked.contains_key(tag) {
            return;
        }
        let written = r.written.get(tag).map(|(_, t)| *t);
        r.acked.insert(tag.to_owned(), (doc, now));
        if let Some(w) = written {
            r.doc_acks.entry(doc).or_default().push((w, now));
        }
    });
    let path = format!("/doc/{}", doc_name(doc));
    let mut n = 0u64;
    let mut backoff = Duration::from_millis(50);
    while !*done.borrow() {
        let Some((reader, w)) = connect(&ctx, &mut rng, &path).await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(1000));
            continue;
        };
        backoff = Duration::from_millis(50);
        let mut rx = spawn_reader(reader, w.clone());
        if ws::send(&w, message::encode_sync_step1(&replica.state_vector()))
            .await
            .is_err()
        {
            continue;
        }
        let mut next_edit =
            Instant::now() + rng.millis(ctx.interval_ms / 2, ctx.interval_ms * 3 / 2);
        loop {
            let writing = !*stop.borrow();
            tokio::select! {
                m = rx.recv() => {
                    let Some(Msg::Binary(b)) = m else {
                        if matches!(m, Some(Msg::Text(_))) { continue; }
                        break;
                    };
                    match Message::decode(&b) {
                        Ok(Message::SyncStep1(sv)) => {
                            // What a y-websocket provider does: answer with everything the server lacks
                            // (this is how edits the server never committed are sent again).
                            let diff = replica.diff(sv);
                            if ws::send(&w, message::encode_sync_step2(&diff)).await.is_err() {
                                break;
                            }
                        }
                        Ok(Message::SyncStep2(u)) | Ok(Message::Update(u)) => {
                            replica.apply(u);
                        }
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(next_edit), if writing => {
                    let tag = format!("{prefix}{n}");
                    n += 1;
                    lock(&ctx.record).written.insert(tag.clone(), (doc, Instant::now()));
                    let update = replica.push(&tag);
                    next_edit = Instant::now() + rng.millis(ctx.interval_ms / 2, ctx.interval_ms * 3 / 2);
                    if ws::send(&w, message::encode_update(&update)).await.is_err() {
                        break;
                    }
                }
                _ = stop.changed(), if writing => {}
                _ = done.changed() => {
                    if *done.borrow() {
                        ws::close(&w).await;
                        break;
                    }
                }
            }
        }
    }
    *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(replica);
}

/// Connects a fresh client to doc `doc` and returns its replica once the server's state arrived.
pub async fn fresh_load(ctx: &Ctx, doc: usize, rng: &mut Rng) -> Option<Replica> {
    let path = format!("/doc/{}", doc_name(doc));
    for _ in 0..50 {
        let Some((reader, w)) = connect(ctx, rng, &path).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut rx = spawn_reader(reader, w.clone());
        let replica = Replica::new(1_000_000 + doc as u64, |_| {});
        let _ = ws::send(&w, message::encode_sync_step1(&replica.state_vector())).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            let Some(Msg::Binary(b)) = m else { break };
            if let Ok(Message::SyncStep2(u)) = Message::decode(&b) {
                replica.apply(u);
                ws::close(&w).await;
                return Some(replica);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

struct Pending {
    id: String,
    text: String,
    written: Instant,
    /// When to send (again); `None` while it waits for an answer.
    send_at: Option<Instant>,
}

/// A chat client: joins room `room`, sends messages until `stop`, then until every message it sent
/// is acknowledged; returns how many never were.
pub async fn chat_client(
    ctx: Ctx,
    room: usize,
    client: usize,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) -> usize {
    let room_id = room_name(room);
    let mut last_seq: u64 = 0;
    let mut last_epoch: u64 = 0;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut n = 0u64;
    let mut backoff = Duration::from_millis(50);
    let mut reset = false;
    while !*stop.borrow() || !pending.is_empty() {
        let Some((reader, w)) = connect(&ctx, &mut rng, "/v1").await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(1000));
            continue;
        };
        backoff = Duration::from_millis(50);
        let mut rx = spawn_reader(reader, w.clone());
        let mut joined = false;
        let mut join_at = Some(Instant::now());
        let mut next_msg =
            Instant::now() + rng.millis(ctx.interval_ms / 2, ctx.interval_ms * 3 / 2);
        for p in pending.iter_mut() {
            p.send_at = Some(Instant::now());
        }
        loop {
            let due = pending
                .iter()
                .filter_map(|p| p.send_at)
                .min()
                .filter(|_| joined);
            let wake = [join_at, due, Some(next_msg)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                m = rx.recv() => {
                    let Some(Msg::Text(t)) = m else {
                        if matches!(m, Some(Msg::Binary(_))) { continue; }
                        break;
                    };
                    let Ok(v) = serde_json::from_slice::<Value>(&t) else { continue };
                    match v["t"].as_str().unwrap_or_default() {
                        "joined" => {
                            joined = true;
                            if v.get("recovered") == Some(&Value::Bool(false)) {
                                lock(&ctx.record).resets += 1;
                                reset = true;
                            }
                            for e in v["events"].as_array().cloned().unwrap_or_default() {
                                see(&ctx, room, &e, &mut last_seq, &mut last_epoch, &mut seen, &mut reset);
                            }
                            for p in pending.iter_mut() {
                                p.send_at = Some(Instant::now());
                            }
                        }
                        "event" => see(&ctx, room, &v["event"], &mut last_seq, &mut last_epoch, &mut seen, &mut reset),
                        "ack" => {
                            let id = v["id"].as_str().unwrap_or_default().to_owned();
                            if let Some(i) = pending.iter().position(|p| p.id == id) {
                                let p = pending.remove(i).expect("index is valid");
                                let (epoch, seq) = (v["epoch"].as_u64().unwrap_or(0), v["seq"].as_u64().unwrap_or(0));
                                let mut r = lock(&ctx.record);
                                match r.chat_acked.get(&(room, id.clone())) {
                                    Some((_, s, _, _)) if *s != seq => r.ack_conflicts += 1,
                                    Some(_) => {}
                                    None => {
                                        r.chat_acked.insert((room, id), (epoch, seq, Instant::now(), p.written));
                                    }
                                }
                            }
                        }
                        "error" => {
                            let id = v["id"].as_str().unwrap_or_default();
                            if id.starts_with('j') {
                                joined = false;
                                join_at = Some(Instant::now() + Duration::from_millis(300));
                            } else if let Some(p) = pending.iter_mut().find(|p| p.id == id) {
                                // `unavailable` (outcome unknown) or anything transient: same id again.
                                p.send_at = Some(Instant::now() + Duration::from_millis(300));
                            }
                        }
                        "room.closed" => {
                            joined = false;
                            join_at = Some(Instant::now() + Duration::from_millis(200));
                        }
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if join_at.is_some_and(|t| now >= t) {
                        join_at = None;
                        let mut j = json!({ "t": "join", "id": format!("j{}", rng.next_u64()), "room": room_id });
                        if last_seq > 0 {
                            j["since"] = json!({ "epoch": last_epoch, "seq": last_seq });
                        }
                        if ws::send_text(&w, j.to_string()).await.is_err() { break; }
                    }
                    if now >= next_msg {
                        next_msg = now + rng.millis(ctx.interval_ms / 2, ctx.interval_ms * 3 / 2);
                        if !*stop.borrow() {
                            let id = format!("r{room}c{client}m{n}");
                            n += 1;
                            pending.push_back(Pending { id: id.clone(), text: format!("hello {id}"), written: now, send_at: Some(now) });
                        }
                    }
                    if joined {
                        let mut failed = false;
                        for p in pending.iter_mut() {
                            if p.send_at.is_some_and(|t| now >= t) {
                                p.send_at = None;
                                let m = json!({ "t": "send", "id": p.id, "room": room_id, "text": p.text });
                                if ws::send_text(&w, m.to_string()).await.is_err() { failed = true; break; }
                            }
                        }
                        if failed { break; }
                    }
                }
                _ = stop.changed() => {}
            }
            if *stop.borrow() && pending.is_empty() {
                ws::close(&w).await;
                return 0;
            }
        }
    }
    pending.len()
}

fn see(
    ctx: &Ctx,
    _room: usize,
    e: &Value,
    last_seq: &mut u64,
    last_epoch: &mut u64,
    seen: &mut HashMap<String, u64>,
    reset: &mut bool,
) {
    let Some(seq) = e["seq"].as_u64() else { return };
    if seq <= *last_seq {
        return; // a redelivery: the client dedupes by seq
    }
    // Members see every committed event of the room in order; after a resume, exactly the missed
    // ones. A jump is an event this client never saw (unless resume said it could not recover).
    if *last_seq > 0 && seq != *last_seq + 1 && !*reset {
        lock(&ctx.record).client_gaps += 1;
    }
    *reset = false;
    *last_seq = seq;
    *last_epoch = e["epoch"].as_u64().unwrap_or(*last_epoch);
    if e["type"] != "chat.message.sent" {
        return;
    }
    let Some(id) = e["payload"]["client_msg_id"].as_str() else {
        return;
    };
    if let Some(prev) = seen.insert(id.to_owned(), seq) {
        if prev != seq {
            lock(&ctx.record).visible_duplicates += 1;
        }
    }
}
