//! The media driver: the tokio task around the shard's call core ([`signaling::CallCore`]). It owns
//! the shard's UDP media socket, feeds the core datagrams, signaling and timeouts, and carries out
//! what it polls: frames to room members, datagrams, call events for the room's log (handed to the
//! shard driver, which appends them in the room's order).
//!
//! Its own task, so that media (thousands of packets a second in a 20-person call) never delays a
//! document edit or a chat message in the shard driver, and the reverse. The shard driver reaches it
//! with `try_send` (never waits on it); it answers the shard driver with `send` (may wait).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proto::v1::{CallRequest, ErrorCode, RequestId};
use proto::{Access, EventPayload, RoomId, UserId};
use signaling::turn::TurnConfig;
use signaling::{CallConfig, CallCore, CallOutput, CallStats};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::handle::{ConnId, ConnSink};
use crate::timer;

/// Media settings of one shard.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// Where the UDP media socket binds (port 0: any free port).
    pub listen: SocketAddr,
    /// The address clients reach it at (`--media-advertise`); default: the bound address, or
    /// 127.0.0.1 when bound to an unspecified address.
    pub advertise: Option<IpAddr>,
    /// The call core's limits.
    pub call: CallConfig,
    /// TURN servers handed to clients with time-limited credentials.
    pub turn: Option<TurnConfig>,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            advertise: None,
            call: CallConfig::default(),
            turn: None,
        }
    }
}

/// What the shard driver asks of the media driver.
pub(crate) enum MediaCmd {
    Request {
        conn: ConnId,
        user: UserId,
        access: Access,
        room: RoomId,
        rid: Option<RequestId>,
        req: CallRequest,
        sink: ConnSink,
    },
    /// `conn` left `room` (or the room closed on it).
    Departed {
        conn: ConnId,
        room: RoomId,
    },
    /// The connection is gone.
    Close {
        conn: ConnId,
    },
    /// The room's call ends here (moved, shutting down): participants get `call.closed`.
    Release {
        room: RoomId,
        code: ErrorCode,
        message: &'static str,
    },
    Stats {
        reply: oneshot::Sender<CallStats>,
    },
}

/// A call event for the room's log, from the media driver to the shard driver.
pub(crate) struct Persist {
    pub room: RoomId,
    pub actor: UserId,
    pub payload: EventPayload,
}

/// Requests queued for the media driver before new ones are refused with `limit`.
const MAX_QUEUED_REQUESTS: usize = 4096;

/// The shard driver's handle on its media driver. Every command travels one FIFO channel, so a
/// departure sent after a request is handled after it; only requests are counted and bounded
/// (departures, closes and releases are one per membership, and never refused).
#[derive(Clone)]
pub(crate) struct MediaHandle {
    tx: mpsc::UnboundedSender<MediaCmd>,
    queued: Arc<AtomicUsize>,
    /// The address put in answers as the host candidate.
    pub advertised: SocketAddr,
}

impl MediaHandle {
    /// Queues a request; false when the media driver is saturated or gone.
    pub fn try_send(&self, cmd: MediaCmd) -> bool {
        if self.queued.load(Ordering::Relaxed) >= MAX_QUEUED_REQUESTS {
            return false;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(cmd).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues a departure, close or release (never refused while the driver runs).
    pub fn tell(&self, cmd: MediaCmd) {
        let _ = self.tx.send(cmd);
    }

    /// The call core's counters.
    pub async fn stats(&self) -> Option<CallStats> {
        let (reply, wait) = oneshot::channel();
        self.tx.send(MediaCmd::Stats { reply }).ok()?;
        wait.await.ok()
    }
}

/// Binds the media socket and starts the media driver; call events go to `persist`, in order.
pub(crate) fn spawn(
    settings: MediaSettings,
    persist: mpsc::UnboundedSender<Persist>,
) -> std::io::Result<MediaHandle> {
    let std_socket = std::net::UdpSocket::bind(settings.listen)?;
    std_socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(std_socket)?;
    let bound = socket.local_addr()?;
    let ip = settings
        .advertise
        .unwrap_or(if bound.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bound.ip()
        });
    let advertised = SocketAddr::new(ip, bound.port());
    let cfg = CallConfig {
        candidates: vec![advertised],
        ..settings.call
    };
    let seed = uuid::Uuid::now_v7().as_u64_pair().1;
    let core = CallCore::new(cfg, seed);
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    tokio::spawn(run(
        core,
        socket,
        advertised,
        settings.turn,
        rx,
        queued.clone(),
        persist,
    ));
    tracing::info!(%bound, %advertised, "media socket bound");
    Ok(MediaHandle {
        tx,
        queued,
        advertised,
    })
}

async fn run(
    mut core: CallCore<ConnId>,
    socket: UdpSocket,
    advertised: SocketAddr,
    turn: Option<TurnConfig>,
    mut rx: mpsc::UnboundedReceiver<MediaCmd>,
    queued: Arc<AtomicUsize>,
    persist: mpsc::UnboundedSender<Persist>,
) {
    let mut sinks: HashMap<ConnId, ConnSink> = HashMap::new();
    // One byte more than the largest datagram accepted: a longer one arrives truncated to exactly
    // this length and is dropped as oversized.
    let max = core.config().max_datagram;
    let mut buf = vec![0u8; max + 1];
    loop {
        let deadline = core.poll_timeout();
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let now = Instant::now().into_std();
                match cmd {
                    MediaCmd::Request { conn, user, access, room, rid, req, sink } => {
                        queued.fetch_sub(1, Ordering::Relaxed);
                        sinks.insert(conn, sink);
                        if let (CallRequest::Join, Some(t)) = (&req, &turn) {
                            core.set_ice_servers(vec![t.ice_server(user.as_str(), timer::wall_ms() as u64 / 1000)]);
                        }
                        core.handle_request(now, conn, user, access, room, rid, req);
                    }
                    MediaCmd::Departed { conn, room } => core.handle_departed(now, conn, &room),
                    MediaCmd::Close { conn } => {
                        core.handle_close(now, conn);
                        sinks.remove(&conn);
                    }
                    MediaCmd::Release { room, code, message } => core.handle_release(now, &room, code, message),
                    MediaCmd::Stats { reply } => { let _ = reply.send(core.stats()); }
                }
            }
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    core.handle_datagram(Instant::now().into_std(), from, advertised, &buf[..n]);
                }
            }
            _ = timer::sleep_until(deadline) => core.handle_timeout(Instant::now().into_std()),
        }
        while let Some(out) = core.poll_output() {
            match out {
                CallOutput::Send { conn, msg } => {
                    if let Some(sink) = sinks.get(&conn) {
                        sink.send_text_or_kill(msg);
                    }
                }
                CallOutput::Transmit {
                    destination, data, ..
                } => {
                    // UDP: a full socket buffer drops the datagram, as the network would.
                    let _ = socket.try_send_to(&data, destination);
                }
                CallOutput::Persist {
                    room,
                    actor,
                    payload,
                } => {
                    if persist
                        .send(Persist {
                            room,
                            actor,
                            payload,
                        })
                        .is_err()
                    {
                        tracing::warn!("shard driver gone: call event not recorded");
                    }
                }
            }
        }
    }
}
