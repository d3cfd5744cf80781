//! Tandem's shared vocabulary: validated identifiers, the versioned event envelope and catalog, and the
//! wire codecs of the client protocols (the y-websocket protocol and the Yjs update validator).
//!
//! No IO lives here. Everything that arrives from a client is parsed by a function of this crate before
//! any other crate sees it: IDs through their newtypes ([`ids`]), Yjs bytes through [`yjs::validate`]
//! (one update at a time, read by [`yjs::update`]) and [`yjs::guard`] (per document, for update sequences).

#![forbid(unsafe_code)]

pub mod access;
pub mod error;
pub mod event;
pub mod ids;
pub mod link;
pub mod schema;
pub mod v1;
pub mod yjs;

pub use access::Access;
pub use error::ProtoError;
pub use event::{Event, EventPayload, EventType, NewEvent};
pub use ids::{DocId, Epoch, RoomId, Seq, ShardId, StreamId, UserId};
