//! The load engineers' bench harness (`cargo run -p bench --release -- …`): scenarios driven over
//! the public protocols against Tandem and the servers people run today, with reports.
//!
//! Modules: [`stats`] (HDR histograms, open-loop schedule), [`wire`] (y-websocket and Hocuspocus
//! framing, timing tags), [`ws`] (WebSocket client), [`target`] (starting the servers under test),
//! [`procstat`] (server CPU and RSS), [`scenario`] (the workloads, each a [`scenario::Scenario`],
//! and [`scenario::run_and_report`], which runs one against each target), [`report`] (JSON,
//! Markdown, SVG), [`callpeer`] (a synthetic WebRTC call participant on str0m).

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod callpeer;
pub mod janus;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod store_append;
pub mod target;
pub mod wire;
pub mod ws;
