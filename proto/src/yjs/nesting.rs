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
//! content (which the shard's re-send guard drops before yrs sees them, and
//! which yrs 0.28.1 does not deduplicate but integrates again) keep the
//! larger of the recorded and the new depth, so no version yrs could end up
//! using is deeper than recorded. GC structs are recorded with parent depth 0, Skip
//! structs record nothing, and deletions are ignored (a deleted type keeps
//! its depth).
//!
//! Everything is iterative: references between the structs of one update are
//! resolved with an explicit work list, so neither a 100,000-deep chain nor a
//! chain whose links run backwards across client blocks costs call stack,
//! and work is linear in the update size (times a log factor for lookups).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::lib0::{Decoder, WireError};

/// Content refs (`info & 0x1F`), from yjs `contentRefs`.
const REF_GC: u8 = 0;
const REF_DELETED: u8 = 1;
const REF_JSON: u8 = 2;
const REF_BINARY: u8 = 3;
const REF_STRING: u8 = 4;
const REF_EMBED: u8 = 5;
const REF_FORMAT: u8 = 6;
const REF_TYPE: u8 = 7;
const REF_ANY: u8 = 8;
const REF_DOC: u8 = 9;
const REF_SKIP: u8 = 10;

/// Item info bits (yjs `Item.write`).
const INFO_HAS_ORIGIN: u8 = 0x80;
const INFO_HAS_RIGHT_ORIGIN: u8 = 0x40;
const INFO_HAS_PARENT_SUB: u8 = 0x20;
const INFO_CONTENT_MASK: u8 = 0x1F;

/// Shared type refs carrying a name string (XmlElement, XmlHook).
const TYPE_XML_ELEMENT: u8 = 3;
const TYPE_XML_HOOK: u8 = 5;

/// lib0 `Any` tags (`lib0/encoding.js` `writeAny`).
const ANY_INTEGER: u8 = 125;
const ANY_FLOAT32: u8 = 124;
const ANY_FLOAT64: u8 = 123;
const ANY_BIGINT: u8 = 122;
const ANY_STRING: u8 = 119;
const ANY_OBJECT: u8 = 118;
const ANY_ARRAY: u8 = 117;
const ANY_BYTES: u8 = 116;

/// "No entry" in the work-list links.
const NONE: usize = usize::MAX;

/// An item ID: (client, clock).
type Id = (u64, u64);

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

impl From<WireError> for NestingError {
    fn from(_: WireError) -> Self {
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
        let parsed = Parsed::new(update)?;
        Resolver::new(self, &parsed, true).run()
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
        let Ok(parsed) = Parsed::new(update) else {
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

    /// Parent depth recorded for an item ID, if the tracker knows that clock.
    fn parent_at(&self, id: Id) -> Option<u32> {
        self.clients.get(&id.0)?.parent_at(id.1)
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

/// The structs of one update, with an index to find the struct holding an ID.
struct Parsed {
    recs: Vec<Rec>,
    /// client -> its structs `recs[first..end]`, in increasing clock order.
    blocks: HashMap<u64, (usize, usize)>,
}

impl Parsed {
    /// Parses the struct section of an update v1 (the delete set is not
    /// needed and not read).
    fn new(update: &[u8]) -> Result<Parsed, NestingError> {
        let mut d = Decoder::new(update);
        let mut recs = Vec::new();
        let mut blocks = HashMap::new();
        let mut any_stack = Vec::new();
        let clients = d.read_len()?;
        for _ in 0..clients {
            let n_structs = d.read_len()?;
            let client = d.read_var_u64()?;
            let mut clock = d.read_var_u64()?;
            let first = recs.len();
            for _ in 0..n_structs {
                let info = d.read_u8()?;
                let (len, item) = match info & INFO_CONTENT_MASK {
                    REF_GC => (d.read_var_u64()?, None),
                    REF_SKIP => {
                        clock = advance(clock, d.read_var_u64()?)?;
                        continue;
                    }
                    _ => {
                        let (len, item) = read_item(&mut d, info, &mut any_stack)?;
                        (len, Some(item))
                    }
                };
                let end = advance(clock, len)?;
                recs.push(Rec {
                    client,
                    clock,
                    end,
                    item,
                });
                clock = end;
            }
            // The index below assumes one block per client (yjs writes each
            // client once; the validator rejects repeats).
            if blocks.insert(client, (first, recs.len())).is_some() {
                return Err(NestingError::Malformed);
            }
        }
        Ok(Parsed { recs, blocks })
    }

    /// Index of the struct of this update holding `id`.
    fn find(&self, id: Id) -> Option<usize> {
        let &(first, end) = self.blocks.get(&id.0)?;
        let block = self.recs.get(first..end)?;
        let at = block.partition_point(|r| r.end <= id.1);
        block
            .get(at)
            .filter(|r| r.clock <= id.1)
            .map(|_| first + at)
    }
}

/// `clock + len`, refusing empty structs and overflow.
fn advance(clock: u64, len: u64) -> Result<u64, NestingError> {
    if len == 0 {
        return Err(NestingError::Malformed);
    }
    clock.checked_add(len).ok_or(NestingError::Malformed)
}

fn read_id(d: &mut Decoder<'_>) -> Result<Id, NestingError> {
    Ok((d.read_var_u64()?, d.read_var_u64()?))
}

/// Reads an Item (after its info byte) in the order of yjs
/// `readClientsStructRefs`; returns its length in clocks.
fn read_item(
    d: &mut Decoder<'_>,
    info: u8,
    any_stack: &mut Vec<(usize, bool)>,
) -> Result<(u64, ItemRec), NestingError> {
    let origin = if info & INFO_HAS_ORIGIN != 0 {
        Some(read_id(d)?)
    } else {
        None
    };
    let right = if info & INFO_HAS_RIGHT_ORIGIN != 0 {
        Some(read_id(d)?)
    } else {
        None
    };
    let parent = if origin.is_none() && right.is_none() {
        let parent = match d.read_var_u64()? {
            1 => {
                d.read_var_str()?;
                ParentRef::Root
            }
            0 => ParentRef::Type(read_id(d)?),
            _ => return Err(NestingError::Malformed),
        };
        if info & INFO_HAS_PARENT_SUB != 0 {
            d.read_var_str()?;
        }
        parent
    } else {
        ParentRef::Neighbours { origin, right }
    };
    let mut is_type = false;
    let len = match info & INFO_CONTENT_MASK {
        REF_DELETED => d.read_var_u64()?,
        REF_JSON => {
            let count = d.read_len()?;
            for _ in 0..count {
                d.read_var_bytes()?;
            }
            count as u64
        }
        REF_BINARY => {
            d.read_var_bytes()?;
            1
        }
        REF_STRING => {
            // Clocks count UTF-16 code units (JS string length).
            let s = d.read_var_str()?;
            s.chars().map(|c| c.len_utf16() as u64).sum()
        }
        REF_EMBED => {
            d.read_var_bytes()?;
            1
        }
        REF_FORMAT => {
            d.read_var_bytes()?;
            d.read_var_bytes()?;
            1
        }
        REF_TYPE => {
            is_type = true;
            let type_ref = d.read_u8()?;
            if type_ref == TYPE_XML_ELEMENT || type_ref == TYPE_XML_HOOK {
                d.read_var_bytes()?;
            }
            1
        }
        REF_ANY => {
            let count = d.read_len()?;
            for _ in 0..count {
                skip_any(d, any_stack)?;
            }
            count as u64
        }
        REF_DOC => {
            d.read_var_bytes()?;
            skip_any(d, any_stack)?;
            1
        }
        _ => return Err(NestingError::Malformed),
    };
    Ok((len, ItemRec { parent, is_type }))
}

/// Skips one lib0 `Any` value without recursion; `stack` holds
/// (children left, is object) per open container.
fn skip_any(d: &mut Decoder<'_>, stack: &mut Vec<(usize, bool)>) -> Result<(), NestingError> {
    stack.clear();
    loop {
        match d.read_u8()? {
            ANY_INTEGER => {
                d.read_var_i64()?;
            }
            ANY_FLOAT32 => {
                d.read_exact(4)?;
            }
            ANY_FLOAT64 | ANY_BIGINT => {
                d.read_exact(8)?;
            }
            ANY_STRING | ANY_BYTES => {
                d.read_var_bytes()?;
            }
            tag @ (ANY_OBJECT | ANY_ARRAY) => {
                let count = d.read_len()?;
                if count > 0 {
                    stack.push((count, tag == ANY_OBJECT));
                }
            }
            // undefined, null, false, true
            120 | 121 | 126 | 127 => {}
            _ => return Err(NestingError::Malformed),
        }
        loop {
            match stack.last_mut() {
                None => return Ok(()),
                Some((0, _)) => {
                    stack.pop();
                }
                Some((left, is_object)) => {
                    *left -= 1;
                    if *is_object {
                        d.read_var_bytes()?; // key
                    }
                    break;
                }
            }
        }
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
        match self.p.find(id) {
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
        match self.p.find(id) {
            None => known.map_or(Look::Unknown, Look::Known),
            Some(j) => {
                let r = &self.p.recs[j];
                if !r.is_type() || r.clock != id.1 {
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
                plan.types.push(((r.client, r.clock), depth));
                plan.max_depth = plan.max_depth.max(depth);
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::super::lib0::Encoder;
    use super::super::validate::{validate_update_v1, Limits};
    use super::*;

    // ---- vectors --------------------------------------------------------------

    fn vectors() -> Vec<(String, Vec<u8>)> {
        let text = include_str!("testdata/nesting.txt");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let (name, hex) = line.split_once(' ').expect("name hex");
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                    .collect();
                (name.to_string(), bytes)
            })
            .collect()
    }

    fn get(name: &str) -> Vec<u8> {
        vectors()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("no vector {name}"))
    }

    /// The incremental updates `prefix_001`, `prefix_002`, ... in order.
    fn seq(prefix: &str) -> Vec<Vec<u8>> {
        let mut v: Vec<(String, Vec<u8>)> = vectors()
            .into_iter()
            .filter(|(n, _)| {
                n.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .is_some_and(|num| num.len() == 3 && num.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(!v.is_empty(), "no vectors {prefix}_NNN");
        v.into_iter().map(|(_, b)| b).collect()
    }

    fn check_commit(t: &mut NestingTracker, u: &[u8]) -> Result<u32, NestingError> {
        let plan = t.check(u)?;
        let depth = plan.max_depth();
        t.commit(plan);
        Ok(depth)
    }

    #[test]
    fn vectors_pass_the_validator() {
        let v = vectors();
        assert!(v.len() > 150);
        for (name, bytes) in v {
            validate_update_v1(&bytes, &Limits::default())
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    // ---- handcrafted updates ----------------------------------------------------

    /// Where a handcrafted item's parent comes from.
    #[derive(Clone, Copy)]
    enum P {
        Root,
        Parent(Id),
        Origin(Id),
        Right(Id),
        Both(Id, Id),
    }

    /// Handcrafted item content.
    #[derive(Clone, Copy)]
    enum C {
        /// A Y.Array (ContentType, type ref 0).
        Array,
        /// ContentString.
        Str(&'static str),
        /// ContentAny with one integer.
        Num(i64),
    }

    /// Builds update v1 binaries struct by struct.
    #[derive(Default)]
    struct Builder {
        /// (client, first clock, struct count, struct bytes)
        blocks: Vec<(u64, u64, u64, Encoder)>,
    }

    impl Builder {
        fn block(mut self, client: u64, clock: u64) -> Self {
            self.blocks.push((client, clock, 0, Encoder::new()));
            self
        }

        fn last(&mut self) -> &mut (u64, u64, u64, Encoder) {
            self.blocks.last_mut().expect("block() first")
        }

        fn item(mut self, p: P, c: C) -> Self {
            let b = self.last();
            b.2 += 1;
            let e = &mut b.3;
            let content_ref = match c {
                C::Array => REF_TYPE,
                C::Str(_) => REF_STRING,
                C::Num(_) => REF_ANY,
            };
            let id = |e: &mut Encoder, id: Id| {
                e.write_var_u64(id.0);
                e.write_var_u64(id.1);
            };
            match p {
                P::Root => {
                    e.write_u8(content_ref);
                    e.write_var_u64(1);
                    e.write_var_str("root");
                }
                P::Parent(p) => {
                    e.write_u8(content_ref);
                    e.write_var_u64(0);
                    id(e, p);
                }
                P::Origin(o) => {
                    e.write_u8(content_ref | INFO_HAS_ORIGIN);
                    id(e, o);
                }
                P::Right(r) => {
                    e.write_u8(content_ref | INFO_HAS_RIGHT_ORIGIN);
                    id(e, r);
                }
                P::Both(o, r) => {
                    e.write_u8(content_ref | INFO_HAS_ORIGIN | INFO_HAS_RIGHT_ORIGIN);
                    id(e, o);
                    id(e, r);
                }
            }
            match c {
                C::Array => e.write_u8(0),
                C::Str(s) => e.write_var_str(s),
                C::Num(n) => {
                    e.write_var_u64(1);
                    e.write_u8(ANY_INTEGER);
                    e.write_var_i64(n);
                }
            }
            self
        }

        fn gc(mut self, len: u64) -> Self {
            let b = self.last();
            b.2 += 1;
            b.3.write_u8(REF_GC);
            b.3.write_var_u64(len);
            self
        }

        fn skip(mut self, len: u64) -> Self {
            let b = self.last();
            b.2 += 1;
            b.3.write_u8(REF_SKIP);
            b.3.write_var_u64(len);
            self
        }

        fn build(self) -> Vec<u8> {
            let mut e = Encoder::new();
            e.write_var_u64(self.blocks.len() as u64);
            for (client, clock, n, body) in self.blocks {
                e.write_var_u64(n);
                e.write_var_u64(client);
                e.write_var_u64(clock);
                e.write_raw(body.as_slice());
            }
            e.write_var_u64(0); // empty delete set
            e.into_vec()
        }
    }

    fn one(client: u64, clock: u64, p: P, c: C) -> Vec<u8> {
        Builder::default().block(client, clock).item(p, c).build()
    }

    /// The ID of the only shared type an update creates.
    fn type_id(update: &[u8]) -> Id {
        let parsed = Parsed::new(update).expect("parse");
        let types: Vec<Id> = parsed
            .recs
            .iter()
            .filter(|r| r.is_type())
            .map(|r| (r.client, r.clock))
            .collect();
        assert_eq!(types.len(), 1);
        types[0]
    }

    // ---- (1) nested map document --------------------------------------------------

    #[test]
    fn map_document_is_accepted_incrementally_and_whole() {
        let updates = seq("map_inc");
        let mut t = NestingTracker::new(32);
        for (i, u) in updates.iter().enumerate() {
            check_commit(&mut t, u).unwrap_or_else(|e| panic!("update {}: {e:?}", i + 1));
        }
        assert_eq!(t.max_depth_seen(), 3);

        let full = get("map_full");
        let mut whole = NestingTracker::new(32);
        assert_eq!(check_commit(&mut whole, &full), Ok(3));
        assert_eq!(whole.max_depth_seen(), 3);

        // Both ways know the same clocks with the same depths.
        assert_eq!(t.clients, whole.clients);
        assert_eq!(t.types, whole.types);

        // A limit of 3 still fits; 2 refuses the update creating the Y.Map
        // inside the Y.Array, and nothing before it.
        let mut three = NestingTracker::new(3);
        for u in &updates {
            assert!(check_commit(&mut three, u).is_ok());
        }
        let mut two = NestingTracker::new(2);
        let mut refused = 0;
        for u in &updates {
            match two.check(u) {
                Ok(plan) => two.commit(plan),
                Err(e) => {
                    assert_eq!(e, NestingError::TooDeep);
                    refused += 1;
                    break;
                }
            }
        }
        assert_eq!(refused, 1);
        assert_eq!(two.max_depth_seen(), 2);
        assert_eq!(
            NestingTracker::new(2).check(&full),
            Err(NestingError::TooDeep)
        );
    }

    #[test]
    fn full_snapshot_needs_forward_references_across_blocks() {
        // Client 99's block comes first and points into client 11's block.
        let full = get("map_full");
        let parsed = Parsed::new(&full).expect("parse");
        assert_eq!(parsed.recs[0].client, 99);
        assert!(matches!(
            parsed.recs[0].item.map(|i| i.parent),
            Some(ParentRef::Neighbours {
                origin: Some((11, _)),
                ..
            })
        ));
        assert!(NestingTracker::new(32).check(&full).is_ok());
    }

    // ---- (2) (3) chains ---------------------------------------------------------

    fn chain_refused_at_33(prefix: &str) {
        let updates = seq(prefix);
        assert_eq!(updates.len(), 40);
        let mut t = NestingTracker::new(32);
        for (k, u) in updates.iter().enumerate().take(32) {
            assert_eq!(
                check_commit(&mut t, u),
                Ok(k as u32 + 1),
                "{prefix} level {}",
                k + 1
            );
        }
        assert_eq!(t.max_depth_seen(), 32);
        let before = t.clone();
        assert_eq!(
            t.check(&updates[32]),
            Err(NestingError::TooDeep),
            "{prefix}"
        );
        assert_eq!(t, before);
        // Level 34 hangs off the refused level 33, which the server never got.
        assert_eq!(
            t.check(&updates[33]),
            Err(NestingError::UnknownParent),
            "{prefix}"
        );

        // Without the limit the whole chain measures 40.
        let mut all = NestingTracker::new(40);
        for u in &updates {
            assert!(check_commit(&mut all, u).is_ok());
        }
        assert_eq!(all.max_depth_seen(), 40);
    }

    #[test]
    fn explicit_parent_chain_is_refused_at_33() {
        chain_refused_at_33("chain_explicit");
    }

    #[test]
    fn implicit_parent_chains_are_refused_at_33() {
        // Nested array after a number (origin) and before it (right origin).
        for prefix in ["chain_implicit", "chain_right"] {
            let u = &seq(prefix)[2];
            let parsed = Parsed::new(u).expect("parse");
            let array = parsed.recs.iter().find(|r| r.is_type()).expect("type");
            assert!(matches!(
                array.item.map(|i| i.parent),
                Some(ParentRef::Neighbours { .. })
            ));
            chain_refused_at_33(prefix);
        }
    }

    // ---- (4) ProseMirror-like XML ---------------------------------------------------

    #[test]
    fn prosemirror_xml_is_accepted() {
        let updates = seq("xml_inc");
        assert!(updates.len() > 40);
        let mut t = NestingTracker::new(32);
        for (i, u) in updates.iter().enumerate() {
            check_commit(&mut t, u).unwrap_or_else(|e| panic!("update {}: {e:?}", i + 1));
        }
        // blockquote > paragraph > text
        assert_eq!(t.max_depth_seen(), 3);
        let mut whole = NestingTracker::new(32);
        assert_eq!(check_commit(&mut whole, &get("xml_full")), Ok(3));
        // The snapshot replaced deleted paragraphs' text with GC structs.
        let parsed = Parsed::new(&get("xml_full")).expect("parse");
        assert!(parsed.recs.iter().any(|r| r.item.is_none()));
        // Tight limits.
        let mut three = NestingTracker::new(3);
        for u in &updates {
            assert!(check_commit(&mut three, u).is_ok());
        }
        assert_eq!(
            NestingTracker::new(2).check(&get("xml_full")),
            Err(NestingError::TooDeep)
        );
    }

    // ---- (5) absorb == check + commit ---------------------------------------------

    #[test]
    fn absorb_matches_check_and_commit() {
        let updates = seq("map_inc");
        let more = get("map_more");
        for limit in [32, 3] {
            let mut stepwise = NestingTracker::new(limit);
            for u in &updates {
                let plan = stepwise.check(u).expect("check");
                stepwise.commit(plan);
            }
            let mut absorbed = NestingTracker::new(limit);
            for u in &updates {
                absorbed.absorb(u);
            }
            let mut snapshot = NestingTracker::new(limit);
            snapshot.absorb(&get("map_full"));
            // Snapshot first, then a tail that overlaps it: nothing changes.
            let mut overlapped = snapshot.clone();
            for u in &updates {
                overlapped.absorb(u);
            }
            assert_eq!(stepwise, absorbed);
            assert_eq!(snapshot, overlapped);
            assert_eq!(stepwise.clients, snapshot.clients);
            assert_eq!(stepwise.types, snapshot.types);

            let expected = stepwise.check(&more);
            assert_eq!(absorbed.check(&more), expected);
            assert_eq!(snapshot.check(&more), expected);
            if limit == 32 {
                // A Y.Map (3) pushed after existing elements, holding a Y.Text (4).
                assert_eq!(expected.map(|p| p.max_depth()), Ok(4));
            } else {
                assert_eq!(expected, Err(NestingError::TooDeep));
            }
        }
    }

    #[test]
    fn absorb_records_too_deep_types_and_refuses_their_children() {
        let updates = seq("chain_explicit");
        let mut t = NestingTracker::new(32);
        for u in &updates {
            t.absorb(u);
        }
        assert_eq!(t.max_depth_seen(), 40);
        let last = type_id(&updates[39]);
        let level33 = type_id(&updates[32]);
        for parent in [last, level33] {
            assert_eq!(
                t.check(&one(7, 0, P::Parent(parent), C::Array)),
                Err(NestingError::TooDeep)
            );
            // Plain content in a too-deep type is not a new level.
            assert!(t.check(&one(7, 0, P::Parent(parent), C::Str("x"))).is_ok());
        }
        // Next to level 32 (depth 32's parent is 31): still fine.
        let level31 = type_id(&updates[30]);
        assert_eq!(
            t.check(&one(7, 0, P::Parent(level31), C::Array))
                .map(|p| p.max_depth()),
            Ok(32)
        );
    }

    // ---- (6) unknown references ---------------------------------------------------

    #[test]
    fn unknown_references_are_refused() {
        let fresh = NestingTracker::new(32);
        // Real updates sent to a server that lacks what they build on.
        assert_eq!(
            fresh.check(&seq("chain_explicit")[1]),
            Err(NestingError::UnknownParent)
        );
        assert_eq!(
            fresh.check(&get("map_more")),
            Err(NestingError::UnknownParent)
        );
        // outer.set('items', new Y.Array()): parent ID of the outer map.
        assert_eq!(
            fresh.check(&seq("map_inc")[1]),
            Err(NestingError::UnknownParent)
        );
        // Handcrafted: parent ID, origin, right origin.
        let mut t = NestingTracker::new(32);
        check_commit(&mut t, &one(1, 0, P::Root, C::Str("abc"))).expect("root");
        for p in [
            P::Parent((2, 0)),
            P::Origin((2, 0)),
            P::Right((2, 0)),
            P::Origin((1, 3)), // just past the known string
            P::Both((1, 1), (3, 0)),
            P::Both((3, 0), (1, 1)),
        ] {
            assert_eq!(
                t.check(&one(5, 0, p, C::Num(1))),
                Err(NestingError::UnknownParent)
            );
        }
        // Known references are fine, including the middle of the string.
        for p in [P::Origin((1, 1)), P::Right((1, 2)), P::Both((1, 0), (1, 1))] {
            assert!(t.check(&one(5, 0, p, C::Num(1))).is_ok());
        }
        // A Skip in the update does not make its clocks known.
        let skipping = Builder::default()
            .block(2, 0)
            .skip(5)
            .item(P::Origin((2, 1)), C::Str("x"))
            .build();
        assert_eq!(t.check(&skipping), Err(NestingError::UnknownParent));
    }

    #[test]
    fn reference_cycles_are_refused_and_absorbed() {
        // 1:0 sits after 2:0 which sits after 1:0.
        let cycle = Builder::default()
            .block(1, 0)
            .item(P::Origin((2, 0)), C::Array)
            .block(2, 0)
            .item(P::Origin((1, 0)), C::Array)
            .build();
        let mut t = NestingTracker::new(32);
        assert_eq!(t.check(&cycle), Err(NestingError::UnknownParent));
        t.absorb(&cycle);
        assert_eq!(t.max_depth_seen(), 1);
        // Self-reference (the validator rejects it; the tracker must not hang).
        let own = one(3, 4, P::Parent((3, 4)), C::Array);
        assert_eq!(t.check(&own), Err(NestingError::UnknownParent));
        t.absorb(&own);
    }

    #[test]
    fn references_within_one_update_in_any_block_order() {
        // Client 1's array is inside client 2's, which comes later.
        let u = Builder::default()
            .block(1, 0)
            .item(P::Parent((2, 1)), C::Array)
            .item(P::Origin((1, 0)), C::Str("ab"))
            .item(P::Parent((1, 0)), C::Array)
            .block(2, 0)
            .item(P::Root, C::Num(1))
            .item(P::Origin((2, 0)), C::Array)
            .build();
        assert!(validate_update_v1(&u, &Limits::default()).is_ok());
        let mut t = NestingTracker::new(32);
        assert_eq!(check_commit(&mut t, &u), Ok(3));
        assert_eq!(t.types.get(&(2, 1)), Some(&1));
        assert_eq!(t.types.get(&(1, 0)), Some(&2));
        assert_eq!(t.types.get(&(1, 3)), Some(&3));
        assert_eq!(t.parent_at((1, 2)), Some(1));
        assert_eq!(NestingTracker::new(2).check(&u), Err(NestingError::TooDeep));
    }

    // ---- GC, re-sends, memory -------------------------------------------------------

    #[test]
    fn gc_ranges_are_known_with_depth_zero() {
        let mut t = NestingTracker::new(32);
        assert_eq!(check_commit(&mut t, &get("gc_full")), Ok(2));
        let parsed = Parsed::new(&get("gc_full")).expect("parse");
        let gc = parsed
            .recs
            .iter()
            .find(|r| r.item.is_none())
            .expect("gc struct");
        assert_eq!(t.parent_at((gc.client, gc.clock)), Some(0));

        // Handcrafted: a depth-2 array, then a GC range of 3 clocks.
        let mut t = NestingTracker::new(32);
        let setup = Builder::default()
            .block(1, 0)
            .item(P::Root, C::Array)
            .item(P::Parent((1, 0)), C::Array)
            .item(P::Parent((1, 1)), C::Num(0))
            .gc(3)
            .build();
        assert_eq!(check_commit(&mut t, &setup), Ok(2));
        // Origin in the GC range: yjs makes it GC; depth 0 parent.
        assert_eq!(
            t.check(&one(2, 0, P::Origin((1, 4)), C::Array))
                .map(|p| p.max_depth()),
            Ok(1)
        );
        // Parent ID in the GC range or on a non-type item: depth 0 parent.
        for parent in [(1, 4), (1, 2)] {
            assert_eq!(
                t.check(&one(2, 0, P::Parent(parent), C::Array))
                    .map(|p| p.max_depth()),
                Ok(1)
            );
        }
        // GC origin, live right origin: yrs takes the right one's parent (2).
        assert_eq!(
            t.check(&one(2, 0, P::Both((1, 5), (1, 2)), C::Array))
                .map(|p| p.max_depth()),
            Ok(3)
        );
        assert_eq!(
            NestingTracker {
                max_depth: 2,
                ..t.clone()
            }
            .check(&one(2, 0, P::Both((1, 5), (1, 2)), C::Array)),
            Err(NestingError::TooDeep)
        );
    }

    #[test]
    fn resent_clocks_never_lower_recorded_depths() {
        let updates = seq("chain_implicit");
        let mut t = NestingTracker::new(32);
        for u in updates.iter().take(32) {
            check_commit(&mut t, u).expect("level");
        }
        let snapshot = t.clone();
        // Re-sending known updates changes nothing.
        for u in updates.iter().take(32) {
            let plan = t.check(u).expect("resend");
            assert!(!plan.is_empty());
            t.commit(plan);
        }
        assert_eq!(t, snapshot);
        // Re-sending all of client 33's clocks as GC, or as root-level items,
        // changes nothing either: level 33 is still refused.
        let client = 33;
        let known_end = snapshot.clients[&client]
            .depths
            .values()
            .map(|(end, _)| *end)
            .max()
            .expect("end");
        assert_eq!(known_end, 64);
        let as_gc = Builder::default().block(client, 0).gc(known_end).build();
        let plan = t.check(&as_gc).expect("gc resend");
        t.commit(plan);
        let as_root = Builder::default()
            .block(client, 0)
            .item(P::Root, C::Str("x"))
            .build();
        let plan = t.check(&as_root).expect("root resend");
        t.commit(plan);
        assert_eq!(t, snapshot);
        assert_eq!(t.check(&updates[32]), Err(NestingError::TooDeep));
        // A re-send running past the known clocks records the new part at its
        // own depth; level 33 (clocks 64, 65) is still refused on top of it.
        let longer = Builder::default()
            .block(client, 0)
            .gc(known_end + 5)
            .build();
        let plan = t.check(&longer).expect("longer");
        t.commit(plan);
        assert_eq!(t.parent_at((client, known_end + 4)), Some(0));
        assert_eq!(t.parent_at((client, known_end + 5)), None);
        assert_eq!(t.check(&updates[32]), Err(NestingError::TooDeep));
    }

    #[test]
    fn hostile_resends_raise_depths() {
        // yrs 0.28.1 integrates a re-sent struct a second time, so a clock
        // re-sent as a deeper type must count as that deeper type.
        let updates = seq("chain_explicit");
        let mut t = NestingTracker::new(32);
        for u in updates.iter().take(31) {
            check_commit(&mut t, u).expect("level");
        }
        let level1 = type_id(&updates[0]);
        let level31 = type_id(&updates[30]);
        assert_eq!(t.types.get(&level1), Some(&1));
        // Level 1's clock again, now as an array inside level 31.
        let resend = one(level1.0, level1.1, P::Parent(level31), C::Array);
        assert_eq!(check_commit(&mut t, &resend), Ok(32));
        assert_eq!(t.types.get(&level1), Some(&32));
        assert_eq!(t.parent_at(level1), Some(31));
        assert_eq!(t.parent_at((level1.0, level1.1 + 1)), Some(1));
        assert_eq!(
            t.check(&one(9, 0, P::Parent(level1), C::Array)),
            Err(NestingError::TooDeep)
        );
        assert_eq!(
            t.check(&one(9, 0, P::Origin(level1), C::Array))
                .map(|p| p.max_depth()),
            Ok(32)
        );
        // Too deep as a re-send is refused like anything else.
        let level32 = type_id(&updates[31]);
        assert_eq!(
            t.check(&one(level1.0, level1.1 + 1, P::Parent(level1), C::Array)),
            Err(NestingError::TooDeep)
        );
        assert_eq!(t.types.get(&level32), None);
    }

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

    #[test]
    fn ranges_stay_merged() {
        // A client typing 1,000 characters one update at a time.
        let mut t = NestingTracker::new(32);
        check_commit(&mut t, &one(1, 0, P::Root, C::Array)).expect("array");
        check_commit(&mut t, &one(2, 0, P::Parent((1, 0)), C::Str("a"))).expect("first");
        for clock in 1..1000 {
            check_commit(
                &mut t,
                &one(2, clock, P::Origin((2, clock - 1)), C::Str("b")),
            )
            .expect("char");
        }
        assert_eq!(t.clients[&2].depths.len(), 1);
        assert_eq!(t.parent_at((2, 999)), Some(1));
        // Real editing sessions stay small too.
        let mut x = NestingTracker::new(32);
        for u in seq("xml_inc") {
            x.absorb(&u);
        }
        let ranges: usize = x.clients.values().map(|c| c.depths.len()).sum();
        assert!(ranges < 150, "{ranges}");
    }

    // ---- no recursion ----------------------------------------------------------------

    const DEEP: u64 = 100_000;

    /// One update: an array chain `DEEP` deep, each level inside the previous
    /// one by parent ID.
    fn deep_explicit_chain() -> Vec<u8> {
        let mut b = Builder::default().block(1, 0).item(P::Root, C::Array);
        for clock in 1..DEEP {
            b = b.item(P::Parent((1, clock - 1)), C::Array);
        }
        b.build()
    }

    /// Levels via origins (a number, then the nested array after it), with
    /// every link pointing into a *later* client block.
    fn deep_backward_implicit_chain() -> Vec<u8> {
        let mut b = Builder::default();
        for client in 1..=DEEP {
            let parent = if client == DEEP {
                P::Root
            } else {
                P::Parent((client + 1, 1))
            };
            b = b
                .block(client, 0)
                .item(parent, C::Num(0))
                .item(P::Origin((client, 0)), C::Array);
        }
        b.build()
    }

    #[test]
    fn deep_chains_do_not_recurse() {
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                for u in [deep_explicit_chain(), deep_backward_implicit_chain()] {
                    assert!(validate_update_v1(&u, &Limits::default()).is_ok());
                    let mut t = NestingTracker::new(32);
                    assert_eq!(t.check(&u), Err(NestingError::TooDeep));
                    t.absorb(&u);
                    assert_eq!(t.max_depth_seen(), DEEP as u32);
                    // Resolved by the strict path too.
                    let big = NestingTracker::new(u32::MAX);
                    assert_eq!(big.check(&u).map(|p| p.max_depth()), Ok(DEEP as u32));
                    // Deeper children are refused; plain content is fine.
                    let deepest = t
                        .types
                        .iter()
                        .find(|(_, d)| **d == DEEP as u32)
                        .map(|(id, _)| *id)
                        .expect("deepest");
                    assert_eq!(
                        t.check(&one(DEEP + 7, 0, P::Parent(deepest), C::Array)),
                        Err(NestingError::TooDeep)
                    );
                    // The same chain as 100,000 tiny updates.
                    if t.clients.len() == 1 {
                        let mut inc = NestingTracker::new(32);
                        inc.absorb(&one(1, 0, P::Root, C::Array));
                        for clock in 1..DEEP {
                            inc.absorb(&one(1, clock, P::Parent((1, clock - 1)), C::Array));
                        }
                        assert_eq!(
                            inc,
                            NestingTracker {
                                max_depth: 32,
                                ..t.clone()
                            }
                        );
                    }
                }
            })
            .expect("spawn");
        handle.join().expect("no stack overflow");
    }

    // ---- robustness -------------------------------------------------------------------

    /// xorshift64*
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn mutated_updates_never_panic() {
        let corpus: Vec<Vec<u8>> = vectors()
            .into_iter()
            .map(|(_, b)| b)
            .filter(|b| b.len() <= 2048)
            .collect();
        let mut base = NestingTracker::new(8);
        base.absorb(&get("map_full"));
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut ok = 0;
        for i in 0..20_000 {
            let mut m = corpus[i % corpus.len()].clone();
            for _ in 0..1 + rng.below(3) {
                let len = m.len();
                match rng.below(4) {
                    0 if len > 0 => {
                        let at = rng.below(len);
                        m[at] ^= 1 << rng.below(8);
                    }
                    1 if len > 0 => {
                        let at = rng.below(len);
                        m[at] = rng.next() as u8;
                    }
                    2 => m.truncate(rng.below(len + 1)),
                    _ => {
                        let at = rng.below(len + 1);
                        m.insert(at, rng.next() as u8);
                    }
                }
            }
            let mut t = base.clone();
            if let Ok(plan) = t.check(&m) {
                ok += 1;
                t.commit(plan);
            }
            t.absorb(&m);
        }
        assert!(ok > 1000, "{ok}");
    }

    #[test]
    fn errors_display_short_and_safe() {
        for e in [
            NestingError::TooDeep,
            NestingError::UnknownParent,
            NestingError::Malformed,
        ] {
            let s = e.to_string();
            assert!(!s.is_empty() && s.len() <= 48 && s.is_ascii(), "{s}");
        }
        assert_eq!(
            NestingTracker::new(4).check(&[1, 1]),
            Err(NestingError::Malformed)
        );
        assert!(NestingTracker::new(4)
            .check(&[0, 0])
            .expect("empty")
            .is_empty());
    }
}
