//! CPU time and resident memory of the processes under test, from /proc,
//! so the report says where the CPU time of one order went.

use std::collections::BTreeMap;

use anyhow::Context;

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

pub struct Watched {
    pids: Vec<(String, u32)>,
}

/// CPU seconds so far, per process.
pub type CpuSample = BTreeMap<String, f64>;

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

    pub fn sample(&mut self) -> CpuSample {
        self.pids
            .iter()
            .filter_map(|(name, pid)| cpu_seconds(*pid).map(|s| (name.clone(), s)))
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

/// CPU seconds each process spent between two samples.
pub fn usage(before: &CpuSample, after: &CpuSample) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(name, end)| before.get(name).map(|start| (name.clone(), end - start)))
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

fn resident_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
