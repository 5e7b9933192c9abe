//! `agent check`: what this kernel and these credentials allow.
//!
//! Every probe mode is loaded and attached for real, then dropped. Exit status: 0 when one mode
//! gives all three detectors, 2 when only some detectors work, 1 when nothing does.

use std::process::ExitCode;

use crate::{
    cli::KernelArgs,
    privileges,
    probes::{Detector, Failure, Kernel, LoadOptions, ProbeError, ProbeMode, Probes, Step},
    tracefs,
};

/// What the unanswered-close decision tells apart, in every probe mode that runs it.
const UNANSWERED_CLOSE_SHAPES: &[&str] = &[
    "unanswered_close tells apart, in every mode above that runs it:",
    "  not loss  a peer that closed or reset first; a FIN that crossed ours; a client's side;",
    "            PostgreSQL Terminate and MySQL COM_QUIT (by protocol and size, clear or TLS);",
    "            a TLS close alert either way (by size); QUIT, WebSocket close, HTTP/2 GOAWAY",
    "            sent by the process (by their bytes)",
    "  loss      a request read and left without an answer, a TLS close alert notwithstanding",
    "  cannot    received bytes are judged by size only; a process that sends by sendfile,",
    "            splice or io_uring has no protocol (its goodbyes are not recognised)",
];

/// A mode's result, as printed.
struct ModeRow {
    mode: ProbeMode,
    loads: &'static str,
    attaches: &'static str,
    detail: String,
    detectors: Vec<Detector>,
}

pub fn check(args: &KernelArgs) -> ExitCode {
    let row = |k: &str, v: String| println!("{k:<14} {v}");
    // tracefs first: mounting it here lets the kernel's description below read the classic
    // tracepoints' formats.
    let tracefs = if tracefs::is_mounted(&args.tracefs) {
        format!("mounted at {}", args.tracefs.display())
    } else {
        match tracefs::ensure_mounted(&args.tracefs) {
            Ok(_) => format!("mounted now at {}", args.tracefs.display()),
            Err(e) => format!("MISSING: {e}"),
        }
    };
    let opts = LoadOptions {
        btf: &args.btf,
        tracefs: &args.tracefs,
        max_sockets: 1024,
        events_ring_bytes: None,
        force_classic: false,
        detect_ebadf: true,
        skip_hooks: &args.skip_hook,
        empty_programs: false,
        explain_ports: &[],
        go_runtime: Some(false),
    };
    // One parse of the kernel's BTF serves the btf line and every mode below.
    let kernel = Kernel::open(&opts);
    row(
        "kernel",
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("unknown ({e})")),
    );
    row(
        "btf",
        match &kernel {
            Ok(_) => format!("ok ({}; struct offsets resolved)", args.btf.display()),
            Err(e) => format!("MISSING: {e}"),
        },
    );
    row("tracefs", tracefs);
    if let Ok(k) = &kernel {
        row("protocols", k.protocols());
    }
    let caps: Vec<String> = privileges::RELEVANT
        .iter()
        .map(|c| format!("{c}={}", if privileges::has(*c) { "yes" } else { "no" }))
        .collect();
    row("capabilities", caps.join(" "));
    println!();

    let (rows, go) = probe_modes(&opts, &kernel);
    println!(
        "{:<12} {:<6} {:<9} detail",
        "probe mode", "loads", "attaches"
    );
    for r in &rows {
        println!(
            "{:<12} {:<6} {:<9} {}",
            r.mode.as_str(),
            r.loads,
            r.attaches,
            r.detail
        );
    }
    println!();
    println!("{:<24} {:<10} modes", "detector", "available");
    for d in Detector::ALL {
        let modes: Vec<&str> = rows
            .iter()
            .filter(|r| r.detectors.contains(&d))
            .map(|r| r.mode.as_str())
            .collect();
        let note = if d == Detector::WriteAfterCloseEbadf && !modes.is_empty() {
            " (off unless --detect-ebadf on: syscall tracepoints slow every syscall)"
        } else {
            ""
        };
        println!(
            "{:<24} {:<10} {}{note}",
            d.as_str(),
            if modes.is_empty() { "no" } else { "yes" },
            if modes.is_empty() {
                "-".to_owned()
            } else {
                modes.join(", ")
            },
        );
    }
    println!(
        "{:<24} {:<10} {}",
        "go_write_timeout",
        if go.is_ok() { "yes" } else { "no" },
        match &go {
            Ok(()) => "uprobes attach: Go 1.17+ binaries running or started are hooked \
                       (--go-runtime)"
                .to_owned(),
            Err(e) => format!("uprobes unavailable: {e}"),
        }
    );
    println!();
    // The same facts feed the decision in every mode (README, "What unanswered close tells
    // apart"), so this holds for each mode above that runs the detector.
    for line in UNANSWERED_CLOSE_SHAPES {
        println!("{line}");
    }
    println!();
    let complete = rows
        .iter()
        .find(|r| Detector::CORE.iter().all(|d| r.detectors.contains(d)));
    let some = rows
        .iter()
        .any(|r| Detector::CORE.iter().any(|d| r.detectors.contains(d)));
    match (complete, some) {
        (Some(r), _) => {
            println!(
                "verdict: ok, `--probe-mode auto` uses {} with all three detectors",
                r.mode.as_str()
            );
            ExitCode::SUCCESS
        }
        (None, true) => {
            println!("verdict: partial, no probe mode gives all three detectors here");
            ExitCode::from(2)
        }
        (None, false) => {
            println!("verdict: no usable probe mode, lostwrite cannot run here");
            ExitCode::FAILURE
        }
    }
}

/// Each mode's row, and whether the Go runtime hooks' uprobes attach (from the first mode
/// that loads).
fn probe_modes(
    opts: &LoadOptions<'_>,
    kernel: &Result<Kernel, ProbeError>,
) -> (Vec<ModeRow>, Result<(), String>) {
    let failed = |mode, loads: bool, detail: String| ModeRow {
        mode,
        loads: if loads { "yes" } else { "no" },
        attaches: "no",
        detail,
        detectors: Vec::new(),
    };
    if let Err(e) = privileges::require() {
        let rows = ProbeMode::ALL.map(|m| failed(m, false, e.to_string()));
        return (rows.into(), Err(e.to_string()));
    }
    privileges::raise_memlock();
    let kernel = match kernel {
        Ok(k) => k,
        Err(e) => {
            let rows = ProbeMode::ALL.map(|m| failed(m, false, e.to_string()));
            return (rows.into(), Err(e.to_string()));
        }
    };
    let mut go: Option<Result<(), String>> = None;
    let rows = ProbeMode::ALL
        .map(|mode| match Probes::load(kernel, mode, opts) {
            Ok(mut p) => {
                if go.is_none() {
                    go = Some(p.uprobes_attach());
                }
                let hooks: Vec<String> = p
                    .attached
                    .iter()
                    .map(|a| format!("{}={}", a.name, a.via))
                    .collect();
                let mut detail = hooks.join(" ");
                if !p.failed.is_empty() {
                    detail.push_str(&format!("; FAILED {}", Failure::list(&p.failed)));
                }
                let loads = p.failed.iter().all(|f| f.step != Step::Load);
                ModeRow {
                    mode,
                    loads: if loads { "yes" } else { "partly" },
                    attaches: if p.failed.is_empty() { "yes" } else { "partly" },
                    detail,
                    detectors: p
                        .detectors()
                        .iter()
                        .filter(|(_, on)| *on)
                        .map(|(d, _)| *d)
                        .collect(),
                }
            }
            Err(ProbeError::ModeUnavailable { failures, .. }) => {
                let loads = failures.iter().all(|f| f.step != Step::Load);
                let mut row = failed(mode, loads, Failure::list(&failures));
                if !loads {
                    row.attaches = "-";
                }
                row
            }
            Err(e) => failed(mode, false, e.to_string()),
        })
        .into();
    (
        rows,
        go.unwrap_or_else(|| Err("no probe mode loads".to_owned())),
    )
}
