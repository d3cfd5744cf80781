//! Yjs / y-websocket wire formats, decoded defensively.
//!
//! Tandem speaks the protocol of the npm `y-websocket` provider so that stock
//! Yjs editors can connect unchanged. Everything a client sends is untrusted,
//! and the CRDT libraries that eventually consume it (yrs, yjs) are not
//! hardened against hostile input, so this module sits in front of them:
//!
//! * [`lib0`]: bounds-checked lib0 v1 primitives ([`Decoder`], [`Encoder`]).
//! * [`message`]: the y-websocket frame codec ([`Message`]), awareness
//!   updates and state vectors.
//! * [`validate`]: a complete, non-recursive, linear-time walk of update v1
//!   binaries ([`validate_update_v1`]) and the other payloads, which rejects
//!   anything that could crash, hang or balloon a downstream decoder, or
//!   that yrs would parse differently from yjs ([`Target`]).
//!   [`validate::hostile`] builds known-bad inputs for tests.
//!
//! Typical server use: `validate_message(frame, &Limits::default(), max)`,
//! then act on the returned [`Message`].
//!
//! Only `std` is used; the test vectors in `testdata/` were produced by the
//! JavaScript reference implementation (see `testdata/gen-vectors.mjs`).

pub mod lib0;
pub mod message;
pub mod nesting;
pub mod validate;

pub use lib0::{Decoder, Encoder, WireError};
pub use message::{
    decode_awareness_update, decode_state_vector, encode_awareness, encode_awareness_update,
    encode_permission_denied, encode_query_awareness, encode_state_vector, encode_sync_step1,
    encode_sync_step2, encode_update, AwarenessEntry, Message,
};
pub use validate::{
    update_client_ranges, validate_awareness_update, validate_message, validate_state_vector,
    validate_update_v1, validate_update_v1_for, ClientRange, Limits, Target, UpdateSummary,
    ValidationError,
};
