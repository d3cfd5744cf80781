//! `reconnect-storm`: N clients connected over D documents lose their connections at the same
//! instant (no close handshake, as when a proxy or network fails) and reconnect at once; measures
//! the time until each has completed its initial sync again, and until all have.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::procstat::{Sampler, Usage};
use crate::scenario::idle::open_one;
use crate::stats::{Latency, Summary};
use crate::target::Target;
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
        persistence: String::new(),
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
