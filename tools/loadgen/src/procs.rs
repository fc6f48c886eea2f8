//! CPU time, context switches and resident memory of the processes under
//! test, from /proc, so the report says where the CPU time of one order
//! went and how often each process was woken for it.

use std::collections::BTreeMap;

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

/// Usage so far, per process.
pub type Sample = BTreeMap<String, Usage>;

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
                let (voluntary_switches, involuntary_switches) = switches(*pid);
                let usage = Usage {
                    cpu_seconds: cpu_seconds(*pid)?,
                    voluntary_switches,
                    involuntary_switches,
                };
                Some((name.clone(), usage))
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

/// What each process used between two samples.
pub fn usage(before: &Sample, after: &Sample) -> BTreeMap<String, Usage> {
    after
        .iter()
        .filter_map(|(name, end)| {
            let start = before.get(name)?;
            Some((
                name.clone(),
                Usage {
                    cpu_seconds: end.cpu_seconds - start.cpu_seconds,
                    voluntary_switches: end
                        .voluntary_switches
                        .saturating_sub(start.voluntary_switches),
                    involuntary_switches: end
                        .involuntary_switches
                        .saturating_sub(start.involuntary_switches),
                },
            ))
        })
        .collect()
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
/// process. The process's own status line counts its main thread only;
/// a thread that ended takes its counts with it, which the services' long
/// lived threads make negligible.
fn switches(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let mut total = (0, 0);
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let (voluntary, involuntary) = parse_switches(&status);
        total.0 += voluntary;
        total.1 += involuntary;
    }
    total
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
}
