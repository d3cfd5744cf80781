//! `reconnect-storm`: N clients connected over D documents lose their connections at the same
//! instant (no close handshake, as when a proxy or network fails) and reconnect at once; measures
//! the time until each has completed its initial sync again, and until all have.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::procstat::{Sampler, Usage};
use crate::report::{self, Row};
use crate::scenario::idle::open_one;
use crate::scenario::{Protocol, Scenario};
use crate::stats::{Latency, Summary};
use crate::target::{Target, TargetOpts};
use crate::ws;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub clients: usize,
    pub docs: usize,
    /// Storms to run (results are pooled).
    pub rounds: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            clients: 2_000,
            docs: 100,
            rounds: 3,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub target: String,
    pub persistence: String,
    pub params: Params,
    /// Drop → this client synced again.
    pub resync: Summary,
    /// Drop → every client synced again, per round (ms).
    pub all_resynced_ms: Vec<f64>,
    pub failed: u64,
    pub server: Usage,
    pub errors: Vec<String>,
}

pub async fn run(target: &Target, p: &Params, label: &str) -> anyhow::Result<Outcome> {
    if p.clients > 19_000 {
        bail!("reconnect-storm runs in one process: at most 19,000 clients");
    }
    let dialect = target.kind.dialect();
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let docs: Vec<String> = (0..p.docs.max(1))
        .map(|d| format!("storm-{}-{d}", &run_id[20..]))
        .collect();
    let dropped = Arc::new(AtomicU64::new(0));
    let open_all = |sockets: usize| {
        let docs = docs.clone();
        let dialect = dialect.clone();
        let dropped = dropped.clone();
        let template = target.url_for("{doc}");
        async move {
            let t0 = Instant::now();
            let mut joins = Vec::with_capacity(sockets);
            for i in 0..sockets {
                let doc = docs[i % docs.len()].clone();
                let url = template.replace("{doc}", &doc);
                let dialect = dialect.clone();
                let dropped = dropped.clone();
                joins.push(tokio::spawn(async move {
                    let u = ws::WsUrl::parse(&url)?;
                    let h = open_one(&u, &u.path, &dialect, &doc, None, dropped).await?;
                    anyhow::Ok((h, t0.elapsed()))
                }));
            }
            let mut held = Vec::new();
            let mut lat = Latency::new();
            let mut errors = Vec::new();
            for j in joins {
                match j.await {
                    Ok(Ok((h, t))) => {
                        lat.record(t);
                        held.push(h);
                    }
                    Ok(Err(e)) => errors.push(format!("{e:#}")),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (held, lat, t0.elapsed(), errors)
        }
    };
    let sampler = target.pid.map(Sampler::start);
    let progress = crate::scenario::Progress::new(label, Duration::from_secs(10 * p.rounds as u64));
    let w0 = Instant::now();
    let (mut held, _, _, mut errors) = open_all(p.clients).await;
    let mut resync = Latency::new();
    let mut all = Vec::new();
    let mut failed = errors.len() as u64;
    for round in 0..p.rounds.max(1) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress.update(&format!("storm {} of {}", round + 1, p.rounds));
        // Storm: every connection dies at once, then all reconnect.
        for h in held.drain(..) {
            h.kill();
        }
        let (h, lat, total, errs) = open_all(p.clients).await;
        failed += errs.len() as u64;
        errors.extend(errs.into_iter().take(3));
        resync.add(&lat);
        all.push(total.as_secs_f64() * 1e3);
        held = h;
    }
    progress.finish();
    for h in &held {
        ws::close(&h.writer).await;
    }
    Ok(Outcome {
        target: target.kind.name(),
        persistence: target.persistence.clone(),
        params: p.clone(),
        resync: resync.summary(),
        all_resynced_ms: all,
        failed,
        server: sampler
            .map(|s| s.usage(w0, Instant::now()))
            .unwrap_or_default(),
        errors,
    })
}

impl Scenario for Params {
    const NAME: &'static str = "reconnect-storm";
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
            "reconnect-storm: {} clients over {} documents, {} storms",
            self.clients, self.docs, self.rounds
        )
    }

    fn rows(&self, outcomes: &[Outcome]) -> Vec<Row> {
        let mut r = report::Rows::new(outcomes);
        r.add("resync p50 ms", true, 1, |o| Some(o.resync.p50_ms))
            .add("resync p99 ms", true, 1, |o| Some(o.resync.p99_ms))
            .add("all resynced (worst round) ms", true, 0, |o| {
                Some(o.all_resynced_ms.iter().copied().fold(0.0, f64::max))
            })
            .add("failed reconnects", true, 0, |o| Some(o.failed as f64))
            .add("server CPU %", true, 0, |o| Some(o.server.cpu_pct))
            .add("server RSS max MB", true, 1, |o| Some(o.server.rss_max_mb));
        r.done()
    }
}
