//! `doc-fanout --sweep`: the doc-fanout workload at a rising per-editor rate, one step after another
//! on the same server, until edit p99 crosses a threshold (or edits go missing). The knee is the
//! highest offered load that passed.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::report::{self, Row, Series};
use crate::scenario::doc_fanout;
use crate::scenario::{Protocol, Scenario};
use crate::target::{Target, TargetOpts};

/// The steps of a sweep (the `[sweep]` table of a config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Per-editor edit rates, one step each.
    pub rates: Vec<f64>,
    /// Measured seconds per step.
    pub step_duration: f64,
    /// The p99 (ms) a step must stay under.
    pub threshold_ms: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            rates: vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            step_duration: 10.0,
            threshold_ms: 100.0,
        }
    }
}

/// A sweep: the doc-fanout workload and the steps to raise it by.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub fanout: doc_fanout::Params,
    pub sweep: Params,
}

/// One target's sweep: every step it ran, and its knee.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub steps: Vec<doc_fanout::Outcome>,
    /// The highest offered edits/s (over all editors) of a passing step.
    pub knee: Option<f64>,
}

/// A step passes when p99 is under the threshold, nothing went missing and no socket dropped.
fn step_passes(o: &doc_fanout::Outcome, threshold_ms: f64) -> bool {
    o.edit_latency.count > 0
        && o.edit_latency.p99_ms <= threshold_ms
        && o.missing_deliveries == 0
        && o.disconnects == 0
        && o.errors.is_empty()
}

impl Scenario for Sweep {
    const NAME: &'static str = "doc-fanout-sweep";
    const PROTOCOL: Protocol = Protocol::Documents;
    type Outcome = Outcome;

    async fn run(
        &self,
        target: &mut Target,
        _opts: &TargetOpts,
        _label: &str,
    ) -> anyhow::Result<Outcome> {
        let name = target.kind.name();
        let mut out = Outcome::default();
        for &rate in &self.sweep.rates {
            let mut sp = self.fanout.clone();
            sp.rate = rate;
            sp.duration = self.sweep.step_duration;
            let label = format!("sweep {name} {:.0} edits/s", sp.offered_edits_per_sec());
            match doc_fanout::run(target, &sp, &label).await {
                Ok(o) => {
                    let ok = step_passes(&o, self.sweep.threshold_ms);
                    eprintln!(
                        "{label}: edit p99 {:.1} ms, missing {}, {}",
                        o.edit_latency.p99_ms,
                        o.missing_deliveries,
                        if ok { "pass" } else { "over the threshold" }
                    );
                    if ok {
                        out.knee = Some(o.offered_edits_per_sec);
                    }
                    out.steps.push(o);
                    if !ok {
                        break;
                    }
                }
                // A failed step ends this target's sweep, not the run: the others still get theirs.
                Err(e) => {
                    eprintln!("{label}: failed: {e:#}");
                    let mut o = doc_fanout::Outcome {
                        target: name.clone(),
                        params: sp.clone(),
                        offered_edits_per_sec: sp.offered_edits_per_sec(),
                        ..Default::default()
                    };
                    o.errors.push(format!("{e:#}"));
                    out.steps.push(o);
                    break;
                }
            }
        }
        Ok(out)
    }

    fn title(&self) -> String {
        format!(
            "doc-fanout sweep: {} documents × {} editors, p99 threshold {} ms",
            self.fanout.docs, self.fanout.editors, self.sweep.threshold_ms
        )
    }

    fn rows(&self, outcomes: &[Outcome]) -> Vec<Row> {
        let mut r = report::Rows::new(outcomes);
        r.add(
            "knee: highest offered edits/s with p99 under the threshold",
            false,
            0,
            |o| o.knee,
        );
        r.done()
    }

    fn note(&self, _outcomes: &[Outcome]) -> String {
        "\nA knee at the last step means the target never crossed the threshold: the sweep's top rate (or the load generator) was the limit.\n".into()
    }

    /// Edit p99 of every step per target, then the knees.
    fn body(&self, targets: &[String], outcomes: &[Outcome]) -> String {
        let mut md = String::from("Edit latency p99 (ms) at each offered load (edits/s over all editors); ✗ = over the threshold, edits missing or the run failed:\n\n| offered edits/s |");
        for n in targets {
            let _ = write!(md, " {n} |");
        }
        md.push_str("\n|---:|");
        md.push_str(&"---:|".repeat(targets.len()));
        md.push('\n');
        for &rate in &self.sweep.rates {
            let load = self.fanout.docs as f64 * self.fanout.editors as f64 * rate;
            if !outcomes
                .iter()
                .any(|s| s.steps.iter().any(|o| o.params.rate == rate))
            {
                continue;
            }
            let _ = write!(md, "| {load:.0} |");
            for s in outcomes {
                match s.steps.iter().find(|o| o.params.rate == rate) {
                    Some(o) if !o.errors.is_empty() && o.edit_latency.count == 0 => {
                        md.push_str(" ✗ failed |")
                    }
                    Some(o) => {
                        let mark = if step_passes(o, self.sweep.threshold_ms) {
                            ""
                        } else {
                            " ✗"
                        };
                        let _ = write!(md, " {:.1}{mark} |", o.edit_latency.p99_ms);
                    }
                    None => md.push_str(" – |"),
                }
            }
            md.push('\n');
        }
        md.push('\n');
        md.push_str(&report::table(targets, &self.rows(outcomes)));
        md.push_str(&self.note(outcomes));
        md
    }

    fn chart(&self, targets: &[String], outcomes: &[Outcome]) -> Option<String> {
        let series: Vec<Series> = outcomes
            .iter()
            .zip(targets)
            .flat_map(|(s, n)| {
                let ok: Vec<&doc_fanout::Outcome> = s
                    .steps
                    .iter()
                    .filter(|o| o.edit_latency.count > 0)
                    .collect();
                [
                    Series {
                        name: format!("{n} p50"),
                        points: ok
                            .iter()
                            .map(|o| (o.offered_edits_per_sec, o.edit_latency.p50_ms))
                            .collect(),
                        dashed: true,
                    },
                    Series {
                        name: format!("{n} p99"),
                        points: ok
                            .iter()
                            .map(|o| (o.offered_edits_per_sec, o.edit_latency.p99_ms))
                            .collect(),
                        dashed: false,
                    },
                ]
            })
            .collect();
        Some(report::svg_chart(
            "doc-fanout sweep: latency vs offered load",
            "offered edits/s",
            "edit latency ms",
            &series,
        ))
    }

    /// The threshold, each target's knee and every step (`steps`: one list per target).
    fn json(
        &self,
        targets: &[String],
        outcomes: &[Outcome],
    ) -> serde_json::Result<Map<String, Value>> {
        let knees: Vec<Value> = targets
            .iter()
            .zip(outcomes)
            .map(|(n, o)| serde_json::json!({"target": n, "knee_edits_per_sec": o.knee}))
            .collect();
        let steps: Vec<&[doc_fanout::Outcome]> = outcomes.iter().map(|o| &o.steps[..]).collect();
        let mut m = Map::new();
        m.insert("threshold_ms".into(), self.sweep.threshold_ms.into());
        m.insert("knees".into(), knees.into());
        m.insert("steps".into(), serde_json::to_value(steps)?);
        Ok(m)
    }
}
