//! The sans-IO room core: chat (persisted, ordered, idempotent, resumable), presence (many connections
//! per user merged into one entry) and typing (ephemeral), for every room this shard owns.
//!
//! Same contract as [`crate::core::ShardCore`]: inputs through `handle_*(now, …)`, results through
//! [`RoomCore::poll_output`], the next deadline through [`RoomCore::poll_timeout`]; no clock, no IO.
//! By concern: [`chat`] (the window of committed events, idempotency, resume), [`presence`] (members,
//! entries per user, ghosts), [`typing`] (indicators), `calls` (the call open in the log, closed by
//! a new owner when its previous owner could not); the load / append / snapshot / unload
//! lifecycle is [`crate::lifecycle`], shared with documents.
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

mod calls;
mod chat;
mod presence;
mod typing;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use proto::event::{ChatMessageDeletedV1, ChatMessageEditedV1, ChatMessageSentV1, UserPresenceV1};
use proto::v1::{ErrorCode, Frame, Position, RequestId, RoomRequest};
use proto::{Access, Epoch, Event, EventPayload, RoomId, Seq, UserId};
use store::{Loaded, Snapshot, StoreError};

pub use self::chat::newest_events;
use self::chat::{Committed, RoomSnapshot, Window};
use self::presence::Roster;
use self::typing::Typing;
use crate::config::RoomConfig;
use crate::handle::ConnId;
use crate::lifecycle::{Lifecycle, Phase};

/// Requests one connection may queue for a room that is still loading.
const MAX_QUEUED_WHILE_LOADING: usize = 64;

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
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::UnknownRoom => ErrorCode::UnknownRoom,
            Self::NotFound => ErrorCode::NotFound,
            Self::Limit(_) => ErrorCode::Limit,
            Self::Unavailable => ErrorCode::Unavailable,
            Self::ShuttingDown => ErrorCode::ShuttingDown,
            Self::Moved => ErrorCode::Moved,
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
    /// The connection is no longer a member of `room` (it left, its join was refused, or the room
    /// closed on it): whatever else it had in the room (its call) ends too.
    Departed {
        /// The connection.
        conn: ConnId,
        /// The room.
        room: RoomId,
    },
    /// A room left memory.
    Unloaded {
        /// The room.
        room: RoomId,
    },
}

/// An append in flight: what it appends and who waits for its ack.
struct Pending {
    payload: EventPayload,
    /// Connections waiting for the ack, with their request ids and whether theirs was a retry (a
    /// retry while in flight adds one).
    waiters: Vec<(ConnId, RequestId, bool)>,
}

/// A request that arrived while the room loads.
struct Queued {
    conn: ConnId,
    user: UserId,
    access: Access,
    rid: Option<RequestId>,
    req: RoomRequest,
}

struct RoomState {
    life: Lifecycle<Queued, Pending>,
    roster: Roster,
    typing: Typing,
    window: Window,
    /// When the coalesced presence/typing broadcast is due, and when the last one went out.
    flush_at: Option<Instant>,
    last_flush: Option<Instant>,
    /// The call open in the log (committed events only).
    call: Option<calls::OpenCall>,
}

impl RoomState {
    fn new(history_window: usize) -> Self {
        Self {
            life: Lifecycle::loading(),
            roster: Roster::default(),
            typing: Typing::default(),
            window: Window::new(history_window),
            flush_at: None,
            last_flush: None,
            call: None,
        }
    }

    /// Whether `target` was deleted (committed or in flight).
    fn is_deleted(&self, target: Seq) -> bool {
        self.window.deletes(target)
            || self
                .life
                .inflight
                .iter()
                .any(|p| chat::deletes(&p.item.payload, target))
    }

    /// Nothing in flight, no ghosts pending, loaded: may be unloaded once idle.
    fn is_quiet(&self) -> bool {
        self.life.is_quiet() && !self.roster.has_ghosts()
    }
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
        self.rooms.values().map(|r| r.life.inflight.len()).sum()
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
        if self.rooms.get(room).is_some_and(|r| r.life.is_quiet()) {
            self.snapshot(room);
        }
        self.fail_room(room, &RoomError::Moved);
    }

    /// The last committed seq of `room`, if it is loaded and ready.
    pub fn last_seq(&self, room: &RoomId) -> Option<Seq> {
        self.rooms
            .get(room)
            .filter(|r| r.life.is_ready())
            .map(|r| r.life.applied)
    }

    /// Whether `conn` is a member of `room` (joined, and the room is ready).
    pub fn is_member(&self, room: &RoomId, conn: ConnId) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.life.is_ready() && r.roster.is_member(conn))
    }

    /// An event another core of this shard records in the room's log (a call's lifecycle, a screen
    /// share), by `actor`. Appended in the room's order and broadcast to its members like any other;
    /// dropped (with a log line) when the room is not loaded and ready here.
    pub fn handle_system_event(
        &mut self,
        _now: Instant,
        room: &RoomId,
        actor: UserId,
        payload: EventPayload,
    ) {
        if !self.rooms.get(room).is_some_and(|r| r.life.is_ready()) {
            tracing::debug!(%room, event = payload.event_type().name(), "room not ready here: event dropped");
            return;
        }
        self.append(room, actor, payload, None);
    }

    /// Members of `room` (connections), if it is loaded.
    pub fn members(&self, room: &RoomId) -> Option<usize> {
        self.rooms.get(room).map(|r| r.roster.members.len())
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
                let idle = r
                    .life
                    .idle_since
                    .filter(|_| r.is_quiet())
                    .map(|t| t + self.idle_unload);
                [
                    idle,
                    r.roster.next_ghost(),
                    r.flush_at,
                    r.typing.next_expiry,
                ]
            })
            .flatten()
            .min()
    }

    fn send(&mut self, conn: ConnId, frame: &Frame<'_>) {
        let msg: Arc<[u8]> = frame.to_bytes().into();
        self.out.push_back(RoomOutput::Send { conn, msg });
    }

    fn broadcast(&mut self, room: &RoomId, msg: Arc<[u8]>) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        for &conn in r.roster.members.keys() {
            self.out.push_back(RoomOutput::Send {
                conn,
                msg: msg.clone(),
            });
        }
    }

    fn reply_error(&mut self, conn: ConnId, room: &RoomId, rid: Option<&RequestId>, e: &RoomError) {
        self.send(conn, &error_frame(rid, room, e));
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
        access: Access,
        room: RoomId,
        rid: Option<RequestId>,
        req: RoomRequest,
    ) {
        self.request(
            now,
            Queued {
                conn,
                user,
                access,
                rid,
                req,
            },
            room,
        );
        // A refused join (or any request from a connection in no room here) leaves nothing that
        // needs the socket's sink: let the driver drop it, after the reply.
        if !self.conns.contains_key(&conn) {
            self.out.push_back(RoomOutput::Detached { conn });
        }
    }

    fn request(&mut self, now: Instant, q: Queued, room: RoomId) {
        if self.shutting_down {
            self.reply_error(q.conn, &room, q.rid.as_ref(), &RoomError::ShuttingDown);
            return;
        }
        let is_join = matches!(q.req, RoomRequest::Join { .. });
        if !self.rooms.contains_key(&room) {
            if !is_join {
                self.reply_error(q.conn, &room, q.rid.as_ref(), &RoomError::UnknownRoom);
                return;
            }
            self.rooms
                .insert(room.clone(), RoomState::new(self.cfg.history_window));
            self.out.push_back(RoomOutput::Load { room: room.clone() });
        }
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if let Phase::Loading { queued } = &r.life.phase {
            // Only a connection whose join is queued here can have anything else to say.
            let joining = queued
                .iter()
                .any(|x| x.conn == q.conn && matches!(x.req, RoomRequest::Join { .. }));
            if !is_join && !joining {
                self.reply_error(q.conn, &room, q.rid.as_ref(), &RoomError::UnknownRoom);
                return;
            }
            let conn = q.conn;
            match r
                .life
                .queue(q, MAX_QUEUED_WHILE_LOADING, |x| x.conn == conn)
            {
                Ok(()) => {
                    if is_join {
                        self.conns.entry(conn).or_default().insert(room);
                    }
                }
                Err(q) => self.reply_error(
                    q.conn,
                    &room,
                    q.rid.as_ref(),
                    &RoomError::Limit("requests queued while the room loads"),
                ),
            }
            return;
        }
        let (conn, rid) = (q.conn, q.rid.clone());
        if let Err(e) = self.process(now, q, &room) {
            self.reply_error(conn, &room, rid.as_ref(), &e);
        }
    }

    fn process(&mut self, now: Instant, q: Queued, room: &RoomId) -> Result<(), RoomError> {
        let Queued {
            conn,
            user,
            access,
            rid,
            req,
        } = q;
        match req {
            RoomRequest::Join { since, state } => {
                self.join(now, conn, user, access, room, rid, since, state)
            }
            RoomRequest::Leave => {
                let r = self.rooms.get(room).ok_or(RoomError::UnknownRoom)?;
                if !r.roster.is_member(conn) {
                    return Err(RoomError::UnknownRoom);
                }
                // The reply first: leaving the last room of this shard detaches the socket's sink.
                self.send(
                    conn,
                    &Frame::Left {
                        id: rid,
                        room: room.clone(),
                    },
                );
                self.leave(now, conn, room);
                Ok(())
            }
            RoomRequest::Send { text } => {
                let rid = rid.ok_or(RoomError::BadRequest("a chat message needs an id"))?;
                self.writer(room, conn)?;
                self.check_text(&text)?;
                if self.dedupe(conn, &user, room, &rid) {
                    return Ok(());
                }
                self.check_inflight(room)?;
                if let Some(m) = self
                    .rooms
                    .get_mut(room)
                    .and_then(|r| r.roster.members.get_mut(&conn))
                {
                    if m.typing_until.take().is_some() {
                        self.schedule_flush(now, room);
                    }
                }
                let payload = EventPayload::ChatMessageSent(ChatMessageSentV1 {
                    client_msg_id: rid.as_str().to_owned(),
                    text,
                });
                self.append(room, user, payload, Some((conn, rid)));
                Ok(())
            }
            RoomRequest::Edit { target, text } => {
                let rid = rid.ok_or(RoomError::BadRequest("an edit needs an id"))?;
                self.member(room, conn)?;
                self.check_text(&text)?;
                if self.dedupe(conn, &user, room, &rid) {
                    return Ok(());
                }
                self.check_target(room, conn, &user, target)?;
                self.check_inflight(room)?;
                let payload = EventPayload::ChatMessageEdited(ChatMessageEditedV1 {
                    client_msg_id: rid.as_str().to_owned(),
                    target,
                    text,
                });
                self.append(room, user, payload, Some((conn, rid)));
                Ok(())
            }
            RoomRequest::Delete { target } => {
                let rid = rid.ok_or(RoomError::BadRequest("a deletion needs an id"))?;
                self.member(room, conn)?;
                if self.dedupe(conn, &user, room, &rid) {
                    return Ok(());
                }
                self.check_target(room, conn, &user, target)?;
                self.check_inflight(room)?;
                let payload = EventPayload::ChatMessageDeleted(ChatMessageDeletedV1 {
                    client_msg_id: rid.as_str().to_owned(),
                    target,
                });
                self.append(room, user, payload, Some((conn, rid)));
                Ok(())
            }
            RoomRequest::Presence { state } => {
                self.member(room, conn)?;
                let state = self.checked_state(state)?;
                let r = self.rooms.get_mut(room).ok_or(RoomError::UnknownRoom)?;
                r.roster.set_state(conn, state);
                self.schedule_flush(now, room);
                self.ok(conn, rid);
                Ok(())
            }
            RoomRequest::Typing { on } => {
                self.writer(room, conn)?;
                let until = now + self.cfg.typing_timeout;
                let r = self.rooms.get_mut(room).ok_or(RoomError::UnknownRoom)?;
                if let Some(m) = r.roster.members.get_mut(&conn) {
                    m.typing_until = on.then_some(until);
                }
                if on {
                    r.typing.started(until);
                }
                self.schedule_flush(now, room);
                self.ok(conn, rid);
                Ok(())
            }
        }
    }

    fn ok(&mut self, conn: ConnId, rid: Option<RequestId>) {
        if rid.is_some() {
            self.send(conn, &Frame::Ok { id: rid });
        }
    }

    fn member(&self, room: &RoomId, conn: ConnId) -> Result<&presence::Member, RoomError> {
        self.rooms
            .get(room)
            .and_then(|r| r.roster.members.get(&conn))
            .ok_or(RoomError::UnknownRoom)
    }

    /// A member with write access.
    fn writer(&self, room: &RoomId, conn: ConnId) -> Result<&presence::Member, RoomError> {
        let m = self.member(room, conn)?;
        if m.access < Access::Write {
            return Err(RoomError::Forbidden("read-only access to this room"));
        }
        Ok(m)
    }

    /// Bounds the events of one room waiting for the store (a stalled store must not grow memory).
    fn check_inflight(&self, room: &RoomId) -> Result<(), RoomError> {
        let r = self.rooms.get(room).ok_or(RoomError::UnknownRoom)?;
        if r.life.inflight.len() >= self.cfg.max_inflight {
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
        let m = self.writer(room, conn)?;
        let r = self.rooms.get(room).ok_or(RoomError::UnknownRoom)?;
        let c = r.window.get(target).ok_or(RoomError::NotFound)?;
        if !matches!(c.event.payload, EventPayload::ChatMessageSent(_)) || r.is_deleted(target) {
            return Err(RoomError::NotFound);
        }
        if &c.event.actor != user && m.access < Access::Admin {
            return Err(RoomError::Forbidden(
                "only the author or a room admin may change a message",
            ));
        }
        Ok(())
    }

    /// A retried request: acknowledges with the original event (or waits for it). True when handled.
    fn dedupe(&mut self, conn: ConnId, user: &UserId, room: &RoomId, rid: &RequestId) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        let Some(seq) = r.window.seq_of(user, rid.as_str()) else {
            return false;
        };
        if let Some(p) = r.life.inflight.iter_mut().find(|p| p.seq == seq) {
            p.item.waiters.push((conn, rid.clone(), true));
            return true;
        }
        let Some(epoch) = r.window.epoch_of(seq) else {
            return false;
        };
        self.send(
            conn,
            &Frame::Ack {
                id: Some(rid.clone()),
                room: room.clone(),
                epoch,
                seq,
                duplicate: true,
            },
        );
        true
    }

    fn append(
        &mut self,
        room: &RoomId,
        actor: UserId,
        payload: EventPayload,
        waiter: Option<(ConnId, RequestId)>,
    ) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let rid = waiter.as_ref().map(|(_, rid)| rid.as_str().to_owned());
        let pending = Pending {
            payload: payload.clone(),
            waiters: waiter.into_iter().map(|(c, r)| (c, r, false)).collect(),
        };
        let Some((epoch, seq)) = r.life.assign(pending) else {
            return;
        };
        if let Some(rid) = rid {
            r.window.reserve(actor.clone(), rid, seq);
        }
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
        access: Access,
        room: &RoomId,
        rid: Option<RequestId>,
        since: Option<Position>,
        state: Option<serde_json::Value>,
    ) -> Result<(), RoomError> {
        let state = state.map(|s| self.checked_state(s)).transpose()?;
        let max_members = self.cfg.max_members;
        let r = self.rooms.get_mut(room).ok_or(RoomError::Unavailable)?;
        if !r.life.is_ready() {
            return Err(RoomError::Unavailable);
        }
        if !r.roster.is_member(conn) && r.roster.members.len() >= max_members {
            return Err(RoomError::Limit("members in this room"));
        }
        let announce = r.roster.join(conn, &user, access, state);
        r.life.attached();
        // The reply: position, the events after `since` when they are all still in the window, who is
        // here and who is typing.
        let (recovered, reason, events) = match since {
            None => (None, None, Vec::new()),
            Some(p) => match r.window.recover(p, r.life.applied) {
                Ok(ev) => (Some(true), None, ev),
                Err(why) => (Some(false), Some(why), Vec::new()),
            },
        };
        let reply = Frame::Joined {
            id: rid,
            room: room.clone(),
            position: r.window.position(),
            recovered,
            reason,
            // Spliced in as already-rendered JSON (each rendered once, at commit).
            events: events.iter().map(|e| &**e).collect(),
            presence: r.roster.entries(),
            typing: typing::typists(now, &r.roster.members),
        };
        let msg: Arc<[u8]> = reply.to_bytes().into();
        self.out.push_back(RoomOutput::Send { conn, msg });
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
        if let Phase::Loading { queued } = &mut r.life.phase {
            queued.retain(|q| q.conn != conn);
        }
        let Some((user, announce)) = r.roster.leave(conn) else {
            self.detach(conn, room);
            return;
        };
        if r.roster.is_empty() {
            r.life.detached(now);
        }
        if announce {
            let payload = EventPayload::UserLeft(UserPresenceV1 { user: user.clone() });
            self.append(room, user, payload, None);
        }
        self.schedule_flush(now, room);
        self.detach(conn, room);
    }

    fn detach(&mut self, conn: ConnId, room: &RoomId) {
        if let Some(set) = self.conns.get_mut(&conn) {
            if set.remove(room) {
                self.out.push_back(RoomOutput::Departed {
                    conn,
                    room: room.clone(),
                });
            }
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
        let (epoch, loaded) = match result {
            Ok(v) => v,
            Err(_) => {
                self.fail_room(room, &RoomError::Unavailable);
                return;
            }
        };
        let mut events: Vec<Event> = Vec::new();
        let mut present: BTreeSet<UserId> = BTreeSet::new();
        let mut open_call = None;
        if let Some(s) = &loaded.snapshot {
            match serde_json::from_slice::<RoomSnapshot>(&s.state) {
                Ok(snap) => {
                    // Snapshots written before they carried the open call: derive it from the
                    // window (a call started before the window is not seen).
                    open_call = snap.call.or_else(|| {
                        let mut c = None;
                        for e in &snap.window {
                            calls::apply(&mut c, &e.payload);
                        }
                        c
                    });
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
            calls::apply(&mut open_call, &e.payload);
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
        r.window.reload(events);
        r.roster.loaded(present, now + self.cfg.presence_grace);
        let attached = !r.roster.is_empty();
        let queued = r.life.ready(
            now,
            epoch,
            loaded.last_seq(),
            loaded.tail.len() as u64,
            attached,
        );
        // A call the log shows open was interrupted (its owner crashed, moved or restarted): it is
        // closed in the log before anyone can start the next one.
        if let Some(open) = open_call {
            // Known as open until the closing events commit (a snapshot taken meanwhile keeps it).
            if let Some(r) = self.rooms.get_mut(room) {
                r.call = Some(open.clone());
            }
            for (actor, payload) in calls::closing(&open) {
                self.append(room, actor, payload, None);
            }
        }
        for q in queued {
            let (conn, rid) = (q.conn, q.rid.clone());
            if let Err(e) = self.process(now, q, room) {
                self.reply_error(conn, room, rid.as_ref(), &e);
                // A refused join leaves the connection outside the room.
                if !self
                    .rooms
                    .get(room)
                    .is_some_and(|r| r.roster.is_member(conn))
                {
                    self.detach(conn, room);
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
        if !r.life.is_next_answer(epoch, seq) {
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
        let Some(p) = r.life.committed() else {
            return;
        };
        debug_assert_eq!(p.item.payload, event.payload);
        match &event.payload {
            EventPayload::UserJoined(p) => r.roster.committed(&p.user, true),
            EventPayload::UserLeft(p) => r.roster.committed(&p.user, false),
            _ => {}
        }
        calls::apply(&mut r.call, &event.payload);
        let committed = Committed::new(event);
        let frame: Arc<[u8]> = Frame::Event {
            room: room.clone(),
            event: &committed.json,
        }
        .to_bytes()
        .into();
        r.window.push(committed);
        let want_snapshot = r.life.since_snapshot >= self.snapshot_every;
        self.broadcast(room, frame);
        for (conn, rid, duplicate) in p.item.waiters {
            self.send(
                conn,
                &Frame::Ack {
                    id: Some(rid),
                    room: room.clone(),
                    epoch,
                    seq,
                    duplicate,
                },
            );
        }
        if want_snapshot {
            self.snapshot(room);
        }
    }

    fn snapshot(&mut self, room: &RoomId) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some((epoch, seq)) = r.life.snapshot_point() else {
            return;
        };
        // Exactly the committed events (window and presence), whatever is still in flight.
        let snap = RoomSnapshot {
            v: 1,
            window: r.window.events(),
            present: r.roster.committed_present.iter().cloned().collect(),
            call: r.call.clone(),
        };
        let state = serde_json::to_vec(&snap).expect("room snapshots always serialize");
        self.out.push_back(RoomOutput::Snapshot {
            room: room.clone(),
            epoch,
            snapshot: Snapshot { seq, state },
        });
    }

    /// The store answered a `Snapshot` (a failure loses nothing: the events are in the log).
    pub fn handle_snapshot_written(&mut self, room: &RoomId, result: Result<(), StoreError>) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.life.snapshot_written(&result);
        }
    }

    fn fail_room(&mut self, room: &RoomId, why: &RoomError) {
        let Some(r) = self.rooms.remove(room) else {
            return;
        };
        let msg: Arc<[u8]> = Frame::RoomClosed {
            room: room.clone(),
            code: why.code(),
            message: why.to_string(),
        }
        .to_bytes()
        .into();
        let mut told: BTreeSet<ConnId> = BTreeSet::new();
        // After a move, a request's outcome is unknown: `unavailable` makes the client re-send it.
        let waiter_why = match why {
            RoomError::Moved => &RoomError::Unavailable,
            other => other,
        };
        for p in &r.life.inflight {
            for (conn, rid, _) in &p.item.waiters {
                self.send(*conn, &error_frame(Some(rid), room, waiter_why));
            }
        }
        let queued: Vec<ConnId> = match &r.life.phase {
            Phase::Loading { queued } => {
                // Every queued request with an id gets its one reply.
                for q in queued {
                    if q.rid.is_some() {
                        self.send(q.conn, &error_frame(q.rid.as_ref(), room, why));
                    }
                }
                queued.iter().map(|q| q.conn).collect()
            }
            Phase::Ready { .. } => Vec::new(),
        };
        for conn in r.roster.members.keys().copied().chain(queued) {
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
            if r.typing.expired(now, &r.roster.members) {
                // Within the budget: not sooner than one interval after the last broadcast.
                let earliest = r.last_flush.map_or(now, |t| (t + flush).max(now));
                r.flush_at.get_or_insert(earliest);
            }
            if r.flush_at.is_some_and(|t| now >= t) {
                r.flush_at = None;
                r.last_flush = Some(now);
                let (set, left) = r.roster.take_changes();
                if !set.is_empty() || !left.is_empty() {
                    let frame = Frame::Presence {
                        room: id.clone(),
                        set,
                        gone: left,
                    };
                    frames.push((id.clone(), frame.to_bytes().into()));
                }
                if let Some(users) = r.typing.changed(now, &r.roster.members) {
                    let frame = Frame::Typing {
                        room: id.clone(),
                        users,
                    };
                    frames.push((id.clone(), frame.to_bytes().into()));
                }
            }
            for u in r.roster.expire_ghosts(now) {
                gone.push((id.clone(), u));
            }
            if r.is_quiet()
                && r.life
                    .unload_due(now, self.idle_unload, !r.roster.is_empty())
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
            self.unload(&room);
        }
    }

    /// Snapshots and drops a room with nothing in flight.
    fn unload(&mut self, room: &RoomId) {
        if self
            .rooms
            .get(room)
            .is_some_and(|r| r.life.inflight.is_empty())
        {
            self.snapshot(room);
            self.rooms.remove(room);
            self.out
                .push_back(RoomOutput::Unloaded { room: room.clone() });
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
            self.unload(&room);
        }
    }
}

/// An `error` frame about `room`.
fn error_frame<'a>(rid: Option<&RequestId>, room: &RoomId, e: &RoomError) -> Frame<'a> {
    Frame::Error {
        id: rid.cloned(),
        code: e.code(),
        message: e.to_string(),
        room: Some(room.to_string()),
        doc: None,
    }
}
