//! The per-document nesting tracker ([`proto::yjs::nesting`]) against real
//! yjs editing sessions (`testdata/nesting.txt`) and handcrafted updates.

mod common;

use proto::yjs::lib0::Encoder;
use proto::yjs::nesting::{NestingError, NestingTracker};
use proto::yjs::update::{
    self, Item, Parent, Rules, Struct, StructKind, UpdateReader, ANY_INTEGER, INFO_HAS_ORIGIN,
    INFO_HAS_RIGHT_ORIGIN, REF_ANY, REF_GC, REF_SKIP, REF_STRING, REF_TYPE,
};
use proto::yjs::validate::{validate_update_v1, Limits};

/// An item ID as the handcrafted updates below write it: (client, clock).
type Id = (u64, u64);

fn at(id: Id) -> update::Id {
    update::Id::new(id.0, id.1)
}

/// The structs of an update, Skip placeholders left out.
fn structs(update: &[u8]) -> Vec<Struct<'_>> {
    let mut r = UpdateReader::new(update, Rules::Lax).expect("parse");
    let mut out = Vec::new();
    while r.next_block().expect("parse").is_some() {
        while let Some(s) = r.next_struct().expect("parse") {
            if s.kind != StructKind::Skip {
                out.push(s);
            }
        }
    }
    out
}

/// A copy of `t` with another limit.
fn with_limit(t: &NestingTracker, max_depth: u32) -> NestingTracker {
    let mut t = t.clone();
    t.set_max_depth(max_depth);
    t
}

// ---- vectors --------------------------------------------------------------

fn vectors() -> Vec<(String, Vec<u8>)> {
    common::parse_vectors(include_str!("../src/yjs/testdata/nesting.txt"))
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
        validate_update_v1(&bytes, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e:?}"));
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
    let types: Vec<Id> = structs(update)
        .iter()
        .filter(|s| s.is_type())
        .map(|s| (s.id.client, s.id.clock))
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

    // Both ways know the same clocks with the same depths (same limit, same
    // deepest type, so the trackers are equal).
    assert_eq!(t, whole);

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
    let parsed = structs(&full);
    assert_eq!(parsed[0].id.client, 99);
    assert!(matches!(
        parsed[0].item(),
        Some(Item {
            parent: Parent::FromOrigins,
            origin: Some(update::Id { client: 11, .. }),
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
        let parsed = structs(u);
        let array = parsed.iter().find(|s| s.is_type()).expect("type");
        assert_eq!(array.item().map(|i| i.parent), Some(Parent::FromOrigins));
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
    let xml_full = get("xml_full");
    assert!(structs(&xml_full).iter().any(|s| s.kind == StructKind::Gc));
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
        // Same limit and same deepest type: equal means the same clocks and
        // types with the same depths.
        assert_eq!(stepwise, snapshot);

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
    assert_eq!(t.type_depth(at((2, 1))), Some(1));
    assert_eq!(t.type_depth(at((1, 0))), Some(2));
    assert_eq!(t.type_depth(at((1, 3))), Some(3));
    assert_eq!(t.parent_depth(at((1, 2))), Some(1));
    assert_eq!(NestingTracker::new(2).check(&u), Err(NestingError::TooDeep));
}

// ---- GC, re-sends, memory -------------------------------------------------------

#[test]
fn gc_ranges_are_known_with_depth_zero() {
    let mut t = NestingTracker::new(32);
    assert_eq!(check_commit(&mut t, &get("gc_full")), Ok(2));
    let gc_full = get("gc_full");
    let parsed = structs(&gc_full);
    let gc = parsed
        .iter()
        .find(|s| s.kind == StructKind::Gc)
        .expect("gc struct");
    assert_eq!(t.parent_depth(gc.id), Some(0));

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
        with_limit(&t, 2).check(&one(2, 0, P::Both((1, 5), (1, 2)), C::Array)),
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
    let known_end = snapshot
        .ranges(client)
        .map(|(_, end, _)| end)
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
    assert_eq!(t.parent_depth(at((client, known_end + 4))), Some(0));
    assert_eq!(t.parent_depth(at((client, known_end + 5))), None);
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
    assert_eq!(t.type_depth(at(level1)), Some(1));
    // Level 1's clock again, now as an array inside level 31.
    let resend = one(level1.0, level1.1, P::Parent(level31), C::Array);
    assert_eq!(check_commit(&mut t, &resend), Ok(32));
    assert_eq!(t.type_depth(at(level1)), Some(32));
    assert_eq!(t.parent_depth(at(level1)), Some(31));
    assert_eq!(t.parent_depth(at((level1.0, level1.1 + 1))), Some(1));
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
    assert_eq!(t.type_depth(at(level32)), None);
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
    assert_eq!(t.ranges(2).count(), 1);
    assert_eq!(t.parent_depth(at((2, 999))), Some(1));
    // Real editing sessions stay small too.
    let mut x = NestingTracker::new(32);
    for u in seq("xml_inc") {
        x.absorb(&u);
    }
    let ranges: usize = x.clients().map(|c| x.ranges(c).count()).sum();
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
                let deepest = structs(&u)
                    .iter()
                    .filter(|s| s.is_type())
                    .map(|s| (s.id.client, s.id.clock))
                    .find(|id| t.type_depth(at(*id)) == Some(DEEP as u32))
                    .expect("deepest");
                assert_eq!(
                    t.check(&one(DEEP + 7, 0, P::Parent(deepest), C::Array)),
                    Err(NestingError::TooDeep)
                );
                // The same chain as 100,000 tiny updates.
                if t.clients().count() == 1 {
                    let mut inc = NestingTracker::new(32);
                    inc.absorb(&one(1, 0, P::Root, C::Array));
                    for clock in 1..DEEP {
                        inc.absorb(&one(1, clock, P::Parent((1, clock - 1)), C::Array));
                    }
                    assert_eq!(inc, with_limit(&t, 32));
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
