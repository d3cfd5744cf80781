//! Load scenarios. Each takes its parameters, drives a started [`crate::target::Target`] and returns
//! a serialisable result; `main.rs` turns results into reports.

pub mod chat_fanout;
pub mod cold_load;
pub mod doc_fanout;
pub mod idle;
pub mod presence_churn;
pub mod reconnect;

use std::time::{Duration, Instant};

#[derive(Clone)]
/// A one-line progress display on stderr (only when stderr is a terminal or `BENCH_PROGRESS=1`).
pub struct Progress {
    label: String,
    start: Instant,
    total: Duration,
    on: bool,
}

impl Progress {
    pub fn new(label: &str, total: Duration) -> Self {
        use std::io::IsTerminal;
        let on = std::io::stderr().is_terminal()
            || std::env::var("BENCH_PROGRESS").is_ok_and(|v| v == "1");
        Self {
            label: label.to_string(),
            start: Instant::now(),
            total,
            on,
        }
    }

    pub fn update(&self, detail: &str) {
        if !self.on {
            return;
        }
        let el = self.start.elapsed().as_secs_f64();
        let frac = (el / self.total.as_secs_f64().max(0.001)).min(1.0);
        let width = 24;
        let filled = (frac * width as f64) as usize;
        eprint!(
            "\r\x1b[2K{} [{}{}] {:>5.1}/{:.0} s  {}",
            self.label,
            "#".repeat(filled),
            "-".repeat(width - filled),
            el,
            self.total.as_secs_f64(),
            detail
        );
    }

    pub fn finish(&self) {
        if self.on {
            eprintln!();
        }
    }
}
