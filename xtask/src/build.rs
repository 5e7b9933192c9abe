//! Building the agent and its eBPF object: `cargo xtask build`, `run` and `ebpf`.

use std::{
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd, setup,
    workspace::{cargo, is_root, target_dir},
};

/// Install the build tools, build the agent and print the path of its binary.
pub fn build(debug: bool) -> Result<PathBuf> {
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
pub fn run(debug: bool, args: &[String]) -> Result<ExitCode> {
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
pub fn ebpf() -> Result<()> {
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
