//! The load engineers' bench harness (`cargo run -p bench --release -- …`).
//!
//! Today: `store-append` (the event log's durable append throughput and latency). The bench-harness
//! issue adds the client-facing scenarios (doc fan-out, idle connections, peers side by side).

#![forbid(unsafe_code)]
