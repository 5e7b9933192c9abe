//! Developer tasks for lostwrite, run as `cargo xtask <command>` from anywhere in the workspace.

mod bench;
mod build;
mod cmd;
mod demo;
mod net;
mod proc;
mod setup;
mod soak;
mod test;
mod vm;
mod workspace;

use std::process::ExitCode;

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
    /// Build, then run the agent for N minutes under healthy traffic, an exec storm, pod churn,
    /// a steady stream of true incidents, ring-buffer bursts and 10 scrapes a second; sample its
    /// memory, fds, series, map memory and CPU every 10 s and write target/soak/report.md.
    ///
    /// Needs root. Exits non-zero, with one line saying why, when the agent dies, an incident is
    /// lost beyond the records counted as dropped, or a resource grows past its bound after the
    /// warm-up. Not part of `test`.
    Soak(soak::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::all().map(|_| ExitCode::SUCCESS),
        Cmd::Build { debug } => build::build(debug).map(|_| ExitCode::SUCCESS),
        Cmd::Run { debug, args } => build::run(debug, &args),
        Cmd::Test => test::run(),
        Cmd::Ebpf => build::ebpf().map(|_| ExitCode::SUCCESS),
        Cmd::Demo => demo::run(),
        Cmd::VmTest(args) => vm::run(args),
        Cmd::Bench(opts) => bench::run(opts),
        Cmd::Soak(opts) => soak::run(opts),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
