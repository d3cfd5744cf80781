//! `idle-connections`: open N WebSocket connections (each opens a document and completes the initial
//! sync), hold them with heartbeats, and report the connect rate and the server's memory per socket.
//!
//! These machines cap a process at 20,000 open files and a source address at ~28,000 ephemeral
//! ports, so the sockets are opened by several `bench idle-worker` processes, each from its own
//! 127.0.0.x source address.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

use crate::procstat;
use crate::report::{self, Row};
use crate::scenario::{Protocol, Scenario};
use crate::stats::{Latency, Summary};
use crate::target::{Target, TargetOpts};
use crate::wire::{Dialect, Incoming, SYNC_STEP2};
use crate::ws;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub connections: usize,
    /// Documents the sockets are spread over.
    pub docs: usize,
    /// Sockets per load-generator process (each process may hold at most 20,000 files).
    pub per_worker: usize,
    /// Seconds between client pings on each socket.
    pub heartbeat: f64,
    /// Seconds the sockets are held (and watched for drops) after all are open.
    pub hold: f64,
    /// Sockets each worker opens at once.
    pub connect_concurrency: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            connections: 18_000,
            docs: 100,
            per_worker: 9_000,
            heartbeat: 20.0,
            hold: 10.0,
            connect_concurrency: 128,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub target: String,
    pub persistence: String,
    pub params: Params,
    pub connected: u64,
    pub failed: u64,
    /// Sockets the server closed while they were held.
    pub dropped: u64,
    pub workers: usize,
    /// Sockets opened (and synced) per second.
    pub connect_rate: f64,
    /// Slowest worker's p99 socket open → initial sync, in ms.
    pub connect_p99_ms: f64,
    /// Server RSS with one socket per document (documents loaded), before the rest connected.
    pub rss_base_mb: f64,
    /// Server RSS with every socket open and idle (end of the hold).
    pub rss_held_mb: f64,
    /// (held − base) / (sockets beyond the base ones), in KiB.
    pub kib_per_socket: f64,
    pub server_cpu_idle_pct: f64,
    pub errors: Vec<String>,
}

/// One held socket: its writer (for heartbeats) and its reader task.
pub(crate) struct Held {
    pub writer: ws::Writer,
    pub doc: String,
    pub reader: tokio::task::JoinHandle<()>,
}

impl Held {
    /// Drops the connection without a close handshake (as a lost network would).
    pub fn kill(self) {
        self.reader.abort();
    }
}

/// Opens one socket on `doc` and waits for the initial sync.
pub(crate) async fn open_one(
    url: &ws::WsUrl,
    path: &str,
    dialect: &Dialect,
    doc: &str,
    source: Option<IpAddr>,
    dropped: Arc<AtomicU64>,
) -> anyhow::Result<Held> {
    let (mut reader, writer) = ws::connect(url, path, source, Duration::from_secs(30)).await?;
    for m in dialect.hello(doc, &[0]) {
        ws::send(&writer, m).await?;
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let w = writer.clone();
    let dialect = dialect.clone();
    let doc = doc.to_string();
    let held_doc = doc.clone();
    let reader_task = tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match ws::read(&mut reader, &w).await {
                ws::Msg::Binary(b) => match dialect.decode(&b) {
                    Some(Incoming::Step1) => {
                        // An empty update: nothing to contribute.
                        let _ = ws::send(&w, dialect.sync(&doc, SYNC_STEP2, &[0, 0])).await;
                    }
                    Some(Incoming::Step2(_)) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                },
                ws::Msg::Text(_) => {}
                ws::Msg::Closed(_) => {
                    if tx.is_none() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .map_err(|_| anyhow!("no initial sync within 30 s"))?
        .map_err(|_| anyhow!("closed before the initial sync"))?;
    Ok(Held {
        writer,
        doc: held_doc,
        reader: reader_task,
    })
}

/// Worker side: open `count` sockets, report on stdout, hold until stdin closes.
#[allow(clippy::too_many_arguments)]
pub async fn worker(
    url_template: String,
    dialect: Dialect,
    count: usize,
    offset: usize,
    docs: usize,
    source: Option<IpAddr>,
    heartbeat: f64,
    concurrency: usize,
) -> anyhow::Result<()> {
    let dropped = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let t0 = Instant::now();
    let mut joins = Vec::with_capacity(count);
    for i in offset..offset + count {
        let doc = format!("idle-{}", i % docs.max(1));
        let url = url_template.replace("{doc}", &doc);
        let sem = sem.clone();
        let dialect = dialect.clone();
        let dropped = dropped.clone();
        joins.push(tokio::spawn(async move {
            let _p = sem.acquire().await.expect("open semaphore");
            let t = Instant::now();
            let u = ws::WsUrl::parse(&url)?;
            let held = open_one(&u, &u.path, &dialect, &doc, source, dropped).await?;
            anyhow::Ok((held, t.elapsed()))
        }));
    }
    let mut held = Vec::with_capacity(count);
    let mut lat = Latency::new();
    let mut failed = 0u64;
    let mut first_err = None;
    let mut out = tokio::io::stdout();
    for (n, j) in joins.into_iter().enumerate() {
        match j.await {
            Ok(Ok((h, t))) => {
                lat.record(t);
                held.push(h);
            }
            Ok(Err(e)) => {
                failed += 1;
                first_err.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                failed += 1;
                first_err.get_or_insert_with(|| e.to_string());
            }
        }
        if n % 1000 == 999 {
            out.write_all(format!("progress {}\n", n + 1).as_bytes())
                .await?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "connected": held.len(),
        "failed": failed,
        "secs": secs,
        "latency": lat.summary(),
        "error": first_err,
    });
    out.write_all(format!("ready {report}\n").as_bytes())
        .await?;
    out.flush().await?;

    // Heartbeats: every socket once per interval, spread over the interval. A WebSocket ping for
    // y-websocket servers; Hocuspocus closes sockets without application messages for 60 s (pongs
    // do not count), so there an empty awareness update (no states: nothing is relayed).
    let writers: Vec<(ws::Writer, String)> = held
        .iter()
        .map(|h| (h.writer.clone(), h.doc.clone()))
        .collect();
    let hb = tokio::spawn(async move {
        if writers.is_empty() || heartbeat <= 0.0 {
            return;
        }
        let gap = Duration::from_secs_f64(heartbeat / writers.len() as f64);
        let mut tick = tokio::time::interval(gap.max(Duration::from_micros(50)));
        loop {
            for (w, doc) in &writers {
                tick.tick().await;
                let _ = match dialect {
                    Dialect::Hocuspocus => ws::send(w, dialect.awareness(doc, &[0])).await,
                    Dialect::YWebsocket => ws::ping(w).await,
                };
            }
        }
    });
    // Hold until the parent closes stdin.
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {}
    hb.abort();
    let d = dropped.load(Ordering::Relaxed);
    out.write_all(format!("dropped {d}\n").as_bytes()).await?;
    out.flush().await?;
    for h in &held {
        ws::close(&h.writer).await;
    }
    Ok(())
}

struct WorkerProc {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

/// Parent side.
pub async fn run(target: &Target, p: &Params, label: &str) -> anyhow::Result<Outcome> {
    let Some(pid) = target.pid else {
        bail!(
            "idle-connections measures the server's memory: it needs a target the harness starts"
        );
    };
    let dialect = target.kind.dialect();
    let template = target.url_for("{doc}");
    let docs = p.docs.max(1).min(p.connections.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let mut errors = Vec::new();

    // One socket per document first, so the documents are loaded before the baseline.
    let mut base = Vec::new();
    for i in 0..docs {
        let doc = format!("idle-{i}");
        let u = ws::WsUrl::parse(&template.replace("{doc}", &doc))?;
        base.push(open_one(&u, &u.path, &dialect, &doc, None, dropped.clone()).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_base = procstat::rss_bytes(pid).unwrap_or(0);

    let rest = p.connections.saturating_sub(docs);
    let per = p.per_worker.clamp(1, 19_000);
    let n_workers = rest.div_ceil(per);
    if n_workers > 240 {
        bail!("{n_workers} workers: at most 240 (one source address each, 127.0.0.10 to .249)");
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..n_workers {
        let count = per.min(rest - w * per);
        let source = format!("127.0.0.{}", 10 + w);
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@""#)
            .arg("sh")
            .arg(&exe)
            .arg("idle-worker")
            .arg("--url-template")
            .arg(&template)
            .arg("--dialect")
            .arg(if dialect == Dialect::Hocuspocus {
                "hocuspocus"
            } else {
                "y-websocket"
            })
            .arg("--count")
            .arg(count.to_string())
            .arg("--offset")
            .arg((docs + w * per).to_string())
            .arg("--docs")
            .arg(docs.to_string())
            .arg("--source")
            .arg(&source)
            .arg("--heartbeat")
            .arg(p.heartbeat.to_string())
            .arg("--concurrency")
            .arg(p.connect_concurrency.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting bench idle-worker")?;
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        workers.push(WorkerProc { child, lines });
    }
    let progress = crate::scenario::Progress::new(label, Duration::from_secs(60));
    let mut connected = docs as u64;
    let mut failed = 0u64;
    let mut connect_p99_ms = 0f64;
    let mut slowest = 0f64;
    for (i, w) in workers.iter_mut().enumerate() {
        loop {
            let Some(line) = w.lines.next_line().await? else {
                bail!("idle-worker {i} exited before reporting");
            };
            if let Some(n) = line.strip_prefix("progress ") {
                progress.update(&format!("worker {i}: {n} sockets"));
            } else if let Some(j) = line.strip_prefix("ready ") {
                let v: serde_json::Value = serde_json::from_str(j)?;
                connected += v["connected"].as_u64().unwrap_or(0);
                failed += v["failed"].as_u64().unwrap_or(0);
                slowest = slowest.max(v["secs"].as_f64().unwrap_or(0.0));
                if let Ok(s) = serde_json::from_value::<Summary>(v["latency"].clone()) {
                    connect_p99_ms = connect_p99_ms.max(s.p99_ms);
                }
                if let Some(e) = v["error"].as_str() {
                    errors.push(format!("worker {i}: {e}"));
                }
                break;
            }
        }
    }
    progress.finish();
    let connect_secs = t0.elapsed().as_secs_f64().max(slowest);
    // Let the server settle, then hold and sample.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu0 = procstat::cpu_seconds(pid);
    let h0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(p.hold)).await;
    let cpu1 = procstat::cpu_seconds(pid);
    let rss_held = procstat::rss_bytes(pid).unwrap_or(0);
    let hold_secs = h0.elapsed().as_secs_f64();

    let mut dropped_total = dropped.load(Ordering::Relaxed);
    for w in &mut workers {
        drop(w.child.stdin.take());
    }
    for w in &mut workers {
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(30), w.lines.next_line()).await
        {
            if let Some(d) = line.strip_prefix("dropped ") {
                dropped_total += d.trim().parse::<u64>().unwrap_or(0);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), w.child.wait()).await;
    }
    for h in &base {
        ws::close(&h.writer).await;
    }
    // Sockets the server dropped during the hold no longer cost it memory.
    let beyond = connected
        .saturating_sub(docs as u64)
        .saturating_sub(dropped_total)
        .max(1);
    Ok(Outcome {
        target: target.kind.name(),
        persistence: target.persistence.clone(),
        params: p.clone(),
        connected,
        failed,
        dropped: dropped_total,
        workers: n_workers,
        connect_rate: (connected - docs as u64) as f64 / connect_secs.max(0.001),
        connect_p99_ms,
        rss_base_mb: rss_base as f64 / 1048576.0,
        rss_held_mb: rss_held as f64 / 1048576.0,
        kib_per_socket: rss_held.saturating_sub(rss_base) as f64 / 1024.0 / beyond as f64,
        server_cpu_idle_pct: match (cpu0, cpu1) {
            (Some(a), Some(b)) => (b - a) / hold_secs * 100.0,
            _ => 0.0,
        },
        errors,
    })
}

impl Scenario for Params {
    const NAME: &'static str = "idle-connections";
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
            "idle-connections: {} sockets over {} documents",
            self.connections, self.docs
        )
    }

    fn rows(&self, outcomes: &[Outcome]) -> Vec<Row> {
        let mut r = report::Rows::new(outcomes);
        r.add("sockets held", false, 0, |o| Some(o.connected as f64))
            .add("failed to connect", true, 0, |o| Some(o.failed as f64))
            .add("dropped while held", true, 0, |o| Some(o.dropped as f64))
            .add("connect rate /s", false, 0, |o| Some(o.connect_rate))
            .add("connect+sync p99 ms", true, 1, |o| Some(o.connect_p99_ms))
            .add("server RSS, documents loaded MB", true, 1, |o| {
                Some(o.rss_base_mb)
            })
            .add("server RSS, all sockets MB", true, 1, |o| {
                Some(o.rss_held_mb)
            })
            .add("server KiB per idle socket", true, 2, |o| {
                Some(o.kib_per_socket)
            })
            .add("server CPU while idle %", true, 1, |o| {
                Some(o.server_cpu_idle_pct)
            });
        r.done()
    }

    fn note(&self, _outcomes: &[Outcome]) -> String {
        "\nKiB per idle socket = (server RSS with every socket open − RSS with one socket per document) / the other sockets. Each socket completed the initial sync of its document, then idled with client heartbeats.\n".into()
    }
}
