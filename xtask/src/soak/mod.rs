//! `cargo xtask soak --minutes N`: the release agent, with its default flags, for N minutes under
//! everything at once on loopback: healthy keep-alive traffic and connection churn against
//! nginx, an exec storm (Go binaries among the short-lived processes), pod churn (cgroups and
//! kubelet log directories made and removed, a Go server in each pod), a steady stream of true
//! incidents of every detector, bursts that can fill the ring buffer, and scrapes of /metrics at
//! 10 per second. Every 10 s it samples the agent's RSS, open fds, /metrics series, BPF map
//! memory and CPU; at the end it compares the incidents it caused with what the agent counted,
//! and writes a Markdown report. Not part of `cargo xtask test`: it takes as long as it is told.
//!
//! It fails, with one line saying why, when the agent dies, when an incident is lost beyond the
//! records the agent counted as dropped, when a resource grows past its bound after the warm-up,
//! or when part of the load could not run at all.

mod incidents;
mod load;
mod pods;
mod report;
mod sample;

use std::{
    fs,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use self::{
    incidents::{Detector, LogCounts},
    load::Shared,
    report::{Outcome, Run},
    sample::{CpuMark, Sample},
};
use crate::{
    bench::workload::Nginx,
    cmd::{Started, wait_for},
    net::{free_port, http_get},
    workspace::{is_root, target_dir, workspace_root},
};

#[derive(Args)]
pub struct Options {
    /// How long the load runs, in minutes, warm-up included.
    #[arg(long)]
    minutes: f64,
    /// The first minutes, left out of the growth checks (the caches and the series fill up);
    /// default 2, or 20 % of the run when that is longer, and at most half the run.
    #[arg(long, value_name = "MINUTES")]
    warmup_minutes: Option<f64>,
    /// Where to write the report (a relative path is taken from the workspace root); default
    /// target/soak/report.md.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// How often the agent is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// After the load stops, before the last count: peer resets from a loopback peer and unanswered
/// closes are held 200 ms by the agent, and a burst's records take a moment to drain.
const SETTLE: Duration = Duration::from_secs(5);

/// The default warm-up for a run of `minutes`.
fn default_warmup(minutes: f64) -> f64 {
    (minutes * 0.2).max(2.0).min(minutes / 2.0)
}

/// Set by SIGINT: the run ends early, everything is stopped and cleaned up, and the report says
/// so.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub fn run(opts: Options) -> Result<ExitCode> {
    if !is_root() {
        bail!("the soak loads the agent's eBPF programs and makes cgroups: run it as root");
    }
    if !(opts.minutes.is_finite() && opts.minutes > 0.0) {
        bail!("--minutes must be positive");
    }
    let warmup = opts
        .warmup_minutes
        .unwrap_or_else(|| default_warmup(opts.minutes));
    if !(warmup.is_finite() && warmup >= 0.0 && warmup < opts.minutes) {
        bail!("--warmup-minutes must be at least 0 and shorter than --minutes");
    }
    let output = match &opts.output {
        Some(path) if path.is_absolute() => path.clone(),
        Some(path) => workspace_root().join(path),
        None => target_dir().join("soak/report.md"),
    };

    // nginx comes with the test packages, Go with the demo's.
    let env = crate::setup::all()?;
    let agent_bin = crate::build::build_agent(&env, false)?;
    let seedsrv = crate::demo::build_seedsrv()?;
    let dir = target_dir().join("soak");
    fs::create_dir_all(&dir)?;

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    let nginx = Nginx::start(&dir)?;
    let roots = pods::Roots::prepare(&dir)?;
    let mut agent = Agent::start(&agent_bin, &dir, roots.logs())?;
    let first = agent.scrape()?;
    let enabled: Vec<Detector> = Detector::ALL
        .into_iter()
        .filter(|d| first.get(&d.enabled_series()) == Some(&1.0))
        .collect();
    let probe_mode = info(&first, "lostwrite_probe_mode_info", "mode");
    let store = info(&first, "lostwrite_socket_state_info", "store");
    eprintln!(
        "soak: agent pid {} on http://{}/metrics, probe mode {probe_mode} (state in {store}), \
         detectors on: {}",
        agent.pid(),
        agent.listen,
        enabled
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // After the agent started, which keeps the limits it would have anyway.
    let burst = incidents::burst_size()?;
    eprintln!("soak: bursts of {burst} connections (both ends held by the soak)");
    let plan = Plan::new(&agent, &nginx, &seedsrv, &enabled, burst)?;
    let shared = Arc::new(Shared::default());
    let seed_server = plan.start_seedsrv()?;
    let started = Instant::now();
    let threads = plan.start_load(&shared, &roots)?;

    let own_ports = plan.ports().all();
    let length = Duration::from_secs_f64(opts.minutes * 60.0);
    let mut samples = Vec::new();
    let mut cpu = CpuMark::new(agent.pid())?;
    let mut died = None;
    let mut tick = 0u32;
    loop {
        let at = started.elapsed();
        let sample = Sample::take(agent.pid(), agent.listen, &own_ports, at, &mut cpu, &shared);
        match sample {
            Ok(sample) => {
                eprintln!("soak: {}", sample.progress());
                samples.push(sample);
            }
            Err(e) => {
                died = Some(match agent.exited() {
                    Some(status) => format!(
                        "the agent exited ({status}) at {}",
                        report::clock(at.as_secs_f64())
                    ),
                    None => format!(
                        "the agent could not be sampled at {}: {e:#}",
                        report::clock(at.as_secs_f64())
                    ),
                });
                break;
            }
        }
        if at >= length {
            break;
        }
        tick += 1;
        let next = (SAMPLE_EVERY * tick).min(length);
        while started.elapsed() < next {
            thread::sleep(Duration::from_millis(200));
            if let Some(status) = agent.exited() {
                died = Some(format!(
                    "the agent exited ({status}) at {}",
                    report::clock(started.elapsed().as_secs_f64())
                ));
                break;
            }
            if INTERRUPTED.load(Ordering::Relaxed) {
                break;
            }
        }
        if died.is_some() || INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
    }
    let ran = started.elapsed();
    eprintln!("soak: stopping the load");
    shared.stop();
    for t in threads {
        let _ = t.join();
    }
    drop(seed_server);
    if died.is_none() {
        thread::sleep(SETTLE);
    }
    let last = if died.is_none() {
        agent.final_metrics(&dir.join("metrics-end.txt"))
    } else {
        None
    };
    if died.is_none()
        && let Some(status) = agent.exited()
    {
        died = Some(format!(
            "the agent exited ({status}) after the load stopped"
        ));
    }
    let live_sockets = sample::live_tcp_sockets();
    let (log, go_binaries) = agent.stop(started);
    drop(roots);
    drop(nginx);

    let run = Run {
        minutes: opts.minutes,
        warmup_minutes: warmup,
        ran_seconds: ran.as_secs_f64(),
        interrupted: INTERRUPTED.load(Ordering::Relaxed),
        agent_died: died,
        probe_mode,
        store,
        agent_args: plan.agent_args(),
        burst,
        enabled,
        samples,
        last_metrics: last,
        live_sockets,
        log,
        go_binaries,
        caused: shared.caused(),
        ports: plan.ports(),
        pod_ports: plan.pod_ports(),
        activities: shared.activities(),
        commit: commit(),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    };
    let outcome = Outcome::of(&run);
    let text = report::render(&run, &outcome);
    if let Some(parent) = output.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&output, &text).with_context(|| format!("writing {}", output.display()))?;
    println!("{}", report::console(&run, &outcome));
    println!("soak: wrote {}", output.display());
    Ok(match outcome.failure() {
        None => {
            println!("soak: ok: {}", outcome.passed());
            ExitCode::SUCCESS
        }
        Some(why) => {
            println!("soak: FAILED: {why}");
            ExitCode::FAILURE
        }
    })
}

/// The value of `key` in the series of info metric `name` whose value is 1.
fn info(metrics: &std::collections::BTreeMap<String, f64>, name: &str, key: &str) -> String {
    metrics
        .iter()
        .find(|(series, value)| series.starts_with(&format!("{name}{{")) && **value == 1.0)
        .map_or("?".to_owned(), |(series, _)| crate::net::label(series, key))
}

fn commit() -> String {
    crate::cmd::output(Command::new("git").current_dir(workspace_root()).args([
        "describe",
        "--always",
        "--dirty",
        "--abbrev=12",
    ]))
    .map(|s| s.trim().to_owned())
    .unwrap_or_else(|_| "unknown".into())
}

/// The agent: its process, its listen address, and what its incident log said so far.
struct Agent {
    started: Started,
    listen: SocketAddr,
    args: Vec<String>,
    log: Arc<Mutex<LogCounts>>,
    /// The Go binaries the agent read, and when its log said so.
    go_binaries: Arc<Mutex<Vec<(Instant, String)>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Agent {
    /// `agent run` with its defaults but for `--listen` (a port of its own) and
    /// `--pod-logs-root` (the soak's kubelet log layout, which turns pod attribution on as a
    /// node's /var/log would). Its incident log goes to `dir/incidents.log` and is counted as it
    /// comes; its diagnostics to `dir/agent.log`.
    fn start(binary: &Path, dir: &Path, pod_logs: &Path) -> Result<Self> {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let args = vec![
            "run".to_owned(),
            "--listen".to_owned(),
            listen.to_string(),
            "--pod-logs-root".to_owned(),
            pod_logs.display().to_string(),
        ];
        let mut cmd = Command::new(binary);
        // Its own process group: Ctrl-C reaches the soak, which stops the agent itself.
        cmd.args(&args).process_group(0);
        let mut started = Started::spawn("agent", &mut cmd)?;
        let log = Arc::new(Mutex::new(LogCounts::default()));
        let go_binaries = Arc::new(Mutex::new(Vec::new()));
        let stdout = started.child.stdout.take().expect("piped");
        let stderr = started.child.stderr.take().expect("piped");
        let counts = log.clone();
        let binaries = go_binaries.clone();
        let readers = vec![
            copy_lines(stdout, &dir.join("incidents.log"), move |line| {
                counts.lock().expect("not poisoned").add(line);
            })?,
            copy_lines(stderr, &dir.join("agent.log"), move |line| {
                if let Some(binary) = go_binary_read(line) {
                    binaries
                        .lock()
                        .expect("not poisoned")
                        .push((Instant::now(), binary));
                }
            })?,
        ];
        let mut agent = Self {
            started,
            listen,
            args,
            log,
            go_binaries,
            readers,
        };
        wait_for(
            "the agent's /healthz to answer 200",
            Duration::from_secs(60),
            || {
                agent.started.check_running()?;
                Ok(http_get(agent.listen, "/healthz").is_ok_and(|(status, _)| status == 200))
            },
        )?;
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.started.child.id()
    }

    fn scrape(&self) -> Result<std::collections::BTreeMap<String, f64>> {
        crate::net::scrape(self.listen)
    }

    /// /metrics at the end, kept in `path` as it was served.
    fn final_metrics(&self, path: &Path) -> Option<std::collections::BTreeMap<String, f64>> {
        match http_get(self.listen, "/metrics") {
            Ok((200, body)) => {
                let _ = fs::write(path, &body);
                Some(crate::net::parse_metrics(&body))
            }
            _ => None,
        }
    }

    /// The agent's exit status, if it is no longer running.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.started.child.try_wait().ok().flatten()
    }

    /// Stops the agent (SIGTERM) and returns its incident log's counts, read to the end, and
    /// the Go binaries it read, with the seconds since `since` at which it said so.
    fn stop(mut self, since: Instant) -> (LogCounts, Vec<(f64, String)>) {
        self.started.stop();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let binaries = self
            .go_binaries
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(at, binary)| {
                let seconds = match at.checked_duration_since(since) {
                    Some(d) => d.as_secs_f64(),
                    None => -since.duration_since(*at).as_secs_f64(),
                };
                (seconds, binary.clone())
            })
            .collect();
        (
            std::mem::take(&mut *self.log.lock().expect("not poisoned")),
            binaries,
        )
    }
}

/// A thread copying `pipe` line by line to `path`, and giving each line to `on_line`. Lines
/// are read as bytes: a line that is not UTF-8 must not end the copy.
fn copy_lines(
    pipe: impl std::io::Read + Send + 'static,
    path: &Path,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> Result<JoinHandle<()>> {
    let mut file = BufWriter::new(
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    Ok(thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let _ = file.write_all(&line);
            on_line(String::from_utf8_lossy(&line).trim_end());
            line.clear();
        }
        let _ = file.flush();
    }))
}

/// The Go binary an agent log line says was read (hooked, or not hooked and why).
fn go_binary_read(line: &str) -> Option<String> {
    if let Some((_, rest)) = line.split_once("Go runtime hooks attached to ") {
        return Some(rest.split(" (").next().unwrap_or(rest).to_owned());
    }
    let (_, rest) = line.split_once("Go binary not hooked: ")?;
    Some(format!(
        "{} (not hooked)",
        rest.split(": ").next().unwrap_or(rest)
    ))
}

/// The soak's servers and ports, fixed for the whole run so that the agent's series stay those
/// of a steady fleet.
struct Plan {
    agent_listen: SocketAddr,
    agent_args: Vec<String>,
    nginx: SocketAddr,
    seedsrv: PathBuf,
    go_on: bool,
    /// The long-lived seed server's port.
    seed_port: u16,
    shapes: incidents::Listeners,
    slots: Vec<pods::Slot>,
    /// Connections closed at once in a burst.
    burst: usize,
}

/// How many pods take turns (their names are reused, as a StatefulSet's are).
const POD_SLOTS: usize = 4;

impl Plan {
    fn new(
        agent: &Agent,
        nginx: &Nginx,
        seedsrv: &Path,
        enabled: &[Detector],
        burst: usize,
    ) -> Result<Self> {
        let ports = stable_ports(1 + POD_SLOTS)?;
        let slots = ports[1..]
            .iter()
            .enumerate()
            .map(|(i, &port)| pods::Slot {
                name: format!("soak-{i}"),
                port,
            })
            .collect();
        Ok(Self {
            agent_listen: agent.listen,
            agent_args: agent.args.clone(),
            nginx: nginx.addr,
            seedsrv: seedsrv.to_owned(),
            go_on: enabled.contains(&Detector::GoWriteTimeout),
            seed_port: ports[0],
            shapes: incidents::Listeners::bind()?,
            slots,
            burst,
        })
    }

    fn agent_args(&self) -> String {
        format!("agent {}", self.agent_args.join(" "))
    }

    /// The ports the soak caused incidents on, and those of its healthy traffic (where any
    /// incident is one it did not cause).
    fn ports(&self) -> report::Ports {
        let mut incidents = self.shapes.ports();
        incidents.push(self.seed_port);
        incidents.extend(self.pod_ports().into_iter().map(|(port, _)| port));
        report::Ports {
            incidents,
            healthy: vec![self.nginx.port(), self.agent_listen.port()],
        }
    }

    fn pod_ports(&self) -> Vec<(u16, String)> {
        self.slots
            .iter()
            .map(|s| (s.port, s.name.clone()))
            .collect()
    }

    /// The long-lived seed server: WriteTimeout 300 ms, handler 600 ms.
    fn start_seedsrv(&self) -> Result<incidents::Seedsrv> {
        incidents::Seedsrv::start(&self.seedsrv, self.seed_port, None)
    }

    /// Every part of the load, each on its own thread.
    fn start_load(&self, shared: &Arc<Shared>, roots: &pods::Roots) -> Result<Vec<JoinHandle<()>>> {
        let mut threads = Vec::new();
        threads.extend(load::healthy(shared, self.nginx, self.agent_listen)?);
        threads.push(load::exec_storm(shared, &self.seedsrv)?);
        threads.extend(incidents::start(
            shared,
            &self.shapes,
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.seed_port)),
            self.go_on,
            self.burst,
        )?);
        threads.extend(pods::churn(
            shared,
            roots.clone(),
            self.slots.clone(),
            self.seedsrv.clone(),
            self.go_on,
        )?);
        Ok(threads)
    }
}

/// `n` distinct loopback ports below the kernel's ephemeral range, free now: for the Go servers,
/// which the soak starts again and again on the same port (an ephemeral one could be a client
/// connection's in between).
fn stable_ports(n: usize) -> Result<Vec<u16>> {
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(32768);
    if low <= 10_000 {
        bail!("the ephemeral port range starts at {low}: no room below it for the soak's servers");
    }
    // Somewhere in 10000..low, by pid, so that two runs need not collide.
    let base = 10_000 + (std::process::id() % u32::from(low - 10_000)) as u16;
    let ports: Vec<u16> = (base..low)
        .chain(10_000..base)
        .filter(|&p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok())
        .take(n)
        .collect();
    if ports.len() < n {
        bail!("fewer than {n} free ports below {low}");
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_binaries_read_are_found_in_the_agents_log() {
        assert_eq!(
            go_binary_read(
                "2026-12-08T04:19:01.723217Z  INFO agent::run: Go runtime hooks attached to \
                 /usr/lib/go-1.19/pkg/tool/linux_amd64/compile (2 functions; 3 Go binaries \
                 hooked) pid=3661 version=\"go1.19.8\""
            )
            .as_deref(),
            Some("/usr/lib/go-1.19/pkg/tool/linux_amd64/compile")
        );
        assert_eq!(
            go_binary_read(
                "2026-12-08T04:19:01.686984Z  INFO agent::run: Go binary not hooked: \
                 /proc/3657/exe: the Go runtime's deadline timers are not in its pclntab \
                 pid=3657"
            )
            .as_deref(),
            Some("/proc/3657/exe (not hooked)")
        );
        assert_eq!(go_binary_read("INFO agent::run: probes attached"), None);
    }

    #[test]
    fn the_warm_up_is_two_minutes_or_a_fifth_and_at_most_half() {
        assert_eq!(default_warmup(30.0), 6.0);
        assert_eq!(default_warmup(10.0), 2.0);
        assert_eq!(default_warmup(2.0), 1.0);
        assert_eq!(default_warmup(600.0), 120.0);
    }
}
