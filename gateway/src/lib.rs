//! The HTTP/WebSocket edge.
//!
//! Terminates WebSocket connections (hyper + fastwebsockets), checks the `Origin` allow-list and the
//! JWT before the upgrade, speaks the y-websocket protocol at `/doc/{docId}` ([`doc`]) and the native
//! multiplexed protocol at `/v1` ([`v1`]: many documents and rooms per socket, chat, presence,
//! typing), routes each document and room to the shard that owns it ([`routing::Routes`]), and serves
//! `/healthz` and `/metrics`. From the shard crate it uses only the seam `shard::handle`.
//!
//! Layers, downhill: [`server`] (HTTP routes, upgrades, accept loop) → the endpoints [`doc`] and
//! [`v1`] → [`socket`] (one WebSocket: reader, writer, limits) → [`state::Gateway`] (shared state),
//! [`routing`], [`auth`], [`rate`], [`metrics`]. Sans-IO cores: [`v1::session::Session`] (one `/v1`
//! socket), [`link::session::ClientSession`] (one link to a shard process), [`rate::TokenBucket`].
//! [`link`] is the gateway's end of the gateway ↔ shard link; [`process`] runs `tandem gateway`.
//!
//! Run-loop contract: [`server::serve`] takes a bound listener (tests bind port 0) and a shutdown signal;
//! each socket gets one reader task and one writer; the reader never races `read_frame` in a `select!`
//! (fastwebsockets reads are not cancel-safe) — it is aborted only once the connection is being torn
//! down anyway.

#![forbid(unsafe_code)]

pub mod auth;
mod batch_io;
pub mod config;
pub mod doc;
pub mod error;
pub mod link;
pub mod metrics;
pub mod process;
pub mod rate;
pub mod routing;
pub mod server;
mod socket;
pub mod state;
pub mod v1;

pub use config::GatewayConfig;
pub use error::GatewayError;
pub use metrics::Metrics;
pub use process::run;
pub use routing::Routes;
pub use server::serve;
pub use state::Gateway;
