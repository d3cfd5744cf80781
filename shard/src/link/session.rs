//! One gateway link as the shard sees it, sans-IO: frames in (`handle_frame(now, bytes)`), calls to
//! the shard and frames back to the gateway out ([`LinkSession::poll_output`]), the next deadline
//! from [`LinkSession::poll_timeout`]. The driver (`super::serve`) reads the socket, feeds complete
//! frames while [`LinkSession::is_stalled`] is false, and carries out every output in order.
//!
//! What it decides:
//! * **Session routing**: a session id of the gateway becomes a [`ConnId`] of this shard (one per
//!   document session; one per `/v1` socket for all of its rooms).
//! * **Ownership**: `OPEN` and `ROOM` are refused for keys this shard does not own under its view of
//!   the ring. When the gateway's ring is newer than ours, the frame waits (and the link with it:
//!   frames of one session keep their order) until our view is refreshed or [`REFRESH_WAIT`]
//!   passes, so a gateway with a stale ring never makes a non-owner load a key, and a shard with a
//!   stale ring does not refuse its own keys.
//! * **Limits**: history reads in flight per link; bad payloads end only their session; an unknown
//!   frame kind or an impossible length ends the link.
//! * **Liveness**: the gateway pings every 2 s; a link silent for 6 s is dead.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::link::{self, Beat, Frame, Kind, LinkError, Liveness, RoomCall};
use proto::v1::{ErrorCode, RequestId};
use proto::{Access, DocId, RoomId, ShardId, StreamId, UserId};
use router::Ownership;

use crate::handle::{room_error, ConnId, Permit, Slots, ROOM_MOVING};

/// How long a frame waits for this shard's ring to catch up with the gateway's.
pub const REFRESH_WAIT: Duration = Duration::from_millis(500);

/// What the session asks its driver to do, in order.
#[derive(Debug)]
pub enum LinkOutput {
    /// Write these bytes (a complete control frame) to the gateway, whatever the link's budget.
    Transmit(Vec<u8>),
    /// Attach `conn` (replies go to link session `session`) to `doc`.
    Open {
        /// The shard-side connection.
        conn: ConnId,
        /// The link session carrying it.
        session: u64,
        /// The document.
        doc: DocId,
        /// The user.
        actor: UserId,
        /// Whether it may write.
        write: bool,
    },
    /// A y-websocket message of `conn`.
    Message {
        /// The connection.
        conn: ConnId,
        /// The message.
        bytes: Vec<u8>,
    },
    /// `conn` is gone.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// A room request of `conn` (replies go to link session `session`).
    Room {
        /// The socket's connection on this shard.
        conn: ConnId,
        /// The link session carrying it.
        session: u64,
        /// The user.
        user: UserId,
        /// The user's access in the room.
        access: Access,
        /// The room.
        room: RoomId,
        /// The client's request id.
        rid: Option<RequestId>,
        /// What is asked.
        call: RoomCall,
        /// A history read's slot (returned when dropped, after the reply is queued).
        permit: Option<Permit>,
    },
    /// The `/v1` socket behind `conn` is gone (it leaves every room of this shard).
    RoomClose {
        /// The connection.
        conn: ConnId,
    },
    /// The gateway knows a newer ring: re-read ours now (answer with `handle_ownership`).
    Refresh,
    /// The link is over; every session of it was closed by the outputs before this one.
    Down {
        /// Why, for the log.
        reason: String,
    },
}

/// Settings of one link.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This shard.
    pub shard: ShardId,
    /// History reads in flight on the link.
    pub max_history_in_flight: usize,
}

/// A frame that waits for a fresher ring.
struct Stalled {
    frame: Vec<u8>,
    until: Instant,
}

/// The shard side of one gateway link.
pub struct LinkSession {
    cfg: SessionConfig,
    liveness: Liveness,
    own: Arc<Ownership>,
    docs: HashMap<u64, ConnId>,
    rooms: HashMap<u64, ConnId>,
    history: Slots,
    next_conn: Box<dyn FnMut() -> ConnId + Send>,
    stalled: Option<Stalled>,
    out: VecDeque<LinkOutput>,
    down: bool,
}

impl LinkSession {
    /// A link accepted at `now`, under ownership view `own`; `next_conn` numbers the shard-side
    /// connections (unique across the process's links).
    pub fn new(
        now: Instant,
        cfg: SessionConfig,
        own: Arc<Ownership>,
        next_conn: Box<dyn FnMut() -> ConnId + Send>,
    ) -> Self {
        Self {
            history: Slots::new(cfg.max_history_in_flight),
            cfg,
            liveness: Liveness::new(now, None, link::LINK_TIMEOUT),
            own,
            docs: HashMap::new(),
            rooms: HashMap::new(),
            next_conn,
            stalled: None,
            out: VecDeque::new(),
            down: false,
        }
    }

    /// While true, feed no frames: one waits for a fresher ring (`handle_ownership` or the
    /// deadline), and the frames after it must keep their order.
    pub fn is_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    /// Whether the link is over.
    pub fn is_down(&self) -> bool {
        self.down
    }

    /// Sessions open on the link (documents, `/v1` sockets with rooms).
    pub fn sessions(&self) -> usize {
        self.docs.len() + self.rooms.len()
    }

    /// The next output, if any. Drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<LinkOutput> {
        self.out.pop_front()
    }

    /// When `handle_timeout` has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.down {
            return None;
        }
        let live = self.liveness.poll_timeout();
        Some(self.stalled.as_ref().map_or(live, |s| s.until.min(live)))
    }

    /// Timers: the silence timeout, and a stalled frame's wait.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.down {
            return;
        }
        if self.liveness.handle_timeout(now) == Some(Beat::Dead) {
            self.go_down(format!("gateway link silent for {:?}", link::LINK_TIMEOUT));
            return;
        }
        if self.stalled.as_ref().is_some_and(|s| now >= s.until) {
            self.retry_stalled(now);
        }
    }

    /// This shard's view of ownership changed.
    pub fn handle_ownership(&mut self, now: Instant, own: Arc<Ownership>) {
        self.own = own;
        if self.stalled.is_some() {
            self.retry_stalled(now);
        }
    }

    /// The gateway closed the link, or reading failed.
    pub fn handle_closed(&mut self, reason: &str) {
        self.go_down(reason.to_owned());
    }

    /// Bytes that are not a frame (an impossible length): the link cannot be trusted.
    pub fn handle_error(&mut self, e: &LinkError) {
        self.go_down(e.to_string());
    }

    /// One complete frame (as measured by `proto::link::check`).
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) {
        if self.down {
            return;
        }
        self.liveness.on_receive(now);
        if self.stalled.is_some() {
            // The driver should not feed frames while stalled; refusing keeps the order anyway.
            self.go_down("link frame fed while stalled".into());
            return;
        }
        self.frame(now, bytes, true);
    }

    fn retry_stalled(&mut self, now: Instant) {
        if let Some(s) = self.stalled.take() {
            self.frame(now, &s.frame, false);
        }
    }

    fn transmit(&mut self, session: u64, frame: &Frame<'_>) {
        self.out
            .push_back(LinkOutput::Transmit(link::to_vec(session, frame)));
    }

    fn ring_hint(&mut self) {
        let version = self.own.ring.version();
        self.transmit(0, &Frame::Ring { version });
    }

    /// Whether this shard owns `key`. `Some(false)` when it does not and the gateway's ring is not
    /// newer (or we already waited); `None` when the frame must wait for a fresher view.
    fn owner_check(&mut self, key: &StreamId, gateway_ring: u64, may_wait: bool) -> Option<bool> {
        if self.own.owns(&self.cfg.shard, key) {
            return Some(true);
        }
        if may_wait && gateway_ring > self.own.ring.version() {
            return None;
        }
        Some(false)
    }

    fn stall(&mut self, now: Instant, bytes: &[u8]) {
        self.stalled = Some(Stalled {
            frame: bytes.to_vec(),
            until: now + REFRESH_WAIT,
        });
        self.out.push_back(LinkOutput::Refresh);
    }

    fn frame(&mut self, now: Instant, bytes: &[u8], may_wait: bool) {
        let (session, frame) = match link::parse(bytes) {
            Ok(f) => f,
            Err(LinkError::BadPayload {
                kind: Kind::Open,
                session,
            }) => {
                let end = Frame::End {
                    code: 1002,
                    reason: "bad open".into(),
                };
                self.transmit(session, &end);
                return;
            }
            Err(LinkError::BadPayload {
                kind: Kind::Room,
                session,
            }) => {
                self.transmit(session, &Frame::Kill { code: 1002 });
                return;
            }
            Err(e) => {
                self.go_down(e.to_string());
                return;
            }
        };
        match frame {
            Frame::Open(o) => {
                let key = StreamId::Doc(o.doc.clone());
                match self.owner_check(&key, o.ring, may_wait) {
                    None => self.stall(now, bytes),
                    Some(false) => {
                        self.ring_hint();
                        let end = Frame::End {
                            code: 1012,
                            reason: "not the owner, reconnect".into(),
                        };
                        self.transmit(session, &end);
                    }
                    Some(true) => {
                        let conn = (self.next_conn)();
                        if let Some(old) = self.docs.insert(session, conn) {
                            self.out.push_back(LinkOutput::Close { conn: old });
                        }
                        self.out.push_back(LinkOutput::Open {
                            conn,
                            session,
                            doc: o.doc,
                            actor: o.actor,
                            write: o.write,
                        });
                    }
                }
            }
            Frame::Msg(m) => {
                if let Some(conn) = self.docs.get(&session) {
                    self.out.push_back(LinkOutput::Message {
                        conn: *conn,
                        bytes: m.to_vec(),
                    });
                }
            }
            Frame::Close => {
                if let Some(conn) = self.docs.remove(&session) {
                    self.out.push_back(LinkOutput::Close { conn });
                }
            }
            Frame::Room(r) => self.room(now, bytes, session, *r, may_wait),
            Frame::RoomClose => {
                if let Some(conn) = self.rooms.remove(&session) {
                    self.out.push_back(LinkOutput::RoomClose { conn });
                }
            }
            Frame::Ping => self.transmit(session, &Frame::Pong),
            other => {
                // Shard → gateway kinds (and pongs: only gateways ping) mean a confused peer.
                self.go_down(format!(
                    "unexpected {:?} frame from a gateway",
                    other.kind()
                ));
            }
        }
    }

    fn room(&mut self, now: Instant, bytes: &[u8], session: u64, r: link::Room, may_wait: bool) {
        let key = StreamId::Room(r.room.clone());
        match self.owner_check(&key, r.ring, may_wait) {
            None => {
                self.stall(now, bytes);
                return;
            }
            Some(false) => {
                self.ring_hint();
                let e = room_error(r.rid.as_ref(), &r.room, ErrorCode::Unavailable, ROOM_MOVING);
                self.transmit(session, &Frame::Text(&e));
                return;
            }
            Some(true) => {}
        }
        let permit = match &r.call {
            RoomCall::Request { .. } | RoomCall::Call { .. } => None,
            // Never wait here: the link serves every session of its gateway.
            RoomCall::History { .. } => match self.history.try_take() {
                Some(p) => Some(p),
                None => {
                    let message = "too many history requests in flight on this shard, retry";
                    let e = room_error(r.rid.as_ref(), &r.room, ErrorCode::Limit, message);
                    self.transmit(session, &Frame::Text(&e));
                    return;
                }
            },
        };
        let next = &mut self.next_conn;
        let conn = *self.rooms.entry(session).or_insert_with(next);
        self.out.push_back(LinkOutput::Room {
            conn,
            session,
            user: r.user,
            access: r.access,
            room: r.room,
            rid: r.rid,
            call: r.call,
            permit,
        });
    }

    fn go_down(&mut self, reason: String) {
        if self.down {
            return;
        }
        self.down = true;
        self.stalled = None;
        for (_, conn) in self.docs.drain() {
            self.out.push_back(LinkOutput::Close { conn });
        }
        for (_, conn) in self.rooms.drain() {
            self.out.push_back(LinkOutput::RoomClose { conn });
        }
        self.out.push_back(LinkOutput::Down { reason });
    }
}
