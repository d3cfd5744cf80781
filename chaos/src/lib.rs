//! Fault-injection harness: real gateway and shard processes killed, paused and partitioned under load,
//! with DESIGN.md invariants 2–5 checked offline.
//!
//! Empty on purpose: the sharding issue fills this crate once gateways and shards run as separate
//! processes.

#![forbid(unsafe_code)]
