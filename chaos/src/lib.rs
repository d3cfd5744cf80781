//! Tandem's chaos harness: starts real `tandem shard` and `tandem gateway` processes against private
//! PostgreSQL and Redis instances on loopback, runs a workload of document writers and chat clients
//! (every acknowledged event recorded), injects one kind of fault repeatedly, then checks DESIGN.md
//! invariants 2–5 offline against the record.
//!
//! `cargo run -p chaos --release -- run --scenario NAME|all --duration SECS --seed N` prints the seed
//! and one summary line per scenario
//! (`acked=… lost=… diverged=… duplicates=… stale_writes=… recovery_p99_ms=…`) and exits non-zero on
//! any violation.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod check;
pub mod cluster;
pub mod rng;
pub mod scenario;
pub mod services;
pub mod workload;
