//! Access levels granted by a token on a document or a room.

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a token allows on one document or room. Ordered: a higher level includes the lower ones.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Documents: sync and receive updates and awareness (own updates are refused). Rooms: join,
    /// read history, receive events, presence and typing, publish one's own presence.
    Read,
    /// Read plus document updates; in rooms, sending, editing and deleting one's own messages, and
    /// typing indicators.
    Write,
    /// Write plus, in rooms, editing and deleting anyone's messages.
    Admin,
}

impl Access {
    /// The wire name (`read`, `write`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl FromStr for Access {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            _ => Err(format!("unknown access level {s:?} (read, write, admin)")),
        }
    }
}
