//! A shard: the owner of documents' and rooms' live state.
//!
//! Layers, each depending only on the ones above it:
//! * [`handle`]: the seam to the edges — [`ShardHandle`] (a shard in this process or behind a link),
//!   [`ConnSink`] (a shard's way back to one client). A gateway needs nothing else from this crate.
//! * Sans-IO cores, no clock, no IO: [`core::ShardCore`] (documents) and [`room::RoomCore`] (chat,
//!   presence, typing), sharing the load/append/snapshot lifecycle of [`lifecycle`]; the link
//!   session [`link::session::LinkSession`] (one gateway link as the shard sees it).
//!   The third core, calls (`signaling::CallCore`), lives in the `signaling` crate.
//! * Thin tokio drivers: [`driver`] (runs both cores, the store appender), [`media`] (the call
//!   core and the UDP media socket, on a task of its own), [`link`] (the link listener),
//!   [`process`] (`tandem shard`: membership, links, admin endpoint).
//!
//! The core contract: inputs arrive through `handle_*(now, …)`, results leave through `poll_output`
//! and the next deadline through `poll_timeout`; the driver drains every output after every input.
//!
//! The cores keep DESIGN.md invariant 1 ("observed ⇒ durable") structurally: a client's update or
//! chat message is validated and turned into an `Append` output, but it is applied to the in-memory
//! state and broadcast only when the store reports the commit (`handle_appended`). So the in-memory
//! state, and everything any client can see of it, only ever holds committed events.

#![forbid(unsafe_code)]

pub mod awareness;
pub mod config;
pub mod core;
pub mod driver;
pub mod error;
pub mod handle;
mod lifecycle;
pub mod link;
pub mod media;
pub mod metrics;
pub mod process;
pub mod room;
mod timer;

pub use crate::config::{CallsConfig, CoreConfig, RoomConfig};
pub use crate::core::{Output, ShardCore};
pub use crate::driver::LocalShard;
pub use crate::error::ShardError;
pub use crate::handle::{ConnId, ConnOut, ConnQueue, ConnSink, ShardHandle};
pub use crate::media::MediaSettings;
pub use crate::process::run;
