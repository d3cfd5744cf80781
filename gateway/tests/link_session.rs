//! The gateway's side of a link to a shard process, sans-IO, on a virtual clock; and both sides of a
//! link talking to each other with the test carrying the bytes (pings, pongs, silence).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::link::session::{Carries, ClientOutput, ClientSession};
use proto::link::{self, Frame, Kind, LINK_TIMEOUT, PING_EVERY};
use proto::{DocId, RoomId, ShardId, StreamId};
use router::{Ownership, Ring};
use shard::handle::ConnId;
use shard::link::session::{LinkOutput, LinkSession, SessionConfig};

/// Sinks are plain numbers here: the test only checks which client each output is for.
type Sink = u32;

fn doc(s: &str) -> DocId {
    DocId::parse(s).expect("valid")
}

fn room(s: &str) -> RoomId {
    RoomId::parse(s).expect("valid")
}

fn drain(c: &mut ClientSession<Sink>) -> Vec<ClientOutput<Sink>> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn kinds(out: &[ClientOutput<Sink>]) -> Vec<(u64, Kind)> {
    out.iter()
        .filter_map(|o| match o {
            ClientOutput::Transmit(b) => {
                let (s, f) = link::parse(b).expect("a frame the shard can read");
                Some((s, f.kind()))
            }
            _ => None,
        })
        .collect()
}

fn connected(now: Instant) -> ClientSession<Sink> {
    let mut c = ClientSession::new();
    c.connected(now);
    c
}

#[test]
fn the_gateway_pings_every_two_seconds_and_drops_a_silent_link() {
    let t0 = Instant::now();
    let mut c = connected(t0);
    assert!(c.register(1, 10, Carries::Doc(doc("a"))));
    assert!(c.register(2, 20, Carries::Rooms(BTreeSet::from([room("x")]))));
    assert!(c.register(3, 30, Carries::Rooms(BTreeSet::new())));
    assert_eq!(c.poll_timeout(), Some(t0 + PING_EVERY));
    c.handle_timeout(t0 + PING_EVERY);
    assert_eq!(kinds(&drain(&mut c)), vec![(0, Kind::Ping)]);
    // The shard answers nothing: at the timeout the link is dead and its sessions end.
    c.handle_timeout(t0 + 2 * PING_EVERY);
    assert_eq!(kinds(&drain(&mut c)), vec![(0, Kind::Ping)]);
    c.handle_timeout(t0 + LINK_TIMEOUT);
    let out = drain(&mut c);
    assert!(out.iter().any(|o| matches!(
        o,
        ClientOutput::End {
            sink: 10,
            code: 1012,
            ..
        }
    )));
    assert!(out.iter().any(|o| matches!(
        o,
        ClientOutput::Kill {
            sink: 20,
            code: 1012,
            ..
        }
    )));
    assert!(
        !out.iter()
            .any(|o| matches!(o, ClientOutput::Kill { sink: 30, .. })),
        "a socket with no room on this shard keeps going"
    );
    assert!(matches!(out.last(), Some(ClientOutput::Dead { .. })));
    assert!(!c.is_connected());
    assert!(
        !c.register(4, 40, Carries::Doc(doc("b"))),
        "no sessions on a dead link"
    );
}

#[test]
fn two_sessions_keep_each_other_alive_until_one_pauses() {
    let t0 = Instant::now();
    let mut gw = connected(t0);
    let own = Arc::new(Ownership {
        ring: Ring::uniform(1, [ShardId::parse("s1").expect("valid")]),
        serving: true,
        draining: false,
    });
    let mut next = 0;
    let mut sh = LinkSession::new(
        t0,
        SessionConfig {
            shard: ShardId::parse("s1").expect("valid"),
            max_history_in_flight: 4,
        },
        own,
        Box::new(move || {
            next += 1;
            ConnId(next)
        }),
    );
    let mut now = t0;
    let mut pings = 0;
    let mut shard_paused = false;
    let mut gateway_dead_at = None;
    let mut shard_down_at = None;
    while now < t0 + Duration::from_secs(40) {
        now += Duration::from_millis(100);
        if now >= t0 + Duration::from_secs(20) {
            // From here the shard process is paused (SIGSTOP): it reads nothing, answers nothing.
            shard_paused = true;
        }
        gw.handle_timeout(now);
        for o in drain(&mut gw) {
            match o {
                ClientOutput::Transmit(bytes) if !shard_paused => {
                    pings += 1;
                    sh.handle_frame(now, &bytes);
                }
                ClientOutput::Dead { .. } => {
                    gateway_dead_at.get_or_insert(now);
                }
                _ => {}
            }
        }
        if !shard_paused {
            sh.handle_timeout(now);
        }
        while let Some(o) = sh.poll_output() {
            match o {
                LinkOutput::Transmit(bytes) if !shard_paused => gw.handle_frame(now, &bytes),
                LinkOutput::Down { .. } => {
                    shard_down_at.get_or_insert(now);
                }
                _ => {}
            }
        }
    }
    assert_eq!(pings, 9, "a ping every 2 s until the pause at 20 s");
    assert!(
        shard_down_at.is_none(),
        "the shard was never silent while it ran"
    );
    let dead = gateway_dead_at.expect("the gateway drops the paused shard's link");
    // The last pong arrived at 20 s at the latest; the link is dropped one timeout later.
    assert!(dead >= t0 + Duration::from_secs(20) + LINK_TIMEOUT - PING_EVERY);
    assert!(dead <= t0 + Duration::from_secs(20) + LINK_TIMEOUT);
    // A running shard whose gateway went silent drops the link too.
    sh.handle_timeout(t0 + Duration::from_secs(40));
    while sh.poll_output().is_some() {}
    assert!(sh.is_down());
}

#[test]
fn a_ring_change_ends_the_sessions_of_moved_keys() {
    let t0 = Instant::now();
    let mut c = connected(t0);
    c.register(1, 10, Carries::Doc(doc("stay")));
    c.register(2, 20, Carries::Doc(doc("move")));
    c.register(
        3,
        30,
        Carries::Rooms(BTreeSet::from([room("here"), room("gone")])),
    );
    c.evict(|k| match k {
        StreamId::Doc(d) => d.as_str() == "stay",
        StreamId::Room(r) => r.as_str() == "here",
    });
    let out = drain(&mut c);
    assert!(out.iter().any(|o| matches!(
        o,
        ClientOutput::End {
            sink: 20,
            code: 1012,
            ..
        }
    )));
    assert_eq!(
        kinds(&out),
        vec![(2, Kind::Close)],
        "the shard is told the session left"
    );
    let moved: Vec<&RoomId> = out
        .iter()
        .filter_map(|o| match o {
            ClientOutput::Moved { sink: 30, room } => Some(room),
            _ => None,
        })
        .collect();
    assert_eq!(moved, vec![&room("gone")]);
    assert_eq!(
        c.sessions(),
        2,
        "the document that stays and the socket with a room left"
    );
    // Evicting again changes nothing.
    c.evict(|k| {
        matches!(k, StreamId::Doc(d) if d.as_str() == "stay")
            || matches!(k, StreamId::Room(r) if r.as_str() == "here")
    });
    assert!(drain(&mut c).is_empty());
}

#[test]
fn frames_from_the_shard_reach_their_session_and_slow_consumers_are_closed() {
    let t0 = Instant::now();
    let mut c = connected(t0);
    c.register(1, 10, Carries::Doc(doc("a")));
    c.register(2, 20, Carries::Rooms(BTreeSet::new()));
    c.handle_frame(t0, &link::to_vec(1, &Frame::Binary(b"\x00\x01")));
    c.handle_frame(t0, &link::to_vec(2, &Frame::Text(b"{}")));
    c.handle_frame(t0, &link::to_vec(7, &Frame::Text(b"{}")));
    let out = drain(&mut c);
    assert!(
        matches!(
            &out[..],
            [
                ClientOutput::Deliver {
                    session: 1,
                    sink: 10,
                    text: false,
                    ..
                },
                ClientOutput::Deliver {
                    session: 2,
                    sink: 20,
                    text: true,
                    ..
                },
            ]
        ),
        "{out:?}"
    );
    // The client's queue is full: it is closed (1008) and the shard told.
    c.handle_slow_consumer(2);
    let out = drain(&mut c);
    assert!(matches!(
        out[0],
        ClientOutput::Kill {
            sink: 20,
            code: 1008,
            ..
        }
    ));
    assert_eq!(kinds(&out), vec![(2, Kind::RoomClose)]);
    // The shard ends a session, or closes a socket.
    c.register(3, 30, Carries::Doc(doc("b")));
    c.handle_frame(
        t0,
        &link::to_vec(
            1,
            &Frame::End {
                code: 1013,
                reason: "resync".into(),
            },
        ),
    );
    c.handle_frame(t0, &link::to_vec(3, &Frame::Kill { code: 1008 }));
    let out = drain(&mut c);
    assert!(
        matches!(&out[0], ClientOutput::End { sink: 10, code: 1013, reason } if reason == "resync")
    );
    assert!(matches!(
        out[1],
        ClientOutput::Kill {
            sink: 30,
            code: 1008,
            ..
        }
    ));
    assert_eq!(c.sessions(), 0);
}

#[test]
fn frames_a_gateway_cannot_read_drop_the_link() {
    let t0 = Instant::now();
    let mut c = connected(t0);
    c.register(1, 10, Carries::Doc(doc("a")));
    // A ring hint is only a hint: even an unreadable payload means "refresh".
    let mut hint = Vec::new();
    link::encode_parts(Kind::Ring, 0, &[b"??"], &mut hint);
    c.handle_frame(t0, &hint);
    assert!(matches!(drain(&mut c)[..], [ClientOutput::RingHint]));
    // A frame only a gateway sends means a confused peer.
    c.handle_frame(t0, &link::to_vec(0, &Frame::RoomClose));
    let out = drain(&mut c);
    assert!(out
        .iter()
        .any(|o| matches!(o, ClientOutput::End { sink: 10, .. })));
    assert!(matches!(out.last(), Some(ClientOutput::Dead { .. })));
}

#[test]
fn a_stopped_link_ends_everything_it_carries() {
    let t0 = Instant::now();
    let mut c = connected(t0);
    c.register(1, 10, Carries::Doc(doc("a")));
    c.register(2, 20, Carries::Rooms(BTreeSet::from([room("x")])));
    c.left_room(2, &room("x"));
    c.stop();
    let out = drain(&mut c);
    assert!(
        matches!(&out[..], [ClientOutput::End { sink: 10, code: 1012, reason }] if reason.contains("left the cluster")),
        "{out:?}"
    );
    assert_eq!(c.poll_timeout(), None);
}
