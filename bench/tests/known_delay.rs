//! The harness measured against a relay whose delay is known: a y-websocket relay in this test that
//! holds every update for exactly `DELAY` before forwarding it to the document's other sockets.
//! Every edit must be accounted for, and no latency may come out below the injected delay (the
//! harness times from the intended send, which can only add to it). No wall-clock upper bound is
//! asserted: the machine's speed is not what this test checks.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bench::scenario::doc_fanout;
use bench::target::{Kind, Target, TargetOpts};
use fastwebsockets::{Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

const DELAY: Duration = Duration::from_millis(40);

type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Vec<u8>>)>>>>;

async fn serve_socket(req: Request<Incoming>, rooms: Rooms, id: u64) -> Response<Empty<Bytes>> {
    let room = req.uri().path().to_string();
    let mut req = req;
    let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req).expect("upgrade");
    tokio::spawn(async move {
        let ws = fut.await.expect("upgraded");
        let (mut rd, mut wr) = ws.split(tokio::io::split);
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        rooms
            .lock()
            .expect("rooms")
            .entry(room.clone())
            .or_default()
            .push((id, tx.clone()));
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if wr
                    .write_frame(Frame::binary(Payload::Owned(m)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        loop {
            let mut ignore = |_f: Frame<'_>| async { Ok::<(), fastwebsockets::WebSocketError>(()) };
            let Ok(frame) = rd.read_frame(&mut ignore).await else {
                return;
            };
            if frame.opcode != OpCode::Binary {
                if frame.opcode == OpCode::Close {
                    return;
                }
                continue;
            }
            let msg = frame.payload.to_vec();
            match (msg.first(), msg.get(1)) {
                // Sync step 1: answer with an empty step 2.
                (Some(0), Some(0)) => {
                    let _ = tx.send(vec![0, 1, 2, 0, 0]);
                }
                // An update: to every other socket of the room, after DELAY.
                (Some(0), Some(2)) => {
                    let peers: Vec<_> = rooms.lock().expect("rooms")[&room]
                        .iter()
                        .filter(|(p, _)| *p != id)
                        .map(|(_, t)| t.clone())
                        .collect();
                    tokio::spawn(async move {
                        tokio::time::sleep(DELAY).await;
                        for p in peers {
                            let _ = p.send(msg.clone());
                        }
                    });
                }
                _ => {}
            }
        }
    });
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_accounted_from_the_intended_send_on_a_known_delay() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rooms: Rooms = Arc::default();
    tokio::spawn(async move {
        let mut next = 0u64;
        loop {
            let (s, _) = listener.accept().await.expect("accept");
            let rooms = rooms.clone();
            next += 1;
            let id = next;
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let rooms = rooms.clone();
                    async move { Ok::<_, Infallible>(serve_socket(req, rooms, id).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });

    let target = Target::start(
        &Kind::External(format!("ws://{addr}")),
        &TargetOpts::default(),
    )
    .await
    .expect("external target");
    let p = doc_fanout::Params {
        docs: 2,
        editors: 4,
        rate: 20.0,
        awareness_rate: Some(0.0),
        duration: 1.0,
        warmup: 0.2,
        grace: 5.0,
        connect_concurrency: 8,
    };
    let o = doc_fanout::run(&target, &p, "known-delay")
        .await
        .expect("run");
    assert_eq!(o.missing_deliveries, 0, "{o:?}");
    assert_eq!(o.duplicate_deliveries, 0, "{o:?}");
    assert_eq!(o.disconnects, 0, "{o:?}");
    // 2 docs × 4 editors × 20/s over 1.2 s: every edit goes to 3 other editors.
    assert_eq!(o.edits_sent, 2 * 4 * 24, "{o:?}");
    assert_eq!(o.expected_deliveries, o.edits_sent * 3, "{o:?}");
    // Only edits after the warm-up are measured: 2 × 4 × 20 in the 1 s window.
    assert_eq!(o.edit_latency.count, 2 * 4 * 20, "{o:?}");
    assert_eq!(o.delivery_latency.count, 2 * 4 * 20 * 3, "{o:?}");
    let floor = DELAY.as_secs_f64() * 1e3;
    // HDR precision: values are within 0.1 % of the truth.
    let min_ok = floor * 0.999;
    assert!(
        o.delivery_latency.p50_ms >= min_ok,
        "{:?}",
        o.delivery_latency
    );
    assert!(o.edit_latency.p50_ms >= min_ok, "{:?}", o.edit_latency);
    // An edit is complete at its slowest receiver.
    assert!(o.edit_latency.p50_ms >= o.delivery_latency.p50_ms);
    assert!(o.edit_latency.max_ms >= o.delivery_latency.max_ms * 0.999);
}
