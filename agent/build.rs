//! Builds the eBPF object (agent-ebpf) with the nightly toolchain and `-Z build-std=core`, into
//! OUT_DIR, so the agent can embed it with `include_bytes_aligned!`. Needs `bpf-linker` on PATH;
//! `cargo xtask build` provides it.
//!
//! This is aya-build's `build_ebpf` (0.2) with its output kept back. aya-build relays every line
//! of the inner cargo's output as a `cargo:warning`, so a clean build printed some fifty
//! `warning: agent@…: Compiling …` lines, which read as trouble. Here the inner build's output
//! is collected and shown only when it fails, in full (cargo prints a failed build script's
//! stderr); a compiler warning in the eBPF crate itself is still relayed as a warning. Cargo's
//! own `Compiling agent-ebpf` line (it is a build-dependency) says what is being built.

use std::{
    env,
    ffi::OsString,
    fs,
    io::{BufReader, Read as _},
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, CompilerMessage, Message, diagnostic::DiagnosticLevel};

const TOOLCHAIN: &str = "nightly";

fn main() -> ExitCode {
    // An error is printed plainly: a returned anyhow error would add a backtrace to the output
    // of a failed build whenever RUST_BACKTRACE is set.
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "agent-ebpf")
        .ok_or_else(|| anyhow!("agent-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // The build-dependency on agent-ebpf reruns this script when its library changes; the
    // programs are its binary, so watch the whole crate.
    println!("cargo:rerun-if-changed={root_dir}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endian {other}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;

    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo", "build"])
        .args(["--package", ebpf.name.as_str(), "--bins", "--release"])
        .args(["--message-format=json", "--target", target])
        .args(["-Z", "build-std=core"])
        // Apart from OUT_DIR's artifacts: cargo would wait on its own lock (cargo#6412).
        .arg("--target-dir")
        .arg(out_dir.join("ebpf-target"))
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The outer build's compiler and wrappers are the stable host toolchain's.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS"] {
        cmd.env_remove(key);
    }
    let line = display(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start `{line}` (is rustup on PATH?)"))?;

    // stderr carries the progress lines (`Compiling …`) and cargo's own errors; read it on a
    // thread so neither pipe fills while the other is read.
    let mut stderr = child.stderr.take().expect("piped");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut diagnostics = Vec::new();
    let mut executables = Vec::new();
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    for message in Message::parse_stream(stdout) {
        match message.context("the eBPF build's cargo printed invalid JSON")? {
            Message::CompilerArtifact(Artifact {
                executable: Some(executable),
                target,
                ..
            }) => executables.push((target.name, executable.into_std_path_buf())),
            Message::CompilerMessage(CompilerMessage { message, .. }) => {
                let warning = matches!(message.level, DiagnosticLevel::Warning);
                diagnostics.push((warning, message.rendered.unwrap_or(message.message)));
            }
            Message::TextLine(text) => diagnostics.push((false, text)),
            _ => {}
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    let stderr = stderr.join().unwrap_or_default();

    if !status.success() {
        // Everything, in order of importance: the compiler's messages, then cargo's output.
        eprintln!("the eBPF build failed ({status}): {line}");
        for (_, text) in &diagnostics {
            eprintln!("{}", text.trim_end());
        }
        eprintln!("{}", stderr.trim_end());
        bail!("building the eBPF programs (agent-ebpf) failed; its output is above");
    }
    for (warning, text) in &diagnostics {
        if *warning {
            for l in text.trim_end().lines() {
                println!("cargo:warning=agent-ebpf: {l}");
            }
        }
    }

    if executables.is_empty() {
        bail!(
            "`{line}` succeeded but built no program object:\n{}",
            stderr.trim_end()
        );
    }
    for (name, binary) in executables {
        let dst = out_dir.join(&name);
        fs::copy(&binary, &dst)
            .with_context(|| format!("copying {} to {}", binary.display(), dst.display()))?;
    }
    // Kept in the script's output file, and shown by `cargo build -vv`.
    for l in stderr.lines() {
        println!("# {l}");
    }
    Ok(())
}

/// The command as one line, for messages.
fn display(cmd: &Command) -> String {
    let mut words: Vec<OsString> = vec![cmd.get_program().to_owned()];
    words.extend(cmd.get_args().map(ToOwned::to_owned));
    words
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
