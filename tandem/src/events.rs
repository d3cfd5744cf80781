//! `tandem events …`: the event log for humans — list, follow, time-travel and verify a document.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use proto::{DocId, Event, EventPayload, RoomId, Seq, StreamId};
use store::postgres::PgLog;
use store::sqlite::SqliteLog;
use store::EventLog;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Map, ReadTxn, Transact, Update};

/// One bus entry: its id and fields.
type BusEntry = (String, std::collections::HashMap<String, Vec<u8>>);

/// Where the events are.
#[derive(Debug, Args)]
pub struct Source {
    /// PostgreSQL URL (otherwise the SQLite file in --data).
    #[arg(long, env = "TANDEM_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Data folder of `tandem dev` (holding tandem.db).
    #[arg(long, env = "TANDEM_DATA", default_value = ".tandem")]
    data: PathBuf,
}

impl Source {
    async fn open(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        if let Some(url) = &self.database_url {
            return Ok(Arc::new(
                PgLog::connect(url)
                    .await
                    .context("connecting to PostgreSQL")?,
            ));
        }
        let db = self.data.join("tandem.db");
        if !db.exists() {
            bail!(
                "no event log at {} (pass --data DIR or --database-url URL)",
                db.display()
            );
        }
        Ok(Arc::new(
            SqliteLog::open(&db)
                .await
                .with_context(|| format!("opening {}", db.display()))?,
        ))
    }
}

/// `tandem events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Lists a document's events: seq, epoch, type, actor, time, size.
    Show {
        #[command(flatten)]
        source: Source,
        /// The document (or --room).
        #[arg(long, required_unless_present = "room", conflicts_with = "room")]
        doc: Option<String>,
        /// The chat room (chat messages, edits, deletions, joins and leaves).
        #[arg(long)]
        room: Option<String>,
        /// Only events after this seq.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Print full JSON envelopes instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follows a document's events as they are committed (Ctrl-C to stop): from the Redis bus when
    /// --redis-url is given, else by polling the record.
    Tail {
        #[command(flatten)]
        source: Source,
        /// Redis URL of the bus to follow.
        #[arg(long, env = "TANDEM_REDIS_URL", hide_env_values = true)]
        redis_url: Option<String>,
        /// The document (or --room).
        #[arg(long, required_unless_present = "room", conflicts_with = "room")]
        doc: Option<String>,
        /// The chat room.
        #[arg(long)]
        room: Option<String>,
        /// Poll interval in milliseconds.
        #[arg(long, default_value_t = 250)]
        interval_ms: u64,
    },
    /// Prints the document as it was at a point of its history, as JSON of its root types; or, with
    /// --room, the room's chat as it was (messages with their edits and deletions applied, who was in).
    Replay {
        #[command(flatten)]
        source: Source,
        /// The document (or --room).
        #[arg(long, required_unless_present = "room", conflicts_with = "room")]
        doc: Option<String>,
        /// The chat room.
        #[arg(long)]
        room: Option<String>,
        /// Last seq to include, or an RFC 3339 time (events at or before it); default: everything.
        #[arg(long)]
        until: Option<String>,
    },
    /// Rebuilds the state from the full log and compares it with the latest snapshot + tail.
    Verify {
        #[command(flatten)]
        source: Source,
        /// The document.
        #[arg(long)]
        doc: String,
    },
}

fn stream_of(doc: &str) -> anyhow::Result<StreamId> {
    Ok(StreamId::Doc(DocId::parse(doc).context("--doc")?))
}

/// The stream of `--doc` or `--room` (clap makes exactly one of them present).
fn stream_of_either(doc: Option<&str>, room: Option<&str>) -> anyhow::Result<StreamId> {
    match (doc, room) {
        (Some(d), _) => stream_of(d),
        (None, Some(r)) => Ok(StreamId::Room(RoomId::parse(r).context("--room")?)),
        (None, None) => bail!("give --doc or --room"),
    }
}

/// A room's chat as of the last of `events`: messages in order with edits and deletions applied, the
/// users present, and its calls (who was in each, when, who shared a screen).
pub fn room_transcript(events: &[Event]) -> serde_json::Value {
    let mut calls: Vec<serde_json::Value> = Vec::new();
    let mut messages: Vec<serde_json::Value> = Vec::new();
    let mut index: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut present: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for e in events {
        match &e.payload {
            EventPayload::ChatMessageSent(p) => {
                index.insert(e.seq.0, messages.len());
                messages.push(serde_json::json!({
                    "seq": e.seq, "actor": e.actor, "time": rfc3339(e.ts), "text": p.text,
                }));
            }
            EventPayload::ChatMessageEdited(p) => {
                if let Some(m) = index.get(&p.target.0).and_then(|&i| messages.get_mut(i)) {
                    m["text"] = p.text.clone().into();
                    m["edited"] = rfc3339(e.ts).into();
                }
            }
            EventPayload::ChatMessageDeleted(p) => {
                if let Some(m) = index.get(&p.target.0).and_then(|&i| messages.get_mut(i)) {
                    m["text"] = serde_json::Value::Null;
                    m["deleted"] = rfc3339(e.ts).into();
                }
            }
            EventPayload::UserJoined(p) => {
                present.insert(p.user.to_string());
            }
            EventPayload::UserLeft(p) => {
                present.remove(p.user.as_str());
            }
            EventPayload::CallStarted(p) => calls.push(serde_json::json!({
                "call": p.call, "started": rfc3339(e.ts), "started_by": p.user, "ended": null,
                "participants": [], "screen_shares": [],
            })),
            EventPayload::CallEnded(p) => {
                if let Some(c) = calls
                    .iter_mut()
                    .rev()
                    .find(|c| c["call"] == p.call.as_str())
                {
                    c["ended"] = rfc3339(e.ts).into();
                }
            }
            EventPayload::CallParticipantJoined(p) => {
                if let Some(list) = calls
                    .iter_mut()
                    .rev()
                    .find(|c| c["call"] == p.call.as_str())
                    .and_then(|c| c["participants"].as_array_mut())
                {
                    list.push(serde_json::json!({
                        "participant": p.participant, "user": p.user, "joined": rfc3339(e.ts), "left": null,
                    }));
                }
            }
            EventPayload::CallParticipantLeft(p) => {
                let who = calls
                    .iter_mut()
                    .rev()
                    .find(|c| c["call"] == p.call.as_str())
                    .and_then(|c| c["participants"].as_array_mut())
                    .and_then(|l| {
                        l.iter_mut()
                            .find(|x| x["participant"] == p.participant.as_str())
                    });
                if let Some(x) = who {
                    x["left"] = rfc3339(e.ts).into();
                    x["reason"] = p.reason.clone().into();
                }
            }
            EventPayload::ScreenShareStarted(p) => {
                if let Some(list) = calls
                    .last_mut()
                    .and_then(|c| c["screen_shares"].as_array_mut())
                {
                    list.push(serde_json::json!({
                        "user": p.user, "track": p.track, "started": rfc3339(e.ts), "stopped": null,
                    }));
                }
            }
            EventPayload::ScreenShareStopped(p) => {
                let share = calls
                    .last_mut()
                    .and_then(|c| c["screen_shares"].as_array_mut())
                    .and_then(|l| l.iter_mut().rev().find(|x| x["track"] == p.track.as_str()));
                if let Some(x) = share {
                    x["stopped"] = rfc3339(e.ts).into();
                }
            }
            _ => {}
        }
    }
    serde_json::json!({
        "seq": events.last().map_or(0, |e| e.seq.0),
        "present": present,
        "messages": messages,
        "calls": calls,
    })
}

async fn read_all(log: &dyn EventLog, stream: &StreamId, after: Seq) -> anyhow::Result<Vec<Event>> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let page = log.read(stream, cursor, 10_000).await?;
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        out.extend(page);
    }
    Ok(out)
}

fn line(e: &Event) -> String {
    let size = match &e.payload {
        EventPayload::DocumentUpdated(p) => p.update.0.len(),
        other => other.to_stored().len(),
    };
    format!(
        "{:>8}  {:>5}  {:<20} {:<24} {}  {} B",
        e.seq.0,
        e.epoch.0,
        e.payload.event_type().name(),
        e.actor.as_str(),
        rfc3339(e.ts),
        size
    )
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses `--until`: a seq number or an RFC 3339 time (in ms since the epoch).
enum Until {
    Seq(u64),
    TimeMs(i64),
}

fn parse_until(s: &str) -> anyhow::Result<Until> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Until::Seq(n));
    }
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("--until {s:?}: not a seq or RFC 3339 time"))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok(Until::TimeMs(ms))
}

fn apply_all<'a>(updates: impl IntoIterator<Item = &'a [u8]>) -> Doc {
    let doc = Doc::with_client_id(0);
    for u in updates {
        if let Ok(u) = Update::decode_v1(u) {
            let _ = doc.transact_mut().apply_update(u);
        }
    }
    doc
}

fn updates(events: &[Event]) -> Vec<&[u8]> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::DocumentUpdated(p) => Some(p.update.0.as_slice()),
            _ => None,
        })
        .collect()
}

/// The document's root types as JSON. Updates do not say which kind a root type is, so each root is
/// read as a map, then text, then array, then XML, taking the first reading that finds content.
pub fn doc_json(updates: &[&[u8]]) -> serde_json::Value {
    let probe = apply_all(updates.iter().copied());
    let names: Vec<String> = probe
        .transact()
        .root_refs()
        .map(|(n, _)| n.to_owned())
        .collect();
    let mut out = serde_json::Map::new();
    for name in names {
        let value = {
            let d = apply_all(updates.iter().copied());
            let m = d.get_or_insert_map(name.as_str());
            let txn = d.transact();
            (m.len(&txn) > 0)
                .then(|| serde_json::to_value(yrs::types::ToJson::to_json(&m, &txn)).ok())
                .flatten()
        }
        .or_else(|| {
            let d = apply_all(updates.iter().copied());
            let t = d.get_or_insert_text(name.as_str());
            let s = t.get_string(&d.transact());
            (!s.is_empty()).then_some(serde_json::Value::String(s))
        })
        .or_else(|| {
            let d = apply_all(updates.iter().copied());
            let a = d.get_or_insert_array(name.as_str());
            let txn = d.transact();
            serde_json::to_value(yrs::types::ToJson::to_json(&a, &txn))
                .ok()
                .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        })
        .or_else(|| {
            let d = apply_all(updates.iter().copied());
            let x = d.get_or_insert_xml_fragment(name.as_str());
            let s = x.get_string(&d.transact());
            (!s.is_empty()).then_some(serde_json::Value::String(s))
        })
        .unwrap_or(serde_json::Value::Null);
        out.insert(name, value);
    }
    serde_json::Value::Object(out)
}

/// Runs an `events` subcommand.
#[allow(clippy::print_stdout)]
pub async fn run(cmd: EventsCmd) -> anyhow::Result<()> {
    match cmd {
        EventsCmd::Show {
            source,
            doc,
            room,
            since,
            json,
        } => {
            let log = source.open().await?;
            let stream = stream_of_either(doc.as_deref(), room.as_deref())?;
            let events = read_all(log.as_ref(), &stream, Seq(since)).await?;
            if !json {
                println!(
                    "{:>8}  {:>5}  {:<20} {:<24} {:<24}  size",
                    "seq", "epoch", "type", "actor", "time"
                );
            }
            for e in &events {
                if json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!("{}", line(e));
                }
            }
        }
        EventsCmd::Tail {
            source,
            doc,
            room,
            redis_url: Some(url),
            ..
        } => {
            // History from the record, then live entries from the bus after the last seq shown.
            let log = source.open().await?;
            let stream = stream_of_either(doc.as_deref(), room.as_deref())?;
            let mut cursor = Seq(0);
            for e in read_all(log.as_ref(), &stream, cursor).await? {
                println!("{}", line(&e));
                cursor = e.seq;
            }
            let client = redis::Client::open(url.as_str()).context("--redis-url")?;
            let mut con = client
                .get_multiplexed_async_connection()
                .await
                .context("connecting to Redis")?;
            let key = store::bus::stream_key(&stream);
            let mut last_id = format!("{}-0", cursor.0);
            loop {
                let mut cmd = redis::cmd("XREAD");
                // Below the client's 500 ms response timeout.
                cmd.arg("BLOCK")
                    .arg(250)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&last_id);
                let read = cmd.query_async::<Option<Vec<(String, Vec<BusEntry>)>>>(&mut con);
                let reply = tokio::select! {
                    r = read => r?,
                    _ = tokio::signal::ctrl_c() => break,
                };
                for (id, fields) in reply.unwrap_or_default().into_iter().flat_map(|(_, e)| e) {
                    match store::bus::event_from_entry(&fields) {
                        Ok(e) => println!("{}", line(&e)),
                        Err(err) => eprintln!("skipping bus entry {id}: {err}"),
                    }
                    last_id = id;
                }
            }
        }
        EventsCmd::Tail {
            source,
            doc,
            room,
            interval_ms,
            redis_url: None,
        } => {
            let log = source.open().await?;
            let stream = stream_of_either(doc.as_deref(), room.as_deref())?;
            let mut cursor = Seq(0);
            loop {
                for e in read_all(log.as_ref(), &stream, cursor).await? {
                    println!("{}", line(&e));
                    cursor = e.seq;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(interval_ms.max(10))) => {}
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
        EventsCmd::Replay {
            source,
            doc: None,
            room: Some(room),
            until,
        } => {
            let log = source.open().await?;
            let stream = stream_of_either(None, Some(&room))?;
            let mut events = read_all(log.as_ref(), &stream, Seq(0)).await?;
            match until.as_deref().map(parse_until).transpose()? {
                Some(Until::Seq(n)) => events.retain(|e| e.seq.0 <= n),
                Some(Until::TimeMs(ms)) => events.retain(|e| e.ts <= ms),
                None => {}
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&room_transcript(&events))?
            );
        }
        EventsCmd::Replay {
            source, doc, until, ..
        } => {
            let doc = doc.context("give --doc or --room")?;
            let log = source.open().await?;
            let stream = stream_of(&doc)?;
            let mut events = read_all(log.as_ref(), &stream, Seq(0)).await?;
            let first = events.first().map(|e| e.seq.0).unwrap_or(1);
            match until.as_deref().map(parse_until).transpose()? {
                Some(Until::Seq(n)) => events.retain(|e| e.seq.0 <= n),
                Some(Until::TimeMs(ms)) => events.retain(|e| e.ts <= ms),
                None => {}
            }
            let mut base: Vec<&[u8]> = Vec::new();
            let loaded;
            if first > 1 {
                // History before `first` was pruned by retention: start from the latest snapshot, which
                // covers everything up to its seq; points before it cannot be rebuilt.
                loaded = log.load(&stream).await?;
                let Some(snap) = loaded.snapshot.as_ref() else {
                    bail!("history before seq {first} was pruned and there is no snapshot");
                };
                let reached = events.last().map(|e| e.seq.0).unwrap_or(0);
                if reached < snap.seq.0 {
                    bail!(
                        "history before seq {first} was pruned (retention); the earliest point that can be \
                         replayed is seq {}",
                        snap.seq.0
                    );
                }
                events.retain(|e| e.seq > snap.seq);
                base.push(&snap.state);
            }
            base.extend(updates(&events));
            let json = doc_json(&base);
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        EventsCmd::Verify { source, doc } => {
            let log = source.open().await?;
            let stream = stream_of(&doc)?;
            let all = read_all(log.as_ref(), &stream, Seq(0)).await?;
            if let Some(first) = all.first().filter(|e| e.seq.0 > 1) {
                bail!(
                    "cannot verify: history before seq {} was pruned by retention, so there is no full log \
                     to compare the snapshot with",
                    first.seq
                );
            }
            let loaded = log.load(&stream).await?;
            let mut from_snapshot: Vec<&[u8]> =
                loaded.snapshot.iter().map(|s| s.state.as_slice()).collect();
            from_snapshot.extend(updates(&loaded.tail));
            let full = updates(&all);
            let (a, b) = (
                apply_all(full.iter().copied()),
                apply_all(from_snapshot.iter().copied()),
            );
            let sv = |d: &Doc| d.transact().state_vector();
            let same_sv = sv(&a) == sv(&b);
            let same_json = doc_json(&full) == doc_json(&from_snapshot);
            let snap = loaded
                .snapshot
                .as_ref()
                .map(|s| s.seq.0.to_string())
                .unwrap_or_else(|| "none".into());
            println!(
                "doc {doc}: {} events, snapshot at seq {snap}, tail {} events: state vectors {}, content {}",
                all.len(),
                loaded.tail.len(),
                if same_sv { "equal" } else { "DIFFER" },
                if same_json { "equal" } else { "DIFFERS" }
            );
            if !(same_sv && same_json) {
                bail!("verification failed: the snapshot + tail does not equal a full replay");
            }
        }
    }
    Ok(())
}
