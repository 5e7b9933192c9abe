//! Loading the eBPF object and attaching a probe mode's hooks.
//!
//! One object holds the programs of every mode; [`table`] says which programs a mode attaches
//! and which detector needs which hook. Support is probed by loading and attaching for real, and
//! every failure keeps the verifier's words.

mod go;
mod stats;
mod table;

use std::{collections::HashMap, fmt, path::Path};

pub use agent_common::Detector;
use agent_common::{Config, TracepointFields, names};
use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, TracePoint},
};
pub use stats::{KernelStats, StatsReader};
pub use table::ProbeMode;
use table::{Attach, EBADF_HOOKS, Hook};
use tracing::{debug, info, warn};

use crate::{btf, tracefs};

/// The object built from agent-ebpf by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lostwrite"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("cannot parse kernel BTF at {path} for BTF programs: {source}")]
    AyaBtf {
        path: String,
        #[source]
        source: aya::BtfError,
    },
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("probe mode {mode} cannot run here: {}", Failure::list(.failures))]
    ModeUnavailable {
        mode: &'static str,
        failures: Vec<Failure>,
    },
    #[error("no probe mode works on this kernel: {}", .0.join("; "))]
    NoMode(Vec<String>),
    #[error("kernel map {0} missing from the eBPF object")]
    Map(&'static str),
    #[error("--go-runtime on, but the Go runtime hooks cannot load here: {0}")]
    GoRuntime(String),
}

/// How a hook got attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Btf,
    Classic,
    Fentry,
    Kprobe,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Btf => "btf",
            Self::Classic => "classic",
            Self::Fentry => "trampoline",
            Self::Kprobe => "kprobe",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Attached {
    pub name: &'static str,
    pub via: Via,
}

/// Where attaching a hook stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The kernel refused the program (verifier, missing function, policy).
    Load,
    /// The program loaded but the kernel would not hook it up.
    Attach,
}

/// Why a hook did not attach (with the verifier's message when there is one).
#[derive(Clone, Debug)]
pub struct HookError {
    pub step: Step,
    pub reason: String,
}

impl HookError {
    fn load(e: impl Into<String>) -> Self {
        Self {
            step: Step::Load,
            reason: e.into(),
        }
    }

    fn attach(e: impl Into<String>) -> Self {
        Self {
            step: Step::Attach,
            reason: e.into(),
        }
    }
}

/// A hook that did not attach.
#[derive(Clone, Debug)]
pub struct Failure {
    pub hook: &'static str,
    pub step: Step,
    pub reason: String,
}

impl Failure {
    /// "a, b: reason; c: other reason": hooks refused alike (every fentry program where the
    /// kernel forbids trampolines) share one reason.
    pub fn list(failures: &[Self]) -> String {
        let mut groups: Vec<(Vec<&str>, &str)> = Vec::new();
        for f in failures {
            match groups.iter_mut().find(|(_, r)| *r == f.reason) {
                Some((hooks, _)) => hooks.push(f.hook),
                None => groups.push((vec![f.hook], &f.reason)),
            }
        }
        let all: Vec<String> = groups
            .iter()
            .map(|(hooks, reason)| format!("{}: {reason}", hooks.join(", ")))
            .collect();
        all.join("; ")
    }
}

pub struct LoadOptions<'a> {
    pub btf: &'a Path,
    pub tracefs: &'a Path,
    pub max_sockets: u32,
    /// Size of the EVENTS ring buffer in bytes (a power of two, at least a page); `None` keeps
    /// the object's own size.
    pub events_ring_bytes: Option<u32>,
    /// Skip BTF tracepoints and attach the classic ones (to exercise the fallback).
    pub force_classic: bool,
    /// Attach the EBADF detector's syscall hooks; `None` leaves it to the mode's default.
    pub detect_ebadf: Option<bool>,
    /// Hooks to leave out, as if this kernel lacked them.
    pub skip_hooks: &'a [String],
    /// Attach every program, each returning at once (the overhead bench's floor).
    pub empty_programs: bool,
    /// `--explain-port`s.
    pub explain_ports: &'a [u16],
    /// Load the Go runtime hooks (`--go-runtime`): `Some(true)` requires them.
    pub go_runtime: Option<bool>,
}

/// What the programs need from this kernel, resolved once for every mode tried.
pub struct Kernel {
    /// Parameter counts of every hooked function and tracepoint, by (target, is tracepoint);
    /// resolved up front so the btf-rs copy of the BTF is freed before aya parses its own.
    arities: HashMap<(&'static str, bool), Option<usize>>,
    aya_btf: Btf,
    config: Config,
    /// Why the classic tracepoints cannot serve as a fallback, if they cannot.
    classic_unavailable: Option<String>,
    fd_offsets: bool,
    /// `enum sk_rst_reason` of this kernel, value to name (empty before Linux 6.10).
    pub rst_reasons: HashMap<u32, String>,
    /// Whether the user registers are found by `bpf_task_pt_regs`, or why sent messages cannot
    /// be read at all.
    peek: Result<bool, String>,
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
fn explain_ports(ports: &[u16]) -> [u16; agent_common::EXPLAIN_PORTS] {
    let mut out = [0; agent_common::EXPLAIN_PORTS];
    for (slot, port) in out.iter_mut().zip(ports) {
        *slot = *port;
    }
    out
}

/// Every hook of every mode, for `--skip-hook`.
pub fn hook_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = ProbeMode::ALL
        .iter()
        .flat_map(|m| m.hooks().map(|h| h.target))
        .chain(EBADF_HOOKS.iter().map(|(name, _)| *name))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Loaded programs with their links. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    pub mode: ProbeMode,
    pub attached: Vec<Attached>,
    /// Hooks that did not attach; the detectors that need them are off.
    pub failed: Vec<Failure>,
    /// The EBADF detector's hooks are attached.
    pub ebadf: bool,
    /// `--empty-programs`: attached, detecting nothing (every detector reports off).
    pub empty_programs: bool,
    /// The Go runtime hooks are loaded (attached per binary, see `Probes::attach_go`), or why
    /// not.
    pub go: Result<(), String>,
}

impl Probes {
    /// Loads the object and attaches `mode`'s hooks. Fails when the mode gives no core detector;
    /// a mode missing only some hooks loads with those detectors off.
    pub fn load(
        kernel: &Kernel,
        mode: ProbeMode,
        opts: &LoadOptions<'_>,
    ) -> Result<Self, ProbeError> {
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&kernel.aya_btf))
            .override_global(names::CONFIG, &kernel.config, true)
            .map_max_entries(names::SOCKS, opts.max_sockets);
        if let Some(bytes) = opts.events_ring_bytes {
            loader.map_max_entries(names::EVENTS, bytes);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(chain(&e)))?;
        let mut attached = Vec::new();
        let mut failed = Vec::new();
        for hook in mode.hooks() {
            let tp = matches!(hook.attach, Attach::Tracepoint { .. });
            let arity = kernel.arities.get(&(hook.target, tp)).copied().flatten();
            if hook.if_present && arity.is_none() {
                debug!("{} is not in this kernel; not hooked", hook.target);
                continue;
            }
            if opts.skip_hooks.iter().any(|s| s == hook.target) {
                failed.push(Failure {
                    hook: hook.target,
                    step: Step::Load,
                    reason: "skipped (--skip-hook)".to_owned(),
                });
                continue;
            }
            match attach(&mut ebpf, kernel, hook, arity, opts.force_classic) {
                Ok(via) => attached.push(Attached {
                    name: hook.target,
                    via,
                }),
                Err(HookError { step, reason }) => failed.push(Failure {
                    hook: hook.target,
                    step,
                    reason,
                }),
            }
        }
        let mut probes = Self {
            ebpf,
            mode,
            attached,
            failed,
            ebadf: false,
            empty_programs: false,
            go: Err("off (--go-runtime off)".to_owned()),
        };
        // A "fentry" mode without a single trampoline would be another mode misnamed.
        let own = |a: &Attached| mode.own_hooks().iter().any(|h| h.target == a.name);
        let nothing_own = !probes.attached.iter().any(own);
        let no_detector = probes
            .detectors()
            .iter()
            .all(|(d, on)| !on || !Detector::CORE.contains(d));
        if nothing_own || no_detector {
            return Err(ProbeError::ModeUnavailable {
                mode: mode.as_str(),
                failures: probes.failed,
            });
        }
        let ebadf_skipped = EBADF_HOOKS
            .iter()
            .any(|(name, _)| opts.skip_hooks.iter().any(|s| s == name));
        if kernel.fd_offsets
            && !ebadf_skipped
            && opts.detect_ebadf.unwrap_or(mode.ebadf_by_default())
        {
            probes.ebadf = attach_ebadf(&mut probes.ebpf, &kernel.aya_btf);
            if probes.ebadf {
                probes
                    .attached
                    .extend(EBADF_HOOKS.iter().map(|(name, _)| Attached {
                        name,
                        via: Via::Btf,
                    }));
            }
        }
        if let Some(required) = opts.go_runtime {
            probes.go = probes.load_go(kernel).map_err(|e| e.reason);
            if let (true, Err(reason)) = (required, &probes.go) {
                return Err(ProbeError::GoRuntime(reason.clone()));
            }
        }
        probes.empty_programs = opts.empty_programs;
        Ok(probes)
    }

    /// `--probe-mode auto`: the first mode that gives all three detectors, trying the cheapest
    /// first; failing that, the one that gives the most. Each mode that falls short is logged
    /// once, with its reasons.
    pub fn auto(kernel: &Kernel, opts: &LoadOptions<'_>) -> Result<Self, ProbeError> {
        let mut best: Option<Self> = None;
        let mut reasons = Vec::new();
        for mode in ProbeMode::ALL {
            match Self::load(kernel, mode, opts) {
                Ok(p) if p.complete() => return Ok(p),
                Ok(p) => {
                    warn!(
                        "probe mode {} gives only some detectors ({}); trying the next",
                        mode.as_str(),
                        Failure::list(&p.failed)
                    );
                    reasons.push(format!("{}: partial", mode.as_str()));
                    if best.as_ref().is_none_or(|b| p.enabled() > b.enabled()) {
                        best = Some(p);
                    }
                }
                Err(e) => {
                    warn!("{e}; trying the next mode");
                    reasons.push(e.to_string());
                }
            }
        }
        best.ok_or(ProbeError::NoMode(reasons))
    }

    /// Every core detector works.
    pub fn complete(&self) -> bool {
        Detector::CORE
            .iter()
            .all(|d| self.detectors().contains(&(*d, true)))
    }

    fn enabled(&self) -> usize {
        self.detectors().iter().filter(|(_, on)| *on).count()
    }

    /// Each detector and whether it works in this mode on this kernel: a detector is off when a
    /// hook it needs failed.
    pub fn detectors(&self) -> [(Detector, bool); 4] {
        Detector::ALL.map(|d| {
            let on = match d {
                Detector::WriteAfterCloseEbadf => self.ebadf,
                d => !self.mode.hooks().any(|h| {
                    h.needed_by.contains(&d) && self.failed.iter().any(|f| f.hook == h.target)
                }),
            };
            (d, on)
        })
    }

    /// What the agent detects: [`Probes::detectors`], and nothing at all with
    /// `--empty-programs`, whose programs return before they do anything.
    pub fn detecting(&self) -> [(Detector, bool); 4] {
        self.detectors()
            .map(|(d, on)| (d, on && !self.empty_programs))
    }

    /// The ring buffer the programs write records to.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(ProbeError::Map(names::EVENTS))?;
        RingBuf::try_from(map).map_err(|_| ProbeError::Map(names::EVENTS))
    }

    /// Reader for the programs' per-CPU counters and the SOCKS map's occupancy.
    pub fn take_stats(&mut self) -> Result<StatsReader, ProbeError> {
        let map = self
            .ebpf
            .take_map(names::STATS)
            .ok_or(ProbeError::Map(names::STATS))?;
        let array = PerCpuArray::try_from(map).map_err(|_| ProbeError::Map(names::STATS))?;
        let socks = match self.ebpf.take_map(names::SOCKS) {
            Some(Map::LruHashMap(data)) => data,
            _ => return Err(ProbeError::Map(names::SOCKS)),
        };
        Ok(StatsReader::new(array, socks))
    }

    /// Starts forwarding the programs' aya-log records to this process's logger.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf)
            .inspect_err(|e| warn!("kernel-side logs unavailable: {e}"))
            .ok()
    }
}

/// Attaches one hook; `arity` is the number of parameters of its function or tracepoint in
/// this kernel's BTF.
fn attach(
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    hook: &Hook,
    arity: Option<usize>,
    force_classic: bool,
) -> Result<Via, HookError> {
    match &hook.attach {
        Attach::Tracepoint {
            category,
            btf_program,
            btf_extended,
            classic_program,
        } => {
            let program = match btf_extended {
                Some((program, args)) if arity.is_some_and(|a| a >= *args) => program,
                _ => btf_program,
            };
            let btf_err = if force_classic {
                "not tried (--classic-tracepoints)".to_owned()
            } else {
                match attach_btf(ebpf, program, hook.target, &kernel.aya_btf) {
                    Ok(()) => return Ok(Via::Btf),
                    Err(e) => e.reason,
                }
            };
            let classic = match &kernel.classic_unavailable {
                Some(e) => Err(HookError::load(e.clone())),
                None => {
                    if !force_classic {
                        warn!(
                            "BTF tracepoint {} unavailable ({btf_err}); using the classic \
                             tracepoint",
                            hook.target
                        );
                    }
                    attach_classic(ebpf, classic_program, category, hook.target)
                }
            };
            classic.map(|()| Via::Classic).map_err(|e| HookError {
                step: e.step,
                reason: format!(
                    "BTF tracepoint: {btf_err}; classic tracepoint: {}",
                    e.reason
                ),
            })
        }
        Attach::Trampoline(variants) => {
            let program = variant(hook.target, variants, arity)?;
            attach_trampoline(ebpf, program, hook.target, &kernel.aya_btf)?;
            Ok(Via::Fentry)
        }
        Attach::Kprobe { entry, ret } => {
            let program = variant(hook.target, entry, arity)?;
            attach_kprobe(ebpf, program, hook.target)?;
            if let Some(ret) = ret {
                attach_kprobe(ebpf, ret, hook.target)?;
            }
            Ok(Via::Kprobe)
        }
    }
}

/// The program written for this kernel's parameter list of `function`.
fn variant(
    function: &str,
    variants: &[(usize, &'static str)],
    arity: Option<usize>,
) -> Result<&'static str, HookError> {
    let arity =
        arity.ok_or_else(|| HookError::load(format!("{function} is not in the kernel's BTF")))?;
    variants
        .iter()
        .find(|(n, _)| *n == arity)
        .map(|(_, p)| *p)
        .ok_or_else(|| {
            HookError::load(format!(
                "{function} takes {arity} parameters here, a form not supported"
            ))
        })
}

/// Attaches both EBADF hooks, or neither: a lone sys_enter would slow every syscall for nothing.
fn attach_ebadf(ebpf: &mut Ebpf, btf: &Btf) -> bool {
    for (i, (tracepoint, program)) in EBADF_HOOKS.iter().enumerate() {
        if let Err(e) = attach_btf(ebpf, program, tracepoint, btf) {
            warn!(
                "EBADF detector unavailable: cannot attach {tracepoint}: {}",
                e.reason
            );
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

fn attach_btf(
    ebpf: &mut Ebpf,
    program: &str,
    tracepoint: &str,
    btf: &Btf,
) -> Result<(), HookError> {
    let prog: &mut BtfTracePoint = program_mut(ebpf, program)?;
    prog.load(tracepoint, btf)
        .map_err(|e| HookError::load(chain(&e)))?;
    prog.attach().map_err(|e| HookError::attach(chain(&e)))?;
    Ok(())
}

fn attach_classic(
    ebpf: &mut Ebpf,
    program: &str,
    category: &str,
    name: &str,
) -> Result<(), HookError> {
    let prog: &mut TracePoint = program_mut(ebpf, program)?;
    prog.load().map_err(|e| HookError::load(chain(&e)))?;
    prog.attach(category, name)
        .map_err(|e| HookError::attach(chain(&e)))?;
    Ok(())
}

/// fentry or fexit, whichever the program was written as.
fn attach_trampoline(
    ebpf: &mut Ebpf,
    program: &str,
    function: &str,
    btf: &Btf,
) -> Result<(), HookError> {
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| HookError::load(format!("program {program} missing from the object")))?;
    if let Ok(p) = <&mut FEntry>::try_from(&mut *prog) {
        p.load(function, btf)
            .map_err(|e| HookError::load(chain(&e)))?;
        p.attach().map_err(|e| HookError::attach(chain(&e)))?;
        return Ok(());
    }
    let p: &mut FExit = prog.try_into().map_err(|e| HookError::load(chain(&e)))?;
    p.load(function, btf)
        .map_err(|e| HookError::load(chain(&e)))?;
    p.attach().map_err(|e| HookError::attach(chain(&e)))?;
    Ok(())
}

/// A kprobe or kretprobe on `function`. A program serving several functions (the kretprobe of
/// tcp_sendmsg and tcp_sendpage) is loaded once and attached to each.
fn attach_kprobe(ebpf: &mut Ebpf, program: &str, function: &str) -> Result<(), HookError> {
    let prog: &mut KProbe = program_mut(ebpf, program)?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| HookError::load(chain(&e)))?;
    }
    prog.attach(function, 0)
        .map_err(|e| HookError::attach(chain(&e)))?;
    Ok(())
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, HookError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| HookError::load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e| HookError::load(chain(&e)))
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
    let len = f("sock", "sock_send_length", &["sk", "ret", "flags"])
        .inspect_err(|e| debug!("no classic sock_send_length tracepoint: {e}"))
        .unwrap_or_else(|_| vec![0; 3]);
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
