//! Developer tasks for lostwrite, run as `cargo xtask <command>` from anywhere in the workspace.

mod bench;
mod cmd;
mod demo;
mod setup;
mod test;
mod vm;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "lostwrite developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (does nothing when all is present).
    ///
    /// rust-src and rustfmt for the nightly toolchain, bpf-linker built against the nightly's
    /// libLLVM, and the Debian packages the end-to-end tests use.
    Setup,
    /// Install the build tools, then build the agent.
    ///
    /// The agent's build script builds the eBPF programs, with the nightly toolchain and
    /// bpf-linker. The Debian packages the tests use are left to `setup` and `test`.
    Build {
        /// Build the debug profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run `agent run <ARGS>...` (through `sudo -E` when not root).
    Run {
        /// Build and run the debug profile instead of release.
        #[arg(long)]
        debug: bool,
        /// Arguments passed to `agent run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then check formatting, run clippy and run all tests.
    ///
    /// Stops at the first failing step. The end-to-end tests are required to run, so they fail
    /// when not root.
    Test,
    /// Build only the eBPF object with the nightly toolchain and print its path and size.
    Ebpf,
    /// Show the seed incident: set up, build, run the agent and the Go seed server, send one
    /// healthy and one timed-out request, print the client's error, the incident line and the
    /// /metrics lines that moved, then stop everything.
    ///
    /// Installs Go and curl when missing. Needs root (or sudo) for the agent. Exits non-zero when
    /// the incident does not show.
    Demo,
    /// Run the end-to-end scenarios in each probe mode on Debian kernels booted under qemu.
    ///
    /// Downloads the kernels once (cached in target/vm/kernels), builds an initramfs with the
    /// agent and the e2e tests, and prints a kernel × mode × scenario table. Exits non-zero when
    /// any scenario fails or prints no result.
    VmTest(vm::VmArgs),
    /// Build, then measure the agent's overhead (agent off vs on, alternating) and write
    /// BENCHMARKS.md. Needs root; exits 2 when a target is missed.
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::all().map(|_| ExitCode::SUCCESS),
        Cmd::Build { debug } => build(debug).map(|_| ExitCode::SUCCESS),
        Cmd::Run { debug, args } => run(debug, &args),
        Cmd::Test => test::run(),
        Cmd::Ebpf => ebpf().map(|_| ExitCode::SUCCESS),
        Cmd::Demo => demo::run(),
        Cmd::VmTest(args) => vm::run(args),
        Cmd::Bench(opts) => bench::run(opts),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's directory, whatever the current directory is.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Cargo's target directory for this workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// A `cargo` command run in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Install the build tools, build the agent and print the path of its binary.
fn build(debug: bool) -> Result<PathBuf> {
    let env = setup::build_tools()?;
    let binary = build_agent(&env, debug)?;
    println!("{}", binary.display());
    Ok(binary)
}

/// Build the agent with the tools in `env` and return the path of its binary.
pub fn build_agent(env: &setup::Env, debug: bool) -> Result<PathBuf> {
    // The build script keeps the eBPF build's own output back unless it fails, so this line
    // says what the minutes of a first build are spent on.
    eprintln!(
        "xtask: building the agent ({}) and its eBPF programs (agent-ebpf, nightly, bpf-linker)",
        if debug { "debug" } else { "release" }
    );
    let mut cmd = cargo();
    cmd.args(["build", "--package", "agent", "--bins"]);
    if !debug {
        cmd.arg("--release");
    }
    env.apply(&mut cmd);
    cmd::run(&mut cmd)?;

    let binary = target_dir()
        .join(if debug { "debug" } else { "release" })
        .join("agent");
    if !binary.is_file() {
        bail!(
            "the build succeeded but {} does not exist",
            binary.display()
        );
    }
    Ok(binary)
}

/// Build, then replace this process with `agent run <args>...`.
fn run(debug: bool, args: &[String]) -> Result<ExitCode> {
    let binary = build(debug)?;
    let mut cmd = if is_root() {
        Command::new(&binary)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(&binary);
        cmd
    };
    cmd.arg("run").args(args);
    cmd::echo(&cmd);
    // exec only returns on failure; on success the agent's exit code is ours.
    let err = cmd.exec();
    Err(err).with_context(|| format!("failed to execute `{}`", cmd::display(&cmd)))
}

/// Build the eBPF object on its own, the way the agent's build script does, and report its size.
fn ebpf() -> Result<()> {
    let env = setup::build_tools()?;
    let mut cmd = ebpf_cargo("build");
    cmd.args(["--release"]);
    env.apply(&mut cmd);
    cmd::run(&mut cmd)?;

    let object = target_dir()
        .join(EBPF_TARGET)
        .join("release")
        .join("lostwrite");
    let size = std::fs::metadata(&object)
        .with_context(|| format!("the build succeeded but {} is missing", object.display()))?
        .len();
    println!("{} ({size} bytes)", object.display());
    Ok(())
}

const EBPF_TARGET: &str = "bpfel-unknown-none";

/// `cargo +nightly <subcommand>` for the eBPF crate alone, for its own target, with the flags
/// agent/build.rs passes (the architecture cfg aya-ebpf needs, and BTF).
pub fn ebpf_cargo(subcommand: &str) -> Command {
    let mut cmd = cargo();
    cmd.args(["+nightly", subcommand, "--package", "agent-ebpf", "--bins"])
        .args(["--target", EBPF_TARGET, "-Z", "build-std=core"]);
    let arch = std::env::consts::ARCH;
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    );
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS"] {
        cmd.env_remove(key);
    }
    cmd
}
