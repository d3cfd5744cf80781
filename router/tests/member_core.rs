//! A shard's membership decisions, sans-IO, on a virtual clock: when to renew its lease and what the
//! answers mean, what it serves after each ring view, when a drain is over, when it must stop.

use std::time::{Duration, Instant};

use proto::{DocId, ShardId, StreamId};
use router::membership::lease::{LeaseEvent, LeaseKeeper};
use router::membership::member::{Exit, MemberOutput, ShardMember, DRAINED_AFTER};
use router::membership::{Lease, View};
use router::Ring;

fn id(s: &str) -> ShardId {
    ShardId::parse(s).expect("valid")
}

fn view(version: u64, ring: &[&str], draining: &[&str]) -> View {
    View {
        ring: Ring::uniform(version, ring.iter().map(|s| id(s))),
        members: Vec::new(),
        draining: draining.iter().map(|s| id(s)).collect(),
    }
}

fn drain(m: &mut ShardMember) -> Vec<MemberOutput> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

#[test]
fn a_lease_is_renewed_every_third_and_lost_when_renewals_stall() {
    let lease = Duration::from_millis(1500);
    let t0 = Instant::now();
    let mut k = LeaseKeeper::new(t0, lease);
    // Due at once, then every 500 ms.
    assert_eq!(k.poll_timeout(), Some(t0));
    let sent = k.handle_timeout(t0).expect("due");
    assert_eq!(k.handle_timeout(t0), None, "not twice");
    assert_eq!(k.handle_renewed::<()>(sent, Ok(Lease::Held)), None);
    assert_eq!(k.poll_timeout(), Some(t0 + lease / 3));
    // Redis does not answer for a while: nothing is decided on a missing answer.
    let mut now = t0;
    for _ in 0..3 {
        now += lease / 3;
        let sent = k.handle_timeout(now).expect("due");
        assert_eq!(k.handle_renewed(sent, Err("timeout")), None);
    }
    // The next renewal succeeds, but a whole lease passed since the last one that did: the lease
    // may have lapsed meanwhile, so others may own our keys.
    now += lease / 3;
    let sent = k.handle_timeout(now).expect("due");
    assert_eq!(
        k.handle_renewed::<()>(sent, Ok(Lease::Held)),
        Some(LeaseEvent::Lost)
    );
    // A process paused longer than the lease: the same.
    now += lease * 2;
    let sent = k.handle_timeout(now).expect("due at once after the pause");
    assert_eq!(
        k.handle_renewed::<()>(sent, Ok(Lease::Held)),
        Some(LeaseEvent::Lost)
    );
    assert_eq!(
        k.poll_timeout(),
        Some(now + lease / 3),
        "no burst of renewals"
    );
    // Redis forgot the lease: taken afresh, but lost meanwhile.
    now += lease / 3;
    let sent = k.handle_timeout(now).expect("due");
    assert_eq!(
        k.handle_renewed::<()>(sent, Ok(Lease::Taken)),
        Some(LeaseEvent::Lost)
    );
    // Another process has our id: stop renewing.
    now += lease / 3;
    let sent = k.handle_timeout(now).expect("due");
    assert_eq!(
        k.handle_renewed::<()>(sent, Ok(Lease::Conflict)),
        Some(LeaseEvent::Replaced)
    );
    assert_eq!(k.poll_timeout(), None);
    assert_eq!(k.handle_timeout(now + lease), None);
}

#[test]
fn ring_views_publish_ownership_and_give_up_moved_keys() {
    let t0 = Instant::now();
    let poll = Duration::from_millis(100);
    let mut m = ShardMember::new(t0, id("s1"), poll);
    // The ring is read at once, then every poll.
    assert_eq!(m.poll_timeout(), Some(t0));
    m.handle_timeout(t0);
    assert!(matches!(drain(&mut m)[..], [MemberOutput::Sync]));
    assert_eq!(m.poll_timeout(), Some(t0 + poll));
    m.handle_view(t0, &view(3, &["s1", "s2"], &[]));
    let out = drain(&mut m);
    match &out[..] {
        [MemberOutput::Publish(p), MemberOutput::Retain(r)] => {
            assert!(p.serving && !p.draining);
            assert_eq!(p.ring.version(), 3);
            assert_eq!(p, r);
        }
        other => panic!("{other:?}"),
    }
    // The same view again: nothing to do.
    m.handle_view(t0 + poll, &view(3, &["s1", "s2"], &[]));
    assert!(drain(&mut m).is_empty());
    // Redis unreachable: keep serving what we hold.
    m.handle_sync_failed(t0 + poll);
    assert!(drain(&mut m).is_empty());
    assert!(m.ownership().serving);
    // A gateway with a newer ring asks for a refresh: read now.
    m.handle_refresh(t0 + poll + Duration::from_millis(10));
    assert!(matches!(drain(&mut m)[..], [MemberOutput::Sync]));
    // A new member: the ring changes, keys that moved are given up.
    m.handle_view(t0 + poll * 2, &view(4, &["s1", "s2", "s3"], &[]));
    let out = drain(&mut m);
    assert!(matches!(
        out[..],
        [MemberOutput::Publish(_), MemberOutput::Retain(_)]
    ));
    let own = m.ownership();
    let keys: Vec<StreamId> = (0..300)
        .map(|i| StreamId::Doc(DocId::parse(&format!("d{i}")).expect("valid")))
        .collect();
    let mine = keys.iter().filter(|k| own.owns(&id("s1"), k)).count();
    assert!(
        (50..150).contains(&mine),
        "about a third of the keys: {mine}"
    );
}

#[test]
fn a_lost_lease_drops_every_key_at_once_and_a_replaced_one_stops() {
    let t0 = Instant::now();
    let mut m = ShardMember::new(t0, id("s1"), Duration::from_millis(100));
    m.handle_view(t0, &view(3, &["s1"], &[]));
    drain(&mut m);
    m.handle_lease(t0, LeaseEvent::Lost);
    match &drain(&mut m)[..] {
        [MemberOutput::Publish(p), MemberOutput::Retain(r), MemberOutput::Sync] => {
            assert!(
                !p.serving && !r.serving,
                "nothing is served, everything given up"
            );
        }
        other => panic!("{other:?}"),
    }
    // Back on the ring (same version): serving again.
    m.handle_view(t0, &view(3, &["s1"], &[]));
    let out = drain(&mut m);
    assert!(matches!(&out[..], [MemberOutput::Publish(p), MemberOutput::Retain(_)] if p.serving));
    m.handle_lease(t0, LeaseEvent::Replaced);
    let out = drain(&mut m);
    assert!(matches!(
        out.last(),
        Some(MemberOutput::Exit(Exit::Replaced))
    ));
    assert_eq!(m.poll_timeout(), None);
    m.handle_signal();
    assert!(drain(&mut m).is_empty(), "one exit");
}

#[test]
fn a_drain_ends_once_the_shard_held_nothing_for_a_moment() {
    let t0 = Instant::now();
    let mut m = ShardMember::new(t0, id("s1"), Duration::from_millis(100));
    m.handle_view(t0, &view(3, &["s1", "s2"], &[]));
    drain(&mut m);
    // Marked draining: out of the ring (the view's ring no longer has it), serving nothing.
    m.handle_view(t0, &view(4, &["s2"], &["s1"]));
    let out = drain(&mut m);
    assert!(
        matches!(&out[..], [MemberOutput::Publish(p), MemberOutput::Retain(_), MemberOutput::CheckHoldings] if !p.serving && p.draining),
        "{out:?}"
    );
    // Still holding keys (clients are moving): not done.
    m.handle_holdings(t0, false);
    assert!(drain(&mut m).is_empty());
    let mut now = t0 + Duration::from_millis(100);
    m.handle_view(now, &view(4, &["s2"], &["s1"]));
    assert!(matches!(drain(&mut m)[..], [MemberOutput::CheckHoldings]));
    m.handle_holdings(now, true);
    assert!(drain(&mut m).is_empty(), "empty for a moment is not enough");
    // A late open from a gateway on an older ring: holding again, the wait starts over.
    now += Duration::from_millis(300);
    m.handle_holdings(now, false);
    now += Duration::from_millis(100);
    m.handle_holdings(now, true);
    now += DRAINED_AFTER - Duration::from_millis(1);
    m.handle_holdings(now, true);
    assert!(drain(&mut m).is_empty());
    now += Duration::from_millis(1);
    m.handle_holdings(now, true);
    assert!(matches!(
        drain(&mut m)[..],
        [MemberOutput::Exit(Exit::Drained)]
    ));
}

#[test]
fn an_undrain_cancels_the_drain() {
    let t0 = Instant::now();
    let mut m = ShardMember::new(t0, id("s1"), Duration::from_millis(100));
    m.handle_view(t0, &view(4, &["s2"], &["s1"]));
    drain(&mut m);
    m.handle_holdings(t0, true);
    m.handle_view(t0, &view(5, &["s1", "s2"], &[]));
    let out = drain(&mut m);
    assert!(
        matches!(&out[..], [MemberOutput::Publish(p), MemberOutput::Retain(_)] if p.serving && !p.draining)
    );
    // A holdings answer that arrives late changes nothing.
    m.handle_holdings(t0 + Duration::from_secs(5), true);
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.exit(), None);
}
