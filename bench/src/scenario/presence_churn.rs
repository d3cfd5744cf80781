//! `presence-churn`: one room of M members (distinct users); T of them toggle their typing indicator
//! and update their presence state (a cursor) R times per second each. Measures what every member
//! receives: frames and bytes per second, against what a relay-every-change server sends (T × R × 2
//! frames per member per second, O(n²) in the room), plus the server's CPU.
//!
//! Targets: Tandem (`/v1`: presence and typing coalesced per room per `--presence-flush-ms`) and the
//! Socket.IO peer (`typing` and `presence` relayed to the room as received, the usual way).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::procstat::{Sampler, Usage};
use crate::report::{self, Row};
use crate::scenario::{Protocol, Scenario};
use crate::target::{Kind, Target, TargetOpts};
use crate::ws;

/// The HS256 secret the harness starts Tandem with for this scenario (distinct users need tokens).
pub const BENCH_JWT_SECRET: &str = "tandem-bench-presence-churn-secret";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Members of the room (each a distinct user).
    pub members: usize,
    /// Members who type and move their cursor.
    pub typists: usize,
    /// Typing toggles and presence updates per typist per second (each).
    pub rate: f64,
    /// Seconds measured (after a 2 s warm-up).
    pub duration: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            members: 200,
            typists: 50,
            rate: 4.0,
            duration: 10.0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub target: String,
    pub persistence: String,
    pub params: Params,
    /// Frames one member received per second (mean over members).
    pub frames_per_member_per_sec: f64,
    /// Bytes one member received per second (mean over members).
    pub bytes_per_member_per_sec: f64,
    /// What relaying every change would send one member per second: typists × rate × 2.
    pub relay_frames_per_member_per_sec: f64,
    /// Frames the server sent per second, all members together.
    pub server_frames_per_sec: f64,
    /// Changes the typists sent per second, all together.
    pub changes_per_sec: f64,
    pub server: Usage,
    pub errors: Vec<String>,
}

/// A Tandem token for `user` with write access to every room.
fn token(user: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "sub": user, "aud": "tandem", "iss": "tandem", "nbf": now.saturating_sub(5),
        "exp": now + 3600, "iat": now, "rooms": { "*": "write" },
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(BENCH_JWT_SECRET.as_bytes()),
    )
    .map_err(|e| anyhow!("minting a token: {e}"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    V1,
    SocketIo,
}

async fn join(
    url: &ws::WsUrl,
    proto: Proto,
    room: &str,
    user: &str,
) -> anyhow::Result<(ws::Reader, ws::Writer)> {
    let path = match proto {
        Proto::V1 => format!("/v1?token={}", token(user)?),
        Proto::SocketIo => format!("/socket.io/?EIO=4&transport=websocket&user={user}"),
    };
    let (mut r, w) = ws::connect(url, &path, None, Duration::from_secs(30)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let read_until = async |r: &mut ws::Reader, pred: &(dyn Fn(&[u8]) -> bool + Sync)| loop {
        match tokio::time::timeout_at(deadline, ws::read(r, &w))
            .await
            .map_err(|_| anyhow!("no join reply within 30 s"))?
        {
            ws::Msg::Text(t) if t == b"2" => ws::send_text(&w, "3".into()).await?,
            ws::Msg::Text(t) if pred(&t) => return anyhow::Ok(()),
            ws::Msg::Closed(c) => bail!("closed while joining ({c:?})"),
            _ => {}
        }
    };
    match proto {
        Proto::V1 => {
            ws::send_text(&w, format!(r#"{{"t":"join","id":"j","room":"{room}"}}"#)).await?;
            read_until(&mut r, &|t| t.windows(12).any(|x| x == b"\"t\":\"joined\"")).await?;
        }
        Proto::SocketIo => {
            read_until(&mut r, &|t| t.starts_with(b"0")).await?;
            ws::send_text(&w, "40".into()).await?;
            read_until(&mut r, &|t| t.starts_with(b"40")).await?;
            ws::send_text(&w, format!(r#"420["join","{room}"]"#)).await?;
            read_until(&mut r, &|t| t.starts_with(b"430")).await?;
        }
    }
    Ok((r, w))
}

pub async fn run(target: &Target, p: &Params, label: &str) -> anyhow::Result<Outcome> {
    let proto = match target.kind {
        Kind::Tandem | Kind::External(_) => Proto::V1,
        Kind::SocketIo => Proto::SocketIo,
        _ => bail!(
            "{} has no rooms: presence-churn runs against tandem or socketio",
            target.kind.name()
        ),
    };
    if p.members == 0 || p.typists > p.members || p.rate <= 0.0 || p.duration <= 0.0 {
        bail!("presence-churn needs members > 0, typists ≤ members, rate and duration > 0");
    }
    let url = ws::WsUrl::parse(&format!("{}/", target.base)).context("target URL")?;
    let room = format!("churn-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let progress = crate::scenario::Progress::new(label, Duration::from_secs_f64(p.duration + 8.0));
    progress.update("members joining");
    let gate = Arc::new(Semaphore::new(64));
    let mut joins = Vec::new();
    for i in 0..p.members {
        let (url, room, gate) = (url.clone(), room.clone(), gate.clone());
        joins.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            join(&url, proto, &room, &format!("u{i}")).await
        }));
    }
    let mut members = Vec::new();
    let mut errors = Vec::new();
    for j in joins {
        match j.await {
            Ok(Ok(m)) => members.push(m),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if members.len() < p.members {
        bail!(
            "only {} of {} members joined: {:?}",
            members.len(),
            p.members,
            errors.first()
        );
    }
    let frames = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_at = Instant::now() + Duration::from_secs_f64(2.0 + p.duration + 1.0);
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (mut r, w) in members {
        writers.push(w.clone());
        let (frames, bytes, measuring) = (frames.clone(), bytes.clone(), measuring.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let left = stop_at.saturating_duration_since(Instant::now());
                let Ok(msg) = tokio::time::timeout(left, ws::read(&mut r, &w)).await else {
                    break;
                };
                match msg {
                    ws::Msg::Text(t) if t == b"2" => {
                        let _ = ws::send_text(&w, "3".into()).await;
                    }
                    ws::Msg::Text(t) => {
                        if measuring.load(Ordering::Relaxed) {
                            frames.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                        }
                    }
                    ws::Msg::Closed(_) => break,
                    ws::Msg::Binary(_) => {}
                }
            }
        }));
    }
    // Typists: each change alternates typing on/off and moves the cursor, at `rate` per second each.
    let changes = Arc::new(AtomicU64::new(0));
    let mut typists = Vec::new();
    for (i, w) in writers.iter().take(p.typists).enumerate() {
        let (w, room, changes, measuring) =
            (w.clone(), room.clone(), changes.clone(), measuring.clone());
        let interval = Duration::from_secs_f64(1.0 / p.rate);
        // Spread the typists over the interval.
        let phase = interval.mul_f64(i as f64 / p.typists.max(1) as f64);
        typists.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now() + phase;
            let mut k = 0u64;
            loop {
                tokio::time::sleep_until(start + interval.mul_f64(k as f64)).await;
                if Instant::now() >= stop_at - Duration::from_secs(1) {
                    break;
                }
                let on = k.is_multiple_of(2);
                let (typing, presence) = match proto {
                    Proto::V1 => (
                        format!(r#"{{"t":"typing","room":"{room}","typing":{on}}}"#),
                        format!(r#"{{"t":"presence","room":"{room}","state":{{"cursor":{k}}}}}"#),
                    ),
                    Proto::SocketIo => (
                        format!(r#"42["typing",{{"room":"{room}","typing":{on}}}]"#),
                        format!(r#"42["presence",{{"room":"{room}","state":{{"cursor":{k}}}}}]"#),
                    ),
                };
                if ws::send_text(&w, typing).await.is_err()
                    || ws::send_text(&w, presence).await.is_err()
                {
                    break;
                }
                if measuring.load(Ordering::Relaxed) {
                    changes.fetch_add(2, Ordering::Relaxed);
                }
                k += 1;
            }
        }));
    }
    let sampler = target.pid.map(Sampler::start);
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(true, Ordering::Relaxed);
    let w0 = Instant::now();
    let window = Duration::from_secs_f64(p.duration);
    while w0.elapsed() < window {
        progress.update("churning");
        tokio::time::sleep(Duration::from_millis(250).min(window.saturating_sub(w0.elapsed())))
            .await;
    }
    measuring.store(false, Ordering::Relaxed);
    let w1 = Instant::now();
    let secs = (w1 - w0).as_secs_f64();
    for t in typists {
        let _ = t.await;
    }
    for r in readers {
        let _ = r.await;
    }
    progress.finish();
    for w in &writers {
        ws::close(w).await;
    }
    let n = p.members as f64;
    let f = frames.load(Ordering::Relaxed) as f64;
    errors.truncate(5);
    Ok(Outcome {
        target: target.kind.name(),
        persistence: target.persistence.clone(),
        params: p.clone(),
        frames_per_member_per_sec: f / n / secs,
        bytes_per_member_per_sec: bytes.load(Ordering::Relaxed) as f64 / n / secs,
        relay_frames_per_member_per_sec: p.typists as f64 * p.rate * 2.0,
        server_frames_per_sec: f / secs,
        changes_per_sec: changes.load(Ordering::Relaxed) as f64 / secs,
        server: sampler.map(|s| s.usage(w0, w1)).unwrap_or_default(),
        errors,
    })
}

impl Scenario for Params {
    const NAME: &'static str = "presence-churn";
    const PROTOCOL: Protocol = Protocol::Chat;
    type Outcome = Outcome;

    /// Distinct users need tokens: Tandem runs with the harness's own HS256 secret.
    fn prepare(&self, opts: &mut TargetOpts) {
        opts.tandem_args.extend([
            "--jwt-hs256-secret".to_string(),
            BENCH_JWT_SECRET.to_string(),
        ]);
    }

    async fn run(
        &self,
        target: &mut Target,
        _opts: &TargetOpts,
        label: &str,
    ) -> anyhow::Result<Outcome> {
        run(target, self, label).await
    }

    fn title(&self) -> String {
        format!(
            "presence-churn: one room of {} members, {} typists × {} typing toggles and {} cursor moves per second",
            self.members, self.typists, self.rate, self.rate
        )
    }

    fn rows(&self, outcomes: &[Outcome]) -> Vec<Row> {
        let mut r = report::Rows::new(outcomes);
        r.add("frames per member per s", true, 1, |o| {
            Some(o.frames_per_member_per_sec)
        })
        .add("relaying every change would be", false, 0, |o| {
            Some(o.relay_frames_per_member_per_sec)
        })
        .add("KB per member per s", true, 1, |o| {
            Some(o.bytes_per_member_per_sec / 1000.0)
        })
        .add("server frames per s", true, 0, |o| {
            Some(o.server_frames_per_sec)
        })
        .add("changes sent per s", false, 0, |o| Some(o.changes_per_sec))
        .add("server CPU %", true, 0, |o| Some(o.server.cpu_pct))
        .add("server RSS max MB", true, 1, |o| Some(o.server.rss_max_mb));
        r.done()
    }

    fn note(&self, _outcomes: &[Outcome]) -> String {
        "\nTandem gathers presence and typing changes per room and sends each member at most one `presence` and one `typing` frame per `--presence-flush-ms` (100 ms); the Socket.IO peer relays every change to the rest of the room, as typical Socket.IO chat code does.\n".into()
    }
}
