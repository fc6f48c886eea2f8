//! Turning what was measured into numbers: per stage, per second, and
//! against the performance budget (bench/BUDGET.md).

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    Args, Mode,
    dbtop::DbProfile,
    follow::Outcomes,
    procs::{MachineUsage, Usage},
};

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
    /// Which run of this load it was (0 for the first), with `--repeats`.
    pub repeat: u32,
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
    /// What each watched process used during the stage (and its drain).
    pub usage: BTreeMap<String, Usage>,
    pub cpu_ms_per_order: BTreeMap<String, f64>,
    /// Voluntary plus involuntary context switches per finished order.
    pub switches_per_order: BTreeMap<String, f64>,
    /// The database's counters over the stage, with `--db-prefix`.
    pub db: Option<DbProfile>,
    /// The whole machine over the stage (and its drain).
    pub machine: Option<MachineUsage>,
}

impl StageReport {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        index: usize,
        mode: Mode,
        load: u32,
        seconds: u64,
        ramp: bool,
        repeat: u32,
        started: Duration,
        load_ended: Duration,
        records: &[OrderRecord],
        outcomes: &Outcomes,
        usage: BTreeMap<String, Usage>,
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
            repeat,
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
            cpu_ms_per_order: usage
                .iter()
                .map(|(name, u)| (name.clone(), u.cpu_seconds * 1000.0 / orders))
                .collect(),
            switches_per_order: usage
                .iter()
                .map(|(name, u)| {
                    let switches = u.voluntary_switches + u.involuntary_switches;
                    (name.clone(), switches as f64 / orders)
                })
                .collect(),
            usage,
            db: None,
            machine: None,
        }
    }

    /// CPU milliseconds per finished order, all watched processes.
    pub fn cpu_ms_per_order_total(&self) -> f64 {
        self.cpu_ms_per_order.values().sum()
    }

    /// Context switches per finished order, all watched processes.
    pub fn switches_per_order_total(&self) -> f64 {
        self.switches_per_order.values().sum()
    }

    /// Past capacity: refusals, or orders finishing slower than they came.
    fn saturated(&self) -> bool {
        self.errors > 0 || self.finished_per_second < f64::from(self.load) * 0.98
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
            match (self.ramp, self.repeat) {
                (true, 0) => ", ramp".to_string(),
                (true, n) => format!(", ramp, run {}", n + 1),
                (false, 0) => String::new(),
                (false, n) => format!(", run {}", n + 1),
            },
            self.accepted_per_second,
            self.finished_per_second,
            self.errors,
            self.unfinished,
            self.post.p50_ms,
            self.post.p99_ms,
            self.end_to_end.p50_ms,
            self.end_to_end.p99_ms,
        ) + &if self.usage.is_empty() {
            String::new()
        } else {
            format!(
                ", CPU {:.2} ms/order, {:.0} switches/order",
                self.cpu_ms_per_order_total(),
                self.switches_per_order_total()
            )
        } + &self.machine.map_or(String::new(), |m| {
            format!(
                "; machine {:.2} cores busy ({:.2} outside the stack, {:.2} stolen)",
                m.busy_cores, m.outside_cores, m.stolen_cores
            )
        })
    }
}

/// The middle value of a measurement repeated, and how far the runs spread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values. With an even count the median is the mean of
    /// the middle two.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut values: Vec<f64> = values.into_iter().collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }

    /// `median (min–max)`, or the median alone when the runs agree or
    /// there was one.
    fn show(&self, decimals: usize) -> String {
        if self.min == self.max {
            format!("{:.decimals$}", self.median)
        } else {
            format!(
                "{:.decimals$} ({:.decimals$}–{:.decimals$})",
                self.median, self.min, self.max
            )
        }
    }
}

/// Every run of one load (a ramp step or a fixed stage), as medians.
#[derive(Clone, Debug, Serialize)]
pub struct StageSummary {
    pub load: u32,
    pub ramp: bool,
    /// The indices of its runs in `Report::stages`.
    pub runs: Vec<usize>,
    pub errors: usize,
    pub unfinished: usize,
    pub finished_per_second: Spread,
    pub post_p99_ms: Spread,
    pub end_to_end_p99_ms: Spread,
    /// All watched processes; `None` when none was watched.
    pub cpu_ms_per_order: Option<Spread>,
    pub switches_per_order: Option<Spread>,
}

impl StageSummary {
    /// One summary per load, in the order the loads were first run.
    pub fn group(stages: &[StageReport]) -> Vec<Self> {
        let mut keys: Vec<(bool, u32)> = Vec::new();
        for s in stages {
            if !keys.contains(&(s.ramp, s.load)) {
                keys.push((s.ramp, s.load));
            }
        }
        keys.into_iter()
            .map(|(ramp, load)| {
                let runs: Vec<&StageReport> = stages
                    .iter()
                    .filter(|s| s.ramp == ramp && s.load == load)
                    .collect();
                let spread = |f: fn(&StageReport) -> f64| {
                    Spread::of(runs.iter().map(|s| f(s))).expect("a group has a run")
                };
                let watched: Vec<&&StageReport> =
                    runs.iter().filter(|s| !s.usage.is_empty()).collect();
                StageSummary {
                    load,
                    ramp,
                    runs: runs.iter().map(|s| s.index).collect(),
                    errors: runs.iter().map(|s| s.errors).sum(),
                    unfinished: runs.iter().map(|s| s.unfinished).sum(),
                    finished_per_second: spread(|s| s.finished_per_second),
                    post_p99_ms: spread(|s| s.post.p99_ms),
                    end_to_end_p99_ms: spread(|s| s.end_to_end.p99_ms),
                    cpu_ms_per_order: Spread::of(
                        watched.iter().map(|s| s.cpu_ms_per_order_total()),
                    ),
                    switches_per_order: Spread::of(
                        watched.iter().map(|s| s.switches_per_order_total()),
                    ),
                }
            })
            .collect()
    }

    /// Whether this load kept up within `p99_target_ms` in the middle run,
    /// with nothing refused or lost in any.
    pub fn kept_up(&self, p99_target_ms: f64) -> bool {
        self.errors == 0 && self.unfinished == 0 && self.end_to_end_p99_ms.median <= p99_target_ms
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
    /// The stages' runs per load, as medians and spread.
    pub summary: Vec<StageSummary>,
    /// Highest ramp rate whose end-to-end p99 (median of its runs) stayed
    /// under the target.
    pub highest_sustained_rate: Option<u32>,
    pub p99_target_ms: f64,
    pub notifications_sent: u64,
    /// Seconds from the end of the load until the last email went; `None`
    /// if they did not all go within the drain time.
    pub notifications_drained_after_s: Option<f64>,
    pub resident_mb: BTreeMap<String, f64>,
    pub headline: Headline,
    pub budget: Vec<BudgetLine>,
    pub series: Vec<SecondPoint>,
}

/// The figures that compare runs (bench.sh's scaling table reads them):
/// what the stack finishes flat out, and what an order costs there and at
/// an ordinary rate. Each `None` when its stage did not run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Headline {
    pub saturated_finished_per_second: Option<Spread>,
    pub saturated_cpu_ms_per_order: Option<Spread>,
    /// At [`ORDINARY_RATE`].
    pub ordinary_cpu_ms_per_order: Option<Spread>,
    pub ordinary_switches_per_order: Option<Spread>,
}

/// The paced rate whose CPU per order is held against the saturated cost.
const ORDINARY_RATE: u32 = 50;

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
        let summary = StageSummary::group(&stages);
        let highest_sustained_rate = summary
            .iter()
            .filter(|s| s.ramp && s.kept_up(args.p99_target_ms))
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
            headline: Headline::default(),
            budget: Vec::new(),
            series: series(records, outcomes),
            summary,
            stages,
        };
        let ordinary = report.summary.iter().find(|g| g.load == ORDINARY_RATE);
        let saturated = report.saturated();
        report.headline = Headline {
            saturated_finished_per_second: saturated.map(|g| g.finished_per_second),
            saturated_cpu_ms_per_order: saturated.and_then(|g| g.cpu_ms_per_order),
            ordinary_cpu_ms_per_order: ordinary.and_then(|g| g.cpu_ms_per_order),
            ordinary_switches_per_order: ordinary.and_then(|g| g.switches_per_order),
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

    /// The last fixed open-loop load past capacity in every run: what the
    /// stack finishes flat out, and its CPU per order there.
    pub fn saturated(&self) -> Option<&StageSummary> {
        self.summary.iter().rfind(|g| {
            !g.ramp && self.mode == Mode::Open && g.runs.iter().all(|&i| self.stages[i].saturated())
        })
    }

    /// The budget lines of bench/BUDGET.md, for the stages that were run,
    /// each judged on the median of its runs.
    fn judge(&self) -> Vec<BudgetLine> {
        let fixed = |rate: u32| {
            self.summary
                .iter()
                .find(|s| !s.ramp && self.mode == Mode::Open && s.load == rate)
        };
        let mut lines = Vec::new();
        if let Some(s) = fixed(1700) {
            let seconds = self.stages[s.runs[0]].seconds;
            lines.push(BudgetLine {
                line: format!("1,700 orders/s end to end for {seconds} s, no errors, none lost"),
                measured: format!(
                    "{} finished/s, {} errors, {} unfinished",
                    s.finished_per_second.show(0),
                    s.errors,
                    s.unfinished
                ),
                met: s.errors == 0
                    && s.unfinished == 0
                    && s.finished_per_second.median >= 1700.0 * 0.98,
            });
        }
        if let Some(s) = fixed(1000) {
            lines.push(BudgetLine {
                line: "at 1,000/s: POST p99 ≤ 10 ms".into(),
                measured: format!("{} ms", s.post_p99_ms.show(1)),
                met: s.post_p99_ms.median <= 10.0,
            });
            lines.push(BudgetLine {
                line: "at 1,000/s: end-to-end p99 ≤ 50 ms".into(),
                measured: format!("{} ms", s.end_to_end_p99_ms.show(1)),
                met: s.end_to_end_p99_ms.median <= 50.0,
            });
        }
        let h = &self.headline;
        if let (Some(at_rate), Some(flat_out)) =
            (h.ordinary_cpu_ms_per_order, h.saturated_cpu_ms_per_order)
        {
            lines.push(BudgetLine {
                line: format!(
                    "CPU per order at {ORDINARY_RATE}/s at most twice the saturated cost"
                ),
                measured: format!(
                    "{} ms at {ORDINARY_RATE}/s, {} ms saturated ({:.1}×)",
                    at_rate.show(2),
                    flat_out.show(2),
                    at_rate.median / flat_out.median
                ),
                met: at_rate.median <= 2.0 * flat_out.median,
            });
        }
        if let Some(saturated) = h.saturated_finished_per_second
            && self.summary.iter().any(|s| s.ramp)
        {
            let half = saturated.median / 2.0;
            let sustained = self.highest_sustained_rate.unwrap_or(0);
            lines.push(BudgetLine {
                line: format!(
                    "end-to-end p99 under {} ms up to half the saturated rate",
                    self.p99_target_ms
                ),
                measured: format!(
                    "up to {sustained}/s; saturated {}/s, half {half:.0}/s",
                    saturated.show(0)
                ),
                met: f64::from(sustained) >= half,
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

    /// The run that stands for a load: the one with the median CPU per
    /// order (the lower middle of an even count).
    fn representative(&self, group: &StageSummary) -> &StageReport {
        let mut runs: Vec<&StageReport> = group.runs.iter().map(|&i| &self.stages[i]).collect();
        runs.sort_by(|a, b| {
            a.cpu_ms_per_order_total()
                .total_cmp(&b.cpu_ms_per_order_total())
        });
        runs[(runs.len() - 1) / 2]
    }

    /// The loads whose costs the profile compares: the ordinary rate, the
    /// fastest ramp step that kept up (nothing queued, so every cost
    /// belongs to its own orders) and the saturated stage, those that ran
    /// and were watched; else the first watched load.
    fn profile_loads(&self) -> Vec<&StageSummary> {
        let watched = |g: &&StageSummary| g.cpu_ms_per_order.is_some();
        let mut loads: Vec<&StageSummary> = Vec::new();
        let candidates = [
            self.summary.iter().find(|g| g.load == ORDINARY_RATE),
            self.summary
                .iter()
                .find(|g| g.ramp && Some(g.load) == self.highest_sustained_rate),
            self.saturated(),
        ];
        for group in candidates.into_iter().flatten().filter(watched) {
            if !loads.iter().any(|g| std::ptr::eq(*g, group)) {
                loads.push(group);
            }
        }
        if loads.is_empty() {
            loads.extend(self.summary.iter().find(watched));
        }
        loads
    }

    /// The run whose database counters the summary shows: the fastest ramp
    /// step that kept up, else the first run that has them.
    fn db_stage(&self) -> Option<&StageReport> {
        self.summary
            .iter()
            .find(|g| g.ramp && Some(g.load) == self.highest_sustained_rate)
            .map(|g| self.representative(g))
            .filter(|s| s.db.is_some())
            .or_else(|| self.stages.iter().find(|s| s.db.is_some()))
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
        let unit = if self.mode == Mode::Open {
            "/s"
        } else {
            " clients"
        };
        if self.summary.iter().any(|g| g.runs.len() > 1) {
            let _ = writeln!(
                md,
                "\nEach load's runs: the median, and (min–max) where they differ.\n\n\
                 | load | runs | finished/s | POST p99 ms | end-to-end p99 ms | CPU ms/order | switches/order |\n\
                 |---|---|---|---|---|---|---|"
            );
            for g in &self.summary {
                let _ = writeln!(
                    md,
                    "| {}{unit}{} | {} | {} | {} | {} | {} | {} |",
                    g.load,
                    if g.ramp { " (ramp)" } else { "" },
                    g.runs.len(),
                    g.finished_per_second.show(0),
                    g.post_p99_ms.show(1),
                    g.end_to_end_p99_ms.show(1),
                    g.cpu_ms_per_order.map_or("–".into(), |c| c.show(2)),
                    g.switches_per_order.map_or("–".into(), |c| c.show(0)),
                );
            }
        }
        let _ = writeln!(
            md,
            "\n| stage | load | s | accepted/s | finished/s | errors | unfinished | POST p50 / p90 / p99 / max ms | end-to-end p50 / p90 / p99 / max ms | CPU ms/order | switches/order | machine cores: busy / outside / stolen |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for s in &self.stages {
            let _ = writeln!(
                md,
                "| {}{} | {}{unit} | {} | {:.0} | {:.0} | {} | {} | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} / {:.1} | {} | {} | {} |",
                s.index,
                if s.ramp { " (ramp)" } else { "" },
                s.load,
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
                watched(s, format!("{:.2}", s.cpu_ms_per_order_total())),
                watched(s, format!("{:.0}", s.switches_per_order_total())),
                s.machine.map_or("–".into(), |m| format!(
                    "{:.2} / {:.2} / {:.2}",
                    m.busy_cores, m.outside_cores, m.stolen_cores
                )),
            );
        }
        if self.stages.iter().any(|s| s.machine.is_some()) {
            let _ = writeln!(
                md,
                "\nMachine cores: CPU seconds per second over each stage, for every process \
                 (busy), for all but the stack's (outside: the load generator and anything \
                 else on the machine) and taken by the hypervisor (stolen), from /proc/stat, \
                 whose tick sampling makes a few hundredths of a core noise. A stage whose \
                 outside or stolen share differs from its repeats ran on a busier machine."
            );
        }
        match (
            self.highest_sustained_rate,
            self.summary.iter().find(|g| g.ramp),
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
                    "\nRamp: no step kept end-to-end p99 under {} ms; the first, at {}/s, measured {} ms.",
                    self.p99_target_ms,
                    first.load,
                    first.end_to_end_p99_ms.show(1)
                );
            }
            (None, None) => {}
        }
        let loads = self.profile_loads();
        if !loads.is_empty() {
            let runs: Vec<&StageReport> = loads.iter().map(|g| self.representative(g)).collect();
            let _ = writeln!(
                md,
                "\n## Where an order's CPU goes\n\n\
                 CPU milliseconds and context switches (voluntary + involuntary, every \
                 thread) per finished order, by process, in the run with the median CPU \
                 of each load:\n"
            );
            let header: Vec<String> = runs
                .iter()
                .map(|s| format!("{}{unit} (stage {}) ms / switches", s.load, s.index))
                .collect();
            let _ = writeln!(
                md,
                "| process | {} |\n|---|{}",
                header.join(" | "),
                "---|".repeat(runs.len())
            );
            for name in runs[0].usage.keys() {
                let cells: Vec<String> = runs
                    .iter()
                    .map(
                        |s| match (s.cpu_ms_per_order.get(name), s.switches_per_order.get(name)) {
                            (Some(ms), Some(switches)) => format!("{ms:.2} / {switches:.1}"),
                            _ => "–".into(),
                        },
                    )
                    .collect();
                let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
            }
            let totals: Vec<String> = runs
                .iter()
                .map(|s| {
                    format!(
                        "**{:.2}** / {:.0}",
                        s.cpu_ms_per_order_total(),
                        s.switches_per_order_total()
                    )
                })
                .collect();
            let _ = writeln!(md, "| all | {} |", totals.join(" | "));
        }
        if let Some(s) = self.db_stage()
            && let Some(db) = &s.db
        {
            let _ = writeln!(
                md,
                "\nDatabase operations per finished order at {}{unit} (stage {}, the server's `top` counters): \
                 {:.1} operations, {:.2} transaction commits, {:.3} aborts, \
                 {:.1} documents written.\n\n\
                 | collection | operation | per order | server µs/op | share of server time |\n|---|---|---|---|---|",
                s.load,
                s.index,
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

/// `cell`, or a dash for a run without watched processes.
fn watched(stage: &StageReport, cell: String) -> String {
    if stage.usage.is_empty() {
        "–".into()
    } else {
        cell
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// A run of `load`/s in which every order finished after `e2e_ms`, at
    /// `finished_per_second`, costing `cpu_ms` per order in one process.
    fn run(
        index: usize,
        load: u32,
        ramp: bool,
        finished_per_second: f64,
        e2e_ms: f64,
        cpu_ms: f64,
    ) -> StageReport {
        let orders = 100;
        let usage = Usage {
            cpu_seconds: cpu_ms * orders as f64 / 1000.0,
            voluntary_switches: 30 * orders as u64,
            involuntary_switches: 10 * orders as u64,
        };
        let mut report = StageReport::build(
            index,
            Mode::Open,
            load,
            10,
            ramp,
            0,
            Duration::ZERO,
            Duration::from_secs(10),
            &[],
            &Outcomes::default(),
            BTreeMap::from([("svc".to_string(), usage)]),
        );
        // Build counted no orders (none were recorded): scale as 100.
        report.finished = orders;
        report.accepted = orders;
        report.finished_per_second = finished_per_second;
        report.end_to_end.p99_ms = e2e_ms;
        report.cpu_ms_per_order = BTreeMap::from([("svc".to_string(), cpu_ms)]);
        report.switches_per_order = BTreeMap::from([("svc".to_string(), 40.0)]);
        if finished_per_second < f64::from(load) {
            report.errors = 5;
        }
        report
    }

    fn report(stages: Vec<StageReport>) -> Report {
        let args = crate::Args::parse_from(["loadgen"]);
        Report::build(
            &args,
            stages,
            None,
            0,
            BTreeMap::new(),
            &[],
            &Outcomes::default(),
        )
    }

    fn line<'a>(report: &'a Report, starts: &str) -> &'a BudgetLine {
        report
            .budget
            .iter()
            .find(|l| l.line.starts_with(starts))
            .unwrap_or_else(|| panic!("no line {starts:?} in {:?}", report.budget))
    }

    #[test]
    fn a_spread_is_the_middle_value_and_the_extremes() {
        let odd = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of([]), None);
        assert_eq!(odd.show(1), "2.0 (1.0–3.0)");
        assert_eq!(Spread::of([7.0]).unwrap().show(0), "7");
    }

    #[test]
    fn runs_of_one_load_are_judged_by_their_median() {
        // One noisy run of three over the target does not end the ramp.
        let r = report(vec![
            run(0, 50, true, 50.0, 20.0, 8.0),
            run(1, 50, true, 50.0, 300.0, 9.0),
            run(2, 50, true, 50.0, 22.0, 10.0),
            run(3, 100, true, 100.0, 150.0, 7.0),
            run(4, 100, true, 100.0, 160.0, 7.0),
        ]);
        assert_eq!(r.summary.len(), 2);
        assert_eq!(r.summary[0].runs, vec![0, 1, 2]);
        assert_eq!(r.summary[0].end_to_end_p99_ms.median, 22.0);
        assert_eq!(r.summary[0].cpu_ms_per_order.unwrap().median, 9.0);
        assert_eq!(r.highest_sustained_rate, Some(50));
        assert_eq!(r.representative(&r.summary[0]).index, 1);
    }

    #[test]
    fn cpu_at_the_ordinary_rate_is_held_against_the_saturated_cost() {
        let stages = |at_50: f64| {
            vec![
                run(0, 50, true, 50.0, 20.0, at_50),
                run(1, 100, true, 100.0, 40.0, 6.0),
                run(2, 1700, false, 300.0, 900.0, 5.0),
            ]
        };
        let cheap = report(stages(9.0));
        let cost = line(&cheap, "CPU per order at 50/s");
        assert!(cost.met, "{cost:?}");
        assert!(cost.measured.contains("(1.8×)"), "{}", cost.measured);
        let dear = report(stages(21.0));
        assert!(!line(&dear, "CPU per order at 50/s").met);
        // Sustained up to 100/s, under half of the 300/s saturated.
        let latency = line(&dear, "end-to-end p99 under");
        assert!(!latency.met, "{latency:?}");
        assert!(
            latency.measured.contains("half 150/s"),
            "{}",
            latency.measured
        );
    }

    #[test]
    fn without_a_saturated_stage_there_is_no_cost_line() {
        let r = report(vec![
            run(0, 50, true, 50.0, 20.0, 9.0),
            run(1, 1000, false, 1000.0, 40.0, 5.0),
        ]);
        assert!(r.saturated().is_none());
        assert!(!r.budget.iter().any(|l| l.line.starts_with("CPU per order")));
    }
}
