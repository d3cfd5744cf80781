//! Per-document tracking of how deeply shared types are nested, so that no
//! update can push a document past a nesting limit.
//!
//! Why this exists: yrs 0.28.1 (the CRDT library behind Tandem's shards)
//! recurses once per nesting level of shared types in two places:
//! `TransactionMut::delete` walks into the children of a deleted `Y.Array` /
//! `Y.Map` / `Y.XmlElement` / ..., and the garbage collection that runs on
//! every commit (`Item::gc` → `ItemContent::gc` → `Item::gc` of each child)
//! does the same. A writer can build a chain of types nested 100,000 deep at
//! ~8 bytes per level, possibly spread over many small updates that each look
//! harmless, then delete the outermost one: the shard's stack overflows and
//! the whole process aborts, taking every document it hosts with it.
//!
//! [`validate_update_v1`](super::validate::validate_update_v1) cannot stop
//! this: it bounds nesting *inside one value* of one update, while the depth
//! of a shared type is a property of the document. Each item only names its
//! parent type indirectly (a root name, the ID of the item holding the parent
//! type, or a neighbour whose parent it shares), so depths have to be
//! remembered across updates. [`NestingTracker`] does that, per document:
//!
//! * per client, sorted clock ranges mapped to the depth of the type that is
//!   the *parent* of the items in the range (adjacent ranges with equal depth
//!   are merged, so a client typing into one text costs one entry);
//! * per shared-type item ID, the type's own depth.
//!
//! Root types (`doc.getMap('x')`) have depth 0, a type inserted into a root
//! type has depth 1, and so on. [`NestingTracker::check`] refuses an update
//! that would create a type deeper than the limit ([`NestingError::TooDeep`])
//! or that refers to items the tracker has never seen
//! ([`NestingError::UnknownParent`]: the depth cannot be known, and honest
//! clients only send updates whose dependencies the server already has).
//!
//! How the parent of an item is found follows yjs `Item.getMissing` and yrs
//! `Update::missing_dependency` / `integrate_item`:
//!
//! * parent info 1 + name: a root type, parent depth 0;
//! * parent info 0 + ID: the type held by the item with that ID; if that item
//!   is not a type (or was garbage collected), yjs turns the new item into a
//!   GC struct and yrs does the same or refuses the update, so it is tracked
//!   with parent depth 0;
//! * no parent info (origin and/or right origin set): the parent of the
//!   origin item, else of the right-origin item. yjs turns the item into GC
//!   when either neighbour is a GC struct, but yrs, which cannot look up a GC
//!   block as an item, silently falls back to the *right* neighbour's parent.
//!   To never under-estimate what yrs builds, the tracker takes the larger of
//!   the two neighbours' parent depths, counting GC ranges as 0. Honest
//!   neighbours always share a parent, so this changes nothing for them.
//!
//! Every estimate errs on the deep side. Clocks re-sent with different
//! content (which [`UpdateGuard`](super::guard::UpdateGuard) drops before
//! yrs sees them, and which yrs 0.28.1 does not deduplicate but integrates
//! again) keep the larger of the recorded and the new depth, so no version
//! yrs could end up using is deeper than recorded. GC structs are recorded
//! with parent depth 0, Skip structs record nothing, and deletions are
//! ignored (a deleted type keeps its depth).
//!
//! Structs come from [`UpdateReader`] with [`Rules::Lax`]: stored updates
//! must still be understood after a validation limit was lowered.
//!
//! Everything is iterative: references between the structs of one update are
//! resolved with an explicit work list, so neither a 100,000-deep chain nor a
//! chain whose links run backwards across client blocks costs call stack,
//! and work is linear in the update size (times a log factor for lookups).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::update::{Id, Parent, Rules, Struct, StructKind, UpdateReader, ValidationError};

/// "No entry" in the work-list links.
const NONE: usize = usize::MAX;

/// Why [`NestingTracker::check`] refused an update.
///
/// `Display` is short, fixed text that is safe to send to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NestingError {
    /// The update creates a shared type nested deeper than the limit.
    TooDeep,
    /// An item's parent, origin or right origin is neither known to the
    /// tracker nor part of the update (or the references form a cycle). The
    /// client is missing state the server has, or is hostile; it should
    /// resync.
    UnknownParent,
    /// The update could not be parsed (it should have been rejected by
    /// [`validate_update_v1`](super::validate::validate_update_v1) first).
    Malformed,
}

impl fmt::Display for NestingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NestingError::TooDeep => "shared types nested too deep",
            NestingError::UnknownParent => "update depends on unknown items",
            NestingError::Malformed => "malformed update",
        })
    }
}

impl std::error::Error for NestingError {}

impl From<ValidationError> for NestingError {
    fn from(_: ValidationError) -> Self {
        NestingError::Malformed
    }
}

/// What one checked update adds to a [`NestingTracker`]; produced by
/// [`NestingTracker::check`], applied by [`NestingTracker::commit`].
///
/// Holds the update's clock ranges (merged) with their parent depths, and
/// its shared types with their own depths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NestingPlan {
    /// New clock ranges with the depth of their items' parent type.
    ranges: Vec<PlanRange>,
    /// New shared-type items and their own depth.
    types: Vec<(Id, u32)>,
    /// Deepest shared type the update creates (0 if none).
    max_depth: u32,
}

impl NestingPlan {
    /// Depth of the deepest shared type the update creates (0 if it creates
    /// none). Root types are depth 0, so this is at least 1 for any new type.
    pub fn max_depth(&self) -> u32 {
        self.max_depth
    }

    /// True when the update holds no structs (e.g. a delete-only update):
    /// committing the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// One range of a plan: clocks `start..end` of `client`, whose items have a
/// parent type of depth `parent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PlanRange {
    client: u64,
    start: u64,
    end: u64,
    parent: u32,
}

/// What the tracker knows about one client's clocks: `start -> (end,
/// parent depth)`, disjoint, adjacent entries with equal depth merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ClientState {
    depths: BTreeMap<u64, (u64, u32)>,
}

impl ClientState {
    /// Parent depth recorded for `clock`, if the clock is known.
    fn parent_at(&self, clock: u64) -> Option<u32> {
        self.depths
            .range(..=clock)
            .next_back()
            .filter(|(_, (end, _))| *end > clock)
            .map(|(_, (_, depth))| *depth)
    }

    /// Records that the items of clocks `start..end` have a parent of depth
    /// `parent`: new clocks get `parent`, known clocks keep the larger of
    /// their depth and `parent`.
    ///
    /// For new clocks (the normal case) this costs a few map operations.
    /// Known clocks cost one step per entry overlapped; entries raised to
    /// `parent` merge into one, so only entries already deeper than `parent`
    /// can be walked again by a later call.
    fn raise(&mut self, start: u64, end: u64, parent: u32) {
        if start >= end {
            return;
        }
        let map = &mut self.depths;
        // Cut out the overlapped entries that are shallower, keeping their
        // parts outside `start..end`.
        let mut lower = Vec::new();
        if let Some((&s, &(e, d))) = map.range(..start).next_back() {
            if e > start && d < parent {
                lower.push((s, e, d));
            }
        }
        lower.extend(
            map.range(start..end)
                .filter(|(_, (_, d))| *d < parent)
                .map(|(&s, &(e, d))| (s, e, d)),
        );
        for &(s, e, d) in &lower {
            map.remove(&s);
            if s < start {
                insert_merged(map, s, start, d);
            }
            if e > end {
                insert_merged(map, end, e, d);
            }
        }
        // Every clock of `start..end` not covered by a (now deeper or equal)
        // entry gets `parent`.
        let mut free = Vec::new();
        let mut cur = start;
        if let Some((_, &(e, _))) = map.range(..start).next_back() {
            cur = cur.max(e);
        }
        for (&s, &(e, _)) in map.range(start..end) {
            if s > cur {
                free.push((cur, s));
            }
            cur = cur.max(e);
        }
        if cur < end {
            free.push((cur, end));
        }
        for (s, e) in free {
            insert_merged(map, s, e, parent);
        }
    }
}

/// Inserts `start..end -> parent` into a disjoint range map, merging with a
/// neighbour that touches it and has the same depth. The span must be free.
fn insert_merged(map: &mut BTreeMap<u64, (u64, u32)>, start: u64, end: u64, parent: u32) {
    let mut s = start;
    let mut e = end;
    if let Some((&prev_start, &(prev_end, prev_parent))) = map.range(..start).next_back() {
        if prev_end == start && prev_parent == parent {
            s = prev_start;
        }
    }
    if let Some(&(next_end, next_parent)) = map.get(&end) {
        if next_parent == parent {
            map.remove(&end);
            e = next_end;
        }
    }
    // Inserting at `s` overwrites a merged predecessor in place.
    map.insert(s, (e, parent));
}

/// Tracks the nesting depth of every shared type of one document, to refuse
/// updates that nest types deeper than a limit (see the module docs).
///
/// Memory: one entry per client per run of clocks with the same parent
/// depth, plus one per shared-type item; both grow with the document's
/// history like the CRDT's own block store, but far more slowly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestingTracker {
    max_depth: u32,
    clients: HashMap<u64, ClientState>,
    /// Shared-type item ID -> the type's own depth.
    types: HashMap<Id, u32>,
    max_seen: u32,
}

impl NestingTracker {
    /// An empty tracker (an empty document) refusing shared types nested
    /// deeper than `max_depth` (a type in a root type has depth 1).
    pub fn new(max_depth: u32) -> Self {
        NestingTracker {
            max_depth,
            clients: HashMap::new(),
            types: HashMap::new(),
            max_seen: 0,
        }
    }

    /// Checks an update (already accepted by
    /// [`validate_update_v1`](super::validate::validate_update_v1)) against
    /// what the tracker knows, without changing the tracker.
    ///
    /// Structs are resolved in the update's order; a struct may depend on
    /// any other struct of the same update (yjs integrates client blocks
    /// with a pending stack, so forward references across blocks are legal).
    /// Structs re-sent for clocks the tracker already knows are checked like
    /// new ones. Returns the plan to [`commit`](Self::commit) once the update
    /// has been applied.
    pub fn check(&self, update: &[u8]) -> Result<NestingPlan, NestingError> {
        self.check_parsed(&Parsed::read(update)?)
    }

    /// [`check`](Self::check) of structs already read (by the guard's
    /// validating walk, so that an update is read once).
    pub(crate) fn check_parsed(&self, parsed: &Parsed) -> Result<NestingPlan, NestingError> {
        Resolver::new(self, parsed, true).run()
    }

    /// Records a plan returned by [`check`](Self::check). Call it only after
    /// the update was applied, and before checking the next one.
    pub fn commit(&mut self, plan: NestingPlan) {
        for r in plan.ranges {
            self.clients
                .entry(r.client)
                .or_default()
                .raise(r.start, r.end, r.parent);
        }
        for (id, depth) in plan.types {
            let d = self.types.entry(id).or_insert(depth);
            *d = (*d).max(depth);
            self.max_seen = self.max_seen.max(depth);
        }
    }

    /// Rebuilds state from stored updates at load time: call it for the
    /// snapshot first, then for every stored update in order.
    ///
    /// Like `check` + `commit`, but never refuses: types deeper than the
    /// limit are recorded with their real depth (so later children of such a
    /// type are refused), and items whose parent cannot be resolved are
    /// recorded with parent depth 0 (yjs and yrs turn such items into GC
    /// structs). An unparsable update records nothing.
    pub fn absorb(&mut self, update: &[u8]) {
        let Ok(parsed) = Parsed::read(update) else {
            return;
        };
        if let Ok(plan) = Resolver::new(self, &parsed, false).run() {
            self.commit(plan);
        }
    }

    /// Depth of the deepest shared type recorded so far (0 when the
    /// document has no nested types). May exceed the limit after
    /// [`absorb`](Self::absorb) of old data.
    pub fn max_depth_seen(&self) -> u32 {
        self.max_seen
    }

    /// The limit: the deepest shared type [`check`](Self::check) lets through.
    pub fn max_depth(&self) -> u32 {
        self.max_depth
    }

    /// Changes the limit for later checks; what was recorded stays.
    pub fn set_max_depth(&mut self, max_depth: u32) {
        self.max_depth = max_depth;
    }

    /// Depth of the parent type of the item (or GC range) at `id`, if the
    /// tracker knows that clock.
    pub fn parent_depth(&self, id: Id) -> Option<u32> {
        self.clients.get(&id.client)?.parent_at(id.clock)
    }

    /// Own depth of the shared type created by the item at `id`, if the
    /// tracker knows such a type.
    pub fn type_depth(&self, id: Id) -> Option<u32> {
        self.types.get(&id).copied()
    }

    /// The Yjs clients the tracker knows clocks of, in no particular order.
    pub fn clients(&self) -> impl Iterator<Item = u64> + '_ {
        self.clients.keys().copied()
    }

    /// What the tracker knows of one client's clocks: disjoint ranges
    /// `(start, end, parent depth)` in clock order, adjacent ranges of equal
    /// depth merged (so their number measures the tracker's memory).
    pub fn ranges(&self, client: u64) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.clients
            .get(&client)
            .into_iter()
            .flat_map(|c| c.depths.iter().map(|(s, (e, d))| (*s, *e, *d)))
    }

    /// Parent depth recorded for an item ID, if the tracker knows that clock.
    fn parent_at(&self, id: Id) -> Option<u32> {
        self.parent_depth(id)
    }

    /// Own depth of the type held by item `id`: its recorded depth, 0 if
    /// the clock is known but holds no type, `None` if it is unknown.
    fn type_depth_at(&self, id: Id) -> Option<u32> {
        match self.types.get(&id) {
            Some(depth) => Some(*depth),
            None => self.parent_at(id).map(|_| 0),
        }
    }
}

// ---- update parsing ---------------------------------------------------------

/// Where an item's parent comes from.
#[derive(Debug, Clone, Copy)]
enum ParentRef {
    /// Parent info 1: a root type, by name.
    Root,
    /// Parent info 0: the type held by the item with this ID.
    Type(Id),
    /// No parent info: the parent of the origin / right-origin item.
    Neighbours {
        origin: Option<Id>,
        right: Option<Id>,
    },
}

/// One struct of an update (Skip structs are dropped).
#[derive(Debug, Clone, Copy)]
struct Rec {
    client: u64,
    clock: u64,
    end: u64,
    /// `None` for a GC struct.
    item: Option<ItemRec>,
}

#[derive(Debug, Clone, Copy)]
struct ItemRec {
    parent: ParentRef,
    is_type: bool,
}

impl Rec {
    fn is_type(&self) -> bool {
        self.item.is_some_and(|i| i.is_type)
    }
}

/// The structs of one update, as the resolver needs them; filled struct by
/// struct from an [`UpdateReader`], in update order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parsed {
    recs: Vec<Rec>,
}

impl Parsed {
    /// Reads the struct section of an update v1 with [`Rules::Lax`]: stored
    /// updates are absorbed even if they would not pass today's limits, and
    /// the delete set is not needed.
    fn read(update: &[u8]) -> Result<Parsed, NestingError> {
        let mut parsed = Parsed::default();
        let mut r = UpdateReader::new(update, Rules::Lax)?;
        while r.next_block()?.is_some() {
            while let Some(s) = r.next_struct()? {
                parsed.push(&s);
            }
        }
        Ok(parsed)
    }

    /// Adds the next struct of the update.
    pub(crate) fn push(&mut self, s: &Struct<'_>) {
        let item = match &s.kind {
            StructKind::Skip => return,
            StructKind::Gc => None,
            StructKind::Item(item) => Some(ItemRec {
                parent: match item.parent {
                    Parent::Root(_) => ParentRef::Root,
                    Parent::Item(id) => ParentRef::Type(id),
                    Parent::FromOrigins => ParentRef::Neighbours {
                        origin: item.origin,
                        right: item.right_origin,
                    },
                },
                is_type: s.is_type(),
            }),
        };
        self.recs.push(Rec {
            client: s.id.client,
            clock: s.id.clock,
            end: s.end(),
            item,
        });
    }

    /// Per client, its structs `recs[first..end]` in increasing clock order.
    ///
    /// A client's structs are contiguous: the reader refuses a client that
    /// appears twice, and yjs writes each client once.
    fn blocks(&self) -> HashMap<u64, (usize, usize)> {
        let mut blocks = HashMap::new();
        let mut first = 0;
        for (i, r) in self.recs.iter().enumerate() {
            if self
                .recs
                .get(i + 1)
                .is_none_or(|next| next.client != r.client)
            {
                blocks.insert(r.client, (first, i + 1));
                first = i + 1;
            }
        }
        blocks
    }
}

// ---- resolution ---------------------------------------------------------------

/// Result of looking up a reference.
enum Look {
    /// The depth is known.
    Known(u32),
    /// It depends on struct `usize` of the update, not resolved yet.
    Wait(usize),
    /// Neither the tracker nor the update holds the ID.
    Unknown,
}

/// Resolves the parent depth of every struct of one update against a
/// tracker, with a work list instead of recursion: a struct waiting for
/// another struct of the update is linked into that struct's waiter list and
/// retried when it resolves. Each struct waits at most once per reference,
/// so the total work is linear.
struct Resolver<'a> {
    tracker: &'a NestingTracker,
    p: &'a Parsed,
    /// client -> its structs `p.recs[first..end]`, in increasing clock order.
    blocks: HashMap<u64, (usize, usize)>,
    /// `check` semantics (refuse) rather than `absorb` (record anyway).
    strict: bool,
    /// Parent depth of each struct, once known.
    resolved: Vec<Option<u32>>,
    /// Head of the list of structs waiting for struct `i`.
    wait_head: Vec<usize>,
    /// Next struct in the same waiter list.
    wait_next: Vec<usize>,
    /// Resolved structs whose waiters still need a retry.
    ready: Vec<usize>,
}

impl<'a> Resolver<'a> {
    fn new(tracker: &'a NestingTracker, p: &'a Parsed, strict: bool) -> Self {
        let n = p.recs.len();
        Resolver {
            tracker,
            p,
            blocks: p.blocks(),
            strict,
            resolved: vec![None; n],
            wait_head: vec![NONE; n],
            wait_next: vec![NONE; n],
            ready: Vec::new(),
        }
    }

    fn run(mut self) -> Result<NestingPlan, NestingError> {
        let n = self.p.recs.len();
        for i in 0..n {
            self.attempt(i)?;
            self.drain()?;
        }
        if self.resolved.iter().any(Option::is_none) {
            if self.strict {
                // Reference cycle between structs of the update.
                return Err(NestingError::UnknownParent);
            }
            for i in 0..n {
                if self.resolved[i].is_none() {
                    self.settle(i, 0)?;
                    self.drain()?;
                }
            }
        }
        Ok(self.plan())
    }

    /// Tries to resolve struct `i`; registers it as a waiter if it depends
    /// on an unresolved struct.
    fn attempt(&mut self, i: usize) -> Result<(), NestingError> {
        if self.resolved[i].is_some() {
            return Ok(());
        }
        let Some(item) = self.p.recs[i].item else {
            return self.settle(i, 0);
        };
        match self.eval(item.parent) {
            Look::Known(depth) => self.settle(i, depth),
            Look::Wait(j) => {
                self.wait_next[i] = self.wait_head[j];
                self.wait_head[j] = i;
                Ok(())
            }
            Look::Unknown if self.strict => Err(NestingError::UnknownParent),
            Look::Unknown => self.settle(i, 0),
        }
    }

    /// Records the parent depth of struct `i` and queues its waiters.
    fn settle(&mut self, i: usize, parent: u32) -> Result<(), NestingError> {
        self.resolved[i] = Some(parent);
        if self.strict && self.p.recs[i].is_type() && parent >= self.tracker.max_depth {
            return Err(NestingError::TooDeep);
        }
        self.ready.push(i);
        Ok(())
    }

    /// Retries the waiters of every newly resolved struct.
    fn drain(&mut self) -> Result<(), NestingError> {
        while let Some(k) = self.ready.pop() {
            let mut w = std::mem::replace(&mut self.wait_head[k], NONE);
            while w != NONE {
                let next = std::mem::replace(&mut self.wait_next[w], NONE);
                self.attempt(w)?;
                w = next;
            }
        }
        Ok(())
    }

    /// Index of the struct of this update holding `id`.
    fn find(&self, id: Id) -> Option<usize> {
        let &(first, end) = self.blocks.get(&id.client)?;
        let block = self.p.recs.get(first..end)?;
        let at = block.partition_point(|r| r.end <= id.clock);
        block
            .get(at)
            .filter(|r| r.clock <= id.clock)
            .map(|_| first + at)
    }

    /// Parent depth of an item from its parent reference.
    fn eval(&self, parent: ParentRef) -> Look {
        match parent {
            ParentRef::Root => Look::Known(0),
            ParentRef::Type(id) => self.type_depth(id),
            ParentRef::Neighbours { origin, right } => {
                // yjs uses the origin's parent (GC if either neighbour is GC);
                // yrs falls back to the right neighbour when the origin is GC.
                // The larger of the two covers both.
                let mut best = 0;
                for id in [origin, right].into_iter().flatten() {
                    match self.parent_of(id) {
                        Look::Known(d) => best = best.max(d),
                        other => return other,
                    }
                }
                Look::Known(best)
            }
        }
    }

    /// Parent depth of the item (or GC range) holding `id`. If both the
    /// tracker and the update hold the clock (a re-send), the larger depth.
    fn parent_of(&self, id: Id) -> Look {
        let known = self.tracker.parent_at(id);
        match self.find(id) {
            None => known.map_or(Look::Unknown, Look::Known),
            Some(j) => match self.resolved[j] {
                Some(depth) => Look::Known(depth.max(known.unwrap_or(0))),
                None => Look::Wait(j),
            },
        }
    }

    /// Own depth of the type held by the item `id`; 0 if that item is not a
    /// type (the child then becomes GC in yjs and yrs). If both the tracker
    /// and the update hold the clock (a re-send), the larger depth.
    fn type_depth(&self, id: Id) -> Look {
        let known = self.tracker.type_depth_at(id);
        match self.find(id) {
            None => known.map_or(Look::Unknown, Look::Known),
            Some(j) => {
                let r = &self.p.recs[j];
                if !r.is_type() || r.clock != id.clock {
                    return Look::Known(known.unwrap_or(0));
                }
                match self.resolved[j] {
                    Some(parent) => Look::Known(parent.saturating_add(1).max(known.unwrap_or(0))),
                    None => Look::Wait(j),
                }
            }
        }
    }

    /// The new ranges and types, merged, in update order.
    fn plan(&self) -> NestingPlan {
        let mut plan = NestingPlan::default();
        for (i, r) in self.p.recs.iter().enumerate() {
            let parent = self.resolved[i].unwrap_or(0);
            match plan.ranges.last_mut() {
                Some(last)
                    if last.client == r.client && last.end == r.clock && last.parent == parent =>
                {
                    last.end = r.end;
                }
                _ => plan.ranges.push(PlanRange {
                    client: r.client,
                    start: r.clock,
                    end: r.end,
                    parent,
                }),
            }
            if r.is_type() {
                let depth = parent.saturating_add(1);
                plan.types.push((Id::new(r.client, r.clock), depth));
                plan.max_depth = plan.max_depth.max(depth);
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_splits_and_merges() {
        let mut c = ClientState::default();
        c.raise(0, 10, 0);
        c.raise(3, 5, 4);
        let entries = |c: &ClientState| -> Vec<(u64, u64, u32)> {
            c.depths.iter().map(|(s, (e, d))| (*s, *e, *d)).collect()
        };
        assert_eq!(entries(&c), vec![(0, 3, 0), (3, 5, 4), (5, 10, 0)]);
        c.raise(0, 10, 0);
        c.raise(4, 4, 9);
        assert_eq!(entries(&c), vec![(0, 3, 0), (3, 5, 4), (5, 10, 0)]);
        c.raise(12, 14, 0);
        c.raise(2, 13, 2);
        assert_eq!(
            entries(&c),
            vec![(0, 2, 0), (2, 3, 2), (3, 5, 4), (5, 13, 2), (13, 14, 0)]
        );
        c.raise(10, 12, 2);
        c.raise(0, 20, 4);
        assert_eq!(entries(&c), vec![(0, 20, 4)]);
        c.raise(20, 21, 4);
        c.raise(25, 26, 4);
        c.raise(21, 25, 4);
        assert_eq!(entries(&c), vec![(0, 26, 4)]);
        assert_eq!(c.parent_at(25), Some(4));
        assert_eq!(c.parent_at(26), None);
    }
}
