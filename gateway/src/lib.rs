//! The HTTP/WebSocket edge.
//!
//! Terminates WebSocket connections (hyper + fastwebsockets), checks the `Origin` allow-list and the JWT
//! before the upgrade, speaks the y-websocket protocol at `/doc/{docId}` and the native multiplexed
//! protocol at `/v1` ([`v1`]: many documents and rooms per socket, chat, presence, typing), routes each connection to the
//! shard that owns its document ([`routing::Routes`]), and serves `/healthz` and `/metrics`.
//!
//! Run-loop contract: [`server::serve`] takes a bound listener (tests bind port 0) and a shutdown signal;
//! each socket gets one reader task and one writer; the reader never races `read_frame` in a `select!`
//! (fastwebsockets reads are not cancel-safe) — it is aborted only once the connection is being torn
//! down anyway.

#![forbid(unsafe_code)]

pub mod auth;
mod batch_io;
pub mod config;
pub mod conn;
pub mod error;
pub mod routing;
pub mod server;
pub mod v1;

pub use config::GatewayConfig;
pub use error::GatewayError;
pub use routing::Routes;
pub use server::{serve, Gateway};
