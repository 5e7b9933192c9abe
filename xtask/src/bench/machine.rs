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
    /// The reference peer's bpftrace.
    pub bpftrace: String,
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
    // nginx and wrk print their version on stderr (and wrk exits 1 for -v).
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
            .current_dir(crate::workspace::workspace_root())
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
        bpftrace: version("bpftrace", "--version"),
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
    /// Until when to wait for quiet before a pair (`--wait-quiet`); `None`: never wait.
    deadline: Option<Instant>,
    /// Pairs that had to wait for the machine to calm down first.
    pub waited: usize,
    /// Pairs measured again because a competitor started during them.
    pub discarded: usize,
}

/// Programs whose presence means the CPUs are shared with a build or a VM (exact comm names).
const COMPETITORS: &[&str] = &["rustc", "cargo", "cc1", "ld", "go", "bpf-linker"];

/// CPU use by others above which a pair is not started (the bench itself is idle between runs).
const BUSY_CPU: f64 = 0.10;

impl Quiet {
    /// Waits (up to `wait`) for a 1-minute load under 0.5 with no competitor running; without
    /// `wait`, checks once and warns. `wait` also bounds the waits before each pair.
    pub fn settle(&mut self, wait: Option<Duration>) -> Result<()> {
        self.deadline = wait.map(|w| Instant::now() + w);
        loop {
            let load = load1();
            let others = competitors();
            if load < 0.5 && others.is_empty() {
                eprintln!("bench: machine is quiet (load {load:.2})");
                return Ok(());
            }
            let why = format!("load {load:.2}, running: {}", list(&others));
            let Some(deadline) = self.deadline else {
                eprintln!("bench: WARNING: the machine is busy ({why}); numbers will be noisy");
                return Ok(());
            };
            if Instant::now() > deadline {
                bail!("the machine did not get quiet in time ({why})");
            }
            eprintln!("bench: waiting for a quiet machine ({why})");
            thread::sleep(Duration::from_secs(20));
        }
    }

    /// Before a pair: with `--wait-quiet`, waits while a competitor runs or the CPUs are busy
    /// (the 1-minute load lags too much to judge a 3-second run by). Then records the load and
    /// whatever competes anyway.
    pub fn sample(&mut self) {
        if let Some(deadline) = self.deadline {
            let mut waited = false;
            while Instant::now() < deadline {
                let others = competitors();
                let cpu = cpu_busy(Duration::from_millis(500));
                if others.is_empty() && cpu < BUSY_CPU {
                    break;
                }
                if !waited {
                    eprintln!(
                        "bench: pausing, the machine is busy (CPU {:.0} %, running: {})",
                        cpu * 100.0,
                        list(&others)
                    );
                    waited = true;
                }
                thread::sleep(Duration::from_secs(5));
            }
            self.waited += usize::from(waited);
        }
        self.loads.push(load1());
        self.competitors.extend(competitors());
    }
}

impl Quiet {
    /// After a pair: with `--wait-quiet`, whether a compiler or VM started meanwhile (the pair
    /// is then measured again). Counted.
    pub fn disturbed(&mut self) -> bool {
        if self.deadline.is_none_or(|d| Instant::now() > d) {
            return false;
        }
        let others = competitors();
        if others.is_empty() {
            return false;
        }
        eprintln!(
            "bench: {} started during the pair; measuring it again",
            list(&others)
        );
        self.discarded += 1;
        true
    }
}

/// The aggregate `cpu` line of /proc/stat, in clock ticks.
fn cpu_ticks() -> Option<Vec<u64>> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    (cpu.len() >= 5).then_some(cpu)
}

/// CPU time all CPUs have spent busy since boot, in nanoseconds: user, nice, system, irq and
/// softirq (idle, iowait and time stolen by the hypervisor left out).
pub fn busy_cpu_ns() -> u64 {
    let Some(cpu) = cpu_ticks() else { return 0 };
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| cpu.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    busy * (1_000_000_000 / hz)
}

/// The fraction of all CPUs busy over `window`, from /proc/stat.
fn cpu_busy(window: Duration) -> f64 {
    let read = || -> Option<(u64, u64)> {
        let cpu = cpu_ticks()?;
        // idle + iowait are the 4th and 5th fields.
        Some((cpu.iter().sum(), cpu[3] + cpu[4]))
    };
    let before = read();
    thread::sleep(window);
    let (Some((t0, i0)), Some((t1, i1))) = (before, read()) else {
        return 0.0;
    };
    let total = t1.saturating_sub(t0).max(1);
    1.0 - i1.saturating_sub(i0) as f64 / total as f64
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
