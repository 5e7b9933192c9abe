//! Bad input: a clear one-line error, a non-zero exit, never a panic.

use std::{
    net::TcpListener,
    process::{Command, Output},
};

use crate::harness::{AGENT, root_or_skip};

fn agent(args: &[&str]) -> Output {
    Command::new(AGENT)
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
            AGENT,
            "run",
            "--listen",
            "127.0.0.1:0",
        ])
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
fn probe_mode_not_built_is_an_error() {
    if !root_or_skip("probe_mode_not_built_is_an_error") {
        return;
    }
    let out = agent(&["run", "--listen", "127.0.0.1:0", "--probe-mode", "fentry"]);
    assert_clean_failure(&out, 1, "probe mode fentry is not available");
}

#[test]
fn check_reports_a_usable_tracepoint_mode() {
    if !root_or_skip("check_reports_a_usable_tracepoint_mode") {
        return;
    }
    let out = agent(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for needle in [
        "btf                    ok",
        "probe mode tracepoint  loads and attaches",
        "sock_recv_length=tp_btf",
        "tcp_send_reset=tp_btf",
        "sys_exit=tp_btf",
        "detector unanswered_close available (tracepoint)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let bad = agent(&["check", "--btf", "/nonexistent/vmlinux"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("MISSING: kernel BTF not found"));
}
