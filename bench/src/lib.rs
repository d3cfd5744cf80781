//! The load engineers' bench harness (`cargo run -p bench --release -- …`).
//!
//! Empty on purpose: the bench-harness issue fills this crate (doc fan-out, idle connections, side by
//! side with Hocuspocus and y-websocket-server). Until then `web/bench/fanout.mjs` gives a quick
//! propagation measurement with stock y-websocket clients.

#![forbid(unsafe_code)]
