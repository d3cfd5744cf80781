//! A room's chat window: the last `history_window` committed events, each rendered to JSON once, the
//! idempotency index over them, and resume from a client's position.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use proto::v1::{Position, ResumeFailure};
use proto::{Epoch, Event, EventPayload, Seq, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use store::{Loaded, StoreError};

/// A committed event in the window, with its JSON rendered once (shared by every frame carrying it).
pub(super) struct Committed {
    pub event: Event,
    pub json: Arc<RawValue>,
}

impl Committed {
    /// Renders `event`.
    pub fn new(event: Event) -> Self {
        let json = Arc::from(proto::v1::render_event(&event));
        Self { event, json }
    }
}

/// The window and its idempotency index.
pub(super) struct Window {
    events: VecDeque<Committed>,
    /// (user, request id) → seq, for the window's chat events and those in flight.
    keys: HashMap<(UserId, String), Seq>,
    max: usize,
}

impl Window {
    /// An empty window of at most `max` events.
    pub fn new(max: usize) -> Self {
        Self {
            events: VecDeque::new(),
            keys: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Refills the window from the newest of `events` (a load).
    pub fn reload(&mut self, events: Vec<Event>) {
        self.events.clear();
        self.keys.clear();
        let skip = events.len().saturating_sub(self.max);
        for e in events.into_iter().skip(skip) {
            self.push(Committed::new(e));
        }
    }

    /// Appends a committed event, dropping the oldest beyond the window.
    pub fn push(&mut self, c: Committed) {
        if let Some(key) = idempotency_key(&c.event) {
            self.keys.insert(key, c.event.seq);
        }
        self.events.push_back(c);
        while self.events.len() > self.max {
            if let Some(old) = self.events.pop_front() {
                if let Some(key) = idempotency_key(&old.event) {
                    if self.keys.get(&key) == Some(&old.event.seq) {
                        self.keys.remove(&key);
                    }
                }
            }
        }
    }

    /// Records that `(user, rid)` is being appended as `seq` (before its commit).
    pub fn reserve(&mut self, user: UserId, rid: String, seq: Seq) {
        self.keys.insert((user, rid), seq);
    }

    /// The seq an earlier request `(user, rid)` was appended as, while it is in the window or in
    /// flight.
    pub fn seq_of(&self, user: &UserId, rid: &str) -> Option<Seq> {
        self.keys.get(&(user.clone(), rid.to_owned())).copied()
    }

    /// The committed event at `seq`, if still in the window.
    pub fn get(&self, seq: Seq) -> Option<&Committed> {
        let first = self.events.front()?.event.seq;
        let idx = seq.0.checked_sub(first.0)? as usize;
        self.events.get(idx)
    }

    /// Whether a committed event deletes `target`.
    pub fn deletes(&self, target: Seq) -> bool {
        self.events
            .iter()
            .any(|c| deletes(&c.event.payload, target))
    }

    /// The position of the newest event (where a client that saw everything resumes).
    pub fn position(&self) -> Position {
        self.events.back().map_or(Position::START, |c| Position {
            epoch: c.event.epoch,
            seq: c.event.seq,
        })
    }

    /// The committed events, oldest first (for a snapshot).
    pub fn events(&self) -> Vec<Event> {
        self.events.iter().map(|c| c.event.clone()).collect()
    }

    /// The rendered events after `p`, when `p` names an event in the window (same seq and epoch), or
    /// the start of a room whose window still holds its first event. `applied`: the last committed
    /// seq.
    pub fn recover(&self, p: Position, applied: Seq) -> Result<Vec<Arc<RawValue>>, ResumeFailure> {
        if p.seq > applied {
            return Err(ResumeFailure::UnknownPosition);
        }
        let start = self.events.front().map_or(applied.next(), |c| c.event.seq);
        if p.seq.0 == 0 {
            if start != Seq(1) {
                return Err(ResumeFailure::TooOld);
            }
        } else {
            let c = self.get(p.seq).ok_or(ResumeFailure::TooOld)?;
            if c.event.epoch != p.epoch {
                return Err(ResumeFailure::EpochChanged);
            }
        }
        Ok(self
            .events
            .iter()
            .filter(|c| c.event.seq > p.seq)
            .map(|c| c.json.clone())
            .collect())
    }

    /// The epoch of the committed event at `seq`.
    pub fn epoch_of(&self, seq: Seq) -> Option<Epoch> {
        self.get(seq).map(|c| c.event.epoch)
    }
}

/// Whether `p` deletes `target`.
pub(super) fn deletes(p: &EventPayload, target: Seq) -> bool {
    matches!(p, EventPayload::ChatMessageDeleted(d) if d.target == target)
}

/// The (user, request id) a chat event was sent under.
fn idempotency_key(e: &Event) -> Option<(UserId, String)> {
    let id = match &e.payload {
        EventPayload::ChatMessageSent(p) => &p.client_msg_id,
        EventPayload::ChatMessageEdited(p) => &p.client_msg_id,
        EventPayload::ChatMessageDeleted(p) => &p.client_msg_id,
        _ => return None,
    };
    Some((e.actor.clone(), id.clone()))
}

/// A room snapshot: the window and who is present. Loading it plus the tail after it restores the
/// room's state without reading its whole history.
#[derive(Serialize, Deserialize)]
pub(super) struct RoomSnapshot {
    pub v: u32,
    pub window: Vec<Event>,
    pub present: Vec<UserId>,
    /// The call open in the log, if any (absent in snapshots written before calls existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<super::calls::OpenCall>,
}

/// The newest `limit` events of a room's stream from its snapshot (which holds the window) and tail,
/// oldest first: the newest history page without reading the whole stream.
pub fn newest_events(loaded: &Loaded, limit: usize) -> Result<Vec<Event>, StoreError> {
    let mut events: Vec<Event> = match &loaded.snapshot {
        Some(s) => {
            serde_json::from_slice::<RoomSnapshot>(&s.state)
                .map_err(|e| StoreError::Corrupt(format!("room snapshot: {e}")))?
                .window
        }
        None => Vec::new(),
    };
    events.extend(loaded.tail.iter().cloned());
    let skip = events.len().saturating_sub(limit);
    Ok(events.split_off(skip))
}
