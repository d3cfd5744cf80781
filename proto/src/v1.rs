//! The native protocol v1 (`/v1`, specified in docs/protocol.md) as types: the single source of its
//! wire format.
//!
//! * [`ClientFrame`]: every text frame a client may send, parsed by [`parse_client_frame`], which
//!   turns anything else into a [`FrameError`] with the wire [`ErrorCode`] the protocol promises.
//! * [`ServerFrame`]: every text frame the server sends. It is generic over the representation of
//!   room events: the server renders each committed event once and splices it into every frame that
//!   carries it (`ServerFrame<&RawValue>`, see [`Frame`]); a client reads them as typed envelopes
//!   (`ServerFrame<Event>`).
//! * [`RoomRequest`]: a room request as the room's owner sees it (what the gateway forwards after the
//!   socket-level checks), also the payload of the gateway ↔ shard link.
//!
//! Versioning rule (docs/protocol.md): within v1 frames only gain optional fields and new `t` values,
//! so nothing here denies unknown fields.

use std::fmt;
use std::num::NonZeroU64;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::{Access, DocId, Epoch, ProtoError, RoomId, Seq, UserId};

/// The protocol version (the path is `/v{VERSION}`).
pub const VERSION: u32 = 1;

/// Longest request id accepted, in bytes.
pub const MAX_REQUEST_ID: usize = 128;

/// Events a `history` request returns when it names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: u64 = 50;

/// A request id chosen by the client: 1–128 bytes, echoed in the one reply to the request, and the
/// idempotency key of `send`, `edit` and `delete`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);

impl RequestId {
    /// Checks the length (1–128 bytes).
    pub fn parse(s: &str) -> Result<Self, ProtoError> {
        if s.is_empty() || s.len() > MAX_REQUEST_ID {
            return Err(ProtoError::InvalidId {
                kind: "request id",
                why: "must be a string of 1 to 128 bytes",
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A position in a room's event stream: the `(epoch, seq)` of the last event a client has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The epoch of that event.
    pub epoch: Epoch,
    /// Its seq (0 with epoch 0: "before the first event").
    pub seq: Seq,
}

impl Position {
    /// Before the first event.
    pub const START: Position = Position {
        epoch: Epoch(0),
        seq: Seq(0),
    };
}

/// Every frame a client may send (text frames; `t` names the type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum ClientFrame {
    /// Liveness check; answered with `pong`.
    #[serde(rename = "ping")]
    Ping {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Become a member of a room (again); resume after `since`; set this connection's presence.
    #[serde(rename = "join")]
    Join {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The last event the client saw.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
        /// Initial presence state (JSON; `null` = none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<Value>,
    },
    /// Stop being a member.
    #[serde(rename = "leave")]
    Leave {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
    },
    /// A chat message (`id` is required: it is the idempotency key).
    #[serde(rename = "send")]
    Send {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// Text.
        text: String,
    },
    /// New text for an earlier message.
    #[serde(rename = "edit")]
    Edit {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The `chat.message.sent` event's seq.
        target: Seq,
        /// Text.
        text: String,
    },
    /// Withdraw an earlier message.
    #[serde(rename = "delete")]
    Delete {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The `chat.message.sent` event's seq.
        target: Seq,
    },
    /// Replace this connection's presence state.
    #[serde(rename = "presence")]
    Presence {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The state (JSON).
        state: Value,
    },
    /// Typing indicator on or off.
    #[serde(rename = "typing")]
    Typing {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// Whether the user is typing.
        typing: bool,
    },
    /// Read committed events of a room.
    #[serde(rename = "history")]
    History {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// Exclusive upper bound: the newest `limit` events before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<Seq>,
        /// Exclusive lower bound: the first `limit` events after it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Seq>,
        /// At most this many (default 50, capped by the server's page size).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<NonZeroU64>,
    },
    /// Open (or reopen: restart and resync) a document channel.
    #[serde(rename = "doc.open")]
    DocOpen {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The document.
        doc: DocId,
    },
    /// Close a document channel.
    #[serde(rename = "doc.close")]
    DocClose {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The document.
        doc: DocId,
    },
    /// Join the room's call (the socket must have joined the room).
    #[serde(rename = "call.join")]
    CallJoin {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
    },
    /// Leave the room's call.
    #[serde(rename = "call.leave")]
    CallLeave {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
    },
    /// An SDP offer (the client always offers; answered with `call.answer`).
    #[serde(rename = "call.offer")]
    CallOffer {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The offer (SDP text).
        sdp: String,
        /// Sending m-lines of this offer that publish a track, with its kind.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        publish: Vec<Publish>,
        /// Receiving m-lines of this offer that carry another participant's track.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        subscribe: Vec<Subscribe>,
    },
    /// A trickled ICE candidate of the client (`null` or `""`: end of candidates).
    #[serde(rename = "call.ice")]
    CallIce {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The candidate line (`candidate:…`).
        #[serde(default)]
        candidate: Option<String>,
    },
    /// Declares the kind of a sending m-line before the `call.offer` that adds it.
    #[serde(rename = "track.publish")]
    TrackPublish {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The m-line (its `mid` in the client's description).
        mid: String,
        /// What it carries.
        kind: TrackKind,
    },
    /// Stops publishing one of the client's tracks.
    #[serde(rename = "track.unpublish")]
    TrackUnpublish {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The track id.
        track: String,
    },
    /// Changes the wanted quality of a subscribed track (`off`: stop forwarding it).
    #[serde(rename = "track.subscribe")]
    TrackSubscribe {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The track id.
        track: String,
        /// The wanted quality.
        quality: Quality,
    },
    /// Mutes or unmutes one of the client's tracks (announced to the call).
    #[serde(rename = "track.mute")]
    TrackMute {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The track id.
        track: String,
        /// Muted or not.
        muted: bool,
    },
}

/// What a published track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackKind {
    /// Camera video.
    Camera,
    /// Microphone audio.
    Microphone,
    /// Screen share video.
    Screen,
    /// Screen share audio.
    ScreenAudio,
}

impl TrackKind {
    /// Whether the track is video.
    pub fn is_video(self) -> bool {
        matches!(self, Self::Camera | Self::Screen)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Camera => "camera",
            Self::Microphone => "microphone",
            Self::Screen => "screen",
            Self::ScreenAudio => "screen-audio",
        }
    }
}

/// A subscriber's wanted quality of a video track (audio ignores it, except `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Nothing (the track is not displayed): nothing is forwarded.
    Off,
    /// The lowest simulcast layer.
    Low,
    /// The middle layer.
    Medium,
    /// The highest layer.
    High,
}

/// One `publish` entry of `call.offer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The m-line's mid.
    pub mid: String,
    /// What it carries.
    pub kind: TrackKind,
}

/// One `subscribe` entry of `call.offer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// The receiving m-line's mid.
    pub mid: String,
    /// The track it carries.
    pub track: String,
    /// The wanted quality (default `high`).
    #[serde(default = "Quality::high")]
    pub quality: Quality,
}

impl Quality {
    fn high() -> Self {
        Self::High
    }
}

/// A call request as the room's owner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CallRequest {
    /// `call.join`.
    Join,
    /// `call.leave`.
    Leave,
    /// `call.offer`.
    Offer {
        /// The SDP offer.
        sdp: String,
        /// Publishing m-lines.
        publish: Vec<Publish>,
        /// Subscribing m-lines.
        subscribe: Vec<Subscribe>,
    },
    /// `call.ice`.
    Ice {
        /// The candidate (`None`: end of candidates).
        candidate: Option<String>,
    },
    /// `track.publish`.
    Publish {
        /// The entry.
        publish: Publish,
    },
    /// `track.unpublish`.
    Unpublish {
        /// The track.
        track: String,
    },
    /// `track.subscribe`.
    Subscribe {
        /// The track.
        track: String,
        /// The wanted quality.
        quality: Quality,
    },
    /// `track.mute`.
    Mute {
        /// The track.
        track: String,
        /// Muted or not.
        muted: bool,
    },
}

/// A call participant, in `call.joined` and `call.participant.joined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// The participant id (one per connection that joined the call).
    pub id: String,
    /// Its user.
    pub user: UserId,
}

/// A published track, in `call.joined` and `track.published`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// The track id.
    pub id: String,
    /// The publishing participant.
    pub participant: String,
    /// Its user.
    pub user: UserId,
    /// What it carries.
    pub kind: TrackKind,
    /// Muted by its publisher.
    pub muted: bool,
    /// Simulcast layers (rids) the publisher sends; empty without simulcast.
    pub layers: Vec<String>,
}

/// An ICE server handed to clients (`RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `turn:` / `turns:` / `stun:` URLs.
    pub urls: Vec<String>,
    /// TURN username (time-limited: `expiry:user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password for `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A `history` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Exclusive upper bound.
    pub before: Option<Seq>,
    /// Exclusive lower bound.
    pub after: Option<Seq>,
    /// At most this many (the owner caps it further).
    pub limit: u64,
}

/// What a client frame asks for, with its request id split off.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `ping`.
    Ping,
    /// A request the room's owner handles.
    Room {
        /// The room.
        room: RoomId,
        /// The request.
        req: RoomRequest,
    },
    /// `history`.
    History {
        /// The room.
        room: RoomId,
        /// The query.
        query: HistoryQuery,
    },
    /// `doc.open`.
    DocOpen {
        /// The document.
        doc: DocId,
    },
    /// `doc.close`.
    DocClose {
        /// The document.
        doc: DocId,
    },
    /// A call request (`call.*`, `track.*`), handled by the room's owner.
    Call {
        /// The room.
        room: RoomId,
        /// The request.
        req: CallRequest,
    },
}

impl ClientFrame {
    /// The request id and what is asked.
    pub fn into_request(self) -> (Option<RequestId>, Request) {
        use RoomRequest as R;
        let room = |room, req| Request::Room { room, req };
        match self {
            Self::Ping { id } => (id, Request::Ping),
            Self::Join {
                id,
                room: r,
                since,
                state,
            } => (id, room(r, R::Join { since, state })),
            Self::Leave { id, room: r } => (id, room(r, R::Leave)),
            Self::Send { id, room: r, text } => (id, room(r, R::Send { text })),
            Self::Edit {
                id,
                room: r,
                target,
                text,
            } => (id, room(r, R::Edit { target, text })),
            Self::Delete {
                id,
                room: r,
                target,
            } => (id, room(r, R::Delete { target })),
            Self::Presence { id, room: r, state } => (id, room(r, R::Presence { state })),
            Self::Typing {
                id,
                room: r,
                typing,
            } => (id, room(r, R::Typing { on: typing })),
            Self::History {
                id,
                room,
                before,
                after,
                limit,
            } => (
                id,
                Request::History {
                    room,
                    query: HistoryQuery {
                        before,
                        after,
                        limit: limit.map_or(DEFAULT_HISTORY_LIMIT, NonZeroU64::get),
                    },
                },
            ),
            Self::DocOpen { id, doc } => (id, Request::DocOpen { doc }),
            Self::DocClose { id, doc } => (id, Request::DocClose { doc }),
            Self::CallJoin { id, room } => (
                id,
                Request::Call {
                    room,
                    req: CallRequest::Join,
                },
            ),
            Self::CallLeave { id, room } => (
                id,
                Request::Call {
                    room,
                    req: CallRequest::Leave,
                },
            ),
            Self::CallOffer {
                id,
                room,
                sdp,
                publish,
                subscribe,
            } => (
                id,
                Request::Call {
                    room,
                    req: CallRequest::Offer {
                        sdp,
                        publish,
                        subscribe,
                    },
                },
            ),
            Self::CallIce {
                id,
                room,
                candidate,
            } => (
                id,
                Request::Call {
                    room,
                    req: CallRequest::Ice {
                        candidate: candidate.filter(|c| !c.is_empty()),
                    },
                },
            ),
            Self::TrackPublish {
                id,
                room,
                mid,
                kind,
            } => (
                id,
                Request::Call {
                    room,
                    req: CallRequest::Publish {
                        publish: Publish { mid, kind },
                    },
                },
            ),
            Self::TrackUnpublish { id, room, track } => (
                id,
                Request::Call {
                    room,
                    req: CallRequest::Unpublish { track },
                },
            ),
            Self::TrackSubscribe {
                id,
                room,
                track,
                quality,
            } => (
                id,
                Request::Call {
                    room,
                    req: CallRequest::Subscribe { track, quality },
                },
            ),
            Self::TrackMute {
                id,
                room,
                track,
                muted,
            } => (
                id,
                Request::Call {
                    room,
                    req: CallRequest::Mute { track, muted },
                },
            ),
        }
    }
}

/// A client's request about one room, as the room's owner sees it (after the gateway's checks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum RoomRequest {
    /// Become a member; optionally resume after `since` and publish an initial presence state.
    Join {
        /// The last event the client saw, to receive exactly the ones after it.
        since: Option<Position>,
        /// Initial presence state of this connection (JSON).
        state: Option<Value>,
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
        state: Value,
    },
    /// Typing started (`true`) or stopped.
    Typing {
        /// Whether the user is typing.
        on: bool,
    },
}

/// The `code` of an `error` or `room.closed` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a JSON object, unknown `t`, missing or mistyped field, or a binary frame without a
    /// document prefix.
    BadFrame,
    /// Well-formed but invalid.
    BadRequest,
    /// A room or document id outside the allow-list.
    InvalidId,
    /// The token grants nothing here, or too little.
    Forbidden,
    /// The socket has not joined this room.
    UnknownRoom,
    /// The socket has not opened this document.
    UnknownDoc,
    /// `edit`/`delete` of a seq that is not a live message in the room's window.
    NotFound,
    /// Message text or presence state over its limit.
    TooLarge,
    /// A configured limit was reached.
    Limit,
    /// The store failed or the room could not be loaded (or is moving); retry.
    Unavailable,
    /// The server is stopping.
    ShuttingDown,
    /// `room.closed` only: the room moved to another shard; rejoin.
    Moved,
    /// A call request from a connection that is not in the room's call (`call.join` first).
    NotInCall,
    /// `call.closed` only: the participant's media connection timed out.
    Timeout,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::BadRequest => "bad_request",
            Self::InvalidId => "invalid_id",
            Self::Forbidden => "forbidden",
            Self::UnknownRoom => "unknown_room",
            Self::UnknownDoc => "unknown_doc",
            Self::NotFound => "not_found",
            Self::TooLarge => "too_large",
            Self::Limit => "limit",
            Self::Unavailable => "unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::Moved => "moved",
            Self::NotInCall => "not_in_call",
            Self::Timeout => "timeout",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a resume (`join` with `since`) could not replay the missed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumeFailure {
    /// The event at `since` is no longer in the room's window.
    TooOld,
    /// The event at `since` is not the one the client saw (the log was replaced).
    EpochChanged,
    /// `since` is past the end of the room.
    UnknownPosition,
}

/// The limits announced in `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloLimits {
    /// Largest message the server reads.
    pub max_message_bytes: usize,
    /// Documents one socket may have open.
    pub max_docs: usize,
    /// Rooms one socket may have joined.
    pub max_rooms: usize,
}

/// One user's presence in a room, merged over all of the user's connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// The user.
    pub user: UserId,
    /// The state most recently set by any of the user's connections (`null` if none).
    pub state: Value,
    /// How many connections the user has in the room.
    pub connections: usize,
}

/// Every text frame the server sends. `E` is how room events are carried: pre-rendered JSON on the
/// server ([`Frame`]), typed envelopes (`crate::Event`) or `serde_json::Value` in a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum ServerFrame<E> {
    /// The server's first frame.
    #[serde(rename = "hello")]
    Hello {
        /// Protocol version.
        v: u32,
        /// The authenticated user.
        user: UserId,
        /// Per-socket limits.
        limits: HelloLimits,
    },
    /// Reply to `join`.
    #[serde(rename = "joined")]
    Joined {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The room's latest event (where a client that saw everything resumes).
        position: Position,
        /// With `since`: whether the missed events follow in `events`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// With `recovered: false`: why not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<ResumeFailure>,
        /// The events after `since`, oldest first.
        events: Vec<E>,
        /// Who is here.
        presence: Vec<PresenceEntry>,
        /// Who is typing.
        typing: Vec<UserId>,
    },
    /// Reply to `leave`.
    #[serde(rename = "left")]
    Left {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
    },
    /// Reply to `send`/`edit`/`delete`, after the commit.
    #[serde(rename = "ack")]
    Ack {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The event's epoch.
        epoch: Epoch,
        /// The event's seq.
        seq: Seq,
        /// The request was a retry of one already appended.
        #[serde(default, skip_serializing_if = "is_false")]
        duplicate: bool,
    },
    /// A committed room event, to every member.
    #[serde(rename = "event")]
    Event {
        /// The room.
        room: RoomId,
        /// The event envelope.
        event: E,
    },
    /// Coalesced presence changes.
    #[serde(rename = "presence")]
    Presence {
        /// The room.
        room: RoomId,
        /// Entries that changed.
        set: Vec<PresenceEntry>,
        /// Users that left.
        gone: Vec<UserId>,
    },
    /// The room's typists, when the set changed.
    #[serde(rename = "typing")]
    Typing {
        /// The room.
        room: RoomId,
        /// Who is typing.
        users: Vec<UserId>,
    },
    /// The server dropped the room; rejoin with `since`.
    #[serde(rename = "room.closed")]
    RoomClosed {
        /// The room.
        room: RoomId,
        /// Why (`unavailable`, `moved`, `shutting_down`).
        code: ErrorCode,
        /// Human-readable.
        message: String,
    },
    /// Reply to `history`, oldest first.
    #[serde(rename = "history")]
    History {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The events.
        events: Vec<E>,
    },
    /// Reply to `doc.open`; the document's binary frames follow it.
    #[serde(rename = "doc.opened")]
    DocOpened {
        /// Request id.
        id: Option<RequestId>,
        /// The document.
        doc: DocId,
        /// The socket's access on it.
        access: Access,
    },
    /// The server ended a document channel; `doc.open` again to resync.
    #[serde(rename = "doc.closed")]
    DocClosed {
        /// The document.
        doc: DocId,
        /// A close code of the y-websocket table.
        code: u16,
        /// Client-safe reason.
        reason: String,
    },
    /// Reply to `call.join`.
    #[serde(rename = "call.joined")]
    CallJoined {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// This connection's participant id.
        participant: String,
        /// Everyone in the call, this connection included.
        participants: Vec<ParticipantInfo>,
        /// Every published track.
        tracks: Vec<TrackInfo>,
        /// ICE servers for the peer connection (TURN, when configured).
        ice_servers: Vec<IceServer>,
    },
    /// Reply to `call.offer`.
    #[serde(rename = "call.answer")]
    CallAnswer {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomId,
        /// The answer (SDP text).
        sdp: String,
    },
    /// A server ICE candidate (also in every answer; `null`: end of candidates).
    #[serde(rename = "call.ice")]
    CallIce {
        /// The room.
        room: RoomId,
        /// The candidate line.
        candidate: Option<String>,
    },
    /// Someone joined the call.
    #[serde(rename = "call.participant.joined")]
    CallParticipantJoined {
        /// The room.
        room: RoomId,
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone left the call (their tracks are gone with them).
    #[serde(rename = "call.participant.left")]
    CallParticipantLeft {
        /// The room.
        room: RoomId,
        /// The participant id.
        participant: String,
        /// `left`, `timeout`, `closed`.
        reason: String,
    },
    /// A track was published.
    #[serde(rename = "track.published")]
    TrackPublished {
        /// The room.
        room: RoomId,
        /// The track.
        track: TrackInfo,
    },
    /// A track was unpublished.
    #[serde(rename = "track.unpublished")]
    TrackUnpublished {
        /// The room.
        room: RoomId,
        /// The track id.
        track: String,
    },
    /// A track was muted or unmuted by its publisher.
    #[serde(rename = "track.muted")]
    TrackMuted {
        /// The room.
        room: RoomId,
        /// The track id.
        track: String,
        /// Muted or not.
        muted: bool,
    },
    /// The active speaker changed (`null`: nobody speaks).
    #[serde(rename = "call.speaker")]
    CallSpeaker {
        /// The room.
        room: RoomId,
        /// The participant id.
        participant: Option<String>,
    },
    /// The server ended this connection's participation (`moved`, `timeout`, `unavailable`,
    /// `shutting_down`); `call.join` again (with a new peer connection).
    #[serde(rename = "call.closed")]
    CallClosed {
        /// The room.
        room: RoomId,
        /// Why.
        code: ErrorCode,
        /// Human-readable.
        message: String,
    },
    /// Success reply without data.
    #[serde(rename = "ok")]
    Ok {
        /// Request id.
        id: Option<RequestId>,
    },
    /// Reply to `ping`.
    #[serde(rename = "pong")]
    Pong {
        /// Request id.
        id: Option<RequestId>,
    },
    /// A refused request: nothing was applied or persisted (but see `unavailable` for sends).
    #[serde(rename = "error")]
    Error {
        /// Request id (null when the request had none or it was unreadable).
        id: Option<RequestId>,
        /// The code.
        code: ErrorCode,
        /// Human-readable.
        message: String,
        /// The room the request named, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// The document the request named, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        doc: Option<String>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A server frame as the server renders it: room events spliced in as already-rendered JSON.
pub type Frame<'a> = ServerFrame<&'a RawValue>;

impl<E: Serialize> ServerFrame<E> {
    /// The frame's JSON text.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Every field is a string, integer, bool, already-valid JSON or a `Value` (which cannot
        // hold a non-finite number), so serialization cannot fail.
        serde_json::to_vec(self).expect("server frames always serialize")
    }
}

/// An event envelope rendered once (at commit) for every frame that carries it.
pub fn render_event(event: &crate::Event) -> Box<RawValue> {
    serde_json::value::to_raw_value(event).expect("events always serialize")
}

/// A client text frame that could not be accepted, with what the `error` reply carries.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// The wire code (`bad_frame` or `invalid_id`).
    pub code: ErrorCode,
    /// Human-readable.
    pub message: String,
    /// The frame's request id, when it had a valid one.
    pub id: Option<RequestId>,
    /// The room or document the frame named (as sent, if at most 128 bytes), echoed in the reply.
    pub about: Option<About>,
    /// The frame's type, when `t` named a known one.
    pub kind: Option<&'static str>,
}

/// What a refused frame was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum About {
    /// A room id (as sent).
    Room(String),
    /// A document id (as sent).
    Doc(String),
}

impl FrameError {
    /// The `error` reply.
    pub fn reply<E>(&self) -> ServerFrame<E> {
        let (room, doc) = match &self.about {
            Some(About::Room(r)) => (Some(r.clone()), None),
            Some(About::Doc(d)) => (None, Some(d.clone())),
            None => (None, None),
        };
        ServerFrame::Error {
            id: self.id.clone(),
            code: self.code,
            message: self.message.clone(),
            room,
            doc,
        }
    }
}

const FRAME_TYPES: &[&str] = &[
    "ping",
    "join",
    "leave",
    "send",
    "edit",
    "delete",
    "presence",
    "typing",
    "history",
    "doc.open",
    "doc.close",
    "call.join",
    "call.leave",
    "call.offer",
    "call.ice",
    "track.publish",
    "track.unpublish",
    "track.subscribe",
    "track.mute",
];

/// Parses one client text frame (already checked to be UTF-8 by the WebSocket layer).
pub fn parse_client_frame(text: &[u8]) -> Result<ClientFrame, FrameError> {
    // serde also reads a tagged enum from a sequence (`["ping"]`); the protocol takes objects only.
    let object = text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = if object {
        serde_json::from_slice::<ClientFrame>(text)
    } else {
        serde_json::from_slice::<ClientFrame>(b"[]")
    };
    parsed.map_err(|e| diagnose(text, &e))
}

/// Says precisely what is wrong with a frame the typed parse refused (the error path only, so the
/// second parse costs nothing on valid traffic).
fn diagnose(text: &[u8], typed: &serde_json::Error) -> FrameError {
    let bad = |message: &str| FrameError {
        code: ErrorCode::BadFrame,
        message: message.to_owned(),
        id: None,
        about: None,
        kind: None,
    };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(text) else {
        return bad("a text frame must hold one JSON object");
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match RequestId::parse(s) {
            Ok(id) => Some(id),
            Err(_) => return bad("id must be a string of 1 to 128 bytes"),
        },
        Some(_) => return bad("id must be a string of 1 to 128 bytes"),
    };
    let echo = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .filter(|s| s.len() <= MAX_REQUEST_ID)
            .map(str::to_owned)
    };
    let about = echo("room")
        .map(About::Room)
        .or_else(|| echo("doc").map(About::Doc));
    let kind = map
        .get("t")
        .and_then(Value::as_str)
        .and_then(|t| FRAME_TYPES.iter().find(|k| **k == t).copied());
    let fail = |code, message: String| FrameError {
        code,
        message,
        id: id.clone(),
        about: about.clone(),
        kind,
    };
    let t = match map.get("t") {
        None | Some(Value::Null) => {
            return fail(ErrorCode::BadFrame, "missing t (the frame type)".into())
        }
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return fail(ErrorCode::BadFrame, "t must be a string".into()),
    };
    if !FRAME_TYPES.contains(&t) {
        return fail(ErrorCode::BadFrame, "unknown frame type".into());
    }
    // An id field that is a string but outside its allow-list is `invalid_id`, whatever else is
    // wrong with the frame.
    let id_field = match t {
        "ping" => None,
        t if t.starts_with("doc.") => Some("doc"),
        _ => Some("room"),
    };
    if let Some(field) = id_field {
        match map.get(field) {
            None | Some(Value::Null) => {
                return fail(ErrorCode::BadFrame, format!("missing {field}"));
            }
            Some(Value::String(s)) => {
                let checked = if field == "doc" {
                    DocId::parse(s).map(drop)
                } else {
                    RoomId::parse(s).map(drop)
                };
                if let Err(e) = checked {
                    return fail(ErrorCode::InvalidId, e.to_string());
                }
            }
            Some(_) => return fail(ErrorCode::BadFrame, format!("{field} must be a string")),
        }
    }
    fail(ErrorCode::BadFrame, field_message(typed))
}

/// serde's message without its position suffix (" at line 1 column 42").
fn field_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_owned(),
        None => full,
    }
}

/// The prefix of a document's binary frames: the id as a lib0 var-string (varuint byte length, then
/// the UTF-8 bytes).
pub fn doc_prefix(doc: &DocId) -> Vec<u8> {
    let id = doc.as_str();
    let mut out = Vec::with_capacity(id.len() + 2);
    let mut n = id.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(id.as_bytes());
    out
}

/// Splits a binary frame into its document id (as sent; not yet checked against the allow-list) and
/// the y-websocket message after it. `None` when the prefix is truncated, absurdly long or not UTF-8.
pub fn split_doc_prefix(data: &[u8]) -> Option<(&str, &[u8])> {
    let mut len: usize = 0;
    let mut shift = 0;
    let mut i = 0;
    loop {
        let b = *data.get(i)?;
        i += 1;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        // Ids are at most 128 bytes: a length needing more than three bytes is garbage.
        if shift > 14 {
            return None;
        }
    }
    let end = i.checked_add(len)?;
    let id = std::str::from_utf8(data.get(i..end)?).ok()?;
    Some((id, &data[end..]))
}
