//! The forwarding unit: which layer each subscriber gets (its wanted quality, the layers the
//! publisher sends now, its budget), key frames asked of publishers, the loudest voices and the
//! active speaker, and writing each media frame into every subscriber that wants it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use proto::v1::{Quality, TrackKind};
use proto::RoomId;
use str0m::bwe::Bitrate;
use str0m::media::{KeyframeRequestKind, MediaData, MediaTime, Mid, Rid};

use super::{CallCore, Frame, Meter, KEYFRAME_THROTTLE, SPEAKER_MARGIN, SPEAKING};

impl<C: Copy + Eq + Hash + Ord + Debug> CallCore<C> {
    /// Levels: the N loudest audio tracks and the active speaker; layer choices.
    pub(super) fn tick(&mut self, now: Instant) {
        let rooms: Vec<RoomId> = self.calls.keys().cloned().collect();
        for room in rooms {
            let Some(call) = self.calls.get(&room) else {
                continue;
            };
            let mut levels: Vec<(f32, String, u64)> = Vec::new();
            for pid in &call.parts {
                if let Some(p) = self.parts.get(pid) {
                    for t in p.published.iter().filter(|t| !t.kind.is_video()) {
                        levels.push((t.level, t.id.clone(), *pid));
                    }
                }
            }
            levels.sort_by(|a, b| a.0.total_cmp(&b.0));
            let n = self.cfg.audio_top_n;
            let loudest = (n > 0 && levels.len() > n)
                .then(|| levels.iter().take(n).map(|l| l.1.clone()).collect());
            // The loudest speaker takes over only when clearly louder (6 dB) than the current one,
            // or when the current one fell silent: no flapping between two similar voices.
            let current = call
                .speaker
                .and_then(|s| levels.iter().find(|l| l.2 == s).map(|l| l.0))
                .filter(|level| *level < SPEAKING);
            let speaker = levels
                .first()
                .filter(|l| l.0 < SPEAKING)
                .filter(|l| current.is_none_or(|c| l.0 + SPEAKER_MARGIN < c))
                .map(|l| l.2);
            let Some(call) = self.calls.get_mut(&room) else {
                continue;
            };
            call.loudest = loudest;
            if speaker.is_some() && speaker != call.speaker {
                call.speaker = speaker;
                let name = speaker
                    .and_then(|s| self.parts.get(&s))
                    .map(|p| p.name.clone());
                let frame = Frame::CallSpeaker {
                    room: room.clone(),
                    participant: name,
                };
                self.broadcast(&room, &frame, None);
            }
        }
        let pids: Vec<u64> = self.parts.keys().copied().collect();
        for pid in pids {
            self.allocate(now, pid);
        }
    }

    /// Chooses the layer of each video subscription of `pid`: the wanted quality, lowered (cameras
    /// first, the largest first) until the sum fits the downstream estimate; asks a key frame of
    /// every layer newly chosen.
    pub(super) fn allocate(&mut self, now: Instant, pid: u64) {
        let Some(p) = self.parts.get(&pid) else {
            return;
        };
        let budget = p.estimate;
        // (sub index, layers low→high, chosen index, is screen)
        let mut plan: Vec<(usize, Vec<Rid>, usize, bool)> = Vec::new();
        let mut rates: HashMap<(usize, usize), u64> = HashMap::new();
        for (i, s) in p.subs.iter().enumerate() {
            if !s.video || s.quality == Quality::Off {
                continue;
            }
            let Some(t) = self
                .parts
                .get(&s.source)
                .and_then(|q| q.published.iter().find(|t| t.mid == s.source_mid))
            else {
                continue;
            };
            let layers = t.layers_by_rate(now);
            if layers.is_empty() {
                continue;
            }
            let top = layers.len() - 1;
            let wanted = match s.quality {
                Quality::High | Quality::Off => top,
                Quality::Medium => top.min(1),
                Quality::Low => 0,
            };
            // The per-track cap.
            let mut chosen = wanted;
            while chosen > 0 && t.rate(Some(layers[chosen])) > self.cfg.max_track_bitrate {
                chosen -= 1;
            }
            for (j, r) in layers.iter().enumerate() {
                rates.insert((i, j), t.rate(Some(*r)));
            }
            plan.push((i, layers, chosen, t.kind == TrackKind::Screen));
        }
        let total = |plan: &[(usize, Vec<Rid>, usize, bool)]| -> u64 {
            plan.iter().map(|(i, _, c, _)| rates[&(*i, *c)]).sum()
        };
        // What the subscriber would take at its wanted qualities, and at the least: the estimator
        // probes towards the first and keeps traffic up to the second.
        let desired = total(&plan) + self.audio_rate(pid);
        let minimum: u64 =
            plan.iter().map(|(i, _, _, _)| rates[&(*i, 0)]).sum::<u64>() + self.audio_rate(pid);
        while total(&plan) > budget {
            // Lower the camera on the highest layer first, then screens.
            let victim = plan
                .iter_mut()
                .filter(|x| x.2 > 0)
                .max_by_key(|x| (!x.3, x.2));
            match victim {
                Some(v) => v.2 -= 1,
                None => break,
            }
        }
        // Still over the estimate on the lowest layers: pause video (cameras before screens, the
        // last subscribed first) rather than let str0m's pacer queue it without end. Only with an
        // estimator: a fixed budget never pauses anything.
        let mut paused: BTreeSet<usize> = BTreeSet::new();
        if self.cfg.bwe {
            let audio = self.audio_rate(pid);
            let mut order: Vec<usize> = (0..plan.len()).collect();
            order.sort_by_key(|k| (plan[*k].3, std::cmp::Reverse(*k)));
            let mut sum = total(&plan) + audio;
            for k in order {
                if sum <= budget {
                    break;
                }
                let (i, _, c, _) = &plan[k];
                sum = sum.saturating_sub(rates[&(*i, *c)]);
                paused.insert(*i);
            }
        }
        let mut asks: Vec<(u64, Mid, Option<Rid>)> = Vec::new();
        let Some(p) = self.parts.get_mut(&pid) else {
            return;
        };
        if desired > 0 && self.cfg.bwe_probe {
            p.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(minimum.min(desired)), Bitrate::bps(desired));
            self.dirty.insert(pid);
        }
        for (i, layers, chosen, _) in plan {
            let s = &mut p.subs[i];
            let pause = paused.contains(&i);
            if s.paused != pause {
                s.paused = pause;
                // Resuming starts on a key frame of the chosen layer.
                s.started = false;
                s.current = None;
                s.target = None;
            }
            if pause {
                continue;
            }
            let target = Some(layers[chosen]);
            if s.target != target {
                s.target = target;
                if s.current != target {
                    asks.push((s.source, s.source_mid, target));
                }
            }
        }
        // Non-simulcast video that has not started yet needs a key frame too.
        for s in p
            .subs
            .iter()
            .filter(|s| s.video && !s.started && s.target.is_none())
        {
            asks.push((s.source, s.source_mid, None));
        }
        for (source, mid, rid) in asks {
            self.request_keyframe(now, source, mid, rid);
        }
    }

    /// The measured rate of the audio `pid` receives.
    pub(super) fn audio_rate(&self, pid: u64) -> u64 {
        let Some(p) = self.parts.get(&pid) else {
            return 0;
        };
        p.subs
            .iter()
            .filter(|s| !s.video && s.quality != Quality::Off)
            .filter_map(|s| {
                let q = self.parts.get(&s.source)?;
                q.published
                    .iter()
                    .find(|t| t.mid == s.source_mid)
                    .map(|t| t.rate(None))
            })
            .sum()
    }

    pub(super) fn request_keyframe(
        &mut self,
        now: Instant,
        source: u64,
        mid: Mid,
        rid: Option<Rid>,
    ) {
        let Some(p) = self.parts.get_mut(&source) else {
            return;
        };
        let Some(t) = p.published.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        if t.last_keyframe_request
            .get(&rid)
            .is_some_and(|at| now.saturating_duration_since(*at) < KEYFRAME_THROTTLE)
        {
            return;
        }
        t.last_keyframe_request.insert(rid, now);
        tracing::trace!(track = %t.id, ?rid, "key frame asked");
        if let Some(mut w) = p.rtc.writer(mid) {
            if w.is_request_keyframe_possible(KeyframeRequestKind::Pli)
                && w.request_keyframe(rid, KeyframeRequestKind::Pli).is_ok()
            {
                self.stats.keyframe_requests += 1;
                self.dirty.insert(source);
            }
        }
    }

    /// One media frame of `src`: to every subscriber that wants it, on the layer chosen for it.
    pub(super) fn forward(&mut self, now: Instant, src: u64, d: MediaData) {
        let Some(p) = self.parts.get_mut(&src) else {
            return;
        };
        let room = p.room.clone();
        let Some(t) = p.published.iter_mut().find(|t| t.mid == d.mid) else {
            // A sending m-line that was never published: not forwarded.
            return;
        };
        t.meters
            .entry(d.rid)
            .or_insert_with(|| Meter::new(now))
            .add(now, d.data.len());
        let video = t.kind.is_video();
        if !video {
            if let Some(level) = d.ext_vals.audio_level {
                let l = f32::from(level.unsigned_abs());
                t.level = t.level * 0.7 + l * 0.3;
            }
        }
        let keyframe = video && d.is_keyframe();
        tracing::trace!(track = %t.id, rid = ?d.rid, keyframe, len = d.data.len(), "media in");
        let Some(call) = self.calls.get(&room) else {
            return;
        };
        // With more voices than `audio_top_n`, only the loudest are forwarded.
        let audible = video || call.loudest.as_ref().is_none_or(|l| l.contains(&t.id));
        if video && !d.contiguous {
            let (mid, rid) = (d.mid, d.rid);
            self.request_keyframe(now, src, mid, rid);
        }
        if !audible {
            return;
        }
        let Some(call) = self.calls.get(&room) else {
            return;
        };
        let parts: Vec<u64> = call.parts.iter().copied().filter(|p| *p != src).collect();
        // Subscribers waiting for a key frame (to start, or to switch layers) keep asking for one
        // (throttled per layer) until it comes: a request made before the publisher's media was up
        // is lost.
        let mut waiting: Vec<Option<Rid>> = Vec::new();
        for pid in parts {
            let Some(p) = self.parts.get_mut(&pid) else {
                continue;
            };
            // Subscriptions are matched by (publisher, m-line): no string compare per delivery.
            let Some(s) = p
                .subs
                .iter_mut()
                .find(|s| s.source == src && s.source_mid == d.mid)
            else {
                continue;
            };
            if s.quality == Quality::Off || s.paused {
                continue;
            }
            if video {
                if s.target.is_some() {
                    if d.rid == s.target && s.current != s.target && keyframe {
                        // Switch layers on a key frame, keeping the subscriber's timeline.
                        s.current = s.target;
                        let ticks = i64::from(d.time.denom());
                        let want = match s.last_out {
                            Some((last, at)) => {
                                let gap = now.saturating_duration_since(at).as_secs_f64();
                                last as i64 + ((gap * ticks as f64) as i64).max(1)
                            }
                            None => d.time.numer() as i64,
                        };
                        s.offset = want - d.time.numer() as i64;
                    }
                    if s.current != s.target && !waiting.contains(&s.target) {
                        waiting.push(s.target);
                    }
                    if d.rid != s.current {
                        continue;
                    }
                }
                if !s.started {
                    if !keyframe {
                        let rid = s.current.or(s.target);
                        if !waiting.contains(&rid) {
                            waiting.push(rid);
                        }
                        continue;
                    }
                    s.started = true;
                }
            }
            let numer = (d.time.numer() as i64).wrapping_add(s.offset) as u64;
            s.last_out = Some((numer, now));
            let time = MediaTime::new(numer, d.time.frequency());
            let mid = s.mid;
            let Some(w) = p.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = w.match_params(d.params) else {
                continue;
            };
            if w.write(pt, d.network_time, time, d.data.clone()).is_ok() {
                self.stats.frames_forwarded += 1;
                self.stats.bytes_forwarded += d.data.len() as u64;
                self.dirty.insert(pid);
            }
        }
        waiting.dedup();
        for rid in waiting {
            self.request_keyframe(now, src, d.mid, rid);
        }
    }
}
