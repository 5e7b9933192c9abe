//! `cargo xtask vm-test`: the end-to-end scenarios in each probe mode on real Debian kernels,
//! each booted under qemu.
//!
//! This host's kernel refuses fentry and has no kprobes, so those modes can only be proven in
//! guests. Each guest boots a Debian kernel with an initramfs that holds the agent and the e2e
//! test binary, runs the chosen scenarios in every chosen mode, prints one result line per
//! mode × scenario on the serial console, and powers off. KVM is unavailable here, so qemu
//! emulates (TCG); a scenario still takes only 2–8 s and a boot about 5 s.

mod guest;
pub(crate) mod kernels;
mod qemu;
mod report;
mod scenarios;

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Result, anyhow, bail};
use clap::Args;

use self::{
    guest::{Binaries, Plan},
    kernels::{KERNELS, KernelLine},
    scenarios::{Need, SCENARIOS, Scenario},
};
use crate::{
    cmd, setup,
    workspace::{cargo, target_dir, workspace_root},
};

pub const MODES: &[&str] = &["fentry", "kprobe", "tracepoint"];

/// The file, relative to the workspace root, that holds the support table between its markers:
/// `cargo xtask test` checks it against the whole matrix.
pub const SUPPORT_TABLE: &str = "docs/kernels.md";

#[derive(Args)]
pub struct VmArgs {
    /// Kernels to boot (comma-separated): 5.10 (bullseye), 6.1 (bookworm), 6.12
    /// (bookworm-backports), or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    kernel: Vec<String>,
    /// Probe modes to run (comma-separated): fentry, kprobe, tracepoint, or all. Tracepoint mode
    /// only has every hook on kernels ≥6.3 (sock:sock_send_length).
    #[arg(long, value_delimiter = ',', default_value = "fentry,kprobe")]
    mode: Vec<String>,
    /// Only these scenarios (comma-separated names from the summary); all by default.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Write the kernel × mode × detector support table here. When the file has
    /// `<!-- support-table:begin -->`/`<!-- support-table:end -->` markers (docs/kernels.md), only the
    /// part between them is replaced.
    #[arg(long, value_name = "PATH")]
    support_table: Option<PathBuf>,
    /// Fail when the support table between the markers in this file (docs/kernels.md) differs from
    /// the one this run would write. Needs the whole matrix: every kernel, `--mode all` and
    /// every scenario (`cargo xtask test` runs it so).
    #[arg(long, value_name = "PATH", conflicts_with = "support_table")]
    check_support_table: Option<PathBuf>,
    /// Resolve and download the kernels again even when cached.
    #[arg(long)]
    refresh_kernels: bool,
    /// Debian archive to download kernels from; by default the one the host's apt uses.
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// Virtual CPUs per guest.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Wall-clock limit per guest in seconds (default: from the number of scenario runs).
    #[arg(long, value_name = "SECS")]
    guest_timeout: Option<u64>,
    /// Extra kernel command-line arguments for every guest (debugging).
    #[arg(long, value_name = "ARGS")]
    append: Option<String>,
}

/// Seconds one scenario may run in the guest before `timeout` kills it and it fails. Scenarios
/// take 2–6 s under TCG (as on the host, plus the agent's slower start); this is ten times the
/// slowest, so only a hang reaches it.
const SCENARIO_TIMEOUT: u32 = 60;
/// Wall-clock allowance per guest for booting (≈7 s) and `agent check`.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(120);
/// Wall-clock allowance per scenario run. The guest's own per-scenario timeout is the tighter
/// bound for one hung scenario; this one stops a guest that hangs as a whole within a budget
/// proportional to its work rather than after every scenario's full timeout.
const PER_SCENARIO_ALLOWANCE: Duration = Duration::from_secs(20);
const GUEST_MEMORY_MIB: u32 = 1536;

pub fn run(args: VmArgs) -> Result<ExitCode> {
    let lines = choose_kernels(&args.kernel)?;
    let modes = choose_modes(&args.mode)?;
    let chosen = choose_scenarios(&args.scenario)?;

    if let Some(path) = &args.check_support_table
        && (lines.len() != KERNELS.len()
            || modes.len() != MODES.len()
            || chosen.len() != SCENARIOS.len())
    {
        bail!(
            "--check-support-table {} compares the whole table: run every kernel, --mode all and \
             every scenario",
            path.display()
        );
    }

    let env = setup::all()?;
    let dir = target_dir().join("vm");
    fs::create_dir_all(dir.join("logs"))?;

    let built = build_tests(&env)?;
    check_test_names(&built.e2e, &chosen)?;
    let needs = |need| chosen.iter().any(|s| s.needs.contains(&need));
    let bins = Binaries {
        agent: built.agent,
        e2e: built.e2e,
        seedsrv: needs(Need::SeedServer)
            .then(|| build_seedsrv(&dir))
            .transpose()?,
        curl: needs(Need::Curl)
            .then(|| find_in_path("curl"))
            .transpose()?,
        busybox: busybox()?,
    };
    let initramfs = dir.join("initramfs.cpio");
    let plan = Plan {
        modes: &modes,
        scenarios: &chosen,
        scenario_timeout: SCENARIO_TIMEOUT,
    };
    let size = guest::write_initramfs(&initramfs, &bins, &plan)?;
    println!(
        "vm-test: {} ({:.1} MiB)",
        initramfs.display(),
        size as f64 / (1 << 20) as f64
    );

    let mirror = match &args.mirror {
        Some(m) => m.clone(),
        None => kernels::host_mirror()?,
    };
    let kernels = lines
        .iter()
        .map(|line| kernels::get(line, &dir, &mirror, args.refresh_kernels))
        .collect::<Result<Vec<_>>>()?;

    let runs_per_guest: u32 = chosen.iter().map(|s| s.modes(&modes).len() as u32).sum();
    let mut runs = Vec::new();
    for kernel in &kernels {
        let boot = qemu::Boot {
            kernel,
            initramfs: &initramfs,
            log: dir.join("logs").join(format!("{}.log", kernel.line.name)),
            timeout: args.guest_timeout.map_or(
                BOOT_ALLOWANCE + PER_SCENARIO_ALLOWANCE * runs_per_guest,
                Duration::from_secs,
            ),
            cpus: args.cpus,
            memory_mib: GUEST_MEMORY_MIB,
            append: args.append.as_deref(),
        };
        println!(
            "vm-test: booting {} ({}), log in {}",
            kernel.line.name,
            kernel.release,
            boot.log.display()
        );
        let mut run = qemu::run(&boot)?;
        if run.faulted() {
            // Under software emulation a guest kernel fault has so far been the emulator's: an
            // int3 oops in the idle loop before init, and once a double fault while probes were
            // being attached, each with the next boot of the same image clean. So the guest is
            // booted once more. The fault is echoed above with its backtrace, kept in its own
            // log, and named in the summary; a second fault fails the kernel.
            let kept = boot.log.with_extension("fault.log");
            std::fs::rename(&boot.log, &kept)?;
            let fault = run.problem.clone().unwrap_or_default();
            println!(
                "vm-test: {} kernel fault {} ({fault}); booting it again (console kept in {})",
                kernel.line.name,
                if run.booted_after.is_none() {
                    "before init"
                } else {
                    "after init"
                },
                kept.display()
            );
            run = qemu::run(&boot)?;
            run.earlier_fault = Some(fault);
        }
        println!(
            "vm-test: {} done in {:.1} s",
            kernel.line.name,
            run.wall.as_secs_f64()
        );
        runs.push((kernel, run));
    }

    let matrix = report::Matrix {
        modes: &modes,
        scenarios: &chosen,
        runs: &runs,
    };
    let mut ok = matrix.print_summary();
    if let Some(path) = &args.support_table {
        matrix.write_support_table(path)?;
        println!("vm-test: support table written to {}", path.display());
    }
    if let Some(path) = &args.check_support_table {
        let differences = matrix.support_table_differences(path)?;
        if differences.is_empty() {
            println!(
                "vm-test: {}'s support table matches this run",
                path.display()
            );
        } else {
            ok = false;
            for line in &differences {
                println!("{line}");
            }
            println!(
                "vm-test: FAILED: {}'s support table differs from this run's (above); \
                 regenerate it with `cargo xtask vm-test --mode all --support-table {}`",
                path.display(),
                path.display()
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn choose_kernels(names: &[String]) -> Result<Vec<&'static KernelLine>> {
    if names.iter().any(|n| n == "all") {
        return Ok(KERNELS.iter().collect());
    }
    let mut chosen = Vec::new();
    for name in names {
        let line = KERNELS.iter().find(|k| k.name == name).ok_or_else(|| {
            let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
            anyhow!("unknown kernel {name:?}; known: {}, all", known.join(", "))
        })?;
        if !chosen.iter().any(|c: &&KernelLine| c.name == line.name) {
            chosen.push(line);
        }
    }
    Ok(chosen)
}

fn choose_modes(names: &[String]) -> Result<Vec<String>> {
    if names.iter().any(|n| n == "all") {
        return Ok(MODES.iter().map(|m| m.to_string()).collect());
    }
    let mut chosen: Vec<String> = Vec::new();
    for name in names {
        if !MODES.contains(&name.as_str()) {
            bail!(
                "unknown probe mode {name:?}; known: {}, all",
                MODES.join(", ")
            );
        }
        if !chosen.contains(name) {
            chosen.push(name.clone());
        }
    }
    Ok(chosen)
}

fn choose_scenarios(names: &[String]) -> Result<Vec<&'static Scenario>> {
    if names.is_empty() {
        return Ok(SCENARIOS.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            scenarios::by_name(name).ok_or_else(|| {
                let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                anyhow!("unknown scenario {name:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

struct Built {
    agent: PathBuf,
    e2e: PathBuf,
}

/// Builds the agent and the e2e test binary (release) and returns their paths, as cargo reports
/// them (the test binary's name carries a hash).
fn build_tests(env: &setup::Env) -> Result<Built> {
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--package", "agent", "--test", "e2e"])
        .args(["--no-run", "--message-format=json-render-diagnostics"]);
    env.apply(&mut cmd);
    // Compiler messages go to the terminal; stdout carries the JSON artifact records.
    cmd.stderr(Stdio::inherit());
    cmd::echo(&cmd);
    let out = cmd::output(&mut cmd)?;
    let (mut agent, mut e2e) = (None, None);
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let is_test = msg["profile"]["test"] == true;
        match msg["target"]["name"].as_str() {
            Some("agent") if !is_test && msg["target"]["kind"][0] == "bin" => {
                agent = Some(PathBuf::from(exe))
            }
            Some("e2e") if is_test => e2e = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    Ok(Built {
        agent: agent.ok_or_else(|| anyhow!("cargo reported no agent binary"))?,
        e2e: e2e.ok_or_else(|| anyhow!("cargo reported no e2e test binary"))?,
    })
}

/// Every chosen scenario's test exists: a renamed test would otherwise run zero tests in the
/// guest (which the guest also refuses to count as a pass, but this says why, before booting).
fn check_test_names(e2e: &Path, chosen: &[&Scenario]) -> Result<()> {
    let list = cmd::output(Command::new(e2e).args(["--list", "--format", "terse"]))?;
    let tests: Vec<&str> = list
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .collect();
    let missing: Vec<&str> = chosen
        .iter()
        .map(|s| s.test)
        .filter(|t| !tests.contains(t))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the e2e binary has no test named {}; update xtask/src/vm/scenarios.rs",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The Go seed server, built static (CGO off) so that the guest needs no libc for it.
fn build_seedsrv(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("bin");
    fs::create_dir_all(&out)?;
    let bin = out.join("seedsrv");
    let mut go = Command::new("go");
    go.args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(workspace_root().join("agent/tests/servers/seedsrv"))
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", dir.join("go-cache"))
        .env("GOFLAGS", "-buildvcs=false");
    cmd::run(&mut go)?;
    Ok(bin)
}

/// Debian's busybox-static (installed by setup). Should the dynamic `busybox` package have
/// replaced it, its libraries are copied like the other programs'.
fn busybox() -> Result<PathBuf> {
    let path = PathBuf::from("/bin/busybox");
    if !path.is_file() {
        bail!(
            "{} is missing; `cargo xtask setup` installs busybox-static",
            path.display()
        );
    }
    Ok(path)
}

fn find_in_path(program: &str) -> Result<PathBuf> {
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{program} is not on PATH (`cargo xtask setup` installs it)"))
}
