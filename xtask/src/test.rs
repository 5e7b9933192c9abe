//! `cargo xtask test`: the project's full check, in order, stopping at the first failure.

use std::{
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::Result;

use crate::{build::ebpf_cargo, cmd, setup, workspace::cargo};

struct Outcome {
    name: &'static str,
    seconds: f64,
    ok: bool,
}

pub fn run() -> Result<ExitCode> {
    let started = Instant::now();
    let mut outcomes = Vec::new();

    let failed = match timed(&mut outcomes, "setup", setup::all) {
        Some(env) => steps().into_iter().find_map(|(name, mut cmd)| {
            env.apply(&mut cmd);
            timed(&mut outcomes, name, || cmd::run(&mut cmd))
                .is_none()
                .then_some(name)
        }),
        None => Some("setup"),
    };

    println!();
    println!("{:<12} {:>9}  result", "step", "seconds");
    for Outcome { name, seconds, ok } in &outcomes {
        let result = if *ok { "ok" } else { "FAILED" };
        println!("{name:<12} {seconds:>9.1}  {result}");
    }
    match failed {
        None => {
            println!(
                "xtask test: {} steps passed in {:.1} s",
                outcomes.len(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(name) => {
            println!("xtask test: FAILED at {name}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The checks after setup. Clippy and the tests build the agent, whose build script builds the
/// eBPF programs, so they get bpf-linker on PATH.
fn steps() -> Vec<(&'static str, Command)> {
    let mut fmt = cargo();
    // rustfmt.toml uses options only the nightly rustfmt has.
    fmt.args(["+nightly", "fmt", "--all", "--", "--check"]);

    // The eBPF crate is linted on its own, for its own target: checked for the host together
    // with the agent, feature unification would pull std into it.
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
    ]);
    clippy.args(["--", "-D", "warnings"]);
    let mut clippy_ebpf = ebpf_cargo("clippy");
    clippy_ebpf.args(["--release", "--", "-D", "warnings"]);

    let mut test = cargo();
    test.args(["test", "--workspace", "--release"])
        // The end-to-end tests must run (and fail when not root) rather than skip.
        .env("LOSTWRITE_E2E", "1")
        // They share kernel state, so one at a time.
        .args(["--", "--test-threads=1"]);

    let xtask = |task: &str| {
        let mut cmd = Command::new(std::env::current_exe().expect("the running xtask binary"));
        cmd.current_dir(crate::workspace::workspace_root())
            .arg(task);
        cmd
    };
    // What a new user runs first: the seed incident, with the agent's defaults.
    let demo = xtask("demo");
    // This host refuses BPF trampolines and has no kprobes, so the fentry and kprobe modes are
    // proven on Debian kernels under qemu: 5.10, 6.1 and 6.12, every mode (tracepoint mode too:
    // off before 6.3, and on 6.12 the close shapes where `sock:sock_send_length` is all there
    // is to see a send with), every scenario, and the default mode's choice. The support
    // table in docs/kernels.md must be the one this run would write.
    let mut vm = xtask("vm-test");
    vm.args(["--mode", "all", "--check-support-table"])
        .arg(crate::workspace::workspace_root().join(crate::vm::SUPPORT_TABLE));

    vec![
        ("fmt", fmt),
        ("clippy", clippy),
        ("clippy-ebpf", clippy_ebpf),
        ("test", test),
        ("demo", demo),
        ("vm-test", vm),
    ]
}

/// Run `step`, record its duration and result, and report an error on stderr.
fn timed<T>(
    outcomes: &mut Vec<Outcome>,
    name: &'static str,
    step: impl FnOnce() -> Result<T>,
) -> Option<T> {
    eprintln!("xtask test: {name}");
    let started = Instant::now();
    let result = step();
    let seconds = started.elapsed().as_secs_f64();
    if let Err(err) = &result {
        eprintln!("xtask test: {name}: {err:#}");
    }
    outcomes.push(Outcome {
        name,
        seconds,
        ok: result.is_ok(),
    });
    result.ok()
}
