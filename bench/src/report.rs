//! Measurements, result rows, the stdout table and the JSON file.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Latencies of individual operations plus the wall time they took together.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    latencies: Vec<Duration>,
    /// Operations completed.
    pub(crate) ops: u64,
    /// Wall time of the measured phases (summed over rounds).
    pub(crate) wall: Duration,
}

impl Samples {
    pub(crate) fn record(&mut self, latency: Duration) {
        self.latencies.push(latency);
        self.ops += 1;
    }

    pub(crate) fn extend(&mut self, latencies: Vec<Duration>) {
        self.ops += latencies.len() as u64;
        self.latencies.extend(latencies);
    }

    /// Operations per second over the measured wall time.
    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Mean latency in milliseconds.
    pub(crate) fn mean_ms(&self) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies
            .iter()
            .map(Duration::as_secs_f64)
            .sum::<f64>()
            * 1e3
            / self.latencies.len() as f64
    }

    /// The recorded latencies (for merging several writers' samples).
    pub(crate) fn into_latencies(self) -> Vec<Duration> {
        self.latencies
    }

    /// The `p`-th percentile in milliseconds.
    pub(crate) fn pct_ms(&mut self, p: f64) -> f64 {
        self.latencies.sort_unstable();
        self.pct(p)
    }

    /// (p50, p99) in milliseconds.
    pub(crate) fn percentiles_ms(&mut self) -> (f64, f64) {
        self.latencies.sort_unstable();
        (self.pct(50.0), self.pct(99.0))
    }

    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let idx = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[idx].as_secs_f64() * 1e3
    }
}

/// How a row's ratio is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RatioKind {
    /// ours / baseline of a rate: higher is better, the target is a minimum.
    Speed,
    /// ours / baseline of a time: lower is better, the target is a maximum.
    Time,
    /// No ratio (information only, or not measured).
    None,
}

/// One line of the results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) unit: String,
    pub(crate) ours: Option<f64>,
    pub(crate) baseline: Option<f64>,
    pub(crate) ratio_kind: RatioKind,
    pub(crate) ratio: Option<f64>,
    pub(crate) target: Option<f64>,
    pub(crate) holds: Option<bool>,
    pub(crate) ours_p50_ms: Option<f64>,
    pub(crate) ours_p99_ms: Option<f64>,
    pub(crate) baseline_p50_ms: Option<f64>,
    pub(crate) baseline_p99_ms: Option<f64>,
    pub(crate) note: String,
}

impl Row {
    fn empty(scenario: &str, unit: &str) -> Row {
        Row {
            scenario: scenario.to_owned(),
            unit: unit.to_owned(),
            ours: None,
            baseline: None,
            ratio_kind: RatioKind::None,
            ratio: None,
            target: None,
            holds: None,
            ours_p50_ms: None,
            ours_p99_ms: None,
            baseline_p50_ms: None,
            baseline_p99_ms: None,
            note: String::new(),
        }
    }

    /// A throughput row: ratio = ours / baseline rate, holds when ratio >= `target`.
    pub(crate) fn speed(
        scenario: &str,
        unit: &str,
        ours: &mut Samples,
        baseline: &mut Samples,
        target: f64,
    ) -> Row {
        let (o50, o99) = ours.percentiles_ms();
        let (b50, b99) = baseline.percentiles_ms();
        let ratio = ours.rate() / baseline.rate();
        Row {
            ours: Some(ours.rate()),
            baseline: Some(baseline.rate()),
            ratio_kind: RatioKind::Speed,
            ratio: Some(ratio),
            target: Some(target),
            holds: Some(ratio >= target),
            ours_p50_ms: Some(o50),
            ours_p99_ms: Some(o99),
            baseline_p50_ms: Some(b50),
            baseline_p99_ms: Some(b99),
            ..Row::empty(scenario, unit)
        }
    }

    /// A time row: ratio = ours / baseline mean time, holds when ratio <= `target`.
    pub(crate) fn time(
        scenario: &str,
        ours: &mut Samples,
        baseline_ms: f64,
        target: f64,
        note: String,
    ) -> Row {
        let (o50, o99) = ours.percentiles_ms();
        let ratio = ours.mean_ms() / baseline_ms;
        Row {
            ours: Some(ours.mean_ms()),
            baseline: Some(baseline_ms),
            ratio_kind: RatioKind::Time,
            ratio: Some(ratio),
            target: Some(target),
            holds: Some(ratio <= target),
            ours_p50_ms: Some(o50),
            ours_p99_ms: Some(o99),
            note,
            ..Row::empty(scenario, "ms per load (mean)")
        }
    }

    /// A figure held to an absolute limit (`max`; NaN: information only), with its p50/p99 and
    /// a reference's, when there is one.
    pub(crate) fn limit(
        scenario: &str,
        unit: &str,
        ours: f64,
        max: f64,
        (p50, p99): (f64, f64),
        reference: Option<(f64, f64)>,
        note: &str,
    ) -> Row {
        let held = !max.is_nan();
        Row {
            ours: Some(ours),
            target: held.then_some(max),
            holds: held.then_some(ours < max),
            ours_p50_ms: Some(p50),
            ours_p99_ms: Some(p99),
            baseline_p50_ms: reference.map(|r| r.0),
            baseline_p99_ms: reference.map(|r| r.1),
            note: note.to_owned(),
            ..Row::empty(scenario, unit)
        }
    }

    /// Information only (no target).
    pub(crate) fn info(scenario: &str, unit: &str, ours: f64, note: &str) -> Row {
        Row {
            ours: Some(ours),
            note: note.to_owned(),
            ..Row::empty(scenario, unit)
        }
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v.is_nan() => "-".to_owned(),
        Some(v) if v >= 1000.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn pair(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (None, None) => "-".to_owned(),
        _ => format!("{}/{}", num(a), num(b)),
    }
}

impl Row {
    fn cells(&self) -> Vec<String> {
        let ratio = match (self.ratio_kind, self.ratio) {
            (RatioKind::Speed, Some(r)) => format!("{r:.2}x speed"),
            (RatioKind::Time, Some(r)) => format!("{r:.2}x time"),
            _ => "-".to_owned(),
        };
        let target = match (self.ratio_kind, self.target) {
            (RatioKind::Speed, Some(t)) => format!(">= {t}x"),
            (RatioKind::Time, Some(t)) => format!("<= {t}x"),
            (RatioKind::None, Some(t)) => format!("< {t}"),
            _ => "-".to_owned(),
        };
        let holds = match self.holds {
            Some(true) => "yes".to_owned(),
            Some(false) => "NO".to_owned(),
            None => "-".to_owned(),
        };
        vec![
            self.scenario.clone(),
            self.unit.clone(),
            num(self.ours),
            num(self.baseline),
            ratio,
            target,
            holds,
            pair(self.ours_p50_ms, self.ours_p99_ms),
            pair(self.baseline_p50_ms, self.baseline_p99_ms),
            self.note.clone(),
        ]
    }
}

/// The results as a Markdown table (readable on a terminal, pasteable into BENCHMARKS.md).
pub(crate) fn table(rows: &[Row]) -> String {
    let header: Vec<String> = [
        "scenario",
        "unit",
        "ours",
        "baseline",
        "ratio (ours/baseline)",
        "target",
        "holds?",
        "ours p50/p99 ms",
        "baseline p50/p99 ms",
        "note",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let body: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in &body {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(s, " {c:<w$} |");
        }
        s.push('\n');
        s
    };
    let mut out = line(&header);
    out.push('|');
    for w in &widths {
        out.push_str(&"-".repeat(w + 2));
        out.push('|');
    }
    out.push('\n');
    for r in &body {
        out.push_str(&line(r));
    }
    out
}
