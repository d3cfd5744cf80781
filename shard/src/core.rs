//! The sans-IO shard core: documents, their connections and awareness, and the commit-then-apply
//! pipeline. See the crate doc for the run-loop contract.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use proto::yjs::guard::{GuardError, UpdateGuard, Validated};
use proto::yjs::message::{self, Message};
use proto::yjs::nesting::NestingError;
use proto::yjs::validate;
use proto::{DocId, Epoch, Seq, UserId};
use store::{Loaded, Snapshot, StoreError};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::awareness;
use crate::config::CoreConfig;
use crate::error::ShardError;
use crate::handle::ConnId;
use crate::lifecycle::{Lifecycle, Phase};

/// Messages one connection may send before its document has loaded (then: close 1013, resync).
const MAX_QUEUED_WHILE_LOADING: usize = 64;

/// What the core asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send one binary message to a connection.
    Send {
        /// The receiving connection.
        conn: ConnId,
        /// A complete y-websocket message (shared between the receivers of a broadcast).
        msg: Arc<[u8]>,
    },
    /// Close a connection with an RFC 6455 code; the core has already forgotten it.
    Close {
        /// The connection.
        conn: ConnId,
        /// Close code.
        code: u16,
        /// Client-safe reason.
        reason: String,
    },
    /// Acquire the document (new epoch) and load its snapshot and tail; answer with `handle_loaded`.
    Load {
        /// The document.
        doc: DocId,
    },
    /// Append one `document.updated` event; answer with `handle_appended`.
    Append {
        /// The document.
        doc: DocId,
        /// The owner's epoch.
        epoch: Epoch,
        /// The event's seq.
        seq: Seq,
        /// Who sent it.
        actor: UserId,
        /// The validated Yjs update.
        update: Vec<u8>,
    },
    /// Store a snapshot (compaction); answer with `handle_snapshot_written`.
    Snapshot {
        /// The document.
        doc: DocId,
        /// The owner's epoch.
        epoch: Epoch,
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// A document was applied an update (for metrics).
    Applied {
        /// The document.
        doc: DocId,
    },
    /// A document left memory.
    Unloaded {
        /// The document.
        doc: DocId,
    },
}

struct Conn {
    doc: DocId,
    actor: UserId,
    can_write: bool,
}

/// An update sent to the store: who sent it (it is not echoed back to them) and its bytes.
struct Pending {
    origin: ConnId,
    update: Vec<u8>,
}

struct DocState {
    /// Loading (messages queue up) or ready under an epoch, updates in flight, snapshots, idleness.
    life: Lifecycle<(ConnId, Vec<u8>), Pending>,
    ydoc: Doc,
    conns: BTreeSet<ConnId>,
    awareness: awareness::Table,
    /// Awareness clients changed since the last coalesced broadcast, and when it is due.
    aw_dirty: BTreeSet<u64>,
    aw_flush_at: Option<Instant>,
    /// Stored bytes of the document: last snapshot plus updates since (an upper bound of its size).
    stored_bytes: usize,
    /// What protects yrs from update sequences: the clocks accepted per Yjs client (applied or in
    /// flight; yrs' own state vector leaves out in-flight and pending structs) and the nesting depth of
    /// every shared type.
    guard: UpdateGuard,
}

impl DocState {
    fn new(max_type_depth: u32) -> Self {
        Self {
            life: Lifecycle::loading(),
            // The server never authors content, so its own client id is irrelevant; fixed for determinism.
            ydoc: Doc::with_client_id(0),
            conns: BTreeSet::new(),
            awareness: awareness::Table::default(),
            aw_dirty: BTreeSet::new(),
            aw_flush_at: None,
            stored_bytes: 0,
            guard: UpdateGuard::new(max_type_depth),
        }
    }
}

/// The shard's state machine.
pub struct ShardCore {
    cfg: CoreConfig,
    docs: HashMap<DocId, DocState>,
    conns: HashMap<ConnId, Conn>,
    out: VecDeque<Output>,
    shutting_down: bool,
}

impl ShardCore {
    /// A core with no documents.
    pub fn new(cfg: CoreConfig) -> Self {
        Self {
            cfg,
            docs: HashMap::new(),
            conns: HashMap::new(),
            out: VecDeque::new(),
            shutting_down: false,
        }
    }

    /// Documents held in memory (loading or ready).
    pub fn loaded_docs(&self) -> usize {
        self.docs.len()
    }

    /// Connections attached.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The documents in memory.
    pub fn doc_ids(&self) -> Vec<DocId> {
        self.docs.keys().cloned().collect()
    }

    /// The document moves to another shard: its connections are closed (1012, they reconnect to the
    /// new owner and resync), committed state is snapshotted when nothing is in flight, and it leaves
    /// memory. Appends still in flight complete or fail in the store; their answers are ignored (the
    /// new owner loads whatever committed, and clients re-send what did not).
    pub fn handle_release(&mut self, now: Instant, doc: &DocId) {
        if self.docs.get(doc).is_some_and(|d| d.life.is_quiet()) {
            self.snapshot(doc);
        }
        self.fail_doc(now, doc, &ShardError::Moved);
    }

    /// Updates sent to the store and not yet answered.
    pub fn inflight(&self) -> usize {
        self.docs.values().map(|d| d.life.inflight.len()).sum()
    }

    /// Whether `doc` is in memory.
    pub fn is_loaded(&self, doc: &DocId) -> bool {
        self.docs.contains_key(doc)
    }

    /// The document's full state as a Yjs update v1 (committed content only).
    pub fn encode_state(&self, doc: &DocId) -> Option<Vec<u8>> {
        let d = self.docs.get(doc)?;
        let txn = d.ydoc.transact();
        Some(txn.encode_state_as_update_v1(&StateVector::default()))
    }

    /// The next output, if any. Drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest instant at which `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.docs
            .values()
            .flat_map(|d| {
                let idle = d.life.unload_at(self.cfg.idle_unload);
                let aw = d.awareness.oldest().map(|t| t + self.cfg.awareness_timeout);
                [idle, aw, d.aw_flush_at]
            })
            .flatten()
            .min()
    }

    fn send(&mut self, conn: ConnId, msg: Vec<u8>) {
        self.out.push_back(Output::Send {
            conn,
            msg: msg.into(),
        });
    }

    fn broadcast(&mut self, doc: &DocId, except: Option<ConnId>, msg: Vec<u8>) {
        let Some(d) = self.docs.get(doc) else { return };
        let msg: Arc<[u8]> = msg.into();
        for &c in &d.conns {
            if Some(c) != except {
                self.out.push_back(Output::Send {
                    conn: c,
                    msg: msg.clone(),
                });
            }
        }
    }

    /// A connection opened on `doc`. `can_write` is false for read-only grants.
    pub fn handle_open(
        &mut self,
        now: Instant,
        conn: ConnId,
        doc: DocId,
        actor: UserId,
        can_write: bool,
    ) {
        if self.shutting_down {
            self.close(now, conn, &ShardError::ShuttingDown);
            return;
        }
        self.conns.insert(
            conn,
            Conn {
                doc: doc.clone(),
                actor,
                can_write,
            },
        );
        let max_type_depth = self.cfg.max_type_depth;
        let d = self.docs.entry(doc.clone()).or_insert_with(|| {
            self.out.push_back(Output::Load { doc: doc.clone() });
            DocState::new(max_type_depth)
        });
        d.conns.insert(conn);
        d.life.attached();
        if d.life.is_ready() {
            self.greet(now, conn, &doc);
        }
    }

    /// The server's side of the handshake: its state vector (sync step 1) and the current awareness.
    fn greet(&mut self, _now: Instant, conn: ConnId, doc: &DocId) {
        let Some(d) = self.docs.get(doc) else { return };
        let sv = d.ydoc.transact().state_vector().encode_v1_bytes();
        let live = d.awareness.live();
        let aw = (!live.is_empty())
            .then(|| message::encode_awareness(&message::encode_awareness_update(&live)));
        self.send(conn, message::encode_sync_step1(&sv));
        if let Some(aw) = aw {
            self.send(conn, aw);
        }
    }

    /// A binary message arrived from a connection.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, bytes: Vec<u8>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let doc = c.doc.clone();
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        if !d.life.is_ready() {
            if d.life
                .queue((conn, bytes), MAX_QUEUED_WHILE_LOADING, |(c, _)| *c == conn)
                .is_err()
            {
                self.close(now, conn, &ShardError::Resync);
            }
            return;
        }
        if let Err(e) = self.process(now, conn, &doc, &bytes) {
            self.close(now, conn, &e);
        }
    }

    fn process(
        &mut self,
        now: Instant,
        conn: ConnId,
        doc: &DocId,
        bytes: &[u8],
    ) -> Result<(), ShardError> {
        let msg = Message::decode(bytes).map_err(ShardError::Malformed)?;
        match msg {
            Message::SyncStep1(sv) => {
                validate::validate_state_vector(sv, &self.cfg.limits())
                    .map_err(ShardError::Invalid)?;
                let sv = StateVector::decode_v1(sv).map_err(|_| {
                    ShardError::Invalid(validate::ValidationError::Malformed("state vector"))
                })?;
                let d = self.docs.get(doc).ok_or(ShardError::LoadFailed)?;
                let diff = d.ydoc.transact().encode_diff_v1(&sv);
                self.send(conn, message::encode_sync_step2(&diff));
            }
            Message::SyncStep2(update) | Message::Update(update) => {
                self.client_update(conn, doc, update)?
            }
            Message::Awareness(update) => self.client_awareness(now, conn, doc, update)?,
            Message::QueryAwareness => {
                let d = self.docs.get(doc).ok_or(ShardError::LoadFailed)?;
                let live = d.awareness.live();
                let msg = message::encode_awareness(&message::encode_awareness_update(&live));
                self.send(conn, msg);
            }
            // Clients have no reason to send auth messages; ignore like the reference server.
            Message::AuthPermissionDenied(_) => {}
        }
        Ok(())
    }

    fn client_update(
        &mut self,
        conn: ConnId,
        doc: &DocId,
        update: &[u8],
    ) -> Result<(), ShardError> {
        let limits = self.cfg.limits();
        // One walk validates the update and reads what the guard needs from it.
        let validated = Validated::new(update, &limits).map_err(ShardError::Invalid)?;
        let c = self.conns.get(&conn).ok_or(ShardError::LoadFailed)?;
        if !c.can_write {
            if !validated.is_empty() {
                self.send(conn, message::encode_permission_denied("read-only access"));
            }
            return Ok(());
        }
        if validated.is_empty() {
            return Ok(());
        }
        // Decoding is safe now that the validator has bounded depth, lengths and UTF-8; a decode error
        // here is still refused rather than trusted.
        Update::decode_v1(update)
            .map_err(|_| ShardError::Invalid(validate::ValidationError::Malformed("update")))?;
        let actor = c.actor.clone();
        let max = self.cfg.max_doc_bytes;
        let d = self.docs.get_mut(doc).ok_or(ShardError::LoadFailed)?;
        if !d.life.is_ready() {
            return Err(ShardError::LoadFailed);
        }
        let refused = |e: GuardError| match e {
            // Re-sent or skipped clocks: the client resyncs.
            GuardError::Overlap | GuardError::Gap => ShardError::Resync,
            GuardError::Nesting(NestingError::TooDeep) => {
                ShardError::Invalid(validate::ValidationError::TooDeep)
            }
            GuardError::Nesting(NestingError::UnknownParent) => ShardError::Resync,
            GuardError::Nesting(NestingError::Malformed) => {
                ShardError::Invalid(validate::ValidationError::Malformed("update"))
            }
        };
        // Fully re-sent structs are dropped (their delete set is kept).
        let Some(accepted) = d.guard.check(validated).map_err(refused)? else {
            return Ok(());
        };
        if d.stored_bytes + accepted.update().len() > max {
            return Err(ShardError::DocTooLarge);
        }
        // Recorded at acceptance: the client's next update may build on this one before it is
        // committed. A failed append drops the whole document state, guard included.
        let update = d.guard.commit(accepted).map_err(refused)?;
        d.stored_bytes += update.len();
        let pending = Pending {
            origin: conn,
            update: update.clone(),
        };
        let (epoch, seq) = d.life.assign(pending).ok_or(ShardError::LoadFailed)?;
        self.out.push_back(Output::Append {
            doc: doc.clone(),
            epoch,
            seq,
            actor,
            update,
        });
        Ok(())
    }

    fn client_awareness(
        &mut self,
        now: Instant,
        conn: ConnId,
        doc: &DocId,
        raw: &[u8],
    ) -> Result<(), ShardError> {
        validate::validate_awareness_update(raw, self.cfg.max_awareness_bytes)
            .map_err(ShardError::Invalid)?;
        let entries = message::decode_awareness_update(raw).map_err(ShardError::Malformed)?;
        let (per_conn, per_doc) = (
            self.cfg.max_awareness_clients_per_conn,
            self.cfg.max_awareness_states_per_doc,
        );
        let d = self.docs.get_mut(doc).ok_or(ShardError::LoadFailed)?;
        if !entries.iter().all(|e| {
            e.state_json == "null" || d.awareness.admits(conn, e.client_id, per_conn, per_doc)
        }) {
            return Err(ShardError::AwarenessLimit);
        }
        let mut changed = false;
        let coalesce = !self.cfg.awareness_flush.is_zero();
        for e in &entries {
            if d.awareness
                .apply(now, conn, e.client_id, e.clock, e.state_json)
            {
                changed = true;
                if coalesce {
                    d.aw_dirty.insert(e.client_id);
                }
            }
        }
        if changed {
            if coalesce {
                // Broadcast with the other changes of this interval (see CoreConfig::awareness_flush).
                d.aw_flush_at.get_or_insert(now + self.cfg.awareness_flush);
            } else {
                // Relayed as received, to every connection of the document (y-websocket server behaviour).
                self.broadcast(doc, None, message::encode_awareness(raw));
            }
        }
        Ok(())
    }

    fn close(&mut self, now: Instant, conn: ConnId, why: &ShardError) {
        self.forget(now, conn);
        self.out.push_back(Output::Close {
            conn,
            code: why.close_code(),
            reason: why.reason(),
        });
    }

    /// Removes a connection, telling the others that its awareness states are gone.
    fn forget(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let Some(d) = self.docs.get_mut(&c.doc) else {
            return;
        };
        d.conns.remove(&conn);
        if let Phase::Loading { queued } = &mut d.life.phase {
            queued.retain(|(q, _)| *q != conn);
        }
        // Removals this connection announced that are still waiting for the coalesced broadcast
        // (a provider's destroy() sends a null state, then closes): its entries leave the table
        // now, so they go out now.
        let mut gone: Vec<(u64, u64)> = d
            .aw_dirty
            .iter()
            .filter_map(|c| d.awareness.removed_by(*c, conn))
            .collect();
        gone.extend(d.awareness.remove_conn(conn));
        for (client, _) in &gone {
            d.aw_dirty.remove(client);
        }
        if !gone.is_empty() {
            let entries: Vec<(u64, u64, &str)> =
                gone.iter().map(|(c, k)| (*c, *k, "null")).collect();
            let msg = message::encode_awareness(&message::encode_awareness_update(&entries));
            self.broadcast(&c.doc, None, msg);
        }
        if let Some(d) = self.docs.get_mut(&c.doc) {
            if d.conns.is_empty() {
                d.life.detached(now);
            }
        }
    }

    /// A connection went away (client closed, network error, slow consumer).
    pub fn handle_close(&mut self, now: Instant, conn: ConnId) {
        self.forget(now, conn);
    }

    /// The store answered a `Load`: the new epoch and the snapshot + tail, or an error.
    pub fn handle_loaded(
        &mut self,
        now: Instant,
        doc: &DocId,
        result: Result<(Epoch, Loaded), StoreError>,
    ) {
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        let Ok((epoch, loaded)) = result else {
            self.fail_doc(now, doc, &ShardError::LoadFailed);
            return;
        };
        let Some((ydoc, bytes)) = rebuild(doc, &loaded) else {
            tracing::error!(%doc, "document state could not be rebuilt from the log");
            self.fail_doc(now, doc, &ShardError::LoadFailed);
            return;
        };
        d.ydoc = ydoc;
        d.stored_bytes = bytes;
        // From the stored updates themselves, not yrs' state vector (which leaves out pending structs).
        d.guard = UpdateGuard::from_stored(
            self.cfg.max_type_depth,
            &self.cfg.limits(),
            stored_updates(&loaded),
        );
        let attached = !d.conns.is_empty();
        let queued = d.life.ready(
            now,
            epoch,
            loaded.last_seq(),
            loaded.tail.len() as u64,
            attached,
        );
        let conns: Vec<ConnId> = d.conns.iter().copied().collect();
        for c in conns {
            self.greet(now, c, doc);
        }
        for (c, bytes) in queued {
            if self.conns.contains_key(&c) {
                if let Err(e) = self.process(now, c, doc, &bytes) {
                    self.close(now, c, &e);
                }
            }
        }
    }

    /// The store answered an `Append`.
    pub fn handle_appended(
        &mut self,
        now: Instant,
        doc: &DocId,
        epoch: Epoch,
        seq: Seq,
        result: Result<(), StoreError>,
    ) {
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        // Answers for an older incarnation of the document (after a failure and reload) are ignored.
        if !d.life.is_next_answer(epoch, seq) {
            return;
        }
        if let Err(e) = result {
            let why = if e.is_fenced() {
                ShardError::Fenced
            } else {
                ShardError::StoreUnavailable
            };
            // Nothing uncommitted was applied or shown to anyone; drop the document and let every
            // client reconnect and resync (their unacknowledged edits are still in their local docs).
            self.fail_doc(now, doc, &why);
            return;
        }
        let Some(p) = d.life.committed().map(|p| p.item) else {
            return;
        };
        if !apply_guarded(&d.ydoc, &p.update) {
            // yrs panicked: the in-memory document can no longer be trusted. Drop it; it reloads from
            // the log (where a document that cannot be rebuilt fails to load instead of crashing).
            self.fail_doc(now, doc, &ShardError::LoadFailed);
            return;
        }
        let want_snapshot = d.life.since_snapshot >= self.cfg.snapshot_every;
        self.out.push_back(Output::Applied { doc: doc.clone() });
        self.broadcast(doc, Some(p.origin), message::encode_update(&p.update));
        if want_snapshot {
            self.snapshot(doc);
        }
    }

    fn snapshot(&mut self, doc: &DocId) {
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        let Some((epoch, seq)) = d.life.snapshot_point() else {
            return;
        };
        let state = d
            .ydoc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        d.stored_bytes = state.len();
        self.out.push_back(Output::Snapshot {
            doc: doc.clone(),
            epoch,
            snapshot: Snapshot { seq, state },
        });
    }

    /// The store answered a `Snapshot`. A failed snapshot loses nothing (the events are in the log).
    pub fn handle_snapshot_written(
        &mut self,
        _now: Instant,
        doc: &DocId,
        result: Result<(), StoreError>,
    ) {
        if let Some(d) = self.docs.get_mut(doc) {
            d.life.snapshot_written(&result);
        }
    }

    fn fail_doc(&mut self, _now: Instant, doc: &DocId, why: &ShardError) {
        let Some(d) = self.docs.remove(doc) else {
            return;
        };
        for c in d.conns {
            self.conns.remove(&c);
            self.out.push_back(Output::Close {
                conn: c,
                code: why.close_code(),
                reason: why.reason(),
            });
        }
        self.out.push_back(Output::Unloaded { doc: doc.clone() });
    }

    /// Timers: awareness expiry and idle-document unload.
    pub fn handle_timeout(&mut self, now: Instant) {
        let aw_deadline = now.checked_sub(self.cfg.awareness_timeout);
        let mut expired: Vec<(DocId, Vec<(u64, u64)>)> = Vec::new();
        let mut idle: Vec<DocId> = Vec::new();
        let mut coalesced: Vec<(DocId, Vec<u8>)> = Vec::new();
        for (id, d) in self.docs.iter_mut() {
            if d.aw_flush_at.is_some_and(|t| now >= t) {
                d.aw_flush_at = None;
                let dirty = std::mem::take(&mut d.aw_dirty);
                let entries: Vec<(u64, u64, &str)> =
                    dirty.iter().filter_map(|c| d.awareness.get(*c)).collect();
                if !entries.is_empty() {
                    let msg =
                        message::encode_awareness(&message::encode_awareness_update(&entries));
                    coalesced.push((id.clone(), msg));
                }
            }
            if let Some(deadline) = aw_deadline {
                let gone = d.awareness.expire(deadline);
                if !gone.is_empty() {
                    expired.push((id.clone(), gone));
                }
            }
            if d.life
                .unload_due(now, self.cfg.idle_unload, !d.conns.is_empty())
            {
                idle.push(id.clone());
            }
        }
        for (doc, msg) in coalesced {
            self.broadcast(&doc, None, msg);
        }
        for (doc, gone) in expired {
            let entries: Vec<(u64, u64, &str)> =
                gone.iter().map(|(c, k)| (*c, *k, "null")).collect();
            let msg = message::encode_awareness(&message::encode_awareness_update(&entries));
            self.broadcast(&doc, None, msg);
        }
        for doc in idle {
            self.unload(&doc);
        }
    }

    /// Snapshots (if anything changed since the last snapshot) and drops the document from memory.
    /// Loading it again is safe even while that snapshot is being written: the store returns either the
    /// old snapshot with the full tail or the new one with a shorter tail, which hold the same state.
    fn unload(&mut self, doc: &DocId) {
        self.snapshot(doc);
        self.docs.remove(doc);
        self.out.push_back(Output::Unloaded { doc: doc.clone() });
    }

    /// Shutdown: refuse new connections, close the open ones (1001). In-flight appends still complete
    /// through `handle_appended`; call [`ShardCore::handle_shutdown_flush`] once none are in flight.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in conns {
            self.close(now, c, &ShardError::ShuttingDown);
        }
    }

    /// Final step of shutdown: snapshot every changed document and unload everything.
    pub fn handle_shutdown_flush(&mut self, _now: Instant) {
        let docs: Vec<DocId> = self.docs.keys().cloned().collect();
        for doc in docs {
            if self
                .docs
                .get(&doc)
                .is_some_and(|d| d.life.inflight.is_empty())
            {
                self.unload(&doc);
            }
        }
    }
}

trait EncodeSv {
    fn encode_v1_bytes(&self) -> Vec<u8>;
}

impl EncodeSv for StateVector {
    fn encode_v1_bytes(&self) -> Vec<u8> {
        use yrs::updates::encoder::Encode;
        self.encode_v1()
    }
}

/// The snapshot state and the tail's updates, in order.
fn stored_updates(loaded: &Loaded) -> impl Iterator<Item = &[u8]> {
    let snapshot = loaded.snapshot.iter().map(|s| s.state.as_slice());
    let tail = loaded.tail.iter().filter_map(|e| match &e.payload {
        proto::EventPayload::DocumentUpdated(p) => Some(p.update.0.as_slice()),
        _ => None,
    });
    snapshot.chain(tail)
}

/// Builds a document from a snapshot and tail. An event on which yrs panics is skipped (and the
/// document rebuilt without it) so that one poisoned event cannot make a document unloadable; a
/// snapshot on which yrs panics makes the load fail.
fn rebuild(doc: &DocId, loaded: &Loaded) -> Option<(Doc, usize)> {
    let mut skip: Vec<Seq> = Vec::new();
    loop {
        let ydoc = Doc::with_client_id(0);
        let mut bytes = 0;
        if let Some(snap) = &loaded.snapshot {
            if !apply_guarded(&ydoc, &snap.state) {
                return None;
            }
            bytes += snap.state.len();
        }
        let mut poisoned = None;
        for e in loaded.tail.iter().filter(|e| !skip.contains(&e.seq)) {
            if let proto::EventPayload::DocumentUpdated(p) = &e.payload {
                if !apply_guarded(&ydoc, &p.update.0) {
                    poisoned = Some(e.seq);
                    break;
                }
                bytes += p.update.0.len();
            }
        }
        match poisoned {
            None => return Some((ydoc, bytes)),
            Some(seq) if skip.len() < 16 => {
                tracing::error!(%doc, %seq, "skipping a stored update that makes yrs panic");
                skip.push(seq);
            }
            Some(_) => return None,
        }
    }
}

/// Applies a stored or committed update, containing any panic inside yrs. Returns false on a panic.
/// (Updates are validated before they are stored; this is the second line of defence.)
fn apply_guarded(doc: &Doc, update: &[u8]) -> bool {
    let Ok(u) = Update::decode_v1(update) else {
        return true;
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = doc.transact_mut().apply_update(u);
    }))
    .is_ok()
}
