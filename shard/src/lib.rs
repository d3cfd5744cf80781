//! A shard: the owner of documents' live state.
//!
//! [`core::ShardCore`] is a sans-IO state machine: inputs arrive through `handle_*(now, …)`, results
//! leave through [`core::ShardCore::poll_output`] and the next deadline through
//! [`core::ShardCore::poll_timeout`]. It never reads a clock, sleeps, locks or touches a socket; the
//! tokio [`driver`] is the only code that awaits. After every input the driver drains every output.
//!
//! The core keeps DESIGN.md invariant 1 ("observed ⇒ durable") structurally: a client's update is
//! validated and turned into an `Append` output, but it is applied to the in-memory document and
//! broadcast only when the store reports the commit (`handle_appended`). So the in-memory document, and
//! everything any client can see of it, only ever holds committed updates.
//!
//! Rooms (chat, presence, typing) have their own sans-IO core, [`room::RoomCore`], with the same
//! contract and the same commit-before-show rule; the driver runs both.

#![forbid(unsafe_code)]

pub mod awareness;
pub mod config;
pub mod core;
pub mod driver;
pub mod error;
pub mod link;
pub mod metrics;
pub mod room;

pub use crate::config::{CoreConfig, RoomConfig};
pub use crate::core::{ConnId, Output, ShardCore};
pub use crate::driver::{ConnOut, ConnQueue, ConnSink, ShardHandle};
pub use crate::error::ShardError;
