//! The versioned event envelope and the event catalog.
//!
//! Every event carries: `id` (UUIDv7, the idempotency key), `type` + `version`, `stream`, `seq` (per
//! stream, gap-free, assigned by the owner), `epoch` (the owner's fencing token), `actor` (the
//! authenticated user), `ts` (milliseconds since the Unix epoch), `trace` (W3C traceparent) and `payload`.
//!
//! Versioning rule: a type's payload may gain optional fields within a version; anything else (a removed
//! or retyped field, a changed meaning) is a new version, and readers keep decoding the old versions.
//! JSON Schema for the envelope and for every payload is generated from these types into `proto/schema/`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ProtoError;
use crate::ids::{Epoch, Seq, StreamId, UserId};

/// The name and version of an event type in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `document.updated` v1: a Yjs update applied to a document.
    DocumentUpdated,
    /// `user.joined` v1: a user's first connection joined a room or document.
    UserJoined,
    /// `user.left` v1: a user's last connection left.
    UserLeft,
    /// `chat.message.sent` v1.
    ChatMessageSent,
    /// `chat.message.edited` v1: new text for an earlier message.
    ChatMessageEdited,
    /// `chat.message.deleted` v1: an earlier message withdrawn.
    ChatMessageDeleted,
    /// `typing.started` v1 (ephemeral, never persisted).
    TypingStarted,
    /// `typing.stopped` v1 (ephemeral, never persisted).
    TypingStopped,
    /// `video.peer.signal` v1: SDP / ICE between call participants.
    VideoPeerSignal,
    /// `screen.share.started` v1.
    ScreenShareStarted,
    /// `screen.share.stopped` v1.
    ScreenShareStopped,
    /// `call.started` v1: the first participant joined a room's call.
    CallStarted,
    /// `call.participant.joined` v1.
    CallParticipantJoined,
    /// `call.participant.left` v1 (left, timed out, or dropped by a failover).
    CallParticipantLeft,
    /// `call.ended` v1: the last participant left.
    CallEnded,
}

impl EventType {
    /// Every type in the catalog.
    pub const ALL: [EventType; 15] = [
        Self::DocumentUpdated,
        Self::UserJoined,
        Self::UserLeft,
        Self::ChatMessageSent,
        Self::ChatMessageEdited,
        Self::ChatMessageDeleted,
        Self::TypingStarted,
        Self::TypingStopped,
        Self::VideoPeerSignal,
        Self::ScreenShareStarted,
        Self::ScreenShareStopped,
        Self::CallStarted,
        Self::CallParticipantJoined,
        Self::CallParticipantLeft,
        Self::CallEnded,
    ];

    /// The dotted type name used on the wire and in the store.
    pub fn name(self) -> &'static str {
        match self {
            Self::DocumentUpdated => "document.updated",
            Self::UserJoined => "user.joined",
            Self::UserLeft => "user.left",
            Self::ChatMessageSent => "chat.message.sent",
            Self::ChatMessageEdited => "chat.message.edited",
            Self::ChatMessageDeleted => "chat.message.deleted",
            Self::TypingStarted => "typing.started",
            Self::TypingStopped => "typing.stopped",
            Self::VideoPeerSignal => "video.peer.signal",
            Self::ScreenShareStarted => "screen.share.started",
            Self::ScreenShareStopped => "screen.share.stopped",
            Self::CallStarted => "call.started",
            Self::CallParticipantJoined => "call.participant.joined",
            Self::CallParticipantLeft => "call.participant.left",
            Self::CallEnded => "call.ended",
        }
    }

    /// The current version of the type's payload.
    pub fn version(self) -> u16 {
        1
    }

    /// Whether events of this type are written to the event log (typing indicators are not).
    pub fn is_persisted(self) -> bool {
        !matches!(self, Self::TypingStarted | Self::TypingStopped)
    }

    /// Looks a type up by its dotted name.
    pub fn from_name(name: &str) -> Result<Self, ProtoError> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| ProtoError::UnknownEventType(name.chars().take(64).collect()))
    }
}

/// Binary data carried in JSON as standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        base64::decode(&s)
            .map(Bytes)
            .map_err(|_| serde::de::Error::custom("invalid base64"))
    }
}

impl JsonSchema for Bytes {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Base64Bytes".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "contentEncoding": "base64",
            "description": "Binary data, standard base64 with padding."
        })
    }
}

/// `document.updated` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentUpdatedV1 {
    /// The Yjs update, lib0 update encoding v1.
    pub update: Bytes,
}

/// `user.joined` v1 and `user.left` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserPresenceV1 {
    /// The user who joined or left.
    pub user: UserId,
}

/// `chat.message.sent` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessageSentV1 {
    /// The sender's idempotency key for this message.
    pub client_msg_id: String,
    /// The message text (UTF-8).
    pub text: String,
}

/// `chat.message.edited` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessageEditedV1 {
    /// The sender's idempotency key for this edit.
    pub client_msg_id: String,
    /// The seq of the `chat.message.sent` event edited (in the same room stream).
    pub target: Seq,
    /// The new text (UTF-8).
    pub text: String,
}

/// `chat.message.deleted` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessageDeletedV1 {
    /// The sender's idempotency key for this deletion.
    pub client_msg_id: String,
    /// The seq of the `chat.message.sent` event withdrawn (in the same room stream).
    pub target: Seq,
}

/// `typing.started` v1 and `typing.stopped` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TypingV1 {
    /// Who is (or stopped) typing.
    pub user: UserId,
}

/// `video.peer.signal` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VideoPeerSignalV1 {
    /// The receiving participant.
    pub to: UserId,
    /// `offer`, `answer` or `candidate`.
    pub kind: String,
    /// SDP or ICE candidate text.
    pub data: String,
}

/// `screen.share.started` v1 and `screen.share.stopped` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScreenShareV1 {
    /// The sharing participant.
    pub user: UserId,
    /// The media track identifier.
    pub track: String,
}

/// `call.started` v1 and `call.ended` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallV1 {
    /// The call's id (one per call session of a room: from its start to its end).
    pub call: String,
    /// Who started it (`call.started`) or left last (`call.ended`).
    pub user: UserId,
}

/// `call.participant.joined` v1 and `call.participant.left` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallParticipantV1 {
    /// The call's id.
    pub call: String,
    /// The participant's user.
    pub user: UserId,
    /// The participant's id in the call (one per connection that joined).
    pub participant: String,
    /// `call.participant.left` only: why (`left`, `timeout`, `closed`, `moved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The payload of an event, tagged by type name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "payload")]
pub enum EventPayload {
    /// `document.updated` v1.
    #[serde(rename = "document.updated")]
    DocumentUpdated(DocumentUpdatedV1),
    /// `user.joined` v1.
    #[serde(rename = "user.joined")]
    UserJoined(UserPresenceV1),
    /// `user.left` v1.
    #[serde(rename = "user.left")]
    UserLeft(UserPresenceV1),
    /// `chat.message.sent` v1.
    #[serde(rename = "chat.message.sent")]
    ChatMessageSent(ChatMessageSentV1),
    /// `chat.message.edited` v1.
    #[serde(rename = "chat.message.edited")]
    ChatMessageEdited(ChatMessageEditedV1),
    /// `chat.message.deleted` v1.
    #[serde(rename = "chat.message.deleted")]
    ChatMessageDeleted(ChatMessageDeletedV1),
    /// `typing.started` v1.
    #[serde(rename = "typing.started")]
    TypingStarted(TypingV1),
    /// `typing.stopped` v1.
    #[serde(rename = "typing.stopped")]
    TypingStopped(TypingV1),
    /// `video.peer.signal` v1.
    #[serde(rename = "video.peer.signal")]
    VideoPeerSignal(VideoPeerSignalV1),
    /// `screen.share.started` v1.
    #[serde(rename = "screen.share.started")]
    ScreenShareStarted(ScreenShareV1),
    /// `screen.share.stopped` v1.
    #[serde(rename = "screen.share.stopped")]
    ScreenShareStopped(ScreenShareV1),
    /// `call.started` v1.
    #[serde(rename = "call.started")]
    CallStarted(CallV1),
    /// `call.participant.joined` v1.
    #[serde(rename = "call.participant.joined")]
    CallParticipantJoined(CallParticipantV1),
    /// `call.participant.left` v1.
    #[serde(rename = "call.participant.left")]
    CallParticipantLeft(CallParticipantV1),
    /// `call.ended` v1.
    #[serde(rename = "call.ended")]
    CallEnded(CallV1),
}

impl EventPayload {
    /// The catalog entry of this payload.
    pub fn event_type(&self) -> EventType {
        match self {
            Self::DocumentUpdated(_) => EventType::DocumentUpdated,
            Self::UserJoined(_) => EventType::UserJoined,
            Self::UserLeft(_) => EventType::UserLeft,
            Self::ChatMessageSent(_) => EventType::ChatMessageSent,
            Self::ChatMessageEdited(_) => EventType::ChatMessageEdited,
            Self::ChatMessageDeleted(_) => EventType::ChatMessageDeleted,
            Self::TypingStarted(_) => EventType::TypingStarted,
            Self::TypingStopped(_) => EventType::TypingStopped,
            Self::VideoPeerSignal(_) => EventType::VideoPeerSignal,
            Self::ScreenShareStarted(_) => EventType::ScreenShareStarted,
            Self::ScreenShareStopped(_) => EventType::ScreenShareStopped,
            Self::CallStarted(_) => EventType::CallStarted,
            Self::CallParticipantJoined(_) => EventType::CallParticipantJoined,
            Self::CallParticipantLeft(_) => EventType::CallParticipantLeft,
            Self::CallEnded(_) => EventType::CallEnded,
        }
    }

    /// Storage encoding: a document update is stored as its raw Yjs bytes (the hot path, no base64);
    /// every other payload as its JSON.
    pub fn to_stored(&self) -> Vec<u8> {
        match self {
            Self::DocumentUpdated(p) => p.update.0.clone(),
            other => {
                // Serializing these plain structs cannot fail.
                let v = serde_json::to_value(other).unwrap_or(serde_json::Value::Null);
                serde_json::to_vec(&v["payload"]).unwrap_or_default()
            }
        }
    }

    /// Inverse of [`EventPayload::to_stored`].
    pub fn from_stored(ty: EventType, version: u16, bytes: &[u8]) -> Result<Self, ProtoError> {
        if version != 1 {
            return Err(ProtoError::UnknownEventType(format!(
                "{} v{version}",
                ty.name()
            )));
        }
        if ty == EventType::DocumentUpdated {
            return Ok(Self::DocumentUpdated(DocumentUpdatedV1 {
                update: Bytes(bytes.to_vec()),
            }));
        }
        let payload: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|_| ProtoError::UnknownEventType(ty.name().to_owned()))?;
        serde_json::from_value(serde_json::json!({ "type": ty.name(), "payload": payload }))
            .map_err(|_| ProtoError::UnknownEventType(ty.name().to_owned()))
    }
}

/// An event as the owner submits it for appending (before it has a place in the log).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Idempotency key.
    pub id: Uuid,
    /// Who caused it.
    pub actor: UserId,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// W3C traceparent, when the request carried one.
    pub trace: Option<String>,
    /// Type and data.
    pub payload: EventPayload,
}

/// A committed event: the envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// UUIDv7, unique across all streams; a retried append with the same id is a no-op.
    pub id: Uuid,
    /// Payload version of this type.
    pub version: u16,
    /// The stream this event belongs to.
    pub stream: StreamId,
    /// Position in the stream, gap-free from 1.
    pub seq: Seq,
    /// The owner's fencing epoch at append time.
    pub epoch: Epoch,
    /// The authenticated user who caused the event.
    pub actor: UserId,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// W3C traceparent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// `type` and `payload`.
    #[serde(flatten)]
    pub payload: EventPayload,
}

/// Minimal standard base64 (RFC 4648 with padding), so `proto` needs no codec dependency (also used
/// for TURN credentials by `signaling`).
pub mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// `data` as standard base64 with padding.
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub(crate) fn decode(s: &str) -> Result<Vec<u8>, ()> {
        let s = s.as_bytes();
        if !s.len().is_multiple_of(4) {
            return Err(());
        }
        let val = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|p| p as u32);
        let mut out = Vec::with_capacity(s.len() / 4 * 3);
        for (ci, chunk) in s.chunks(4).enumerate() {
            let last = ci == s.len() / 4 - 1;
            let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && !last) {
                return Err(());
            }
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                let v = if i >= 4 - pad { 0 } else { val(c).ok_or(())? };
                n |= v << (18 - 6 * i);
            }
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trip() {
            for len in 0..20 {
                let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
                let enc = super::encode(&data);
                assert_eq!(super::decode(&enc), Ok(data));
            }
            assert_eq!(super::encode(b"foobar"), "Zm9vYmFy");
            assert_eq!(super::encode(b"fo"), "Zm8=");
            assert!(super::decode("Zm8").is_err());
            assert!(super::decode("Z=8=").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DocId;

    fn sample() -> Event {
        Event {
            id: Uuid::now_v7(),
            version: 1,
            stream: StreamId::Doc(DocId::parse("d").expect("valid")),
            seq: Seq(3),
            epoch: Epoch(2),
            actor: UserId::parse("ada").expect("valid"),
            ts: 1_700_000_000_000,
            trace: None,
            payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
                update: Bytes(vec![0, 0]),
            }),
        }
    }

    #[test]
    fn envelope_json_shape() {
        let e = sample();
        let v = serde_json::to_value(&e).expect("serializes");
        assert_eq!(v["type"], "document.updated");
        assert_eq!(v["payload"]["update"], "AAA=");
        assert_eq!(v["stream"], "doc:d");
        assert_eq!(v["seq"], 3);
        let back: Event = serde_json::from_value(v).expect("parses");
        assert_eq!(back, e);
    }

    #[test]
    fn stored_payload_round_trips() {
        let payloads = [
            EventPayload::DocumentUpdated(DocumentUpdatedV1 {
                update: Bytes(vec![1, 2, 3]),
            }),
            EventPayload::ChatMessageSent(ChatMessageSentV1 {
                client_msg_id: "c1".into(),
                text: "hi".into(),
            }),
            EventPayload::UserJoined(UserPresenceV1 {
                user: UserId::parse("u").expect("valid"),
            }),
        ];
        for p in payloads {
            let ty = p.event_type();
            let stored = p.to_stored();
            assert_eq!(EventPayload::from_stored(ty, 1, &stored), Ok(p));
        }
        assert!(EventPayload::from_stored(EventType::UserJoined, 2, b"{}").is_err());
    }

    #[test]
    fn catalog_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_name(t.name()), Ok(t));
        }
        assert!(!EventType::TypingStarted.is_persisted());
        assert!(EventType::from_name("nope").is_err());
    }
}
