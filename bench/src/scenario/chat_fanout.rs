//! `chat-fanout`: one room of M members on the native protocol (`/v1`); one more connection sends N
//! chat messages at R messages/s (open loop). Measures, per delivery, the time from the message's
//! intended send time until a member has the committed `event` frame (p50…max), the time until the
//! last member has it, and the sender's ack time; counts missing and duplicate deliveries.
//!
//! Only Tandem has chat: the y-websocket peers are not run (a Socket.IO peer is future work).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::procstat::{Sampler, Usage};
use crate::stats::{latency_from_intended, Latency, Schedule, Summary};
use crate::target::{Kind, Target};
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

async fn join(url: &ws::WsUrl, room: &str) -> anyhow::Result<(ws::Reader, ws::Writer)> {
    let (mut r, w) = ws::connect(url, &url.path, None, Duration::from_secs(30)).await?;
    ws::send_text(&w, format!(r#"{{"t":"join","id":"j","room":"{room}"}}"#)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws::read(&mut r, &w))
            .await
            .map_err(|_| anyhow!("no joined reply within 30 s"))?;
        match msg {
            ws::Msg::Text(t) if t.starts_with(b"{\"t\":\"joined\"") || is_joined(&t) => {
                return Ok((r, w))
            }
            ws::Msg::Text(t) if t.windows(12).any(|w| w == b"\"t\":\"error\"") => {
                bail!("join refused: {}", String::from_utf8_lossy(&t))
            }
            ws::Msg::Closed(code) => bail!("closed while joining ({code:?})"),
            _ => {}
        }
    }
}

fn is_joined(t: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(t).is_ok_and(|v| v["t"] == "joined")
}

pub async fn run(target: &Target, p: &Params, label: &str) -> anyhow::Result<Outcome> {
    if !matches!(target.kind, Kind::Tandem | Kind::External(_)) {
        bail!("chat-fanout needs Tandem's /v1 protocol; {} has no chat", target.kind.name());
    }
    if p.members == 0 || p.messages == 0 || p.rate <= 0.0 {
        bail!("chat-fanout needs members, messages and rate above zero");
    }
    let url = ws::WsUrl::parse(&format!("{}/v1", target.base)).context("target URL")?;
    let room = format!("fanout-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
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
            let rw = join(&url, &room).await?;
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
        bail!("no member could join: {}", errors.first().cloned().unwrap_or_default());
    }
    let (mut sr, sw) = join(&url, &room).await.context("sender join")?;
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
                    ws::Msg::Text(t) => {
                        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&t) else {
                            continue;
                        };
                        if v["t"] == "ack" {
                            if let Some(i) = v["id"]
                                .as_str()
                                .and_then(|s| s.strip_prefix("b-"))
                                .and_then(|s| s.parse::<usize>().ok())
                                .filter(|i| *i < n && at[*i].is_none())
                            {
                                at[i] = Some(start.elapsed());
                                got += 1;
                            }
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
        let frame = format!(r#"{{"t":"send","id":"b-{i}","room":"{room}","text":"b:{i}"}}"#);
        if let Err(e) = ws::send_text(&sw, frame).await {
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
        persistence: String::new(),
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

#[cfg(test)]
mod tests {
    use super::tag_of;

    #[test]
    fn finds_the_tag_in_an_event_frame() {
        let f = br#"{"t":"event","room":"r","event":{"seq":9,"type":"chat.message.sent","payload":{"client_msg_id":"b-17","text":"b:17"}}}"#;
        assert_eq!(tag_of(f), Some(17));
        assert_eq!(tag_of(br#"{"t":"presence","room":"r"}"#), None);
        assert_eq!(tag_of(br#"{"text":"b:"}"#), None);
    }
}
