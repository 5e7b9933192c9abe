//! `agent check`: what this kernel and these credentials allow.
//!
//! Every probe mode is loaded and attached for real, then dropped. Exit status: 0 when one mode
//! gives all three detectors, 2 when only some detectors work, 1 when nothing does.

use std::process::ExitCode;

use serde::{Serialize, Serializer};

use crate::{
    cli::CheckArgs,
    privileges,
    probes::{Detector, Failure, Kernel, LoadOptions, ProbeError, ProbeMode, Probes, Step},
    tracefs,
};

/// What the unanswered-close decision tells apart, in every probe mode that runs it; the
/// session rule's bounds are agent-common's own.
fn unanswered_close_shapes() -> Vec<String> {
    let most = agent_common::proto::SESSION_GOODBYE_MAX;
    let within = agent_common::PROMPT_CLOSE_NS / 1_000_000;
    vec![
        "unanswered_close tells apart, in every mode above that runs it:".into(),
        "  not loss  a peer that closed or reset first; a FIN that crossed ours; a client's side;"
            .into(),
        "            PostgreSQL Terminate and MySQL COM_QUIT (by protocol and size, clear or TLS);"
            .into(),
        "            a TLS close alert either way (by size); QUIT, WebSocket close, HTTP/2 GOAWAY"
            .into(),
        "            sent by the process (by their bytes); on any other protocol, a session's"
            .into(),
        format!(
            "            last message of {most} bytes or less, closed within {within} ms of it"
        ),
        "  loss      a request read and left without an answer, a TLS close alert notwithstanding"
            .into(),
        "  cannot    received bytes are judged by size only; a process that sends by sendfile,"
            .into(),
        "            splice or io_uring has no protocol (its goodbyes are not recognised); a small"
            .into(),
        format!(
            "            request such a session's server drops within {within} ms is taken for a goodbye"
        ),
    ]
}

/// A mode's result, as printed.
#[derive(Serialize)]
struct ModeRow {
    #[serde(serialize_with = "mode_name")]
    mode: ProbeMode,
    /// The state store the mode uses (`--socket-state auto`), or "-" where it does not load.
    state: &'static str,
    loads: &'static str,
    attaches: &'static str,
    detail: String,
    #[serde(serialize_with = "detector_names")]
    detectors: Vec<Detector>,
}

/// A detector's row: whether any mode gives it, and which.
#[derive(Serialize)]
struct DetectorRow {
    #[serde(rename = "name", serialize_with = "detector_name")]
    detector: Detector,
    available: bool,
    modes: Vec<&'static str>,
}

impl DetectorRow {
    /// One row per detector, in [`Detector::ALL`]'s order.
    fn all(rows: &[ModeRow]) -> Vec<Self> {
        Detector::ALL
            .into_iter()
            .map(|d| {
                let modes: Vec<&'static str> = rows
                    .iter()
                    .filter(|r| r.detectors.contains(&d))
                    .map(|r| r.mode.as_str())
                    .collect();
                Self {
                    detector: d,
                    available: !modes.is_empty(),
                    modes,
                }
            })
            .collect()
    }
}

/// The kernel's BTF, as the check found it.
#[derive(Serialize)]
struct Btf {
    path: String,
    ok: bool,
    error: Option<String>,
}

/// tracefs, as the check found it (or mounted it).
#[derive(Serialize)]
struct Tracefs {
    path: String,
    mounted: bool,
    /// Mounted by this check: nothing was mounted there before.
    mounted_now: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct CapabilityRow {
    name: String,
    held: bool,
}

/// Whether the Go runtime hooks' uprobes attach.
#[derive(Serialize)]
struct GoRuntime {
    available: bool,
    error: Option<String>,
}

/// The verdict line: `ok` (with the mode `--probe-mode auto` uses), `partial` or `none`.
#[derive(Serialize)]
struct Verdict {
    status: Status,
    mode: Option<&'static str>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    /// One mode gives all three detectors: exit 0.
    Ok,
    /// Only some detectors work: exit 2.
    Partial,
    /// Nothing works: exit 1.
    None,
}

impl Verdict {
    fn of(rows: &[ModeRow]) -> Self {
        let complete = rows
            .iter()
            .find(|r| Detector::CORE.iter().all(|d| r.detectors.contains(d)));
        let some = rows
            .iter()
            .any(|r| Detector::CORE.iter().any(|d| r.detectors.contains(d)));
        Self {
            status: match (complete, some) {
                (Some(_), _) => Status::Ok,
                (None, true) => Status::Partial,
                (None, false) => Status::None,
            },
            mode: complete.map(|r| r.mode.as_str()),
        }
    }

    fn exit_code(&self) -> ExitCode {
        match self.status {
            Status::Ok => ExitCode::SUCCESS,
            Status::Partial => ExitCode::from(2),
            Status::None => ExitCode::FAILURE,
        }
    }

    fn print(&self) {
        match (self.status, self.mode) {
            (Status::Ok, Some(mode)) => {
                println!("verdict: ok, `--probe-mode auto` uses {mode} with all three detectors")
            }
            (Status::Partial, _) => {
                println!("verdict: partial, no probe mode gives all three detectors here")
            }
            _ => println!("verdict: no usable probe mode, lostwrite cannot run here"),
        }
    }
}

/// `agent check --json`: the facts the text prints, as one object.
#[derive(Serialize)]
struct Report<'a> {
    kernel: &'a str,
    btf: &'a Btf,
    tracefs: &'a Tracefs,
    protocols: Option<&'a str>,
    capabilities: &'a [CapabilityRow],
    probe_modes: &'a [ModeRow],
    detectors: &'a [DetectorRow],
    go_write_timeout: GoRuntime,
    verdict: &'a Verdict,
}

fn mode_name<S: Serializer>(mode: &ProbeMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.as_str())
}

fn detector_name<S: Serializer>(detector: &Detector, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(detector.as_str())
}

fn detector_names<S: Serializer>(detectors: &[Detector], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(detectors.iter().map(|d| d.as_str()))
}

pub fn check(args: &CheckArgs) -> ExitCode {
    let json = args.json;
    let args = &args.kernel;
    let row = |k: &str, v: String| println!("{k:<14} {v}");
    // tracefs first: mounting it here lets the kernel's description below read the classic
    // tracepoints' formats.
    let (mounted, mounted_now, error) = if tracefs::is_mounted(&args.tracefs) {
        (true, false, None)
    } else {
        match tracefs::ensure_mounted(&args.tracefs) {
            Ok(_) => (true, true, None),
            Err(e) => (false, false, Some(e.to_string())),
        }
    };
    let tracefs = Tracefs {
        path: args.tracefs.display().to_string(),
        mounted,
        mounted_now,
        error,
    };
    let opts = LoadOptions {
        btf: &args.btf,
        tracefs: &args.tracefs,
        socket_state: None,
        max_sockets: 1024,
        events_ring_bytes: None,
        force_classic: false,
        // The store a mode picks is the one `agent run` picks by default; the EBADF hooks are
        // tried on that load (see `probe_modes`).
        detect_ebadf: false,
        skip_hooks: &args.skip_hook,
        empty_programs: false,
        explain_ports: &[],
        go_runtime: Some(false),
    };
    // One parse of the kernel's BTF serves the btf line and every mode below.
    let kernel = Kernel::open(&opts);
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let btf = Btf {
        path: args.btf.display().to_string(),
        ok: kernel.is_ok(),
        error: kernel.as_ref().err().map(|e| e.to_string()),
    };
    let protocols = kernel.as_ref().ok().map(|k| k.protocols());
    let caps: Vec<CapabilityRow> = privileges::RELEVANT
        .iter()
        .map(|c| CapabilityRow {
            name: c.to_string(),
            held: privileges::has(*c),
        })
        .collect();
    if !json {
        row("kernel", release.clone());
        row(
            "btf",
            match &btf.error {
                None => format!("ok ({}; struct offsets resolved)", btf.path),
                Some(e) => format!("MISSING: {e}"),
            },
        );
        row(
            "tracefs",
            match &tracefs.error {
                None if tracefs.mounted_now => format!("mounted now at {}", tracefs.path),
                None => format!("mounted at {}", tracefs.path),
                Some(e) => format!("MISSING: {e}"),
            },
        );
        if let Some(p) = &protocols {
            row("protocols", p.clone());
        }
        let caps: Vec<String> = caps
            .iter()
            .map(|c| format!("{}={}", c.name, if c.held { "yes" } else { "no" }))
            .collect();
        row("capabilities", caps.join(" "));
        println!();
    }

    let (rows, go) = probe_modes(&opts, &kernel);
    let detectors = DetectorRow::all(&rows);
    let verdict = Verdict::of(&rows);
    if json {
        let report = Report {
            kernel: &release,
            btf: &btf,
            tracefs: &tracefs,
            protocols: protocols.as_deref(),
            capabilities: &caps,
            probe_modes: &rows,
            detectors: &detectors,
            go_write_timeout: GoRuntime {
                available: go.is_ok(),
                error: go.as_ref().err().cloned(),
            },
            verdict: &verdict,
        };
        println!(
            "{}",
            serde_json::to_string(&report).expect("the check's report serialises")
        );
    } else {
        print_tables(&rows, &detectors, &go);
        verdict.print();
    }
    verdict.exit_code()
}

/// The text report's probe mode and detector tables, and what unanswered_close tells apart.
fn print_tables(rows: &[ModeRow], detectors: &[DetectorRow], go: &Result<(), String>) {
    println!(
        "{:<12} {:<6} {:<9} detail",
        "probe mode", "loads", "attaches"
    );
    for r in rows {
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
    for d in detectors {
        let note = if d.detector == Detector::WriteAfterCloseEbadf && d.available {
            " (off unless --detect-ebadf on: syscall tracepoints slow every syscall)"
        } else {
            ""
        };
        println!(
            "{:<24} {:<10} {}{note}",
            d.detector.as_str(),
            if d.available { "yes" } else { "no" },
            if d.available {
                d.modes.join(", ")
            } else {
                "-".to_owned()
            },
        );
    }
    println!(
        "{:<24} {:<10} {}",
        "go_write_timeout",
        if go.is_ok() { "yes" } else { "no" },
        match go {
            Ok(()) => "uprobes attach: Go 1.17+ binaries running or started are hooked \
                       (--go-runtime)"
                .to_owned(),
            Err(e) => format!("uprobes unavailable: {e}"),
        }
    );
    println!();
    // The same facts feed the decision in every mode (docs/detection.md), so this holds for
    // each mode above that runs the detector.
    for line in unanswered_close_shapes() {
        println!("{line}");
    }
    println!();
}

/// The start of `s`'s first line, at most `max` characters (a verifier's log is long).
fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_owned(),
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
        state: "-",
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
                p.attach_ebadf(kernel, opts.skip_hooks);
                let hooks: Vec<String> = p
                    .attached
                    .iter()
                    .map(|a| format!("{}={}", a.name, a.via))
                    .collect();
                let mut detail = hooks.join(" ");
                detail.push_str(&format!(" state={}", p.store.as_str()));
                if let Some(note) = &p.store_note {
                    detail.push_str(&format!(" ({})", first_line(note, 160)));
                }
                if !p.failed.is_empty() {
                    detail.push_str(&format!("; FAILED {}", Failure::list(&p.failed)));
                }
                let loads = p.failed.iter().all(|f| f.step != Step::Load);
                ModeRow {
                    mode,
                    state: p.store.as_str(),
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn row(mode: ProbeMode, attaches: &'static str, detectors: &[Detector]) -> ModeRow {
        ModeRow {
            mode,
            state: "lru",
            loads: "yes",
            attaches,
            detail: format!("{} detail", mode.as_str()),
            detectors: detectors.to_vec(),
        }
    }

    fn report(rows: &[ModeRow]) -> Value {
        let btf = Btf {
            path: "/sys/kernel/btf/vmlinux".into(),
            ok: true,
            error: None,
        };
        let tracefs = Tracefs {
            path: "/sys/kernel/tracing".into(),
            mounted: true,
            mounted_now: false,
            error: None,
        };
        let caps = [CapabilityRow {
            name: "CAP_BPF".into(),
            held: true,
        }];
        let detectors = DetectorRow::all(rows);
        let verdict = Verdict::of(rows);
        serde_json::to_value(Report {
            kernel: "6.12.0-test",
            btf: &btf,
            tracefs: &tracefs,
            protocols: None,
            capabilities: &caps,
            probe_modes: rows,
            detectors: &detectors,
            go_write_timeout: GoRuntime {
                available: false,
                error: Some("no uprobes".into()),
            },
            verdict: &verdict,
        })
        .unwrap()
    }

    const CORE: [Detector; 3] = [
        Detector::UnansweredClose,
        Detector::WriteAfterClose,
        Detector::UndeliveredBytes,
    ];

    #[test]
    fn json_has_each_mode_and_each_detector_with_its_modes() {
        let rows = [
            row(ProbeMode::Fentry, "-", &[]),
            row(ProbeMode::Kprobe, "no", &[]),
            row(ProbeMode::Tracepoint, "yes", &CORE),
        ];
        let v = report(&rows);
        assert_eq!(v["kernel"], "6.12.0-test");
        assert_eq!(
            v["btf"],
            json!({"path": "/sys/kernel/btf/vmlinux", "ok": true, "error": null})
        );
        assert_eq!(v["tracefs"]["mounted"], true);
        assert_eq!(
            v["capabilities"],
            json!([{"name": "CAP_BPF", "held": true}])
        );
        assert_eq!(
            v["probe_modes"][2],
            json!({
                "mode": "tracepoint",
                "state": "lru",
                "loads": "yes",
                "attaches": "yes",
                "detail": "tracepoint detail",
                "detectors": ["unanswered_close", "write_after_close", "undelivered_bytes"],
            })
        );
        assert_eq!(v["probe_modes"][0]["attaches"], "-");
        assert_eq!(v["probe_modes"][0]["detectors"], json!([]));
        let names: Vec<&str> = v["detectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        let all: Vec<&str> = Detector::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(names, all);
        for d in &v["detectors"].as_array().unwrap()[..] {
            let core = CORE.iter().any(|c| c.as_str() == d["name"]);
            assert_eq!(d["available"], core, "{d}");
            let modes = if core {
                json!(["tracepoint"])
            } else {
                json!([])
            };
            assert_eq!(d["modes"], modes, "{d}");
        }
        assert_eq!(
            v["go_write_timeout"],
            json!({"available": false, "error": "no uprobes"})
        );
        assert_eq!(v["verdict"], json!({"status": "ok", "mode": "tracepoint"}));
    }

    #[test]
    fn json_verdict_matches_the_exit_status() {
        let partial = [row(ProbeMode::Tracepoint, "yes", &CORE[..2])];
        assert_eq!(
            report(&partial)["verdict"],
            json!({"status": "partial", "mode": null})
        );
        assert_eq!(Verdict::of(&partial).status, Status::Partial);
        assert_eq!(Verdict::of(&partial).exit_code(), ExitCode::from(2));
        let none = [row(ProbeMode::Tracepoint, "no", &[])];
        assert_eq!(
            report(&none)["verdict"],
            json!({"status": "none", "mode": null})
        );
        assert_eq!(Verdict::of(&none).exit_code(), ExitCode::FAILURE);
        let ok = [row(ProbeMode::Kprobe, "yes", &CORE)];
        assert_eq!(Verdict::of(&ok).exit_code(), ExitCode::SUCCESS);
    }
}
