//! Loading the eBPF object and attaching a probe mode's hooks.
//!
//! One object holds the programs of every mode and state store; [`table`] (the compatibility
//! table) says which programs a mode attaches, which detector needs which hook, and which store
//! a program can use. [`kernel`] resolves what the programs need from this kernel once,
//! [`attach`] attaches one hook, and this module loads a mode with a store and picks both.
//! Support is probed by loading and attaching for real, and every failure keeps the verifier's
//! words.

mod attach;
mod go;
mod kernel;
mod stats;
mod table;

use std::{fmt, path::Path};

pub use agent_common::Detector;
use agent_common::names;
pub use attach::hook_names;
use attach::{attach, attach_ebadf};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, PerCpuArray, RingBuf},
};
pub use kernel::Kernel;
pub use stats::{KernelStats, StatsReader};
use table::{Attach, EBADF_HOOKS};
pub use table::{ProbeMode, StateStore};
use tracing::{debug, warn};

use crate::btf;

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
    #[error("--socket-state {store} is not possible with {reason}")]
    StoreConflict { store: &'static str, reason: String },
    #[error("--socket-state {store}, but probe mode {mode} cannot keep state there: {reason}")]
    StoreUnavailable {
        store: &'static str,
        mode: &'static str,
        reason: String,
    },
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
    /// `--socket-state`: `None` takes the cheapest store that loads, `Some` requires that one.
    pub socket_state: Option<StateStore>,
    /// Entries of the LRU map of socket states.
    pub max_sockets: u32,
    /// Size of the EVENTS ring buffer in bytes (a power of two, at least a page); `None` keeps
    /// the object's own size.
    pub events_ring_bytes: Option<u32>,
    /// Skip BTF tracepoints and attach the classic ones (to exercise the fallback).
    pub force_classic: bool,
    /// Attach the EBADF detector's syscall hooks.
    pub detect_ebadf: bool,
    /// Hooks to leave out, as if this kernel lacked them.
    pub skip_hooks: &'a [String],
    /// Attach every program, each returning at once (the overhead bench's floor).
    pub empty_programs: bool,
    /// `--explain-port`s.
    pub explain_ports: &'a [u16],
    /// Load the Go runtime hooks (`--go-runtime`): `Some(true)` requires them.
    pub go_runtime: Option<bool>,
}

/// Loaded programs with their links. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    pub mode: ProbeMode,
    /// Where the programs keep socket state.
    pub store: StateStore,
    /// Why a cheaper store was not used, if one was passed over.
    pub store_note: Option<String>,
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
    /// Loads the object and attaches `mode`'s hooks, with the cheapest state store whose
    /// programs all load and attach (or the one `--socket-state` names). Fails when the mode
    /// gives no core detector; a mode missing only some hooks loads with those detectors off.
    pub fn load(
        kernel: &Kernel,
        mode: ProbeMode,
        opts: &LoadOptions<'_>,
    ) -> Result<Self, ProbeError> {
        let mut passed_over: Option<String> = None;
        for &store in StateStore::ALL.iter() {
            let reason = match Self::rules_out(mode, store, opts) {
                Some(reason) => reason,
                None => match Self::load_with(kernel, mode, store, opts) {
                    // The last store takes what it gets: some detectors may be off.
                    Ok(p) if store == StateStore::Lru || p.only_skipped() => {
                        return Ok(Self {
                            store_note: passed_over,
                            ..p
                        });
                    }
                    Ok(p) => Failure::list(&p.failed),
                    Err(e) if store == StateStore::Lru => return Err(e),
                    Err(e) => e.to_string(),
                },
            };
            if opts.socket_state == Some(store) {
                return Err(ProbeError::StoreUnavailable {
                    store: store.as_str(),
                    mode: mode.as_str(),
                    reason,
                });
            }
            if opts.socket_state.is_none() {
                debug!(
                    "probe mode {}: state store {} unavailable: {reason}",
                    mode.as_str(),
                    store.as_str()
                );
                passed_over = Some(format!("{}: {reason}", store.as_str()));
            }
        }
        unreachable!("the LRU store either loads or fails the mode")
    }

    /// Why `store` is not tried in `mode` with these options.
    fn rules_out(mode: ProbeMode, store: StateStore, opts: &LoadOptions<'_>) -> Option<String> {
        if opts.socket_state.is_some_and(|s| s != store) {
            return Some(format!("--socket-state {}", opts.socket_state?.as_str()));
        }
        if !mode.stores().contains(&store) {
            return Some(format!(
                "{} mode's programs see the socket as a plain address",
                mode.as_str()
            ));
        }
        Self::option_conflict(store, opts)
    }

    /// Why the options rule `store` out in every mode.
    pub fn option_conflict(store: StateStore, opts: &LoadOptions<'_>) -> Option<String> {
        if store == StateStore::Lru {
            return None;
        }
        if opts.force_classic {
            return Some(
                "classic tracepoints (--classic-tracepoints), whose programs see the socket as \
                 a plain address"
                    .to_owned(),
            );
        }
        if opts.detect_ebadf {
            return Some(
                "--detect-ebadf, whose syscall hooks see the socket as a plain address".to_owned(),
            );
        }
        None
    }

    /// Attaches the EBADF detector's syscall hooks (`agent check` tries them on any load; they
    /// read socket state from the LRU map only).
    pub fn attach_ebadf(&mut self, kernel: &Kernel, skip_hooks: &[String]) -> bool {
        let skipped = EBADF_HOOKS
            .iter()
            .any(|(name, _)| skip_hooks.iter().any(|s| s == name));
        if !kernel.fd_offsets || skipped {
            return false;
        }
        self.ebadf = attach_ebadf(&mut self.ebpf, &kernel.aya_btf);
        if self.ebadf {
            self.attached
                .extend(EBADF_HOOKS.iter().map(|(name, _)| Attached {
                    name,
                    via: Via::Btf,
                }));
        }
        self.ebadf
    }

    /// Every hook that did not attach was left out by `--skip-hook`.
    fn only_skipped(&self) -> bool {
        self.failed.iter().all(|f| f.reason == SKIPPED)
    }

    /// Loads the object and attaches `mode`'s hooks with the programs for `store`.
    fn load_with(
        kernel: &Kernel,
        mode: ProbeMode,
        store: StateStore,
        opts: &LoadOptions<'_>,
    ) -> Result<Self, ProbeError> {
        let mut loader = EbpfLoader::new();
        let lru_entries = match store {
            StateStore::Lru => opts.max_sockets,
            // Unused: the smallest map the kernel creates.
            StateStore::SkStorage => 1,
        };
        loader
            .btf(Some(&kernel.aya_btf))
            .override_global(names::CONFIG, &kernel.config, true)
            .map_max_entries(names::SOCKS, lru_entries);
        if let Some(bytes) = opts.events_ring_bytes {
            loader.map_max_entries(names::EVENTS, bytes);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(chain(&e)))?;
        let mut attached = Vec::new();
        let mut failed = Vec::new();
        for hook in mode.hooks().filter(|h| h.used_with(store)) {
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
                    reason: SKIPPED.to_owned(),
                });
                continue;
            }
            match attach(&mut ebpf, kernel, hook, arity, opts.force_classic, store) {
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
            store,
            store_note: None,
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
        if opts.detect_ebadf {
            probes.attach_ebadf(kernel, opts.skip_hooks);
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
        if best.is_none()
            && reasons
                .iter()
                .any(|r| r.contains("Operation not permitted"))
            && let Some(hint) = crate::privileges::seccomp_hint()
        {
            reasons.push(hint);
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

    /// Why `d` is not given by this mode here: the hooks it needs that did not attach, each
    /// with its error.
    pub fn why_unavailable(&self, d: Detector) -> String {
        let missing: Vec<String> = self
            .mode
            .hooks()
            .filter(|h| h.needed_by.contains(&d))
            .filter_map(|h| self.failed.iter().find(|f| f.hook == h.target))
            .map(|f| format!("{} not attached: {}", f.hook, f.reason))
            .collect();
        if missing.is_empty() {
            format!("its hooks did not attach in {} mode", self.mode.as_str())
        } else {
            missing.join("; ")
        }
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
        // Socket-local storage has no entries to count: nothing is ever evicted from it.
        let socks = match (self.store, self.ebpf.take_map(names::SOCKS)) {
            (StateStore::SkStorage, _) => None,
            (StateStore::Lru, Some(Map::LruHashMap(data))) => Some(data),
            (StateStore::Lru, _) => return Err(ProbeError::Map(names::SOCKS)),
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

/// The reason recorded for a hook `--skip-hook` left out.
const SKIPPED: &str = "skipped (--skip-hook)";

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
