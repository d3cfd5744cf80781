//! `doc-fanout`: D documents × E editors, each typing R edits/s (plus awareness updates) over the
//! y-websocket protocol. Latency is measured from each edit's *intended* send time (open loop) to
//! its arrival at each other editor ("delivery"), and to its arrival at the last of them ("edit":
//! every other editor has it).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Semaphore};

use crate::procstat::{Sampler, Usage};
use crate::report::{self, Row, Series};
use crate::scenario::{Protocol, Scenario};
use crate::stats::{Latency, Schedule, Summary};
use crate::target::{prometheus_quantile_between, Target, TargetOpts};
use crate::wire::{self, Dialect, EditorDoc, Incoming, Tag, SYNC_STEP2, SYNC_UPDATE};
use crate::ws;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub docs: usize,
    pub editors: usize,
    /// Edits per second per editor.
    pub rate: f64,
    /// Awareness updates per second per editor (a cursor move per keystroke, as editors send).
    pub awareness_rate: Option<f64>,
    /// Measured seconds (after the warm-up).
    pub duration: f64,
    pub warmup: f64,
    /// Seconds to wait after the last send for edits still in flight.
    pub grace: f64,
    /// Sockets opened at once while connecting.
    pub connect_concurrency: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            docs: 20,
            editors: 50,
            rate: 1.0,
            awareness_rate: None,
            duration: 30.0,
            warmup: 3.0,
            grace: 5.0,
            connect_concurrency: 64,
        }
    }
}

impl Params {
    pub fn offered_edits_per_sec(&self) -> f64 {
        self.docs as f64 * self.editors as f64 * self.rate
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub target: String,
    pub persistence: String,
    pub params: Params,
    /// Edits offered per second over all editors.
    pub offered_edits_per_sec: f64,
    pub edits_sent: u64,
    /// Edits every other editor received, per second of the measured window.
    pub edits_per_sec: f64,
    /// Update messages delivered to editors per second of the measured window.
    pub deliveries_per_sec: f64,
    /// Send (intended) → the last other editor has it.
    pub edit_latency: Summary,
    /// Send (intended) → one other editor has it.
    pub delivery_latency: Summary,
    /// Socket open → initial sync done.
    pub connect_latency: Summary,
    /// Deliveries that never arrived (expected minus received, over measured and warm-up edits).
    pub missing_deliveries: u64,
    pub expected_deliveries: u64,
    pub duplicate_deliveries: u64,
    pub awareness_received: u64,
    pub disconnects: u64,
    pub server: Usage,
    /// Load generator's own CPU (percent of one core): near 200 % means it, not the server, is the limit.
    pub loadgen_cpu_pct: f64,
    /// Tandem's own processing time (validate + apply + queue broadcast), from its /metrics.
    pub server_apply_p95_ms: Option<f64>,
    /// Tandem's append → durable commit time, from its /metrics.
    pub server_commit_p95_ms: Option<f64>,
    pub errors: Vec<String>,
}

#[derive(Default)]
struct Pending {
    remaining: u32,
    max_us: u64,
    measured: bool,
    /// Editors that have it (bit per editor index), so a second copy is a duplicate, not progress.
    seen: Vec<u64>,
}

#[derive(Default)]
struct DocTrack {
    pending: HashMap<(u32, u32), Pending>,
    edits: Latency,
    deliveries: Latency,
    delivered: u64,
    dupes: u64,
    /// Measured edits completed, and deliveries, by the end of the send window (throughput).
    edits_in_window: u64,
    deliveries_in_window: u64,
}

/// Per-document bookkeeping shared by a document's editors.
pub struct Tracker {
    docs: Vec<Mutex<DocTrack>>,
    warmup_us: u64,
    window_end_us: u64,
}

impl Tracker {
    /// Edits intended before `warmup` are delivered but not measured; throughput counts what
    /// completed by `window_end` (the end of the send window, not of the grace period).
    pub fn new(docs: usize, warmup: Duration, window_end: Duration) -> Self {
        Self {
            docs: (0..docs).map(|_| Mutex::new(DocTrack::default())).collect(),
            warmup_us: warmup.as_micros() as u64,
            window_end_us: window_end.as_micros() as u64,
        }
    }

    /// Registers an edit before it is sent: `receivers` editors must see it.
    pub fn sent(&self, doc: usize, tag: Tag, receivers: u32) {
        let mut d = self.docs[doc].lock().expect("tracker lock");
        if receivers == 0 {
            return;
        }
        d.pending.insert(
            (tag.editor, tag.seq),
            Pending {
                remaining: receivers,
                max_us: 0,
                measured: tag.intended_us >= self.warmup_us,
                seen: Vec::new(),
            },
        );
    }

    /// Editor `receiver` received `tag` at `now_us` (since the run's start).
    pub fn received(&self, doc: usize, tag: Tag, receiver: u32, now_us: u64) {
        let lat = now_us.saturating_sub(tag.intended_us);
        let in_window = now_us <= self.window_end_us;
        let mut d = self.docs[doc].lock().expect("tracker lock");
        let d = &mut *d;
        let Some(p) = d.pending.get_mut(&(tag.editor, tag.seq)) else {
            d.dupes += 1;
            return;
        };
        let (word, bit) = ((receiver / 64) as usize, 1u64 << (receiver % 64));
        if p.seen.len() <= word {
            p.seen.resize(word + 1, 0);
        }
        if p.seen[word] & bit != 0 {
            d.dupes += 1;
            return;
        }
        p.seen[word] |= bit;
        d.delivered += 1;
        if p.measured {
            d.deliveries.record_us(lat);
            if in_window {
                d.deliveries_in_window += 1;
            }
        }
        p.max_us = p.max_us.max(lat);
        p.remaining -= 1;
        if p.remaining == 0 {
            if p.measured {
                d.edits.record_us(p.max_us);
                if in_window {
                    d.edits_in_window += 1;
                }
            }
            d.pending.remove(&(tag.editor, tag.seq));
        }
    }

    /// (measured edits completed, measured deliveries) by the end of the send window.
    pub fn in_window(&self) -> (u64, u64) {
        self.docs.iter().fold((0, 0), |(e, dl), d| {
            let d = d.lock().expect("tracker lock");
            (e + d.edits_in_window, dl + d.deliveries_in_window)
        })
    }

    /// (edit latency, delivery latency, delivered, missing deliveries, duplicates) over all docs.
    pub fn totals(&self) -> (Latency, Latency, u64, u64, u64) {
        let mut e = Latency::new();
        let mut dl = Latency::new();
        let (mut delivered, mut missing, mut dupes) = (0, 0, 0);
        for d in &self.docs {
            let d = d.lock().expect("tracker lock");
            e.add(&d.edits);
            dl.add(&d.deliveries);
            delivered += d.delivered;
            dupes += d.dupes;
            missing += d
                .pending
                .values()
                .map(|p| u64::from(p.remaining))
                .sum::<u64>();
        }
        (e, dl, delivered, missing, dupes)
    }

    pub fn outstanding(&self) -> usize {
        self.docs
            .iter()
            .map(|d| d.lock().expect("tracker lock").pending.len())
            .sum()
    }
}

struct Editor {
    doc_idx: usize,
    doc_name: String,
    idx: u32,
    writer: ws::Writer,
    replica: EditorDoc,
    client_id: u64,
}

/// Opens a socket for one editor, starts its reader and waits for the initial sync.
#[allow(clippy::too_many_arguments)]
async fn open_editor(
    url: String,
    dialect: &Dialect,
    doc_idx: usize,
    doc_name: String,
    idx: u32,
    client_id: u64,
    tracker: Arc<Tracker>,
    start: Arc<std::sync::OnceLock<Instant>>,
    counters: Arc<Counters>,
    connect_timeout: Duration,
) -> anyhow::Result<(Editor, Duration)> {
    let t0 = Instant::now();
    let url = ws::WsUrl::parse(&url)?;
    let (mut reader, writer) = ws::connect(&url, &url.path, None, connect_timeout).await?;
    let replica = EditorDoc::new(client_id);
    for m in dialect.hello(&doc_name, &replica.state_vector()) {
        ws::send(&writer, m).await?;
    }
    let (synced_tx, synced_rx) = oneshot::channel::<()>();
    {
        let writer = writer.clone();
        let dialect = dialect.clone();
        let doc_name = doc_name.clone();
        let empty_state = replica.state();
        tokio::spawn(async move {
            let mut synced = Some(synced_tx);
            loop {
                match ws::read(&mut reader, &writer).await {
                    ws::Msg::Binary(b) => {
                        let Some(msg) = dialect.decode(&b) else {
                            continue;
                        };
                        match msg {
                            Incoming::Step1 => {
                                let m = dialect.sync(&doc_name, SYNC_STEP2, &empty_state);
                                let _ = ws::send(&writer, m).await;
                            }
                            Incoming::Step2(u) | Incoming::Update(u) => {
                                if let Some(s) = synced.take() {
                                    let _ = s.send(());
                                }
                                if let Some(start) = start.get() {
                                    let now = start.elapsed().as_micros() as u64;
                                    wire::scan_tags(u, |t| {
                                        if t.editor != idx {
                                            tracker.received(doc_idx, t, idx, now)
                                        }
                                    });
                                }
                            }
                            Incoming::Awareness => {
                                counters.awareness.fetch_add(1, Ordering::Relaxed);
                            }
                            Incoming::Denied => {
                                counters.disconnects.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            Incoming::Authenticated | Incoming::Other => {}
                        }
                    }
                    ws::Msg::Text(_) => {}
                    ws::Msg::Closed(_) => {
                        if start.get().is_some() && !counters.stopping.load(Ordering::Relaxed) {
                            counters.disconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                }
            }
        });
    }
    tokio::time::timeout(connect_timeout, synced_rx)
        .await
        .map_err(|_| anyhow!("{doc_name}: no initial sync within {connect_timeout:?}"))?
        .map_err(|_| anyhow!("{doc_name}: socket closed before the initial sync"))?;
    Ok((
        Editor {
            doc_idx,
            doc_name,
            idx,
            writer,
            replica,
            client_id,
        },
        t0.elapsed(),
    ))
}

#[derive(Default)]
struct Counters {
    awareness: AtomicU64,
    disconnects: AtomicU64,
    sent: AtomicU64,
    stopping: std::sync::atomic::AtomicBool,
}

/// Runs the scenario against a started target.
pub async fn run(target: &Target, p: &Params, label: &str) -> anyhow::Result<Outcome> {
    let dialect = target.kind.dialect();
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let warmup = Duration::from_secs_f64(p.warmup);
    let tracker = Arc::new(Tracker::new(
        p.docs,
        warmup,
        warmup + Duration::from_secs_f64(p.duration),
    ));
    let start_cell = Arc::new(std::sync::OnceLock::new());
    let counters = Arc::new(Counters::default());
    let connect_timeout = Duration::from_secs(30);

    // Connect everyone (bounded concurrency), documents interleaved.
    let sem = Arc::new(Semaphore::new(p.connect_concurrency.max(1)));
    let mut joins = Vec::new();
    for e in 0..p.editors {
        for d in 0..p.docs {
            let sem = sem.clone();
            let tracker = tracker.clone();
            let start_cell = start_cell.clone();
            let counters = counters.clone();
            let dialect = dialect.clone();
            let doc_name = format!("bench-{}-{d}", &run_id[20..]);
            let target_url = target.url_for(&doc_name);
            joins.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.expect("semaphore open");
                let client_id = 1_000_000 + (d * 10_000 + e) as u64;
                open_editor(
                    target_url,
                    &dialect,
                    d,
                    doc_name,
                    e as u32,
                    client_id,
                    tracker,
                    start_cell,
                    counters,
                    connect_timeout,
                )
                .await
            }));
        }
    }
    let mut editors = Vec::new();
    let mut connect = Latency::new();
    let mut errors = Vec::new();
    for j in joins {
        match j.await {
            Ok(Ok((ed, t))) => {
                connect.record(t);
                editors.push(ed);
            }
            Ok(Err(e)) => errors.push(format!("connect: {e:#}")),
            Err(e) => errors.push(format!("connect task: {e}")),
        }
    }
    if editors.len() < p.docs * p.editors {
        return Err(anyhow!(
            "{label}: only {}/{} editors connected; first error: {}",
            editors.len(),
            p.docs * p.editors,
            errors.first().map(String::as_str).unwrap_or("none")
        ));
    }

    let sampler = target.pid.map(Sampler::start);
    let metrics_before = target.metrics().await.unwrap_or_default();
    // Give the sampler a first sample before the window opens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let loadgen_cpu0 = crate::procstat::cpu_seconds(std::process::id());
    start_cell.set(start).expect("start set once");
    let total = warmup + Duration::from_secs_f64(p.duration);
    let n_editors = editors.len();
    let receivers = (p.editors as u32).saturating_sub(1);
    let aw_rate = p.awareness_rate.unwrap_or(p.rate);

    let mut senders = Vec::new();
    for (i, ed) in editors.into_iter().enumerate() {
        let tracker = tracker.clone();
        let counters = counters.clone();
        let dialect = dialect.clone();
        // Spread editors' phases evenly over one send interval.
        let phase = Duration::from_secs_f64((i as f64 / n_editors as f64) / p.rate.max(1e-9));
        let aw_phase = phase + Duration::from_secs_f64(0.5 / aw_rate.max(1e-9));
        let edit_s = Schedule::new(p.rate, phase);
        let aw_s = Schedule::new(aw_rate, aw_phase);
        senders.push(tokio::spawn(async move {
            let mut ed = ed;
            let (mut edits, mut aws) = (0u64, 0u64);
            loop {
                let next_edit = edit_s.intended(edits);
                let next_aw = aw_s.intended(aws);
                let next = next_edit.min(next_aw);
                if next >= total {
                    break;
                }
                tokio::time::sleep_until((start + next).into()).await;
                let now = start.elapsed();
                // Every overdue edit goes out now, each with its own intended time.
                let owed = edit_s.due(edits, now);
                for _ in 0..owed {
                    let intended = edit_s.intended(edits);
                    if intended >= total {
                        break;
                    }
                    let tag = Tag {
                        editor: ed.idx,
                        seq: edits as u32,
                        intended_us: intended.as_micros() as u64,
                    };
                    tracker.sent(ed.doc_idx, tag, receivers);
                    let update = ed.replica.insert(&tag.encode());
                    let msg = dialect.sync(&ed.doc_name, SYNC_UPDATE, &update);
                    if ws::send(&ed.writer, msg).await.is_err() {
                        return ed;
                    }
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    edits += 1;
                }
                // Awareness is not timed: a late one is simply sent once.
                if aw_s.due(aws, now) > 0 {
                    aws = aw_s.due(0, now);
                    let a = wire::awareness_update(
                        ed.client_id,
                        aws,
                        &format!("editor-{}", ed.idx),
                        edits,
                    );
                    if ws::send(&ed.writer, dialect.awareness(&ed.doc_name, &a))
                        .await
                        .is_err()
                    {
                        return ed;
                    }
                }
            }
            ed
        }));
    }

    let progress = crate::scenario::Progress::new(label, total);
    let ticker = {
        let counters = counters.clone();
        let tracker = tracker.clone();
        let progress_label = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                progress_label.update(&format!(
                    "edits sent {}  in flight {}",
                    counters.sent.load(Ordering::Relaxed),
                    tracker.outstanding()
                ));
            }
        })
    };
    let mut finished = Vec::new();
    for s in senders {
        if let Ok(ed) = s.await {
            finished.push(ed);
        }
    }
    let send_end = Instant::now();
    // Grace: wait for edits in flight.
    let grace_until = send_end + Duration::from_secs_f64(p.grace);
    while tracker.outstanding() > 0 && Instant::now() < grace_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ticker.abort();
    progress.finish();
    // Throughput counts what completed inside the measured window (warm-up end → scheduled end),
    // so a backlog drained during the grace period does not inflate it.
    let measured_secs = p.duration.max(0.001);
    let (edits_in_window, deliveries_in_window) = tracker.in_window();

    let server = sampler
        .as_ref()
        .map(|s| s.usage(start + warmup, send_end))
        .unwrap_or_default();
    let loadgen_cpu_pct = match (
        loadgen_cpu0,
        crate::procstat::cpu_seconds(std::process::id()),
    ) {
        (Some(a), Some(b)) => (b - a) / start.elapsed().as_secs_f64().max(0.001) * 100.0,
        _ => 0.0,
    };
    counters.stopping.store(true, Ordering::Relaxed);
    let metrics = target.metrics().await;
    for ed in &finished {
        ws::close(&ed.writer).await;
    }

    let (edits_h, deliveries_h, delivered, missing, dupes) = tracker.totals();
    let sent = counters.sent.load(Ordering::Relaxed);
    Ok(Outcome {
        target: target.kind.name(),
        persistence: target.persistence.clone(),
        params: p.clone(),
        offered_edits_per_sec: p.offered_edits_per_sec(),
        edits_sent: sent,
        edits_per_sec: edits_in_window as f64 / measured_secs,
        deliveries_per_sec: deliveries_in_window as f64 / measured_secs,
        edit_latency: edits_h.summary(),
        delivery_latency: deliveries_h.summary(),
        connect_latency: connect.summary(),
        missing_deliveries: missing,
        expected_deliveries: delivered + missing,
        duplicate_deliveries: dupes,
        awareness_received: counters.awareness.load(Ordering::Relaxed),
        disconnects: counters.disconnects.load(Ordering::Relaxed),
        server,
        loadgen_cpu_pct,
        server_apply_p95_ms: metrics.as_deref().and_then(|m| {
            prometheus_quantile_between(&metrics_before, m, "tandem_apply_seconds", 0.95)
                .map(|s| s * 1e3)
        }),
        server_commit_p95_ms: metrics.as_deref().and_then(|m| {
            prometheus_quantile_between(&metrics_before, m, "tandem_append_seconds", 0.95)
                .map(|s| s * 1e3)
        }),
        errors,
    })
}

impl Scenario for Params {
    const NAME: &'static str = "doc-fanout";
    const PROTOCOL: Protocol = Protocol::Documents;
    type Outcome = Outcome;

    async fn run(
        &self,
        target: &mut Target,
        _opts: &TargetOpts,
        label: &str,
    ) -> anyhow::Result<Outcome> {
        run(target, self, label).await
    }

    fn title(&self) -> String {
        format!(
            "doc-fanout: {} documents × {} editors × {} edits/s",
            self.docs, self.editors, self.rate
        )
    }

    fn rows(&self, outcomes: &[Outcome]) -> Vec<Row> {
        let mut r = report::Rows::new(outcomes);
        r.add("edit p50 ms", true, 2, |o| Some(o.edit_latency.p50_ms))
            .add("edit p95 ms", true, 2, |o| Some(o.edit_latency.p95_ms))
            .add("edit p99 ms", true, 2, |o| Some(o.edit_latency.p99_ms))
            .add("edit p99.9 ms", true, 2, |o| Some(o.edit_latency.p999_ms))
            .add("edit max ms", true, 1, |o| Some(o.edit_latency.max_ms))
            .add("delivery p50 ms", true, 2, |o| {
                Some(o.delivery_latency.p50_ms)
            })
            .add("delivery p99 ms", true, 2, |o| {
                Some(o.delivery_latency.p99_ms)
            })
            .add("edits/s (all received)", false, 0, |o| {
                Some(o.edits_per_sec)
            })
            .add("deliveries/s", false, 0, |o| Some(o.deliveries_per_sec))
            .add("missing deliveries", true, 0, |o| {
                Some(o.missing_deliveries as f64)
            })
            .add("dropped sockets", true, 0, |o| Some(o.disconnects as f64))
            .add("server CPU %", true, 0, |o| Some(o.server.cpu_pct))
            .add("server RSS max MB", true, 1, |o| Some(o.server.rss_max_mb))
            .add("load generator CPU %", true, 0, |o| Some(o.loadgen_cpu_pct))
            .add("connect+sync p99 ms", true, 1, |o| {
                Some(o.connect_latency.p99_ms)
            });
        r.done()
    }

    fn note(&self, outcomes: &[Outcome]) -> String {
        let mut s = String::from(
            "\n`edit` = intended send time → the last other editor has the edit; `delivery` = → one other editor has it. \
             Latency counts from the intended send time (open loop), so a stalled server is charged for the stall. \
             Ratios: how many times better the first target is (below 1: worse).\n",
        );
        for x in outcomes {
            if let (Some(a), Some(c)) = (x.server_apply_p95_ms, x.server_commit_p95_ms) {
                let _ = writeln!(
                    s,
                    "\n{}: server-side processing p95 (from its /metrics): apply {:.3} ms, append → durable commit {:.3} ms.",
                    x.target, a, c
                );
            }
            if !x.errors.is_empty() {
                let _ = writeln!(s, "\n{} errors: {}", x.target, x.errors.join("; "));
            }
        }
        s
    }

    fn chart(&self, _targets: &[String], outcomes: &[Outcome]) -> Option<String> {
        let series: Vec<Series> = outcomes
            .iter()
            .flat_map(|o| {
                let x = o.offered_edits_per_sec;
                [
                    Series {
                        name: format!("{} p50", o.target),
                        points: vec![(x, o.edit_latency.p50_ms)],
                        dashed: true,
                    },
                    Series {
                        name: format!("{} p99", o.target),
                        points: vec![(x, o.edit_latency.p99_ms)],
                        dashed: false,
                    },
                ]
            })
            .collect();
        Some(report::svg_chart(
            "doc-fanout: send → every other editor has it",
            "offered edits/s",
            "latency ms",
            &series,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(editor: u32, seq: u32, intended_ms: u64) -> Tag {
        Tag {
            editor,
            seq,
            intended_us: intended_ms * 1000,
        }
    }

    /// Latency accounting on a known delay: three receivers get an edit 5, 7 and 9 ms after its
    /// intended send time; the delivery percentiles are those delays and the edit is complete at
    /// the last one.
    #[test]
    fn known_delays_are_accounted_exactly() {
        let t = Tracker::new(1, Duration::ZERO, Duration::from_secs(1));
        let e = tag(0, 0, 100);
        t.sent(0, e, 3);
        t.received(0, e, 1, 105_000);
        t.received(0, e, 2, 107_000);
        assert_eq!(t.outstanding(), 1);
        t.received(0, e, 3, 109_000);
        assert_eq!(t.outstanding(), 0);
        let (edits, deliveries, delivered, missing, dupes) = t.totals();
        assert_eq!((delivered, missing, dupes), (3, 0, 0));
        assert_eq!(edits.len(), 1);
        assert!((edits.summary().max_ms - 9.0).abs() < 0.01);
        let d = deliveries.summary();
        assert!((d.p50_ms - 7.0).abs() < 0.01, "{d:?}");
        assert!((d.max_ms - 9.0).abs() < 0.01, "{d:?}");
    }

    #[test]
    fn warmup_edits_count_as_delivered_but_not_measured() {
        let t = Tracker::new(2, Duration::from_secs(1), Duration::from_secs(2));
        t.sent(1, tag(0, 0, 500), 1);
        t.sent(1, tag(0, 1, 1500), 1);
        t.received(1, tag(0, 0, 500), 1, 600_000);
        t.received(1, tag(0, 1, 1500), 1, 1_502_000);
        let (edits, deliveries, delivered, missing, _) = t.totals();
        assert_eq!((delivered, missing), (2, 0));
        assert_eq!(edits.len(), 1);
        assert_eq!(deliveries.len(), 1);
        assert!((edits.summary().p50_ms - 2.0).abs() < 0.01);
    }

    #[test]
    fn missing_and_duplicate_deliveries_are_counted() {
        let t = Tracker::new(1, Duration::ZERO, Duration::from_secs(1));
        t.sent(0, tag(1, 0, 0), 2);
        t.sent(0, tag(1, 1, 10), 2);
        t.received(0, tag(1, 0, 0), 2, 1_000);
        // A second copy to the same editor is a duplicate, not the other editor's delivery.
        t.received(0, tag(1, 0, 0), 2, 2_000);
        assert_eq!(t.outstanding(), 2);
        t.received(0, tag(1, 0, 0), 3, 3_000);
        // The edit was complete after both editors had it; another copy is a duplicate too.
        t.received(0, tag(1, 0, 0), 3, 4_000);
        let (edits, _, delivered, missing, dupes) = t.totals();
        assert_eq!((delivered, missing, dupes), (2, 2, 2));
        assert!((edits.summary().max_ms - 3.0).abs() < 0.01);
    }

    /// Throughput counts what completed inside the send window, not the backlog drained after it.
    #[test]
    fn completions_after_the_window_are_not_throughput() {
        let t = Tracker::new(1, Duration::ZERO, Duration::from_secs(1));
        t.sent(0, tag(1, 0, 100), 1);
        t.sent(0, tag(1, 1, 900), 1);
        t.received(0, tag(1, 0, 100), 2, 200_000);
        t.received(0, tag(1, 1, 900), 2, 1_400_000);
        assert_eq!(t.in_window(), (1, 1));
        let (edits, ..) = t.totals();
        assert_eq!(edits.len(), 2, "both are still measured for latency");
    }
}
