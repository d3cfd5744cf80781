//! The sans-IO room core: chat (persisted, ordered, idempotent, resumable), presence (many connections
//! per user merged into one entry) and typing (ephemeral), for every room this shard owns.
//!
//! Same contract as [`crate::core::ShardCore`]: inputs through `handle_*(now, …)`, results through
//! [`RoomCore::poll_output`], the next deadline through [`RoomCore::poll_timeout`]; no clock, no IO.
//!
//! Invariants kept here:
//! * Observed ⇒ durable: a chat event (sent, edited, deleted, user joined/left) is shown to members and
//!   acknowledged to its sender only once the store has committed it (`handle_appended`).
//! * Order: every member receives a room's events in `seq` order; resume replays exactly the events after
//!   the client's position, from the room's in-memory window of the last `history_window` events.
//! * No visible duplicate: a request id already used by the same user for an event in the window (or in
//!   flight) is acknowledged with the original `(epoch, seq)` and appends nothing.
//! * Budgets: presence and typing changes are gathered per room and broadcast at most once per
//!   `presence_flush` each, however many members chatter.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use proto::event::{ChatMessageDeletedV1, ChatMessageEditedV1, ChatMessageSentV1, UserPresenceV1};
use proto::{Epoch, Event, EventPayload, RoomId, Seq, UserId};
use serde::{Deserialize, Serialize};
use store::{Loaded, Snapshot, StoreError};

use crate::config::RoomConfig;
use crate::core::ConnId;

/// Requests one connection may queue for a room that is still loading.
const MAX_QUEUED_WHILE_LOADING: usize = 64;

/// What a connection may do in a room (from its token's `rooms` grants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomAccess {
    /// Join, read history, receive events, presence and typing, publish its own presence.
    Read,
    /// Read plus send chat messages, edit and delete its own, and typing indicators.
    Write,
    /// Write plus edit and delete anyone's messages.
    Admin,
}

/// A position in a room's event stream: the `(epoch, seq)` of the last event a client has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The epoch of that event.
    pub epoch: Epoch,
    /// Its seq (0 with epoch 0: "before the first event").
    pub seq: Seq,
}

/// A client's request about one room (parsed and size-checked for framing by the gateway).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum RoomRequest {
    /// Become a member; optionally resume after `since` and publish an initial presence state.
    Join {
        /// The last event the client saw, to receive exactly the ones after it.
        since: Option<Position>,
        /// Initial presence state of this connection (JSON).
        state: Option<serde_json::Value>,
    },
    /// Stop being a member.
    Leave,
    /// A chat message; the request id is its idempotency key.
    Send {
        /// Text.
        text: String,
    },
    /// New text for an earlier message.
    Edit {
        /// The `chat.message.sent` event's seq.
        target: Seq,
        /// Text.
        text: String,
    },
    /// Withdraw an earlier message.
    Delete {
        /// The `chat.message.sent` event's seq.
        target: Seq,
    },
    /// Replace this connection's presence state.
    Presence {
        /// The state (JSON).
        state: serde_json::Value,
    },
    /// Typing started (`true`) or stopped.
    Typing {
        /// Whether the user is typing.
        on: bool,
    },
}

/// Why a room request was refused. Each has a stable code used on the wire (see docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// A field is missing, mistyped or invalid.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A message text or presence state over its size limit.
    #[error("too large: {0}")]
    TooLarge(&'static str),
    /// The connection's grant does not allow this.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The connection has not joined this room.
    #[error("not a member of this room")]
    UnknownRoom,
    /// The target message is not in the room's window, or was deleted.
    #[error("no such message")]
    NotFound,
    /// A configured limit (members per room, requests queued while loading).
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// The store failed, or the room could not be loaded; retry (rejoin) later.
    #[error("room unavailable, retry")]
    Unavailable,
    /// The server is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
    /// The room moved to another shard (ring change or drain); rejoin.
    #[error("room moved to another shard, rejoin")]
    Moved,
}

impl RoomError {
    /// The wire code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::TooLarge(_) => "too_large",
            Self::Forbidden(_) => "forbidden",
            Self::UnknownRoom => "unknown_room",
            Self::NotFound => "not_found",
            Self::Limit(_) => "limit",
            Self::Unavailable => "unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::Moved => "moved",
        }
    }
}

/// What the room core asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomOutput {
    /// Send one text (JSON) frame to a connection.
    Send {
        /// The receiver.
        conn: ConnId,
        /// The frame (shared between the receivers of a broadcast).
        msg: Arc<[u8]>,
    },
    /// Acquire the room (new epoch) and load its snapshot and tail; answer with `handle_loaded`.
    Load {
        /// The room.
        room: RoomId,
    },
    /// Append one event; answer with `handle_appended` (passing the committed event back).
    Append {
        /// The room.
        room: RoomId,
        /// The owner's epoch.
        epoch: Epoch,
        /// The event's seq.
        seq: Seq,
        /// Who caused it.
        actor: UserId,
        /// What happened.
        payload: EventPayload,
    },
    /// Store a snapshot (the window and who is present); answer with `handle_snapshot_written`.
    Snapshot {
        /// The room.
        room: RoomId,
        /// The owner's epoch.
        epoch: Epoch,
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// The connection is in no room of this shard any more (the driver may drop its sink).
    Detached {
        /// The connection.
        conn: ConnId,
    },
    /// A room left memory.
    Unloaded {
        /// The room.
        room: RoomId,
    },
}

/// A committed event in the window, with its JSON rendered once.
struct Committed {
    event: Event,
    json: Arc<str>,
}

struct Member {
    user: UserId,
    access: RoomAccess,
    /// Presence state and when it was last set (a counter, for "most recent tab wins"). Kept parsed:
    /// every presence broadcast and join reply clones it instead of parsing it again.
    state: Option<Arc<serde_json::Value>>,
    state_at: u64,
    typing_until: Option<Instant>,
}

struct Pending {
    epoch: Epoch,
    seq: Seq,
    payload: EventPayload,
    /// Connections waiting for the ack, with their request ids and whether theirs was a retry (a
    /// retry while in flight adds one).
    waiters: Vec<(ConnId, String, bool)>,
}

struct Queued {
    conn: ConnId,
    user: UserId,
    access: RoomAccess,
    rid: Option<String>,
    req: RoomRequest,
}

enum Phase {
    Loading { queued: VecDeque<Queued> },
    Ready { epoch: Epoch },
}

struct RoomState {
    phase: Phase,
    members: BTreeMap<ConnId, Member>,
    users: BTreeMap<UserId, BTreeSet<ConnId>>,
    window: VecDeque<Committed>,
    /// (user, request id) → seq, for the window's chat events and those in flight.
    keys: HashMap<(UserId, String), Seq>,
    applied: Seq,
    next: Seq,
    inflight: VecDeque<Pending>,
    /// Users whose last joined/left event (accepted, maybe in flight) is `user.joined`.
    present: BTreeSet<UserId>,
    /// The same over committed events only (what a snapshot at `applied` records).
    committed_present: BTreeSet<UserId>,
    /// After a load: users the log says are present, and when they count as gone if they do not
    /// come back (the previous owner died without writing their `user.left`).
    ghosts: BTreeMap<UserId, Instant>,
    presence_dirty: BTreeSet<UserId>,
    typing_sent: Vec<UserId>,
    typing_next: Option<Instant>,
    flush_at: Option<Instant>,
    last_flush: Option<Instant>,
    since_snapshot: u64,
    idle_since: Option<Instant>,
    clock: u64,
}

impl RoomState {
    fn new() -> Self {
        Self {
            phase: Phase::Loading {
                queued: VecDeque::new(),
            },
            members: BTreeMap::new(),
            users: BTreeMap::new(),
            window: VecDeque::new(),
            keys: HashMap::new(),
            applied: Seq(0),
            next: Seq(1),
            inflight: VecDeque::new(),
            present: BTreeSet::new(),
            committed_present: BTreeSet::new(),
            ghosts: BTreeMap::new(),
            presence_dirty: BTreeSet::new(),
            typing_sent: Vec::new(),
            typing_next: None,
            flush_at: None,
            last_flush: None,
            since_snapshot: 0,
            idle_since: None,
            clock: 0,
        }
    }

    fn epoch(&self) -> Option<Epoch> {
        match self.phase {
            Phase::Ready { epoch } => Some(epoch),
            Phase::Loading { .. } => None,
        }
    }

    fn committed(&self, seq: Seq) -> Option<&Committed> {
        let first = self.window.front()?.event.seq;
        let idx = seq.0.checked_sub(first.0)? as usize;
        self.window.get(idx)
    }

    /// The typists now: users with a connection whose typing indicator has not expired.
    fn typists(&self, now: Instant) -> Vec<UserId> {
        let mut v: Vec<UserId> = self
            .members
            .values()
            .filter(|m| m.typing_until.is_some_and(|t| t > now))
            .map(|m| m.user.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn presence_entry(&self, user: &UserId) -> Option<serde_json::Value> {
        let conns = self.users.get(user)?;
        let state = conns
            .iter()
            .filter_map(|c| self.members.get(c))
            .filter(|m| m.state.is_some())
            .max_by_key(|m| m.state_at)
            .and_then(|m| m.state.as_deref().cloned())
            .unwrap_or(serde_json::Value::Null);
        Some(serde_json::json!({ "user": user, "state": state, "connections": conns.len() }))
    }

    fn push_window(&mut self, c: Committed, max: usize) {
        if let Some(key) = idempotency_key(&c.event) {
            self.keys.insert(key, c.event.seq);
        }
        self.window.push_back(c);
        while self.window.len() > max.max(1) {
            if let Some(old) = self.window.pop_front() {
                if let Some(key) = idempotency_key(&old.event) {
                    if self.keys.get(&key) == Some(&old.event.seq) {
                        self.keys.remove(&key);
                    }
                }
            }
        }
    }

    /// Whether `target` was deleted (committed or in flight).
    fn is_deleted(&self, target: Seq) -> bool {
        let deletes = |p: &EventPayload| matches!(p, EventPayload::ChatMessageDeleted(d) if d.target == target);
        self.window.iter().any(|c| deletes(&c.event.payload))
            || self.inflight.iter().any(|p| deletes(&p.payload))
    }
}

/// The (user, request id) a chat event was sent under.
fn idempotency_key(e: &Event) -> Option<(UserId, String)> {
    let id = match &e.payload {
        EventPayload::ChatMessageSent(p) => &p.client_msg_id,
        EventPayload::ChatMessageEdited(p) => &p.client_msg_id,
        EventPayload::ChatMessageDeleted(p) => &p.client_msg_id,
        _ => return None,
    };
    Some((e.actor.clone(), id.clone()))
}

/// A room snapshot: the window and who is present. Loading it plus the tail after it restores the
/// room's state without reading its whole history.
#[derive(Serialize, Deserialize)]
struct RoomSnapshot {
    v: u32,
    window: Vec<Event>,
    present: Vec<UserId>,
}

/// The rooms of one shard.
pub struct RoomCore {
    cfg: RoomConfig,
    idle_unload: std::time::Duration,
    snapshot_every: u64,
    rooms: HashMap<RoomId, RoomState>,
    conns: HashMap<ConnId, BTreeSet<RoomId>>,
    out: VecDeque<RoomOutput>,
    shutting_down: bool,
}

impl RoomCore {
    /// A core with no rooms.
    pub fn new(cfg: RoomConfig, idle_unload: std::time::Duration, snapshot_every: u64) -> Self {
        Self {
            cfg,
            idle_unload,
            snapshot_every: snapshot_every.max(1),
            rooms: HashMap::new(),
            conns: HashMap::new(),
            out: VecDeque::new(),
            shutting_down: false,
        }
    }

    /// Rooms in memory (loading or ready).
    pub fn loaded_rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Events sent to the store and not yet answered.
    pub fn inflight(&self) -> usize {
        self.rooms.values().map(|r| r.inflight.len()).sum()
    }

    /// The rooms in memory.
    pub fn room_ids(&self) -> Vec<RoomId> {
        self.rooms.keys().cloned().collect()
    }

    /// The room moves to another shard: committed state is snapshotted (when nothing is in flight),
    /// members get `room.closed` with code `moved` (the client rejoins, and resumes on the new owner),
    /// requests in flight get `unavailable` (their outcome is unknown: the client re-sends them with
    /// the same id, and the new owner recognises a committed one). No `user.left` is written: members
    /// who do not rejoin the new owner become its ghosts.
    pub fn handle_release(&mut self, _now: Instant, room: &RoomId) {
        if self
            .rooms
            .get(room)
            .is_some_and(|r| r.inflight.is_empty() && matches!(r.phase, Phase::Ready { .. }))
        {
            self.snapshot(room);
        }
        self.fail_room(room, &RoomError::Moved);
    }

    /// The last committed seq of `room`, if it is loaded and ready.
    pub fn last_seq(&self, room: &RoomId) -> Option<Seq> {
        self.rooms
            .get(room)
            .filter(|r| r.epoch().is_some())
            .map(|r| r.applied)
    }

    /// Members of `room` (connections), if it is loaded.
    pub fn members(&self, room: &RoomId) -> Option<usize> {
        self.rooms.get(room).map(|r| r.members.len())
    }

    /// The next output, if any. Drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<RoomOutput> {
        self.out.pop_front()
    }

    /// The earliest instant at which `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rooms
            .values()
            .flat_map(|r| {
                let quiet = r.inflight.is_empty()
                    && r.ghosts.is_empty()
                    && matches!(r.phase, Phase::Ready { .. });
                let idle = r.idle_since.filter(|_| quiet).map(|t| t + self.idle_unload);
                let ghost = r.ghosts.values().min().copied();
                [idle, ghost, r.flush_at, r.typing_next]
            })
            .flatten()
            .min()
    }

    fn send(&mut self, conn: ConnId, v: &serde_json::Value) {
        let msg: Arc<[u8]> = serde_json::to_vec(v).unwrap_or_default().into();
        self.out.push_back(RoomOutput::Send { conn, msg });
    }

    fn broadcast(&mut self, room: &RoomId, msg: Arc<[u8]>) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        for &conn in r.members.keys() {
            self.out.push_back(RoomOutput::Send {
                conn,
                msg: msg.clone(),
            });
        }
    }

    fn reply_error(&mut self, conn: ConnId, room: &RoomId, rid: Option<&str>, e: &RoomError) {
        self.send(
            conn,
            &serde_json::json!({
                "t": "error", "id": rid, "room": room, "code": e.code(), "message": e.to_string()
            }),
        );
    }

    fn schedule_flush(&mut self, now: Instant, room: &RoomId) {
        let flush = self.cfg.presence_flush;
        if let Some(r) = self.rooms.get_mut(room) {
            r.flush_at.get_or_insert(now + flush);
        }
    }

    /// A request from connection `conn` (user `user`, with `access` in this room).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        access: RoomAccess,
        room: RoomId,
        rid: Option<String>,
        req: RoomRequest,
    ) {
        self.request(now, conn, user, access, room, rid, req);
        // A refused join (or any request from a connection in no room here) leaves nothing that
        // needs the socket's sink: let the driver drop it, after the reply.
        if !self.conns.contains_key(&conn) {
            self.out.push_back(RoomOutput::Detached { conn });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        access: RoomAccess,
        room: RoomId,
        rid: Option<String>,
        req: RoomRequest,
    ) {
        if self.shutting_down {
            self.reply_error(conn, &room, rid.as_deref(), &RoomError::ShuttingDown);
            return;
        }
        let is_join = matches!(req, RoomRequest::Join { .. });
        if !self.rooms.contains_key(&room) {
            if !is_join {
                self.reply_error(conn, &room, rid.as_deref(), &RoomError::UnknownRoom);
                return;
            }
            self.rooms.insert(room.clone(), RoomState::new());
            self.out.push_back(RoomOutput::Load { room: room.clone() });
        }
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if let Phase::Loading { queued } = &mut r.phase {
            // Only a connection whose join is queued here can have anything else to say.
            let joining = queued
                .iter()
                .any(|q| q.conn == conn && matches!(q.req, RoomRequest::Join { .. }));
            if !is_join && !joining {
                self.reply_error(conn, &room, rid.as_deref(), &RoomError::UnknownRoom);
                return;
            }
            let mine = queued.iter().filter(|q| q.conn == conn).count();
            if mine >= MAX_QUEUED_WHILE_LOADING {
                self.reply_error(
                    conn,
                    &room,
                    rid.as_deref(),
                    &RoomError::Limit("requests queued while the room loads"),
                );
                return;
            }
            queued.push_back(Queued {
                conn,
                user,
                access,
                rid,
                req,
            });
            if is_join {
                self.conns.entry(conn).or_default().insert(room);
            }
            return;
        }
        if let Err(e) = self.process(now, conn, user, access, &room, rid.as_deref(), req) {
            self.reply_error(conn, &room, rid.as_deref(), &e);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn process(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        access: RoomAccess,
        room: &RoomId,
        rid: Option<&str>,
        req: RoomRequest,
    ) -> Result<(), RoomError> {
        match req {
            RoomRequest::Join { since, state } => {
                self.join(now, conn, user, access, room, rid, since, state)
            }
            RoomRequest::Leave => {
                let r = self.rooms.get(room).ok_or(RoomError::UnknownRoom)?;
                if !r.members.contains_key(&conn) {
                    return Err(RoomError::UnknownRoom);
                }
                // The reply first: leaving the last room of this shard detaches the socket's sink.
                self.send(
                    conn,
                    &serde_json::json!({ "t": "left", "id": rid, "room": room }),
                );
                self.leave(now, conn, room);
                Ok(())
            }
            RoomRequest::Send { text } => {
                let rid = rid.ok_or(RoomError::BadRequest("a chat message needs an id"))?;
                let m = self.member(room, conn)?;
                if m.access < RoomAccess::Write {
                    return Err(RoomError::Forbidden("read-only access to this room"));
                }
                self.check_text(&text)?;
                if self.dedupe(conn, &user, room, rid) {
                    return Ok(());
                }
                self.check_inflight(room)?;
                if let Some(m) = self
                    .rooms
                    .get_mut(room)
                    .and_then(|r| r.members.get_mut(&conn))
                {
                    if m.typing_until.take().is_some() {
                        self.schedule_flush(now, room);
                    }
                }
                let payload = EventPayload::ChatMessageSent(ChatMessageSentV1 {
                    client_msg_id: rid.to_owned(),
                    text,
                });
                self.append(room, user, payload, Some((conn, rid.to_owned())));
                Ok(())
            }
            RoomRequest::Edit { target, text } => {
                let rid = rid.ok_or(RoomError::BadRequest("an edit needs an id"))?;
                self.member(room, conn)?;
                self.check_text(&text)?;
                if self.dedupe(conn, &user, room, rid) {
                    return Ok(());
                }
                self.check_target(room, conn, &user, target)?;
                self.check_inflight(room)?;
                let payload = EventPayload::ChatMessageEdited(ChatMessageEditedV1 {
                    client_msg_id: rid.to_owned(),
                    target,
                    text,
                });
                self.append(room, user, payload, Some((conn, rid.to_owned())));
                Ok(())
            }
            RoomRequest::Delete { target } => {
                let rid = rid.ok_or(RoomError::BadRequest("a deletion needs an id"))?;
                self.member(room, conn)?;
                if self.dedupe(conn, &user, room, rid) {
                    return Ok(());
                }
                self.check_target(room, conn, &user, target)?;
                self.check_inflight(room)?;
                let payload = EventPayload::ChatMessageDeleted(ChatMessageDeletedV1 {
                    client_msg_id: rid.to_owned(),
                    target,
                });
                self.append(room, user, payload, Some((conn, rid.to_owned())));
                Ok(())
            }
            RoomRequest::Presence { state } => {
                self.member(room, conn)?;
                let state = self.checked_state(state)?;
                let r = self.rooms.get_mut(room).ok_or(RoomError::UnknownRoom)?;
                r.clock += 1;
                let clock = r.clock;
                if let Some(m) = r.members.get_mut(&conn) {
                    m.state = Some(state);
                    m.state_at = clock;
                }
                r.presence_dirty.insert(user);
                self.schedule_flush(now, room);
                self.ok(conn, rid);
                Ok(())
            }
            RoomRequest::Typing { on } => {
                let m = self.member(room, conn)?;
                if m.access < RoomAccess::Write {
                    return Err(RoomError::Forbidden("read-only access to this room"));
                }
                let until = now + self.cfg.typing_timeout;
                let r = self.rooms.get_mut(room).ok_or(RoomError::UnknownRoom)?;
                if let Some(m) = r.members.get_mut(&conn) {
                    m.typing_until = on.then_some(until);
                }
                if on {
                    r.typing_next = Some(r.typing_next.map_or(until, |t| t.min(until)));
                }
                self.schedule_flush(now, room);
                self.ok(conn, rid);
                Ok(())
            }
        }
    }

    fn ok(&mut self, conn: ConnId, rid: Option<&str>) {
        if let Some(rid) = rid {
            self.send(conn, &serde_json::json!({ "t": "ok", "id": rid }));
        }
    }

    fn member(&self, room: &RoomId, conn: ConnId) -> Result<&Member, RoomError> {
        self.rooms
            .get(room)
            .and_then(|r| r.members.get(&conn))
            .ok_or(RoomError::UnknownRoom)
    }

    /// Bounds the events of one room waiting for the store (a stalled store must not grow memory).
    fn check_inflight(&self, room: &RoomId) -> Result<(), RoomError> {
        let r = self.rooms.get(room).ok_or(RoomError::UnknownRoom)?;
        if r.inflight.len() >= self.cfg.max_inflight {
            return Err(RoomError::Limit(
                "messages waiting for the store in this room",
            ));
        }
        Ok(())
    }

    /// A presence state within `max_presence_bytes` (measured as compact JSON).
    fn checked_state(&self, state: serde_json::Value) -> Result<Arc<serde_json::Value>, RoomError> {
        let len = serde_json::to_vec(&state).map_or(usize::MAX, |v| v.len());
        if len > self.cfg.max_presence_bytes {
            return Err(RoomError::TooLarge("presence state"));
        }
        Ok(Arc::new(state))
    }

    fn check_text(&self, text: &str) -> Result<(), RoomError> {
        if text.is_empty() {
            return Err(RoomError::BadRequest("empty text"));
        }
        if text.len() > self.cfg.max_chat_bytes {
            return Err(RoomError::TooLarge("message text"));
        }
        Ok(())
    }

    /// Edits and deletions: the target must be a live chat message in the window, and the actor its
    /// author or a room admin.
    fn check_target(
        &self,
        room: &RoomId,
        conn: ConnId,
        user: &UserId,
        target: Seq,
    ) -> Result<(), RoomError> {
        let m = self.member(room, conn)?;
        if m.access < RoomAccess::Write {
            return Err(RoomError::Forbidden("read-only access to this room"));
        }
        let r = self.rooms.get(room).ok_or(RoomError::UnknownRoom)?;
        let c = r.committed(target).ok_or(RoomError::NotFound)?;
        if !matches!(c.event.payload, EventPayload::ChatMessageSent(_)) || r.is_deleted(target) {
            return Err(RoomError::NotFound);
        }
        if &c.event.actor != user && m.access < RoomAccess::Admin {
            return Err(RoomError::Forbidden(
                "only the author or a room admin may change a message",
            ));
        }
        Ok(())
    }

    /// A retried request: acknowledges with the original event (or waits for it). True when handled.
    fn dedupe(&mut self, conn: ConnId, user: &UserId, room: &RoomId, rid: &str) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        let Some(&seq) = r.keys.get(&(user.clone(), rid.to_owned())) else {
            return false;
        };
        if let Some(p) = r.inflight.iter_mut().find(|p| p.seq == seq) {
            p.waiters.push((conn, rid.to_owned(), true));
            return true;
        }
        let Some(epoch) = r.committed(seq).map(|c| c.event.epoch) else {
            return false;
        };
        self.send(
            conn,
            &serde_json::json!({
                "t": "ack", "id": rid, "room": room, "epoch": epoch, "seq": seq, "duplicate": true
            }),
        );
        true
    }

    fn append(
        &mut self,
        room: &RoomId,
        actor: UserId,
        payload: EventPayload,
        waiter: Option<(ConnId, String)>,
    ) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(epoch) = r.epoch() else { return };
        let seq = r.next;
        r.next = r.next.next();
        if let Some((_, rid)) = &waiter {
            r.keys.insert((actor.clone(), rid.clone()), seq);
        }
        r.inflight.push_back(Pending {
            epoch,
            seq,
            payload: payload.clone(),
            waiters: waiter.into_iter().map(|(c, r)| (c, r, false)).collect(),
        });
        self.out.push_back(RoomOutput::Append {
            room: room.clone(),
            epoch,
            seq,
            actor,
            payload,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        access: RoomAccess,
        room: &RoomId,
        rid: Option<&str>,
        since: Option<Position>,
        state: Option<serde_json::Value>,
    ) -> Result<(), RoomError> {
        let state = state.map(|s| self.checked_state(s)).transpose()?;
        let max_members = self.cfg.max_members;
        let r = self.rooms.get_mut(room).ok_or(RoomError::Unavailable)?;
        r.epoch().ok_or(RoomError::Unavailable)?;
        if !r.members.contains_key(&conn) && r.members.len() >= max_members {
            return Err(RoomError::Limit("members in this room"));
        }
        r.clock += 1;
        let clock = r.clock;
        let m = r.members.entry(conn).or_insert_with(|| Member {
            user: user.clone(),
            access,
            state: None,
            state_at: 0,
            typing_until: None,
        });
        m.access = access;
        if state.is_some() {
            m.state = state;
            m.state_at = clock;
        }
        r.idle_since = None;
        let conns = r.users.entry(user.clone()).or_default();
        let first = conns.is_empty();
        conns.insert(conn);
        r.presence_dirty.insert(user.clone());
        let announce = first && r.ghosts.remove(&user).is_none() && r.present.insert(user.clone());
        // The reply: position, the events after `since` when they are all still in the window, who is
        // here and who is typing.
        let (recovered, reason, events) = match since {
            None => (None, None, Vec::new()),
            Some(p) => match recover(r, p) {
                Ok(ev) => (Some(true), None, ev),
                Err(why) => (Some(false), Some(why), Vec::new()),
            },
        };
        let presence: Vec<serde_json::Value> =
            r.users.keys().filter_map(|u| r.presence_entry(u)).collect();
        let typing = r.typists(now);
        let events_json = format!("[{}]", events.join(","));
        // The room's position: its latest event (what a client that saw everything resumes from).
        let position = r.window.back().map_or(
            Position {
                epoch: Epoch(0),
                seq: Seq(0),
            },
            |c| Position {
                epoch: c.event.epoch,
                seq: c.event.seq,
            },
        );
        let mut reply = serde_json::json!({
            "t": "joined", "id": rid, "room": room, "position": position,
            "presence": presence, "typing": typing,
        });
        if let Some(rec) = recovered {
            reply["recovered"] = rec.into();
        }
        if let Some(why) = reason {
            reply["reason"] = why.into();
        }
        // Events are spliced in as already-rendered JSON (each rendered once, at commit).
        let mut text = serde_json::to_string(&reply).unwrap_or_default();
        text.pop();
        text.push_str(",\"events\":");
        text.push_str(&events_json);
        text.push('}');
        self.out.push_back(RoomOutput::Send {
            conn,
            msg: text.into_bytes().into(),
        });
        self.conns.entry(conn).or_default().insert(room.clone());
        if announce {
            let payload = EventPayload::UserJoined(UserPresenceV1 { user: user.clone() });
            self.append(room, user, payload, None);
        }
        self.schedule_flush(now, room);
        Ok(())
    }

    /// Removes a member (no reply); announces the user's departure when it was their last connection.
    fn leave(&mut self, now: Instant, conn: ConnId, room: &RoomId) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if let Phase::Loading { queued } = &mut r.phase {
            queued.retain(|q| q.conn != conn);
        }
        let Some(m) = r.members.remove(&conn) else {
            self.detach(conn, room);
            return;
        };
        let user = m.user;
        let mut last = false;
        if let Some(set) = r.users.get_mut(&user) {
            set.remove(&conn);
            if set.is_empty() {
                r.users.remove(&user);
                last = true;
            }
        }
        r.presence_dirty.insert(user.clone());
        if r.members.is_empty() {
            r.idle_since = Some(now);
        }
        let announce = last && r.present.remove(&user);
        if announce {
            let payload = EventPayload::UserLeft(UserPresenceV1 { user: user.clone() });
            self.append(room, user, payload, None);
        }
        self.schedule_flush(now, room);
        self.detach(conn, room);
    }

    fn detach(&mut self, conn: ConnId, room: &RoomId) {
        if let Some(set) = self.conns.get_mut(&conn) {
            set.remove(room);
            if set.is_empty() {
                self.conns.remove(&conn);
                self.out.push_back(RoomOutput::Detached { conn });
            }
        }
    }

    /// The connection is gone (socket closed): it leaves every room of this shard.
    pub fn handle_close(&mut self, now: Instant, conn: ConnId) {
        let rooms: Vec<RoomId> = self
            .conns
            .get(&conn)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for room in rooms {
            self.leave(now, conn, &room);
        }
    }

    /// The store answered a `Load`.
    pub fn handle_loaded(
        &mut self,
        now: Instant,
        room: &RoomId,
        result: Result<(Epoch, Loaded), StoreError>,
    ) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let loaded = match result {
            Ok(v) => v,
            Err(_) => {
                self.fail_room(room, &RoomError::Unavailable);
                return;
            }
        };
        let (epoch, loaded) = loaded;
        let mut events: Vec<Event> = Vec::new();
        let mut present: BTreeSet<UserId> = BTreeSet::new();
        if let Some(s) = &loaded.snapshot {
            match serde_json::from_slice::<RoomSnapshot>(&s.state) {
                Ok(snap) => {
                    events = snap.window;
                    present = snap.present.into_iter().collect();
                }
                Err(e) => {
                    tracing::error!(%room, error = %e, "room snapshot unreadable");
                    self.fail_room(room, &RoomError::Unavailable);
                    return;
                }
            }
        }
        for e in &loaded.tail {
            match &e.payload {
                EventPayload::UserJoined(p) => {
                    present.insert(p.user.clone());
                }
                EventPayload::UserLeft(p) => {
                    present.remove(&p.user);
                }
                _ => {}
            }
        }
        events.extend(loaded.tail.iter().cloned());
        let skip = events.len().saturating_sub(self.cfg.history_window.max(1));
        r.window.clear();
        r.keys.clear();
        for e in events.into_iter().skip(skip) {
            let json: Arc<str> = serde_json::to_string(&e).unwrap_or_default().into();
            r.push_window(Committed { event: e, json }, self.cfg.history_window);
        }
        r.applied = loaded.last_seq();
        r.next = r.applied.next();
        r.since_snapshot = loaded.tail.len() as u64;
        let grace = now + self.cfg.presence_grace;
        r.ghosts = present.iter().map(|u| (u.clone(), grace)).collect();
        r.committed_present = present.clone();
        r.present = present;
        let queued = match std::mem::replace(&mut r.phase, Phase::Ready { epoch }) {
            Phase::Loading { queued } => queued,
            Phase::Ready { .. } => VecDeque::new(),
        };
        if r.members.is_empty() {
            r.idle_since = Some(now);
        }
        for q in queued {
            if let Err(e) =
                self.process(now, q.conn, q.user, q.access, room, q.rid.as_deref(), q.req)
            {
                self.reply_error(q.conn, room, q.rid.as_deref(), &e);
                // A refused join leaves the connection outside the room.
                if !self
                    .rooms
                    .get(room)
                    .is_some_and(|r| r.members.contains_key(&q.conn))
                {
                    self.detach(q.conn, room);
                }
            }
        }
    }

    /// The store answered an `Append`: `Ok` carries the committed event.
    pub fn handle_appended(
        &mut self,
        _now: Instant,
        room: &RoomId,
        epoch: Epoch,
        seq: Seq,
        result: Result<Event, StoreError>,
    ) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.inflight.front().map(|p| (p.epoch, p.seq)) != Some((epoch, seq)) {
            return;
        }
        let event = match result {
            Ok(e) => e,
            Err(_) => {
                // Nothing uncommitted was shown; members rejoin (and resume) on a fresh load.
                self.fail_room(room, &RoomError::Unavailable);
                return;
            }
        };
        let Some(p) = r.inflight.pop_front() else {
            return;
        };
        debug_assert_eq!(p.payload, event.payload);
        r.applied = seq;
        r.since_snapshot += 1;
        match &event.payload {
            EventPayload::UserJoined(p) => {
                r.committed_present.insert(p.user.clone());
            }
            EventPayload::UserLeft(p) => {
                r.committed_present.remove(&p.user);
            }
            _ => {}
        }
        let json: Arc<str> = serde_json::to_string(&event).unwrap_or_default().into();
        let frame: Arc<[u8]> = format!(r#"{{"t":"event","room":"{room}","event":{json}}}"#)
            .into_bytes()
            .into();
        r.push_window(Committed { event, json }, self.cfg.history_window);
        let want_snapshot = r.since_snapshot >= self.snapshot_every;
        self.broadcast(room, frame);
        for (conn, rid, duplicate) in p.waiters {
            let mut ack = serde_json::json!({ "t": "ack", "id": rid, "room": room, "epoch": epoch, "seq": seq });
            if duplicate {
                ack["duplicate"] = true.into();
            }
            self.send(conn, &ack);
        }
        if want_snapshot {
            self.snapshot(room);
        }
    }

    fn snapshot(&mut self, room: &RoomId) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(epoch) = r.epoch() else { return };
        if r.since_snapshot == 0 {
            return;
        }
        // Exactly the committed events (window and presence), whatever is still in flight.
        let snap = RoomSnapshot {
            v: 1,
            window: r.window.iter().map(|c| c.event.clone()).collect(),
            present: r.committed_present.iter().cloned().collect(),
        };
        let state = serde_json::to_vec(&snap).unwrap_or_default();
        r.since_snapshot = 0;
        self.out.push_back(RoomOutput::Snapshot {
            room: room.clone(),
            epoch,
            snapshot: Snapshot {
                seq: r.applied,
                state,
            },
        });
    }

    /// The store answered a `Snapshot` (a failure loses nothing: the events are in the log).
    pub fn handle_snapshot_written(&mut self, room: &RoomId, result: Result<(), StoreError>) {
        if let (Err(e), Some(r)) = (result, self.rooms.get_mut(room)) {
            if !e.is_fenced() {
                r.since_snapshot = r.since_snapshot.max(1);
            }
        }
    }

    fn fail_room(&mut self, room: &RoomId, why: &RoomError) {
        let Some(r) = self.rooms.remove(room) else {
            return;
        };
        let msg: Arc<[u8]> = serde_json::to_vec(&serde_json::json!({
            "t": "room.closed", "room": room, "code": why.code(), "message": why.to_string()
        }))
        .unwrap_or_default()
        .into();
        let mut told: BTreeSet<ConnId> = BTreeSet::new();
        // After a move, a request's outcome is unknown: `unavailable` makes the client re-send it.
        let waiter_why = match why {
            RoomError::Moved => &RoomError::Unavailable,
            other => other,
        };
        for p in &r.inflight {
            for (conn, rid, _) in &p.waiters {
                let e = serde_json::json!({
                    "t": "error", "id": rid, "room": room, "code": waiter_why.code(), "message": waiter_why.to_string()
                });
                self.send(*conn, &e);
            }
        }
        let queued: Vec<ConnId> = match &r.phase {
            Phase::Loading { queued } => {
                // Every queued request with an id gets its one reply.
                for q in queued {
                    if let Some(rid) = &q.rid {
                        let e = serde_json::json!({
                            "t": "error", "id": rid, "room": room, "code": why.code(), "message": why.to_string()
                        });
                        self.send(q.conn, &e);
                    }
                }
                queued.iter().map(|q| q.conn).collect()
            }
            Phase::Ready { .. } => Vec::new(),
        };
        for conn in r.members.keys().copied().chain(queued) {
            if told.insert(conn) {
                self.out.push_back(RoomOutput::Send {
                    conn,
                    msg: msg.clone(),
                });
            }
        }
        for conn in told {
            self.detach(conn, room);
        }
        self.out
            .push_back(RoomOutput::Unloaded { room: room.clone() });
    }

    /// Timers: coalesced presence and typing broadcasts, typing expiry, ghosts, idle unload.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut frames: Vec<(RoomId, Arc<[u8]>)> = Vec::new();
        let mut gone: Vec<(RoomId, UserId)> = Vec::new();
        let mut idle: Vec<RoomId> = Vec::new();
        let flush = self.cfg.presence_flush;
        for (id, r) in self.rooms.iter_mut() {
            if r.typing_next.is_some_and(|t| now >= t) {
                r.typing_next = r
                    .members
                    .values()
                    .filter_map(|m| m.typing_until)
                    .filter(|t| *t > now)
                    .min();
                // Within the budget: not sooner than one interval after the last broadcast.
                let earliest = r.last_flush.map_or(now, |t| (t + flush).max(now));
                r.flush_at.get_or_insert(earliest);
            }
            if r.flush_at.is_some_and(|t| now >= t) {
                r.flush_at = None;
                r.last_flush = Some(now);
                let dirty = std::mem::take(&mut r.presence_dirty);
                let mut set = Vec::new();
                let mut left = Vec::new();
                for u in &dirty {
                    match r.presence_entry(u) {
                        Some(e) => set.push(e),
                        None => left.push(u.clone()),
                    }
                }
                if !set.is_empty() || !left.is_empty() {
                    let v = serde_json::json!({ "t": "presence", "room": id, "set": set, "gone": left });
                    frames.push((
                        id.clone(),
                        serde_json::to_vec(&v).unwrap_or_default().into(),
                    ));
                }
                let typists = r.typists(now);
                if typists != r.typing_sent {
                    let v = serde_json::json!({ "t": "typing", "room": id, "users": typists });
                    frames.push((
                        id.clone(),
                        serde_json::to_vec(&v).unwrap_or_default().into(),
                    ));
                    r.typing_sent = typists;
                }
            }
            let due: Vec<UserId> = r
                .ghosts
                .iter()
                .filter(|(_, t)| now >= **t)
                .map(|(u, _)| u.clone())
                .collect();
            for u in due {
                r.ghosts.remove(&u);
                if !r.users.contains_key(&u) && r.present.remove(&u) {
                    gone.push((id.clone(), u));
                }
            }
            let quiet = r.inflight.is_empty()
                && r.ghosts.is_empty()
                && matches!(r.phase, Phase::Ready { .. });
            if quiet
                && r.members.is_empty()
                && r.idle_since.is_some_and(|t| now >= t + self.idle_unload)
            {
                idle.push(id.clone());
            }
        }
        for (room, msg) in frames {
            self.broadcast(&room, msg);
        }
        for (room, user) in gone {
            let payload = EventPayload::UserLeft(UserPresenceV1 { user: user.clone() });
            self.append(&room, user, payload, None);
        }
        for room in idle {
            if self.rooms.get(&room).is_some_and(|r| r.inflight.is_empty()) {
                self.snapshot(&room);
                self.rooms.remove(&room);
                self.out.push_back(RoomOutput::Unloaded { room });
            }
        }
    }

    /// Shutdown: refuse new requests. Members are dropped without `user.left` (after a restart they are
    /// ghosts until they rejoin or the grace period ends).
    pub fn handle_shutdown(&mut self, _now: Instant) {
        self.shutting_down = true;
    }

    /// Final step of shutdown: snapshot every changed room and unload everything.
    pub fn handle_shutdown_flush(&mut self) {
        let rooms: Vec<RoomId> = self.rooms.keys().cloned().collect();
        for room in rooms {
            if self.rooms.get(&room).is_some_and(|r| r.inflight.is_empty()) {
                self.snapshot(&room);
                self.rooms.remove(&room);
                self.out.push_back(RoomOutput::Unloaded { room });
            }
        }
    }
}

/// A room `error` frame (`{"t":"error","id":…,"room":…,"code":…,"message":…}`), for refusals made
/// outside the room core (ownership checks, link limits).
pub fn error_frame(rid: Option<&str>, room: &RoomId, code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "t": "error", "id": rid, "room": room, "code": code, "message": message
    }))
    .unwrap_or_default()
}

/// The newest `limit` events of a room's stream from its snapshot (which holds the window) and tail,
/// oldest first: the newest history page without reading the whole stream.
pub fn newest_events(loaded: &Loaded, limit: usize) -> Result<Vec<Event>, StoreError> {
    let mut events: Vec<Event> = match &loaded.snapshot {
        Some(s) => {
            serde_json::from_slice::<RoomSnapshot>(&s.state)
                .map_err(|e| StoreError::Corrupt(format!("room snapshot: {e}")))?
                .window
        }
        None => Vec::new(),
    };
    events.extend(loaded.tail.iter().cloned());
    let skip = events.len().saturating_sub(limit);
    Ok(events.split_off(skip))
}

/// The rendered events after `p`, when `p` names an event in the window (same seq and epoch), or the
/// start of a room whose window still holds its first event.
fn recover(r: &RoomState, p: Position) -> Result<Vec<Arc<str>>, &'static str> {
    if p.seq > r.applied {
        return Err("unknown_position");
    }
    let start = r.window.front().map_or(r.applied.next(), |c| c.event.seq);
    if p.seq.0 == 0 {
        if start != Seq(1) {
            return Err("too_old");
        }
    } else {
        let Some(c) = r.committed(p.seq) else {
            return Err("too_old");
        };
        if c.event.epoch != p.epoch {
            return Err("epoch_changed");
        }
    }
    Ok(r.window
        .iter()
        .filter(|c| c.event.seq > p.seq)
        .map(|c| c.json.clone())
        .collect())
}
