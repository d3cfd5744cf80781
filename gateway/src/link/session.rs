//! One gateway → shard link as the gateway sees it, sans-IO: which client connection each link
//! session carries, what to do with each frame from the shard, pings and the silence timeout, and
//! which sessions end when the ring moves their keys or the link drops.
//!
//! Inputs: `handle_frame(now, bytes)`, `handle_timeout(now)`, `connected(now)` / `disconnected(…)`,
//! registrations by client connections, `evict(owns)` after a ring change. Outputs
//! ([`ClientSession::poll_output`]): deliveries to client sinks, session ends, frames to write, a
//! ring hint, a dead link. `S` is the client sink (a `ConnSink` in the gateway; anything in tests).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use proto::link::{self, Beat, Frame, Kind, LinkError, Liveness};
use proto::{DocId, RoomId, StreamId};

/// What a session carries, for re-routing after a ring change and for the end of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carries {
    /// One document (a y-websocket socket or a `/v1` document channel).
    Doc(DocId),
    /// A `/v1` socket's rooms on this shard (joined ones).
    Rooms(BTreeSet<RoomId>),
}

struct Session<S> {
    sink: S,
    carries: Carries,
}

/// What the core asks its driver to do, in order.
#[derive(Debug)]
pub enum ClientOutput<S> {
    /// Queue a message for the client behind `session`; if it does not fit (a slow consumer), call
    /// [`ClientSession::handle_slow_consumer`].
    Deliver {
        /// The link session.
        session: u64,
        /// The client's sink.
        sink: S,
        /// A text (JSON) message rather than a binary one.
        text: bool,
        /// The message.
        payload: Arc<[u8]>,
    },
    /// End what the sink carries (the socket, or a `/v1` document channel) with a close code.
    End {
        /// The client's sink.
        sink: S,
        /// WebSocket close code.
        code: u16,
        /// Client-safe reason.
        reason: String,
    },
    /// Close the client's whole socket.
    Kill {
        /// The client's sink.
        sink: S,
        /// WebSocket close code.
        code: u16,
        /// Client-safe reason.
        reason: &'static str,
    },
    /// Tell a `/v1` socket that `room` moved (`room.closed` with code `moved`): it rejoins.
    Moved {
        /// The client's sink.
        sink: S,
        /// The room.
        room: RoomId,
    },
    /// Write this frame to the shard if the link's queue has room (pings, session closes).
    Transmit(Vec<u8>),
    /// The shard has a newer ring: refresh the gateway's.
    RingHint,
    /// The link is dead (silence, a frame this gateway cannot read): drop the connection; its
    /// sessions were ended by the outputs before this one.
    Dead {
        /// Why, for the log.
        reason: String,
    },
}

/// The gateway side of one link (across reconnects: sessions live as long as the connection that
/// carried them).
pub struct ClientSession<S> {
    sessions: HashMap<u64, Session<S>>,
    liveness: Option<Liveness>,
    out: VecDeque<ClientOutput<S>>,
}

impl<S: Clone> Default for ClientSession<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone> ClientSession<S> {
    /// A link not connected yet.
    pub fn new() -> Self {
        Self {
            sessions: HashMap::new(),
            liveness: None,
            out: VecDeque::new(),
        }
    }

    /// Whether the link is connected.
    pub fn is_connected(&self) -> bool {
        self.liveness.is_some()
    }

    /// Sessions on the link.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The next output, if any. Drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<ClientOutput<S>> {
        self.out.pop_front()
    }

    /// When `handle_timeout` has work next (a ping, the silence timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.liveness.as_ref().map(Liveness::poll_timeout)
    }

    /// The connection to the shard is up.
    pub fn connected(&mut self, now: Instant) {
        self.liveness = Some(Liveness::new(
            now,
            Some(link::PING_EVERY),
            link::LINK_TIMEOUT,
        ));
    }

    /// The connection is gone (`reason` goes to the clients): every session on it ends, since the
    /// shard forgot them. Document sessions close their client (1012; y-websocket clients reconnect
    /// and resync); a `/v1` socket with rooms on this shard closes (1012; the client reconnects and
    /// resumes every room).
    pub fn disconnected(&mut self, reason: &'static str) {
        self.liveness = None;
        self.end_all(reason);
    }

    fn end_all(&mut self, reason: &'static str) {
        for (_, s) in self.sessions.drain() {
            match s.carries {
                Carries::Doc(_) => self.out.push_back(ClientOutput::End {
                    sink: s.sink,
                    code: 1012,
                    reason: reason.to_owned(),
                }),
                Carries::Rooms(rooms) if !rooms.is_empty() => {
                    self.out.push_back(ClientOutput::Kill {
                        sink: s.sink,
                        code: 1012,
                        reason,
                    })
                }
                Carries::Rooms(_) => {}
            }
        }
    }

    /// The link is stopped for good (the shard left the membership): every session ends.
    pub fn stop(&mut self) {
        self.liveness = None;
        self.end_all("shard left the cluster, reconnect");
    }

    /// Records that link session `id` carries `carries` for the client behind `sink` (room sets
    /// add to the session's rooms). False when the link is down (the caller reports the shard
    /// unavailable).
    pub fn register(&mut self, id: u64, sink: S, carries: Carries) -> bool {
        if !self.is_connected() {
            return false;
        }
        match (self.sessions.get_mut(&id), carries) {
            (
                Some(Session {
                    carries: Carries::Rooms(rooms),
                    ..
                }),
                Carries::Rooms(new),
            ) => rooms.extend(new),
            (_, carries) => {
                self.sessions.insert(id, Session { sink, carries });
            }
        }
        true
    }

    /// The socket of session `id` left `room`.
    pub fn left_room(&mut self, id: u64, room: &RoomId) {
        if let Some(Session {
            carries: Carries::Rooms(set),
            ..
        }) = self.sessions.get_mut(&id)
        {
            set.remove(room);
        }
    }

    /// The client of session `id` is gone (its frame to the shard says so).
    pub fn forget(&mut self, id: u64) {
        self.sessions.remove(&id);
    }

    /// The client of `session` did not take a delivery: it is closed (1008) and the shard told.
    pub fn handle_slow_consumer(&mut self, session: u64) {
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        let kind = match s.carries {
            Carries::Doc(_) => Kind::Close,
            Carries::Rooms(_) => Kind::RoomClose,
        };
        self.out.push_back(ClientOutput::Kill {
            sink: s.sink,
            code: 1008,
            reason: "slow consumer",
        });
        let mut frame = Vec::new();
        link::encode_parts(kind, session, &[], &mut frame);
        self.out.push_back(ClientOutput::Transmit(frame));
    }

    /// After a ring change: ends every session whose key `owns` says this shard no longer owns.
    /// Documents close their client (1012, "moved"; the shard is told); rooms get `room.closed`
    /// with code `moved` (the client rejoins; the join is routed to the new owner).
    pub fn evict(&mut self, owns: impl Fn(&StreamId) -> bool) {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            match &mut s.carries {
                Carries::Doc(doc) => {
                    if !owns(&StreamId::Doc(doc.clone())) {
                        if let Some(s) = self.sessions.remove(&id) {
                            self.out.push_back(ClientOutput::End {
                                sink: s.sink,
                                code: 1012,
                                reason: "document moved to another shard, reconnect".into(),
                            });
                            self.out
                                .push_back(ClientOutput::Transmit(link::to_vec(id, &Frame::Close)));
                        }
                    }
                }
                Carries::Rooms(rooms) => {
                    let gone: Vec<RoomId> = rooms
                        .iter()
                        .filter(|r| !owns(&StreamId::Room((*r).clone())))
                        .cloned()
                        .collect();
                    for room in gone {
                        rooms.remove(&room);
                        self.out.push_back(ClientOutput::Moved {
                            sink: s.sink.clone(),
                            room,
                        });
                    }
                }
            }
        }
    }

    /// Timers: pings, and the silence timeout (the shard answers every ping: silence means a dead or
    /// stopped shard).
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(l) = self.liveness.as_mut() else {
            return;
        };
        match l.handle_timeout(now) {
            Some(Beat::Ping) => self
                .out
                .push_back(ClientOutput::Transmit(link::to_vec(0, &Frame::Ping))),
            Some(Beat::Dead) => {
                self.dead(format!("link silent for {:?}", link::LINK_TIMEOUT));
            }
            None => {}
        }
    }

    fn dead(&mut self, reason: String) {
        self.liveness = None;
        self.end_all("shard unavailable, reconnect");
        self.out.push_back(ClientOutput::Dead { reason });
    }

    /// Bytes from the shard that are not a frame (an impossible length).
    pub fn handle_error(&mut self, e: &LinkError) {
        self.dead(e.to_string());
    }

    /// One complete frame from the shard.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) {
        let Some(l) = self.liveness.as_mut() else {
            return;
        };
        l.on_receive(now);
        let (session, frame) = match link::parse(bytes) {
            Ok(f) => f,
            // The hint's payload is only informative: any RING frame means "refresh".
            Err(LinkError::BadPayload {
                kind: Kind::Ring, ..
            }) => {
                self.out.push_back(ClientOutput::RingHint);
                return;
            }
            Err(e) => {
                self.dead(e.to_string());
                return;
            }
        };
        match frame {
            Frame::Binary(p) | Frame::Text(p) => {
                let text = matches!(frame, Frame::Text(_));
                if let Some(s) = self.sessions.get(&session) {
                    self.out.push_back(ClientOutput::Deliver {
                        session,
                        sink: s.sink.clone(),
                        text,
                        payload: p.into(),
                    });
                }
            }
            Frame::End { code, reason } => {
                if let Some(s) = self.sessions.remove(&session) {
                    self.out.push_back(ClientOutput::End {
                        sink: s.sink,
                        code,
                        reason: reason.into_owned(),
                    });
                }
            }
            Frame::Kill { code } => {
                if let Some(s) = self.sessions.remove(&session) {
                    self.out.push_back(ClientOutput::Kill {
                        sink: s.sink,
                        code,
                        reason: "closed by the shard",
                    });
                }
            }
            Frame::Ring { .. } => self.out.push_back(ClientOutput::RingHint),
            Frame::Pong | Frame::Ping => {}
            other => self.dead(format!("unexpected {:?} frame from a shard", other.kind())),
        }
    }
}
