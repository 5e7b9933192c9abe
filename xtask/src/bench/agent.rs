//! The agent under measurement: started in its default configuration for each agent-on run, and
//! read from the outside (/proc and its own /metrics) so the reading costs it nothing.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Run,
    profile::{self, Profile, Recorder},
    sysctl::Sysctl,
    workload::{Measured, Steady},
};
use crate::{net::free_port, proc};

/// A workload, run with a hook at its steady window's start and end.
pub type Work<'a> = &'a dyn Fn(Steady<'_>) -> Result<Measured>;

/// What one agent-on run cost the agent, and what it received.
#[derive(Clone, Debug, Default)]
pub struct AgentRun {
    /// User + system CPU seconds of the agent process during the workload.
    pub cpu_seconds: f64,
    /// VmHWM at the end of the run, KiB.
    pub peak_rss_kib: u64,
    /// VmRSS at the end of the run, KiB.
    pub rss_kib: u64,
    /// Ring-buffer records the programs submitted during the steady window.
    pub records_sent: u64,
    /// Ring-buffer records lost (ring full) during the steady window.
    pub records_dropped: u64,
    /// Workload units done in the steady window.
    pub steady_units: f64,
    /// `lostwrite_probe_mode_info`'s mode.
    pub probe_mode: String,
}

impl AgentRun {
    /// Every record the programs tried to emit.
    pub fn records(&self) -> u64 {
        self.records_sent + self.records_dropped
    }
}

/// Probe invocations and their kernel time, from `kernel.bpf_stats_enabled` (the kernel then
/// times every BPF program run, which costs a little itself: these figures come from a separate
/// run, never from the measured pairs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BpfStats {
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// Busy CPU time of the whole machine over the same window (`machine::busy_cpu_ns`).
    pub busy_ns: u64,
}

/// One agent-on run: start the agent (with `args` after its defaults), run `work`, read the
/// agent, stop it.
pub fn measure(
    binary: &Path,
    dir: &Path,
    args: &[&str],
    work: Work<'_>,
) -> Result<(Run, AgentRun)> {
    let agent = Agent::start(binary, dir, args)?;
    let mode = agent.probe_mode()?;
    let cpu0 = agent.cpu_seconds()?;
    let mut marks = Vec::new();
    let measured = work(&mut |_| {
        marks.push(agent.kernel_records()?);
        Ok(())
    })?;
    let cpu1 = agent.cpu_seconds()?;
    let [k0, k1] = marks[..] else {
        bail!(
            "the workload marked its steady window {} times",
            marks.len()
        );
    };
    let stats = AgentRun {
        cpu_seconds: cpu1 - cpu0,
        peak_rss_kib: agent.status_kib("VmHWM:")?,
        rss_kib: agent.status_kib("VmRSS:")?,
        records_sent: k1.0 - k0.0,
        records_dropped: k1.1 - k0.1,
        steady_units: measured.steady_units,
        probe_mode: mode,
    };
    agent.stop()?;
    Ok((measured.run, stats))
}

/// One agent-on run with BPF statistics on, summing run counts and times over the agent's own
/// programs (found through its fds, so other BPF users on the host are left out).
pub fn measure_probe_stats(
    binary: &Path,
    dir: &Path,
    args: &[&str],
    work: Work<'_>,
) -> Result<(Run, BpfStats)> {
    let _stats_on = stats_enabled()?;
    let agent = Agent::start(binary, dir, args)?;
    let measured = over_steady_window(work, || agent.bpf_stats())?;
    agent.stop()?;
    Ok(measured)
}

/// One agent-on run under `perf record` over its steady window (`--profile`): where the
/// programs' time went, per workload unit.
pub fn measure_profile(
    binary: &Path,
    dir: &Path,
    args: &[&str],
    work: Work<'_>,
) -> Result<Profile> {
    let agent = Agent::start(binary, dir, args)?;
    let mut recorder = None;
    let mut script = None;
    let measured = work(&mut |start| {
        if start {
            recorder = Some(Recorder::start(dir)?);
        } else if let Some(r) = recorder.take() {
            script = Some(r.stop()?);
        }
        Ok(())
    })?;
    agent.stop()?;
    let Some(script) = script else {
        bail!("the workload did not close its steady window");
    };
    Ok(profile::parse(
        &script,
        measured.steady_units,
        measured.run.seconds,
    ))
}

/// Runs `work` with BPF statistics read by `read` at its steady window's start and end: the
/// run (its units those of the steady window, like the ring-buffer figures) and what the
/// programs did in between.
pub fn over_steady_window(
    work: Work<'_>,
    read: impl Fn() -> Result<BpfStats>,
) -> Result<(Run, BpfStats)> {
    let mut marks = Vec::new();
    let measured = work(&mut |_| {
        marks.push(read()?);
        Ok(())
    })?;
    let [before, after] = marks[..] else {
        bail!(
            "the workload marked its steady window {} times",
            marks.len()
        );
    };
    let run = Run {
        units: measured.steady_units as u64,
        seconds: measured.run.seconds,
    };
    Ok((
        run,
        BpfStats {
            run_cnt: after.run_cnt - before.run_cnt,
            run_time_ns: after.run_time_ns - before.run_time_ns,
            busy_ns: after.busy_ns - before.busy_ns,
        },
    ))
}

/// A run with nothing attached that is otherwise prepared like an agent-on run: the agent is
/// started, answers /healthz, and is stopped, and the workload runs after the same pause. Its
/// ratio to the agent-off run is the method's own bias (start-up transients, the order of runs).
pub fn sham(binary: &Path, dir: &Path, work: Work<'_>) -> Result<Run> {
    Agent::start(binary, dir, &[])?.stop()?;
    thread::sleep(SETTLE);
    Ok(work(&mut |_| Ok(()))?.run)
}

/// Runs `f` with the agent (started with `args` after its defaults) attached, then stops it.
pub fn during<T>(
    binary: &Path,
    dir: &Path,
    args: &[&str],
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let agent = Agent::start(binary, dir, args)?;
    let out = f()?;
    agent.stop()?;
    Ok(out)
}

/// Pause between the agent's /healthz answering and the measurement.
pub const SETTLE: Duration = Duration::from_secs(1);

struct Agent {
    child: Child,
    listen: SocketAddr,
}

impl Agent {
    fn start(binary: &Path, dir: &Path, args: &[&str]) -> Result<Self> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = fs::File::create(dir.join("agent.log"))?;
        let child = Command::new(binary)
            .args(["run", "--listen", &listen.to_string()])
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut agent = Self { child, listen };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = agent.child.try_wait()? {
                bail!(
                    "the agent exited ({status}): {}",
                    fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
                );
            }
            if matches!(agent.get("/healthz"), Ok((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the agent's /healthz did not answer 200 within 30 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        // The agent parsed BTF and loaded its programs before it answered; let that CPU burst
        // and the kernel's reclaim of the freed memory pass before anything is measured.
        thread::sleep(SETTLE);
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A minimal HTTP/1.0 GET (the xtask has no HTTP client, and needs none for this).
    fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.listen, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.listen)?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status line")?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok((status, body.to_owned()))
    }

    fn metrics(&self) -> Result<String> {
        match self.get("/metrics")? {
            (200, body) => Ok(body),
            (status, body) => bail!("/metrics answered {status}: {body}"),
        }
    }

    /// (records sent, records dropped) so far.
    fn kernel_records(&self) -> Result<(u64, u64)> {
        let text = self.metrics()?;
        Ok((
            sample(&text, "lostwrite_kernel_events_total")? as u64,
            sample(&text, "lostwrite_events_dropped_total")? as u64,
        ))
    }

    /// The probe mode and the state store, as "tracepoint, state in sk_storage".
    fn probe_mode(&self) -> Result<String> {
        let text = self.metrics()?;
        let info = |prefix: &str| {
            text.lines()
                .filter(|l| l.ends_with(" 1"))
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.split('"').next())
                .map(str::to_owned)
                .with_context(|| format!("no {prefix}...}} 1 in /metrics"))
        };
        let mode = info("lostwrite_probe_mode_info{mode=\"")?;
        let store = info("lostwrite_socket_state_info{store=\"")?;
        Ok(format!("{mode}, state in {store}"))
    }

    /// utime + stime of the agent.
    fn cpu_seconds(&self) -> Result<f64> {
        proc::cpu_seconds(self.pid())
    }

    /// A `kB` field of /proc/<pid>/status.
    fn status_kib(&self, field: &str) -> Result<u64> {
        proc::status_kib(self.pid(), field)
    }

    fn bpf_stats(&self) -> Result<BpfStats> {
        bpf_stats_of(self.pid())
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the agent exited with {status} on SIGTERM");
                }
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("the agent did not exit within 10 s of SIGTERM")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        crate::cmd::kill_if_running(&mut self.child);
    }
}

/// Sums `run_cnt` and `run_time_ns` over the BPF programs process `pid` holds fds of, with the
/// machine's busy CPU time now.
pub fn bpf_stats_of(pid: u32) -> Result<BpfStats> {
    let mut total = BpfStats::default();
    for info in programs_of(pid)? {
        total.run_cnt += proc::fdinfo_field(&info, "run_cnt").unwrap_or(0);
        total.run_time_ns += proc::fdinfo_field(&info, "run_time_ns").unwrap_or(0);
    }
    total.busy_ns = super::machine::busy_cpu_ns();
    Ok(total)
}

/// The fdinfo text of every BPF program process `pid` holds an fd of.
pub fn programs_of(pid: u32) -> Result<Vec<String>> {
    proc::fdinfos_with(pid, "prog_tag:")
}

/// The value of an unlabelled sample in a text exposition.
fn sample(text: &str, name: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

/// `kernel.bpf_stats_enabled = 1` while the guard lives: the kernel times every program run.
pub fn stats_enabled() -> Result<Sysctl> {
    Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_samples() {
        let text = "# HELP x\nlostwrite_events_dropped_total 3\nlostwrite_kernel_events_total 12\n";
        assert_eq!(sample(text, "lostwrite_kernel_events_total").unwrap(), 12.0);
        assert_eq!(sample(text, "lostwrite_events_dropped_total").unwrap(), 3.0);
        assert!(sample(text, "lostwrite_kernel_events").is_err());
    }
}
