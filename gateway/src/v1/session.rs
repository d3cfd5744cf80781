//! One `/v1` socket, sans-IO: parses and checks every client frame (ids, grants, per-socket
//! limits), keeps what the socket has open (document channels, joined rooms, the shards it talked
//! to), and says what to send where. No clock, no sockets: the driver (`super`) feeds frames in and
//! carries out the [`Action`]s, in order, answering the ones that need an answer.
//!
//! Contract: after `handle_text` / `handle_binary` / an answer, drain [`Session::poll_action`]
//! until `None`. A [`Action::Route`] is always the last action of its batch: the request waits for
//! [`Session::handle_routed`] (the driver feeds nothing else meanwhile). A shard call that fails
//! is reported with [`Session::handle_unavailable`], passing back the action's [`Failed`].
//! [`Session::close`] ends everything when the socket goes.

use std::collections::{HashMap, VecDeque};

use proto::link::RoomCall;
use proto::v1::{
    self, About, CallRequest, ClientFrame, ErrorCode, Frame, FrameError, HistoryQuery, Request,
    RequestId, RoomRequest,
};
use proto::{Access, DocId, RoomId, ShardId, StreamId};
use shard::handle::{ConnId, Permit, ShardHandle, Slots};

use crate::auth::Identity;

/// The shard handles a session routes to (a [`ShardHandle`] in the gateway; a fake in tests).
pub trait Owner: Clone {
    /// The shard's id.
    fn id(&self) -> &ShardId;
    /// Whether both reach the shard the same way (a replaced link is another way).
    fn same(&self, other: &Self) -> bool;
}

impl Owner for ShardHandle {
    fn id(&self) -> &ShardId {
        ShardHandle::id(self)
    }
    fn same(&self, other: &Self) -> bool {
        ShardHandle::same(self, other)
    }
}

/// Per-socket limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Documents open at once.
    pub max_docs: usize,
    /// Rooms joined at once.
    pub max_rooms: usize,
    /// `history` reads in flight.
    pub max_history_in_flight: usize,
}

/// What a failed shard call was, so that the session can undo and answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// `doc.open`: the channel is forgotten.
    Open {
        /// The document.
        doc: DocId,
        /// The request id.
        rid: Option<RequestId>,
    },
    /// A binary frame of an open document.
    Message {
        /// The document.
        doc: DocId,
    },
    /// A room request: a join or any other request is forgotten with its room.
    Room {
        /// The room.
        room: RoomId,
        /// The request id.
        rid: Option<RequestId>,
    },
    /// A history read (nothing to forget).
    History {
        /// The room.
        room: RoomId,
        /// The request id.
        rid: Option<RequestId>,
    },
}

/// What the session asks its driver to do, in order.
#[derive(Debug)]
pub enum Action<H> {
    /// Queue this text frame on the socket.
    Reply(Vec<u8>),
    /// Find `key`'s owner (waiting for the ring to settle) and answer with `handle_routed`.
    Route {
        /// The document or room.
        key: StreamId,
    },
    /// Open document channel `channel` on `shard` (frames prefixed with the document id).
    Open {
        /// The owner.
        shard: H,
        /// The channel's connection id.
        channel: ConnId,
        /// The document.
        doc: DocId,
        /// Whether the socket may write.
        can_write: bool,
        /// On failure.
        failed: Failed,
    },
    /// A y-websocket message on document channel `channel`.
    Message {
        /// The owner.
        shard: H,
        /// The channel.
        channel: ConnId,
        /// The message.
        bytes: Vec<u8>,
        /// On failure.
        failed: Failed,
    },
    /// Close document channel `channel`.
    Close {
        /// The owner.
        shard: H,
        /// The channel.
        channel: ConnId,
    },
    /// A room request or history read, to `shard`, with the socket's sink.
    Room {
        /// The owner.
        shard: H,
        /// The room.
        room: RoomId,
        /// The request id.
        rid: Option<RequestId>,
        /// The socket's access in the room.
        access: Access,
        /// What is asked.
        call: RoomCall,
        /// A history slot, held until the reply is queued.
        permit: Option<Permit>,
        /// On failure.
        failed: Failed,
    },
    /// The socket is gone from `shard`'s rooms (it left them all, or it reached that shard another
    /// way since).
    RoomClose {
        /// The shard.
        shard: H,
        /// The socket's connection id.
        conn: ConnId,
    },
}

/// A request waiting for its key's owner.
enum Pending {
    DocOpen {
        id: Option<RequestId>,
        doc: DocId,
        access: Access,
    },
    Room {
        id: Option<RequestId>,
        room: RoomId,
        access: Access,
        req: RoomRequest,
    },
    History {
        id: Option<RequestId>,
        room: RoomId,
        access: Access,
        query: HistoryQuery,
    },
}

fn room_about(room: &RoomId) -> Option<About> {
    Some(About::Room(room.to_string()))
}

fn doc_about(doc: &DocId) -> Option<About> {
    Some(About::Doc(doc.to_string()))
}

/// One `/v1` socket's state.
pub struct Session<H> {
    identity: Identity,
    limits: Limits,
    /// The socket's connection id (all of its rooms share it).
    conn: ConnId,
    /// Open documents: channel id and owner.
    docs: HashMap<DocId, (ConnId, H)>,
    /// Document channels being closed (reopened or `doc.close`d): until the driver reports the
    /// close done ([`Session::handle_close_done`]), [`Session::close`] closes them too.
    closing: Vec<(ConnId, H)>,
    /// Joined rooms and their owners.
    rooms: HashMap<RoomId, H>,
    /// Every shard this socket sent room requests to (rooms move; each is told when it ends).
    room_shards: HashMap<ShardId, H>,
    history: Slots,
    next_channel: Box<dyn FnMut() -> ConnId + Send>,
    pending: Option<Pending>,
    out: VecDeque<Action<H>>,
    closed: bool,
}

impl<H: Owner> Session<H> {
    /// A session for `identity` on socket `conn`; `next_channel` numbers document channels (ids
    /// unique across the gateway).
    pub fn new(
        identity: Identity,
        conn: ConnId,
        limits: Limits,
        next_channel: Box<dyn FnMut() -> ConnId + Send>,
    ) -> Self {
        Self {
            identity,
            history: Slots::new(limits.max_history_in_flight),
            limits,
            conn,
            docs: HashMap::new(),
            closing: Vec::new(),
            rooms: HashMap::new(),
            room_shards: HashMap::new(),
            next_channel,
            pending: None,
            out: VecDeque::new(),
            closed: false,
        }
    }

    /// The socket's connection id.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The authenticated user.
    pub fn user(&self) -> &proto::UserId {
        &self.identity.user
    }

    /// Documents open.
    pub fn open_docs(&self) -> usize {
        self.docs.len()
    }

    /// Rooms joined.
    pub fn joined_rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Whether a request waits for `handle_routed`.
    pub fn is_routing(&self) -> bool {
        self.pending.is_some()
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action<H>> {
        self.out.pop_front()
    }

    fn reply(&mut self, frame: &Frame<'_>) {
        self.out.push_back(Action::Reply(frame.to_bytes()));
    }

    /// Refuses a request with an `error` frame (nothing applied).
    fn deny(
        &mut self,
        id: Option<RequestId>,
        code: ErrorCode,
        message: impl Into<String>,
        about: Option<About>,
    ) {
        let e = FrameError {
            code,
            message: message.into(),
            id,
            about,
            kind: None,
        };
        self.reply(&e.reply());
    }

    /// The first frame of the socket.
    pub fn hello(&mut self, max_message_bytes: usize) {
        let frame = Frame::Hello {
            v: v1::VERSION,
            user: self.identity.user.clone(),
            limits: v1::HelloLimits {
                max_message_bytes,
                max_docs: self.limits.max_docs,
                max_rooms: self.limits.max_rooms,
            },
        };
        self.reply(&frame);
    }

    /// A text frame (already checked to be UTF-8).
    pub fn handle_text(&mut self, data: &[u8]) {
        if self.closed || self.pending.is_some() {
            return;
        }
        let frame: ClientFrame = match v1::parse_client_frame(data) {
            Ok(f) => f,
            Err(e) => {
                // A history read is checked against the grant before its fields: no grant is
                // `forbidden` whatever else is wrong.
                if let (Some("history"), Some(About::Room(raw))) = (e.kind, &e.about) {
                    if let Ok(room) = RoomId::parse(raw) {
                        if self.identity.room_access(&room).is_none() {
                            let about = room_about(&room);
                            return self.deny(
                                e.id,
                                ErrorCode::Forbidden,
                                "no grant for this room",
                                about,
                            );
                        }
                    }
                }
                self.reply(&e.reply());
                return;
            }
        };
        let (id, request) = frame.into_request();
        match request {
            Request::Ping => self.reply(&Frame::Pong { id }),
            Request::DocOpen { doc } => self.doc_open(id, doc),
            Request::DocClose { doc } => self.doc_close(id, doc),
            Request::History { room, query } => self.history(id, room, query),
            Request::Room { room, req } => self.room(id, room, req),
            Request::Call { room, req } => self.call(id, room, req),
        }
    }

    /// A binary frame: a document's y-websocket message behind its id.
    pub fn handle_binary(&mut self, data: Vec<u8>) {
        if self.closed {
            return;
        }
        let Some((raw, msg)) = v1::split_doc_prefix(&data) else {
            self.deny(
                None,
                ErrorCode::BadFrame,
                "a binary frame starts with the document id (lib0 var-string)",
                None,
            );
            return;
        };
        let target = DocId::parse(raw)
            .ok()
            .and_then(|doc| self.docs.get(&doc).map(|(c, s)| (doc, *c, s.clone())));
        match target {
            Some((doc, channel, shard)) => {
                let bytes = msg.to_vec();
                self.out.push_back(Action::Message {
                    shard,
                    channel,
                    bytes,
                    failed: Failed::Message { doc },
                });
            }
            None => {
                let raw: String = raw.chars().take(v1::MAX_REQUEST_ID).collect();
                self.deny(
                    None,
                    ErrorCode::UnknownDoc,
                    "this document is not open on this socket (doc.open)",
                    Some(About::Doc(raw)),
                );
            }
        }
    }

    fn doc_open(&mut self, id: Option<RequestId>, doc: DocId) {
        let Some(access) = self.identity.doc_access(&doc) else {
            return self.deny(
                id,
                ErrorCode::Forbidden,
                "no grant for this document",
                doc_about(&doc),
            );
        };
        let key = StreamId::Doc(doc.clone());
        self.pending = Some(Pending::DocOpen { id, doc, access });
        self.out.push_back(Action::Route { key });
    }

    fn doc_close(&mut self, id: Option<RequestId>, doc: DocId) {
        match self.docs.remove(&doc) {
            Some((channel, shard)) => {
                self.closing.push((channel, shard.clone()));
                self.out.push_back(Action::Close { shard, channel });
                self.reply(&Frame::Ok { id });
            }
            None => {
                self.deny(
                    id,
                    ErrorCode::UnknownDoc,
                    "this document is not open on this socket",
                    doc_about(&doc),
                );
            }
        }
    }

    fn history(&mut self, id: Option<RequestId>, room: RoomId, query: HistoryQuery) {
        let Some(access) = self.identity.room_access(&room) else {
            return self.deny(
                id,
                ErrorCode::Forbidden,
                "no grant for this room",
                room_about(&room),
            );
        };
        if query.before.is_some() && query.after.is_some() {
            return self.deny(
                id,
                ErrorCode::BadRequest,
                "give before or after, not both",
                room_about(&room),
            );
        }
        let key = StreamId::Room(room.clone());
        self.pending = Some(Pending::History {
            id,
            room,
            access,
            query,
        });
        self.out.push_back(Action::Route { key });
    }

    fn room(&mut self, id: Option<RequestId>, room: RoomId, req: RoomRequest) {
        let Some(access) = self.identity.room_access(&room) else {
            return self.deny(
                id,
                ErrorCode::Forbidden,
                "no grant for this room",
                room_about(&room),
            );
        };
        if !matches!(req, RoomRequest::Join { .. }) {
            // Other requests go to the shard the socket joined.
            let Some(shard) = self.rooms.get(&room).cloned() else {
                return self.deny(
                    id,
                    ErrorCode::UnknownRoom,
                    "this socket has not joined the room",
                    room_about(&room),
                );
            };
            if matches!(req, RoomRequest::Leave) {
                self.rooms.remove(&room);
            }
            self.send_room(shard, room, id, access, req);
            return;
        }
        // A join is routed afresh: the room may have moved since an earlier join.
        let key = StreamId::Room(room.clone());
        self.pending = Some(Pending::Room {
            id,
            room,
            access,
            req,
        });
        self.out.push_back(Action::Route { key });
    }

    /// A call request: to the shard the socket joined the room on (the call lives with the room).
    fn call(&mut self, id: Option<RequestId>, room: RoomId, req: CallRequest) {
        let Some(access) = self.identity.room_access(&room) else {
            return self.deny(
                id,
                ErrorCode::Forbidden,
                "no grant for this room",
                room_about(&room),
            );
        };
        let Some(shard) = self.rooms.get(&room).cloned() else {
            return self.deny(
                id,
                ErrorCode::UnknownRoom,
                "this socket has not joined the room (join it before its call)",
                room_about(&room),
            );
        };
        self.send_room_call(shard, room, id, access, RoomCall::Call { req });
    }

    fn send_room(
        &mut self,
        shard: H,
        room: RoomId,
        rid: Option<RequestId>,
        access: Access,
        req: RoomRequest,
    ) {
        self.send_room_call(shard, room, rid, access, RoomCall::Request { req });
    }

    fn send_room_call(
        &mut self,
        shard: H,
        room: RoomId,
        rid: Option<RequestId>,
        access: Access,
        call: RoomCall,
    ) {
        let failed = Failed::Room {
            room: room.clone(),
            rid: rid.clone(),
        };
        self.out.push_back(Action::Room {
            shard,
            room,
            rid,
            access,
            call,
            permit: None,
            failed,
        });
    }

    /// Records that the socket sends room requests to `shard`; an earlier handle for the same shard
    /// id that reached it another way (an old link, since replaced) is told the socket is gone.
    fn remember_shard(&mut self, shard: &H) {
        match self.room_shards.insert(shard.id().clone(), shard.clone()) {
            Some(old) if !old.same(shard) => self.out.push_back(Action::RoomClose {
                shard: old,
                conn: self.conn,
            }),
            _ => {}
        }
    }

    /// The owner of the pending request's key (`None`: no shard is reachable for it).
    pub fn handle_routed(&mut self, owner: Option<H>) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let Some(shard) = owner else {
            let (id, message, about) = match pending {
                Pending::DocOpen { id, doc, .. } => {
                    (id, "no shard for this document", doc_about(&doc))
                }
                Pending::Room { id, room, .. } | Pending::History { id, room, .. } => {
                    (id, "no shard for this room", room_about(&room))
                }
            };
            return self.deny(id, ErrorCode::Unavailable, message, about);
        };
        match pending {
            Pending::DocOpen { id, doc, access } => {
                if !self.docs.contains_key(&doc) && self.docs.len() >= self.limits.max_docs {
                    return self.deny(
                        id,
                        ErrorCode::Limit,
                        "too many open documents on this socket",
                        doc_about(&doc),
                    );
                }
                // Opening again restarts the channel (after a doc.closed, or to force a resync). The
                // old channel stays on the closing list until its close is done, so that a socket
                // torn down meanwhile still closes it.
                if let Some((old, old_shard)) = self.docs.remove(&doc) {
                    self.closing.push((old, old_shard.clone()));
                    self.out.push_back(Action::Close {
                        shard: old_shard,
                        channel: old,
                    });
                }
                let channel = (self.next_channel)();
                // Queued before the shard can send anything on the channel: the reply comes first.
                let id_for_failure = id.clone();
                self.reply(&Frame::DocOpened {
                    id,
                    doc: doc.clone(),
                    access,
                });
                self.docs.insert(doc.clone(), (channel, shard.clone()));
                self.out.push_back(Action::Open {
                    shard,
                    channel,
                    doc: doc.clone(),
                    can_write: access >= Access::Write,
                    failed: Failed::Open {
                        doc,
                        rid: id_for_failure,
                    },
                });
            }
            Pending::Room {
                id,
                room,
                access,
                req,
            } => {
                self.remember_shard(&shard);
                if !self.rooms.contains_key(&room) && self.rooms.len() >= self.limits.max_rooms {
                    return self.deny(
                        id,
                        ErrorCode::Limit,
                        "too many rooms joined on this socket",
                        room_about(&room),
                    );
                }
                self.rooms.insert(room.clone(), shard.clone());
                self.send_room(shard, room, id, access, req);
            }
            Pending::History {
                id,
                room,
                access,
                query,
            } => {
                self.remember_shard(&shard);
                let Some(permit) = self.history.try_take() else {
                    let message = format!(
                        "at most {} history requests in flight per socket",
                        self.limits.max_history_in_flight
                    );
                    return self.deny(id, ErrorCode::Limit, message, room_about(&room));
                };
                let failed = Failed::History {
                    room: room.clone(),
                    rid: id.clone(),
                };
                self.out.push_back(Action::Room {
                    shard,
                    room,
                    rid: id,
                    access,
                    call: RoomCall::History {
                        before: query.before,
                        after: query.after,
                        limit: query.limit,
                    },
                    permit: Some(permit),
                    failed,
                });
            }
        }
    }

    /// A shard call failed (the shard, or the link to it, is gone).
    pub fn handle_unavailable(&mut self, failed: Failed) {
        let doc_gone = "the document's shard is unavailable";
        let room_gone = "the room's shard is unavailable";
        let (rid, message, about) = match failed {
            Failed::Open { doc, rid } => {
                self.docs.remove(&doc);
                (rid, doc_gone, doc_about(&doc))
            }
            Failed::Message { doc } => (None, doc_gone, doc_about(&doc)),
            Failed::Room { room, rid } => {
                self.rooms.remove(&room);
                (rid, room_gone, room_about(&room))
            }
            Failed::History { room, rid } => (rid, room_gone, room_about(&room)),
        };
        self.deny(rid, ErrorCode::Unavailable, message, about);
    }

    /// The driver carried out the [`Action::Close`] of `channel`.
    pub fn handle_close_done(&mut self, channel: ConnId) {
        self.closing.retain(|(c, _)| *c != channel);
    }

    /// The socket is gone: every owner is told (idempotent). A channel whose close may still be in
    /// flight is closed again: closing twice is harmless, leaving it open is not.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.pending = None;
        self.rooms.clear();
        let open = self.docs.drain().map(|(_, c)| c);
        let closing = std::mem::take(&mut self.closing);
        for (channel, shard) in open.chain(closing).collect::<Vec<_>>() {
            self.out.push_back(Action::Close { shard, channel });
        }
        for (_, shard) in self.room_shards.drain() {
            self.out.push_back(Action::RoomClose {
                shard,
                conn: self.conn,
            });
        }
    }
}
