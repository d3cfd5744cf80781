//! Presence in a room: its members (connections), merged into one entry per user however many tabs
//! or devices they use, who the log says is present (for `user.joined` / `user.left`), and the
//! ghosts a failover leaves behind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use proto::v1::PresenceEntry;
use proto::{Access, UserId};

use crate::handle::ConnId;

/// One member connection.
pub(super) struct Member {
    pub user: UserId,
    pub access: Access,
    /// Presence state and when it was last set (a counter, for "most recent tab wins"). Kept parsed:
    /// every presence broadcast and join reply clones it instead of parsing it again.
    pub state: Option<Arc<serde_json::Value>>,
    pub state_at: u64,
    pub typing_until: Option<Instant>,
}

/// The members of a room and what the log says about who is present.
#[derive(Default)]
pub(super) struct Roster {
    pub members: BTreeMap<ConnId, Member>,
    users: BTreeMap<UserId, BTreeSet<ConnId>>,
    /// Users whose last joined/left event (accepted, maybe in flight) is `user.joined`.
    present: BTreeSet<UserId>,
    /// The same over committed events only (what a snapshot at `applied` records).
    pub committed_present: BTreeSet<UserId>,
    /// After a load: users the log says are present, and when they count as gone if they do not
    /// come back (the previous owner died without writing their `user.left`).
    ghosts: BTreeMap<UserId, Instant>,
    /// Users whose entry changed since the last broadcast.
    dirty: BTreeSet<UserId>,
    clock: u64,
}

impl Roster {
    /// After a load: `present` (from the log) are ghosts until `grace`.
    pub fn loaded(&mut self, present: BTreeSet<UserId>, grace: Instant) {
        self.ghosts = present.iter().map(|u| (u.clone(), grace)).collect();
        self.committed_present = present.clone();
        self.present = present;
    }

    /// Whether `conn` is a member.
    pub fn is_member(&self, conn: ConnId) -> bool {
        self.members.contains_key(&conn)
    }

    /// Whether no connection is a member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether ghosts are still pending.
    pub fn has_ghosts(&self) -> bool {
        !self.ghosts.is_empty()
    }

    /// The earliest ghost deadline.
    pub fn next_ghost(&self) -> Option<Instant> {
        self.ghosts.values().min().copied()
    }

    /// `conn` (user `user`) joins or re-joins with `access` and maybe a state. Returns whether a
    /// `user.joined` must be appended (the user's first connection, not a returning ghost, not
    /// already present).
    pub fn join(
        &mut self,
        conn: ConnId,
        user: &UserId,
        access: Access,
        state: Option<Arc<serde_json::Value>>,
    ) -> bool {
        self.clock += 1;
        let clock = self.clock;
        let m = self.members.entry(conn).or_insert_with(|| Member {
            user: user.clone(),
            access,
            state: None,
            state_at: 0,
            typing_until: None,
        });
        m.access = access;
        if state.is_some() {
            m.state = state;
            m.state_at = clock;
        }
        let conns = self.users.entry(user.clone()).or_default();
        let first = conns.is_empty();
        conns.insert(conn);
        self.dirty.insert(user.clone());
        first && self.ghosts.remove(user).is_none() && self.present.insert(user.clone())
    }

    /// `conn` leaves. Returns the user and whether a `user.left` must be appended (their last
    /// connection, and the log says they are present); `None` if `conn` was no member.
    pub fn leave(&mut self, conn: ConnId) -> Option<(UserId, bool)> {
        let m = self.members.remove(&conn)?;
        let user = m.user;
        let mut last = false;
        if let Some(set) = self.users.get_mut(&user) {
            set.remove(&conn);
            if set.is_empty() {
                self.users.remove(&user);
                last = true;
            }
        }
        self.dirty.insert(user.clone());
        let announce = last && self.present.remove(&user);
        Some((user, announce))
    }

    /// Replaces `conn`'s presence state.
    pub fn set_state(&mut self, conn: ConnId, state: Arc<serde_json::Value>) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(m) = self.members.get_mut(&conn) {
            m.state = Some(state);
            m.state_at = clock;
            self.dirty.insert(m.user.clone());
        }
    }

    /// A committed `user.joined` / `user.left`.
    pub fn committed(&mut self, user: &UserId, joined: bool) {
        if joined {
            self.committed_present.insert(user.clone());
        } else {
            self.committed_present.remove(user);
        }
    }

    /// One user's merged entry, if they have a connection here.
    fn entry(&self, user: &UserId) -> Option<PresenceEntry> {
        let conns = self.users.get(user)?;
        let state = conns
            .iter()
            .filter_map(|c| self.members.get(c))
            .filter(|m| m.state.is_some())
            .max_by_key(|m| m.state_at)
            .and_then(|m| m.state.as_deref().cloned())
            .unwrap_or(serde_json::Value::Null);
        Some(PresenceEntry {
            user: user.clone(),
            state,
            connections: conns.len(),
        })
    }

    /// Every user's entry.
    pub fn entries(&self) -> Vec<PresenceEntry> {
        self.users.keys().filter_map(|u| self.entry(u)).collect()
    }

    /// The changes since the last call: entries that changed, users that left.
    pub fn take_changes(&mut self) -> (Vec<PresenceEntry>, Vec<UserId>) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut set = Vec::new();
        let mut gone = Vec::new();
        for u in dirty {
            match self.entry(&u) {
                Some(e) => set.push(e),
                None => gone.push(u),
            }
        }
        (set, gone)
    }

    /// Ghosts whose grace ended at `now` without them coming back: they are no longer present, and
    /// a `user.left` must be appended for each.
    pub fn expire_ghosts(&mut self, now: Instant) -> Vec<UserId> {
        let due: Vec<UserId> = self
            .ghosts
            .iter()
            .filter(|(_, t)| now >= **t)
            .map(|(u, _)| u.clone())
            .collect();
        let mut gone = Vec::new();
        for u in due {
            self.ghosts.remove(&u);
            if !self.users.contains_key(&u) && self.present.remove(&u) {
                gone.push(u);
            }
        }
        gone
    }
}
