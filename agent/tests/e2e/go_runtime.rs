//! The Go runtime hooks: an expired write deadline named as the cause, on real Go servers.
//!
//! Each test runs the seed server (tests/servers/seedsrv, net/http with WriteTimeout 1 s) on a
//! port of its own, built the way the test needs (stripped, static, another Go), and asserts
//! the counter and the incident for that port, with the Go detector reported on.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    harness::{
        Agent, Metrics, Process, free_port, http_get, root_or_skip, scratch, wait_for,
        wait_listening,
    },
    servers::{GoBuild, curl, go_build_with, newer_goroot, seedsrv_binary},
};

const GO_TIMEOUTS: &str = "lostwrite_go_write_timeouts_total";
const UNANSWERED: &str = "lostwrite_unanswered_closes_total";

/// Starts `bin` (a seedsrv build) on a free port with `args`, through `wrapper` if given.
fn start(bin: &Path, wrapper: &[&str], args: &[&str]) -> (Process, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let child = cmd
        .args(["-addr", &addr])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the Go server");
    let proc = Process(child);
    wait_listening(addr.parse::<SocketAddr>().unwrap());
    (proc, port)
}

/// The agent, with the Go detector asserted on.
fn agent(extra: &[&str]) -> Agent {
    let agent = Agent::start(extra);
    assert_eq!(
        agent.scrape().value(
            "lostwrite_detector_enabled",
            &[("detector", "go_write_timeout")]
        ),
        Some(1.0),
        "{}",
        agent.stderr_text()
    );
    agent
}

/// Waits until the Go hooks are attached to a binary called `name` (the agent logs it).
fn hooked(agent: &Agent, name: &str) -> String {
    wait_for(
        "the Go runtime hooks attached",
        Duration::from_secs(10),
        || {
            agent
                .stderr_text()
                .lines()
                .find(|l| l.contains("Go runtime hooks attached to") && l.contains(name))
                .map(str::to_owned)
        },
    )
}

/// The go counter and the incidents of `port` once one go incident is in.
fn settle(agent: &Agent, port: u16) -> (Metrics, Vec<serde_json::Value>) {
    let p = port.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.scrape().value(GO_TIMEOUTS, &[("port", &p)]).is_none() {
        if Instant::now() > deadline {
            let text = agent.metrics_text();
            let series: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(&format!("port=\"{p}\"")))
                .collect();
            let stderr = agent.stderr_text();
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            panic!(
                "timed out after 10s waiting for the Go write timeout on /metrics; \
                 port {p}'s series: {series:#?}\nincidents: {:#?}\nagent's last log lines \
                 (newest first): {tail:#?}",
                agent.incidents()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(400));
    let incidents: Vec<serde_json::Value> = agent
        .incidents()
        .into_iter()
        .filter(|i| i["port"] == port)
        .collect();
    eprintln!("incidents on port {port}: {incidents:#?}");
    (agent.scrape(), incidents)
}

/// The seed's one incident on `port`, its cause named: 78-ish bytes read, nothing written,
/// the write deadline ~1 s after the request, the handler done ~1 s later.
fn assert_seed_with_cause(agent: &Agent, port: u16, comm: &str) -> serde_json::Value {
    let (m, incidents) = settle(agent, port);
    let p = port.to_string();
    assert_eq!(
        m.value(
            GO_TIMEOUTS,
            &[("comm", comm), ("port", &p), ("protocol", "http1")]
        ),
        Some(1.0),
        "{:?}",
        m.series(GO_TIMEOUTS)
    );
    assert_eq!(m.sum(GO_TIMEOUTS, &[("port", &p)]), 1.0);
    assert_eq!(
        m.value(
            UNANSWERED,
            &[("comm", comm), ("port", &p), ("role", "server")]
        ),
        Some(1.0)
    );
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let i = incidents[0].clone();
    assert_eq!(i["kind"], "unanswered_close");
    assert_eq!(i["go_deadline"], "write", "{i}");
    let after = i["go_deadline_after_input_seconds"].as_f64().unwrap();
    assert!((0.9..1.6).contains(&after), "{i}");
    let handler = i["go_handler_after_deadline_seconds"].as_f64().unwrap();
    assert!((0.8..1.6).contains(&handler), "{i}");
    let msg = i["message"].as_str().unwrap();
    let what = match (&i["protocol"], i["bytes_written"].as_u64().unwrap()) {
        (p, _) if p == "tls" => "without writing a response (only its TLS close alert)",
        (_, 0) => "without writing a response",
        _ => "without writing anything after that read",
    };
    let want = format!(
        "{what}: Go dropped the response: its write deadline (WriteTimeout, ~{after:.1} s \
         after the request was read) expired while the handler ran; the handler finished \
         {handler:.1} s later"
    );
    assert!(msg.ends_with(&want), "{msg}\nwanted the end: {want}");
    i
}

fn seed(bin: &Path, name: &str, wrapper: &[&str]) {
    let agent = agent(&[]);
    let (_server, port) = start(bin, wrapper, &[]);
    hooked(&agent, name);
    let (code, _, err) = curl(&[format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, Some(52), "{err}");
    assert_seed_with_cause(&agent, port, name);
}

#[test]
fn go_seed_names_the_expired_write_timeout() {
    if !root_or_skip("go_seed_names_the_expired_write_timeout") {
        return;
    }
    seed(seedsrv_binary(), "seedsrv", &[]);
}

#[test]
fn go_seed_over_https_names_the_expired_write_timeout() {
    if !root_or_skip("go_seed_over_https_names_the_expired_write_timeout") {
        return;
    }
    let agent = agent(&[]);
    let (_server, port) = start(seedsrv_binary(), &[], &["-tls"]);
    hooked(&agent, "seedsrv");
    let (code, _, err) = curl(&[
        "-k".into(),
        "--http1.1".into(),
        format!("https://127.0.0.1:{port}/"),
    ]);
    assert_ne!(code, Some(0), "{err}");
    let i = assert_seed_with_cause(&agent, port, "seedsrv");
    assert_eq!(i["protocol"], "tls", "{i}");
}

#[test]
fn go_second_keep_alive_request_names_its_own_write_timeout() {
    if !root_or_skip("go_second_keep_alive_request_names_its_own_write_timeout") {
        return;
    }
    let agent = agent(&[]);
    let (_server, port) = start(seedsrv_binary(), &[], &[]);
    hooked(&agent, "seedsrv");
    // One connection: /fast is answered, / is not. (curl would retry the second request on a
    // fresh connection after the empty reply, which the server drops too.)
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(conn.read(&mut buf).unwrap(), 0, "no response, then EOF");
    let i = assert_seed_with_cause(&agent, port, "seedsrv");
    assert!(i["bytes_written"].as_u64().unwrap() > 0, "{i}");
}

#[test]
fn go_response_cut_short_by_the_write_timeout_is_one() {
    if !root_or_skip("go_response_cut_short_by_the_write_timeout_is_one") {
        return;
    }
    let agent = agent(&[]);
    let (_server, port) = start(seedsrv_binary(), &[], &[]);
    hooked(&agent, "seedsrv");
    // 64 MiB to a client reading 4 MiB/s: the write waits on the client when the deadline
    // expires, 1 s after the request.
    let (code, _, err) = curl(&[
        "--limit-rate".into(),
        "4M".into(),
        "-o".into(),
        "/dev/null".into(),
        format!("http://127.0.0.1:{port}/big"),
    ]);
    assert_eq!(code, Some(18), "curl: partial file expected: {err}");
    let (m, incidents) = settle(&agent, port);
    let p = port.to_string();
    assert_eq!(
        m.value(
            GO_TIMEOUTS,
            &[("comm", "seedsrv"), ("port", &p), ("protocol", "http1")]
        ),
        Some(1.0)
    );
    assert_eq!(m.sum(UNANSWERED, &[("port", &p)]), 0.0);
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let i = &incidents[0];
    assert_eq!(
        (&i["kind"], &i["reason"]),
        (&"go_write_timeout".into(), &"cut_short".into())
    );
    let written = i["bytes_written"].as_u64().unwrap();
    assert!(
        written > 1 << 20 && written < 64 << 20,
        "some of the 64 MiB went out, not all: {i}"
    );
    assert!(i["undelivered_bytes"].as_u64().unwrap() > 0, "{i}");
    let msg = i["message"].as_str().unwrap();
    assert!(msg.contains("cut short a response on 127.0.0.1:"), "{msg}");
    assert!(
        msg.contains(&format!("{written} bytes had been written")),
        "{msg}"
    );
}

#[test]
fn go_http2_stream_reset_by_the_write_timeout_is_one() {
    if !root_or_skip("go_http2_stream_reset_by_the_write_timeout_is_one") {
        return;
    }
    let agent = agent(&[]);
    let (_server, port) = start(seedsrv_binary(), &[], &["-tls"]);
    hooked(&agent, "seedsrv");
    let (code, _, err) = curl(&[
        "-k".into(),
        "--http2".into(),
        format!("https://127.0.0.1:{port}/"),
    ]);
    assert_eq!(code, Some(92), "curl: HTTP/2 stream error expected: {err}");
    assert!(err.contains("INTERNAL_ERROR"), "{err}");
    // The handler's write, a second after the reset, counts nothing more.
    thread::sleep(Duration::from_millis(1200));
    let (m, incidents) = settle(&agent, port);
    let p = port.to_string();
    assert_eq!(
        m.value(
            GO_TIMEOUTS,
            &[("comm", "seedsrv"), ("port", &p), ("protocol", "h2")]
        ),
        Some(1.0),
        "{:?}",
        m.series(GO_TIMEOUTS)
    );
    assert_eq!(m.sum(GO_TIMEOUTS, &[("port", &p)]), 1.0);
    // The connection lived on, and curl closed it: no unanswered close.
    assert_eq!(m.sum(UNANSWERED, &[("port", &p)]), 0.0);
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let i = &incidents[0];
    assert_eq!(
        (&i["kind"], &i["reason"]),
        (&"go_write_timeout".into(), &"stream_reset".into())
    );
    assert_eq!(i["stream_id"], 1);
    assert_eq!(i["go_deadline"], "h2_stream");
    assert!(
        i["message"]
            .as_str()
            .unwrap()
            .contains("reset HTTP/2 stream 1 on 127.0.0.1:"),
        "{i}"
    );
}

#[test]
fn go_stripped_binary_is_hooked() {
    if !root_or_skip("go_stripped_binary_is_hooked") {
        return;
    }
    let bin = go_build_with(
        "seedsrv",
        &GoBuild {
            ldflags: Some("-s -w"),
            name: Some("seedsrv-strip"),
            ..GoBuild::default()
        },
    );
    let syms = Command::new("readelf")
        .arg("-S")
        .arg(&bin)
        .output()
        .unwrap();
    let sections = String::from_utf8_lossy(&syms.stdout);
    assert!(!sections.contains(".symtab"), "not stripped");
    // The comm is the first 15 bytes of the name.
    seed(&bin, "seedsrv-strip", &[]);
}

#[test]
fn go_binary_started_before_the_agent_is_hooked() {
    if !root_or_skip("go_binary_started_before_the_agent_is_hooked") {
        return;
    }
    let (_server, port) = start(seedsrv_binary(), &[], &[]);
    let agent = agent(&[]);
    hooked(&agent, "seedsrv");
    let (code, _, err) = curl(&[format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, Some(52), "{err}");
    // Its connection is new, so the unanswered close is judged as for any server.
    assert_seed_with_cause(&agent, port, "seedsrv");
}

#[test]
fn go_binary_in_a_private_mount_namespace_is_hooked() {
    if !root_or_skip("go_binary_in_a_private_mount_namespace_is_hooked") {
        return;
    }
    // A static build copied into a root of its own: a file no path of the host's names.
    let bin = go_build_with(
        "seedsrv",
        &GoBuild {
            static_binary: true,
            name: Some("seedsrv-static"),
            ..GoBuild::default()
        },
    );
    let root = scratch("go-private-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let copied: PathBuf = root.join("bin/seedsrv-ns");
    std::fs::copy(&bin, &copied).unwrap();
    let agent = agent(&[]);
    let root_arg = root.display().to_string();
    let (_server, port) = start(
        Path::new("/bin/seedsrv-ns"),
        &["unshare", "--mount", "--root", &root_arg],
        &[],
    );
    let line = hooked(&agent, "seedsrv-ns");
    assert!(line.contains("/bin/seedsrv-ns"), "{line}");
    let (code, _, err) = curl(&[format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, Some(52), "{err}");
    assert_seed_with_cause(&agent, port, "seedsrv-ns");
}

#[test]
fn go_newer_release_is_hooked() {
    if !root_or_skip("go_newer_release_is_hooked") {
        return;
    }
    let bin = go_build_with(
        "seedsrv",
        &GoBuild {
            goroot: Some(newer_goroot()),
            name: Some("seedsrv-go123"),
            ..GoBuild::default()
        },
    );
    let agent = agent(&[]);
    let (_server, port) = start(&bin, &[], &[]);
    let line = hooked(&agent, "seedsrv-go123");
    assert!(line.contains("\"version\":\"go1.23."), "{line}");
    let (code, _, err) = curl(&[format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, Some(52), "{err}");
    assert_seed_with_cause(&agent, port, "seedsrv-go123");
}

/// Runs of the agent's own Go hook programs so far (`bpftool prog show`, with bpf stats on):
/// the programs whose fds the agent process holds, not every `go_*` program on the host.
fn go_runs(agent: &Agent) -> u64 {
    let own = program_ids(agent.pid());
    assert!(!own.is_empty(), "the agent holds no BPF program");
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs: Vec<u64> = progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| own.contains(&id)))
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("go_")))
        .map(|p| p["run_cnt"].as_u64().unwrap_or(0))
        .collect();
    assert!(!runs.is_empty(), "the agent has no Go hook program loaded");
    runs.iter().sum()
}

/// The ids of the BPF programs process `pid` holds an fd of (`prog_id:` in its fdinfo).
fn program_ids(pid: u32) -> std::collections::BTreeSet<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("the agent's fdinfo");
    fds.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// Turns `kernel.bpf_stats_enabled` on while alive.
struct BpfStats;

impl BpfStats {
    fn on() -> Self {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").unwrap();
        Self
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

#[test]
fn go_hooks_never_run_for_healthy_requests_and_an_idle_expiry_is_no_incident() {
    if !root_or_skip("go_hooks_never_run_for_healthy_requests_and_an_idle_expiry_is_no_incident") {
        return;
    }
    let _stats = BpfStats::on();
    let agent = agent(&[]);
    let (_server, port) = start(seedsrv_binary(), &[], &["-idle-timeout", "2s"]);
    hooked(&agent, "seedsrv");
    // Healthy traffic: requests on fresh and on kept-alive connections, each answered within
    // its WriteTimeout, each connection closed well before a deadline could expire.
    let fast = format!("http://127.0.0.1:{port}/fast");
    for _ in 0..10 {
        let (code, _, err) = curl(&[fast.clone(), fast.clone(), fast.clone()]);
        assert_eq!(code, Some(0), "{err}");
    }
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(go_runs(&agent), 0, "a Go hook ran for healthy requests");

    // An idle keep-alive connection: answered, then quiet past WriteTimeout (the deadline
    // expires, and the hook runs once) and past IdleTimeout (the server closes it).
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = conn.read(&mut buf).expect("the server's idle close");
    assert_eq!(n, 0, "EOF");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        go_runs(&agent),
        1,
        "the idle connection's write deadline expired once"
    );
    let m = agent.scrape();
    let p = port.to_string();
    assert_eq!(
        m.sum(GO_TIMEOUTS, &[("port", &p)]),
        0.0,
        "{:?}",
        m.series(GO_TIMEOUTS)
    );
    assert_eq!(m.sum(UNANSWERED, &[("port", &p)]), 0.0);
    assert!(
        agent.incidents().iter().all(|i| i["port"] != port),
        "{:?}",
        agent.incidents()
    );
}

#[test]
fn go_runtime_off_names_no_cause() {
    if !root_or_skip("go_runtime_off_names_no_cause") {
        return;
    }
    let agent = Agent::start(&["--go-runtime", "off"]);
    let m = agent.scrape();
    assert_eq!(
        m.value(
            "lostwrite_detector_enabled",
            &[("detector", "go_write_timeout")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.value(
            "lostwrite_detector_off",
            &[("detector", "go_write_timeout"), ("reason", "disabled")]
        ),
        Some(1.0)
    );
    let (_, body) = http_get(&agent.url("/healthz")).unwrap();
    assert!(
        body.lines()
            .any(|l| l == "off: go_write_timeout (disabled): --go-runtime off"),
        "{body}"
    );
    let (_server, port) = start(seedsrv_binary(), &[], &[]);
    let (code, _, err) = curl(&[format!("http://127.0.0.1:{port}/")]);
    assert_eq!(code, Some(52), "{err}");
    let p = port.to_string();
    wait_for("the seed on /metrics", Duration::from_secs(5), || {
        agent.scrape().value(UNANSWERED, &[("port", &p)])
    });
    thread::sleep(Duration::from_millis(300));
    let incidents: Vec<_> = agent
        .incidents()
        .into_iter()
        .filter(|i| i["port"] == port)
        .collect();
    assert_eq!(incidents.len(), 1);
    assert!(
        incidents[0].get("go_deadline").is_none(),
        "{}",
        incidents[0]
    );
    assert!(agent.scrape().series(GO_TIMEOUTS).is_empty());
}
