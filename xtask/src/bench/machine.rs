//! What the numbers were measured on, and whether anything else was competing for the CPUs.

use std::{
    collections::BTreeSet,
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::cmd;

/// The machine description at the top of the report.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub probe_mode: String,
    pub nginx: String,
    pub wrk: String,
    pub commit: String,
}

pub fn describe(probe_mode: String) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
        );
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    // Both print their version on stderr (and wrk exits 1 for -v).
    let version = |prog: &str, arg: &str| {
        Command::new(prog)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let all = [o.stdout, o.stderr].concat();
                let text = String::from_utf8_lossy(&all);
                text.lines().next().unwrap_or_default().trim().to_owned()
            })
            .unwrap_or_else(|| "unknown".into())
    };
    let commit = cmd::output(
        Command::new("git")
            .current_dir(crate::workspace_root())
            .args(["describe", "--always", "--dirty", "--abbrev=12"]),
    )
    .map(|s| s.trim().to_owned())
    .unwrap_or_else(|_| "unknown".into());
    Machine {
        cpu,
        cores: thread::available_parallelism().map_or(0, |n| n.get()),
        memory,
        kernel,
        probe_mode,
        nginx: version("nginx", "-v"),
        wrk: version("wrk", "-v"),
        commit,
    }
}

/// Load and competing processes, sampled before every pair.
#[derive(Default)]
pub struct Quiet {
    /// 1-minute load averages seen.
    pub loads: Vec<f64>,
    /// Compilers and VMs seen running (other than this bench's own cargo).
    pub competitors: BTreeSet<String>,
}

/// Programs whose presence means the CPUs are shared with a build or a VM (exact comm names).
const COMPETITORS: &[&str] = &["rustc", "cargo", "cc1", "ld", "go", "bpf-linker"];

impl Quiet {
    /// Waits (up to `wait`) for a 1-minute load under 0.5 with no competitor running; without
    /// `wait`, checks once and warns.
    pub fn settle(&mut self, wait: Option<Duration>) -> Result<()> {
        let deadline = Instant::now() + wait.unwrap_or_default();
        loop {
            let load = load1();
            let others = competitors();
            if load < 0.5 && others.is_empty() {
                eprintln!("bench: machine is quiet (load {load:.2})");
                return Ok(());
            }
            let why = format!("load {load:.2}, running: {}", list(&others));
            if wait.is_none() {
                eprintln!("bench: WARNING: the machine is busy ({why}); numbers will be noisy");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the machine did not get quiet in time ({why})");
            }
            eprintln!("bench: waiting for a quiet machine ({why})");
            thread::sleep(Duration::from_secs(20));
        }
    }

    pub fn sample(&mut self) {
        self.loads.push(load1());
        self.competitors.extend(competitors());
    }
}

fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "nothing".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn load1() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Competing processes, excluding this process's ancestors (`cargo xtask bench` is itself a
/// cargo).
fn competitors() -> BTreeSet<String> {
    let mut mine = BTreeSet::new();
    let mut pid = std::process::id();
    while pid > 1 && mine.insert(pid) {
        pid = parent(pid).unwrap_or(0);
    }
    let mut found = BTreeSet::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if mine.contains(&pid) {
            continue;
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if COMPETITORS.contains(&comm) || comm.starts_with("qemu-system") {
            found.insert(comm.to_owned());
        }
    }
    found
}

fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn now_utc() -> String {
    cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
