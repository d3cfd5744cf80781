//! Validated identifier newtypes.
//!
//! Every identifier that comes from a client (URL path, token claim, frame) is parsed here once, at the
//! edge, against an allow-list; inner code only ever sees the newtype. That is what lets the store build
//! keys (`doc:{id}`) and the Redis layer build stream names without any escaping concerns.
//!
//! Allow-lists:
//! * [`DocId`], [`RoomId`]: 1–128 bytes of `A–Z a–z 0–9 . _ ~ : -`, not starting with `.`.
//! * [`UserId`]: 1–128 bytes of `A–Z a–z 0–9 . _ ~ : - @ +`, not starting with `.`.
//! * [`ShardId`]: 1–64 bytes of `a–z 0–9 -`, starting with a letter or digit.
//! * [`Epoch`], [`Seq`]: unsigned 64-bit counters (`Epoch` starts at 1, `Seq` at 1; 0 means "none yet").

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ProtoError;

/// Maximum length in bytes of a document or room identifier.
pub const MAX_KEY_ID_LEN: usize = 128;
/// Maximum length in bytes of a shard identifier.
pub const MAX_SHARD_ID_LEN: usize = 64;

fn check(
    kind: &'static str,
    s: &str,
    max: usize,
    allowed: impl Fn(u8) -> bool,
) -> Result<(), ProtoError> {
    let err = |why| ProtoError::InvalidId { kind, why };
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.len() > max {
        return Err(err("too long"));
    }
    if s.starts_with('.') {
        return Err(err("must not start with '.'"));
    }
    if !s.bytes().all(allowed) {
        return Err(err("character outside the allow-list"));
    }
    Ok(())
}

fn key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'-')
}

fn user_char(b: u8) -> bool {
    key_char(b) || matches!(b, b'@' | b'+')
}

fn shard_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates against the allow-list documented in this module.
            pub fn parse(s: &str) -> Result<Self, ProtoError> {
                check($kind, s, $max, $allowed)?;
                Ok(Self(s.to_owned()))
            }

            /// The identifier as text (always within the allow-list).
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ProtoError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A collaborative document's identifier (the y-websocket room name).
    DocId, "doc id", MAX_KEY_ID_LEN, key_char
);
string_id!(
    /// A chat/presence/call room's identifier.
    RoomId, "room id", MAX_KEY_ID_LEN, key_char
);
string_id!(
    /// An authenticated user (the JWT `sub`), or `anonymous` in `tandem dev`.
    UserId, "user id", MAX_KEY_ID_LEN, user_char
);
string_id!(
    /// A shard process's identifier, a member of the ring.
    ShardId, "shard id", MAX_SHARD_ID_LEN, shard_char
);

impl UserId {
    /// The actor recorded for unauthenticated access in `tandem dev`.
    pub fn anonymous() -> Self {
        Self("anonymous".to_owned())
    }
}

macro_rules! counter_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
            JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw counter value.
            pub fn get(self) -> u64 {
                self.0
            }
            /// The next value.
            pub fn next(self) -> Self {
                Self(self.0 + 1)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

counter_id!(
    /// Ownership fencing token of a stream: incremented by every takeover.
    Epoch
);
counter_id!(
    /// Position of an event in its stream: gap-free, strictly increasing, assigned by the owner.
    Seq
);

/// An event stream: one per document (`doc:{id}`) and one per room (`room:{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum StreamId {
    /// The stream of a document.
    Doc(DocId),
    /// The stream of a room.
    Room(RoomId),
}

impl StreamId {
    /// Parses `doc:{id}` / `room:{id}`.
    pub fn parse(s: &str) -> Result<Self, ProtoError> {
        if let Some(id) = s.strip_prefix("doc:") {
            Ok(Self::Doc(DocId::parse(id)?))
        } else if let Some(id) = s.strip_prefix("room:") {
            Ok(Self::Room(RoomId::parse(id)?))
        } else {
            Err(ProtoError::InvalidStream)
        }
    }

    /// The key hashed by the ring: the stream name itself.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Doc(d) => write!(f, "doc:{d}"),
            Self::Room(r) => write!(f, "room:{r}"),
        }
    }
}

impl Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_ids_follow_the_allow_list() {
        for ok in ["a", "notes-1", "team:design.v2", "x_y~z", &"a".repeat(128)] {
            assert!(DocId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "a%2Fb",
            "ä",
            "a'b",
            "a;drop",
            "{tag}",
            &"a".repeat(129),
        ] {
            assert!(DocId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_ids_are_lowercase() {
        assert!(ShardId::parse("shard-1").is_ok());
        assert!(ShardId::parse("Shard-1").is_err());
        assert!(ShardId::parse(&"s".repeat(65)).is_err());
    }

    #[test]
    fn users_may_be_emails() {
        assert!(UserId::parse("ada+test@example.com").is_ok());
        assert!(UserId::parse("ada lovelace").is_err());
    }

    #[test]
    fn stream_round_trips() {
        let s = StreamId::parse("doc:abc").expect("valid");
        assert_eq!(s, StreamId::Doc(DocId::parse("abc").expect("valid")));
        assert_eq!(s.to_string(), "doc:abc");
        assert!(StreamId::parse("room:").is_err());
        assert!(StreamId::parse("user:x").is_err());
        let json = serde_json::to_string(&s).expect("serializes");
        assert_eq!(json, "\"doc:abc\"");
        let back: StreamId = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, s);
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<DocId>("\"a/b\"").is_err());
        assert!(serde_json::from_str::<DocId>("\"ab\"").is_ok());
    }
}
