//! `cold-load`: build a large document (the size class of the B4 editing trace, ≈260,000 single-
//! character operations, 70 % inserts, typed with locality and occasional cursor jumps), then time
//! how long a new client waits for its initial sync: with the document in the server's memory
//! (warm), and after a server restart (cold: loaded from the store; only for a target that persists).
//!
//! The trace is synthetic and seeded (the B4 trace itself is not reachable from this machine); its
//! operation count and insert/delete mix match B4 (259,778 operations, 182,315 inserts).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};
use yrs::{Doc, GetString, Text, Transact};

use crate::report::{self, Row};
use crate::scenario::{Protocol, Scenario};
use crate::stats::{Latency, Summary};
use crate::target::{Target, TargetOpts};
use crate::wire::{Dialect, Incoming, Replica, SYNC_STEP2, SYNC_UPDATE};
use crate::ws;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub ops: usize,
    /// Operations per update sent while building the document.
    pub batch: usize,
    /// Timed loads of each kind.
    pub loads: usize,
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            ops: 260_000,
            batch: 100,
            loads: 3,
            seed: 4,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub target: String,
    pub persistence: String,
    pub params: Params,
    pub final_chars: usize,
    /// Bytes of the initial sync the server sent (its encoding of the document).
    pub sync_bytes: usize,
    pub build_secs: f64,
    /// Connect → initial sync received, document in memory.
    pub warm: Summary,
    /// Connect → initial sync received, right after a server restart (None: not persisted).
    pub cold: Option<Summary>,
    pub server_rss_mb: f64,
    pub errors: Vec<String>,
}

/// A small deterministic PRNG (xorshift64*), so every run types the same trace.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One trace operation on a text: insert `ch` at `pos`, or delete the character at `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert(u32, char),
    Delete(u32),
}

/// The synthetic editing trace.
pub fn trace(ops: usize, seed: u64) -> Vec<Op> {
    let mut rng = Rng(seed.max(1));
    let (mut len, mut cursor) = (0u32, 0u32);
    let mut out = Vec::with_capacity(ops);
    for _ in 0..ops {
        let r = rng.next() % 100;
        if r < 2 {
            cursor = (rng.next() % (u64::from(len) + 1)) as u32;
        }
        if r < 70 || cursor == 0 {
            let ch = b"etaoin shrdlu"[(rng.next() % 13) as usize] as char;
            out.push(Op::Insert(cursor, ch));
            cursor += 1;
            len += 1;
        } else {
            cursor -= 1;
            out.push(Op::Delete(cursor));
            len -= 1;
        }
    }
    out
}

async fn initial_sync(
    url: &str,
    dialect: &Dialect,
    doc: &str,
) -> anyhow::Result<(Duration, Vec<u8>)> {
    let t0 = Instant::now();
    let u = ws::WsUrl::parse(url)?;
    let (mut r, w) = ws::connect(&u, &u.path, None, Duration::from_secs(60)).await?;
    for m in dialect.hello(doc, &[0]) {
        ws::send(&w, m).await?;
    }
    let res = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match ws::read(&mut r, &w).await {
                ws::Msg::Binary(b) => match dialect.decode(&b) {
                    Some(Incoming::Step2(u)) => return Ok((t0.elapsed(), u.to_vec())),
                    Some(Incoming::Step1) => {
                        ws::send(&w, dialect.sync(doc, SYNC_STEP2, &[0, 0])).await?;
                    }
                    _ => {}
                },
                ws::Msg::Text(_) => {}
                ws::Msg::Closed(c) => return Err(anyhow!("closed before the sync ({c:?})")),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no initial sync within 120 s"))?;
    ws::close(&w).await;
    res
}

pub async fn run(
    target: &mut Target,
    opts: &TargetOpts,
    p: &Params,
    label: &str,
) -> anyhow::Result<Outcome> {
    let dialect = target.kind.dialect();
    let doc_name = format!("cold-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let progress = crate::scenario::Progress::new(label, Duration::from_secs(60));
    let mut errors = Vec::new();

    // Build the document through one editor.
    let ops = trace(p.ops, p.seed);
    let t_build = Instant::now();
    let url = target.url_for(&doc_name);
    let u = ws::WsUrl::parse(&url)?;
    let (mut r, w) = ws::connect(&u, &u.path, None, Duration::from_secs(30)).await?;
    for m in dialect.hello(&doc_name, &[0]) {
        ws::send(&w, m).await?;
    }
    let drain = {
        let w = w.clone();
        tokio::spawn(
            async move { while !matches!(ws::read(&mut r, &w).await, ws::Msg::Closed(_)) {} },
        )
    };
    let local = Doc::with_client_id(77);
    let text = local.get_or_insert_text("t");
    for (i, chunk) in ops.chunks(p.batch.max(1)).enumerate() {
        let update = {
            let mut txn = local.transact_mut();
            for op in chunk {
                match *op {
                    Op::Insert(pos, ch) => text.insert(&mut txn, pos, ch.encode_utf8(&mut [0; 4])),
                    Op::Delete(pos) => text.remove_range(&mut txn, pos, 1),
                }
            }
            txn.encode_update_v1()
        };
        ws::send(&w, dialect.sync(&doc_name, SYNC_UPDATE, &update)).await?;
        if i % 200 == 0 {
            progress.update(&format!("building: {} of {} ops", i * p.batch, p.ops));
        }
    }
    let expected = text.get_string(&local.transact());
    // Wait until a fresh client sees the whole document.
    let deadline = Instant::now() + Duration::from_secs(120);
    let sync_bytes = loop {
        let (_, bytes) = initial_sync(&url, &dialect, &doc_name).await?;
        let replica = Replica::new();
        replica.apply(&bytes)?;
        if replica.text() == expected {
            break bytes.len();
        }
        if Instant::now() > deadline {
            bail!(
                "the server never held the whole document (built {} chars)",
                expected.chars().count()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let build_secs = t_build.elapsed().as_secs_f64();
    ws::close(&w).await;
    drain.abort();

    let mut warm = Latency::new();
    for i in 0..p.loads.max(1) {
        progress.update(&format!("warm load {}", i + 1));
        let (t, _) = initial_sync(&url, &dialect, &doc_name).await?;
        warm.record(t);
    }
    let server_rss_mb =
        target.pid.and_then(crate::procstat::rss_bytes).unwrap_or(0) as f64 / 1048576.0;

    let cold = if target.kind == crate::target::Kind::Tandem {
        let mut cold = Latency::new();
        for i in 0..p.loads.max(1) {
            progress.update(&format!("cold load {} (restarting the server)", i + 1));
            target.restart(opts).await?;
            let url = target.url_for(&doc_name);
            let (t, bytes) = initial_sync(&url, &dialect, &doc_name).await?;
            let replica = Replica::new();
            replica.apply(&bytes)?;
            if replica.text() != expected {
                errors.push(format!(
                    "cold load {i}: the document differs after a restart"
                ));
            }
            cold.record(t);
        }
        Some(cold.summary())
    } else {
        None
    };
    progress.finish();
    Ok(Outcome {
        target: target.kind.name(),
        persistence: target.persistence.clone(),
        params: p.clone(),
        final_chars: expected.chars().count(),
        sync_bytes,
        build_secs,
        warm: warm.summary(),
        cold,
        server_rss_mb,
        errors,
    })
}

impl Scenario for Params {
    const NAME: &'static str = "cold-load";
    const PROTOCOL: Protocol = Protocol::Documents;
    type Outcome = Outcome;

    async fn run(
        &self,
        target: &mut Target,
        opts: &TargetOpts,
        label: &str,
    ) -> anyhow::Result<Outcome> {
        run(target, opts, self, label).await
    }

    fn title(&self) -> String {
        format!("cold-load: {} operations (B4 size class)", self.ops)
    }

    fn rows(&self, outcomes: &[Outcome]) -> Vec<Row> {
        let mut r = report::Rows::new(outcomes);
        r.add("warm load p50 ms", true, 1, |o| Some(o.warm.p50_ms))
            .add("warm load max ms", true, 1, |o| Some(o.warm.max_ms))
            .add("cold load (after restart) p50 ms", true, 1, |o| {
                o.cold.map(|c| c.p50_ms)
            })
            .add("cold load max ms", true, 1, |o| o.cold.map(|c| c.max_ms))
            .add("initial sync bytes", true, 0, |o| Some(o.sync_bytes as f64))
            .add("build (send the trace) s", true, 1, |o| Some(o.build_secs))
            .add("server RSS with the document MB", true, 1, |o| {
                Some(o.server_rss_mb)
            });
        r.done()
    }

    fn note(&self, _outcomes: &[Outcome]) -> String {
        "\nA target without persistence has no cold load: its document is gone after a restart (–).\n".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_has_the_b4_shape_and_is_deterministic() {
        let t = trace(260_000, 4);
        assert_eq!(t, trace(260_000, 4));
        let inserts = t.iter().filter(|o| matches!(o, Op::Insert(..))).count();
        // B4: 182,315 inserts of 259,778 operations (70.2 %).
        let share = inserts as f64 / t.len() as f64;
        assert!((0.66..0.74).contains(&share), "{share}");
        // Every operation is valid for the text as it is then.
        let mut len = 0i64;
        for op in &t {
            match *op {
                Op::Insert(p, _) => {
                    assert!(i64::from(p) <= len);
                    len += 1;
                }
                Op::Delete(p) => {
                    assert!(i64::from(p) < len);
                    len -= 1;
                }
            }
        }
    }
}
