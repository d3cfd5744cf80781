//! The per-document guard ([`proto::yjs::guard::UpdateGuard`]): re-send and
//! gap rules, trimming to the delete set, nesting, and rebuilding on load.
//! (The shard's end-to-end tests of the same rules are in
//! `shard/tests/core_sim.rs`.)

use proto::yjs::guard::{Accepted, GuardError, UpdateGuard, Validated};
use proto::yjs::hostile;
use proto::yjs::lib0::Encoder;
use proto::yjs::nesting::{NestingError, NestingTracker};
use proto::yjs::update::{delete_set_update, Id, INFO_HAS_ORIGIN, REF_STRING, REF_TYPE};
use proto::yjs::validate::{
    update_client_ranges, validate_update_v1, ClientRange, Limits, ValidationError,
};

fn lim() -> Limits {
    Limits::default()
}

/// One block of `client` from `clock`: `text` as one string item (at the
/// root "t" when the clock is 0, else after the previous clock), then the
/// delete ranges `deletes` of `client`.
fn typed(client: u64, clock: u64, text: &str, deletes: &[(u64, u64)]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.write_var_u64(1);
    e.write_var_u64(1);
    e.write_var_u64(client);
    e.write_var_u64(clock);
    if clock == 0 {
        e.write_u8(REF_STRING);
        e.write_var_u64(1);
        e.write_var_str("t");
    } else {
        e.write_u8(REF_STRING | INFO_HAS_ORIGIN);
        e.write_var_u64(client);
        e.write_var_u64(clock - 1);
    }
    e.write_var_str(text);
    write_deletes(&mut e, &[(client, deletes)]);
    e.into_vec()
}

fn write_deletes(e: &mut Encoder, deletes: &[(u64, &[(u64, u64)])]) {
    let clients: Vec<_> = deletes.iter().filter(|(_, r)| !r.is_empty()).collect();
    e.write_var_u64(clients.len() as u64);
    for (client, ranges) in clients {
        e.write_var_u64(*client);
        e.write_var_u64(ranges.len() as u64);
        for (clock, len) in *ranges {
            e.write_var_u64(*clock);
            e.write_var_u64(*len);
        }
    }
}

fn check<'a>(g: &UpdateGuard, u: &'a [u8]) -> Result<Option<Accepted<'a>>, GuardError> {
    g.check(Validated::new(u, &lim()).expect("valid"))
}

/// Check and commit; the bytes to store, or `None` for nothing to store.
fn accept(g: &mut UpdateGuard, u: &[u8]) -> Result<Option<Vec<u8>>, GuardError> {
    match check(g, u)? {
        Some(a) => g.commit(a).map(Some),
        None => Ok(None),
    }
}

#[test]
fn new_clocks_are_accepted_whole_and_recorded() {
    let mut g = UpdateGuard::new(32);
    let u = typed(5, 0, "abc", &[]);
    let a = check(&g, &u).expect("ok").expect("something to store");
    assert!(!a.is_trimmed());
    assert_eq!(a.update(), &u[..]);
    // check() alone changes nothing.
    assert_eq!(g, UpdateGuard::new(32));
    assert_eq!(g.commit(a), Ok(u.clone()));
    assert_eq!(g.accepted_end(5), Some(3));
    assert_eq!(g.accepted_end(6), None);
    // The next clocks follow on.
    let next = typed(5, 3, "d", &[(0, 1)]);
    assert_eq!(accept(&mut g, &next), Ok(Some(next.clone())));
    assert_eq!(g.accepted_end(5), Some(4));
    // Nesting is recorded too: the string's parent is a root type.
    assert_eq!(g.nesting().parent_depth(Id::new(5, 2)), Some(0));
}

#[test]
fn full_resends_are_dropped_or_trimmed_to_their_deletions() {
    let mut g = UpdateGuard::new(32);
    let first = typed(5, 0, "abc", &[]);
    accept(&mut g, &first).expect("first");
    let before = g.clone();
    // The same update again: nothing to store, nothing recorded.
    assert_eq!(check(&g, &first).map(|a| a.is_none()), Ok(true));
    // Known clocks with different content (the yrs crash) are dropped too.
    assert_eq!(
        check(&g, &typed(5, 0, "xyz", &[])).map(|a| a.is_none()),
        Ok(true)
    );
    assert_eq!(
        check(&g, &typed(5, 1, "q", &[])).map(|a| a.is_none()),
        Ok(true)
    );
    // With deletions, only the delete set is kept.
    let with_deletes = typed(5, 0, "abc", &[(1, 2)]);
    let a = check(&g, &with_deletes)
        .expect("ok")
        .expect("deletions to store");
    assert!(a.is_trimmed());
    assert_eq!(a.update(), &[0, 1, 5, 1, 1, 2][..]);
    assert_eq!(
        validate_update_v1(a.update(), &lim()).map(|s| (s.structs, s.delete_ranges)),
        Ok((0, 1))
    );
    let stored = g.commit(a).expect("commit");
    assert_eq!(stored, [0, 1, 5, 1, 1, 2]);
    // Committing a trimmed update records nothing new.
    assert_eq!(g, before);
}

#[test]
fn partial_resends_and_gaps_are_refused() {
    let mut g = UpdateGuard::new(32);
    accept(&mut g, &typed(5, 0, "abc", &[])).expect("first");
    // Clocks 2..4: one known, one new.
    assert_eq!(
        check(&g, &typed(5, 2, "xy", &[])).map(|_| ()),
        Err(GuardError::Overlap)
    );
    // Clock 4 while 3 was never sent.
    assert_eq!(
        check(&g, &typed(5, 4, "z", &[])).map(|_| ()),
        Err(GuardError::Gap)
    );
    // A first update that does not start at clock 0.
    assert_eq!(
        check(&g, &typed(6, 1, "z", &[])).map(|_| ()),
        Err(GuardError::Gap)
    );
    // One client re-sends while another sends new clocks.
    let mut e = Encoder::new();
    e.write_raw(&[2, 1, 5, 0, REF_STRING, 1, 1, b't', 1, b'a']);
    e.write_raw(&[1, 6, 0, REF_STRING, 1, 1, b't', 1, b'b', 0]);
    let mixed = e.into_vec();
    assert_eq!(update_client_ranges(&mixed, &lim()).map(|r| r.len()), Ok(2));
    assert_eq!(check(&g, &mixed).map(|_| ()), Err(GuardError::Overlap));
    assert_eq!(g.accepted_end(5), Some(3));
    assert_eq!(g.accepted_end(6), None);
}

#[test]
fn skip_structs_do_not_count_as_clocks() {
    let mut g = UpdateGuard::new(32);
    accept(&mut g, &typed(5, 0, "abc", &[])).expect("first");
    // Skip 0..3 (placeholders), then clock 3: new, not a re-send.
    let u = [1, 2, 5, 0, 10, 3, REF_STRING | 0x80, 5, 2, 1, b'd', 0];
    assert_eq!(
        Validated::new(&u, &lim()).map(|v| v.ranges().to_vec()),
        Ok(vec![ClientRange {
            client: 5,
            start: 3,
            end: 4
        }])
    );
    assert_eq!(accept(&mut g, &u), Ok(Some(u.to_vec())));
    assert_eq!(g.accepted_end(5), Some(4));
}

#[test]
fn empty_and_delete_only_updates() {
    let mut g = UpdateGuard::new(32);
    let empty = Validated::new(&[0, 0], &lim()).expect("valid");
    assert!(empty.is_empty());
    assert_eq!(g.check(empty).map(|a| a.is_none()), Ok(true));
    // Deletions alone have no clock range: always new.
    let deletes = [0, 1, 5, 1, 0, 1];
    assert_eq!(accept(&mut g, &deletes), Ok(Some(deletes.to_vec())));
    assert_eq!(accept(&mut g, &deletes), Ok(Some(deletes.to_vec())));
    assert_eq!(g, UpdateGuard::new(32));
}

#[test]
fn validated_matches_the_validator() {
    for (name, bad) in hostile::all() {
        assert_eq!(
            Validated::new(&bad, &lim()).map(|v| v.summary()),
            validate_update_v1(&bad, &lim()),
            "{name}"
        );
    }
    let u = typed(5, 0, "abc", &[(0, 1)]);
    let v = Validated::new(&u, &lim()).expect("valid");
    assert_eq!(Ok(v.summary()), validate_update_v1(&u, &lim()));
    assert_eq!(Ok(v.ranges().to_vec()), update_client_ranges(&u, &lim()));
    assert_eq!(v.update(), &u[..]);
    let small = Limits {
        max_update_bytes: 4,
        ..lim()
    };
    assert_eq!(
        Validated::new(&u, &small).map(|_| ()),
        Err(ValidationError::TooLarge)
    );
}

/// An update creating a Y.Array in the type held by `parent` (or at the
/// root), as the only struct of `client` at `clock`.
fn array(client: u64, clock: u64, parent: Option<(u64, u64)>) -> Vec<u8> {
    let mut e = Encoder::new();
    e.write_raw(&[1, 1]);
    e.write_var_u64(client);
    e.write_var_u64(clock);
    e.write_u8(REF_TYPE);
    match parent {
        None => {
            e.write_var_u64(1);
            e.write_var_str("root");
        }
        Some((c, k)) => {
            e.write_var_u64(0);
            e.write_var_u64(c);
            e.write_var_u64(k);
        }
    }
    e.write_u8(0); // Y.Array
    e.write_u8(0); // no deletions
    e.into_vec()
}

#[test]
fn nesting_is_checked_at_commit_and_refusals_record_nothing() {
    let mut g = UpdateGuard::new(2);
    accept(&mut g, &array(1, 0, None)).expect("depth 1");
    accept(&mut g, &array(1, 1, Some((1, 0)))).expect("depth 2");
    let before = g.clone();
    let too_deep = array(1, 2, Some((1, 1)));
    // The re-send rules let it through; the nesting check does not.
    let a = check(&g, &too_deep).expect("new clocks").expect("to store");
    assert_eq!(g.commit(a), Err(GuardError::Nesting(NestingError::TooDeep)));
    assert_eq!(g, before);
    assert_eq!(g.accepted_end(1), Some(2));
    // A parent the document does not have.
    let orphan = array(2, 0, Some((9, 0)));
    let a = check(&g, &orphan).expect("new clocks").expect("to store");
    assert_eq!(
        g.commit(a),
        Err(GuardError::Nesting(NestingError::UnknownParent))
    );
    assert_eq!(g, before);
    assert_eq!(g.nesting().max_depth_seen(), 2);
    // Messages are short and fixed.
    for e in [
        GuardError::Overlap,
        GuardError::Gap,
        GuardError::Nesting(NestingError::TooDeep),
    ] {
        let s = e.to_string();
        assert!(!s.is_empty() && s.len() <= 48 && s.is_ascii(), "{s}");
    }
}

#[test]
fn the_yrs_resend_reproducer_never_passes_whole() {
    let [first, second] = hostile::yrs_resend_segfault_updates();
    // On an empty document the first half already skips clocks.
    let g = UpdateGuard::new(32);
    assert_eq!(check(&g, &first).map(|_| ()), Err(GuardError::Gap));
    // Had it been stored (a guard rebuilt from it), the second half
    // re-sends clocks 7..17 of client 2, known up to 20, and deletes
    // nothing: it is dropped.
    let g = UpdateGuard::from_stored(32, &lim(), [first.as_slice()]);
    assert_eq!(g.accepted_end(2), Some(20));
    assert_eq!(
        update_client_ranges(&second, &lim()),
        Ok(vec![ClientRange {
            client: 2,
            start: 7,
            end: 17
        }])
    );
    assert_eq!(check(&g, &second).map(|a| a.is_none()), Ok(true));
}

#[test]
fn rebuilt_from_stored_updates_like_accepted_ones() {
    let updates = [
        typed(5, 0, "abc", &[]),
        array(1, 0, None),
        typed(5, 3, "d", &[(1, 1)]),
        array(1, 1, Some((1, 0))),
        vec![0, 1, 5, 1, 0, 1],
    ];
    let mut live = UpdateGuard::new(32);
    for u in &updates {
        accept(&mut live, u).expect("accepted");
    }
    let loaded = UpdateGuard::from_stored(32, &lim(), updates.iter().map(|u| u.as_slice()));
    assert_eq!(loaded, live);
    let mut absorbed = UpdateGuard::new(32);
    for u in &updates {
        absorbed.absorb(u, &lim());
    }
    assert_eq!(absorbed, live);
    // A snapshot (the merged state) rebuilds the same clock ends.
    let mut snapshot = Encoder::new();
    snapshot.write_raw(&[1, 2, 5, 0, REF_STRING, 1, 1, b't', 3]);
    snapshot.write_raw(b"abc");
    snapshot.write_raw(&[REF_STRING | 0x80, 5, 2, 1, b'd', 0]);
    let snap = UpdateGuard::from_stored(32, &lim(), [snapshot.as_slice()]);
    assert_eq!(snap.accepted_end(5), Some(4));
}

#[test]
fn stored_updates_that_fail_validation_add_no_clock_ranges() {
    // As before the guard existed: ranges come from validated stored
    // updates only, while nesting reads what it can (lax rules).
    let deep = hostile::nested_any_array_update(40);
    assert!(validate_update_v1(&deep, &lim()).is_err());
    let g = UpdateGuard::from_stored(32, &lim(), [deep.as_slice()]);
    assert_eq!(g.accepted_end(1), None);
    assert_eq!(g.nesting().parent_depth(Id::new(1, 0)), Some(0));
    let mut nesting = NestingTracker::new(32);
    nesting.absorb(&deep);
    assert_eq!(g.nesting(), &nesting);
}

#[test]
fn delete_sets_are_reencoded_like_yrs() {
    // yrs keeps clients in ascending order and ranges as decoded, with
    // canonical varints; yjs writes clients in descending order.
    let mut e = Encoder::new();
    e.write_raw(&[0]); // no structs
    write_deletes(&mut e, &[(300, &[(0, 2), (4, 1)]), (7, &[(1, 1)])]);
    let u = e.into_vec();
    assert!(validate_update_v1(&u, &lim()).is_ok());
    let mut want = Encoder::new();
    want.write_raw(&[0]);
    write_deletes(&mut want, &[(7, &[(1, 1)]), (300, &[(0, 2), (4, 1)])]);
    assert_eq!(delete_set_update(&u), Ok(want.into_vec()));
    // Overlong varints and clients without ranges.
    let odd = [0, 2, 9, 0x81, 0x00, 0x80, 0x00, 0x02, 3, 0];
    assert!(validate_update_v1(&odd, &lim()).is_ok());
    assert_eq!(delete_set_update(&odd), Ok(vec![0, 2, 3, 0, 9, 1, 0, 2]));
    // Structs are dropped.
    assert_eq!(
        delete_set_update(&typed(5, 0, "abc", &[(0, 2)])),
        Ok(vec![0, 1, 5, 1, 0, 2])
    );
}
