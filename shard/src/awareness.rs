//! Awareness (y-protocols): who is here, their cursor and name. Ephemeral, never persisted.
//!
//! The shard keeps, per document, the latest state of every awareness client id with the connection
//! that announced it, so that when the connection goes away (or stops renewing) the shard can tell
//! everyone else that those states are gone, exactly as the y-websocket reference server does.

use std::collections::HashMap;
use std::time::Instant;

use crate::handle::ConnId;

/// One client's awareness state.
#[derive(Debug, Clone)]
pub struct State {
    /// Lamport clock of the state.
    pub clock: u64,
    /// The JSON state, or `None` once removed.
    pub json: Option<String>,
    /// The connection that announced it.
    pub conn: ConnId,
    /// When it was last renewed.
    pub updated: Instant,
}

/// The awareness table of one document.
#[derive(Debug, Default)]
pub struct Table {
    states: HashMap<u64, State>,
}

impl Table {
    /// Applies one entry of an awareness update from `conn`; returns whether it changed anything.
    /// Follows y-protocols `applyAwarenessUpdate`: a newer clock wins; an equal clock wins only as a
    /// removal.
    pub fn apply(
        &mut self,
        now: Instant,
        conn: ConnId,
        client: u64,
        clock: u64,
        json: &str,
    ) -> bool {
        let removal = json == "null";
        match self.states.get_mut(&client) {
            Some(cur)
                if cur.clock > clock
                    || (cur.clock == clock && !(removal && cur.json.is_some())) =>
            {
                false
            }
            _ => {
                self.states.insert(
                    client,
                    State {
                        clock,
                        json: (!removal).then(|| json.to_owned()),
                        conn,
                        updated: now,
                    },
                );
                true
            }
        }
    }

    /// `(client, clock)` if `client`'s state was removed by `conn` itself (a null state it sent).
    pub fn removed_by(&self, client: u64, conn: ConnId) -> Option<(u64, u64)> {
        self.states
            .get(&client)
            .filter(|s| s.conn == conn && s.json.is_none())
            .map(|s| (client, s.clock))
    }

    /// Marks every live state of `conn` removed; returns `(client, new clock)` for each.
    pub fn remove_conn(&mut self, conn: ConnId) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (client, st) in self.states.iter_mut() {
            if st.conn == conn && st.json.is_some() {
                st.clock += 1;
                st.json = None;
                out.push((*client, st.clock));
            }
        }
        self.states.retain(|_, st| st.conn != conn);
        out
    }

    /// Removes states not renewed since `deadline`; returns `(client, new clock)` for each.
    pub fn expire(&mut self, deadline: Instant) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        self.states.retain(|client, st| {
            if st.json.is_some() && st.updated <= deadline {
                out.push((*client, st.clock + 1));
                false
            } else {
                // Removed entries are kept only until they would have expired, to order late updates.
                st.json.is_some() || st.updated >= deadline
            }
        });
        out
    }

    /// The earliest instant at which a live state was last renewed.
    pub fn oldest(&self) -> Option<Instant> {
        self.states
            .values()
            .filter(|s| s.json.is_some())
            .map(|s| s.updated)
            .min()
    }

    /// One client's latest entry as `(client, clock, json)`; a removed state is `"null"`.
    pub fn get(&self, client: u64) -> Option<(u64, u64, &str)> {
        self.states
            .get(&client)
            .map(|s| (client, s.clock, s.json.as_deref().unwrap_or("null")))
    }

    /// Every live state as `(client, clock, json)`.
    pub fn live(&self) -> Vec<(u64, u64, &str)> {
        self.states
            .iter()
            .filter_map(|(c, s)| s.json.as_deref().map(|j| (*c, s.clock, j)))
            .collect()
    }

    /// Whether applying an entry for `client` from `conn` stays within the limits: at most `per_conn`
    /// client ids per connection and `per_doc` live states in the document.
    pub fn admits(&self, conn: ConnId, client: u64, per_conn: usize, per_doc: usize) -> bool {
        if self.states.get(&client).is_some_and(|s| s.conn == conn) {
            return true;
        }
        let mine = self.states.values().filter(|s| s.conn == conn).count();
        let live = self.states.values().filter(|s| s.json.is_some()).count();
        mine < per_conn && live < per_doc
    }

    /// Whether any state is live.
    pub fn is_empty(&self) -> bool {
        self.states.values().all(|s| s.json.is_none())
    }
}
