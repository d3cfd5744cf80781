//! One `/v1` socket's decisions, sans-IO: frames in, actions out, no sockets and no shards (the
//! owners are fakes), so every refusal, limit and routing step is checked exactly.

use std::collections::BTreeMap;

use gateway::auth::Identity;
use gateway::v1::session::{Action, Failed, Limits, Owner, Session};
use proto::link::RoomCall;
use proto::v1::RoomRequest;
use proto::{Access, ShardId, UserId};
use serde_json::{json, Value};
use shard::handle::ConnId;

/// A fake owner: a shard id plus which "link" reaches it.
#[derive(Debug, Clone, PartialEq)]
struct Fake {
    id: ShardId,
    link: u32,
}

impl Owner for Fake {
    fn id(&self) -> &ShardId {
        &self.id
    }
    fn same(&self, other: &Self) -> bool {
        self.id == other.id && self.link == other.link
    }
}

fn fake(id: &str, link: u32) -> Fake {
    Fake {
        id: ShardId::parse(id).expect("valid"),
        link,
    }
}

const LIMITS: Limits = Limits {
    max_docs: 2,
    max_rooms: 2,
    max_history_in_flight: 2,
};

fn session(identity: Identity) -> Session<Fake> {
    let mut next = 100;
    Session::new(
        identity,
        ConnId(7),
        LIMITS,
        Box::new(move || {
            next += 1;
            ConnId(next)
        }),
    )
}

fn anonymous() -> Session<Fake> {
    session(Identity::anonymous())
}

fn drain(s: &mut Session<Fake>) -> Vec<Action<Fake>> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

/// Sends a text frame; returns the actions.
fn text(s: &mut Session<Fake>, v: Value) -> Vec<Action<Fake>> {
    s.handle_text(&serde_json::to_vec(&v).expect("json"));
    drain(s)
}

/// The single reply of `actions`, as JSON.
fn reply(actions: &[Action<Fake>]) -> Value {
    match actions {
        [Action::Reply(b)] => serde_json::from_slice(b).expect("json reply"),
        other => panic!("expected one reply, got {other:?}"),
    }
}

/// Sends a request that needs routing, answers the route with `owner`, returns what follows.
fn routed(s: &mut Session<Fake>, v: Value, owner: Option<Fake>) -> Vec<Action<Fake>> {
    let out = text(s, v);
    assert!(
        matches!(out.last(), Some(Action::Route { .. })),
        "the request is routed: {out:?}"
    );
    assert!(s.is_routing());
    s.handle_routed(owner);
    drain(s)
}

#[test]
fn malformed_frames_get_bad_frame_and_change_nothing() {
    let mut s = anonymous();
    for raw in [
        &b"not json"[..],
        b"[1,2]",
        b"\"x\"",
        b"{}",
        b"{\"t\":5}",
        // serde would read a tagged enum from a sequence; the protocol takes objects only.
        b"[\"ping\"]",
        b" [\"doc.open\",null,\"notes\"]",
    ] {
        s.handle_text(raw);
        let r = reply(&drain(&mut s));
        assert_eq!(r["t"], "error");
        assert_eq!(r["code"], "bad_frame", "{}", String::from_utf8_lossy(raw));
        assert_eq!(r["id"], Value::Null);
    }
    let r = reply(&text(&mut s, json!({"t":"nope","id":"q"})));
    assert_eq!(
        (r["code"].as_str(), r["id"].as_str()),
        (Some("bad_frame"), Some("q"))
    );
    assert_eq!(r["message"], "unknown frame type");
    // A mistyped or oversized id: refused, and not echoed.
    for id in [json!(5), json!(""), json!("x".repeat(129))] {
        let r = reply(&text(&mut s, json!({"t":"ping","id":id})));
        assert_eq!(r["code"], "bad_frame");
        assert_eq!(r["id"], Value::Null);
    }
    // A missing or mistyped field names the field; the room is echoed.
    let r = reply(&text(&mut s, json!({"t":"send","id":"1","room":"team"})));
    assert_eq!(r["code"], "bad_frame");
    assert!(
        r["message"].as_str().unwrap_or_default().contains("text"),
        "{r}"
    );
    assert_eq!(r["room"], "team");
    let r = reply(&text(
        &mut s,
        json!({"t":"typing","room":"team","typing":"yes"}),
    ));
    assert_eq!(r["code"], "bad_frame");
    let r = reply(&text(
        &mut s,
        json!({"t":"history","room":"team","limit":0}),
    ));
    assert_eq!(r["code"], "bad_frame");
    // An id outside the allow-list is `invalid_id`, whatever else is wrong.
    let r = reply(&text(&mut s, json!({"t":"join","id":"2","room":"a/b"})));
    assert_eq!(
        (r["code"].as_str(), r["room"].as_str()),
        (Some("invalid_id"), Some("a/b"))
    );
    let r = reply(&text(&mut s, json!({"t":"doc.open","doc":".hidden"})));
    assert_eq!(
        (r["code"].as_str(), r["doc"].as_str()),
        (Some("invalid_id"), Some(".hidden"))
    );
    // Unknown fields are ignored (versioning rule): a ping with extras is a ping.
    let r = reply(&text(&mut s, json!({"t":"ping","id":"p","future":true})));
    assert_eq!(
        (r["t"].as_str(), r["id"].as_str()),
        (Some("pong"), Some("p"))
    );
    assert_eq!((s.open_docs(), s.joined_rooms()), (0, 0));
}

#[test]
fn binary_frames_need_an_open_document() {
    let mut s = anonymous();
    s.handle_binary(vec![0x85]);
    let r = reply(&drain(&mut s));
    assert_eq!(r["code"], "bad_frame");
    let mut frame = proto::v1::doc_prefix(&proto::DocId::parse("notes").expect("valid"));
    frame.extend_from_slice(&[0, 2, 0]);
    s.handle_binary(frame.clone());
    let r = reply(&drain(&mut s));
    assert_eq!(
        (r["code"].as_str(), r["doc"].as_str()),
        (Some("unknown_doc"), Some("notes"))
    );
    // Opened: the message goes to the document's channel on its owner.
    let out = routed(
        &mut s,
        json!({"t":"doc.open","id":"1","doc":"notes"}),
        Some(fake("s1", 1)),
    );
    let channel = match &out[..] {
        [Action::Reply(r), Action::Open {
            channel,
            can_write: true,
            ..
        }] => {
            let r: Value = serde_json::from_slice(r).expect("json");
            assert_eq!(
                (r["t"].as_str(), r["access"].as_str()),
                (Some("doc.opened"), Some("write"))
            );
            *channel
        }
        other => panic!("{other:?}"),
    };
    s.handle_binary(frame);
    match &drain(&mut s)[..] {
        [Action::Message {
            channel: c, bytes, ..
        }] => {
            assert_eq!((*c, bytes.as_slice()), (channel, &[0u8, 2, 0][..]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn documents_per_socket_are_limited_and_reopening_restarts_the_channel() {
    let mut s = anonymous();
    let owner = Some(fake("s1", 1));
    for d in ["a", "b"] {
        let out = routed(&mut s, json!({"t":"doc.open","doc":d}), owner.clone());
        assert!(matches!(out.last(), Some(Action::Open { .. })));
    }
    // A third is refused (after routing, as before the sans-IO session).
    let r = reply(&routed(
        &mut s,
        json!({"t":"doc.open","id":"3","doc":"c"}),
        owner.clone(),
    ));
    assert_eq!(
        (r["code"].as_str(), r["id"].as_str()),
        (Some("limit"), Some("3"))
    );
    // Reopening one is not a new document: the old channel closes, a new one opens.
    let out = routed(&mut s, json!({"t":"doc.open","doc":"a"}), owner.clone());
    assert!(
        matches!(
            &out[..],
            [Action::Close { .. }, Action::Reply(_), Action::Open { .. }]
        ),
        "{out:?}"
    );
    // Closing frees the slot.
    let out = text(&mut s, json!({"t":"doc.close","id":"4","doc":"b"}));
    assert!(matches!(&out[..], [Action::Close { .. }, Action::Reply(_)]));
    let out = routed(&mut s, json!({"t":"doc.open","doc":"c"}), owner);
    assert!(matches!(out.last(), Some(Action::Open { .. })));
    let r = reply(&text(&mut s, json!({"t":"doc.close","doc":"zzz"})));
    assert_eq!(r["code"], "unknown_doc");
}

#[test]
fn rooms_per_socket_are_limited_and_requests_need_a_join() {
    let mut s = anonymous();
    let r = reply(&text(
        &mut s,
        json!({"t":"send","id":"m","room":"x","text":"hi"}),
    ));
    assert_eq!(r["code"], "unknown_room");
    let owner = Some(fake("s1", 1));
    for room in ["x", "y"] {
        let out = routed(
            &mut s,
            json!({"t":"join","id":room,"room":room}),
            owner.clone(),
        );
        assert!(matches!(
            &out[..],
            [Action::Room {
                call: RoomCall::Request {
                    req: RoomRequest::Join { .. }
                },
                ..
            }]
        ));
    }
    let r = reply(&routed(
        &mut s,
        json!({"t":"join","room":"z"}),
        owner.clone(),
    ));
    assert_eq!(r["code"], "limit");
    // Joining one again is no new room (and is routed afresh).
    let out = routed(&mut s, json!({"t":"join","room":"x"}), owner.clone());
    assert!(matches!(out[..], [Action::Room { .. }]));
    // A send goes to the joined room's owner, no routing.
    let out = text(&mut s, json!({"t":"send","id":"m1","room":"x","text":"hi"}));
    assert!(
        matches!(&out[..], [Action::Room { call: RoomCall::Request { req: RoomRequest::Send { text } }, .. }] if text == "hi")
    );
    // Leaving frees the slot.
    let out = text(&mut s, json!({"t":"leave","room":"y"}));
    assert!(matches!(out[..], [Action::Room { .. }]));
    let out = routed(&mut s, json!({"t":"join","room":"z"}), owner);
    assert!(matches!(out[..], [Action::Room { .. }]));
    assert_eq!(s.joined_rooms(), 2);
}

#[test]
fn grants_are_checked_per_document_and_room() {
    let docs = BTreeMap::from([("notes-*".to_owned(), Access::Read)]);
    let rooms = BTreeMap::from([("team".to_owned(), Access::Write)]);
    let mut s = session(Identity::new(
        UserId::parse("ada").expect("valid"),
        docs,
        rooms,
    ));
    let r = reply(&text(&mut s, json!({"t":"doc.open","doc":"secret"})));
    assert_eq!(
        (r["code"].as_str(), r["doc"].as_str()),
        (Some("forbidden"), Some("secret"))
    );
    let out = routed(
        &mut s,
        json!({"t":"doc.open","doc":"notes-1"}),
        Some(fake("s1", 1)),
    );
    assert!(
        matches!(
            out.last(),
            Some(Action::Open {
                can_write: false,
                ..
            })
        ),
        "read grant: read-only channel"
    );
    let r = reply(&text(&mut s, json!({"t":"join","room":"other"})));
    assert_eq!(r["code"], "forbidden");
    let r = reply(&text(&mut s, json!({"t":"history","room":"other"})));
    assert_eq!(r["code"], "forbidden");
    let out = routed(
        &mut s,
        json!({"t":"join","room":"team"}),
        Some(fake("s1", 1)),
    );
    assert!(matches!(
        out[..],
        [Action::Room {
            access: Access::Write,
            ..
        }]
    ));
}

#[test]
fn history_reads_in_flight_are_limited_per_socket() {
    let mut s = anonymous();
    let owner = Some(fake("s1", 1));
    let r = reply(&text(
        &mut s,
        json!({"t":"history","room":"x","before":5,"after":1}),
    ));
    assert_eq!(r["code"], "bad_request");
    let mut held = Vec::new();
    for i in 0..2 {
        let out = routed(
            &mut s,
            json!({"t":"history","id":format!("h{i}"),"room":"x"}),
            owner.clone(),
        );
        match out.into_iter().next() {
            Some(Action::Room {
                call: RoomCall::History { limit: 50, .. },
                permit,
                ..
            }) => held.push(permit.expect("a slot")),
            other => panic!("{other:?}"),
        }
    }
    let out = routed(
        &mut s,
        json!({"t":"history","id":"h2","room":"x"}),
        owner.clone(),
    );
    let r = reply(&out);
    assert_eq!(
        (r["code"].as_str(), r["id"].as_str()),
        (Some("limit"), Some("h2"))
    );
    // A reply queued (its permit dropped) frees a slot.
    held.clear();
    let out = routed(&mut s, json!({"t":"history","room":"x","limit":3}), owner);
    assert!(matches!(
        out[..],
        [Action::Room {
            call: RoomCall::History { limit: 3, .. },
            ..
        }]
    ));
}

#[test]
fn unreachable_owners_and_failed_calls_are_reported_and_undone() {
    let mut s = anonymous();
    let r = reply(&routed(
        &mut s,
        json!({"t":"join","id":"j","room":"x"}),
        None,
    ));
    assert_eq!(
        (r["code"].as_str(), r["id"].as_str()),
        (Some("unavailable"), Some("j"))
    );
    assert_eq!(s.joined_rooms(), 0);
    let r = reply(&routed(&mut s, json!({"t":"doc.open","doc":"d"}), None));
    assert_eq!(r["code"], "unavailable");
    // The owner's call fails: the join is forgotten, and the client told.
    routed(
        &mut s,
        json!({"t":"join","id":"j","room":"x"}),
        Some(fake("s1", 1)),
    );
    assert_eq!(s.joined_rooms(), 1);
    s.handle_unavailable(Failed::Room {
        room: proto::RoomId::parse("x").expect("valid"),
        rid: None,
    });
    let r = reply(&drain(&mut s));
    assert_eq!(r["code"], "unavailable");
    assert_eq!(s.joined_rooms(), 0);
    let out = routed(
        &mut s,
        json!({"t":"doc.open","id":"o","doc":"d"}),
        Some(fake("s1", 1)),
    );
    let Some(Action::Open { failed, .. }) = out.into_iter().last() else {
        panic!("an open");
    };
    s.handle_unavailable(failed);
    let r = reply(&drain(&mut s));
    assert_eq!(
        (r["code"].as_str(), r["id"].as_str()),
        (Some("unavailable"), Some("o"))
    );
    assert_eq!(s.open_docs(), 0);
}

#[test]
fn a_replaced_link_is_told_the_socket_left_and_closing_releases_everything() {
    let mut s = anonymous();
    routed(&mut s, json!({"t":"join","room":"x"}), Some(fake("s1", 1)));
    routed(
        &mut s,
        json!({"t":"doc.open","doc":"d"}),
        Some(fake("s2", 1)),
    );
    // The link to s1 was replaced (a reconnect): joining through the new one tells the old one.
    let out = routed(&mut s, json!({"t":"join","room":"y"}), Some(fake("s1", 2)));
    assert!(
        matches!(&out[..], [Action::RoomClose { shard, conn: ConnId(7) }, Action::Room { .. }] if shard.link == 1),
        "{out:?}"
    );
    s.close();
    let out = drain(&mut s);
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Close { shard, .. } if shard.id.as_str() == "s2")));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::RoomClose { shard, .. } if shard.link == 2)));
    assert_eq!(out.len(), 2);
    // Closed: nothing more happens, and closing twice tells nobody twice.
    s.close();
    assert!(text(&mut s, json!({"t":"ping"})).is_empty());
}

#[test]
fn the_first_frame_is_hello() {
    let mut s = session(Identity::new(
        UserId::parse("ada").expect("valid"),
        BTreeMap::new(),
        BTreeMap::new(),
    ));
    s.hello(1 << 20);
    let r = reply(&drain(&mut s));
    assert_eq!(
        r,
        json!({"t":"hello","v":1,"user":"ada","limits":{"max_message_bytes":1048576,"max_docs":2,"max_rooms":2}})
    );
}

#[test]
fn a_history_read_without_a_grant_is_forbidden_whatever_else_is_wrong() {
    let rooms = BTreeMap::from([("team".to_owned(), Access::Read)]);
    let mut s = session(Identity::new(
        UserId::parse("ada").expect("valid"),
        BTreeMap::new(),
        rooms,
    ));
    let r = reply(&text(
        &mut s,
        json!({"t":"history","id":"h","room":"other","limit":0}),
    ));
    assert_eq!(
        (r["code"].as_str(), r["id"].as_str(), r["room"].as_str()),
        (Some("forbidden"), Some("h"), Some("other"))
    );
    let r = reply(&text(
        &mut s,
        json!({"t":"history","room":"team","limit":0}),
    ));
    assert_eq!(
        r["code"], "bad_frame",
        "granted: the field is what is wrong"
    );
}

#[test]
fn a_channel_whose_close_is_still_in_flight_is_closed_again_on_teardown() {
    let mut s = anonymous();
    let out = routed(
        &mut s,
        json!({"t":"doc.open","doc":"d"}),
        Some(fake("s1", 1)),
    );
    let Some(Action::Open { channel: first, .. }) = out.into_iter().last() else {
        panic!("an open");
    };
    // Reopened: the old channel's close is handed to the driver, which is torn down before it
    // reports it done.
    let out = routed(
        &mut s,
        json!({"t":"doc.open","doc":"d"}),
        Some(fake("s1", 1)),
    );
    assert!(matches!(out[0], Action::Close { channel, .. } if channel == first));
    s.close();
    let closed: Vec<ConnId> = drain(&mut s)
        .into_iter()
        .filter_map(|a| match a {
            Action::Close { channel, .. } => Some(channel),
            _ => None,
        })
        .collect();
    assert_eq!(
        closed.len(),
        2,
        "the new channel and the old one: {closed:?}"
    );
    assert!(closed.contains(&first));
    // A close reported done is not repeated.
    let mut s = anonymous();
    routed(
        &mut s,
        json!({"t":"doc.open","doc":"d"}),
        Some(fake("s1", 1)),
    );
    let out = text(&mut s, json!({"t":"doc.close","doc":"d"}));
    let Some(Action::Close { channel, .. }) = out.into_iter().next() else {
        panic!("a close");
    };
    s.handle_close_done(channel);
    s.close();
    assert!(drain(&mut s).is_empty());
}
