//! `agent check`: what this kernel and these credentials allow.

use std::process::ExitCode;

use crate::{
    btf,
    cli::KernelArgs,
    privileges,
    probes::{LoadOptions, ProbeMode, Probes, Via},
    tracefs,
};

pub fn check(args: &KernelArgs) -> ExitCode {
    let row = |k: &str, v: String| println!("{k:<22} {v}");
    row(
        "kernel",
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("unknown ({e})")),
    );
    row(
        "btf",
        match btf::open(&args.btf).and_then(|b| btf::sock_offsets(&b)) {
            Ok(_) => format!("ok ({}; struct offsets resolved)", args.btf.display()),
            Err(e) => format!("MISSING: {e}"),
        },
    );
    row(
        "tracefs",
        if tracefs::is_mounted(&args.tracefs) {
            format!("mounted at {}", args.tracefs.display())
        } else {
            match tracefs::ensure_mounted(&args.tracefs) {
                Ok(_) => format!("mounted now at {}", args.tracefs.display()),
                Err(e) => format!("MISSING: {e}"),
            }
        },
    );
    let caps: Vec<String> = privileges::RELEVANT
        .iter()
        .map(|c| format!("{c}={}", if privileges::has(*c) { "yes" } else { "no" }))
        .collect();
    row("capabilities", caps.join(" "));

    let mut usable = false;
    if let Err(e) = privileges::require() {
        row("probe mode tracepoint", format!("NOT LOADED: {e}"));
    } else {
        privileges::raise_memlock();
        let opts = LoadOptions {
            btf: &args.btf,
            tracefs: &args.tracefs,
            max_sockets: 1024,
            force_classic: false,
            detect_ebadf: true,
        };
        match Probes::load(ProbeMode::Tracepoint, &opts) {
            Ok(p) => {
                usable = true;
                let hooks: Vec<String> = p
                    .attached
                    .iter()
                    .map(|a| {
                        let via = match a.via {
                            Via::Btf => "tp_btf",
                            Via::Classic => "tracepoint",
                        };
                        format!("{}={via}", a.name)
                    })
                    .collect();
                row(
                    "probe mode tracepoint",
                    format!("loads and attaches ({})", hooks.join(" ")),
                );
                for (d, on) in ProbeMode::Tracepoint.detectors(p.ebadf) {
                    let state = if on { "available" } else { "UNAVAILABLE" };
                    row(&format!("detector {d}"), format!("{state} (tracepoint)"));
                }
                row(
                    "",
                    "write_after_close_ebadf is off by default here (--detect-ebadf on): syscall \
                     tracepoints slow every syscall"
                        .to_owned(),
                );
            }
            Err(e) => row("probe mode tracepoint", format!("FAILED: {e}")),
        }
    }
    row("probe mode fentry", "not built in this version".to_owned());
    row("probe mode kprobe", "not built in this version".to_owned());
    if usable {
        ExitCode::SUCCESS
    } else {
        println!("no usable probe mode: lostwrite cannot run here");
        ExitCode::FAILURE
    }
}
