//! The same synthetic participant as [`crate::callpeer`], against Janus 1.1's VideoRoom plugin over
//! its HTTP API (for `bench compare call`): a publisher handle whose peer connection sends the
//! camera and microphone (the client offers), and, once every participant has published, a
//! subscriber handle whose peer connection receives every other participant's feeds (Janus offers,
//! the client answers). Frames carry the same send stamps, so the figures are comparable.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::callpeer::{self, PeerConfig, Shared, KIND_AUDIO, KIND_VIDEO};

/// One HTTP/1.0 request to Janus (a fresh connection each: signaling is rare; 1.0 so that the reply is
/// never chunked).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow!("Janus did not answer {path}"))??;
    let text = String::from_utf8_lossy(&buf);
    let (_, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("bad HTTP reply"))?;
    serde_json::from_str(body).with_context(|| format!("Janus reply: {body}"))
}

/// A Janus session: requests, and its event stream (long polls).
pub struct Session {
    addr: SocketAddr,
    pub id: u64,
    n: u64,
    events: mpsc::UnboundedReceiver<Value>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Session {
    /// Creates a session on the Janus at `addr` (`/janus` base path).
    pub async fn create(addr: SocketAddr) -> anyhow::Result<Self> {
        let r = http(
            addr,
            "POST",
            "/janus",
            Some(&json!({"janus": "create", "transaction": "c"})),
        )
        .await?;
        let id = r["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("create: {r}"))?;
        let (tx, events) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                match http(addr, "GET", &format!("/janus/{id}?maxev=10"), None).await {
                    Ok(Value::Array(list)) => {
                        for e in list {
                            if tx.send(e).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(e) => {
                        if tx.send(e).is_err() {
                            return;
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Ok(Self {
            addr,
            id,
            n: 0,
            events,
            poller,
        })
    }

    /// Attaches a VideoRoom handle.
    pub async fn attach(&mut self) -> anyhow::Result<u64> {
        let r = self
            .post(
                None,
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        r["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("attach: {r}"))
    }

    async fn post(&mut self, handle: Option<u64>, mut body: Value) -> anyhow::Result<Value> {
        self.n += 1;
        body["transaction"] = json!(format!("t{}", self.n));
        let path = match handle {
            Some(h) => format!("/janus/{}/{h}", self.id),
            None => format!("/janus/{}", self.id),
        };
        let r = http(self.addr, "POST", &path, Some(&body)).await?;
        if r["janus"] == "error" {
            bail!("Janus: {r}");
        }
        Ok(r)
    }

    /// A VideoRoom request; the synchronous reply (`success`) or the event it leads to.
    pub async fn message(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut m = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        let what = m["body"]["request"].to_string();
        let r = self.post(Some(handle), m).await?;
        if r["janus"] == "success" {
            return Ok(r);
        }
        // `ack`: the answer comes as an event of this handle.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| anyhow!("no Janus event for {what}"))?
                .ok_or_else(|| anyhow!("Janus session ended"))?;
            if e["janus"] == "event" && e["sender"].as_u64() == Some(handle) {
                if let Some(err) = e["plugindata"]["data"]["error"].as_str() {
                    bail!("VideoRoom: {err}");
                }
                return Ok(e);
            }
        }
    }
}

/// Creates VideoRoom `room` (VP8 + Opus, up to `publishers`).
pub async fn create_room(addr: SocketAddr, room: u64, publishers: usize) -> anyhow::Result<()> {
    let mut s = Session::create(addr).await?;
    let h = s.attach().await?;
    let body = json!({"request": "create", "room": room, "publishers": publishers, "videocodec": "vp8",
        "audiocodec": "opus", "bitrate": 0, "notify_joining": false});
    s.message(h, body, None).await?;
    Ok(())
}

/// Runs one participant in Janus room `room` until `stop`: publishes, waits until `feeds` holds
/// `expected` publishers, subscribes to the others, and accounts what it receives in `stats`.
pub async fn run(
    addr: SocketAddr,
    room: u64,
    cfg: PeerConfig,
    feeds: Arc<Mutex<Vec<u64>>>,
    expected: usize,
    stats: Shared,
    mut stop: watch::Receiver<bool>,
) {
    if let Err(e) = participant(addr, room, &cfg, &feeds, expected, &stats, &mut stop).await {
        if let Ok(mut s) = stats.lock() {
            s.errors.push(format!("janus peer {}: {e:#}", cfg.index));
        }
    }
}

struct Leg {
    rtc: Rtc,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    at: tokio::time::Instant,
}

/// The machine's primary IPv4 address: Janus (libnice) never offers loopback candidates, so its
/// peers use the address it does offer (the kernel still keeps the traffic local).
fn primary_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("8.8.8.8:80").map(|()| s))
        .and_then(|s| s.local_addr())
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip())
}

impl Leg {
    async fn new() -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(primary_ip(), 0)).await?;
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").context("host candidate")?);
        Ok(Self {
            rtc,
            socket: Arc::new(socket),
            local,
            at: tokio::time::Instant::now(),
        })
    }

    /// Sends what str0m wants sent; returns its events.
    fn drain(&mut self) -> anyhow::Result<Vec<Event>> {
        let mut events = Vec::new();
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.at = tokio::time::Instant::from_std(t);
                    return Ok(events);
                }
                Output::Transmit(t) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Output::Event(e) => events.push(e),
            }
        }
    }

    fn input(&mut self, buf: &[u8], source: SocketAddr) -> anyhow::Result<()> {
        if let Ok(contents) = buf.try_into() {
            let r = Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            };
            self.rtc.handle_input(Input::Receive(Instant::now(), r))?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn participant(
    addr: SocketAddr,
    room: u64,
    cfg: &PeerConfig,
    feeds: &Arc<Mutex<Vec<u64>>>,
    expected: usize,
    stats: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut s = Session::create(addr).await?;
    let ph = s.attach().await?;
    let started = Instant::now();
    // The publisher: the client offers camera + microphone.
    let mut publ = Leg::new().await?;
    let mut api = publ.rtc.sdp_api();
    let vmid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let amid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("no offer"))?;
    let body = json!({"request": "joinandconfigure", "room": room, "ptype": "publisher",
        "display": format!("p{}", cfg.index), "audio": true, "video": true});
    let jsep = json!({"type": "offer", "sdp": offer.to_sdp_string()});
    let e = s.message(ph, body, Some(jsep)).await?;
    let answer = e["jsep"]["sdp"]
        .as_str()
        .ok_or_else(|| anyhow!("no answer: {e}"))?;
    publ.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(answer)?)?;
    let me = e["plugindata"]["data"]["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("no feed id: {e}"))?;
    if let Ok(mut st) = stats.lock() {
        st.joins += 1;
    }
    let sending: Vec<(Mid, u8)> = vec![(vmid, KIND_VIDEO), (amid, KIND_AUDIO)];
    let mut sub: Option<Leg> = None;
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let (mut video_seq, mut audio_seq, mut owe_key, mut connected) = (0u64, 0u64, true, false);
    let video_every = Duration::from_secs_f64(1.0 / f64::from(cfg.fps.max(1)));
    let audio_every = Duration::from_millis(20);
    let mut next_video = tokio::time::Instant::now();
    let mut next_audio = tokio::time::Instant::now();
    let mut keepalive = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for e in publ.drain()? {
            match e {
                Event::Connected => {
                    connected = true;
                    if let Ok(mut st) = stats.lock() {
                        st.connected_in.get_or_insert(started.elapsed());
                    }
                    // A feed can be subscribed once its publisher's media is up.
                    feeds.lock().map_err(|_| anyhow!("poisoned"))?.push(me);
                }
                Event::KeyframeRequest(_) => owe_key = true,
                _ => {}
            }
        }
        if let Some(leg) = sub.as_mut() {
            for e in leg.drain()? {
                if let Event::MediaData(d) = e {
                    if let Ok(mut st) = stats.lock() {
                        st.received(&d.data);
                    }
                }
            }
        }
        // Subscribe once everyone has published.
        if sub.is_none() && feeds.lock().map(|f| f.len() >= expected).unwrap_or(false) {
            let others: Vec<Value> = feeds
                .lock()
                .map_err(|_| anyhow!("poisoned"))?
                .iter()
                .filter(|f| **f != me)
                .map(|f| json!({"feed": f}))
                .collect();
            let sh = s.attach().await?;
            let body =
                json!({"request": "join", "room": room, "ptype": "subscriber", "streams": others});
            // Janus may not have seen a just-connected publisher's media yet: try again shortly.
            let mut tries = 0;
            let e = loop {
                match s.message(sh, body.clone(), None).await {
                    Ok(e) => break e,
                    Err(err) if tries < 20 && err.to_string().contains("No such feed") => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(err) => return Err(err),
                }
            };
            let offer = e["jsep"]["sdp"]
                .as_str()
                .ok_or_else(|| anyhow!("no subscriber offer: {e}"))?;
            let mut leg = Leg::new().await?;
            let answer = leg
                .rtc
                .sdp_api()
                .accept_offer(SdpOffer::from_sdp_string(offer)?)?;
            let jsep = json!({"type": "answer", "sdp": answer.to_sdp_string()});
            s.message(sh, json!({"request": "start", "room": room}), Some(jsep))
                .await?;
            sub = Some(leg);
            continue;
        }
        let sub_at = sub.as_ref().map_or(next_video, |l| l.at);
        let wake = publ
            .at
            .min(sub_at)
            .min(next_video)
            .min(next_audio)
            .min(keepalive);
        let sub_socket = sub.as_ref().map(|l| l.socket.clone());
        let pub_socket = publ.socket.clone();
        let sub_recv = async {
            match &sub_socket {
                Some(sock) => sock.recv_from(&mut buf2).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => {
                if *stop.borrow() {
                    return Ok(());
                }
            }
            r = pub_socket.recv_from(&mut buf) => {
                let (n, from) = r?;
                publ.input(&buf[..n], from)?;
            }
            r = sub_recv => {
                let (n, from) = r?;
                if let Some(l) = sub.as_mut() {
                    l.input(&buf2[..n], from)?;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                if now >= publ.at {
                    publ.rtc.handle_input(Input::Timeout(now.into_std()))?;
                }
                if let Some(l) = sub.as_mut() {
                    if now >= l.at {
                        l.rtc.handle_input(Input::Timeout(now.into_std()))?;
                    }
                }
                if now >= keepalive {
                    keepalive = now + Duration::from_secs(20);
                    let _ = s.post(None, json!({"janus": "keepalive"})).await;
                }
                if now >= next_video {
                    next_video += video_every;
                    if connected {
                        video_seq += 1;
                        let key = std::mem::take(&mut owe_key) || video_seq % (u64::from(cfg.fps) * 2) == 1;
                        callpeer::write_video(cfg, &mut publ.rtc, &sending, video_seq, key)?;
                    }
                }
                if now >= next_audio {
                    next_audio += audio_every;
                    if connected {
                        audio_seq += 1;
                        callpeer::write_audio(cfg, &mut publ.rtc, &sending, audio_seq)?;
                    }
                }
            }
        }
    }
}
