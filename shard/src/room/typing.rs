//! Typing indicators of a room: ephemeral (never persisted), expiring unless renewed, broadcast as the
//! full typist list only when it changed.

use std::collections::BTreeMap;
use std::time::Instant;

use proto::UserId;

use super::presence::Member;
use crate::handle::ConnId;

/// What was last broadcast, and when the next indicator expires.
#[derive(Default)]
pub(super) struct Typing {
    /// The typist list last broadcast.
    pub sent: Vec<UserId>,
    /// The earliest expiry of a live indicator.
    pub next_expiry: Option<Instant>,
}

impl Typing {
    /// An indicator until `until` was set.
    pub fn started(&mut self, until: Instant) {
        self.next_expiry = Some(self.next_expiry.map_or(until, |t| t.min(until)));
    }

    /// Whether an indicator expired at `now`; recomputes the next expiry.
    pub fn expired(&mut self, now: Instant, members: &BTreeMap<ConnId, Member>) -> bool {
        if self.next_expiry.is_none_or(|t| now < t) {
            return false;
        }
        self.next_expiry = members
            .values()
            .filter_map(|m| m.typing_until)
            .filter(|t| *t > now)
            .min();
        true
    }

    /// The new typist list if it differs from the one last broadcast (and records it as sent).
    pub fn changed(
        &mut self,
        now: Instant,
        members: &BTreeMap<ConnId, Member>,
    ) -> Option<Vec<UserId>> {
        let typists = typists(now, members);
        if typists == self.sent {
            return None;
        }
        self.sent = typists.clone();
        Some(typists)
    }
}

/// The typists now: users with a connection whose indicator has not expired.
pub(super) fn typists(now: Instant, members: &BTreeMap<ConnId, Member>) -> Vec<UserId> {
    let mut v: Vec<UserId> = members
        .values()
        .filter(|m| m.typing_until.is_some_and(|t| t > now))
        .map(|m| m.user.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}
