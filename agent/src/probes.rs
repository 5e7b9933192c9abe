//! Loading the eBPF object and attaching one probe mode's hooks.
//!
//! A probe mode is a table of hooks. Each hook names a kernel tracepoint and the two programs
//! that can serve it: the BTF tracepoint (preferred: typed arguments, ~7x cheaper here) and the
//! classic tracefs tracepoint (fallback, needs the record layout from tracefs).

use std::{collections::HashMap, path::Path};

use agent_common::{Config, TracepointFields, names, stat};
use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use tracing::{info, warn};

use crate::{btf, metrics::KernelStats, tracefs};

/// The object built from agent-ebpf by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lostwrite"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    Tracepoint,
}

impl ProbeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
        }
    }

    fn hooks(self) -> &'static [Hook] {
        match self {
            Self::Tracepoint => TRACEPOINT_HOOKS,
        }
    }

    /// Detectors this mode feeds, as `(detector, enabled)`, given whether the EBADF hooks
    /// attached.
    pub fn detectors(self, ebadf: bool) -> [(&'static str, bool); 4] {
        match self {
            Self::Tracepoint => [
                ("unanswered_close", true),
                ("write_after_close", true),
                ("undelivered_bytes", true),
                ("write_after_close_ebadf", ebadf),
            ],
        }
    }

    /// Whether `--detect-ebadf auto` turns the EBADF hooks on in this mode. In tracepoint mode
    /// they are raw syscall tracepoints, which cost 2.4-3.7 % of wrk->nginx throughput here,
    /// over the 1 % budget.
    pub fn ebadf_by_default(self) -> bool {
        match self {
            Self::Tracepoint => false,
        }
    }
}

struct Hook {
    category: &'static str,
    name: &'static str,
    btf_program: &'static str,
    /// A variant that reads more arguments, used when the kernel's tracepoint has at least that
    /// many: `(program, arguments)`.
    btf_extended: Option<(&'static str, usize)>,
    classic_program: &'static str,
    /// Without it the mode's detectors would be wrong, not just less precise.
    required: bool,
}

const TRACEPOINT_HOOKS: &[Hook] = &[
    Hook {
        category: "sock",
        name: "sock_recv_length",
        btf_program: "btf_sock_recv_length",
        btf_extended: None,
        classic_program: "tp_sock_recv_length",
        required: true,
    },
    Hook {
        category: "sock",
        name: "sock_send_length",
        btf_program: "btf_sock_send_length",
        btf_extended: None,
        classic_program: "tp_sock_send_length",
        required: true,
    },
    Hook {
        category: "sock",
        name: "inet_sock_set_state",
        btf_program: "btf_inet_sock_set_state",
        btf_extended: None,
        classic_program: "tp_inet_sock_set_state",
        required: true,
    },
    Hook {
        category: "tcp",
        name: "tcp_destroy_sock",
        btf_program: "btf_tcp_destroy_sock",
        btf_extended: None,
        classic_program: "tp_tcp_destroy_sock",
        required: true,
    },
    // Tells a close caused by the peer's RST from one the process started.
    Hook {
        category: "tcp",
        name: "tcp_receive_reset",
        btf_program: "btf_tcp_receive_reset",
        btf_extended: None,
        classic_program: "tp_tcp_receive_reset",
        required: false,
    },
    // Local aborts: close() with unread input, SO_LINGER{1,0}, memory pressure, keepalive. The
    // reset reason argument exists since Linux 6.10.
    Hook {
        category: "tcp",
        name: "tcp_send_reset",
        btf_program: "btf_tcp_send_reset",
        btf_extended: Some(("btf_tcp_send_reset_reason", 3)),
        classic_program: "tp_tcp_send_reset",
        required: false,
    },
];

/// The EBADF detector's hooks as (tracepoint, program): close() entry and write-family exits.
/// BTF only (no classic fallback), and both or neither.
const EBADF_HOOKS: [(&str, &str); 2] =
    [("sys_enter", "btf_sys_enter"), ("sys_exit", "btf_sys_exit")];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("cannot parse kernel BTF at {path} for BTF tracepoints: {source}")]
    AyaBtf {
        path: String,
        #[source]
        source: aya::BtfError,
    },
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("cannot attach {hook}: BTF tracepoint: {btf}; classic tracepoint: {classic}")]
    Hook {
        hook: &'static str,
        btf: String,
        classic: String,
    },
    #[error("kernel map {0} missing from the eBPF object")]
    Map(&'static str),
    #[error("probe mode {0} is not available in this version of the agent")]
    NotBuilt(&'static str),
}

/// How a hook got attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Btf,
    Classic,
}

#[derive(Clone, Debug)]
pub struct Attached {
    pub name: &'static str,
    pub via: Via,
}

pub struct LoadOptions<'a> {
    pub btf: &'a Path,
    pub tracefs: &'a Path,
    pub max_sockets: u32,
    /// Skip BTF tracepoints and attach the classic ones (to exercise the fallback).
    pub force_classic: bool,
    /// Attach the EBADF detector's syscall hooks.
    pub detect_ebadf: bool,
}

/// Loaded programs with their links. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    pub mode: ProbeMode,
    pub attached: Vec<Attached>,
    /// The EBADF detector's hooks are attached.
    pub ebadf: bool,
    /// `enum sk_rst_reason` of this kernel, value to name (empty before Linux 6.10).
    pub rst_reasons: HashMap<u32, String>,
}

impl Probes {
    /// Loads the object and attaches `mode`'s hooks.
    pub fn load(mode: ProbeMode, opts: &LoadOptions<'_>) -> Result<Self, ProbeError> {
        let kernel_btf = btf::open(opts.btf)?;
        let offsets = btf::sock_offsets(&kernel_btf)?;
        let rst_reasons = btf::enum_names(&kernel_btf, "sk_rst_reason");
        let classic = classic_fields(opts.tracefs);
        if let Err(e) = &classic {
            info!("classic tracepoints unavailable as a fallback: {e}");
        }
        let fd_offsets = if opts.detect_ebadf {
            btf::fd_offsets(&kernel_btf)
                .inspect_err(|e| warn!("EBADF detector unavailable: {e}"))
                .ok()
        } else {
            None
        };
        let config = Config {
            sock: offsets,
            tp: classic.as_ref().copied().unwrap_or_default(),
            fd: fd_offsets.unwrap_or_default(),
        };
        let aya_btf = Btf::parse_file(opts.btf, Endianness::default()).map_err(|source| {
            ProbeError::AyaBtf {
                path: opts.btf.display().to_string(),
                source,
            }
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global(names::CONFIG, &config, true)
            .map_max_entries(names::SOCKS, opts.max_sockets)
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(chain(&e)))?;
        let mut attached = Vec::new();
        let btf_for_hooks = (!opts.force_classic).then_some(&aya_btf);
        for hook in mode.hooks() {
            let arity = btf::tracepoint_arity(&kernel_btf, hook.name);
            match attach(
                &mut ebpf,
                hook,
                arity,
                btf_for_hooks,
                classic.as_ref().err(),
            ) {
                Ok(via) => attached.push(Attached {
                    name: hook.name,
                    via,
                }),
                Err(e) if !hook.required => warn!("optional hook skipped: {e}"),
                Err(e) => return Err(e),
            }
        }
        let ebadf = fd_offsets.is_some() && attach_ebadf(&mut ebpf, &aya_btf);
        if ebadf {
            attached.extend(EBADF_HOOKS.iter().map(|(name, _)| Attached {
                name,
                via: Via::Btf,
            }));
        }
        Ok(Self {
            ebpf,
            mode,
            attached,
            ebadf,
            rst_reasons,
        })
    }

    /// The ring buffer the programs write records to.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(ProbeError::Map(names::EVENTS))?;
        RingBuf::try_from(map).map_err(|_| ProbeError::Map(names::EVENTS))
    }

    /// Reader for the programs' per-CPU counters.
    pub fn take_stats(&mut self) -> Result<StatsReader, ProbeError> {
        let map = self
            .ebpf
            .take_map(names::STATS)
            .ok_or(ProbeError::Map(names::STATS))?;
        let array = PerCpuArray::try_from(map).map_err(|_| ProbeError::Map(names::STATS))?;
        Ok(StatsReader { array })
    }

    /// Starts forwarding the programs' aya-log records to this process's logger.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf)
            .inspect_err(|e| warn!("kernel-side logs unavailable: {e}"))
            .ok()
    }
}

pub struct StatsReader {
    array: PerCpuArray<MapData, u64>,
}

impl StatsReader {
    pub fn read(&self) -> KernelStats {
        let total = |idx: u32| -> u64 {
            self.array
                .get(&idx, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        KernelStats {
            events_dropped: total(stat::EVENTS_DROPPED),
            events_sent: total(stat::EVENTS_SENT),
            sockets_tracked: total(stat::SOCKETS_TRACKED),
            sockets_released: total(stat::SOCKETS_RELEASED),
        }
    }
}

fn attach(
    ebpf: &mut Ebpf,
    hook: &Hook,
    arity: Option<usize>,
    btf: Option<&Btf>,
    classic_unavailable: Option<&tracefs::TracefsError>,
) -> Result<Via, ProbeError> {
    let program = match hook.btf_extended {
        Some((program, args)) if arity.is_some_and(|a| a >= args) => program,
        _ => hook.btf_program,
    };
    let btf_err = match btf.map(|btf| attach_btf(ebpf, program, hook.name, btf)) {
        Some(Ok(())) => return Ok(Via::Btf),
        Some(Err(e)) => e,
        None => "not tried (--classic-tracepoints)".to_owned(),
    };
    let classic = match classic_unavailable {
        Some(e) => Err(e.to_string()),
        None => {
            warn!(
                "BTF tracepoint {} unavailable ({btf_err}); using the classic tracepoint",
                hook.name
            );
            attach_classic(ebpf, hook)
        }
    };
    classic
        .map(|()| Via::Classic)
        .map_err(|classic| ProbeError::Hook {
            hook: hook.name,
            btf: btf_err,
            classic,
        })
}

/// Attaches both EBADF hooks, or neither: a lone sys_enter would slow every syscall for nothing.
fn attach_ebadf(ebpf: &mut Ebpf, btf: &Btf) -> bool {
    for (i, (tracepoint, program)) in EBADF_HOOKS.iter().enumerate() {
        if let Err(e) = attach_btf(ebpf, program, tracepoint, btf) {
            warn!("EBADF detector unavailable: cannot attach {tracepoint}: {e}");
            for (_, done) in &EBADF_HOOKS[..i] {
                let unloaded = ebpf
                    .program_mut(done)
                    .and_then(|p| <&mut BtfTracePoint>::try_from(p).ok())
                    .map(BtfTracePoint::unload);
                if let Some(Err(e)) = unloaded {
                    warn!("cannot detach {done}: {e}");
                }
            }
            return false;
        }
    }
    true
}

fn attach_btf(ebpf: &mut Ebpf, program: &str, tracepoint: &str, btf: &Btf) -> Result<(), String> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or("program missing from the object")?
        .try_into()
        .map_err(|e| chain(&e))?;
    prog.load(tracepoint, btf).map_err(|e| chain(&e))?;
    prog.attach().map_err(|e| chain(&e))?;
    Ok(())
}

fn attach_classic(ebpf: &mut Ebpf, hook: &Hook) -> Result<(), String> {
    let prog: &mut TracePoint = ebpf
        .program_mut(hook.classic_program)
        .ok_or("program missing from the object")?
        .try_into()
        .map_err(|e| chain(&e))?;
    prog.load().map_err(|e| chain(&e))?;
    prog.attach(hook.category, hook.name)
        .map_err(|e| chain(&e))?;
    Ok(())
}

/// Record layouts of the classic tracepoints, from tracefs.
fn classic_fields(tracefs_path: &Path) -> Result<TracepointFields, tracefs::TracefsError> {
    if tracefs::ensure_mounted(tracefs_path)? {
        info!("mounted tracefs at {}", tracefs_path.display());
    }
    let f = |cat, name, fields: &[&str]| tracefs::field_offsets(tracefs_path, cat, name, fields);
    // sock_send_length and sock_recv_length share one event class (sock_msg_length in
    // include/trace/events/sock.h), so one layout serves both.
    let len = f("sock", "sock_recv_length", &["sk", "ret", "flags"])?;
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
        len_flags: len[2],
        state_sk: state[0],
        state_old: state[1],
        state_new: state[2],
        destroy_sk: destroy[0],
        receive_reset_sk: reset[0],
        send_reset_sk: send_reset[0],
        send_reset_reason,
    })
}

/// An error and its sources on one line ("a: b: c"), so verifier output is never lost.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}
