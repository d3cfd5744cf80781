//! Yjs / y-websocket wire formats, decoded defensively.
//!
//! Tandem speaks the protocol of the npm `y-websocket` provider so that stock
//! Yjs editors can connect unchanged. Everything a client sends is untrusted,
//! and the CRDT libraries that eventually consume it (yrs, yjs) are not
//! hardened against hostile input, so this module sits in front of them.
//! Read it bottom-up:
//!
//! * [`lib0`]: bounds-checked lib0 v1 primitives ([`Decoder`], [`Encoder`]).
//! * [`message`]: the y-websocket frame codec ([`Message`]), awareness
//!   updates and state vectors.
//! * [`update`]: the one reader of Yjs update v1 binaries
//!   ([`UpdateReader`]): client blocks, structs and the delete set, with
//!   every format constant; non-recursive and linear-time, strict or lax
//!   ([`Rules`]).
//! * [`validate`]: the stateless checks built on it
//!   ([`validate_update_v1`], [`validate_message`], state vectors, awareness),
//!   which reject anything that could crash, hang or balloon a downstream
//!   decoder, or that yrs would parse differently from yjs ([`Target`]).
//! * [`nesting`]: per-document depth of shared types
//!   ([`NestingTracker`](nesting::NestingTracker)).
//! * [`guard`]: everything per document that protects yrs from update
//!   *sequences* ([`UpdateGuard`]): re-sent clocks plus nesting.
//!
//! With the `hostile` feature (and in this crate's tests), `hostile` builds
//! known-bad inputs for tests in other crates.
//!
//! Typical server use: `validate_message(frame, &Limits::default(), max)`,
//! then act on the returned [`Message`]; a document owner runs each update
//! through its [`UpdateGuard`] as well.
//!
//! Only `std` is used; the test vectors in `testdata/` were produced by the
//! JavaScript reference implementation (see `testdata/gen-vectors.mjs`).

pub mod guard;
#[cfg(any(test, feature = "hostile"))]
pub mod hostile;
mod json;
pub mod lib0;
pub mod message;
pub mod nesting;
pub mod update;
pub mod validate;

pub use guard::{Accepted, GuardError, UpdateGuard, Validated};
pub use lib0::{Decoder, Encoder, WireError};
pub use message::{
    decode_awareness_update, decode_state_vector, encode_awareness, encode_awareness_update,
    encode_permission_denied, encode_query_awareness, encode_state_vector, encode_sync_step1,
    encode_sync_step2, encode_update, AwarenessEntry, Message,
};
pub use update::{Rules, UpdateReader};
pub use validate::{
    update_client_ranges, validate_awareness_update, validate_message, validate_state_vector,
    validate_update_v1, validate_update_v1_for, ClientRange, Limits, Target, UpdateSummary,
    ValidationError,
};
