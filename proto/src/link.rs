//! The gateway ↔ shard link (docs/cluster.md, "The link protocol"): a pure codec over bytes, and the
//! link's liveness rule.
//!
//! Every frame is `u32 length (big-endian, of what follows) ‖ u8 kind ‖ u64 session (big-endian) ‖
//! payload`. A session is one y-websocket connection, one `/v1` document channel, or one `/v1`
//! socket's rooms; the gateway picks its id (unique on the link). Frames of one session keep their
//! order. Reading is split like mini-redis's `Frame`: [`check`] says whether a buffer starts with a
//! complete frame (and how long it is), [`parse`] decodes exactly that frame, [`encode`] writes one.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::v1::{CallRequest, RequestId, RoomRequest};
use crate::{Access, DocId, RoomId, Seq, UserId};

/// Bytes before the payload: length, kind, session.
pub const HEADER_LEN: usize = 4 + 1 + 8;

/// Largest frame accepted by default (length field value). A document message is bounded far below
/// this by the gateway's message limit.
pub const MAX_FRAME: usize = 64 << 20;

/// How often a gateway pings each link.
pub const PING_EVERY: Duration = Duration::from_secs(2);

/// A link with no frame for this long is dropped (by either side).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(6);

/// Frame kinds (the `u8` after the length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// gateway → shard: attach a session to a document.
    Open = 1,
    /// gateway → shard: a y-websocket message of the session.
    Msg = 2,
    /// gateway → shard: the session's client is gone.
    Close = 3,
    /// gateway → shard: a room request.
    Room = 4,
    /// gateway → shard: the session's socket is gone (leave every room).
    RoomClose = 5,
    /// Either way: liveness probe.
    Ping = 6,
    /// Answer to `Ping`.
    Pong = 7,
    /// shard → gateway: a binary message for the client.
    Frame = 16,
    /// shard → gateway: a text message for the client.
    Text = 17,
    /// shard → gateway: the session ended (code, reason).
    End = 18,
    /// shard → gateway: close the client's socket (code).
    Kill = 19,
    /// shard → gateway: a newer ring exists.
    Ring = 20,
}

impl Kind {
    /// The kind of a byte, if it is one.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Open,
            2 => Self::Msg,
            3 => Self::Close,
            4 => Self::Room,
            5 => Self::RoomClose,
            6 => Self::Ping,
            7 => Self::Pong,
            16 => Self::Frame,
            17 => Self::Text,
            18 => Self::End,
            19 => Self::Kill,
            20 => Self::Ring,
            _ => return None,
        })
    }
}

/// `OPEN`: a document session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// The document.
    pub doc: DocId,
    /// The authenticated user.
    pub actor: UserId,
    /// Whether the user may write.
    pub write: bool,
    /// The gateway's ring version (the shard refreshes its own when this is newer).
    pub ring: u64,
}

/// `ROOM`: one room request of a `/v1` socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Room {
    /// The authenticated user.
    pub user: UserId,
    /// The user's access in this room.
    pub access: Access,
    /// The room.
    pub room: RoomId,
    /// The client's request id.
    pub rid: Option<RequestId>,
    /// What is asked.
    pub call: RoomCall,
    /// The gateway's ring version.
    pub ring: u64,
}

/// What a `ROOM` frame asks of the room's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum RoomCall {
    /// Handled by the room core.
    Request {
        /// The request.
        req: RoomRequest,
    },
    /// A call request, handled by the owner's call core.
    Call {
        /// The request.
        req: CallRequest,
    },
    /// A history read, served from the store.
    History {
        /// Exclusive upper bound.
        before: Option<Seq>,
        /// Exclusive lower bound.
        after: Option<Seq>,
        /// At most this many.
        limit: u64,
    },
}

/// `RING`'s payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct RingHint {
    version: u64,
}

/// One decoded frame; binary payloads borrow from the buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    /// Attach a document session.
    Open(Open),
    /// A y-websocket message from the client.
    Msg(&'a [u8]),
    /// The document session's client is gone.
    Close,
    /// A room request.
    Room(Box<Room>),
    /// The `/v1` socket is gone.
    RoomClose,
    /// Liveness probe.
    Ping,
    /// Answer to a probe.
    Pong,
    /// A binary message for the client.
    Binary(&'a [u8]),
    /// A text message for the client.
    Text(&'a [u8]),
    /// The session ended.
    End {
        /// WebSocket close code.
        code: u16,
        /// Client-safe reason.
        reason: Cow<'a, str>,
    },
    /// Close the client's socket.
    Kill {
        /// WebSocket close code.
        code: u16,
    },
    /// The shard saw a newer ring.
    Ring {
        /// Its version.
        version: u64,
    },
}

impl Frame<'_> {
    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Open(_) => Kind::Open,
            Self::Msg(_) => Kind::Msg,
            Self::Close => Kind::Close,
            Self::Room(_) => Kind::Room,
            Self::RoomClose => Kind::RoomClose,
            Self::Ping => Kind::Ping,
            Self::Pong => Kind::Pong,
            Self::Binary(_) => Kind::Frame,
            Self::Text(_) => Kind::Text,
            Self::End { .. } => Kind::End,
            Self::Kill { .. } => Kind::Kill,
            Self::Ring { .. } => Kind::Ring,
        }
    }
}

/// What is wrong with link bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The length field is below the header or above the limit: the stream cannot be trusted.
    BadLength(usize),
    /// An unknown frame kind: the peer speaks something else.
    UnknownKind(u8),
    /// A known kind whose payload does not decode; only that session is affected.
    BadPayload {
        /// The frame's kind.
        kind: Kind,
        /// The frame's session.
        session: u64,
    },
}

impl LinkError {
    /// Whether the link must be dropped (otherwise only the session is refused).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::BadPayload { .. })
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLength(n) => write!(f, "link frame of {n} bytes"),
            Self::UnknownKind(k) => write!(f, "unknown link frame kind {k}"),
            Self::BadPayload { kind, session } => {
                write!(f, "malformed {kind:?} payload on session {session}")
            }
        }
    }
}

impl std::error::Error for LinkError {}

/// Whether `buf` starts with a complete frame: `Ok(Some(n))` with its total length `n` (header
/// included), `Ok(None)` when more bytes are needed, `Err` when the length field is impossible
/// (below the header or above `max`, the largest length field accepted).
pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, LinkError> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if !(HEADER_LEN - 4..=max).contains(&len) {
        return Err(LinkError::BadLength(len));
    }
    Ok((buf.len() >= 4 + len).then_some(4 + len))
}

/// Decodes one complete frame (exactly the bytes [`check`] measured): its session and content.
pub fn parse(frame: &[u8]) -> Result<(u64, Frame<'_>), LinkError> {
    if frame.len() < HEADER_LEN {
        return Err(LinkError::BadLength(frame.len().saturating_sub(4)));
    }
    let k = frame[4];
    let mut session = [0u8; 8];
    session.copy_from_slice(&frame[5..HEADER_LEN]);
    let session = u64::from_be_bytes(session);
    let payload = &frame[HEADER_LEN..];
    let kind = Kind::from_u8(k).ok_or(LinkError::UnknownKind(k))?;
    let bad = LinkError::BadPayload { kind, session };
    let code = |p: &[u8]| match p {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        // A peer that sends no code still ended the session: "internal error".
        _ => 1011,
    };
    let parsed = match kind {
        Kind::Open => Frame::Open(serde_json::from_slice(payload).map_err(|_| bad)?),
        Kind::Msg => Frame::Msg(payload),
        Kind::Close => Frame::Close,
        Kind::Room => Frame::Room(Box::new(serde_json::from_slice(payload).map_err(|_| bad)?)),
        Kind::RoomClose => Frame::RoomClose,
        Kind::Ping => Frame::Ping,
        Kind::Pong => Frame::Pong,
        Kind::Frame => Frame::Binary(payload),
        Kind::Text => Frame::Text(payload),
        Kind::End => Frame::End {
            code: code(payload),
            reason: String::from_utf8_lossy(payload.get(2..).unwrap_or_default()),
        },
        Kind::Kill => Frame::Kill {
            code: code(payload),
        },
        Kind::Ring => {
            let hint: RingHint = serde_json::from_slice(payload).map_err(|_| bad)?;
            Frame::Ring {
                version: hint.version,
            }
        }
    };
    Ok((session, parsed))
}

/// Appends one frame to `out`.
pub fn encode(session: u64, frame: &Frame<'_>, out: &mut Vec<u8>) {
    let kind = frame.kind();
    match frame {
        Frame::Open(o) => encode_parts(kind, session, &[&json(o)], out),
        Frame::Room(r) => encode_parts(kind, session, &[&json(&**r)], out),
        Frame::Ring { version } => encode_parts(
            kind,
            session,
            &[&json(&RingHint { version: *version })],
            out,
        ),
        Frame::Msg(p) | Frame::Binary(p) | Frame::Text(p) => encode_parts(kind, session, &[p], out),
        Frame::Close | Frame::RoomClose | Frame::Ping | Frame::Pong => {
            encode_parts(kind, session, &[], out)
        }
        Frame::End { code, reason } => encode_parts(
            kind,
            session,
            &[&code.to_be_bytes(), reason.as_bytes()],
            out,
        ),
        Frame::Kill { code } => encode_parts(kind, session, &[&code.to_be_bytes()], out),
    }
}

/// One encoded frame.
pub fn to_vec(session: u64, frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(session, frame, &mut out);
    out
}

/// Appends a frame whose payload is the concatenation of `parts` (a `/v1` document frame is its
/// channel prefix then the message: no copy to join them first).
pub fn encode_parts(kind: Kind, session: u64, parts: &[&[u8]], out: &mut Vec<u8>) {
    let payload: usize = parts.iter().map(|p| p.len()).sum();
    let len = HEADER_LEN - 4 + payload;
    out.reserve(4 + len);
    // A frame over u32::MAX would be refused by every peer's `check`; the gateway's message limit
    // keeps payloads far below that.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&session.to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("link payloads always serialize")
}

/// What [`Liveness`] asks of its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Send a `PING`.
    Ping,
    /// Nothing was received for [`LINK_TIMEOUT`]: the peer is dead or paused; drop the link.
    Dead,
}

/// The link's liveness rule, sans-IO: the gateway pings every [`PING_EVERY`], and either side drops
/// a link on which nothing arrived for [`LINK_TIMEOUT`] (a vanished host sends no reset; a paused
/// process answers nothing).
#[derive(Debug, Clone)]
pub struct Liveness {
    ping_every: Option<Duration>,
    timeout: Duration,
    last_rx: Instant,
    next_ping: Option<Instant>,
}

impl Liveness {
    /// Starts at `now`; `ping_every` is `None` on the side that only answers.
    pub fn new(now: Instant, ping_every: Option<Duration>, timeout: Duration) -> Self {
        Self {
            ping_every,
            timeout,
            last_rx: now,
            next_ping: ping_every.map(|p| now + p),
        }
    }

    /// Something arrived.
    pub fn on_receive(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    /// When [`Liveness::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Instant {
        let dead = self.last_rx + self.timeout;
        self.next_ping.map_or(dead, |p| p.min(dead))
    }

    /// The next thing to do at `now`, if anything.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Beat> {
        if now >= self.last_rx + self.timeout {
            return Some(Beat::Dead);
        }
        match (self.next_ping, self.ping_every) {
            (Some(at), Some(every)) if now >= at => {
                // From now, not from `at`: a late driver does not send a burst of pings.
                self.next_ping = Some(now + every);
                Some(Beat::Ping)
            }
            _ => None,
        }
    }
}
