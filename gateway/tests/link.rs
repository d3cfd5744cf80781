//! The gateway ↔ shard link end to end over loopback TCP: a shard driver (in-memory log) behind its
//! link listener, and the gateway's `LinkClient`. (The link's decisions are tested without sockets,
//! on a virtual clock, in `link_session.rs`.)

use std::sync::Arc;
use std::time::Duration;

use gateway::link::LinkClient;
use proto::yjs::message::{self, Message};
use proto::{DocId, ShardId, UserId};
use router::Ownership;
use router::Ring;
use shard::handle::{ConnId, ConnOut, ConnQueue, ConnSink, ShardHandle};
use shard::link::ServerConfig;
use shard::metrics::Metrics;
use shard::CoreConfig;
use tokio::sync::{watch, Notify};

struct Shard {
    addr: String,
    own: watch::Sender<Arc<Ownership>>,
    stop: watch::Sender<bool>,
}

async fn shard(id: &ShardId, serving: bool) -> Shard {
    let log = Arc::new(store::memory::MemoryLog::new());
    let local = shard::driver::spawn(
        id.clone(),
        CoreConfig::default(),
        log,
        Metrics::default(),
        None,
    )
    .expect("no media socket to bind");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (own, own_rx) = watch::channel(Arc::new(Ownership {
        ring: Ring::uniform(1, [id.clone()]),
        serving,
        draining: false,
    }));
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(shard::link::serve(
        listener,
        ServerConfig {
            shard: id.clone(),
            max_link_bytes: 1 << 20,
            max_history_in_flight: 4,
            max_frame: proto::link::MAX_FRAME,
        },
        local.handle(),
        own_rx,
        Arc::new(Notify::new()),
        stop_rx,
    ));
    Shard { addr, own, stop }
}

async fn linked(id: &ShardId, addr: &str) -> (LinkClient, ShardHandle) {
    let link = LinkClient::start(id.clone(), addr.to_owned(), 64, Arc::new(Notify::new()));
    for _ in 0..200 {
        if link.is_connected() {
            let h = link.handle();
            return (link, h);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the link never came up");
}

async fn next(q: &mut ConnQueue) -> ConnOut {
    tokio::time::timeout(Duration::from_secs(5), q.rx.recv())
        .await
        .expect("a message in time")
        .expect("queue open")
}

fn doc() -> DocId {
    DocId::parse("notes").expect("valid")
}

fn user() -> UserId {
    UserId::parse("ada").expect("valid")
}

#[tokio::test]
async fn a_document_session_syncs_over_the_link() {
    let id = ShardId::parse("s1").expect("valid");
    let s = shard(&id, true).await;
    let (_link, h) = linked(&id, &s.addr).await;
    let (sink, mut q) = ConnSink::new(64, 1 << 20);
    assert!(h.open(ConnId(7), doc(), user(), true, sink).await);
    // The server greets with its sync step 1.
    let ConnOut::Frame(f) = next(&mut q).await else {
        panic!("expected a binary frame")
    };
    assert!(matches!(Message::decode(&f), Ok(Message::SyncStep1(_))));
    // Our step 1 is answered with a step 2.
    let sv = proto::yjs::message::encode_state_vector(&[]);
    assert!(h.message(ConnId(7), message::encode_sync_step1(&sv)).await);
    loop {
        if let ConnOut::Frame(f) = next(&mut q).await {
            if matches!(Message::decode(&f), Ok(Message::SyncStep2(_))) {
                break;
            }
        }
    }
    let _ = s.stop.send(true);
}

#[tokio::test]
async fn a_shard_that_does_not_own_the_key_refuses_it() {
    let id = ShardId::parse("s1").expect("valid");
    let s = shard(&id, false).await;
    let (_link, h) = linked(&id, &s.addr).await;
    let (sink, mut q) = ConnSink::new(64, 1 << 20);
    assert!(h.open(ConnId(1), doc(), user(), true, sink).await);
    match next(&mut q).await {
        ConnOut::Close(code, reason) => {
            assert_eq!(code, 1012);
            assert!(reason.contains("not the owner"), "{reason}");
        }
        _ => panic!("expected the session to end"),
    }
    drop(s.own);
}

#[tokio::test]
async fn a_ring_change_ends_sessions_of_moved_keys() {
    let id = ShardId::parse("s1").expect("valid");
    let s = shard(&id, true).await;
    let (_link, h) = linked(&id, &s.addr).await;
    let (sink, mut q) = ConnSink::new(64, 1 << 20);
    assert!(h.open(ConnId(3), doc(), user(), true, sink).await);
    assert!(matches!(next(&mut q).await, ConnOut::Frame(_)));
    // The gateway learns that another shard owns every key now.
    _link.evict(|_| false);
    loop {
        match next(&mut q).await {
            ConnOut::Close(code, _) => {
                assert_eq!(code, 1012);
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_dropped_link_ends_its_sessions_and_reconnects() {
    let id = ShardId::parse("s1").expect("valid");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    // A "shard" that accepts the link, then drops it.
    let accept = tokio::spawn(async move {
        let (first, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(first);
        let (second, _) = listener.accept().await.expect("the link reconnects");
        second
    });
    let (_link, h) = linked(&id, &addr).await;
    let (sink, mut q) = ConnSink::new(64, 1 << 20);
    assert!(h.open(ConnId(5), doc(), user(), true, sink).await);
    match next(&mut q).await {
        ConnOut::Close(code, _) => assert_eq!(code, 1012),
        _ => panic!("expected the session to end with the link"),
    }
    let _second = tokio::time::timeout(Duration::from_secs(5), accept)
        .await
        .expect("reconnected in time")
        .expect("task");
}

/// Reads one link frame: its kind byte, session and payload.
async fn read_frame(r: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (u8, u64, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(n) = proto::link::check(buf, proto::link::MAX_FRAME).expect("a frame") {
            let frame: Vec<u8> = buf.drain(..n).collect();
            let session = u64::from_be_bytes(frame[5..13].try_into().expect("8 bytes"));
            return (frame[4], session, frame[13..].to_vec());
        }
        let read = tokio::time::timeout(Duration::from_secs(5), r.read_buf(buf))
            .await
            .expect("answered in time")
            .expect("io");
        assert!(read > 0, "the link closed");
    }
}

#[tokio::test]
async fn bad_link_input_drops_only_that_link_or_session() {
    use proto::link::{encode_parts, Kind};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let id = ShardId::parse("s1").expect("valid");
    let s = shard(&id, true).await;
    // An impossible length: the shard drops that link (EOF for the peer), nothing else.
    let mut bad = tokio::net::TcpStream::connect(&s.addr)
        .await
        .expect("connect");
    bad.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
        .await
        .expect("dropped in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the link is closed");
    // A malformed OPEN ends only its session (1002); the link keeps serving.
    let mut raw = tokio::net::TcpStream::connect(&s.addr)
        .await
        .expect("connect");
    let mut out = Vec::new();
    encode_parts(Kind::Open, 9, &[b"{not json"], &mut out);
    encode_parts(Kind::Ping, 0, &[], &mut out);
    raw.write_all(&out).await.expect("write");
    let mut rbuf = Vec::new();
    let (k, session, payload) = read_frame(&mut raw, &mut rbuf).await;
    assert_eq!((k, session), (Kind::End as u8, 9));
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    let (k, _, _) = read_frame(&mut raw, &mut rbuf).await;
    assert_eq!(k, Kind::Pong as u8, "the same link still answers");
    // And a proper client still syncs.
    let (_link, h) = linked(&id, &s.addr).await;
    let (sink, mut q) = ConnSink::new(64, 1 << 20);
    assert!(h.open(ConnId(1), doc(), user(), true, sink).await);
    assert!(matches!(next(&mut q).await, ConnOut::Frame(_)));
}
