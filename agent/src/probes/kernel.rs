//! What the programs need from this kernel: BTF offsets, classic tracepoint layouts, the
//! clock's tick, resolved once for every probe mode tried.

use std::{collections::HashMap, path::Path};

use agent_common::{Config, TracepointFields};
use aya::{Btf, Endianness};
use tracing::{debug, info, warn};

use super::{LoadOptions, ProbeError, ProbeMode, table::Attach};
use crate::{btf, tracefs};

/// What the programs need from this kernel, resolved once for every mode tried.
pub struct Kernel {
    /// Parameter counts of every hooked function and tracepoint, by (target, is tracepoint);
    /// resolved up front so the btf-rs copy of the BTF is freed before aya parses its own.
    pub(super) arities: HashMap<(&'static str, bool), Option<usize>>,
    pub(super) aya_btf: Btf,
    pub(super) config: Config,
    /// Why the classic tracepoints cannot serve as a fallback, if they cannot.
    pub(super) classic_unavailable: Option<String>,
    pub(super) fd_offsets: bool,
    /// `enum sk_rst_reason` of this kernel, value to name (empty before Linux 6.10).
    pub rst_reasons: HashMap<u32, String>,
    /// Whether the user registers are found by `bpf_task_pt_regs`, or why sent messages cannot
    /// be read at all.
    pub(super) peek: Result<bool, String>,
}

impl Kernel {
    pub fn open(opts: &LoadOptions<'_>) -> Result<Self, ProbeError> {
        let kernel_btf = btf::open(opts.btf)?;
        let offsets = btf::sock_offsets(&kernel_btf)?;
        let rst_reasons = btf::enum_names(&kernel_btf, "sk_rst_reason");
        let classic = classic_fields(opts.tracefs);
        if let Err(e) = &classic {
            info!("classic tracepoints unavailable as a fallback: {e}");
        }
        let fd_offsets = btf::fd_offsets(&kernel_btf)
            .inspect_err(|e| info!("EBADF detector unavailable: {e}"))
            .ok();
        let peek = btf::peek_offsets(&kernel_btf).map_err(|e| e.to_string());
        if let Err(e) = &peek {
            warn!("the first bytes of sent messages are unreadable, protocols unknown: {e}");
        }
        // Without it every series would be labelled with a thread's name: refuse to start.
        let task = btf::task_offsets(&kernel_btf)?;
        let config = Config {
            sock: offsets,
            tp: classic.as_ref().copied().unwrap_or_default(),
            fd: fd_offsets.unwrap_or_default(),
            jiffy_ns: jiffy_ns(),
            empty_programs: opts.empty_programs as u32,
            peek: peek.as_ref().copied().unwrap_or_default(),
            explain_ports: explain_ports(opts.explain_ports),
            task,
        };
        let arities = ProbeMode::ALL
            .iter()
            .flat_map(|m| m.hooks())
            .map(|h| {
                let tp = matches!(h.attach, Attach::Tracepoint { .. });
                let arity = if tp {
                    btf::tracepoint_arity(&kernel_btf, h.target)
                } else {
                    btf::function_arity(&kernel_btf, h.target)
                };
                ((h.target, tp), arity)
            })
            .collect();
        // Two parsed copies of vmlinux BTF at once made most of the agent's start-up peak.
        drop(kernel_btf);
        let aya_btf = Btf::parse_file(opts.btf, Endianness::default()).map_err(|source| {
            ProbeError::AyaBtf {
                path: opts.btf.display().to_string(),
                source,
            }
        })?;
        Ok(Self {
            arities,
            aya_btf,
            config,
            classic_unavailable: classic.err().map(|e| e.to_string()),
            fd_offsets: fd_offsets.is_some(),
            rst_reasons,
            peek: peek.map(|p| p.by_helper != 0),
        })
    }

    /// How the programs read the first bytes of the messages a process sends (which name its
    /// protocol and its goodbyes), as `agent check` prints it.
    pub fn protocols(&self) -> String {
        match &self.peek {
            Ok(true) => "first bytes of sent messages readable (bpf_task_pt_regs)".to_owned(),
            Ok(false) => "first bytes of sent messages readable (user registers at the top of \
                          the kernel stack)"
                .to_owned(),
            Err(e) => format!("UNREADABLE ({e}): protocols unknown, goodbyes not recognised"),
        }
    }
}

/// The `--explain-port`s as the programs take them (unused slots 0).
pub(super) fn explain_ports(ports: &[u16]) -> [u16; agent_common::EXPLAIN_PORTS] {
    let mut out = [0; agent_common::EXPLAIN_PORTS];
    for (slot, port) in out.iter_mut().zip(ports) {
        *slot = *port;
    }
    out
}

/// Nanoseconds per jiffy (1/HZ): the coarse clocks tick once per jiffy, and their resolution
/// says so without privileges or a kernel config file.
fn jiffy_ns() -> u32 {
    use nix::time::{ClockId, clock_getres};
    clock_getres(ClockId::CLOCK_MONOTONIC_COARSE)
        .ok()
        .and_then(|t| u32::try_from(t.tv_sec() * 1_000_000_000 + t.tv_nsec()).ok())
        // HZ=250, the most common build, if the clock cannot say.
        .unwrap_or(4_000_000)
}

/// Record layouts of the classic tracepoints, from tracefs.
fn classic_fields(tracefs_path: &Path) -> Result<TracepointFields, tracefs::TracefsError> {
    if tracefs::ensure_mounted(tracefs_path)? {
        info!("mounted tracefs at {}", tracefs_path.display());
    }
    let f = |cat, name, fields: &[&str]| tracefs::field_offsets(tracefs_path, cat, name, fields);
    // Linux 6.3+; without it the other tracepoints still serve every mode's state hooks.
    let len = f("sock", "sock_send_length", &["sk", "ret"])
        .inspect_err(|e| debug!("no classic sock_send_length tracepoint: {e}"))
        .unwrap_or_else(|_| vec![0; 2]);
    let state = f(
        "sock",
        "inet_sock_set_state",
        &["skaddr", "oldstate", "newstate"],
    )?;
    let destroy = f("tcp", "tcp_destroy_sock", &["skaddr"])?;
    let reset = f("tcp", "tcp_receive_reset", &["skaddr"])?;
    let send_reset = f("tcp", "tcp_send_reset", &["skaddr"])?;
    // `reason` is newer (Linux 6.10); 0 tells the program there is none.
    let send_reset_reason = f("tcp", "tcp_send_reset", &["reason"]).map_or(0, |v| v[0]);
    Ok(TracepointFields {
        len_sk: len[0],
        len_ret: len[1],
        state_sk: state[0],
        state_old: state[1],
        state_new: state[2],
        destroy_sk: destroy[0],
        receive_reset_sk: reset[0],
        send_reset_sk: send_reset[0],
        send_reset_reason,
    })
}
