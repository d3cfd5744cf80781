//! Load scenarios. Each takes its parameters, drives a started [`Target`] and returns a
//! serialisable outcome; its [`Scenario`] impl says how outcomes become a report, and
//! [`run_and_report`] does the rest: start each target, run, stop, write the report.

pub mod call;
pub mod chat_fanout;
pub mod cold_load;
pub mod doc_fanout;
pub mod idle;
pub mod presence_churn;
pub mod reconnect;
pub mod sweep;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::report::{self, Machine, Row};
use crate::target::{Kind, Target, TargetOpts};

/// Which servers a scenario's workload can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Yjs documents over the y-websocket protocol: Tandem, Hocuspocus, y-websocket-server, or a
    /// running server given by URL.
    Documents,
    /// Chat rooms: Tandem's `/v1` and the Socket.IO peer.
    Chat,
    /// Calls: Tandem's `/v1` signaling and its SFU.
    Call,
}

impl Protocol {
    /// The targets of a run: `list` (comma-separated) if given, else Tandem alone, or for `compare`
    /// Tandem and every peer that speaks this protocol.
    pub fn targets(self, list: Option<&str>, compare: bool) -> anyhow::Result<Vec<Kind>> {
        let list = match (list, compare, self) {
            (Some(list), _, _) => list,
            (None, false, _) => "tandem",
            (None, true, Protocol::Documents) => "tandem,hocuspocus,y-websocket-server",
            (None, true, Protocol::Chat) => "tandem,socketio",
            (None, true, Protocol::Call) => "tandem,janus",
        };
        let kinds = list
            .split(',')
            .map(|s| Kind::parse(s.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        match self {
            Protocol::Documents if kinds.contains(&Kind::SocketIo) => {
                bail!("socketio serves chat only: use it with chat-fanout")
            }
            Protocol::Documents | Protocol::Chat if kinds.contains(&Kind::Janus) => {
                bail!("janus serves calls only: use it with call")
            }
            Protocol::Chat => {
                if let Some(k) = kinds
                    .iter()
                    .find(|k| matches!(k, Kind::Hocuspocus | Kind::YWebsocketServer))
                {
                    bail!(
                        "{} has no chat: chat-fanout runs against tandem and socketio",
                        k.name()
                    );
                }
            }
            Protocol::Call => {
                if let Some(k) = kinds
                    .iter()
                    .find(|k| !matches!(k, Kind::Tandem | Kind::Janus | Kind::External(_)))
                {
                    bail!(
                        "{} has no calls: call runs against tandem and janus",
                        k.name()
                    );
                }
            }
            Protocol::Documents => {}
        }
        Ok(kinds)
    }
}

/// One workload of `bench SCENARIO` and `bench compare SCENARIO`, implemented by the value that
/// describes a run of it (usually the scenario's `Params`).
// Scenarios run one at a time on the main task, so their futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Scenario {
    /// Its name in report folders and in `report.json`.
    const NAME: &'static str;
    /// Which targets it can drive.
    const PROTOCOL: Protocol;
    /// What one target's run measured.
    type Outcome: Serialize;

    /// Adjusts how the targets are started (by default, not at all).
    fn prepare(&self, _opts: &mut TargetOpts) {}

    /// Drives one started target; `label` names the run in progress lines.
    async fn run(
        &self,
        target: &mut Target,
        opts: &TargetOpts,
        label: &str,
    ) -> anyhow::Result<Self::Outcome>;

    /// The report's heading.
    fn title(&self) -> String;

    /// The comparison table, one value per target in each row.
    fn rows(&self, outcomes: &[Self::Outcome]) -> Vec<Row>;

    /// Markdown after the table: what the figures mean.
    fn note(&self, _outcomes: &[Self::Outcome]) -> String {
        String::new()
    }

    /// `chart.svg`, if the scenario has one.
    fn chart(&self, _targets: &[String], _outcomes: &[Self::Outcome]) -> Option<String> {
        None
    }

    /// The Markdown between the persistence notes and the end of the report.
    fn body(&self, targets: &[String], outcomes: &[Self::Outcome]) -> String {
        let mut md = report::table(targets, &self.rows(outcomes));
        md.push_str(&self.note(outcomes));
        md
    }

    /// `report.json`'s fields besides `scenario`, `command` and `machine`.
    fn json(
        &self,
        _targets: &[String],
        outcomes: &[Self::Outcome],
    ) -> serde_json::Result<Map<String, Value>> {
        let mut m = Map::new();
        m.insert("runs".into(), serde_json::to_value(outcomes)?);
        Ok(m)
    }
}

/// Starts each target in turn, runs `scenario` against it and stops it (also when the run failed),
/// then writes the report (report.json, report.md, chart.svg) to a new folder under `out`.
pub async fn run_and_report<S: Scenario>(
    scenario: &S,
    targets: &[Kind],
    mut opts: TargetOpts,
    out: &Path,
) -> anyhow::Result<()> {
    scenario.prepare(&mut opts);
    let mut outcomes = Vec::with_capacity(targets.len());
    for k in targets {
        let mut t = Target::start(k, &opts).await?;
        let label = format!("{} {}", S::NAME, k.name());
        let r = scenario.run(&mut t, &opts, &label).await;
        t.stop().await;
        outcomes.push(r?);
    }
    let names: Vec<String> = targets.iter().map(Kind::name).collect();
    let command = report::command_line();
    let mut md = report::header(&scenario.title(), &command);
    md.push_str(&report::persistence_notes(targets, &opts));
    md.push_str(&scenario.body(&names, &outcomes));
    let mut json = scenario.json(&names, &outcomes)?;
    json.insert("scenario".into(), S::NAME.into());
    json.insert("command".into(), command.into());
    json.insert("machine".into(), serde_json::to_value(Machine::read())?);
    let dir = report::results_dir(out, S::NAME)?;
    report::write(
        &dir,
        &Value::Object(json),
        &md,
        scenario.chart(&names, &outcomes).as_deref(),
    )
}

#[derive(Clone)]
/// A one-line progress display on stderr (only when stderr is a terminal or `BENCH_PROGRESS=1`).
pub struct Progress {
    label: String,
    start: Instant,
    total: Duration,
    on: bool,
}

impl Progress {
    pub fn new(label: &str, total: Duration) -> Self {
        use std::io::IsTerminal;
        let on = std::io::stderr().is_terminal()
            || std::env::var("BENCH_PROGRESS").is_ok_and(|v| v == "1");
        Self {
            label: label.to_string(),
            start: Instant::now(),
            total,
            on,
        }
    }

    pub fn update(&self, detail: &str) {
        if !self.on {
            return;
        }
        let el = self.start.elapsed().as_secs_f64();
        let frac = (el / self.total.as_secs_f64().max(0.001)).min(1.0);
        let width = 24;
        let filled = (frac * width as f64) as usize;
        eprint!(
            "\r\x1b[2K{} [{}{}] {:>5.1}/{:.0} s  {}",
            self.label,
            "#".repeat(filled),
            "-".repeat(width - filled),
            el,
            self.total.as_secs_f64(),
            detail
        );
    }

    pub fn finish(&self) {
        if self.on {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_runs_the_peers_of_the_protocol() {
        let names = |p: Protocol, list, compare| {
            p.targets(list, compare)
                .expect("targets")
                .iter()
                .map(Kind::name)
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(names(Protocol::Documents, None, false), "tandem");
        assert_eq!(
            names(Protocol::Documents, None, true),
            "tandem,hocuspocus,y-websocket-server"
        );
        assert_eq!(names(Protocol::Chat, None, true), "tandem,socketio");
        assert_eq!(
            names(Protocol::Chat, Some("tandem, ws://127.0.0.1:9/x"), true),
            "tandem,ws://127.0.0.1:9/x"
        );
    }

    #[test]
    fn targets_without_the_protocol_are_refused() {
        assert!(Protocol::Documents
            .targets(Some("tandem,socketio"), false)
            .is_err());
        assert!(Protocol::Chat.targets(Some("hocuspocus"), true).is_err());
        assert!(Protocol::Chat
            .targets(Some("y-websocket-server"), false)
            .is_err());
    }
}
