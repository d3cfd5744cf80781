//! Errors of the event log.

use proto::{Epoch, Seq};
use thiserror::Error;

/// Why an operation on the event log failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The writer's epoch is not the stream's current one: another owner took over (fencing).
    #[error("stale epoch {writer}, stream is at {current}")]
    StaleEpoch {
        /// The epoch the writer used.
        writer: Epoch,
        /// The stream's current epoch.
        current: Epoch,
    },
    /// The append did not start at the stream's next seq (an earlier append failed, or two writers).
    #[error("seq conflict: expected {expected}, got {got}")]
    SeqConflict {
        /// The stream's next seq.
        expected: Seq,
        /// The first seq of the refused request.
        got: Seq,
    },
    /// An event with this id is already in the log.
    #[error("duplicate event id")]
    Duplicate,
    /// The backend could not be reached or failed to commit; nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// `Ok` when the writer holds the stream's current epoch, else [`StoreError::StaleEpoch`].
    pub fn check_epoch(writer: Epoch, current: Epoch) -> Result<(), StoreError> {
        if writer == current {
            Ok(())
        } else {
            Err(StoreError::StaleEpoch { writer, current })
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether the writer lost ownership and must drop the stream.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::StaleEpoch { .. })
    }
}
