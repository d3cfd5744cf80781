//! `call`: P synthetic participants (str0m peers, [`crate::callpeer`]) in R rooms, each publishing a
//! VP8 camera (three simulcast layers by default) and an Opus microphone, each subscribing to every
//! other participant's tracks. Measures, per received media frame, publisher's send → subscriber's
//! receipt through the SFU (p50…max), frames missing per stream, the time from `call.join` to ICE
//! connected, and the server's CPU and RSS — from which the CPU per forwarded stream.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::callpeer::{self, PeerConfig, PeerStats};
use crate::procstat::{Sampler, Usage};
use crate::report::{self, Row};
use crate::scenario::{Protocol, Scenario};
use crate::stats::{Latency, Summary};
use crate::target::{Kind, Target, TargetOpts};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Participants per room.
    pub participants: usize,
    /// Rooms (each a call of `participants`).
    pub rooms: usize,
    /// Seconds of media after everyone joined.
    pub duration: f64,
    /// Three simulcast layers per camera (else one stream).
    pub simulcast: bool,
    /// Quality every subscriber asks of every camera: high, medium, low.
    pub quality: String,
    /// Video frames per second.
    pub fps: u32,
    /// Bytes per video frame of the top layer (1000 B at 30 fps ≈ 250 kbit/s).
    pub video_bytes: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            participants: 20,
            rooms: 1,
            duration: 20.0,
            simulcast: true,
            quality: "low".into(),
            fps: 30,
            video_bytes: 1000,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub target: String,
    pub params: Params,
    /// Publisher's send → subscriber's receipt, every media frame.
    pub forward: Summary,
    /// `call.join` → ICE connected, per participant.
    pub connect: Summary,
    pub frames: u64,
    pub missing: u64,
    pub loss_pct: f64,
    /// Streams forwarded (subscriber × publisher track).
    pub streams: u64,
    /// Server CPU (percent of one core) per forwarded stream.
    pub cpu_pct_per_stream: f64,
    pub received_mbit_s: f64,
    pub server: Usage,
    pub errors: Vec<String>,
}

pub async fn run(target: &Target, p: &Params, label: &str) -> anyhow::Result<Outcome> {
    if !matches!(target.kind, Kind::Tandem | Kind::Janus | Kind::External(_)) {
        bail!("call runs against tandem and janus (a ws:// URL of a tandem /v1 works too)");
    }
    let janus = target.kind == Kind::Janus;
    if janus && p.simulcast {
        bail!("the Janus participants publish one video stream: run with --no-simulcast (for both targets)");
    }
    if p.participants < 2 || p.rooms == 0 || p.fps == 0 {
        bail!("call needs at least 2 participants, 1 room and fps above 0");
    }
    let url = format!("{}/v1", target.base.trim_end_matches('/'));
    let tag = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let sampler = target.pid.map(Sampler::start);
    let progress =
        crate::scenario::Progress::new(label, Duration::from_secs_f64(p.duration + 15.0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut peers = Vec::new();
    let janus_addr: Option<std::net::SocketAddr> = if janus {
        let a = target
            .base
            .strip_prefix("http://")
            .and_then(|h| h.parse().ok())
            .context("janus address")?;
        for r in 0..p.rooms {
            crate::janus::create_room(a, 1000 + r as u64, p.participants + 1).await?;
        }
        Some(a)
    } else {
        None
    };
    for r in 0..p.rooms {
        let feeds: Arc<Mutex<Vec<u64>>> = Arc::default();
        for i in 0..p.participants {
            let stats = Arc::new(Mutex::new(PeerStats::default()));
            let cfg = PeerConfig {
                url: url.clone(),
                token: None,
                room: format!("call-{tag}-{r}"),
                index: (r * p.participants + i) as u32,
                video: true,
                audio: true,
                simulcast: p.simulcast,
                quality: p.quality.clone(),
                fps: p.fps,
                video_bytes: p.video_bytes,
            };
            let task = match janus_addr {
                Some(a) => tokio::spawn(crate::janus::run(
                    a,
                    1000 + r as u64,
                    cfg,
                    feeds.clone(),
                    p.participants,
                    stats.clone(),
                    stop_rx.clone(),
                )),
                None => tokio::spawn(callpeer::run(cfg, stats.clone(), stop_rx.clone())),
            };
            peers.push((stats, task));
            // Joins spread a little, as people arrive.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    progress.update("participants joining");
    let expected = p.rooms * p.participants;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connected = peers
            .iter()
            .filter(|(s, _)| s.lock().is_ok_and(|s| s.connected_in.is_some()))
            .count();
        if connected == expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if std::env::var("BENCH_DEBUG").is_ok() {
        for (i, (s, _)) in peers.iter().enumerate() {
            if let Ok(s) = s.lock() {
                eprintln!(
                    "peer {i}: connected {:?} joins {} frames {} errors {:?}",
                    s.connected_in, s.joins, s.frames, s.errors
                );
            }
        }
    }
    // Let every subscription settle (renegotiations after late joiners), then measure afresh.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (s, _) in &peers {
        if let Ok(mut s) = s.lock() {
            let keep = (s.connected_in, s.joins);
            *s = PeerStats {
                connected_in: keep.0,
                joins: keep.1,
                ..PeerStats::default()
            };
        }
    }
    let start = Instant::now();
    let total = Duration::from_secs_f64(p.duration);
    while start.elapsed() < total {
        progress.update(&format!("{} participants in call", expected));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let end = Instant::now();
    let _ = stop_tx.send(true);
    for (_, task) in &mut peers {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let mut forward = Latency::new();
    let mut connect = Latency::new();
    let (mut frames, mut missing, mut bytes, mut streams) = (0u64, 0u64, 0u64, 0u64);
    let mut errors = Vec::new();
    for (s, _) in &peers {
        let s = s
            .lock()
            .map_err(|_| anyhow::anyhow!("peer stats poisoned"))?;
        forward.add(&s.latency);
        if let Some(c) = s.connected_in {
            connect.record(c);
        }
        frames += s.frames;
        missing += s.missing();
        bytes += s.bytes;
        streams += s.streams.len() as u64;
        errors.extend(s.errors.iter().take(3).cloned());
    }
    let server = sampler.map(|s| s.usage(start, end)).unwrap_or_default();
    let secs = end.duration_since(start).as_secs_f64();
    let outcome = Outcome {
        target: target.kind.name(),
        params: p.clone(),
        forward: forward.summary(),
        connect: connect.summary(),
        frames,
        missing,
        loss_pct: if frames + missing > 0 {
            missing as f64 * 100.0 / (frames + missing) as f64
        } else {
            0.0
        },
        streams,
        cpu_pct_per_stream: if streams > 0 {
            server.cpu_pct / streams as f64
        } else {
            0.0
        },
        received_mbit_s: bytes as f64 * 8.0 / secs / 1e6,
        server,
        errors,
    };
    if outcome.frames == 0 {
        bail!(
            "no media was received: {}",
            outcome.errors.first().cloned().unwrap_or_default()
        );
    }
    Ok(outcome)
}

impl Scenario for Params {
    const NAME: &'static str = "call";
    const PROTOCOL: Protocol = Protocol::Call;
    type Outcome = Outcome;

    async fn run(
        &self,
        target: &mut Target,
        _opts: &TargetOpts,
        label: &str,
    ) -> anyhow::Result<Outcome> {
        run(target, self, label).await.context("call")
    }

    fn title(&self) -> String {
        format!(
            "call: {} room(s) × {} participants, camera ({}{} fps, {} B top frames) + microphone each, every subscriber asks {} quality",
            self.rooms,
            self.participants,
            if self.simulcast { "3 simulcast layers, " } else { "" },
            self.fps,
            self.video_bytes,
            self.quality
        )
    }

    fn rows(&self, outcomes: &[Outcome]) -> Vec<Row> {
        let mut r = report::Rows::new(outcomes);
        r.add("forwarding p50 ms", true, 2, |o| Some(o.forward.p50_ms))
            .add("forwarding p95 ms", true, 2, |o| Some(o.forward.p95_ms))
            .add("forwarding p99 ms", true, 2, |o| Some(o.forward.p99_ms))
            .add("forwarding max ms", true, 1, |o| Some(o.forward.max_ms))
            .add("frames received", false, 0, |o| Some(o.frames as f64))
            .add("frames missing", true, 0, |o| Some(o.missing as f64))
            .add("frame loss %", true, 3, |o| Some(o.loss_pct))
            .add("streams forwarded", false, 0, |o| Some(o.streams as f64))
            .add("received Mbit/s (all subscribers)", false, 1, |o| {
                Some(o.received_mbit_s)
            })
            .add("join → connected p50 ms", true, 0, |o| {
                Some(o.connect.p50_ms)
            })
            .add("join → connected p99 ms", true, 0, |o| {
                Some(o.connect.p99_ms)
            })
            .add("server CPU %", true, 1, |o| Some(o.server.cpu_pct))
            .add("server CPU % per forwarded stream", true, 3, |o| {
                Some(o.cpu_pct_per_stream)
            })
            .add("server RSS max MB", true, 1, |o| Some(o.server.rss_max_mb));
        r.done()
    }

    fn note(&self, outcomes: &[Outcome]) -> String {
        let mut md = String::from(
            "\nForwarding is measured end to end on one machine and one clock: a publisher stamps each \
             frame with its send time; a subscriber subtracts it on receipt (str0m on both ends, SRTP, \
             the SFU in between, loopback UDP). The load generator shares the machine's two cores with \
             the server.\n",
        );
        for o in outcomes {
            if !o.errors.is_empty() {
                md.push_str(&format!("\n{} errors: {}\n", o.target, o.errors.join("; ")));
            }
        }
        md
    }
}
