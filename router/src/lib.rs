//! The router: which shard owns a document or room.
//!
//! [`Ring`] maps a key (a stream name such as `doc:notes`) to one of the live shards with **weighted
//! rendezvous hashing** (highest random weight) over xxh3. CRATES.md measured `hashring` with 160 virtual
//! nodes at −12 %/+5.5 % balance; HRW over a stable hash holds ±1–2 % with the same minimal movement,
//! and supports weights natively, so it is used instead (see ARCHITECTURE.md).
//!
//! The mapping is a pure, documented function, so an operator can compute it offline:
//! for every member `(id, weight)`, `h = xxh3_64(id ‖ 0x00 ‖ key)`, `u = (h + 0.5) / 2^64`,
//! `score = weight / -ln(u)`; the owner is the member with the highest score (ties: the smaller id).
//!
//! [`membership`] keeps the live member list in Redis (leases) and gives every process the same
//! versioned ring; `tandem dev` builds a fixed ring of its in-process shards.

#![forbid(unsafe_code)]

pub mod membership;
mod ownership;

use std::collections::BTreeMap;

use proto::ShardId;
use xxhash_rust::xxh3::xxh3_64;

pub use ownership::Ownership;

/// A ring member: a shard and its relative weight (> 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The shard.
    pub id: ShardId,
    /// Relative capacity; a shard of weight 2 owns twice the keys of a shard of weight 1.
    pub weight: f64,
}

/// A versioned set of members and the key → owner function over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ring {
    version: u64,
    members: Vec<Member>,
}

/// The score of `member` for `key` (see the crate doc).
pub fn score(id: &ShardId, weight: f64, key: &str) -> f64 {
    let mut buf = Vec::with_capacity(id.as_str().len() + 1 + key.len());
    buf.extend_from_slice(id.as_str().as_bytes());
    buf.push(0);
    buf.extend_from_slice(key.as_bytes());
    let h = xxh3_64(&buf);
    let u = (h as f64 + 0.5) / 18_446_744_073_709_551_616.0;
    weight / -u.ln()
}

impl Ring {
    /// A ring over `members` at `version`; members with a non-positive or non-finite weight are ignored.
    pub fn new(version: u64, members: impl IntoIterator<Item = Member>) -> Self {
        let mut members: Vec<Member> = members
            .into_iter()
            .filter(|m| m.weight.is_finite() && m.weight > 0.0)
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members.dedup_by(|a, b| a.id == b.id);
        Self { version, members }
    }

    /// A ring where every shard has weight 1.
    pub fn uniform(version: u64, ids: impl IntoIterator<Item = ShardId>) -> Self {
        Self::new(
            version,
            ids.into_iter().map(|id| Member { id, weight: 1.0 }),
        )
    }

    /// The ring's version (bumped by membership changes).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The owner of `key`, or `None` when the ring is empty.
    pub fn owner(&self, key: &str) -> Option<&ShardId> {
        let mut best: Option<(&Member, f64)> = None;
        for m in &self.members {
            let s = score(&m.id, m.weight, key);
            // Members are sorted by id, so a strict `>` keeps the smaller id on a tie.
            if best.is_none_or(|(_, bs)| s > bs) {
                best = Some((m, s));
            }
        }
        best.map(|(m, _)| &m.id)
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: &ShardId) -> bool {
        self.members.iter().any(|m| &m.id == id)
    }

    /// This ring with `member` added (or its weight replaced), at the next version.
    pub fn with(&self, member: Member) -> Ring {
        let mut members: Vec<Member> = self
            .members
            .iter()
            .filter(|m| m.id != member.id)
            .cloned()
            .collect();
        members.push(member);
        Ring::new(self.version + 1, members)
    }

    /// This ring without `id`, at the next version.
    pub fn without(&self, id: &ShardId) -> Ring {
        Ring::new(
            self.version + 1,
            self.members.iter().filter(|m| &m.id != id).cloned(),
        )
    }
}

/// Where keys go when the ring changes from `before` to `after`: for every `(from, to)` pair with
/// `from != to`, the keys that move. Keys whose owner stays put are left out.
pub fn plan<'k>(
    before: &Ring,
    after: &Ring,
    keys: impl IntoIterator<Item = &'k str>,
) -> BTreeMap<(Option<ShardId>, Option<ShardId>), Vec<&'k str>> {
    let mut moves: BTreeMap<(Option<ShardId>, Option<ShardId>), Vec<&'k str>> = BTreeMap::new();
    for k in keys {
        let (a, b) = (before.owner(k).cloned(), after.owner(k).cloned());
        if a != b {
            moves.entry((a, b)).or_default().push(k);
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn ids(n: usize) -> Vec<ShardId> {
        (0..n)
            .map(|i| ShardId::parse(&format!("shard-{i}")).expect("valid"))
            .collect()
    }

    #[test]
    fn ten_shards_hold_within_five_percent() {
        let ring = Ring::uniform(1, ids(10));
        let mut counts: HashMap<&ShardId, usize> = HashMap::new();
        for k in 0..100_000 {
            let key = format!("doc:{k}");
            *counts
                .entry(ring.owner(&key).expect("non-empty"))
                .or_default() += 1;
        }
        for (id, c) in counts {
            let dev = (c as f64 - 10_000.0) / 10_000.0;
            assert!(dev.abs() <= 0.05, "{id} holds {c}");
        }
    }

    #[test]
    fn weights_are_respected() {
        let mut members: Vec<Member> = ids(4)
            .into_iter()
            .map(|id| Member { id, weight: 1.0 })
            .collect();
        members[0].weight = 2.0;
        let ring = Ring::new(1, members);
        let heavy = ring.members()[0].id.clone();
        let n = (0..100_000)
            .filter(|k| ring.owner(&format!("doc:{k}")) == Some(&heavy))
            .count();
        // Expected share 2/5 = 40,000.
        assert!((n as f64 - 40_000.0).abs() / 40_000.0 <= 0.05, "{n}");
    }

    #[test]
    fn ten_weighted_shards_hold_within_five_percent() {
        // Weights 1..=10: shard i holds i/55 of the keys.
        let members: Vec<Member> = ids(10)
            .into_iter()
            .enumerate()
            .map(|(i, id)| Member {
                id,
                weight: (i + 1) as f64,
            })
            .collect();
        let ring = Ring::new(1, members.clone());
        let mut counts: HashMap<&ShardId, usize> = HashMap::new();
        for k in 0..100_000 {
            *counts
                .entry(ring.owner(&format!("room:{k}")).expect("non-empty"))
                .or_default() += 1;
        }
        for m in &members {
            let want = 100_000.0 * m.weight / 55.0;
            let got = counts.get(&m.id).copied().unwrap_or(0) as f64;
            assert!(
                (got - want).abs() / want <= 0.05,
                "{} holds {got}, want {want}",
                m.id
            );
        }
    }

    #[test]
    fn adding_an_eleventh_shard_moves_about_one_eleventh() {
        let before = Ring::uniform(1, ids(10));
        let new = ShardId::parse("shard-new").expect("valid");
        let after = before.with(Member {
            id: new.clone(),
            weight: 1.0,
        });
        let keys: Vec<String> = (0..100_000).map(|k| format!("doc:{k}")).collect();
        let moves = plan(&before, &after, keys.iter().map(String::as_str));
        let moved: usize = moves.values().map(Vec::len).sum();
        // Exactly the keys the new shard now owns move, all of them to it.
        assert!(moves.keys().all(|(_, to)| to.as_ref() == Some(&new)));
        let share = moved as f64 / 100_000.0;
        assert!((share - 1.0 / 11.0).abs() <= 0.05 / 11.0 * 2.0, "{share}");
    }

    #[test]
    fn removing_a_shard_spreads_its_keys_evenly() {
        let all = ids(10);
        let before = Ring::uniform(1, all.clone());
        let after = before.without(&all[3]);
        let keys: Vec<String> = (0..100_000).map(|k| format!("doc:{k}")).collect();
        let moves = plan(&before, &after, keys.iter().map(String::as_str));
        let owned_before = keys
            .iter()
            .filter(|k| before.owner(k) == Some(&all[3]))
            .count();
        let moved: usize = moves.values().map(Vec::len).sum();
        assert_eq!(moved, owned_before, "only the removed shard's keys move");
        for ((from, to), ks) in &moves {
            assert_eq!(from.as_ref(), Some(&all[3]));
            // Each of the 9 others takes about 1/9 of them.
            let want = owned_before as f64 / 9.0;
            assert!(
                (ks.len() as f64 - want).abs() / want <= 0.15,
                "{to:?} took {}",
                ks.len()
            );
        }
    }

    #[test]
    fn weight_change_moves_keys_only_to_or_from_that_shard() {
        let all = ids(10);
        let before = Ring::uniform(1, all.clone());
        let after = before.with(Member {
            id: all[0].clone(),
            weight: 2.0,
        });
        let keys: Vec<String> = (0..20_000).map(|k| format!("doc:{k}")).collect();
        for (from, to) in plan(&before, &after, keys.iter().map(String::as_str)).keys() {
            assert_eq!(to.as_ref(), Some(&all[0]), "from {from:?}");
        }
    }

    #[test]
    fn empty_ring_has_no_owner() {
        assert_eq!(Ring::default().owner("doc:x"), None);
    }

    proptest! {
        #[test]
        fn adding_a_shard_moves_keys_only_to_it(n in 1usize..12, keys in proptest::collection::vec("[a-z0-9]{1,12}", 1..300)) {
            let before = Ring::uniform(1, ids(n));
            let after = Ring::uniform(2, ids(n + 1));
            let new = ids(n + 1).pop().expect("non-empty");
            for k in &keys {
                let (a, b) = (before.owner(k), after.owner(k));
                prop_assert!(a == b || b == Some(&new), "key {} moved between unchanged shards", k);
            }
        }

        #[test]
        fn removing_a_shard_moves_only_its_keys(n in 2usize..12, gone in 0usize..12, keys in proptest::collection::vec("[a-z0-9]{1,12}", 1..300)) {
            let all = ids(n);
            let gone = &all[gone % n];
            let before = Ring::uniform(1, all.clone());
            let after = Ring::uniform(2, all.iter().filter(|i| *i != gone).cloned());
            for k in &keys {
                if before.owner(k) != Some(gone) {
                    prop_assert_eq!(before.owner(k), after.owner(k));
                }
            }
        }
    }
}
