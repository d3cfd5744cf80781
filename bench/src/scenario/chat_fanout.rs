//! `chat-fanout`: one room of M members on the native protocol (`/v1`); one more connection sends N
//! chat messages at R messages/s (open loop). Measures, per delivery, the time from the message's
//! intended send time until a member has the committed `event` frame (p50…max), the time until the
//! last member has it, and the sender's ack time; counts missing and duplicate deliveries.
//!
//! Targets: Tandem (`/v1`, durable) and the Socket.IO peer (`bench/peers/socketio.mjs`, Engine.IO v4
//! over WebSocket, spoken here directly: `40` connect, `42["event",…]` events, `42N[…]` / `43N[…]` acks,
//! `2`/`3` heartbeats). The y-websocket peers have no chat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::procstat::{Sampler, Usage};
use crate::report::{self, Row};
use crate::scenario::{Protocol, Scenario};
use crate::stats::{latency_from_intended, Latency, Schedule, Summary};
use crate::target::{Kind, Target, TargetOpts};
use crate::ws;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Receiving members of the room.
    pub members: usize,
    /// Messages the sender sends.
    pub messages: usize,
    /// Messages per second.
    pub rate: f64,
    /// Seconds to wait after the last send for deliveries still on their way.
    pub grace: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            members: 1_000,
            messages: 200,
            rate: 10.0,
            grace: 5.0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub target: String,
    pub persistence: String,
    pub params: Params,
    /// Intended send → one member has the message (every delivery).
    pub delivery: Summary,
    /// Intended send → the last member has it (one sample per message).
    pub all_members: Summary,
    /// Intended send → the sender's ack (committed).
    pub ack: Summary,
    /// Connect + join of one member.
    pub join: Summary,
    pub deliveries: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub server: Usage,
    pub errors: Vec<String>,
}

/// What one member saw: for each message index, when it arrived (since the run's start).
struct Seen {
    at: Vec<Option<Duration>>,
    duplicates: u64,
}

/// The message index in a chat event frame for `b:{index}` texts (no full JSON parse per frame).
fn tag_of(frame: &[u8]) -> Option<usize> {
    const NEEDLE: &[u8] = b"\"text\":\"b:";
    let pos = frame.windows(NEEDLE.len()).position(|w| w == NEEDLE)?;
    let rest = &frame[pos + NEEDLE.len()..];
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The chat protocol a target speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chat {
    /// Tandem's `/v1`.
    V1,
    /// Socket.IO 4 (Engine.IO v4) over WebSocket.
    SocketIo,
}

impl Chat {
    fn path(self) -> &'static str {
        match self {
            Chat::V1 => "/v1",
            Chat::SocketIo => "/socket.io/?EIO=4&transport=websocket",
        }
    }

    fn send_frame(self, room: &str, i: usize) -> String {
        match self {
            Chat::V1 => format!(r#"{{"t":"send","id":"b-{i}","room":"{room}","text":"b:{i}"}}"#),
            Chat::SocketIo => format!(
                r#"42{}["send",{{"room":"{room}","id":"b-{i}","text":"b:{i}"}}]"#,
                i + 1
            ),
        }
    }

    /// The message index a frame acknowledges, if it is an ack.
    fn ack_of(self, t: &[u8]) -> Option<usize> {
        match self {
            Chat::V1 => {
                let v = serde_json::from_slice::<serde_json::Value>(t).ok()?;
                (v["t"] == "ack").then_some(())?;
                v["id"].as_str()?.strip_prefix("b-")?.parse().ok()
            }
            Chat::SocketIo => {
                let rest = t.strip_prefix(b"43")?;
                let end = rest.iter().position(|b| !b.is_ascii_digit())?;
                let n: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
                n.checked_sub(1)
            }
        }
    }
}

/// Answers Engine.IO pings (`2` → `3`); true when the frame was one.
async fn heartbeat(chat: Chat, t: &[u8], w: &ws::Writer) -> bool {
    if chat == Chat::SocketIo && t == b"2" {
        let _ = ws::send_text(w, "3".into()).await;
        return true;
    }
    false
}

async fn join(url: &ws::WsUrl, chat: Chat, room: &str) -> anyhow::Result<(ws::Reader, ws::Writer)> {
    let (mut r, w) = ws::connect(url, chat.path(), None, Duration::from_secs(30)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let next = async |r: &mut ws::Reader| -> anyhow::Result<Vec<u8>> {
        loop {
            let msg = tokio::time::timeout_at(deadline, ws::read(r, &w))
                .await
                .map_err(|_| anyhow!("no join reply within 30 s"))?;
            match msg {
                ws::Msg::Text(t) if heartbeat(chat, &t, &w).await => {}
                ws::Msg::Text(t) => return Ok(t),
                ws::Msg::Closed(code) => bail!("closed while joining ({code:?})"),
                ws::Msg::Binary(_) => {}
            }
        }
    };
    match chat {
        Chat::V1 => {
            ws::send_text(&w, format!(r#"{{"t":"join","id":"j","room":"{room}"}}"#)).await?;
            loop {
                let t = next(&mut r).await?;
                let v: serde_json::Value = serde_json::from_slice(&t).unwrap_or_default();
                match v["t"].as_str() {
                    Some("joined") => return Ok((r, w)),
                    Some("error") => bail!("join refused: {}", String::from_utf8_lossy(&t)),
                    _ => {}
                }
            }
        }
        Chat::SocketIo => {
            // Engine.IO open, then connect to the default namespace, then join with ack id 0.
            let open = next(&mut r).await?;
            if !open.starts_with(b"0") {
                bail!(
                    "expected an Engine.IO open packet, got {}",
                    String::from_utf8_lossy(&open)
                );
            }
            ws::send_text(&w, "40".into()).await?;
            loop {
                let t = next(&mut r).await?;
                if t.starts_with(b"40") {
                    break;
                }
                if t.starts_with(b"44") {
                    bail!("namespace connect refused: {}", String::from_utf8_lossy(&t));
                }
            }
            ws::send_text(&w, format!(r#"420["join","{room}"]"#)).await?;
            loop {
                if next(&mut r).await?.starts_with(b"430") {
                    return Ok((r, w));
                }
            }
        }
    }
}

pub async fn run(target: &Target, p: &Params, label: &str) -> anyhow::Result<Outcome> {
    let chat = match target.kind {
        Kind::Tandem | Kind::External(_) => Chat::V1,
        Kind::SocketIo => Chat::SocketIo,
        _ => bail!(
            "{} has no chat: chat-fanout runs against tandem or socketio",
            target.kind.name()
        ),
    };
    if p.members == 0 || p.messages == 0 || p.rate <= 0.0 {
        bail!("chat-fanout needs members, messages and rate above zero");
    }
    let url = ws::WsUrl::parse(&format!("{}/", target.base)).context("target URL")?;
    let room = format!(
        "fanout-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let sampler = target.pid.map(Sampler::start);
    let total = Duration::from_secs_f64(p.messages as f64 / p.rate + p.grace + 10.0);
    let progress = crate::scenario::Progress::new(label, total);

    // Members join (64 handshakes at a time).
    progress.update("members joining");
    let gate = Arc::new(Semaphore::new(64));
    let mut joins = Vec::with_capacity(p.members);
    for _ in 0..p.members {
        let (url, room, gate) = (url.clone(), room.clone(), gate.clone());
        joins.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let t = Instant::now();
            let rw = join(&url, chat, &room).await?;
            anyhow::Ok((rw, t.elapsed()))
        }));
    }
    let mut members = Vec::with_capacity(p.members);
    let mut join_lat = Latency::new();
    let mut errors = Vec::new();
    for j in joins {
        match j.await {
            Ok(Ok((rw, t))) => {
                join_lat.record(t);
                members.push(rw);
            }
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if members.is_empty() {
        bail!(
            "no member could join: {}",
            errors.first().cloned().unwrap_or_default()
        );
    }
    let (mut sr, sw) = join(&url, chat, &room).await.context("sender join")?;
    // Let the join burst's presence and user.joined traffic settle before timing anything.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let start = Instant::now();
    let schedule = Schedule::new(p.rate, Duration::from_millis(100));
    let n = p.messages;
    let end = schedule.intended(n as u64) + Duration::from_secs_f64(p.grace);
    let mut readers = Vec::with_capacity(members.len());
    let mut writers = Vec::with_capacity(members.len());
    for (mut r, w) in members {
        writers.push(w.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = Seen {
                at: vec![None; n],
                duplicates: 0,
            };
            let mut got = 0usize;
            while got < n {
                let left = end.saturating_sub(start.elapsed());
                let Ok(msg) = tokio::time::timeout(left, ws::read(&mut r, &w)).await else {
                    break;
                };
                match msg {
                    ws::Msg::Text(t) if heartbeat(chat, &t, &w).await => {}
                    ws::Msg::Text(t) => {
                        if let Some(i) = tag_of(&t).filter(|i| *i < n) {
                            if seen.at[i].is_some() {
                                seen.duplicates += 1;
                            } else {
                                seen.at[i] = Some(start.elapsed());
                                got += 1;
                            }
                        }
                    }
                    ws::Msg::Closed(_) => break,
                    ws::Msg::Binary(_) => {}
                }
            }
            seen
        }));
    }
    // The sender's acks.
    let ack_reader = {
        let w = sw.clone();
        tokio::spawn(async move {
            let mut at: Vec<Option<Duration>> = vec![None; n];
            let mut got = 0;
            while got < n {
                let left = end.saturating_sub(start.elapsed());
                let Ok(msg) = tokio::time::timeout(left, ws::read(&mut sr, &w)).await else {
                    break;
                };
                match msg {
                    ws::Msg::Text(t) if heartbeat(chat, &t, &w).await => {}
                    ws::Msg::Text(t) => {
                        if let Some(i) = chat.ack_of(&t).filter(|i| *i < n && at[*i].is_none()) {
                            at[i] = Some(start.elapsed());
                            got += 1;
                        }
                    }
                    ws::Msg::Closed(_) => break,
                    ws::Msg::Binary(_) => {}
                }
            }
            at
        })
    };
    let w0 = Instant::now();
    for i in 0..n {
        let due = schedule.intended(i as u64);
        tokio::time::sleep_until(tokio::time::Instant::from_std(start + due)).await;
        if let Err(e) = ws::send_text(&sw, chat.send_frame(&room, i)).await {
            errors.push(format!("sender: {e:#}"));
            break;
        }
        if i % 10 == 0 {
            progress.update(&format!("sent {i} of {n}"));
        }
    }
    let mut delivery = Latency::new();
    let mut last_at: Vec<Option<Duration>> = vec![Some(Duration::ZERO); n];
    let (mut deliveries, mut missing, mut duplicates) = (0u64, 0u64, 0u64);
    for r in readers {
        let seen = r.await.map_err(|e| anyhow!("member task: {e}"))?;
        duplicates += seen.duplicates;
        for (i, at) in seen.at.iter().enumerate() {
            match at {
                Some(t) => {
                    deliveries += 1;
                    delivery.record(latency_from_intended(schedule.intended(i as u64), *t));
                    if let Some(l) = last_at[i].as_mut() {
                        *l = (*l).max(*t);
                    }
                }
                None => {
                    missing += 1;
                    last_at[i] = None;
                }
            }
        }
    }
    let w1 = Instant::now();
    let mut all_members = Latency::new();
    for (i, t) in last_at.iter().enumerate() {
        if let Some(t) = t {
            all_members.record(latency_from_intended(schedule.intended(i as u64), *t));
        }
    }
    let mut ack = Latency::new();
    for (i, t) in ack_reader
        .await
        .map_err(|e| anyhow!("ack task: {e}"))?
        .iter()
        .enumerate()
    {
        if let Some(t) = t {
            ack.record(latency_from_intended(schedule.intended(i as u64), *t));
        }
    }
    progress.finish();
    for w in writers.iter().chain(std::iter::once(&sw)) {
        ws::close(w).await;
    }
    errors.truncate(5);
    Ok(Outcome {
        target: target.kind.name(),
        persistence: target.persistence.clone(),
        params: p.clone(),
        delivery: delivery.summary(),
        all_members: all_members.summary(),
        ack: ack.summary(),
        join: join_lat.summary(),
        deliveries,
        missing,
        duplicates,
        server: sampler.map(|s| s.usage(w0, w1)).unwrap_or_default(),
        errors,
    })
}

impl Scenario for Params {
    const NAME: &'static str = "chat-fanout";
    const PROTOCOL: Protocol = Protocol::Chat;
    type Outcome = Outcome;

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
            "chat-fanout: one room of {} members, {} messages at {}/s from one sender",
            self.members, self.messages, self.rate
        )
    }

    fn rows(&self, outcomes: &[Outcome]) -> Vec<Row> {
        let mut r = report::Rows::new(outcomes);
        r.add("delivery p50 ms", true, 1, |o| Some(o.delivery.p50_ms))
            .add("delivery p95 ms", true, 1, |o| Some(o.delivery.p95_ms))
            .add("delivery p99 ms", true, 1, |o| Some(o.delivery.p99_ms))
            .add("delivery max ms", true, 1, |o| Some(o.delivery.max_ms))
            .add("all members have it p50 ms", true, 1, |o| {
                Some(o.all_members.p50_ms)
            })
            .add("all members have it p99 ms", true, 1, |o| {
                Some(o.all_members.p99_ms)
            })
            .add("sender ack p50 ms", true, 1, |o| Some(o.ack.p50_ms))
            .add("sender ack p99 ms", true, 1, |o| Some(o.ack.p99_ms))
            .add("deliveries", false, 0, |o| Some(o.deliveries as f64))
            .add("missing deliveries", true, 0, |o| Some(o.missing as f64))
            .add("duplicate deliveries", true, 0, |o| {
                Some(o.duplicates as f64)
            })
            .add("member join p99 ms", true, 1, |o| Some(o.join.p99_ms))
            .add("server CPU %", true, 0, |o| Some(o.server.cpu_pct))
            .add("server RSS max MB", true, 1, |o| Some(o.server.rss_max_mb));
        r.done()
    }

    fn note(&self, _outcomes: &[Outcome]) -> String {
        "\nLatency is measured from each message's intended send time (open loop) to the moment a member's socket delivered the committed `event` frame. The Socket.IO peer relays without storing anything; Tandem commits every message to its store before delivering it. Hocuspocus and y-websocket-server have no chat.\n".into()
    }
}

#[cfg(test)]
mod tests {
    use super::{tag_of, Chat};

    #[test]
    fn finds_the_tag_in_an_event_frame() {
        let f = br#"{"t":"event","room":"r","event":{"seq":9,"type":"chat.message.sent","payload":{"client_msg_id":"b-17","text":"b:17"}}}"#;
        assert_eq!(tag_of(f), Some(17));
        let sio = br#"42["event",{"room":"r","seq":3,"id":"b-2","text":"b:2"}]"#;
        assert_eq!(tag_of(sio), Some(2));
        assert_eq!(tag_of(br#"{"t":"presence","room":"r"}"#), None);
        assert_eq!(tag_of(br#"{"text":"b:"}"#), None);
    }

    #[test]
    fn acks_map_back_to_message_indexes() {
        assert_eq!(
            Chat::V1.ack_of(br#"{"t":"ack","id":"b-4","seq":9}"#),
            Some(4)
        );
        assert_eq!(Chat::V1.ack_of(br#"{"t":"event","id":"b-4"}"#), None);
        assert_eq!(Chat::SocketIo.ack_of(br#"435[{"seq":9}]"#), Some(4));
        assert_eq!(
            Chat::SocketIo.ack_of(br#"430[{"ok":true}]"#),
            None,
            "the join's ack"
        );
        assert_eq!(Chat::SocketIo.ack_of(br#"42["event",{}]"#), None);
        assert!(Chat::SocketIo
            .send_frame("r", 4)
            .starts_with("425[\"send\""));
    }
}
