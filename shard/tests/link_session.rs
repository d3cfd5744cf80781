//! The shard's side of a gateway link, sans-IO, on a virtual clock: frames in, calls to the shard and
//! frames back out. No sockets, no tokio: every instant is chosen by the test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::link::{self, Frame, Kind, RoomCall, LINK_TIMEOUT};
use proto::v1::RoomRequest;
use proto::{Access, DocId, RoomId, ShardId, StreamId, UserId};
use router::{Ownership, Ring};
use shard::handle::ConnId;
use shard::link::session::{LinkOutput, LinkSession, SessionConfig, REFRESH_WAIT};

fn me() -> ShardId {
    ShardId::parse("s1").expect("valid")
}

fn other() -> ShardId {
    ShardId::parse("s2").expect("valid")
}

/// This shard owns everything (a ring of one) at `version`.
fn owning(version: u64) -> Arc<Ownership> {
    Arc::new(Ownership {
        ring: Ring::uniform(version, [me()]),
        serving: true,
        draining: false,
    })
}

/// Another shard owns everything at `version`.
fn not_owning(version: u64) -> Arc<Ownership> {
    Arc::new(Ownership {
        ring: Ring::uniform(version, [other()]),
        serving: true,
        draining: false,
    })
}

struct Harness {
    now: Instant,
    core: LinkSession,
}

impl Harness {
    fn new(own: Arc<Ownership>, max_history: usize) -> Self {
        let now = Instant::now();
        let mut next = 0u64;
        let core = LinkSession::new(
            now,
            SessionConfig {
                shard: me(),
                max_history_in_flight: max_history,
            },
            own,
            Box::new(move || {
                next += 1;
                ConnId(next)
            }),
        );
        Self { now, core }
    }

    fn feed(&mut self, session: u64, frame: &Frame<'_>) -> Vec<LinkOutput> {
        self.core
            .handle_frame(self.now, &link::to_vec(session, frame));
        self.drain()
    }

    fn drain(&mut self) -> Vec<LinkOutput> {
        std::iter::from_fn(|| self.core.poll_output()).collect()
    }

    fn advance(&mut self, by: Duration) -> Vec<LinkOutput> {
        self.now += by;
        self.core.handle_timeout(self.now);
        self.drain()
    }
}

fn open(doc: &str, ring: u64) -> Frame<'static> {
    Frame::Open(link::Open {
        doc: DocId::parse(doc).expect("valid"),
        actor: UserId::parse("ada").expect("valid"),
        write: true,
        ring,
    })
}

fn room(call: RoomCall, ring: u64) -> Frame<'static> {
    Frame::Room(Box::new(link::Room {
        user: UserId::parse("ada").expect("valid"),
        access: Access::Write,
        room: RoomId::parse("team").expect("valid"),
        rid: None,
        call,
        ring,
    }))
}

fn history() -> RoomCall {
    RoomCall::History {
        before: None,
        after: None,
        limit: 10,
    }
}

/// The decoded frames an output list transmits, as (session, kind, payload).
fn transmitted(out: &[LinkOutput]) -> Vec<(u64, Kind, Vec<u8>)> {
    out.iter()
        .filter_map(|o| match o {
            LinkOutput::Transmit(bytes) => {
                let (session, f) = link::parse(bytes).expect("a frame the gateway can read");
                let payload = match &f {
                    Frame::End { code, .. } | Frame::Kill { code } => code.to_be_bytes().to_vec(),
                    Frame::Text(t) => t.to_vec(),
                    _ => Vec::new(),
                };
                Some((session, f.kind(), payload))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn pings_are_answered_and_silence_drops_the_link_with_its_sessions() {
    let mut h = Harness::new(owning(1), 4);
    let out = h.feed(1, &open("notes", 1));
    assert!(matches!(
        out[..],
        [LinkOutput::Open {
            conn: ConnId(1),
            session: 1,
            ..
        }]
    ));
    let out = h.feed(
        0,
        &room(
            RoomCall::Request {
                req: RoomRequest::Leave,
            },
            1,
        ),
    );
    assert!(matches!(
        out[..],
        [LinkOutput::Room {
            conn: ConnId(2),
            ..
        }]
    ));
    // A ping is answered on its session; any frame keeps the link alive.
    for _ in 0..5 {
        assert!(h.advance(Duration::from_secs(2)).is_empty());
        let out = h.feed(0, &Frame::Ping);
        assert_eq!(transmitted(&out), vec![(0, Kind::Pong, Vec::new())]);
    }
    // Silence just under the timeout: nothing; at the timeout: down, every session closed.
    assert!(h
        .advance(LINK_TIMEOUT - Duration::from_millis(1))
        .is_empty());
    assert!(!h.core.is_down());
    let out = h.advance(Duration::from_millis(1));
    assert!(h.core.is_down());
    assert!(out
        .iter()
        .any(|o| matches!(o, LinkOutput::Close { conn: ConnId(1) })));
    assert!(out
        .iter()
        .any(|o| matches!(o, LinkOutput::RoomClose { conn: ConnId(2) })));
    assert!(matches!(out.last(), Some(LinkOutput::Down { .. })));
    assert_eq!(h.core.poll_timeout(), None, "a dead link has no timers");
}

#[test]
fn sessions_are_routed_to_their_own_connections() {
    let mut h = Harness::new(owning(1), 4);
    h.feed(10, &open("a", 1));
    h.feed(11, &open("b", 1));
    let out = h.feed(11, &Frame::Msg(b"\x00\x00\x00"));
    assert!(
        matches!(&out[..], [LinkOutput::Message { conn: ConnId(2), bytes }] if bytes == b"\x00\x00\x00")
    );
    // A message for an unknown session goes nowhere.
    assert!(h.feed(99, &Frame::Msg(b"x")).is_empty());
    // Reopening a session replaces its connection (the old one is closed first).
    let out = h.feed(10, &open("a", 1));
    assert!(matches!(
        out[..],
        [
            LinkOutput::Close { conn: ConnId(1) },
            LinkOutput::Open {
                conn: ConnId(3),
                ..
            }
        ]
    ));
    let out = h.feed(10, &Frame::Close);
    assert!(matches!(out[..], [LinkOutput::Close { conn: ConnId(3) }]));
    assert!(
        h.feed(10, &Frame::Close).is_empty(),
        "closing twice does nothing"
    );
    // All rooms of a socket share one connection.
    let a = h.feed(
        20,
        &room(
            RoomCall::Request {
                req: RoomRequest::Leave,
            },
            1,
        ),
    );
    let b = h.feed(
        20,
        &room(
            RoomCall::Request {
                req: RoomRequest::Leave,
            },
            1,
        ),
    );
    let conn = |o: &[LinkOutput]| match o {
        [LinkOutput::Room { conn, .. }] => *conn,
        other => panic!("{other:?}"),
    };
    assert_eq!(conn(&a), conn(&b));
    let out = h.feed(20, &Frame::RoomClose);
    assert!(matches!(out[..], [LinkOutput::RoomClose { .. }]));
}

#[test]
fn keys_this_shard_does_not_own_are_refused_with_a_ring_hint() {
    let mut h = Harness::new(not_owning(5), 4);
    // The gateway's ring is not newer: refused at once.
    let out = h.feed(3, &open("notes", 5));
    let t = transmitted(&out);
    assert_eq!(t[0].1, Kind::Ring);
    assert_eq!(t[1], (3, Kind::End, 1012u16.to_be_bytes().to_vec()));
    let out = h.feed(
        4,
        &room(
            RoomCall::Request {
                req: RoomRequest::Leave,
            },
            5,
        ),
    );
    let t = transmitted(&out);
    assert_eq!(t[1].1, Kind::Text);
    let err: serde_json::Value = serde_json::from_slice(&t[1].2).expect("json");
    assert_eq!(err["code"], "unavailable");
    assert_eq!(err["room"], "team");
    assert!(!out.iter().any(|o| matches!(o, LinkOutput::Room { .. })));
}

#[test]
fn a_gateway_with_a_newer_ring_makes_the_link_wait_for_ours() {
    let mut h = Harness::new(not_owning(5), 4);
    // The gateway has ring 7: we may be behind. The frame waits, and nothing else is taken.
    let out = h.feed(3, &open("notes", 7));
    assert!(matches!(out[..], [LinkOutput::Refresh]));
    assert!(h.core.is_stalled());
    // Our view catches up: we own it now, the open goes through.
    h.core.handle_ownership(h.now, owning(7));
    let out = h.drain();
    assert!(matches!(out[..], [LinkOutput::Open { session: 3, .. }]));
    assert!(!h.core.is_stalled());
    // Behind again, and the view does not come: after the wait, the frame is judged on what we have.
    h.core.handle_ownership(h.now, not_owning(7));
    h.drain();
    let out = h.feed(4, &open("other", 9));
    assert!(matches!(out[..], [LinkOutput::Refresh]));
    assert!(h
        .advance(REFRESH_WAIT - Duration::from_millis(1))
        .is_empty());
    let out = h.advance(Duration::from_millis(1));
    assert_eq!(
        transmitted(&out).last(),
        Some(&(4, Kind::End, 1012u16.to_be_bytes().to_vec()))
    );
    assert!(!h.core.is_stalled());
}

#[test]
fn bad_frames_end_only_their_session_or_the_link() {
    let mut h = Harness::new(owning(1), 4);
    h.feed(1, &open("notes", 1));
    // A malformed OPEN: that session ends with 1002.
    let mut bytes = Vec::new();
    link::encode_parts(Kind::Open, 9, &[b"{not json"], &mut bytes);
    h.core.handle_frame(h.now, &bytes);
    let out = h.drain();
    assert_eq!(
        transmitted(&out),
        vec![(9, Kind::End, 1002u16.to_be_bytes().to_vec())]
    );
    // A malformed ROOM: that socket is closed with 1002.
    let mut bytes = Vec::new();
    link::encode_parts(Kind::Room, 8, &[b"[]"], &mut bytes);
    h.core.handle_frame(h.now, &bytes);
    let out = h.drain();
    assert_eq!(
        transmitted(&out),
        vec![(8, Kind::Kill, 1002u16.to_be_bytes().to_vec())]
    );
    assert!(!h.core.is_down(), "the link keeps serving");
    // A frame only a shard sends: the peer is confused; the link goes, with its sessions.
    let out = h.feed(1, &Frame::Text(b"{}"));
    assert!(h.core.is_down());
    assert!(out
        .iter()
        .any(|o| matches!(o, LinkOutput::Close { conn: ConnId(1) })));
    // An unknown kind or an impossible length is fatal too.
    let mut h = Harness::new(owning(1), 4);
    let mut bytes = Vec::new();
    link::encode_parts(Kind::Ping, 0, &[], &mut bytes);
    bytes[4] = 99;
    h.core.handle_frame(h.now, &bytes);
    assert!(h.core.is_down());
    let mut h = Harness::new(owning(1), 4);
    let e = link::check(&u32::MAX.to_be_bytes(), link::MAX_FRAME).expect_err("impossible");
    assert!(e.is_fatal());
    h.core.handle_error(&e);
    assert!(h.core.is_down());
}

#[test]
fn history_reads_are_bounded_per_link() {
    let mut h = Harness::new(owning(1), 2);
    let mut permits = Vec::new();
    for s in 0..2 {
        let out = h.feed(s, &room(history(), 1));
        match out.into_iter().next() {
            Some(LinkOutput::Room { permit, .. }) => permits.push(permit.expect("a slot")),
            other => panic!("{other:?}"),
        }
    }
    // The third waits for nobody: it is refused with `limit`.
    let out = h.feed(2, &room(history(), 1));
    let t = transmitted(&out);
    let err: serde_json::Value = serde_json::from_slice(&t[0].2).expect("json");
    assert_eq!(err["code"], "limit");
    // A reply queued (the permit dropped) frees a slot.
    permits.pop();
    let out = h.feed(2, &room(history(), 1));
    assert!(matches!(
        &out[..],
        [LinkOutput::Room {
            permit: Some(_),
            ..
        }]
    ));
}

#[test]
fn ownership_checks_follow_the_published_view() {
    let mut h = Harness::new(owning(1), 2);
    let key = StreamId::Doc(DocId::parse("notes").expect("valid"));
    assert!(owning(1).owns(&me(), &key));
    // Not serving (lease lost, draining): nothing is owned, whatever the ring says.
    h.core.handle_ownership(
        h.now,
        Arc::new(Ownership {
            ring: Ring::uniform(2, [me()]),
            serving: false,
            draining: true,
        }),
    );
    let out = h.feed(1, &open("notes", 2));
    assert_eq!(
        transmitted(&out).last(),
        Some(&(1, Kind::End, 1012u16.to_be_bytes().to_vec()))
    );
}
