//! Running the real agent against the real kernel, and reading what it reports.

use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use prometheus_parse::{Scrape, Value};

/// A path cargo fixes at build time, unless the environment variable `var` overrides it. The
/// overrides let the test binary run where cargo's paths do not exist: inside the kernel-matrix
/// guests of `cargo xtask vm-test`.
fn path_from_env(var: &str, built_in: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(built_in),
    }
}

/// The agent binary (`LOSTWRITE_AGENT` overrides cargo's).
pub fn agent_bin() -> PathBuf {
    path_from_env("LOSTWRITE_AGENT", env!("CARGO_BIN_EXE_agent"))
}

/// The probe mode every `Agent::start` asks for: `LOSTWRITE_PROBE_MODE`, or `tracepoint` (the
/// only mode this host's kernel allows). `cargo xtask vm-test` runs the same tests in the other
/// modes inside virtual machines.
pub fn probe_mode() -> String {
    std::env::var("LOSTWRITE_PROBE_MODE")
        .ok()
        .filter(|mode| !mode.is_empty())
        .unwrap_or_else(|| "tracepoint".to_owned())
}

/// The probe mode the agent should choose when started with no `--probe-mode` (`auto`):
/// `LOSTWRITE_EXPECT_DEFAULT_MODE` (the kernel-matrix guests set it per kernel: fentry), or
/// `tracepoint`, what this host's kernel leaves (it refuses BPF trampolines and has no kprobes).
pub fn expected_default_mode() -> String {
    std::env::var("LOSTWRITE_EXPECT_DEFAULT_MODE")
        .ok()
        .filter(|mode| !mode.is_empty())
        .unwrap_or_else(|| "tracepoint".to_owned())
}

/// Whether this process may run root e2e tests. Under `LOSTWRITE_E2E=1` (CI, `cargo xtask test`)
/// not being root is a failure, never a skip.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("LOSTWRITE_E2E").is_none(),
        "{test}: LOSTWRITE_E2E is set but the tests do not run as root; they need root to load \
         eBPF programs"
    );
    eprintln!(
        "SKIPPED {test}: needs root to load eBPF programs (cargo xtask test runs it as root)"
    );
    false
}

/// This test process's name, the `comm` label of everything its threads do: its thread-group
/// leader's comm (`/proc/<pid>/comm`; the binary's name, `e2e-<hash>` truncated to 15 bytes, or
/// `e2e` in the kernel-matrix guests). The threads a test names (`rustsrv`, `pool-1-thread-1`)
/// appear in the incident log only, as `thread`.
pub fn own_comm() -> String {
    let path = format!("/proc/{}/comm", std::process::id());
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim_end_matches('\n')
        .to_owned()
}

/// Checks that incident `i` names this test process (pid, and [`own_comm`] as its comm) and,
/// as its thread, the one this test named `thread`.
pub fn assert_own_thread(i: &serde_json::Value, thread: &str) {
    assert_eq!(i["pid"], std::process::id(), "{i}");
    assert_eq!(i["comm"], own_comm(), "{i}");
    assert_eq!(i["thread"], thread, "{i}");
    assert_ne!(i["tid"], std::process::id(), "a thread of its own: {i}");
}

/// The calling thread's id (what the incident log calls `tid`).
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// An unused loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = path_from_env("LOSTWRITE_TMPDIR", env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    wait_for(
        &format!("a listener on {addr}"),
        Duration::from_secs(20),
        || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok(),
    );
}

/// One GET on a fresh connection (no pooling: a connection opened before the probes attached
/// would be a pre-existing socket to the agent, and each test wants to know exactly what it saw).
pub fn http_get(url: &str) -> Result<(u16, String), String> {
    let mut resp = ureq::get(url)
        .header("Connection", "close")
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// A running `agent run`, stopped with SIGTERM on drop.
pub struct Agent {
    child: Child,
    pub listen: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts the agent (JSON incident log) in [`probe_mode`] unless `extra` names its own
    /// `--probe-mode`, and waits until /healthz says the probes are attached and /metrics shows
    /// that mode in use.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_under(&[], extra)
    }

    /// The same, with the agent's command line appended to `wrapper` (a program that sets up
    /// the agent's environment and then execs it in the same process, so that [`Agent::pid`]
    /// is the agent's once it runs). An empty `wrapper` runs the agent directly.
    pub fn start_under(wrapper: &[OsString], extra: &[&str]) -> Self {
        let mode = match extra.iter().position(|a| *a == "--probe-mode") {
            Some(i) => extra.get(i + 1).copied().unwrap_or_default().to_owned(),
            None => probe_mode(),
        };
        Self::launch(wrapper, extra, Some(mode))
    }

    /// Starts the agent as a user (and the DaemonSet) does, with no `--probe-mode`: it
    /// chooses one itself. [`Agent::mode_in_use`] says which.
    pub fn start_default(extra: &[&str]) -> Self {
        assert!(!extra.contains(&"--probe-mode"), "{extra:?}");
        Self::launch(&[], extra, None)
    }

    /// `mode`: the `--probe-mode` to pass, or `None` for none (the agent's default, `auto`).
    fn launch(wrapper: &[OsString], extra: &[&str], mode: Option<String>) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args: Vec<OsString> = ["run", "--listen", &listen.to_string()]
            .iter()
            .chain(&["--log-format", "json"])
            .map(OsString::from)
            .collect();
        if let Some(mode) = &mode
            && !extra.contains(&"--probe-mode")
        {
            args.extend(["--probe-mode".into(), OsString::from(mode)]);
        }
        let mode = mode.unwrap_or_else(|| "auto".to_owned());
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(agent_bin());
                cmd
            }
            None => Command::new(agent_bin()),
        };
        let mut child = cmd
            .args(args)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let mut agent = Self {
            child,
            listen,
            stdout,
            stderr,
        };
        wait_for("the agent's /healthz", Duration::from_secs(30), || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("the agent exited ({status}): {}", agent.stderr_text());
            }
            match http_get(&agent.url("/healthz")) {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        });
        agent.assert_attached(&mode);
        let mode = if mode == "auto" {
            agent.mode_in_use()
        } else {
            mode
        };
        if mode == "tracepoint" && !extra.contains(&"--classic-tracepoints") {
            // Every hook attaches as a BTF tracepoint on this kernel; a silent fallback to the
            // (7x dearer) classic tracepoint would be a regression.
            let hooks = agent.hooks();
            assert!(
                !hooks.is_empty() && !hooks.contains("(classic)"),
                "hooks: {hooks:?}\n{}",
                agent.stderr_text()
            );
        }
        agent
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// Asserts the probes are attached in `mode` (any mode for `auto`): a silent agent must fail
    /// every e2e test.
    pub fn assert_attached(&mut self, mode: &str) {
        let s = self.scrape();
        let info = "lostwrite_probe_mode_info";
        let in_use = if mode == "auto" {
            Some(s.total(info))
        } else {
            s.value(info, &[("mode", mode)])
        };
        assert_eq!(
            in_use,
            Some(1.0),
            "probe mode {mode} not reported: {:?}\n{}",
            s.series(info),
            self.stderr_text()
        );
        let stderr = self.stderr_text();
        assert!(
            stderr.contains("probes attached"),
            "no attach log line: {stderr}"
        );
    }

    /// The probe mode the agent reports in use (`lostwrite_probe_mode_info{mode} 1`).
    pub fn mode_in_use(&self) -> String {
        let s = self.scrape();
        let info = "lostwrite_probe_mode_info";
        let modes: Vec<&str> = s
            .scrape
            .samples
            .iter()
            .filter(|x| x.metric == info)
            .filter(|x| matches!(&x.value, Value::Gauge(v) | Value::Untyped(v) if *v == 1.0))
            .filter_map(|x| x.labels.get("mode"))
            .collect();
        assert_eq!(modes.len(), 1, "{:?}", s.series(info));
        modes[0].to_owned()
    }

    /// The `hooks` field of the attach log line, e.g. `sock_send_length(btf) ...`.
    pub fn hooks(&self) -> String {
        let stderr = self.stderr_text();
        let line = stderr
            .lines()
            .find(|l| l.contains("probes attached"))
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        v["fields"]["hooks"].as_str().unwrap_or_default().to_owned()
    }

    pub fn metrics_text(&self) -> String {
        let (status, body) = http_get(&self.url("/metrics")).expect("scrape /metrics");
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        body
    }

    pub fn scrape(&self) -> Metrics {
        let text = self.metrics_text();
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse /metrics");
        Metrics { scrape }
    }

    /// Scrapes until `name{labels}` exists (or panics after `timeout`), lets late records
    /// arrive, and returns a fresh scrape to assert exact counts on.
    pub fn settled(
        &self,
        what: &str,
        timeout: Duration,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Metrics {
        wait_for(what, timeout, || self.scrape().value(name, labels));
        thread::sleep(Duration::from_millis(300));
        self.scrape()
    }

    /// Incident lines (JSON) printed so far.
    /// The incident lines on stdout, parsed (explained closes, `--explain-port`, left out).
    pub fn incidents(&self) -> Vec<serde_json::Value> {
        self.stdout_records()
            .into_iter()
            .filter(|v| v["kind"] != "explain")
            .collect()
    }

    /// The explained closes on stdout (`--explain-port`), parsed.
    pub fn explained(&self) -> Vec<serde_json::Value> {
        self.stdout_records()
            .into_iter()
            .filter(|v| v["kind"] == "explain")
            .collect()
    }

    fn stdout_records(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad incident {l:?}: {e}")))
            .collect()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` and returns the exit status.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().expect("wait for the agent")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// One parsed scrape.
pub struct Metrics {
    scrape: Scrape,
}

impl Metrics {
    /// The value of the sample `name` whose labels include all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(_) | Value::Summary(_) => f64::NAN,
            })
    }

    /// Sum over every sample of `name` (0 when there is none).
    pub fn total(&self, name: &str) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                _ => 0.0,
            })
            .sum()
    }

    /// Sum over the samples of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                _ => 0.0,
            })
            .sum()
    }

    /// The samples of `name` whose labels include all of `labels`, summed by the value of
    /// their label `by`.
    pub fn by_label(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        by: &str,
    ) -> std::collections::BTreeMap<String, f64> {
        let mut out = std::collections::BTreeMap::new();
        for s in self.scrape.samples.iter().filter(|s| s.metric == name) {
            if !labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) {
                continue;
            }
            if let Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) = &s.value {
                let key = s.labels.get(by).unwrap_or_default().to_owned();
                *out.entry(key).or_insert(0.0) += *v;
            }
        }
        out
    }

    /// Every label set of `name`, rendered, for failure messages.
    pub fn series(&self, name: &str) -> Vec<String> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| format!("{}{{{}}}", s.metric, s.labels))
            .collect()
    }
}

/// A child process stopped on drop: SIGTERM first (nginx's master then stops its workers), then
/// SIGKILL if it is still there after two seconds.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
