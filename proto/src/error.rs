//! Errors of the `proto` crate: input that does not parse.

use thiserror::Error;

/// Why a value from outside could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// An identifier was empty, too long, or held a character outside its allow-list.
    #[error("invalid {kind}: {why}")]
    InvalidId {
        /// Which kind of identifier (`doc id`, `room id`, …).
        kind: &'static str,
        /// Short, client-safe explanation (never echoes the input).
        why: &'static str,
    },
    /// A stream name did not have the `doc:` or `room:` form.
    #[error("invalid stream name")]
    InvalidStream,
    /// An event type name or version is not in the catalog.
    #[error("unknown event type {0}")]
    UnknownEventType(String),
}
