//! A synthetic call participant for load runs and chaos scenarios: a str0m WebRTC peer (its own
//! UDP socket on loopback) that speaks `/v1` signaling as docs/protocol.md describes it, publishes a
//! synthetic VP8 camera (optionally three simulcast layers) and Opus microphone at realistic rates,
//! subscribes to every other participant's tracks, and measures what it receives.
//!
//! Every media frame carries its send time (µs since the Unix epoch), its publisher's index, its
//! kind and a sequence number, so a subscriber measures end-to-end forwarding latency (publisher →
//! SFU → subscriber, one machine, one clock) and counts missing frames per stream without decoding
//! anything.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::stats::Latency;
use crate::ws::{self, Msg, WsUrl};

/// What one participant sends and wants.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// `ws://HOST:PORT/v1` (token appended when given).
    pub url: String,
    pub token: Option<String>,
    pub room: String,
    /// This participant's index (carried in its frames).
    pub index: u32,
    pub video: bool,
    pub audio: bool,
    /// Three simulcast layers (q, h, f) instead of one video stream.
    pub simulcast: bool,
    /// Quality asked of every camera subscription (`high`, `medium`, `low`).
    pub quality: String,
    pub fps: u32,
    /// Bytes of one video frame of the top layer (the q and h layers send a quarter and a half).
    pub video_bytes: usize,
}

/// What one participant measured.
#[derive(Default)]
pub struct PeerStats {
    /// Publisher's send → this subscriber's receipt, per media frame.
    pub latency: Latency,
    pub frames: u64,
    pub bytes: u64,
    /// Per (publisher index, kind): (first seq, last seq, frames received).
    pub streams: HashMap<(u32, u8), (u64, u64, u64)>,
    /// `call.join` sent → ICE connected.
    pub connected_in: Option<Duration>,
    /// Last media frame received (for gap measurements).
    pub last_frame: Option<Instant>,
    /// Longest time without any media frame after the first one (failover gaps).
    pub longest_gap: Duration,
    /// Every pause in received media longer than `GAP` (at most 256 kept): a failover shows as one.
    pub gaps: Vec<Duration>,
    /// Times the peer joined the call (1 + rejoins after moves or timeouts).
    pub joins: u32,
    pub errors: Vec<String>,
}

impl PeerStats {
    /// Accounts one media frame received (stamped by [`frame`]).
    pub fn received(&mut self, data: &[u8]) {
        let Some((ts, index, kind, seq)) = parse(data) else {
            return;
        };
        let now = Instant::now();
        self.latency.record_us(unix_us().saturating_sub(ts));
        self.frames += 1;
        self.bytes += data.len() as u64;
        let e = self.streams.entry((index, kind)).or_insert((seq, seq, 0));
        e.0 = e.0.min(seq);
        e.1 = e.1.max(seq);
        e.2 += 1;
        if let Some(last) = self.last_frame {
            let gap = now.saturating_duration_since(last);
            if gap > self.longest_gap {
                self.longest_gap = gap;
            }
            if gap > GAP && self.gaps.len() < 256 {
                self.gaps.push(gap);
            }
        }
        self.last_frame = Some(now);
    }

    /// Frames missing from the streams this peer received (gaps in sequence numbers).
    pub fn missing(&self) -> u64 {
        self.streams
            .values()
            .map(|(first, last, got)| (last - first + 1).saturating_sub(*got))
            .sum()
    }
}

pub type Shared = Arc<Mutex<PeerStats>>;

/// A pause in received media longer than this counts as a gap (frames come every 20 ms).
pub const GAP: Duration = Duration::from_millis(250);

pub(crate) const KIND_VIDEO: u8 = 1;
pub(crate) const KIND_AUDIO: u8 = 2;
/// Frame header after the codec byte: send time (8), publisher (4), kind (1), seq (8).
const HEADER: usize = 1 + 8 + 4 + 1 + 8;

pub(crate) fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn frame(first: u8, index: u32, kind: u8, seq: u64, size: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(size.max(HEADER));
    f.push(first);
    f.extend_from_slice(&unix_us().to_be_bytes());
    f.extend_from_slice(&index.to_be_bytes());
    f.push(kind);
    f.extend_from_slice(&seq.to_be_bytes());
    f.resize(size.max(HEADER), 0x55);
    f
}

pub(crate) fn parse(data: &[u8]) -> Option<(u64, u32, u8, u64)> {
    if data.len() < HEADER {
        return None;
    }
    let ts = u64::from_be_bytes(data[1..9].try_into().ok()?);
    let index = u32::from_be_bytes(data[9..13].try_into().ok()?);
    let kind = data[13];
    let seq = u64::from_be_bytes(data[14..22].try_into().ok()?);
    Some((ts, index, kind, seq))
}

/// Runs one participant until `stop` turns true (then leaves the call). Rejoins by itself when the
/// server ends its call (`call.closed`, a move or a restart) or the socket drops.
pub async fn run(cfg: PeerConfig, stats: Shared, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        match session(&cfg, &stats, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                if let Ok(mut s) = stats.lock() {
                    if s.errors.len() < 20 {
                        s.errors.push(format!("peer {}: {e:#}", cfg.index));
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

struct Signal {
    tx: ws::Writer,
    rx: mpsc::UnboundedReceiver<Value>,
    n: u64,
    index: u32,
}

impl Signal {
    async fn send(&mut self, mut frame: Value) -> anyhow::Result<String> {
        self.n += 1;
        let id = format!("b{}-{}", self.index, self.n);
        frame["id"] = json!(id);
        ws::send_text(&self.tx, frame.to_string()).await?;
        Ok(id)
    }

    /// Sends a request and waits for its reply; other frames go to `other`.
    async fn request(&mut self, frame: Value, other: &mut Vec<Value>) -> anyhow::Result<Value> {
        let id = self.send(frame).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .map_err(|_| anyhow!("no reply to {id}"))?
                .ok_or_else(|| anyhow!("socket closed"))?;
            if m["id"] == id.as_str() {
                if m["t"] == "error" {
                    bail!("{}: {}", m["code"], m["message"]);
                }
                return Ok(m);
            }
            other.push(m);
        }
    }
}

struct Pending {
    id: String,
    offer: SdpPendingOffer,
    subs: Vec<(Mid, String)>,
}

async fn session(
    cfg: &PeerConfig,
    stats: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let url = WsUrl::parse(&cfg.url)?;
    let path = match &cfg.token {
        Some(t) => format!("{}?token={t}", url.path),
        None => url.path.clone(),
    };
    let (mut reader, writer) = ws::connect(&url, &path, None, Duration::from_secs(10)).await?;
    let (ftx, frx) = mpsc::unbounded_channel();
    let w2 = writer.clone();
    let read_task = tokio::spawn(async move {
        loop {
            match ws::read(&mut reader, &w2).await {
                Msg::Text(t) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(&t) {
                        if ftx.send(v).is_err() {
                            return;
                        }
                    }
                }
                Msg::Binary(_) => {}
                Msg::Closed(_) => return,
            }
        }
    });
    let mut sig = Signal {
        tx: writer.clone(),
        rx: frx,
        n: 0,
        index: cfg.index,
    };
    let result = call(cfg, stats, stop, &mut sig).await;
    ws::close(&writer).await;
    read_task.abort();
    result
}

async fn call(
    cfg: &PeerConfig,
    stats: &Shared,
    stop: &mut watch::Receiver<bool>,
    sig: &mut Signal,
) -> anyhow::Result<()> {
    let mut other = Vec::new();
    let hello = sig.rx.recv().await.ok_or_else(|| anyhow!("no hello"))?;
    if hello["t"] != "hello" {
        bail!("expected hello, got {hello}");
    }
    sig.request(json!({"t": "join", "room": cfg.room}), &mut other)
        .await?;
    let started = Instant::now();
    let joined = sig
        .request(json!({"t": "call.join", "room": cfg.room}), &mut other)
        .await?;
    let me = joined["participant"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut known: BTreeMap<String, Value> = BTreeMap::new();
    for t in joined["tracks"].as_array().into_iter().flatten() {
        known.insert(t["id"].as_str().unwrap_or_default().to_owned(), t.clone());
    }
    if let Ok(mut s) = stats.lock() {
        s.joins += 1;
    }
    let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).await?;
    let local = socket.local_addr()?;
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").context("host candidate")?);
    // Publish and subscribe in the first offer.
    let mut sending: Vec<(Mid, u8)> = Vec::new();
    let mut subscribed: HashMap<String, Mid> = HashMap::new();
    let mut pending = offer(
        cfg,
        &mut rtc,
        sig,
        &known,
        &me,
        &mut subscribed,
        Some(&mut sending),
    )
    .await?;
    let mut renegotiate = false;
    let mut buf = vec![0u8; 2048];
    let mut video_seq = 0u64;
    let mut audio_seq = 0u64;
    let mut owe_key = true;
    let mut next_video = tokio::time::Instant::now();
    let mut next_audio = tokio::time::Instant::now();
    let video_every = Duration::from_secs_f64(1.0 / f64::from(cfg.fps.max(1)));
    let audio_every = Duration::from_millis(20);
    let mut connected = false;
    let mut rtc_at;
    for m in other.drain(..) {
        handle_event(&m, &mut known, &me, &mut renegotiate);
    }
    loop {
        // Drain str0m.
        loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => {
                    rtc_at = tokio::time::Instant::from_std(t);
                    break;
                }
                Output::Transmit(t) => {
                    let _ = socket.try_send_to(&t.contents, t.destination);
                }
                Output::Event(e) => match e {
                    Event::Connected => {
                        connected = true;
                        if let Ok(mut s) = stats.lock() {
                            s.connected_in.get_or_insert(started.elapsed());
                        }
                    }
                    Event::MediaData(d) => {
                        if let Ok(mut s) = stats.lock() {
                            s.received(&d.data);
                        }
                    }
                    Event::KeyframeRequest(_) => owe_key = true,
                    Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected) => {
                        bail!("ICE disconnected")
                    }
                    _ => {}
                },
            }
        }
        if renegotiate && pending.is_none() {
            renegotiate = false;
            pending = offer(cfg, &mut rtc, sig, &known, &me, &mut subscribed, None).await?;
        }
        let wake = rtc_at.min(next_video).min(next_audio);
        tokio::select! {
            _ = stop.changed() => {
                if *stop.borrow() {
                    let _ = sig.send(json!({"t": "call.leave", "room": cfg.room})).await;
                    return Ok(());
                }
            }
            m = sig.rx.recv() => {
                let m = m.ok_or_else(|| anyhow!("socket closed"))?;
                if pending.as_ref().is_some_and(|p| m["id"] == p.id.as_str()) {
                    let p = pending.take().expect("checked");
                    if m["t"] != "call.answer" {
                        bail!("offer refused: {m}");
                    }
                    let answer = SdpAnswer::from_sdp_string(m["sdp"].as_str().unwrap_or_default())?;
                    rtc.sdp_api().accept_answer(p.offer, answer)?;
                    for (mid, track) in p.subs {
                        subscribed.insert(track, mid);
                    }
                } else if m["t"] == "call.closed" || m["t"] == "room.closed" {
                    bail!("{}: {}", m["t"], m["code"]);
                } else {
                    handle_event(&m, &mut known, &me, &mut renegotiate);
                }
            }
            r = socket.recv_from(&mut buf) => {
                let (n, source) = r?;
                if let Ok(contents) = buf[..n].try_into() {
                    let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: local, contents });
                    rtc.handle_input(input)?;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                if now >= rtc_at {
                    rtc.handle_input(Input::Timeout(now.into_std()))?;
                }
                if now >= next_video {
                    next_video += video_every;
                    if connected {
                        video_seq += 1;
                        let key = std::mem::take(&mut owe_key) || video_seq % (u64::from(cfg.fps) * 2) == 1;
                        write_video(cfg, &mut rtc, &sending, video_seq, key)?;
                    }
                }
                if now >= next_audio {
                    next_audio += audio_every;
                    if connected {
                        audio_seq += 1;
                        write_audio(cfg, &mut rtc, &sending, audio_seq)?;
                    }
                }
            }
        }
    }
}

fn handle_event(m: &Value, known: &mut BTreeMap<String, Value>, me: &str, renegotiate: &mut bool) {
    match m["t"].as_str() {
        Some("track.published") => {
            let t = &m["track"];
            if t["participant"] != me {
                known.insert(t["id"].as_str().unwrap_or_default().to_owned(), t.clone());
                *renegotiate = true;
            }
        }
        Some("track.unpublished") => {
            known.remove(m["track"].as_str().unwrap_or_default());
        }
        _ => {}
    }
}

async fn offer(
    cfg: &PeerConfig,
    rtc: &mut Rtc,
    sig: &mut Signal,
    known: &BTreeMap<String, Value>,
    me: &str,
    subscribed: &mut HashMap<String, Mid>,
    sending: Option<&mut Vec<(Mid, u8)>>,
) -> anyhow::Result<Option<Pending>> {
    let mut api = rtc.sdp_api();
    let mut publish = Vec::new();
    if let Some(sending) = sending {
        if cfg.video {
            let sim = cfg.simulcast.then(|| {
                let mut s = Simulcast::new();
                for r in ["q", "h", "f"] {
                    s.add_send_layer(SimulcastLayer::new(r));
                }
                s
            });
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, sim);
            publish.push(json!({"mid": mid.to_string(), "kind": "camera"}));
            sending.push((mid, KIND_VIDEO));
        }
        if cfg.audio {
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            publish.push(json!({"mid": mid.to_string(), "kind": "microphone"}));
            sending.push((mid, KIND_AUDIO));
        }
    }
    let mut subs = Vec::new();
    let mut entries = Vec::new();
    for (id, t) in known {
        if t["participant"] == me || subscribed.contains_key(id) {
            continue;
        }
        let video = matches!(t["kind"].as_str(), Some("camera") | Some("screen"));
        let media = if video {
            MediaKind::Video
        } else {
            MediaKind::Audio
        };
        let mid = api.add_media(media, Direction::RecvOnly, None, None, None);
        let quality = if t["kind"] == "camera" {
            cfg.quality.as_str()
        } else {
            "high"
        };
        entries.push(json!({"mid": mid.to_string(), "track": id, "quality": quality}));
        subs.push((mid, id.clone()));
    }
    let Some((offer, pending)) = api.apply() else {
        return Ok(None);
    };
    let frame = json!({"t": "call.offer", "room": cfg.room, "sdp": offer.to_sdp_string(), "publish": publish, "subscribe": entries});
    let id = sig.send(frame).await?;
    Ok(Some(Pending {
        id,
        offer: pending,
        subs,
    }))
}

pub(crate) fn write_video(
    cfg: &PeerConfig,
    rtc: &mut Rtc,
    sending: &[(Mid, u8)],
    seq: u64,
    key: bool,
) -> anyhow::Result<()> {
    let Some((mid, _)) = sending.iter().find(|(_, k)| *k == KIND_VIDEO) else {
        return Ok(());
    };
    let rids: Vec<Option<str0m::media::Rid>> = match rtc.media(*mid).map(|m| m.rids_tx()) {
        Some(str0m::media::Rids::Specific(r)) => r.iter().copied().map(Some).collect(),
        _ => vec![None],
    };
    let time = MediaTime::from_90khz(seq * u64::from(90_000 / cfg.fps.max(1)));
    for (i, rid) in rids.iter().enumerate() {
        let Some(w) = rtc.writer(*mid) else { continue };
        let Some(pt) = w
            .payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
        else {
            continue;
        };
        let w = match rid {
            Some(r) => w.rid(*r),
            None => w,
        };
        // Layer sizes: q a quarter, h a half, f the whole of `video_bytes`.
        let size = if rids.len() == 3 {
            cfg.video_bytes >> (2 - i)
        } else {
            cfg.video_bytes
        };
        let data = frame(
            if key { 0x10 } else { 0x11 },
            cfg.index,
            KIND_VIDEO,
            seq,
            size,
        );
        w.write(pt, Instant::now(), time, data)?;
    }
    Ok(())
}

pub(crate) fn write_audio(
    cfg: &PeerConfig,
    rtc: &mut Rtc,
    sending: &[(Mid, u8)],
    seq: u64,
) -> anyhow::Result<()> {
    let Some((mid, _)) = sending.iter().find(|(_, k)| *k == KIND_AUDIO) else {
        return Ok(());
    };
    let Some(w) = rtc.writer(*mid) else {
        return Ok(());
    };
    let Some(pt) = w
        .payload_params()
        .find(|p| p.spec().codec == Codec::Opus)
        .map(|p| p.pt())
    else {
        return Ok(());
    };
    let time = MediaTime::new(seq * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ);
    // An Opus frame of a loud-ish voice: ~32 kbit/s, with an audio level for the SFU's speaker logic.
    let data = frame(0xfc, cfg.index, KIND_AUDIO, seq, 80);
    w.audio_level(-30 - (cfg.index % 20) as i8, true)
        .write(pt, Instant::now(), time, data)?;
    Ok(())
}
