//! Reports: `report.json` (every figure, for machines), `report.md` (tables, for people) and
//! `chart.svg` (latency percentiles against offered load), written to one folder per run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::target::{Kind, TargetOpts};

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let mem_kb: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (mem_kb / 1048576.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{} cores ({}), {} GiB, Linux {}; load generator and servers share the machine",
            self.cores, self.cpu, self.memory_gib, self.kernel
        )
    }
}

/// A metric row of a comparison table: its value for each target, and which way is better.
pub struct Row {
    pub name: String,
    pub values: Vec<Option<f64>>,
    pub lower_is_better: bool,
    pub decimals: usize,
}

impl Row {
    pub fn new(name: &str, lower_is_better: bool, decimals: usize) -> Self {
        Self {
            name: name.into(),
            values: Vec::new(),
            lower_is_better,
            decimals,
        }
    }
}

/// Builds the rows of a comparison table from one outcome per target.
pub struct Rows<'a, O> {
    outcomes: &'a [O],
    rows: Vec<Row>,
}

impl<'a, O> Rows<'a, O> {
    pub fn new(outcomes: &'a [O]) -> Self {
        Self {
            outcomes,
            rows: Vec::new(),
        }
    }

    /// A row named `name`, `decimals` digits, with `f`'s value for each outcome (`None`: no value).
    pub fn add(
        &mut self,
        name: &str,
        lower_is_better: bool,
        decimals: usize,
        f: impl Fn(&O) -> Option<f64>,
    ) -> &mut Self {
        let mut r = Row::new(name, lower_is_better, decimals);
        r.values = self.outcomes.iter().map(f).collect();
        self.rows.push(r);
        self
    }

    pub fn done(self) -> Vec<Row> {
        self.rows
    }
}

/// How many times better the first target is than `other` on this row (>1: the first is better).
pub fn advantage(first: f64, other: f64, lower_is_better: bool) -> Option<f64> {
    if first <= 0.0 || other <= 0.0 || !first.is_finite() || !other.is_finite() {
        return None;
    }
    Some(if lower_is_better {
        other / first
    } else {
        first / other
    })
}

/// A Markdown table: one column per target, then Tandem's advantage over each other target
/// (`×` = how many times better Tandem is on that row; below 1 means worse).
pub fn table(targets: &[String], rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = write!(s, "| metric |");
    for t in targets {
        let _ = write!(s, " {t} |");
    }
    for t in targets.iter().skip(1) {
        let _ = write!(s, " {} vs {t} |", targets[0]);
    }
    s.push('\n');
    s.push_str("|---|");
    for _ in 0..targets.len() * 2 - 1 {
        s.push_str("---:|");
    }
    s.push('\n');
    for r in rows {
        let _ = write!(s, "| {} |", r.name);
        for v in &r.values {
            match v {
                Some(v) => {
                    let _ = write!(s, " {:.*} |", r.decimals, v);
                }
                None => s.push_str(" – |"),
            }
        }
        for v in r.values.iter().skip(1) {
            match (r.values[0], v) {
                (Some(a), Some(b)) => match advantage(a, *b, r.lower_is_better) {
                    Some(x) => {
                        let _ = write!(s, " {x:.1}× |");
                    }
                    None => s.push_str(" – |"),
                },
                _ => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

/// The top of every report: title, machine and the command that produced it.
pub fn header(title: &str, command: &str) -> String {
    format!(
        "# {title}\n\nMachine: {}.\n\nCommand: `{command}`\n\n",
        Machine::read().line()
    )
}

/// This run's command line, as `bench …` whatever the binary's path.
pub fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(a) = args.first_mut() {
        *a = "bench".into();
    }
    args.join(" ")
}

/// A list of how each target persists, so that a comparison never hides what a server skips.
pub fn persistence_notes(targets: &[Kind], opts: &TargetOpts) -> String {
    let mut s = String::from("How each target persists:\n\n");
    for k in targets {
        let _ = writeln!(s, "- **{}**: {}", k.name(), k.persistence(opts));
    }
    s.push('\n');
    s
}

/// Writes report.json / report.md / chart.svg into `dir` and prints the Markdown.
pub fn write(
    dir: &Path,
    json: &serde_json::Value,
    md: &str,
    svg: Option<&str>,
) -> anyhow::Result<()> {
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(json)?)?;
    std::fs::write(dir.join("report.md"), md)?;
    if let Some(svg) = svg {
        std::fs::write(dir.join("chart.svg"), svg)?;
    }
    println!("{md}");
    println!("reports: {}", dir.display());
    Ok(())
}

/// One line on a chart: a target's latency percentile at each offered load.
pub struct Series {
    pub name: String,
    /// (offered load, latency ms)
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// An SVG line chart, log-log axes (latency spans orders of magnitude).
pub fn svg_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, ml, mr, mt, mb) = (760.0, 460.0, 70.0, 200.0, 40.0, 50.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.0 > 0.0 && p.1 > 0.0)
        .collect();
    let lg = |v: f64| v.max(1e-6).log10();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        x0 = x0.min(lg(x));
        x1 = x1.max(lg(x));
        y0 = y0.min(lg(y));
        y1 = y1.max(lg(y));
    }
    if pts.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let (x0, x1) = (x0.floor(), x1.ceil().max(x0.floor() + 1.0));
    let (y0, y1) = (y0.floor(), y1.ceil().max(y0.floor() + 1.0));
    let px = |x: f64| ml + (lg(x) - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| h - mb - (lg(y) - y0) / (y1 - y0) * (h - mt - mb);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
"#,
        (w - mr + ml) / 2.0,
        esc(title)
    );
    // Decade grid lines.
    let mut e = x0;
    while e <= x1 {
        let x = ml + (e - x0) / (x1 - x0) * (w - ml - mr);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{mt}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            h - mb,
            h - mb + 16.0,
            fmt_num(10f64.powf(e))
        );
        e += 1.0;
    }
    let mut e = y0;
    while e <= y1 {
        let y = h - mb - (e - y0) / (y1 - y0) * (h - mt - mb);
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - mr,
            ml - 6.0,
            y + 4.0,
            fmt_num(10f64.powf(e))
        );
        e += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        (w - mr + ml) / 2.0,
        h - 12.0,
        esc(x_label),
        (h - mb + mt) / 2.0,
        (h - mb + mt) / 2.0,
        esc(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let c = COLORS[(i / 2) % COLORS.len()];
        let dash = if ser.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let path: Vec<String> = ser
            .points
            .iter()
            .filter(|p| p.0 > 0.0 && p.1 > 0.0)
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{}"/>"#,
                path.join(" ")
            );
            for p in &path {
                let (x, y) = p.split_once(',').expect("x,y");
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{c}"/>"#);
            }
        }
        let ly = mt + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            w - mr + 10.0,
            w - mr + 34.0,
            w - mr + 40.0,
            ly + 4.0,
            esc(&ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A results folder: `OUT/YYYYMMDD-HHMMSS-SCENARIO/`.
pub fn results_dir(out: &Path, scenario: &str) -> anyhow::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (y, mo, d, h, mi, s) = civil(secs);
    let dir = out.join(format!(
        "{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{scenario}"
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// UTC calendar time from Unix seconds (Howard Hinnant's days-from-civil inverse).
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantage_points_the_right_way() {
        // Latency: 5 ms vs 20 ms is 4× better.
        assert_eq!(advantage(5.0, 20.0, true), Some(4.0));
        // Throughput: 1000/s vs 250/s is 4× better.
        assert_eq!(advantage(1000.0, 250.0, false), Some(4.0));
        assert_eq!(advantage(0.0, 1.0, true), None);
    }

    #[test]
    fn table_has_values_and_ratios() {
        let mut r = Row::new("edit p99 ms", true, 1);
        r.values = vec![Some(2.0), Some(10.0), None];
        let t = table(&["tandem".into(), "a".into(), "b".into()], &[r]);
        assert!(
            t.contains("| tandem | a | b | tandem vs a | tandem vs b |"),
            "{t}"
        );
        assert!(
            t.contains("| edit p99 ms | 2.0 | 10.0 | – | 5.0× | – |"),
            "{t}"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_795_789_845), (2026, 11, 27, 14, 30, 45));
    }

    #[test]
    fn chart_is_svg_with_every_series() {
        let s = svg_chart(
            "t",
            "x",
            "y",
            &[
                Series {
                    name: "tandem p99".into(),
                    points: vec![(100.0, 2.0), (1000.0, 5.0)],
                    dashed: false,
                },
                Series {
                    name: "peer <p99>".into(),
                    points: vec![(100.0, 20.0)],
                    dashed: true,
                },
            ],
        );
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(s.contains("tandem p99") && s.contains("peer &lt;p99&gt;"));
        assert_eq!(s.matches("<polyline").count(), 2);
    }
}
