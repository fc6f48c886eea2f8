//! Turning what was measured into numbers: per stage, per second, and
//! against the performance budget (bench/BUDGET.md).

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{Args, Mode, dbtop::DbProfile, follow::Outcomes};

/// One POST.
#[derive(Clone, Debug)]
pub struct OrderRecord {
    pub stage: usize,
    /// `None` unless the answer was 202.
    pub order_id: Option<String>,
    /// When it was due, since the epoch.
    pub sent_at: Duration,
    pub post_latency: Duration,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(samples: impl Iterator<Item = Duration>) -> Self {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
        for sample in samples {
            histogram.saturating_record(sample.as_micros().max(1) as u64);
        }
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    pub index: usize,
    pub mode: Mode,
    /// Orders per second (open) or clients (closed).
    pub load: u32,
    pub seconds: u64,
    pub ramp: bool,
    pub sent: usize,
    pub accepted: usize,
    pub errors: usize,
    pub finished: usize,
    pub unfinished: usize,
    pub accepted_per_second: f64,
    /// Finished orders over the time from the stage's start to its last
    /// outcome: a backlog that drains late lowers it.
    pub finished_per_second: f64,
    pub post: Percentiles,
    pub end_to_end: Percentiles,
    /// CPU seconds per watched process during the stage (and its drain).
    pub cpu_seconds: BTreeMap<String, f64>,
    pub cpu_ms_per_order: BTreeMap<String, f64>,
    /// The database's counters over the stage, with `--db-prefix`.
    pub db: Option<DbProfile>,
}

impl StageReport {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        index: usize,
        mode: Mode,
        load: u32,
        seconds: u64,
        ramp: bool,
        started: Duration,
        load_ended: Duration,
        records: &[OrderRecord],
        outcomes: &Outcomes,
        cpu_seconds: BTreeMap<String, f64>,
    ) -> Self {
        let accepted: Vec<&OrderRecord> = records.iter().filter(|r| r.order_id.is_some()).collect();
        let finished: Vec<(Duration, Duration)> = accepted
            .iter()
            .filter_map(|r| {
                let at = outcomes.get(r.order_id.as_deref()?)?;
                Some((r.sent_at, *at))
            })
            .collect();
        let last_outcome = finished
            .iter()
            .map(|(_, at)| *at)
            .max()
            .unwrap_or(load_ended);
        let window = (last_outcome.max(load_ended) - started)
            .as_secs_f64()
            .max(0.001);
        let e2e = Percentiles::of(finished.iter().map(|(sent, at)| at.saturating_sub(*sent)));
        let orders = finished.len().max(1) as f64;
        StageReport {
            index,
            mode,
            load,
            seconds,
            ramp,
            sent: records.len(),
            accepted: accepted.len(),
            errors: records.len() - accepted.len(),
            finished: finished.len(),
            unfinished: accepted.len() - finished.len(),
            accepted_per_second: accepted.len() as f64
                / (load_ended - started).as_secs_f64().max(0.001),
            finished_per_second: finished.len() as f64 / window,
            post: Percentiles::of(records.iter().map(|r| r.post_latency)),
            end_to_end: e2e,
            cpu_ms_per_order: cpu_seconds
                .iter()
                .map(|(name, s)| (name.clone(), s * 1000.0 / orders))
                .collect(),
            cpu_seconds,
            db: None,
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "stage {} ({} {} for {} s{}): accepted {:.0}/s, finished {:.0}/s, errors {}, unfinished {}, \
             POST p50/p99 {:.1}/{:.1} ms, end-to-end p50/p99 {:.1}/{:.1} ms",
            self.index,
            match self.mode {
                Mode::Open => "open loop at",
                Mode::Closed => "closed loop with",
            },
            self.load,
            self.seconds,
            if self.ramp { ", ramp" } else { "" },
            self.accepted_per_second,
            self.finished_per_second,
            self.errors,
            self.unfinished,
            self.post.p50_ms,
            self.post.p99_ms,
            self.end_to_end.p50_ms,
            self.end_to_end.p99_ms,
        )
    }
}

/// One second of the run, for the plot.
#[derive(Clone, Debug, Serialize)]
pub struct SecondPoint {
    pub second: u64,
    pub accepted: u64,
    pub finished: u64,
    pub post_p99_ms: f64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BudgetLine {
    pub line: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub mode: Mode,
    pub stages: Vec<StageReport>,
    /// Highest ramp rate whose end-to-end p99 stayed under the target.
    pub highest_sustained_rate: Option<u32>,
    pub p99_target_ms: f64,
    pub notifications_sent: u64,
    /// Seconds from the end of the load until the last email went; `None`
    /// if they did not all go within the drain time.
    pub notifications_drained_after_s: Option<f64>,
    pub resident_mb: BTreeMap<String, f64>,
    pub budget: Vec<BudgetLine>,
    pub series: Vec<SecondPoint>,
}

impl Report {
    pub fn build(
        args: &Args,
        stages: Vec<StageReport>,
        drain: Option<Duration>,
        notifications_sent: u64,
        resident_mb: BTreeMap<String, f64>,
        records: &[OrderRecord],
        outcomes: &Outcomes,
    ) -> Self {
        let highest_sustained_rate = stages
            .iter()
            .filter(|s| {
                s.ramp
                    && s.unfinished == 0
                    && s.errors == 0
                    && s.end_to_end.p99_ms <= args.p99_target_ms
            })
            .map(|s| s.load)
            .max();
        let mut report = Report {
            generated_at: chrono::Utc::now().to_rfc3339(),
            mode: args.mode,
            highest_sustained_rate,
            p99_target_ms: args.p99_target_ms,
            notifications_sent,
            notifications_drained_after_s: drain.map(|d| d.as_secs_f64()),
            resident_mb,
            budget: Vec::new(),
            series: series(records, outcomes),
            stages,
        };
        report.budget = report.judge();
        report
    }

    /// No errors and every accepted order finished.
    pub fn clean(&self) -> bool {
        self.stages
            .iter()
            .filter(|s| !s.ramp)
            .all(|s| s.errors == 0 && s.unfinished == 0)
    }

    /// The budget lines of bench/BUDGET.md, for the stages that were run.
    fn judge(&self) -> Vec<BudgetLine> {
        let fixed = |rate: u32| {
            self.stages
                .iter()
                .find(|s| !s.ramp && s.mode == Mode::Open && s.load == rate)
        };
        let mut lines = Vec::new();
        if let Some(s) = fixed(1700) {
            lines.push(BudgetLine {
                line: format!(
                    "1,700 orders/s end to end for {} s, no errors, none lost",
                    s.seconds
                ),
                measured: format!(
                    "{:.0} accepted/s, {:.0} finished/s, {} errors, {} unfinished",
                    s.accepted_per_second, s.finished_per_second, s.errors, s.unfinished
                ),
                met: s.errors == 0 && s.unfinished == 0 && s.finished_per_second >= 1700.0 * 0.98,
            });
        }
        if let Some(s) = fixed(1000) {
            lines.push(BudgetLine {
                line: "at 1,000/s: POST p99 ≤ 10 ms".into(),
                measured: format!("{:.1} ms", s.post.p99_ms),
                met: s.post.p99_ms <= 10.0,
            });
            lines.push(BudgetLine {
                line: "at 1,000/s: end-to-end p99 ≤ 50 ms".into(),
                measured: format!("{:.1} ms", s.end_to_end.p99_ms),
                met: s.end_to_end.p99_ms <= 50.0,
            });
        }
        for (name, mb) in &self.resident_mb {
            if name.ends_with("service") {
                lines.push(BudgetLine {
                    line: format!("{name} under 100 MB resident after the run"),
                    measured: format!("{mb:.0} MB"),
                    met: *mb < 100.0,
                });
            }
        }
        lines.push(BudgetLine {
            line: "notifications drain within 60 s after the load".into(),
            measured: match self.notifications_drained_after_s {
                Some(s) => format!("{s:.1} s ({} emails)", self.notifications_sent),
                None => format!("not drained ({} emails sent)", self.notifications_sent),
            },
            met: self
                .notifications_drained_after_s
                .is_some_and(|s| s <= 60.0),
        });
        lines
    }

    pub fn print(&self) {
        println!();
        for line in &self.budget {
            println!(
                "  [{}] {}: {}",
                if line.met { "met" } else { "MISSED" },
                line.line,
                line.measured
            );
        }
        if let Some(rate) = self.highest_sustained_rate {
            println!(
                "  ramp: highest rate with end-to-end p99 under {} ms: {rate}/s",
                self.p99_target_ms
            );
        }
    }

    /// The stage whose costs stand for one order: the fastest ramp step
    /// that kept up (nothing queued, so every cost belongs to its own
    /// orders), else the first stage that measured any.
    fn profile_stage(&self) -> Option<&StageReport> {
        let measured = |s: &&StageReport| !s.cpu_ms_per_order.is_empty() || s.db.is_some();
        self.stages
            .iter()
            .filter(|s| s.ramp && Some(s.load) == self.highest_sustained_rate)
            .find(measured)
            .or_else(|| self.stages.iter().find(measured))
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmark summary ({})\n", self.generated_at);
        let _ = writeln!(md, "| budget line | measured | |\n|---|---|---|");
        for line in &self.budget {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                line.line,
                line.measured,
                if line.met { "met" } else { "**missed**" }
            );
        }
        let _ = writeln!(
            md,
            "\n| stage | load | s | accepted/s | finished/s | errors | unfinished | POST p50 / p90 / p99 / max ms | end-to-end p50 / p90 / p99 / max ms |\n|---|---|---|---|---|---|---|---|---|"
        );
        for s in &self.stages {
            let _ = writeln!(
                md,
                "| {}{} | {} {} | {} | {:.0} | {:.0} | {} | {} | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} / {:.1} |",
                s.index,
                if s.ramp { " (ramp)" } else { "" },
                s.load,
                if s.mode == Mode::Open {
                    "/s"
                } else {
                    "clients"
                },
                s.seconds,
                s.accepted_per_second,
                s.finished_per_second,
                s.errors,
                s.unfinished,
                s.post.p50_ms,
                s.post.p90_ms,
                s.post.p99_ms,
                s.post.max_ms,
                s.end_to_end.p50_ms,
                s.end_to_end.p90_ms,
                s.end_to_end.p99_ms,
                s.end_to_end.max_ms,
            );
        }
        match (
            self.highest_sustained_rate,
            self.stages.iter().find(|s| s.ramp),
        ) {
            (Some(rate), _) => {
                let _ = writeln!(
                    md,
                    "\nRamp: the highest rate with end-to-end p99 under {} ms was **{rate} orders/s**.",
                    self.p99_target_ms
                );
            }
            (None, Some(first)) => {
                let _ = writeln!(
                    md,
                    "\nRamp: no step kept end-to-end p99 under {} ms; the first, at {}/s, measured {:.1} ms.",
                    self.p99_target_ms, first.load, first.end_to_end.p99_ms
                );
            }
            (None, None) => {}
        }
        if let Some(s) = self.profile_stage() {
            let _ = writeln!(
                md,
                "\n## Where an order's time goes (stage {}: {} {})\n\nCPU time per finished order, by process:\n\n| process | CPU s | ms/order |\n|---|---|---|",
                s.index,
                s.load,
                if s.mode == Mode::Open {
                    "orders/s"
                } else {
                    "clients"
                }
            );
            let total: f64 = s.cpu_ms_per_order.values().sum();
            for (name, ms) in &s.cpu_ms_per_order {
                let _ = writeln!(md, "| {name} | {:.1} | {ms:.2} |", s.cpu_seconds[name]);
            }
            let _ = writeln!(md, "| all | | {total:.2} |");
            if let Some(db) = &s.db {
                let _ = writeln!(
                    md,
                    "\nDatabase operations per finished order (the server's `top` counters): \
                     {:.1} operations, {:.2} transaction commits, {:.3} aborts, \
                     {:.1} documents written.\n\n\
                     | collection | operation | per order | server µs/op | share of server time |\n|---|---|---|---|---|",
                    db.operations_per_order,
                    db.commits_per_order,
                    db.aborts_per_order,
                    db.documents_written_per_order
                );
                for row in &db.rows {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {:.2} | {:.0} | {:.1}% |",
                        row.collection,
                        row.operation,
                        row.per_order,
                        row.server_us_per_op,
                        row.share * 100.0
                    );
                }
            }
        }
        if !self.resident_mb.is_empty() {
            let _ = writeln!(
                md,
                "\nResident memory after the run: {}",
                self.resident_mb
                    .iter()
                    .map(|(n, mb)| format!("{n} {mb:.0} MB"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        md
    }
}

/// Accepted and finished orders per second, and latency percentiles of the
/// orders sent in each second.
fn series(records: &[OrderRecord], outcomes: &Outcomes) -> Vec<SecondPoint> {
    let last = records
        .iter()
        .map(|r| r.sent_at.as_secs())
        .max()
        .unwrap_or(0);
    let mut points: Vec<SecondPoint> = (0..=last)
        .map(|second| SecondPoint {
            second,
            accepted: 0,
            finished: 0,
            post_p99_ms: 0.0,
            e2e_p50_ms: 0.0,
            e2e_p99_ms: 0.0,
        })
        .collect();
    let mut post: Vec<Vec<Duration>> = vec![Vec::new(); points.len()];
    let mut e2e: Vec<Vec<Duration>> = vec![Vec::new(); points.len()];
    for r in records {
        let second = r.sent_at.as_secs() as usize;
        post[second].push(r.post_latency);
        let Some(id) = &r.order_id else { continue };
        points[second].accepted += 1;
        if let Some(at) = outcomes.get(id) {
            e2e[second].push(at.saturating_sub(r.sent_at));
            if let Some(point) = points.get_mut(at.as_secs() as usize) {
                point.finished += 1;
            }
        }
    }
    for (i, point) in points.iter_mut().enumerate() {
        let p = Percentiles::of(post[i].iter().copied());
        let e = Percentiles::of(e2e[i].iter().copied());
        point.post_p99_ms = p.p99_ms;
        point.e2e_p50_ms = e.p50_ms;
        point.e2e_p99_ms = e.p99_ms;
    }
    points
}
