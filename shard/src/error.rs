//! Errors of the shard: why a client's message was refused.

use proto::yjs::lib0::WireError;
use proto::yjs::validate::ValidationError;
use thiserror::Error;

/// Why the shard refused a client's input; each maps to one WebSocket close code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShardError {
    /// The y-websocket message could not be parsed (unknown type, truncated).
    #[error("malformed message: {0}")]
    Malformed(WireError),
    /// A Yjs update, state vector or awareness update failed validation.
    #[error("invalid update: {0}")]
    Invalid(ValidationError),
    /// The document would grow past the configured size limit.
    #[error("document too large")]
    DocTooLarge,
    /// The store could not commit; the client should reconnect and resync.
    #[error("store unavailable")]
    StoreUnavailable,
    /// Another shard took the document over.
    #[error("ownership moved")]
    Fenced,
    /// The document could not be loaded.
    #[error("document unavailable")]
    LoadFailed,
    /// The update re-sent part of a range already accepted; the client must resync.
    #[error("overlapping update, resync")]
    Resync,
    /// Too many awareness client ids from one connection, or live states in the document.
    #[error("awareness limit")]
    AwarenessLimit,
    /// The server is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
    /// The document moved to another shard (ring change or drain); reconnect.
    #[error("document moved to another shard, reconnect")]
    Moved,
}

impl ShardError {
    /// The RFC 6455 close code sent to the client.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Malformed(_) => 1002,
            Self::Invalid(_) => 1007,
            Self::DocTooLarge => 1009,
            Self::StoreUnavailable | Self::LoadFailed => 1011,
            Self::Fenced | Self::Moved => 1012,
            Self::Resync => 1013,
            Self::AwarenessLimit => 1008,
            Self::ShuttingDown => 1001,
        }
    }

    /// A short, client-safe close reason (at most 123 bytes, as RFC 6455 requires).
    pub fn reason(&self) -> String {
        let mut s = self.to_string();
        s.truncate(120);
        s
    }
}
