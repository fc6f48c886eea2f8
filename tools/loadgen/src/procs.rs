//! CPU time, context switches and resident memory of the processes under
//! test, from /proc, so the report says where the CPU time of one order
//! went and how often each process was woken for it.

use std::{collections::BTreeMap, time::Instant};

use anyhow::Context;

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

pub struct Watched {
    pids: Vec<(String, u32)>,
}

/// What a process has used so far, or between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// Switches away from a thread that waited (for a socket, a lock, a
    /// timer): roughly, its wakeups.
    pub voluntary_switches: u64,
    /// Switches away from a thread that wanted to go on running.
    pub involuntary_switches: u64,
}

/// What one process has used so far: its CPU time, and each live thread's
/// switches (by thread id).
#[derive(Clone, Debug, Default)]
pub struct ProcessSample {
    cpu_seconds: f64,
    threads: BTreeMap<u32, (u64, u64)>,
}

/// Usage so far, per process.
pub type Sample = BTreeMap<String, ProcessSample>;

impl Watched {
    pub fn parse(specs: &[String]) -> anyhow::Result<Self> {
        let pids = specs
            .iter()
            .map(|spec| {
                let (name, pid) = spec
                    .split_once('=')
                    .with_context(|| format!("--watch {spec:?} is not NAME=PID"))?;
                Ok((
                    name.to_string(),
                    pid.parse().with_context(|| format!("--watch {spec:?}"))?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Watched { pids })
    }

    pub fn sample(&mut self) -> Sample {
        self.pids
            .iter()
            .filter_map(|(name, pid)| {
                let sample = ProcessSample {
                    cpu_seconds: cpu_seconds(*pid)?,
                    threads: switches(*pid),
                };
                Some((name.clone(), sample))
            })
            .collect()
    }

    /// Resident memory in MB, per process.
    pub fn resident(&self) -> BTreeMap<String, f64> {
        self.pids
            .iter()
            .filter_map(|(name, pid)| resident_mb(*pid).map(|mb| (name.clone(), mb)))
            .collect()
    }
}

/// What each process used between two samples. Switches are counted per
/// thread: a thread that ended between the samples takes its counts with
/// it, so summing the process's threads before and after could even go
/// down (a pool's idle threads come and go); each thread alive at the end
/// adds what it did since the first sample, or since it started.
pub fn usage(before: &Sample, after: &Sample) -> BTreeMap<String, Usage> {
    after
        .iter()
        .filter_map(|(name, end)| {
            let start = before.get(name)?;
            let (mut voluntary_switches, mut involuntary_switches) = (0, 0);
            for (tid, (voluntary, involuntary)) in &end.threads {
                let (was_voluntary, was_involuntary) =
                    start.threads.get(tid).copied().unwrap_or_default();
                voluntary_switches += voluntary.saturating_sub(was_voluntary);
                involuntary_switches += involuntary.saturating_sub(was_involuntary);
            }
            Some((
                name.clone(),
                Usage {
                    cpu_seconds: end.cpu_seconds - start.cpu_seconds,
                    voluntary_switches,
                    involuntary_switches,
                },
            ))
        })
        .collect()
}

/// The whole machine's CPU time so far, summed over its cores, from the
/// `cpu` line of /proc/stat, and when it was read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MachineSample {
    pub at: Instant,
    /// Running anything: user (guests included), nice, system, interrupts.
    pub busy_seconds: f64,
    /// Wanted to run, but the hypervisor ran another machine (steal).
    pub stolen_seconds: f64,
}

/// The machine over a stage, in cores (CPU seconds per second): what
/// tells a run on a busy or shared machine from a change in the stack.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MachineUsage {
    /// Every process, the stack's and any other.
    pub busy_cores: f64,
    /// What the watched processes did not use: the load generator and
    /// anything else running on the machine.
    pub outside_cores: f64,
    /// Taken by the hypervisor for other machines.
    pub stolen_cores: f64,
}

impl MachineUsage {
    /// Between two samples, during which the watched processes used
    /// `watched`.
    pub fn between(
        before: MachineSample,
        after: MachineSample,
        watched: &BTreeMap<String, Usage>,
    ) -> Self {
        let seconds = (after.at - before.at).as_secs_f64().max(0.001);
        let busy = (after.busy_seconds - before.busy_seconds).max(0.0);
        let ours: f64 = watched.values().map(|u| u.cpu_seconds).sum();
        MachineUsage {
            busy_cores: busy / seconds,
            outside_cores: (busy - ours).max(0.0) / seconds,
            stolen_cores: (after.stolen_seconds - before.stolen_seconds).max(0.0) / seconds,
        }
    }
}

/// The machine's CPU time so far; `None` where /proc/stat cannot be read.
pub fn machine() -> Option<MachineSample> {
    parse_cpu_line(&std::fs::read_to_string("/proc/stat").ok()?, Instant::now())
}

fn parse_cpu_line(stat: &str, at: Instant) -> Option<MachineSample> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice; the
    // guests' time is counted in user already.
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    (ticks.len() >= 4).then(|| MachineSample {
        at,
        busy_seconds: (field(0) + field(1) + field(2) + field(5) + field(6)) / TICKS_PER_SECOND,
        stolen_seconds: field(7) / TICKS_PER_SECOND,
    })
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Voluntary and involuntary context switches of every live thread of the
/// process, by thread id. (The process's own status line counts its main
/// thread only.)
fn switches(pid: u32) -> BTreeMap<u32, (u64, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeMap::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            Some((tid, parse_switches(&status)))
        })
        .collect()
}

fn parse_switches(status: &str) -> (u64, u64) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    )
}

fn resident_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_switch_counts_from_a_status_file() {
        let status =
            "Name:\tbeam.smp\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n";
        assert_eq!(parse_switches(status), (1234, 56));
    }

    #[test]
    fn reads_the_machines_busy_and_stolen_time_from_proc_stat() {
        let stat =
            "cpu  1000 20 300 9000 50 7 3 40 0 0\ncpu0 500 10 150 4500 25 3 2 20 0 0\nintr 1\n";
        let at = Instant::now();
        assert_eq!(
            parse_cpu_line(stat, at),
            Some(MachineSample {
                at,
                busy_seconds: 13.3,
                stolen_seconds: 0.4
            })
        );
        assert_eq!(parse_cpu_line("intr 1\n", at), None);
    }

    #[test]
    fn what_the_watched_processes_did_not_use_is_outside() {
        let at = Instant::now();
        let before = MachineSample {
            at,
            busy_seconds: 100.0,
            stolen_seconds: 1.0,
        };
        let after = MachineSample {
            at: at + std::time::Duration::from_secs(20),
            busy_seconds: 130.0,
            stolen_seconds: 3.0,
        };
        let watched = BTreeMap::from([(
            "stack".to_string(),
            Usage {
                cpu_seconds: 20.0,
                ..Usage::default()
            },
        )]);
        assert_eq!(
            MachineUsage::between(before, after, &watched),
            MachineUsage {
                busy_cores: 1.5,
                outside_cores: 0.5,
                stolen_cores: 0.1
            }
        );
    }

    #[test]
    fn counts_this_process_threads() {
        let me = std::process::id();
        let mut watched = Watched::parse(&[format!("me={me}")]).unwrap();
        let before = watched.sample();
        // Ten sleeps are ten voluntary switches of this thread at least.
        for _ in 0..10 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let used = usage(&before, &watched.sample());
        assert!(used["me"].voluntary_switches >= 10, "{used:?}");
    }

    #[test]
    fn a_thread_that_ended_between_samples_takes_nothing_from_the_others() {
        let sample = |threads: &[(u32, u64)]| -> Sample {
            let threads = threads.iter().map(|&(tid, v)| (tid, (v, 0))).collect();
            BTreeMap::from([(
                "p".to_string(),
                ProcessSample {
                    cpu_seconds: 0.0,
                    threads,
                },
            )])
        };
        // Thread 2 ended with 1,000 switches; thread 1 switched 5 more
        // times and thread 3 was born and switched 7 times.
        let before = sample(&[(1, 100), (2, 1000)]);
        let after = sample(&[(1, 105), (3, 7)]);
        assert_eq!(usage(&before, &after)["p"].voluntary_switches, 12);
    }
}
