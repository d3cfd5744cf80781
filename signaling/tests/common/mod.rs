//! A virtual network on a virtual clock: the call core and in-memory str0m peers (the clients),
//! exchanging signaling frames and datagrams with no socket and no sleep.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proto::v1::{CallRequest, Publish, Quality, RequestId, Subscribe, TrackKind};
use proto::{Access, EventPayload, RoomId, UserId};
use serde_json::Value;
use signaling::{CallConfig, CallCore, CallOutput};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

pub const SERVER: &str = "10.0.0.1:3478";

pub fn server() -> SocketAddr {
    SERVER.parse().unwrap()
}

pub fn room() -> RoomId {
    RoomId::parse("standup").unwrap()
}

/// One client: a str0m peer, what it was told over signaling, what media it received.
pub struct Client {
    pub conn: u64,
    pub user: UserId,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    pub next: Instant,
    pub frames: Vec<Value>,
    pub participant: Option<String>,
    pub pending: Option<SdpPendingOffer>,
    /// Own sending m-lines: mid → kind.
    pub sending: BTreeMap<Mid, TrackKind>,
    /// Own receiving m-lines: mid → remote track id.
    pub receiving: BTreeMap<Mid, String>,
    /// Media frames received per receiving mid (and the rids seen: none without simulcast).
    pub received: HashMap<Mid, usize>,
    pub keyframes: HashMap<Mid, usize>,
    /// The last payload byte received per mid (the sender marks each layer in it).
    pub marks: HashMap<Mid, u8>,
    /// Key frames asked of this client, per mid.
    pub asked: HashMap<Mid, usize>,
    /// Mids whose next frame is a key frame (asked and not yet sent).
    pub owe_keyframe: std::collections::BTreeSet<Mid>,
    pub alive: bool,
    pub connected: bool,
}

pub struct Net {
    pub now: Instant,
    pub core: CallCore<u64>,
    pub clients: Vec<Client>,
    pub persisted: Vec<(UserId, EventPayload)>,
    pub rid: u64,
    /// Datagrams that went nowhere (no client at that address).
    pub lost: usize,
}

impl Net {
    pub fn new(cfg: CallConfig) -> Self {
        let cfg = CallConfig {
            candidates: vec![server()],
            ..cfg
        };
        Self {
            now: Instant::now(),
            core: CallCore::new(cfg, 7),
            clients: Vec::new(),
            persisted: Vec::new(),
            rid: 0,
            lost: 0,
        }
    }

    /// A client (not yet in the call) at 10.0.1.x.
    pub fn client(&mut self, user: &str) -> usize {
        let i = self.clients.len();
        let addr: SocketAddr = format!("10.0.1.{}:5000", i + 1).parse().unwrap();
        let mut rtc = Rtc::builder()
            .enable_bwe(Some(str0m::bwe::Bitrate::mbps(10)))
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        self.clients.push(Client {
            conn: i as u64 + 1,
            user: UserId::parse(user).unwrap(),
            addr,
            rtc,
            next: self.now,
            frames: Vec::new(),
            participant: None,
            pending: None,
            sending: BTreeMap::new(),
            receiving: BTreeMap::new(),
            received: HashMap::new(),
            keyframes: HashMap::new(),
            marks: HashMap::new(),
            asked: HashMap::new(),
            owe_keyframe: Default::default(),
            alive: true,
            connected: false,
        });
        i
    }

    pub fn request(&mut self, c: usize, access: Access, req: CallRequest) -> String {
        self.rid += 1;
        let id = format!("r{}", self.rid);
        let (conn, user) = (self.clients[c].conn, self.clients[c].user.clone());
        self.core.handle_request(
            self.now,
            conn,
            user,
            access,
            room(),
            Some(RequestId::parse(&id).unwrap()),
            req,
        );
        self.pump_outputs();
        id
    }

    /// The reply to request `id` of client `c`.
    pub fn reply(&self, c: usize, id: &str) -> Value {
        self.clients[c]
            .frames
            .iter()
            .find(|f| f["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no reply to {id} in {:?}", self.clients[c].frames))
    }

    pub fn join(&mut self, c: usize, access: Access) -> Value {
        let id = self.request(c, access, CallRequest::Join);
        let r = self.reply(c, &id);
        assert_eq!(r["t"], "call.joined", "{r}");
        self.clients[c].participant = r["participant"].as_str().map(str::to_owned);
        r
    }

    /// Offers the client's current description: `publish` for new sending m-lines, and a receiving
    /// m-line for each of `subscribe` (track ids) with `quality`; answers it with the server's answer.
    pub fn negotiate(
        &mut self,
        c: usize,
        access: Access,
        publish: &[(TrackKind, bool)],
        subscribe: &[(&str, Quality)],
    ) -> Value {
        let kinds: Vec<bool> = subscribe
            .iter()
            .map(|(t, _)| self.track_is_video(c, t))
            .collect();
        let cl = &mut self.clients[c];
        let mut api = cl.rtc.sdp_api();
        let mut pubs = Vec::new();
        for (kind, simulcast) in publish {
            let media = if kind.is_video() {
                MediaKind::Video
            } else {
                MediaKind::Audio
            };
            let sim = simulcast.then(|| {
                let mut s = Simulcast::new();
                for r in ["l", "m", "h"] {
                    s.add_send_layer(SimulcastLayer::new(r));
                }
                s
            });
            let mid = api.add_media(media, Direction::SendOnly, None, None, sim);
            pubs.push((mid, *kind));
        }
        let mut subs = Vec::new();
        for ((track, q), video) in subscribe.iter().zip(kinds) {
            let media = if video {
                MediaKind::Video
            } else {
                MediaKind::Audio
            };
            let mid = api.add_media(media, Direction::RecvOnly, None, None, None);
            subs.push((mid, track.to_string(), *q));
        }
        let Some((offer, pending)) = api.apply() else {
            panic!("nothing to negotiate");
        };
        let sdp = offer.to_sdp_string();
        let publish_entries = pubs
            .iter()
            .map(|(m, k)| Publish {
                mid: m.to_string(),
                kind: *k,
            })
            .collect();
        let subscribe_entries = subs
            .iter()
            .map(|(m, t, q)| Subscribe {
                mid: m.to_string(),
                track: t.clone(),
                quality: *q,
            })
            .collect();
        let id = self.request(
            c,
            access,
            CallRequest::Offer {
                sdp,
                publish: publish_entries,
                subscribe: subscribe_entries,
            },
        );
        let r = self.reply(c, &id);
        let cl = &mut self.clients[c];
        if r["t"] == "call.answer" {
            let answer = SdpAnswer::from_sdp_string(r["sdp"].as_str().unwrap()).unwrap();
            cl.rtc.sdp_api().accept_answer(pending, answer).unwrap();
            for (m, k) in pubs {
                cl.sending.insert(m, k);
            }
            for (m, t, _) in subs {
                cl.receiving.insert(m, t);
            }
        } else {
            // Refused: the client rolls back (a fresh pending offer is simply dropped).
            drop(pending);
        }
        self.pump();
        r
    }

    /// Moves core outputs to their destinations (frames to clients, datagrams to peers).
    pub fn pump_outputs(&mut self) {
        while let Some(o) = self.core.poll_output() {
            match o {
                CallOutput::Send { conn, msg } => {
                    let v: Value = serde_json::from_slice(&msg).unwrap();
                    if let Some(c) = self.clients.iter_mut().find(|c| c.conn == conn) {
                        c.frames.push(v);
                    }
                }
                CallOutput::Persist { actor, payload, .. } => self.persisted.push((actor, payload)),
                CallOutput::Transmit {
                    source,
                    destination,
                    data,
                } => {
                    let Some(c) = self
                        .clients
                        .iter_mut()
                        .find(|c| c.addr == destination && c.alive)
                    else {
                        self.lost += 1;
                        continue;
                    };
                    let input = Input::Receive(
                        self.now,
                        Receive {
                            proto: Protocol::Udp,
                            source,
                            destination,
                            contents: data.as_slice().try_into().unwrap(),
                        },
                    );
                    c.rtc.handle_input(input).unwrap();
                }
            }
        }
    }

    /// Drains every client until each only waits for time; delivers what they send.
    pub fn pump(&mut self) {
        for _ in 0..50 {
            self.pump_outputs();
            let mut sent = Vec::new();
            for c in self.clients.iter_mut().filter(|c| c.alive) {
                loop {
                    match c.rtc.poll_output().unwrap() {
                        Output::Timeout(t) => {
                            c.next = t;
                            break;
                        }
                        Output::Transmit(t) => {
                            sent.push((t.source, t.destination, t.contents.to_vec()))
                        }
                        Output::Event(e) => match e {
                            Event::Connected => c.connected = true,
                            Event::MediaData(d) => {
                                *c.received.entry(d.mid).or_default() += 1;
                                if let Some(b) = d.data.last() {
                                    c.marks.insert(d.mid, *b);
                                }
                                if d.is_keyframe() {
                                    *c.keyframes.entry(d.mid).or_default() += 1;
                                }
                            }
                            Event::KeyframeRequest(r) => {
                                *c.asked.entry(r.mid).or_default() += 1;
                                c.owe_keyframe.insert(r.mid);
                            }
                            _ => {}
                        },
                    }
                }
            }
            if sent.is_empty() {
                self.pump_outputs();
                return;
            }
            for (source, destination, data) in sent {
                self.core
                    .handle_datagram(self.now, source, destination, &data);
            }
        }
    }

    /// Runs the virtual clock for `d`, event by event: every timer (the core's, each client's)
    /// fires exactly when due, and `each` runs every `period` (the media clock of the senders).
    pub fn advance(&mut self, d: Duration, period: Duration, mut each: impl FnMut(&mut Net)) {
        let end = self.now + d;
        let mut tick = self.now;
        let mut steps = 0u64;
        let mut fired: Option<Instant> = None;
        loop {
            let mut next = tick.min(end);
            if let Some(t) = self.core.poll_timeout() {
                next = next.min(t);
            }
            for c in self.clients.iter().filter(|c| c.alive) {
                next = next.min(c.next);
            }
            // Time never runs backwards; a timer due now fires now, and one that asks again at the
            // same instant (str0m's pacer releases one packet per timeout) gets a microsecond later.
            if next <= self.now && fired == Some(self.now) {
                next = self.now + Duration::from_micros(20);
            }
            self.now = self.now.max(next);
            fired = Some(self.now);
            if self.now >= end {
                break;
            }
            steps += 1;
            assert!(steps < 5_000_000, "the timers never settle");
            for c in self.clients.iter_mut().filter(|c| c.alive) {
                if c.next <= self.now {
                    c.rtc.handle_input(Input::Timeout(self.now)).unwrap();
                }
            }
            if self.core.poll_timeout().is_some_and(|t| t <= self.now) {
                self.core.handle_timeout(self.now);
            }
            if tick <= self.now {
                each(self);
                tick += period;
            }
            self.pump();
        }
    }

    /// Writes one media frame on each of the client's sending m-lines (`key`: a key frame).
    pub fn send_media(&mut self, c: usize, key: bool, seq: u64) {
        let now = self.now;
        let cl = &mut self.clients[c];
        let mids: Vec<(Mid, TrackKind)> = cl.sending.iter().map(|(m, k)| (*m, *k)).collect();
        for (mid, kind) in mids {
            // A client answers key-frame requests with a key frame (all layers, as browsers do).
            let key = cl.owe_keyframe.remove(&mid) || key;
            let Some(media) = cl.rtc.media(mid) else {
                continue;
            };
            let rids: Vec<_> = match media.rids_tx() {
                str0m::media::Rids::Specific(r) => r.iter().copied().map(Some).collect(),
                _ => vec![None],
            };
            for rid in rids {
                let Some(w) = cl.rtc.writer(mid) else {
                    continue;
                };
                let codec = if kind.is_video() {
                    Codec::Vp8
                } else {
                    Codec::Opus
                };
                let Some(pt) = w
                    .payload_params()
                    .find(|p| p.spec().codec == codec)
                    .map(|p| p.pt())
                else {
                    continue;
                };
                let w = match rid {
                    Some(r) => w.rid(r),
                    None => w,
                };
                let (time, data) = if kind.is_video() {
                    let mut frame = vec![if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a];
                    // The layer's mark ('l', 'm', 'h'; 'v' without simulcast) fills the frame.
                    // Sizes as real layers differ: low 150, medium 400, high 1000 bytes a frame.
                    let mark = rid.map_or(b'v', |r| r.as_bytes()[0]);
                    let size = match mark {
                        b'l' => 150,
                        b'm' => 400,
                        b'h' => 1000,
                        _ => 600,
                    };
                    frame.extend(std::iter::repeat_n(mark, size));
                    (MediaTime::from_90khz(seq * 3000), frame)
                } else {
                    (
                        MediaTime::new(seq * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ),
                        vec![0xfc; 80],
                    )
                };
                let w = if kind.is_video() {
                    w
                } else {
                    // Client 0 is the loudest voice, each next one 15 dB quieter.
                    w.audio_level(-10 - 15 * (c as i8).min(7), true)
                };
                w.write(pt, now, time, data).unwrap();
            }
        }
    }

    /// Whether track `id` is video, from what client `c` was told (`call.joined`, `track.published`).
    pub fn track_is_video(&self, c: usize, id: &str) -> bool {
        matches!(self.track_kind(c, id).as_str(), "camera" | "screen")
    }

    /// The kind of track `id`, from what client `c` was told.
    pub fn track_kind(&self, c: usize, id: &str) -> String {
        let infos = self.clients[c].frames.iter().flat_map(|f| {
            let mut v: Vec<Value> = f["tracks"].as_array().cloned().unwrap_or_default();
            if f["t"] == "track.published" {
                v.push(f["track"].clone());
            }
            v
        });
        for t in infos {
            if t["id"] == id {
                return t["kind"].as_str().unwrap_or_default().to_owned();
            }
        }
        panic!("client {c} was never told of track {id}")
    }

    /// Frames of type `t` client `c` received.
    pub fn frames_of(&self, c: usize, t: &str) -> Vec<Value> {
        self.clients[c]
            .frames
            .iter()
            .filter(|f| f["t"] == t)
            .cloned()
            .collect()
    }
}
