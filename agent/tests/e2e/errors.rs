//! Bad input: a clear one-line error, a non-zero exit, never a panic.

use std::{
    net::TcpListener,
    process::{Command, Output},
};

use crate::harness::{agent_bin, root_or_skip};

fn agent(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(args)
        .output()
        .expect("run the agent")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The run failed cleanly: non-zero exit, no panic or backtrace, and the message is there.
fn assert_clean_failure(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn malformed_listen_address() {
    for bad in ["localhost", "127.0.0.1", "1.2.3.4:99999", ":::"] {
        let out = agent(&["run", "--listen", bad]);
        assert_clean_failure(
            &out,
            2,
            &format!("invalid value '{bad}' for '--listen <ADDR>'"),
        );
    }
}

#[test]
fn unknown_flag_and_bad_values() {
    assert_clean_failure(&agent(&["run", "--frobnicate"]), 2, "unexpected argument");
    assert_clean_failure(&agent(&["run", "--port", "70000"]), 2, "--port <PORT>");
    assert_clean_failure(&agent(&["run", "--log-format", "xml"]), 2, "--log-format");
}

#[test]
fn port_already_in_use() {
    if !root_or_skip("port_already_in_use") {
        return;
    }
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = agent(&["run", "--listen", &addr]);
    assert_clean_failure(&out, 1, &format!("error: cannot listen on {addr}: "));
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn missing_btf() {
    if !root_or_skip("missing_btf") {
        return;
    }
    let out = agent(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--btf",
        "/nonexistent/vmlinux",
    ]);
    assert_clean_failure(&out, 1, "kernel BTF not found at /nonexistent/vmlinux");
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn not_root() {
    if !root_or_skip("not_root") {
        return;
    }
    // Drop to nobody with no capabilities at all.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(agent_bin())
        .args(["run", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run setpriv (util-linux)");
    assert_clean_failure(
        &out,
        1,
        "missing privileges: loading eBPF programs needs CAP_BPF",
    );
    assert!(stderr(&out).contains("sudo agent run"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn unavailable_probe_mode_is_an_error() {
    if !root_or_skip("unavailable_probe_mode_is_an_error") {
        return;
    }
    // This kernel refuses BPF trampolines (EPERM) and has no kprobes: asking for either mode
    // must fail with the kernel's reason, not run a tracepoint agent under another name.
    let out = agent(&["run", "--listen", "127.0.0.1:0", "--probe-mode", "fentry"]);
    assert_clean_failure(&out, 1, "probe mode fentry cannot run here");
    assert_clean_failure(&out, 1, "Operation not permitted");
    let out = agent(&["run", "--listen", "127.0.0.1:0", "--probe-mode", "kprobe"]);
    assert_clean_failure(&out, 1, "probe mode kprobe cannot run here");
}

#[test]
fn socket_local_storage_where_it_cannot_be_is_an_error() {
    if !root_or_skip("socket_local_storage_where_it_cannot_be_is_an_error") {
        return;
    }
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--listen",
            "127.0.0.1:0",
            "--socket-state",
            "sk-storage",
        ];
        args.extend_from_slice(extra);
        agent(&args)
    };
    let out = run(&["--detect-ebadf", "on"]);
    assert_clean_failure(
        &out,
        1,
        "--socket-state sk_storage is not possible with --detect-ebadf",
    );
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    let out = run(&["--classic-tracepoints"]);
    assert_clean_failure(&out, 1, "is not possible with classic tracepoints");
    // This host has no kprobes; the mode would keep its state in the LRU map anyway.
    let out = run(&["--probe-mode", "kprobe"]);
    assert_clean_failure(&out, 1, "probe mode kprobe cannot keep state there");
}

#[test]
fn check_reports_modes_detectors_and_exit_status() {
    if !root_or_skip("check_reports_modes_detectors_and_exit_status") {
        return;
    }
    // All three detectors in one mode: exit 0.
    let out = agent(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let line = |prefix: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(line("btf ").starts_with("btf ok"), "{text}");
    assert!(line("tracefs ").contains("mounted"), "{text}");
    assert!(line("capabilities ").contains("CAP_BPF=yes"), "{text}");
    // This kernel: BPF trampolines refused at load, no kprobe PMU to attach to.
    assert!(line("fentry ").starts_with("fentry no -"), "{text}");
    assert!(
        line("fentry ").contains("Operation not permitted"),
        "{text}"
    );
    assert!(line("kprobe ").starts_with("kprobe yes no"), "{text}");
    let tp = line("tracepoint ");
    assert!(tp.starts_with("tracepoint yes yes"), "{text}");
    for hook in ["sock_send_length=btf", "tcp_send_reset=btf", "sys_exit=btf"] {
        assert!(tp.contains(hook), "{hook} missing: {text}");
    }
    for d in ["unanswered_close", "write_after_close", "undelivered_bytes"] {
        assert!(
            line(&format!("{d} ")).starts_with(&format!("{d} yes tracepoint")),
            "{text}"
        );
    }
    assert!(line("verdict:").contains("uses tracepoint"), "{text}");

    // Without the reset tracepoints only undelivered bytes are off: exit 2, and the detector
    // says so.
    let out = agent(&[
        "check",
        "--skip-hook",
        "tcp_send_reset",
        "--skip-hook",
        "tcp_receive_reset",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}{}", stderr(&out));
    assert!(
        text.contains("unanswered_close         yes        tracepoint"),
        "{text}"
    );
    assert!(
        text.contains("undelivered_bytes        no         -"),
        "{text}"
    );
    assert!(text.contains("verdict: partial"), "{text}");

    // Nothing works: exit 1.
    let bad = agent(&["check", "--btf", "/nonexistent/vmlinux"]);
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains("MISSING: kernel BTF not found"), "{text}");
    assert!(text.contains("verdict: no usable probe mode"), "{text}");
}

/// `agent check --json`: one JSON object with the same facts and the same exit status.
fn check_json(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = agent(&[&["check", "--json"][..], args].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().count(),
        1,
        "one line of JSON: {text}{}",
        stderr(&out)
    );
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("agent check --json printed no JSON ({e}): {text}"));
    (out.status.code(), json)
}

#[test]
fn check_json_reports_modes_detectors_and_exit_status() {
    if !root_or_skip("check_json_reports_modes_detectors_and_exit_status") {
        return;
    }
    let (code, v) = check_json(&[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["btf"]["ok"], true, "{v:#}");
    assert_eq!(v["tracefs"]["mounted"], true, "{v:#}");
    let mode = |name: &str| -> &serde_json::Value {
        v["probe_modes"]
            .as_array()
            .expect("probe_modes is a list")
            .iter()
            .find(|m| m["mode"] == name)
            .unwrap_or_else(|| panic!("no {name} mode in {v:#}"))
    };
    // This host: BPF trampolines refused at load, no kprobe PMU to attach to, so tracepoint is
    // the only mode that works and the only one that gives a detector.
    assert_eq!(mode("fentry")["loads"], "no", "{v:#}");
    assert_eq!(mode("kprobe")["attaches"], "no", "{v:#}");
    for m in ["fentry", "kprobe"] {
        assert_eq!(mode(m)["detectors"], serde_json::json!([]), "{v:#}");
    }
    let tp = mode("tracepoint");
    assert_eq!(tp["loads"], "yes", "{v:#}");
    assert_eq!(tp["attaches"], "yes", "{v:#}");
    let core = ["unanswered_close", "write_after_close", "undelivered_bytes"];
    for d in core {
        assert!(
            tp["detectors"].as_array().unwrap().contains(&d.into()),
            "{d} missing: {v:#}"
        );
    }
    let detector = |name: &str| -> &serde_json::Value {
        v["detectors"]
            .as_array()
            .expect("detectors is a list")
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("no detector {name} in {v:#}"))
    };
    for d in core {
        assert_eq!(detector(d)["available"], true, "{v:#}");
        assert_eq!(
            detector(d)["modes"],
            serde_json::json!(["tracepoint"]),
            "{v:#}"
        );
    }
    assert_eq!(
        v["verdict"],
        serde_json::json!({"status": "ok", "mode": "tracepoint"})
    );

    // Without the reset tracepoints only undelivered bytes are off: exit 2, as the text says.
    let (code, v) = check_json(&[
        "--skip-hook",
        "tcp_send_reset",
        "--skip-hook",
        "tcp_receive_reset",
    ]);
    assert_eq!(code, Some(2), "{v:#}");
    let detector = |name: &str| {
        v["detectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(detector("unanswered_close")["available"], true, "{v:#}");
    assert_eq!(detector("undelivered_bytes")["available"], false, "{v:#}");
    assert_eq!(
        detector("undelivered_bytes")["modes"],
        serde_json::json!([])
    );
    assert_eq!(v["verdict"]["status"], "partial", "{v:#}");

    // Nothing works: exit 1.
    let (code, v) = check_json(&["--btf", "/nonexistent/vmlinux"]);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["btf"]["ok"], false, "{v:#}");
    assert!(
        v["btf"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("kernel BTF not found")),
        "{v:#}"
    );
    assert_eq!(v["verdict"]["status"], "none", "{v:#}");
}

#[test]
fn check_into_a_closed_pipe_ends_quietly() {
    if !root_or_skip("check_into_a_closed_pipe_ends_quietly") {
        return;
    }
    use std::os::unix::process::ExitStatusExt as _;
    // `agent check | head -1`: the reader is gone before the report is written.
    let mut child = Command::new(agent_bin())
        .arg("check")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agent check");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for agent check");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn more_explain_ports_than_the_programs_take() {
    let mut args = vec!["run"];
    for port in ["1", "2", "3", "4", "5"] {
        args.extend(["--explain-port", port]);
    }
    let out = agent(&args);
    assert_clean_failure(
        &out,
        1,
        "--explain-port is given 5 times; the programs take at most 4",
    );
    assert_clean_failure(&agent(&["run", "--explain-port", "0"]), 2, "--explain-port");
}

/// `--empty-programs` (the overhead bench's floor) attaches everything and detects nothing: it
/// must say so, not pass for a working agent.
#[test]
fn empty_programs_report_every_detector_off_and_warn() {
    if !root_or_skip("empty_programs_report_every_detector_off_and_warn") {
        return;
    }
    let agent = crate::harness::Agent::start(&["--empty-programs"]);
    let m = agent.scrape();
    for detector in [
        "unanswered_close",
        "write_after_close",
        "undelivered_bytes",
        "write_after_close_ebadf",
    ] {
        assert_eq!(
            m.value("lostwrite_detector_enabled", &[("detector", detector)]),
            Some(0.0),
            "{detector}"
        );
        assert_eq!(
            m.value(
                "lostwrite_detector_off",
                &[("detector", detector), ("reason", "disabled")]
            ),
            Some(1.0),
            "{detector}"
        );
    }
    let err = agent.stderr_text();
    assert!(
        err.contains("--empty-programs: the programs are attached but return at once"),
        "{err}"
    );
}
