//! Server CPU and memory, read from `/proc/PID` while a scenario runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ; 100 on every Linux this harness targets).
const TICKS_PER_SEC: f64 = 100.0;

/// Resident set size of a process in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&s)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User + system CPU seconds a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&s).map(|t| t as f64 / TICKS_PER_SEC)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU and RSS of the server over a run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Average CPU over the window, in percent of one core.
    pub cpu_pct: f64,
    pub rss_max_mb: f64,
    pub rss_end_mb: f64,
}

/// Samples a process every 250 ms in the background.
pub struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, f64, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let s = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let (Some(cpu), Some(rss)) = (cpu_seconds(pid), rss_bytes(pid)) else {
                    return;
                };
                s.lock()
                    .expect("sampler lock")
                    .push((Instant::now(), cpu, rss));
            }
        });
        Self { samples, task }
    }

    /// Usage between `from` and `to`.
    pub fn usage(&self, from: Instant, to: Instant) -> Usage {
        let s = self.samples.lock().expect("sampler lock");
        let w: Vec<_> = s.iter().filter(|x| x.0 >= from && x.0 <= to).collect();
        let (Some(a), Some(b)) = (w.first(), w.last()) else {
            return Usage::default();
        };
        let secs = b.0.duration_since(a.0).as_secs_f64();
        Usage {
            cpu_pct: if secs > 0.0 {
                (b.1 - a.1) / secs * 100.0
            } else {
                0.0
            },
            rss_max_mb: w.iter().map(|x| x.2).max().unwrap_or(0) as f64 / 1048576.0,
            rss_end_mb: b.2 as f64 / 1048576.0,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (tandem (dev)) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 4 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        let status = "Name:\ttandem\nVmPeak:\t  100 kB\nVmRSS:\t   20480 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(20480 * 1024));
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).expect("rss") > 0);
        assert!(cpu_seconds(me).is_some());
    }
}
