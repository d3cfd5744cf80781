//! Offline checks of DESIGN.md invariants 2–5 against the record (PostgreSQL) and what the clients
//! observed.
//!
//! * **lost** (invariant 2): an acknowledged edit missing from the document a fresh client loads or
//!   from the log, or an acknowledged chat message missing from the log.
//! * **diverged** (invariant 3): a document whose clients (every writer, a fresh client, the log
//!   replayed) do not hold the same tags in the same order; a chat message whose ack seq differs from
//!   its seq in the log.
//! * **duplicates** (invariant 4): a tag present twice in a document, a chat message id committed at
//!   two seqs, or shown to a client at two seqs.
//! * **gaps** (invariant 4): a stream whose seqs are not consecutive.
//! * **stale_writes** (invariant 5): an event whose epoch is lower than an earlier event's epoch in the
//!   same stream (a fenced-out owner wrote after a takeover).

use std::collections::HashMap;

use proto::{DocId, EventPayload, RoomId, Seq, StreamId};
use store::EventLog;

use crate::workload::{doc_name, room_name, Record, Replica};

/// Counts of violations (all must be 0) and totals.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Acknowledged events (edits + messages).
    pub acked: u64,
    /// Of which chat messages.
    pub acked_messages: u64,
    /// See the module doc.
    pub lost: u64,
    /// See the module doc.
    pub diverged: u64,
    /// See the module doc.
    pub duplicates: u64,
    /// See the module doc.
    pub gaps: u64,
    /// See the module doc.
    pub stale_writes: u64,
    /// Events read back from the log.
    pub log_events: u64,
    /// Human-readable details of the first violations.
    pub details: Vec<String>,
}

impl Verdict {
    /// Whether no invariant was violated.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.diverged == 0
            && self.duplicates == 0
            && self.gaps == 0
            && self.stale_writes == 0
    }

    fn note(&mut self, s: String) {
        if self.details.len() < 20 {
            self.details.push(s);
        }
    }
}

/// Replays a document's log (snapshot + tail) into a replica.
fn replay(loaded: &store::Loaded) -> Replica {
    let r = Replica::new(2_000_000, |_| {});
    if let Some(s) = &loaded.snapshot {
        r.apply(&s.state);
    }
    for e in &loaded.tail {
        if let EventPayload::DocumentUpdated(p) = &e.payload {
            r.apply(&p.update.0);
        }
    }
    r
}

/// Checks one stream's order and fencing.
fn check_stream(v: &mut Verdict, name: &str, events: &[proto::Event]) {
    let mut max_epoch = 0u64;
    let mut prev: Option<u64> = None;
    for e in events {
        if let Some(p) = prev {
            if e.seq.0 != p + 1 {
                v.gaps += 1;
                v.note(format!("{name}: seq {} follows {p}", e.seq.0));
            }
        }
        prev = Some(e.seq.0);
        if e.epoch.0 < max_epoch {
            v.stale_writes += 1;
            v.note(format!(
                "{name}: seq {} written under epoch {} after epoch {max_epoch}",
                e.seq.0, e.epoch.0
            ));
        }
        max_epoch = max_epoch.max(e.epoch.0);
    }
}

/// Runs every check. `writers[d]` are the final replicas of doc `d`'s writers, `fresh[d]` a fresh
/// client's load of it.
pub async fn check(
    log: &dyn EventLog,
    rec: &Record,
    writers: &[Vec<Option<Replica>>],
    fresh: &[Option<Replica>],
    rooms: usize,
) -> anyhow::Result<Verdict> {
    let mut v = Verdict::default();
    for (d, ws) in writers.iter().enumerate() {
        let name = doc_name(d);
        let stream = StreamId::Doc(DocId::parse(&name)?);
        let events = log.read(&stream, Seq(0), usize::MAX >> 1).await?;
        v.log_events += events.len() as u64;
        check_stream(&mut v, &name, &events);
        let replayed = replay(&log.load(&stream).await?);
        let log_tags = replayed.tags();
        let Some(fresh) = &fresh[d] else {
            v.diverged += 1;
            v.note(format!("{name}: a fresh client could not load it"));
            continue;
        };
        let fresh_tags = fresh.tags();
        let mut count: HashMap<&str, usize> = HashMap::new();
        for t in &fresh_tags {
            *count.entry(t).or_default() += 1;
        }
        for (t, c) in &count {
            if *c > 1 {
                v.duplicates += 1;
                v.note(format!("{name}: tag {t} present {c} times"));
            }
        }
        let log_set: std::collections::HashSet<&str> =
            log_tags.iter().map(String::as_str).collect();
        for (tag, (doc, _)) in &rec.acked {
            if *doc != d {
                continue;
            }
            v.acked += 1;
            if !count.contains_key(tag.as_str()) || !log_set.contains(tag.as_str()) {
                v.lost += 1;
                v.note(format!(
                    "{name}: acknowledged tag {tag} missing (fresh load: {}, log: {})",
                    count.contains_key(tag.as_str()),
                    log_set.contains(tag.as_str())
                ));
            }
        }
        let mut doc_diverged = log_tags != fresh_tags;
        if doc_diverged {
            v.note(format!(
                "{name}: log replay has {} tags, a fresh load {}",
                log_tags.len(),
                fresh_tags.len()
            ));
        }
        for (w, r) in ws.iter().enumerate() {
            match r {
                Some(r) if r.tags() == fresh_tags => {}
                Some(r) => {
                    doc_diverged = true;
                    v.note(format!(
                        "{name}: writer {w} holds {} tags, a fresh load {}",
                        r.tags().len(),
                        fresh_tags.len()
                    ));
                }
                None => {
                    doc_diverged = true;
                    v.note(format!("{name}: writer {w} did not finish"));
                }
            }
        }
        if doc_diverged {
            v.diverged += 1;
        }
    }
    for room in 0..rooms {
        let name = room_name(room);
        let stream = StreamId::Room(RoomId::parse(&name)?);
        let events = log.read(&stream, Seq(0), usize::MAX >> 1).await?;
        v.log_events += events.len() as u64;
        check_stream(&mut v, &name, &events);
        let mut by_id: HashMap<&str, Vec<u64>> = HashMap::new();
        for e in &events {
            if let EventPayload::ChatMessageSent(p) = &e.payload {
                by_id.entry(&p.client_msg_id).or_default().push(e.seq.0);
            }
        }
        for (id, seqs) in &by_id {
            if seqs.len() > 1 {
                v.duplicates += 1;
                v.note(format!("{name}: message {id} committed at seqs {seqs:?}"));
            }
        }
        for ((r, id), (_, seq, _, _)) in &rec.chat_acked {
            if *r != room {
                continue;
            }
            v.acked += 1;
            v.acked_messages += 1;
            match by_id.get(id.as_str()) {
                None => {
                    v.lost += 1;
                    v.note(format!(
                        "{name}: acknowledged message {id} (seq {seq}) not in the log"
                    ));
                }
                Some(seqs) if !seqs.contains(seq) => {
                    v.diverged += 1;
                    v.note(format!(
                        "{name}: message {id} acked at seq {seq}, logged at {seqs:?}"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    v.duplicates += rec.visible_duplicates;
    v.diverged += rec.ack_conflicts;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::event::ChatMessageSentV1;
    use proto::{Epoch, Event, NewEvent, ShardId, UserId};
    use store::AppendRequest;

    fn chat(seq: u64, epoch: u64, id: &str) -> Event {
        Event {
            id: uuid::Uuid::now_v7(),
            version: 1,
            stream: StreamId::Room(RoomId::parse("r").expect("id")),
            seq: Seq(seq),
            epoch: Epoch(epoch),
            actor: UserId::parse("u").expect("id"),
            ts: 0,
            trace: None,
            payload: EventPayload::ChatMessageSent(ChatMessageSentV1 {
                client_msg_id: id.into(),
                text: "x".into(),
            }),
        }
    }

    #[test]
    fn gaps_and_stale_epochs_are_counted() {
        let mut v = Verdict::default();
        let events = vec![
            chat(1, 1, "a"),
            chat(2, 2, "b"),
            chat(4, 2, "c"),
            chat(5, 1, "d"),
        ];
        check_stream(&mut v, "room:r", &events);
        assert_eq!(v.gaps, 1);
        assert_eq!(v.stale_writes, 1);
        assert!(!v.ok());
    }

    #[tokio::test]
    async fn a_lost_or_doubled_message_fails_the_check() {
        let log = store::memory::MemoryLog::new();
        let stream = StreamId::Room(RoomId::parse(&room_name(0)).expect("id"));
        let epoch = log
            .acquire(&stream, &ShardId::parse("s0").expect("id"))
            .await
            .expect("acquire");
        let new = |id: &str| NewEvent {
            id: uuid::Uuid::now_v7(),
            actor: UserId::parse("u").expect("id"),
            ts: 0,
            trace: None,
            payload: EventPayload::ChatMessageSent(ChatMessageSentV1 {
                client_msg_id: id.into(),
                text: "x".into(),
            }),
        };
        let req = AppendRequest {
            stream,
            epoch,
            first_seq: Seq(1),
            events: vec![new("m1"), new("m2"), new("m2")],
        };
        assert!(log.append(vec![req]).await.into_iter().all(|r| r.is_ok()));
        let mut rec = Record::default();
        let now = tokio::time::Instant::now();
        rec.chat_acked
            .insert((0, "m1".into()), (epoch.0, 1, now, now));
        rec.chat_acked
            .insert((0, "m9".into()), (epoch.0, 9, now, now));
        let v = check(&log, &rec, &[], &[], 1).await.expect("check");
        assert_eq!(v.acked, 2);
        assert_eq!(v.lost, 1, "m9 was acknowledged and is not in the log");
        assert_eq!(v.duplicates, 1, "m2 is committed twice");
        assert!(!v.ok());
    }
}
