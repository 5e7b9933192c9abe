//! `agent run`: attach, serve metrics, report incidents until SIGINT/SIGTERM.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{Arc, atomic::Ordering},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{info, warn};

use crate::{
    cli::{ProbeModeArg, RunArgs, SocketStateArg, Switch},
    correlate::Correlator,
    go_runtime::{self, Candidate, Discovery, GoBinary, InspectError, Outcome},
    http::{self, AppState},
    k8s,
    listeners::ProcListeners,
    metrics::{DetectorState, Metrics, OffReason},
    pipeline::{Filter, Pipeline},
    privileges,
    probes::{Detector, Kernel, LoadOptions, ProbeError, ProbeMode, Probes, StateStore},
};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

#[derive(Debug, thiserror::Error)]
#[error("--explain-port is given {0} times; the programs take at most {max}", max = agent_common::EXPLAIN_PORTS)]
pub struct TooManyExplainPorts(usize);

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.explain_port.len() > agent_common::EXPLAIN_PORTS {
        return Err(TooManyExplainPorts(args.explain_port.len()).into());
    }
    privileges::require()?;
    // Bind before touching the kernel: a busy port fails fast and leaves nothing behind.
    let listener = std::net::TcpListener::bind(args.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| ListenError {
            addr: args.listen,
            source,
        })?;
    let pods = pod_resolver(&args)?;
    privileges::raise_memlock();
    let opts = LoadOptions {
        btf: &args.kernel.btf,
        tracefs: &args.kernel.tracefs,
        socket_state: match args.socket_state {
            SocketStateArg::Auto => None,
            SocketStateArg::SkStorage => Some(StateStore::SkStorage),
            SocketStateArg::Lru => Some(StateStore::Lru),
        },
        max_sockets: args.max_sockets,
        events_ring_bytes: args.events_ring_bytes,
        force_classic: args.classic_tracepoints,
        // `auto` is off: see the flag's help.
        detect_ebadf: args.detect_ebadf == Switch::On,
        skip_hooks: &args.kernel.skip_hook,
        empty_programs: args.empty_programs,
        explain_ports: &args.explain_port,
        go_runtime: match args.go_runtime {
            Switch::On => Some(true),
            Switch::Off => None,
            Switch::Auto => Some(false),
        },
    };
    if let Some(store) = opts.socket_state
        && let Some(reason) = Probes::option_conflict(store, &opts)
    {
        return Err(ProbeError::StoreConflict {
            store: store.as_str(),
            reason,
        }
        .into());
    }
    let kernel = Kernel::open(&opts)?;
    let mut probes = match args.probe_mode {
        ProbeModeArg::Auto => Probes::auto(&kernel, &opts)?,
        ProbeModeArg::Fentry => Probes::load(&kernel, ProbeMode::Fentry, &opts)?,
        ProbeModeArg::Kprobe => Probes::load(&kernel, ProbeMode::Kprobe, &opts)?,
        ProbeModeArg::Tracepoint => Probes::load(&kernel, ProbeMode::Tracepoint, &opts)?,
    };
    for f in &probes.failed {
        warn!("{} not attached: {}", f.hook, f.reason);
    }
    if probes.empty_programs {
        warn!(
            "--empty-programs: the programs are attached but return at once; nothing is detected"
        );
    }
    let hooks: Vec<String> = probes
        .attached
        .iter()
        .map(|a| format!("{}({})", a.name, a.via))
        .collect();
    let off: Vec<&str> = probes
        .detecting()
        .iter()
        .filter(|(_, on)| !on)
        .map(|(d, _)| d.as_str())
        .collect();
    if let Some(note) = &probes.store_note {
        info!("socket state in the LRU map; not in socket-local storage: {note}");
    }
    info!(
        mode = probes.mode.as_str(),
        state = probes.store.as_str(),
        hooks = hooks.join(" "),
        detectors_off = off.join(" "),
        listen = %args.listen,
        "probes attached"
    );
    let rst_reasons = kernel.rst_reasons.clone();
    drop(kernel);
    // The kernel's BTF, parsed to resolve offsets and again to attach, was most of the heap;
    // hand the freed pages back rather than keep them resident for the agent's whole life
    // (about 20 MiB steady without this, 8 MiB with it).
    // SAFETY: malloc_trim only releases free memory; no pointer is invalidated.
    unsafe { libc::malloc_trim(0) };

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(
            args,
            listener,
            probes.take_events()?,
            &mut probes,
            rst_reasons,
            pods,
        ))
}

/// Each detector as `/metrics` and `/healthz` report it: on, or off with why.
fn detector_states(args: &RunArgs, probes: &mut Probes) -> Vec<(Detector, DetectorState)> {
    let empty = || {
        DetectorState::Off(
            OffReason::Disabled,
            "--empty-programs: the programs return at once".into(),
        )
    };
    let mut states: Vec<(Detector, DetectorState)> = probes
        .detectors()
        .into_iter()
        .map(|(d, on)| {
            let state = match (d, on) {
                _ if probes.empty_programs => empty(),
                (_, true) => DetectorState::On,
                (Detector::WriteAfterCloseEbadf, false) if args.detect_ebadf != Switch::On => {
                    DetectorState::Off(
                        OffReason::Disabled,
                        "--detect-ebadf is off (its default)".into(),
                    )
                }
                (d, false) => DetectorState::Off(OffReason::Unavailable, probes.why_unavailable(d)),
            };
            (d, state)
        })
        .collect();
    // Loaded is not enough: where uprobes cannot be attached (a container without
    // CAP_SYS_ADMIN), every Go binary would fail, and the detector must say it is off.
    let go = match &probes.go {
        _ if args.go_runtime == Switch::Off => {
            DetectorState::Off(OffReason::Disabled, "--go-runtime off".into())
        }
        Err(reason) => DetectorState::Off(OffReason::Unavailable, reason.clone()),
        Ok(()) if probes.empty_programs => empty(),
        Ok(()) => match probes.uprobes_attach() {
            Ok(()) => DetectorState::On,
            Err(reason) => {
                warn!(
                    "Go runtime hooks off: a uprobe does not attach here ({reason}); \
                     lostwrite_detector_enabled{{detector=\"go_write_timeout\"}} is 0"
                );
                DetectorState::Off(
                    OffReason::NotAttachable,
                    format!("a uprobe does not attach here: {reason}"),
                )
            }
        },
    };
    states.push((Detector::GoWriteTimeout, go));
    states
}

/// `--kubernetes`: the pod resolver, or None when the pod labels are off.
fn pod_resolver(args: &RunArgs) -> Result<Option<k8s::Resolver>, k8s::K8sError> {
    let required = match args.kubernetes {
        Switch::Off => return Ok(None),
        Switch::Auto if !k8s::detected(&args.pod_logs_root) => return Ok(None),
        Switch::Auto => false,
        Switch::On => true,
    };
    let paths = k8s::Paths::host(args.pod_logs_root.clone());
    let resolver = k8s::Resolver::new(paths, required)?;
    if resolver.has_logs() {
        info!(sources = resolver.describe(), "pod attribution on");
    } else {
        warn!(
            sources = resolver.describe(),
            "pod attribution on, without pod names"
        );
    }
    Ok(Some(resolver))
}

async fn serve(
    args: RunArgs,
    listener: std::net::TcpListener,
    events: RingBuf<MapData>,
    probes: &mut Probes,
    rst_reasons: HashMap<u32, String>,
    pods: Option<k8s::Resolver>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(pods.is_some()));
    let detectors = detector_states(&args, probes);
    let go_on = detectors
        .iter()
        .any(|(d, state)| *d == Detector::GoWriteTimeout && state.is_on());
    metrics.set_probe_mode(probes.mode.as_str(), &detectors);
    metrics.set_socket_state(probes.store.as_str());
    match (&probes.go, go_on) {
        (Ok(()), true) => {
            info!("Go runtime hooks loaded: Go binaries running or started get them")
        }
        // Said above, or --empty-programs.
        (Ok(()), false) => {}
        (Err(reason), _) => info!("Go runtime hooks not loaded: {reason}"),
    }
    let mut stats_reader = probes.take_stats()?;
    // Walking SOCKS takes a few syscalls; a flood of scrapes shares one walk per 100 ms.
    let stats = http::Coalesced::new(move || stats_reader.read());
    let state = Arc::new(AppState {
        metrics: metrics.clone(),
        kernel_stats: Box::new(move || stats.read()),
        ready: Default::default(),
    });
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = http::router(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    if let Some(logger) = probes.take_logger() {
        let mut logger = readable(logger)?;
        tokio::spawn(async move {
            while let Ok(mut guard) = logger.readable_mut().await {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
    }

    let mut correlator = Correlator::new(ephemeral_ports(), rst_reasons);
    correlator.explain_ports = args.explain_port.clone();
    let filter = Filter {
        ports: args.port.clone(),
        comms: args.comm.clone(),
        detectors_off: probes
            .detecting()
            .iter()
            .filter(|(_, on)| !on)
            .map(|(d, _)| *d)
            .collect(),
    };
    let pipeline = Pipeline {
        correlator,
        filter,
        pods,
        metrics: metrics.clone(),
        format: args.log_format,
        warnings: Default::default(),
        pod_expiry: k8s::PodExpiry::new(std::time::Duration::from_secs(args.pod_series_grace)),
    };
    let (exec_tx, mut execs) = tokio::sync::mpsc::unbounded_channel();
    let mut reader = tokio::spawn(read_events(readable(events)?, pipeline, exec_tx));
    state.ready.store(true, Ordering::Relaxed);

    let mut go = go_on.then(GoFinder::start);
    if let Some(go) = &mut go {
        for pid in go_runtime::running() {
            go.look(pid);
        }
    }
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut server = server;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                info!("SIGINT received, detaching");
                break;
            }
            _ = term.recv() => {
                info!("SIGTERM received, detaching");
                break;
            }
            r = &mut server => {
                warn!("metrics server stopped: {r:?}");
                break;
            }
            r = &mut reader => {
                warn!("event reader stopped: {r:?}");
                break;
            }
            Some(pid) = execs.recv() => {
                if let Some(go) = &mut go {
                    go.look(pid);
                }
            }
            inspected = async {
                match &mut go {
                    Some(go) => go.results.recv().await,
                    None => std::future::pending().await,
                }
            } => match (inspected, &mut go) {
                (Some((c, found)), Some(go)) => go.attach(probes, c, found),
                // The thread that reads binaries is gone: no Go binary is hooked from now on,
                // and the detector must not say it is on.
                _ => {
                    warn!(
                        "the Go binary reader stopped: no more Go binaries are hooked; \
                         lostwrite_detector_enabled{{detector=\"go_write_timeout\"}} is 0 \
                         from now on"
                    );
                    metrics.set_detector(
                        Detector::GoWriteTimeout,
                        &DetectorState::Off(
                            OffReason::Stopped,
                            "the thread that reads Go binaries stopped".into(),
                        ),
                    );
                    go = None;
                }
            },
        }
    }
    Ok(())
}

/// Finds Go binaries for the Go runtime hooks: each process image (at start, then at every
/// exec) is looked at once, read on a thread of its own (a Go binary is read whole), and
/// hooked here.
struct GoFinder {
    discovery: Discovery,
    inspect: std::sync::mpsc::Sender<Candidate>,
    results: tokio::sync::mpsc::UnboundedReceiver<Inspected>,
}

type Inspected = (Candidate, Result<Option<GoBinary>, InspectError>);

impl GoFinder {
    fn start() -> Self {
        let (inspect, queue) = std::sync::mpsc::channel::<Candidate>();
        let (done, results) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("go-binaries".into())
            .spawn(move || {
                for c in queue {
                    let found = go_runtime::inspect(&c);
                    if done.send((c, found)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the Go binary reader");
        Self {
            discovery: Discovery::default(),
            inspect,
            results,
        }
    }

    fn look(&mut self, pid: u32) {
        if let Some(c) = self.discovery.candidate(pid) {
            let _ = self.inspect.send(c);
        }
    }

    fn attach(
        &mut self,
        probes: &mut Probes,
        c: Candidate,
        found: Result<Option<GoBinary>, InspectError>,
    ) {
        let outcome = match found {
            Ok(None) => Outcome::Settled,
            Ok(Some(binary)) => match probes.attach_go(&c.path, &binary) {
                Ok(n) => {
                    info!(
                        pid = c.pid,
                        version = binary.version,
                        "Go runtime hooks attached to {} ({n} functions; {} Go binaries hooked)",
                        std::fs::read_link(&c.path).map_or_else(
                            |_| c.path.display().to_string(),
                            |p| p.display().to_string()
                        ),
                        self.discovery.hooked() + 1,
                    );
                    Outcome::Hooked
                }
                // The process may have exited before its image could be hooked by path; the
                // next process of it gets another try.
                Err(_) if !c.path.exists() => Outcome::Retry,
                Err(e) => {
                    warn!(pid = c.pid, "Go runtime hooks not attached: {}", e.reason);
                    Outcome::Settled
                }
            },
            Err(InspectError::Read { .. }) => Outcome::Retry,
            Err(e) => {
                info!(pid = c.pid, "Go binary not hooked: {e}");
                Outcome::Settled
            }
        };
        self.discovery.done(c.key, outcome);
    }
}

async fn read_events(
    mut ring: AsyncFd<RingBuf<MapData>>,
    mut pipeline: Pipeline,
    execs: tokio::sync::mpsc::UnboundedSender<u32>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        let mut guard = tokio::select! {
            guard = ring.readable_mut() => guard?,
            _ = tick.tick() => {
                pipeline.tick(monotonic_ns());
                continue;
            }
        };
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            pipeline.record(&item, &ProcListeners);
        }
        guard.clear_ready();
        for pid in pipeline.after_batch() {
            let _ = execs.send(pid);
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the programs' `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Registers a BPF ring buffer (or anything holding one) with the runtime for readability.
fn readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: aya's map types own their fd and keep it open until they are dropped, which only
    // happens when the AsyncFd itself is dropped.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// `net.ipv4.ip_local_port_range` (it also governs IPv6), for the unknown-role port label.
fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    let parsed = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        });
    match parsed {
        Some((lo, hi)) => lo..=hi,
        None => Correlator::default().ephemeral,
    }
}
