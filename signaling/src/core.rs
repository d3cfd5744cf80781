//! The call core: every call of one shard, sans-IO.
//!
//! Inputs: `handle_request` (signaling from room members), `handle_datagram` (UDP from the shard's
//! media socket), `handle_departed` / `handle_close` / `handle_release` (room membership ends),
//! `handle_timeout`. Outputs: [`CallOutput`] through `poll_output`; the next deadline through
//! `poll_timeout`. No clock, socket or thread inside.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::event::{CallParticipantV1, CallV1, ScreenShareV1};
use proto::v1::{
    CallRequest, ErrorCode, IceServer, ParticipantInfo, Publish, Quality, RequestId, ServerFrame,
    Subscribe, TrackInfo, TrackKind,
};
use proto::{Access, EventPayload, RoomId, UserId};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::media::{Mid, Rid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};

use crate::config::CallConfig;

mod forward;
use crate::sdp::{self, Section};

/// Call frames carry no room events.
type Frame = ServerFrame<()>;

/// What the call core asks its driver to do.
#[derive(Debug)]
pub enum CallOutput<C> {
    /// Send one text frame to a room member's connection.
    Send {
        /// The connection.
        conn: C,
        /// The frame.
        msg: Arc<[u8]>,
    },
    /// Send one UDP datagram from the media socket.
    Transmit {
        /// The local address it leaves from.
        source: SocketAddr,
        /// Where to.
        destination: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
    },
    /// Append an event to the room's log (call lifecycle, screen share).
    Persist {
        /// The room.
        room: RoomId,
        /// Who caused it.
        actor: UserId,
        /// What happened.
        payload: EventPayload,
    },
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Calls in progress.
    pub calls: usize,
    /// Participants in all calls.
    pub participants: usize,
    /// Published tracks.
    pub tracks: usize,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams dropped (garbage, oversized, from nobody's address).
    pub datagrams_dropped: u64,
    /// Media frames written to subscribers.
    pub frames_forwarded: u64,
    /// Payload bytes written to subscribers.
    pub bytes_forwarded: u64,
    /// Key frames asked of publishers.
    pub keyframe_requests: u64,
}

/// A refusal: the wire code and a message.
type Refusal = (ErrorCode, String);

fn refuse(code: ErrorCode, msg: impl Into<String>) -> Refusal {
    (code, msg.into())
}

/// Ingress rate of one layer, over one-second windows.
#[derive(Debug, Clone)]
struct Meter {
    since: Instant,
    bytes: u64,
    /// Bits per second in the last full window (0 before the first).
    rate: u64,
    /// When the layer last carried media.
    seen: Instant,
}

impl Meter {
    fn new(now: Instant) -> Self {
        Self {
            since: now,
            bytes: 0,
            rate: 0,
            seen: now,
        }
    }

    fn add(&mut self, now: Instant, bytes: usize) {
        self.seen = now;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= Duration::from_secs(1) {
            self.rate = (self.bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
            self.bytes = 0;
            self.since = now;
        }
        self.bytes += bytes as u64;
    }
}

/// A track a participant publishes.
#[derive(Debug)]
struct Published {
    id: String,
    mid: Mid,
    kind: TrackKind,
    muted: bool,
    /// Simulcast rids as the publisher listed them (empty: no simulcast).
    layers: Vec<Rid>,
    meters: HashMap<Option<Rid>, Meter>,
    /// Smoothed audio level in -dBov (0 loudest, 127 silence).
    level: f32,
    last_keyframe_request: HashMap<Option<Rid>, Instant>,
}

impl Published {
    /// The layers the publisher sends now (media within the last second), from lowest to highest
    /// bitrate: as the publisher listed them, unless their measured rates show the list runs the
    /// other way. Browsers send fewer layers than offered for small or constrained sources (Chrome:
    /// two of three at 640×480). Before any media, every listed layer.
    fn layers_by_rate(&self, now: Instant) -> Vec<Rid> {
        let live: Vec<Rid> = self
            .layers
            .iter()
            .copied()
            .filter(|r| {
                self.meters
                    .get(&Some(*r))
                    .is_some_and(|m| now.saturating_duration_since(m.seen) < LAYER_GONE)
            })
            .collect();
        let mut l = if live.is_empty() {
            self.layers.clone()
        } else {
            live
        };
        if let (Some(first), Some(last)) = (l.first(), l.last()) {
            let (a, b) = (self.rate(Some(*first)), self.rate(Some(*last)));
            if b > 0 && a > b + b / 2 {
                l.reverse();
            }
        }
        l
    }

    fn rate(&self, rid: Option<Rid>) -> u64 {
        self.meters.get(&rid).map_or(0, |m| m.rate)
    }
}

/// One m-line of a subscriber carrying another participant's track.
#[derive(Debug)]
struct Sub {
    mid: Mid,
    track: String,
    source: u64,
    source_mid: Mid,
    video: bool,
    quality: Quality,
    /// The layer to forward (chosen from `quality` and the bandwidth estimate).
    target: Option<Rid>,
    /// The layer being forwarded; switches to `target` on its next key frame.
    current: Option<Rid>,
    /// A key frame has been forwarded (video starts on one).
    started: bool,
    /// Added to the source's RTP time (ticks) so that a layer switch keeps the timeline.
    offset: i64,
    /// Not forwarded: the subscriber's bandwidth estimate does not fit it.
    paused: bool,
    last_out: Option<(u64, Instant)>,
}

struct Participant<C> {
    name: String,
    conn: C,
    user: UserId,
    room: RoomId,
    access: Access,
    rtc: Rtc,
    next: Instant,
    declared: HashMap<String, TrackKind>,
    published: Vec<Published>,
    subs: Vec<Sub>,
    connected: bool,
    joined_at: Instant,
    lost_at: Option<Instant>,
    /// Downstream estimate, bits/s.
    estimate: u64,
    tokens: f64,
    refilled: Instant,
    /// The local ICE username fragment (STUN from a new address is routed by it).
    ufrag: String,
    /// Source addresses this participant's media came from, oldest first (at most `MAX_ADDRS`).
    addrs: VecDeque<SocketAddr>,
    /// Remote candidates trickled with `call.ice`.
    candidates: usize,
}

struct Call {
    id: String,
    parts: BTreeSet<u64>,
    speaker: Option<u64>,
    /// With more audio tracks than `audio_top_n`: the loudest ones (track ids).
    loudest: Option<BTreeSet<String>>,
}

/// How often levels, speakers and layer choices are re-evaluated.
const TICK: Duration = Duration::from_millis(200);
/// Key frames are asked of one layer at most this often.
const KEYFRAME_THROTTLE: Duration = Duration::from_millis(300);
/// Source addresses remembered per participant (a network change adds one).
const MAX_ADDRS: usize = 4;
/// Remote candidates one participant may trickle.
const MAX_CANDIDATES: usize = 32;
/// `call.join`s per connection: a burst of this many, then one a second.
const JOIN_BURST: f64 = 5.0;
/// Longest mid accepted (str0m's `Mid` holds 16 bytes).
const MAX_MID: usize = 16;
/// A simulcast layer with no media for this long is not chosen for subscribers.
const LAYER_GONE: Duration = Duration::from_secs(1);
/// How much louder (dB) a voice must be than the active speaker's to take over.
const SPEAKER_MARGIN: f32 = 6.0;
/// Below this level (-dBov) nobody counts as speaking.
const SPEAKING: f32 = 60.0;

/// Every call of one shard.
pub struct CallCore<C> {
    cfg: CallConfig,
    seed: u64,
    next_id: u64,
    calls: HashMap<RoomId, Call>,
    parts: BTreeMap<u64, Participant<C>>,
    by_conn: HashMap<(C, RoomId), u64>,
    by_addr: HashMap<SocketAddr, u64>,
    by_ufrag: HashMap<String, u64>,
    /// `call.join` budget per connection (joins append events to the room's log).
    join_budget: HashMap<C, (f64, Instant)>,
    out: VecDeque<CallOutput<C>>,
    dirty: BTreeSet<u64>,
    tick_at: Option<Instant>,
    stats: CallStats,
    /// ICE servers added to the configured ones in the next `call.joined` (per-user TURN
    /// credentials, set by the driver, which owns the wall clock).
    extra_ice: Vec<IceServer>,
}

impl<C: Copy + Eq + Hash + Ord + Debug> CallCore<C> {
    /// A core with no calls; `seed` makes call ids unique across restarts (the driver draws it).
    pub fn new(cfg: CallConfig, seed: u64) -> Self {
        Self {
            cfg,
            seed,
            next_id: 1,
            calls: HashMap::new(),
            parts: BTreeMap::new(),
            by_conn: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            join_budget: HashMap::new(),
            out: VecDeque::new(),
            dirty: BTreeSet::new(),
            tick_at: None,
            stats: CallStats::default(),
            extra_ice: Vec::new(),
        }
    }

    /// ICE servers to hand out, besides the configured ones, in the next `call.joined` replies
    /// (time-limited TURN credentials for the joining user).
    pub fn set_ice_servers(&mut self, servers: Vec<IceServer>) {
        self.extra_ice = servers;
    }

    /// The settings.
    pub fn config(&self) -> &CallConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> CallStats {
        CallStats {
            calls: self.calls.len(),
            participants: self.parts.len(),
            tracks: self.parts.values().map(|p| p.published.len()).sum(),
            ..self.stats.clone()
        }
    }

    /// The rooms with a call in progress.
    pub fn rooms(&self) -> Vec<RoomId> {
        self.calls.keys().cloned().collect()
    }

    /// The next output, if any. Drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<CallOutput<C>> {
        self.out.pop_front()
    }

    /// The earliest instant at which `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.tick_at;
        for p in self.parts.values() {
            let lost = p.lost_at.map(|l| l + self.cfg.ice_timeout);
            let never = (!p.connected && p.lost_at.is_none())
                .then_some(p.joined_at + self.cfg.connect_timeout);
            for d in [Some(p.next), lost, never].into_iter().flatten() {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        }
        t
    }

    fn send(&mut self, conn: C, frame: &Frame) {
        let msg: Arc<[u8]> = frame.to_bytes().into();
        self.out.push_back(CallOutput::Send { conn, msg });
    }

    /// Sends `frame` to every participant of the room's call but `except`.
    fn broadcast(&mut self, room: &RoomId, frame: &Frame, except: Option<u64>) {
        let Some(call) = self.calls.get(room) else {
            return;
        };
        let msg: Arc<[u8]> = frame.to_bytes().into();
        for pid in &call.parts {
            if Some(*pid) == except {
                continue;
            }
            if let Some(p) = self.parts.get(pid) {
                self.out.push_back(CallOutput::Send {
                    conn: p.conn,
                    msg: msg.clone(),
                });
            }
        }
    }

    fn persist(&mut self, room: &RoomId, actor: &UserId, payload: EventPayload) {
        self.out.push_back(CallOutput::Persist {
            room: room.clone(),
            actor: actor.clone(),
            payload,
        });
    }

    fn reply_error(&mut self, conn: C, room: &RoomId, rid: Option<RequestId>, e: Refusal) {
        let frame = Frame::Error {
            id: rid,
            code: e.0,
            message: e.1,
            room: Some(room.to_string()),
            doc: None,
        };
        self.send(conn, &frame);
    }

    fn ok(&mut self, conn: C, rid: Option<RequestId>) {
        if rid.is_some() {
            self.send(conn, &Frame::Ok { id: rid });
        }
    }

    /// A call request from room member `conn` (the driver checked membership and routing).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_request(
        &mut self,
        now: Instant,
        conn: C,
        user: UserId,
        access: Access,
        room: RoomId,
        rid: Option<RequestId>,
        req: CallRequest,
    ) {
        let result = match req {
            CallRequest::Join => self.join(now, conn, user, access, &room, rid.clone()),
            req => match self.by_conn.get(&(conn, room.clone())).copied() {
                None => Err(refuse(
                    ErrorCode::NotInCall,
                    "this connection is not in the room's call (call.join first)",
                )),
                Some(pid) => self
                    .check_rate(now, pid)
                    .and_then(|()| self.request(now, pid, rid.clone(), req)),
            },
        };
        if let Err(e) = result {
            self.reply_error(conn, &room, rid, e);
        }
        self.flush(now);
    }

    fn check_rate(&mut self, now: Instant, pid: u64) -> Result<(), Refusal> {
        let rate = f64::from(self.cfg.signal_rate.max(1));
        let Some(p) = self.parts.get_mut(&pid) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(p.refilled).as_secs_f64();
        p.tokens = (p.tokens + elapsed * rate).min(rate);
        p.refilled = now;
        if p.tokens < 1.0 {
            return Err(refuse(ErrorCode::Limit, "call requests per second"));
        }
        p.tokens -= 1.0;
        Ok(())
    }

    fn request(
        &mut self,
        now: Instant,
        pid: u64,
        rid: Option<RequestId>,
        req: CallRequest,
    ) -> Result<(), Refusal> {
        let (conn, room) = {
            let p = &self.parts[&pid];
            (p.conn, p.room.clone())
        };
        match req {
            // `handle_request` answers a join itself; one reaching here is a second join.
            CallRequest::Join => Err(refuse(ErrorCode::BadRequest, "already in the call")),
            CallRequest::Leave => {
                self.ok(conn, rid);
                self.remove(pid, "left", None);
                Ok(())
            }
            CallRequest::Offer {
                sdp,
                publish,
                subscribe,
            } => self.offer(now, pid, rid, &sdp, publish, subscribe),
            CallRequest::Ice { candidate } => {
                if let Some(c) = candidate {
                    let line = c.strip_prefix("a=").unwrap_or(&c);
                    let cand = Candidate::from_sdp_string(line).map_err(|e| {
                        refuse(ErrorCode::BadRequest, format!("ICE candidate: {e}"))
                    })?;
                    if let Some(p) = self.parts.get_mut(&pid) {
                        if p.candidates >= MAX_CANDIDATES {
                            return Err(refuse(ErrorCode::Limit, "ICE candidates per participant"));
                        }
                        p.candidates += 1;
                        p.rtc.add_remote_candidate(cand);
                        self.dirty.insert(pid);
                    }
                }
                self.ok(conn, rid);
                Ok(())
            }
            CallRequest::Publish { publish } => {
                let p = self.parts.get_mut(&pid).ok_or_else(gone)?;
                if p.access < Access::Write {
                    return Err(forbidden_publish());
                }
                check_mid(&publish.mid)?;
                if p.declared.len() >= self.cfg.max_tracks * 4 {
                    return Err(refuse(ErrorCode::Limit, "declared m-lines"));
                }
                p.declared.insert(publish.mid, publish.kind);
                self.ok(conn, rid);
                Ok(())
            }
            CallRequest::Unpublish { track } => {
                let p = self.parts.get_mut(&pid).ok_or_else(gone)?;
                let Some(i) = p.published.iter().position(|t| t.id == track) else {
                    return Err(refuse(ErrorCode::NotFound, "no such track of yours"));
                };
                let t = p.published.remove(i);
                p.declared.remove(&*t.mid);
                self.unpublished(pid, t);
                self.ok(conn, rid);
                Ok(())
            }
            CallRequest::Subscribe { track, quality } => {
                let p = self.parts.get_mut(&pid).ok_or_else(gone)?;
                let Some(s) = p.subs.iter_mut().find(|s| s.track == track) else {
                    return Err(refuse(
                        ErrorCode::NotFound,
                        "not subscribed to this track (subscribe in call.offer)",
                    ));
                };
                if s.quality == Quality::Off && quality != Quality::Off {
                    // Forwarding resumes on a key frame.
                    s.started = false;
                    s.current = None;
                    s.target = None;
                }
                s.quality = quality;
                self.allocate(now, pid);
                self.ok(conn, rid);
                Ok(())
            }
            CallRequest::Mute { track, muted } => {
                let p = self.parts.get_mut(&pid).ok_or_else(gone)?;
                let Some(t) = p.published.iter_mut().find(|t| t.id == track) else {
                    return Err(refuse(ErrorCode::NotFound, "no such track of yours"));
                };
                if t.muted != muted {
                    t.muted = muted;
                    let frame = Frame::TrackMuted {
                        room: room.clone(),
                        track,
                        muted,
                    };
                    self.broadcast(&room, &frame, None);
                }
                self.ok(conn, rid);
                Ok(())
            }
        }
    }

    fn join(
        &mut self,
        now: Instant,
        conn: C,
        user: UserId,
        access: Access,
        room: &RoomId,
        rid: Option<RequestId>,
    ) -> Result<(), Refusal> {
        if self.by_conn.contains_key(&(conn, room.clone())) {
            return Err(refuse(
                ErrorCode::BadRequest,
                "this connection is already in the call (call.leave first)",
            ));
        }
        let (tokens, at) = self.join_budget.entry(conn).or_insert((JOIN_BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64()).min(JOIN_BURST);
        *at = now;
        if *tokens < 1.0 {
            return Err(refuse(ErrorCode::Limit, "call joins per second"));
        }
        *tokens -= 1.0;
        let size = self.calls.get(room).map_or(0, |c| c.parts.len());
        if size >= self.cfg.max_participants {
            return Err(refuse(ErrorCode::Limit, "participants in this call"));
        }
        let creds = IceCreds::new();
        let ufrag = creds.ufrag.clone();
        let mut rtc = Rtc::builder()
            .set_local_ice_credentials(creds)
            .set_ice_lite(true)
            .enable_bwe(self.cfg.bwe.then(|| Bitrate::bps(self.cfg.initial_bitrate)))
            .build(now);
        for addr in &self.cfg.candidates {
            if let Ok(c) = Candidate::host(*addr, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let name = format!("p{id}");
        if !self.calls.contains_key(room) {
            let call_id = format!("{:x}-{id}", self.seed);
            self.calls.insert(
                room.clone(),
                Call {
                    id: call_id.clone(),
                    parts: BTreeSet::new(),
                    speaker: None,
                    loudest: None,
                },
            );
            let payload = EventPayload::CallStarted(CallV1 {
                call: call_id,
                user: user.clone(),
            });
            self.persist(room, &user, payload);
        }
        let call = self.calls.get_mut(room).ok_or_else(gone)?;
        call.parts.insert(id);
        let call_id = call.id.clone();
        let rate = f64::from(self.cfg.signal_rate.max(1));
        self.parts.insert(
            id,
            Participant {
                name: name.clone(),
                conn,
                user: user.clone(),
                room: room.clone(),
                access,
                rtc,
                next: now,
                declared: HashMap::new(),
                published: Vec::new(),
                subs: Vec::new(),
                connected: false,
                joined_at: now,
                lost_at: None,
                estimate: self.cfg.initial_bitrate,
                tokens: rate,
                refilled: now,
                ufrag: ufrag.clone(),
                addrs: VecDeque::new(),
                candidates: 0,
            },
        );
        self.by_conn.insert((conn, room.clone()), id);
        self.by_ufrag.insert(ufrag, id);
        self.persist(
            room,
            &user,
            EventPayload::CallParticipantJoined(CallParticipantV1 {
                call: call_id,
                user: user.clone(),
                participant: name.clone(),
                reason: None,
            }),
        );
        let (participants, tracks) = self.roster(room);
        let reply = Frame::CallJoined {
            id: rid,
            room: room.clone(),
            participant: name.clone(),
            participants,
            tracks,
            ice_servers: self
                .cfg
                .ice_servers
                .iter()
                .chain(&self.extra_ice)
                .cloned()
                .collect(),
        };
        self.send(conn, &reply);
        let joined = Frame::CallParticipantJoined {
            room: room.clone(),
            participant: ParticipantInfo { id: name, user },
        };
        self.broadcast(room, &joined, Some(id));
        if self.tick_at.is_none() {
            self.tick_at = Some(now + TICK);
        }
        self.dirty.insert(id);
        Ok(())
    }

    fn roster(&self, room: &RoomId) -> (Vec<ParticipantInfo>, Vec<TrackInfo>) {
        let mut people = Vec::new();
        let mut tracks = Vec::new();
        if let Some(call) = self.calls.get(room) {
            for pid in &call.parts {
                if let Some(p) = self.parts.get(pid) {
                    people.push(ParticipantInfo {
                        id: p.name.clone(),
                        user: p.user.clone(),
                    });
                    tracks.extend(p.published.iter().map(|t| track_info(p, t)));
                }
            }
        }
        (people, tracks)
    }

    fn offer(
        &mut self,
        now: Instant,
        pid: u64,
        rid: Option<RequestId>,
        sdp: &str,
        publish: Vec<Publish>,
        subscribe: Vec<Subscribe>,
    ) -> Result<(), Refusal> {
        if sdp.len() > self.cfg.max_sdp_bytes {
            return Err(refuse(ErrorCode::TooLarge, "SDP offer over its limit"));
        }
        let sections = sdp::sections(sdp);
        let room = self.parts.get(&pid).ok_or_else(gone)?.room.clone();
        // Check every entry against the offer before anything is applied.
        let mut declared = self.parts[&pid].declared.clone();
        if !publish.is_empty() && self.parts[&pid].access < Access::Write {
            return Err(forbidden_publish());
        }
        let mut mids: BTreeSet<String> = BTreeSet::new();
        for p in &publish {
            let s = entry_section(&sections, &mut mids, &p.mid, Role::Publish)?;
            if (s.media == "video") != p.kind.is_video() {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    format!("m-line {} is {}, not {}", p.mid, s.media, p.kind.as_str()),
                ));
            }
            declared.insert(p.mid.clone(), p.kind);
        }
        // Declarations only for m-lines of this offer (a declared mid that left the description is
        // forgotten), and a bounded number of them.
        declared.retain(|mid, _| sections.iter().any(|s| s.mid == *mid));
        if declared.len() > self.cfg.max_tracks * 2 {
            return Err(refuse(ErrorCode::Limit, "declared m-lines"));
        }
        let publishing = sections
            .iter()
            .filter(|s| s.sends && declared.contains_key(&s.mid))
            .count();
        if publishing > self.cfg.max_tracks {
            return Err(refuse(ErrorCode::Limit, "tracks per participant"));
        }
        let mut wanted: Vec<(Subscribe, u64, Mid, bool)> = Vec::new();
        for s in subscribe {
            let sec = entry_section(&sections, &mut mids, &s.mid, Role::Subscribe)?;
            let (source, t) = self.find_track(&room, &s.track).ok_or_else(|| {
                refuse(
                    ErrorCode::NotFound,
                    format!("no track {} in this call", s.track),
                )
            })?;
            if source == pid {
                return Err(refuse(ErrorCode::BadRequest, "a track of your own"));
            }
            if (sec.media == "video") != t.kind.is_video() {
                return Err(refuse(
                    ErrorCode::BadRequest,
                    format!(
                        "m-line {} is {}, track {} is {}",
                        s.mid,
                        sec.media,
                        s.track,
                        t.kind.as_str()
                    ),
                ));
            }
            let (mid, video) = (t.mid, t.kind.is_video());
            wanted.push((s, source, mid, video));
        }
        let offer = SdpOffer::from_sdp_string(sdp)
            .map_err(|e| refuse(ErrorCode::BadRequest, format!("SDP: {e}")))?;
        let p = self.parts.get_mut(&pid).ok_or_else(gone)?;
        let answer = match isolated(|| p.rtc.sdp_api().accept_offer(offer)) {
            Some(Ok(a)) => a,
            None => {
                p.rtc.disconnect();
                self.dirty.insert(pid);
                return Err(refuse(
                    ErrorCode::BadRequest,
                    "offer refused: str0m failed on it",
                ));
            }
            Some(Err(e)) => {
                // str0m may have given up on the peer connection (no fingerprint): the next drain
                // removes a participant whose connection died.
                self.dirty.insert(pid);
                return Err(refuse(ErrorCode::BadRequest, format!("offer refused: {e}")));
            }
        };
        p.declared = declared;
        // Subscriptions: new entries replace whatever the m-line carried; m-lines that stopped
        // receiving drop theirs.
        for (s, source, source_mid, video) in wanted {
            let mid = Mid::from(s.mid.as_str());
            p.subs.retain(|x| x.mid != mid);
            p.subs.push(Sub {
                mid,
                track: s.track,
                source,
                source_mid,
                video,
                quality: s.quality,
                target: None,
                current: None,
                started: false,
                offset: 0,
                paused: false,
                last_out: None,
            });
        }
        p.subs
            .retain(|x| sections.iter().any(|s| s.receives && s.mid == *x.mid));
        // Publications: declared sending m-lines; ones that stopped sending are unpublished.
        let mut gone_tracks = Vec::new();
        let mut i = 0;
        while i < p.published.len() {
            let mid = p.published[i].mid;
            if sections.iter().any(|s| s.sends && s.mid == *mid) {
                i += 1;
            } else {
                gone_tracks.push(p.published.remove(i));
            }
        }
        let mut new_tracks = Vec::new();
        for s in sections.iter().filter(|s| s.sends) {
            let Some(kind) = p.declared.get(&s.mid).copied() else {
                continue;
            };
            if p.published.iter().any(|t| *t.mid == *s.mid) {
                continue;
            }
            let t = Published {
                id: format!("{}-{}", p.name, s.mid),
                mid: Mid::from(s.mid.as_str()),
                kind,
                muted: false,
                layers: if kind.is_video() {
                    s.rids.iter().map(|r| Rid::from(r.as_str())).collect()
                } else {
                    Vec::new()
                },
                meters: HashMap::new(),
                level: 127.0,
                last_keyframe_request: HashMap::new(),
            };
            new_tracks.push(track_info(p, &t));
            p.published.push(t);
        }
        // An ICE restart (new credentials in the offer) gives the participant a new local ufrag:
        // STUN from its next address is routed by that one.
        let answer_sdp = answer.to_sdp_string();
        if let Some(ufrag) = answer_sdp
            .lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix("a=ice-ufrag:"))
        {
            if ufrag != p.ufrag {
                let old = std::mem::replace(&mut p.ufrag, ufrag.to_owned());
                p.candidates = 0;
                self.by_ufrag.remove(&old);
                self.by_ufrag.insert(p.ufrag.clone(), pid);
            }
        }
        let conn = p.conn;
        let user = p.user.clone();
        self.send(
            conn,
            &Frame::CallAnswer {
                id: rid,
                room: room.clone(),
                sdp: sdp::complete_candidates(&answer_sdp),
            },
        );
        for t in gone_tracks {
            self.unpublished(pid, t);
        }
        for t in new_tracks {
            if t.kind == TrackKind::Screen {
                let payload = EventPayload::ScreenShareStarted(ScreenShareV1 {
                    user: user.clone(),
                    track: t.id.clone(),
                });
                self.persist(&room, &user, payload);
            }
            let frame = Frame::TrackPublished {
                room: room.clone(),
                track: t,
            };
            self.broadcast(&room, &frame, None);
        }
        self.allocate(now, pid);
        self.dirty.insert(pid);
        Ok(())
    }

    fn find_track(&self, room: &RoomId, track: &str) -> Option<(u64, &Published)> {
        let call = self.calls.get(room)?;
        call.parts.iter().find_map(|pid| {
            let p = self.parts.get(pid)?;
            p.published
                .iter()
                .find(|t| t.id == track)
                .map(|t| (*pid, t))
        })
    }

    /// A track of `pid` is gone: subscribers stop receiving it, the call is told.
    fn unpublished(&mut self, pid: u64, t: Published) {
        let Some(p) = self.parts.get(&pid) else {
            return;
        };
        let (room, user) = (p.room.clone(), p.user.clone());
        for q in self.parts.values_mut() {
            q.subs.retain(|s| s.track != t.id);
        }
        if t.kind == TrackKind::Screen {
            let payload = EventPayload::ScreenShareStopped(ScreenShareV1 {
                user: user.clone(),
                track: t.id.clone(),
            });
            self.persist(&room, &user, payload);
        }
        let frame = Frame::TrackUnpublished {
            room: room.clone(),
            track: t.id,
        };
        self.broadcast(&room, &frame, None);
    }

    /// Removes a participant: its tracks are unpublished, the call is told, the log records it.
    /// `closed`: the frame that tells the participant itself (timeouts, moves), if any.
    fn remove(&mut self, pid: u64, reason: &str, closed: Option<(ErrorCode, &str)>) {
        let Some(mut p) = self.parts.remove(&pid) else {
            return;
        };
        p.rtc.disconnect();
        self.by_conn.remove(&(p.conn, p.room.clone()));
        for a in &p.addrs {
            self.by_addr.remove(a);
        }
        self.by_ufrag.remove(&p.ufrag);
        self.dirty.remove(&pid);
        if let Some((code, message)) = closed {
            let frame = Frame::CallClosed {
                room: p.room.clone(),
                code,
                message: message.to_owned(),
            };
            self.send(p.conn, &frame);
        }
        let room = p.room.clone();
        let Some(call) = self.calls.get_mut(&room) else {
            return;
        };
        call.parts.remove(&pid);
        let speaker_left = call.speaker == Some(pid);
        if speaker_left {
            call.speaker = None;
        }
        if let Some(l) = &mut call.loudest {
            l.retain(|t| !p.published.iter().any(|x| x.id == *t));
        }
        let call_id = call.id.clone();
        let empty = call.parts.is_empty();
        for t in std::mem::take(&mut p.published) {
            // Re-insert the participant's identity for the events: it is gone from the map.
            for q in self.parts.values_mut() {
                q.subs.retain(|s| s.track != t.id);
            }
            if t.kind == TrackKind::Screen {
                let payload = EventPayload::ScreenShareStopped(ScreenShareV1 {
                    user: p.user.clone(),
                    track: t.id.clone(),
                });
                self.persist(&room, &p.user, payload);
            }
            let frame = Frame::TrackUnpublished {
                room: room.clone(),
                track: t.id,
            };
            self.broadcast(&room, &frame, None);
        }
        self.persist(
            &room,
            &p.user,
            EventPayload::CallParticipantLeft(CallParticipantV1 {
                call: call_id.clone(),
                user: p.user.clone(),
                participant: p.name.clone(),
                reason: Some(reason.to_owned()),
            }),
        );
        let frame = Frame::CallParticipantLeft {
            room: room.clone(),
            participant: p.name.clone(),
            reason: reason.to_owned(),
        };
        self.broadcast(&room, &frame, None);
        if speaker_left {
            let frame = Frame::CallSpeaker {
                room: room.clone(),
                participant: None,
            };
            self.broadcast(&room, &frame, None);
        }
        if empty {
            self.calls.remove(&room);
            self.persist(
                &room,
                &p.user,
                EventPayload::CallEnded(CallV1 {
                    call: call_id,
                    user: p.user.clone(),
                }),
            );
        }
    }

    /// `conn` is no longer a member of `room` (it left, or the room closed on it).
    pub fn handle_departed(&mut self, now: Instant, conn: C, room: &RoomId) {
        if let Some(pid) = self.by_conn.get(&(conn, room.clone())).copied() {
            self.remove(pid, "left", None);
        }
        self.flush(now);
    }

    /// The connection is gone: it leaves every call.
    pub fn handle_close(&mut self, now: Instant, conn: C) {
        let pids: Vec<u64> = self
            .by_conn
            .iter()
            .filter(|((c, _), _)| *c == conn)
            .map(|(_, p)| *p)
            .collect();
        for pid in pids {
            self.remove(pid, "closed", None);
        }
        self.join_budget.remove(&conn);
        self.flush(now);
    }

    /// The room's call ends here without a trace in the log (the room moved to another shard, or
    /// the shard stops): participants get `call.closed` with `code` and join again.
    pub fn handle_release(&mut self, now: Instant, room: &RoomId, code: ErrorCode, message: &str) {
        let Some(call) = self.calls.remove(room) else {
            return;
        };
        for pid in call.parts {
            if let Some(mut p) = self.parts.remove(&pid) {
                p.rtc.disconnect();
                self.by_conn.remove(&(p.conn, p.room.clone()));
                for a in &p.addrs {
                    self.by_addr.remove(a);
                }
                self.by_ufrag.remove(&p.ufrag);
                self.dirty.remove(&pid);
                let frame = Frame::CallClosed {
                    room: room.clone(),
                    code,
                    message: message.to_owned(),
                };
                self.send(p.conn, &frame);
            }
        }
        self.flush(now);
    }

    /// One UDP datagram received by the media socket at `destination` from `source`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        self.stats.datagrams_in += 1;
        if data.len() > self.cfg.max_datagram {
            self.stats.datagrams_dropped += 1;
            return;
        }
        let Ok(contents) = data.try_into() else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        // A known address goes to its participant; STUN from a new address to the participant its
        // username names (never a scan over every participant); anything else is dropped.
        let pid = match self.by_addr.get(&source).copied() {
            Some(pid) => Some(pid),
            None => stun_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied()),
        };
        let Some(pid) =
            pid.filter(|pid| self.parts.get(pid).is_some_and(|p| p.rtc.accepts(&input)))
        else {
            tracing::trace!(%source, len = data.len(), "datagram nobody accepts: dropped");
            self.stats.datagrams_dropped += 1;
            return;
        };
        if let Some(p) = self.parts.get_mut(&pid) {
            // Most recently used last: the address in use is never the one evicted.
            if p.addrs.back() != Some(&source) {
                if let Some(i) = p.addrs.iter().position(|a| *a == source) {
                    p.addrs.remove(i);
                    p.addrs.push_back(source);
                }
            }
            if !p.addrs.contains(&source) {
                tracing::debug!(participant = %p.name, %source, "media from a new address");
                p.addrs.push_back(source);
                self.by_addr.insert(source, pid);
                if p.addrs.len() > MAX_ADDRS {
                    if let Some(old) = p.addrs.pop_front() {
                        self.by_addr.remove(&old);
                    }
                }
            }
            // A datagram str0m refuses (a corrupt or spoofed packet) is dropped; only a dead peer
            // connection removes the participant. str0m has panicked on hostile traffic before:
            // a panic ends this participant's peer connection, never the shard's calls.
            match isolated(|| p.rtc.handle_input(input)) {
                Some(Ok(())) => {}
                Some(Err(_)) => self.stats.datagrams_dropped += 1,
                None => p.rtc.disconnect(),
            }
            self.dirty.insert(pid);
        }
        self.flush(now);
    }

    /// Timers: str0m's, lost and never-connected participants, levels and layer choices.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut drop: Vec<(u64, &'static str, &'static str)> = Vec::new();
        for (pid, p) in self.parts.iter_mut() {
            if p.next <= now {
                let dead = match isolated(|| p.rtc.handle_input(Input::Timeout(now))) {
                    Some(Ok(())) => false,
                    Some(Err(_)) => !p.rtc.is_alive(),
                    None => true,
                };
                if dead {
                    drop.push((*pid, "closed", "the media connection closed"));
                    continue;
                }
                self.dirty.insert(*pid);
            }
            if p.lost_at.is_some_and(|l| now >= l + self.cfg.ice_timeout) {
                drop.push((*pid, "timeout", "the media connection was lost"));
            } else if !p.connected
                && p.lost_at.is_none()
                && now >= p.joined_at + self.cfg.connect_timeout
            {
                drop.push((*pid, "timeout", "the media connection never came up"));
            }
        }
        for (pid, reason, message) in drop {
            self.remove(pid, reason, Some((ErrorCode::Timeout, message)));
        }
        if self.tick_at.is_some_and(|t| now >= t) {
            self.tick(now);
            self.tick_at = (!self.parts.is_empty()).then_some(now + TICK);
        }
        self.flush(now);
    }

    /// Drains every participant that had input until nothing is left to do.
    fn flush(&mut self, now: Instant) {
        let mut rounds = 0;
        while let Some(pid) = self.dirty.pop_first() {
            self.drain(now, pid);
            rounds += 1;
            if rounds > 100_000 {
                break;
            }
        }
    }

    fn drain(&mut self, now: Instant, pid: u64) {
        let mut events = Vec::new();
        let mut failed = false;
        {
            let Some(p) = self.parts.get_mut(&pid) else {
                return;
            };
            loop {
                let Some(polled) = isolated(|| p.rtc.poll_output()) else {
                    tracing::warn!(participant = %p.name, "str0m panicked: the participant is removed");
                    failed = true;
                    break;
                };
                match polled {
                    Ok(Output::Timeout(t)) => {
                        p.next = t;
                        break;
                    }
                    Ok(Output::Transmit(t)) => self.out.push_back(CallOutput::Transmit {
                        source: t.source,
                        destination: t.destination,
                        data: t.contents.into(),
                    }),
                    Ok(Output::Event(e)) => events.push(e),
                    Err(e) => {
                        tracing::debug!(participant = %p.name, error = %e, "media failed");
                        failed = true;
                        break;
                    }
                }
            }
        }
        let closed = events.iter().any(|e| matches!(e, Event::Closed));
        for e in events {
            self.event(now, pid, e);
        }
        let dead = self.parts.get(&pid).is_some_and(|p| !p.rtc.is_alive());
        if failed || closed || dead {
            self.remove(
                pid,
                "closed",
                Some((ErrorCode::BadRequest, "the media connection closed")),
            );
        }
    }

    fn event(&mut self, now: Instant, pid: u64, e: Event) {
        match e {
            Event::IceConnectionStateChange(s) => {
                let Some(p) = self.parts.get_mut(&pid) else {
                    return;
                };
                tracing::debug!(participant = %p.name, state = ?s, "ICE");
                match s {
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        p.connected = true;
                        p.lost_at = None;
                    }
                    IceConnectionState::Disconnected => {
                        p.connected = false;
                        p.lost_at.get_or_insert(now);
                    }
                    _ => {}
                }
            }
            Event::MediaData(d) => self.forward(now, pid, d),
            Event::KeyframeRequest(req) => {
                let Some(p) = self.parts.get(&pid) else {
                    return;
                };
                if let Some(s) = p.subs.iter().find(|s| s.mid == req.mid) {
                    let rid = s.current.or(s.target);
                    let (source, mid) = (s.source, s.source_mid);
                    self.request_keyframe(now, source, mid, rid);
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Some(p) = self.parts.get_mut(&pid) {
                    p.estimate = estimate.as_u64();
                }
            }
            _ => {}
        }
    }
}

/// A mid as str0m keeps it: 1 to 16 ASCII letters and digits (browsers use `0`, `1`, …).
fn check_mid(mid: &str) -> Result<(), Refusal> {
    let ok = !mid.is_empty()
        && mid.len() <= MAX_MID
        && mid.bytes().all(|b| b.is_ascii_alphanumeric())
        && Mid::from(mid).to_string() == mid;
    if ok {
        Ok(())
    } else {
        Err(refuse(
            ErrorCode::BadRequest,
            "a mid is 1 to 16 ASCII letters and digits",
        ))
    }
}

/// The local username fragment a STUN binding request is for (`USERNAME` = `local:remote`), if
/// `data` is one.
fn stun_ufrag(data: &[u8]) -> Option<&str> {
    // A STUN message: two zero bits, the magic cookie, 20-byte header, then attributes.
    if data.len() < 20 || data[0] & 0xc0 != 0 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let mut at = 20;
    while at + 4 <= data.len() {
        let kind = u16::from_be_bytes([data[at], data[at + 1]]);
        let len = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
        let value = data.get(at + 4..at + 4 + len)?;
        if kind == 0x0006 {
            let name = std::str::from_utf8(value).ok()?;
            return name.split(':').next();
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

fn gone() -> Refusal {
    refuse(ErrorCode::NotInCall, "not in the call")
}

fn forbidden_publish() -> Refusal {
    refuse(
        ErrorCode::Forbidden,
        "publishing needs write access to the room (read access watches and listens)",
    )
}

/// Runs `f` (a call into str0m with a peer's input), turning a panic into `None` so that one hostile
/// peer cannot take the media task, and every call on the shard, down with it.
fn isolated<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// What an offer's entry asks of its m-line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Publish,
    Subscribe,
}

/// The m-line of one `publish` / `subscribe` entry: a valid mid, named by one entry only, present in
/// the offer, sending (to publish) or receiving (to subscribe).
fn entry_section<'a>(
    sections: &'a [Section],
    mids: &mut BTreeSet<String>,
    mid: &str,
    role: Role,
) -> Result<&'a Section, Refusal> {
    check_mid(mid)?;
    if !mids.insert(mid.to_owned()) {
        return Err(refuse(ErrorCode::BadRequest, "a mid is listed twice"));
    }
    let s = section(sections, mid)?;
    match role {
        Role::Publish if !s.sends => Err(refuse(
            ErrorCode::BadRequest,
            format!("m-line {mid} does not send: it cannot publish"),
        )),
        Role::Subscribe if !s.receives => Err(refuse(
            ErrorCode::BadRequest,
            format!("m-line {mid} does not receive: it cannot subscribe"),
        )),
        _ => Ok(s),
    }
}

fn section<'a>(sections: &'a [Section], mid: &str) -> Result<&'a Section, Refusal> {
    sections.iter().find(|s| s.mid == mid).ok_or_else(|| {
        refuse(
            ErrorCode::BadRequest,
            format!("the offer has no m-line with mid {mid}"),
        )
    })
}

fn track_info<C>(p: &Participant<C>, t: &Published) -> TrackInfo {
    TrackInfo {
        id: t.id.clone(),
        participant: p.name.clone(),
        user: p.user.clone(),
        kind: t.kind,
        muted: t.muted,
        layers: t.layers.iter().map(|r| r.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_str0m_is_contained() {
        assert_eq!(isolated(|| 1), Some(1));
        assert!(isolated(|| -> u8 { panic!("hostile input") }).is_none());
    }

    #[test]
    fn stun_usernames_are_read_and_garbage_is_not() {
        let mut m = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
        m.extend([0u8; 12]);
        // USERNAME "abcd:wxyz" (9 bytes, padded to 12).
        m.extend([0x00, 0x06, 0x00, 0x09]);
        m.extend(b"abcd:wxyz\0\0\0");
        assert_eq!(stun_ufrag(&m), Some("abcd"));
        // Truncated attribute, wrong cookie, RTP, empty: nothing, and no panic.
        assert_eq!(stun_ufrag(&m[..m.len() - 6]), None);
        let mut bad = m.clone();
        bad[4] = 0;
        assert_eq!(stun_ufrag(&bad), None);
        assert_eq!(stun_ufrag(&[0x80; 40]), None);
        assert_eq!(stun_ufrag(&[]), None);
    }

    #[test]
    fn mids_are_checked_as_str0m_keeps_them() {
        assert!(check_mid("0").is_ok() && check_mid("a1B2").is_ok());
        for bad in ["", "a-b", "0123456789abcdefg", "é"] {
            assert!(check_mid(bad).is_err(), "{bad:?}");
        }
    }
}
