//! The call core on a virtual clock with in-memory str0m peers as clients.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Net;
use proto::v1::{CallRequest, Quality, TrackKind};
use proto::{Access, EventPayload};
use serde_json::Value;
use signaling::CallConfig;

const FRAME: Duration = Duration::from_millis(33);

/// Sends media from every client for `d` (a key frame first and every 30 frames).
fn stream(net: &mut Net, d: Duration) {
    let mut n = 0u64;
    net.advance(d, FRAME, |net| {
        n += 1;
        for c in 0..net.clients.len() {
            if net.clients[c].alive && net.clients[c].connected {
                net.send_media(c, n % 30 == 1, n);
            }
        }
    });
}

fn track_ids(v: &Value) -> Vec<String> {
    v["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

fn published_ids(net: &Net, c: usize) -> Vec<String> {
    net.frames_of(c, "track.published")
        .iter()
        .map(|f| f["track"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn types(net: &Net) -> Vec<&'static str> {
    net.persisted
        .iter()
        .map(|(_, p)| p.event_type().name())
        .collect()
}

#[test]
fn two_participants_see_and_hear_each_other() {
    let mut net = Net::new(CallConfig::default());
    let (a, b) = (net.client("ada"), net.client("bob"));
    net.join(a, Access::Write);
    let r = net.negotiate(
        a,
        Access::Write,
        &[(TrackKind::Camera, false), (TrackKind::Microphone, false)],
        &[],
    );
    assert_eq!(r["t"], "call.answer", "{r}");
    let joined = net.join(b, Access::Write);
    let a_tracks = track_ids(&joined);
    assert_eq!(
        a_tracks.len(),
        2,
        "the join reply lists the tracks already published: {joined}"
    );
    assert_eq!(joined["participants"].as_array().unwrap().len(), 2);
    let subs: Vec<(&str, Quality)> = a_tracks
        .iter()
        .map(|t| (t.as_str(), Quality::High))
        .collect();
    let r = net.negotiate(
        b,
        Access::Write,
        &[(TrackKind::Camera, false), (TrackKind::Microphone, false)],
        &subs,
    );
    assert_eq!(r["t"], "call.answer", "{r}");
    // A is told of B and of B's tracks, and subscribes to them.
    assert_eq!(net.frames_of(a, "call.participant.joined").len(), 1);
    let b_tracks = published_ids(&net, a)
        .into_iter()
        .filter(|t| t.starts_with("p2"))
        .collect::<Vec<_>>();
    assert_eq!(b_tracks.len(), 2);
    let subs: Vec<(&str, Quality)> = b_tracks
        .iter()
        .map(|t| (t.as_str(), Quality::High))
        .collect();
    let r = net.negotiate(a, Access::Write, &[], &subs);
    assert_eq!(r["t"], "call.answer", "{r}");
    stream(&mut net, Duration::from_secs(2));
    for c in [a, b] {
        let cl = &net.clients[c];
        assert!(cl.connected, "client {c} connected");
        assert_eq!(cl.receiving.len(), 2);
        for mid in cl.receiving.keys() {
            let got = cl.received.get(mid).copied().unwrap_or(0);
            assert!(got > 30, "client {c} received {got} frames on {mid}");
        }
    }
    assert_eq!(
        types(&net),
        [
            "call.started",
            "call.participant.joined",
            "call.participant.joined"
        ]
    );
    let stats = net.core.stats();
    assert_eq!((stats.calls, stats.participants, stats.tracks), (1, 2, 4));
}

#[test]
fn simulcast_layers_follow_the_wanted_quality_and_switch_on_key_frames() {
    let mut net = Net::new(CallConfig::default());
    let (a, b) = (net.client("ada"), net.client("bob"));
    net.join(a, Access::Write);
    net.negotiate(a, Access::Write, &[(TrackKind::Camera, true)], &[]);
    let joined = net.join(b, Access::Read);
    let cam = track_ids(&joined)[0].clone();
    assert_eq!(
        joined["tracks"][0]["layers"],
        serde_json::json!(["l", "m", "h"])
    );
    net.negotiate(b, Access::Read, &[], &[(cam.as_str(), Quality::Low)]);
    stream(&mut net, Duration::from_secs(2));
    let mid = *net.clients[b].receiving.keys().next().unwrap();
    eprintln!(
        "stats {:?} received {:?} marks {:?} rids {:?}",
        net.core.stats(),
        net.clients[b].received,
        net.clients[b].marks,
        net.clients[a]
            .rtc
            .media(*net.clients[a].sending.keys().next().unwrap())
            .map(|m| format!("{:?}", m.rids_tx()))
    );
    assert!(net.clients[b].received[&mid] > 20);
    assert_eq!(
        net.clients[b].marks[&mid], b'l',
        "low quality: the lowest layer"
    );
    let before = net.clients[b].received[&mid];
    net.request(
        b,
        Access::Read,
        CallRequest::Subscribe {
            track: cam.clone(),
            quality: Quality::High,
        },
    );
    stream(&mut net, Duration::from_secs(2));
    assert_eq!(
        net.clients[b].marks[&mid], b'h',
        "switched up to the highest layer"
    );
    let after = net.clients[b].received[&mid];
    assert!(
        after - before > 30,
        "frames kept flowing across the switch: {before} → {after}"
    );
    // The publisher was asked for key frames (start and switch).
    assert!(net.core.stats().keyframe_requests >= 2);
    // `off`: nothing more is forwarded.
    net.request(
        b,
        Access::Read,
        CallRequest::Subscribe {
            track: cam,
            quality: Quality::Off,
        },
    );
    let off = net.clients[b].received[&mid];
    stream(&mut net, Duration::from_secs(1));
    assert!(
        net.clients[b].received[&mid] <= off + 1,
        "off stops forwarding"
    );
}

#[test]
fn read_access_watches_but_cannot_publish() {
    let mut net = Net::new(CallConfig::default());
    let (a, b) = (net.client("ada"), net.client("rita"));
    net.join(a, Access::Write);
    net.negotiate(a, Access::Write, &[(TrackKind::Microphone, false)], &[]);
    let joined = net.join(b, Access::Read);
    let r = net.negotiate(b, Access::Read, &[(TrackKind::Camera, false)], &[]);
    assert_eq!(
        (r["t"].as_str(), r["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{r}"
    );
    let mic = track_ids(&joined)[0].clone();
    let r = net.negotiate(b, Access::Read, &[], &[(mic.as_str(), Quality::High)]);
    assert_eq!(r["t"], "call.answer", "a reader listens: {r}");
    stream(&mut net, Duration::from_secs(1));
    assert!(net.clients[b].received.values().sum::<usize>() > 20);
}

#[test]
fn bad_offers_are_refused_and_change_nothing() {
    let mut net = Net::new(CallConfig::default());
    let a = net.client("ada");
    // Not in the call yet.
    let id = net.request(
        a,
        Access::Write,
        CallRequest::Offer {
            sdp: "v=0".into(),
            publish: vec![],
            subscribe: vec![],
        },
    );
    assert_eq!(net.reply(a, &id)["code"], "not_in_call");
    net.join(a, Access::Write);
    for sdp in [
        "",
        "v=0\r\n",
        "garbage\u{0}\u{1}",
        &"m=audio 9 RTP/AVP 0\r\n".repeat(10),
    ] {
        let id = net.request(
            a,
            Access::Write,
            CallRequest::Offer {
                sdp: sdp.into(),
                publish: vec![],
                subscribe: vec![],
            },
        );
        let r = net.reply(a, &id);
        assert_eq!(
            (r["t"].as_str(), r["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{sdp:?}: {r}"
        );
    }
    let id = net.request(
        a,
        Access::Write,
        CallRequest::Offer {
            sdp: "x".repeat(600_000),
            publish: vec![],
            subscribe: vec![],
        },
    );
    assert_eq!(net.reply(a, &id)["code"], "too_large");
    // A subscription to a track that does not exist.
    let id = net.request(
        a,
        Access::Write,
        CallRequest::Subscribe {
            track: "p9-0".into(),
            quality: Quality::High,
        },
    );
    assert_eq!(net.reply(a, &id)["code"], "not_found");
    let id = net.request(
        a,
        Access::Write,
        CallRequest::Ice {
            candidate: Some("candidate:nonsense".into()),
        },
    );
    assert_eq!(net.reply(a, &id)["code"], "bad_request");
    // Still a working participant: a good offer goes through.
    let r = net.negotiate(a, Access::Write, &[(TrackKind::Camera, false)], &[]);
    assert_eq!(r["t"], "call.answer", "{r}");
}

#[test]
fn leaving_and_timing_out_remove_participants_and_the_last_one_ends_the_call() {
    let mut net = Net::new(CallConfig {
        ice_timeout: Duration::from_secs(3),
        ..CallConfig::default()
    });
    let (a, b, c) = (net.client("ada"), net.client("bob"), net.client("cy"));
    for x in [a, b, c] {
        net.join(x, Access::Write);
        net.negotiate(x, Access::Write, &[(TrackKind::Microphone, false)], &[]);
    }
    stream(&mut net, Duration::from_millis(500));
    assert!(net.clients.iter().all(|c| c.connected));
    // B leaves politely: A and C are told, with B's track gone.
    let id = net.request(b, Access::Write, CallRequest::Leave);
    assert_eq!(net.reply(b, &id)["t"], "ok");
    let left = net.frames_of(a, "call.participant.left");
    assert_eq!(
        (left[0]["participant"].as_str(), left[0]["reason"].as_str()),
        (Some("p2"), Some("left"))
    );
    let b_mic = net
        .frames_of(a, "track.published")
        .iter()
        .find(|f| f["track"]["participant"] == "p2")
        .unwrap()["track"]["id"]
        .clone();
    assert!(net
        .frames_of(a, "track.unpublished")
        .iter()
        .any(|f| f["track"] == b_mic));
    // C's network dies: removed after the ICE timeout.
    net.clients[c].alive = false;
    stream(&mut net, Duration::from_secs(20));
    let left = net.frames_of(a, "call.participant.left");
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(
        (left[1]["participant"].as_str(), left[1]["reason"].as_str()),
        (Some("p3"), Some("timeout"))
    );
    // The last one leaves: the call ends.
    net.core.handle_close(net.now, net.clients[a].conn);
    net.pump_outputs();
    assert_eq!(net.core.stats().calls, 0);
    let t = types(&net);
    assert_eq!(t.first(), Some(&"call.started"));
    assert_eq!(t.last(), Some(&"call.ended"));
    assert_eq!(
        t.iter().filter(|x| **x == "call.participant.left").count(),
        3
    );
}

#[test]
fn screen_share_is_recorded_and_a_late_joiner_sees_it() {
    let mut net = Net::new(CallConfig::default());
    let (a, b) = (net.client("ada"), net.client("bob"));
    net.join(a, Access::Write);
    net.negotiate(
        a,
        Access::Write,
        &[(TrackKind::Camera, false), (TrackKind::Screen, false)],
        &[],
    );
    let started: Vec<_> = net
        .persisted
        .iter()
        .filter_map(|(u, p)| match p {
            EventPayload::ScreenShareStarted(s) => Some((u.to_string(), s.track.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 1);
    let joined = net.join(b, Access::Write);
    let screen = joined["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "screen")
        .unwrap();
    assert_eq!(screen["id"].as_str(), Some(started[0].1.as_str()));
    assert_eq!(screen["user"], "ada");
    let id = net.request(
        a,
        Access::Write,
        CallRequest::Unpublish {
            track: started[0].1.clone(),
        },
    );
    assert_eq!(net.reply(a, &id)["t"], "ok");
    assert!(net
        .persisted
        .iter()
        .any(|(_, p)| matches!(p, EventPayload::ScreenShareStopped(_))));
    assert!(net
        .frames_of(b, "track.unpublished")
        .iter()
        .any(|f| f["track"] == started[0].1.as_str()));
}

#[test]
fn garbage_and_strangers_on_the_media_port_are_dropped() {
    let mut net = Net::new(CallConfig::default());
    let a = net.client("ada");
    net.join(a, Access::Write);
    net.negotiate(a, Access::Write, &[(TrackKind::Microphone, false)], &[]);
    stream(&mut net, Duration::from_millis(300));
    let before = net.core.stats();
    let stranger = "10.9.9.9:4000".parse().unwrap();
    let now = net.now;
    for junk in [
        &b""[..],
        b"\x00\x01\x00\x00garbage",
        &[0x80u8; 200],
        &[0u8; 9000],
    ] {
        net.core
            .handle_datagram(now, stranger, common::server(), junk);
    }
    // A STUN binding request with an unknown username.
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend([7u8; 12]);
    net.core
        .handle_datagram(now, stranger, common::server(), &stun);
    let after = net.core.stats();
    assert_eq!(after.datagrams_dropped - before.datagrams_dropped, 5);
    assert_eq!(after.participants, 1);
    stream(&mut net, Duration::from_millis(300));
    assert!(net.clients[a].connected);
}

#[test]
fn limits_participants_and_tracks() {
    let mut net = Net::new(CallConfig {
        max_participants: 2,
        max_tracks: 1,
        ..CallConfig::default()
    });
    let (a, b, c) = (net.client("ada"), net.client("bob"), net.client("cy"));
    net.join(a, Access::Write);
    net.join(b, Access::Write);
    let id = net.request(c, Access::Write, CallRequest::Join);
    assert_eq!(net.reply(c, &id)["code"], "limit");
    let r = net.negotiate(
        a,
        Access::Write,
        &[(TrackKind::Camera, false), (TrackKind::Microphone, false)],
        &[],
    );
    assert_eq!(r["code"], "limit", "{r}");
}

#[test]
fn twenty_participants_with_camera_mic_and_one_screen_share() {
    const N: usize = 20;
    let mut net = Net::new(CallConfig::default());
    let clients: Vec<usize> = (0..N).map(|i| net.client(&format!("user{i}"))).collect();
    for &c in &clients {
        net.join(c, Access::Write);
        let mut publish = vec![(TrackKind::Camera, true), (TrackKind::Microphone, false)];
        if c == 0 {
            publish.push((TrackKind::Screen, false));
        }
        let r = net.negotiate(c, Access::Write, &publish, &[]);
        assert_eq!(r["t"], "call.answer", "{r}");
    }
    // Everyone subscribes to every other track: cameras at low quality except the screen.
    for &c in &clients {
        let me = net.clients[c].participant.clone().unwrap();
        let mut tracks: Vec<(String, bool)> = Vec::new();
        for f in &net.clients[c].frames {
            let list: Vec<Value> = match f["t"].as_str() {
                Some("call.joined") => f["tracks"].as_array().unwrap().clone(),
                Some("track.published") => vec![f["track"].clone()],
                _ => continue,
            };
            for t in list {
                if t["participant"] != me.as_str() {
                    tracks.push((t["id"].as_str().unwrap().to_owned(), t["kind"] == "camera"));
                }
            }
        }
        tracks.sort();
        tracks.dedup();
        let subs: Vec<(&str, Quality)> = tracks
            .iter()
            .map(|(t, cam)| (t.as_str(), if *cam { Quality::Low } else { Quality::High }))
            .collect();
        let expected = if c == 0 { 2 * (N - 1) } else { 2 * (N - 1) + 1 };
        assert_eq!(subs.len(), expected, "client {c} knows every other track");
        let r = net.negotiate(c, Access::Write, &[], &subs);
        assert_eq!(r["t"], "call.answer", "{r}");
    }
    stream(&mut net, Duration::from_secs(2));
    for &c in &clients {
        let cl = &net.clients[c];
        assert!(cl.connected);
        for (mid, track) in &cl.receiving {
            let got = cl.received.get(mid).copied().unwrap_or(0);
            assert!(got >= 10, "client {c} got {got} frames of {track}");
        }
        for (mid, track) in &cl.receiving {
            let mark = cl.marks.get(mid).copied();
            match net.track_kind(c, track).as_str() {
                "camera" => assert_eq!(
                    mark,
                    Some(b'l'),
                    "client {c}: camera {track} at low quality"
                ),
                "screen" => assert_eq!(mark, Some(b'v'), "client {c}: the screen share"),
                _ => {}
            }
        }
    }
    assert_eq!(net.core.stats().participants, N);
}

#[test]
fn joins_are_rate_limited_per_connection() {
    let mut net = Net::new(CallConfig::default());
    let a = net.client("ada");
    // A join/leave loop would append four events per round to the room's log: a burst of five
    // joins, then `limit`.
    let mut codes = Vec::new();
    for _ in 0..6 {
        let id = net.request(a, Access::Read, CallRequest::Join);
        codes.push(net.reply(a, &id)["t"].as_str().unwrap().to_owned());
        net.request(a, Access::Read, CallRequest::Leave);
    }
    assert_eq!(
        codes,
        ["call.joined"; 5]
            .iter()
            .map(|s| s.to_string())
            .chain(["error".to_string()])
            .collect::<Vec<_>>()
    );
    // A second later there is budget again.
    net.now += Duration::from_secs(1);
    let id = net.request(a, Access::Read, CallRequest::Join);
    assert_eq!(net.reply(a, &id)["t"], "call.joined");
}

#[test]
fn mids_must_be_what_str0m_keeps() {
    let mut net = Net::new(CallConfig::default());
    let a = net.client("ada");
    net.join(a, Access::Write);
    for mid in ["", "a b", "x".repeat(17).as_str(), "ü"] {
        let id = net.request(
            a,
            Access::Write,
            CallRequest::Publish {
                publish: proto::v1::Publish {
                    mid: mid.to_owned(),
                    kind: TrackKind::Camera,
                },
            },
        );
        assert_eq!(net.reply(a, &id)["code"], "bad_request", "mid {mid:?}");
    }
}

#[test]
fn with_more_voices_than_n_only_the_n_loudest_are_forwarded_and_the_loudest_speaks() {
    let mut net = Net::new(CallConfig {
        audio_top_n: 1,
        ..CallConfig::default()
    });
    let clients: Vec<usize> = ["ada", "bob", "cy"].iter().map(|u| net.client(u)).collect();
    for &c in &clients {
        net.join(c, Access::Write);
        net.negotiate(c, Access::Write, &[(TrackKind::Microphone, false)], &[]);
    }
    for &c in &clients {
        let me = net.clients[c].participant.clone().unwrap();
        let mut others: Vec<String> = Vec::new();
        for f in &net.clients[c].frames {
            let list: Vec<Value> = match f["t"].as_str() {
                Some("call.joined") => f["tracks"].as_array().unwrap().clone(),
                Some("track.published") => vec![f["track"].clone()],
                _ => continue,
            };
            others.extend(
                list.into_iter()
                    .filter(|t| t["participant"] != me.as_str())
                    .map(|t| t["id"].as_str().unwrap().to_owned()),
            );
        }
        others.sort();
        others.dedup();
        let subs: Vec<(&str, Quality)> =
            others.iter().map(|t| (t.as_str(), Quality::High)).collect();
        net.negotiate(c, Access::Write, &[], &subs);
    }
    stream(&mut net, Duration::from_secs(3));
    // Bob hears Ada (the loudest) but not Cy.
    let bob = &net.clients[clients[1]];
    let got: Vec<(String, usize)> = bob
        .receiving
        .iter()
        .map(|(m, t)| (t.clone(), bob.received.get(m).copied().unwrap_or(0)))
        .collect();
    let from = |p: &str| {
        got.iter()
            .find(|(t, _)| t.starts_with(p))
            .map_or(0, |(_, n)| *n)
    };
    assert!(from("p1-") > 50, "the loudest voice is forwarded: {got:?}");
    assert!(
        from("p3-") < 15,
        "a quiet voice beyond the top 1 is not (only before levels settle): {got:?}"
    );
    // Everyone is told Ada speaks.
    let speaker = net.frames_of(clients[2], "call.speaker");
    assert_eq!(speaker.last().unwrap()["participant"], "p1", "{speaker:?}");
}
