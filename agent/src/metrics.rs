//! Prometheus series (README: Metrics).

use std::collections::{HashMap, HashSet};

use agent_common::Detector;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::{
    correlate::{Detail, Explained},
    k8s::{Attributed, PodKey},
    probes::KernelStats,
};

/// Delay from the last read to the close: sub-millisecond panics up to proxy/LB idle timeouts.
const DELAY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A loss family whose series carry pod labels, to drop a gone pod's series from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Family {
    Unanswered,
    UnansweredDelay,
    WritesAfterClose,
    WritesAfterCloseBytes,
    AbortedConnections,
    UndeliveredBytes,
    GoWriteTimeouts,
}

/// The series each pod's incidents made, as (family, label values in the family's order).
type PodSeries = HashMap<PodKey, HashSet<(Family, Vec<String>)>>;

/// Why a detector is off: the `reason` of `lostwrite_detector_off`, bounded. What a person
/// reads (the hook, the error) goes to `/healthz`'s body and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffReason {
    /// A flag turned it off, or its default is off.
    Disabled,
    /// This kernel and probe mode cannot run it: a hook it needs did not attach, or its
    /// programs did not load.
    Unavailable,
    /// Its programs loaded, but cannot be attached here (a container's confinement refuses
    /// uprobes).
    NotAttachable,
    /// It worked, then stopped (its programs, or the thread that serves them).
    Stopped,
}

impl OffReason {
    pub const ALL: [Self; 4] = [
        Self::Disabled,
        Self::Unavailable,
        Self::NotAttachable,
        Self::Stopped,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Unavailable => "unavailable",
            Self::NotAttachable => "not_attachable",
            Self::Stopped => "stopped",
        }
    }
}

/// A detector as reported: on, or off with a reason and the sentence that explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetectorState {
    On,
    Off(OffReason, String),
}

impl DetectorState {
    pub const fn is_on(&self) -> bool {
        matches!(self, Self::On)
    }
}

/// Labels added to the per-process series on Kubernetes. Off Kubernetes the series do not have
/// them at all (an empty label would still be a label to every query and recording rule).
const POD_LABELS: [&str; 3] = ["namespace", "pod", "container"];

/// `base` plus the pod labels when they are on.
fn label_names(base: &[&'static str], pod_labels: bool) -> Vec<&'static str> {
    let mut names = base.to_vec();
    if pod_labels {
        names.extend(POD_LABELS);
    }
    names
}

/// Registers `c` with `r` and returns it. A name registered twice is a bug in [`Metrics::new`].
fn register<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: prometheus::Result<C>,
) -> C {
    let c = c.expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("unique metric names");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help))
}

fn counters(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels))
}

pub struct Metrics {
    registry: Registry,
    losses: Losses,
    health: Health,
    pod_labels: bool,
    /// The loss series of each pod, so that a gone pod's can be dropped.
    pod_series: std::sync::Mutex<PodSeries>,
}

/// The per-process loss series.
struct Losses {
    unanswered: IntCounterVec,
    unanswered_delay: HistogramVec,
    writes_after_close: IntCounterVec,
    writes_after_close_bytes: IntCounterVec,
    undelivered_bytes: IntCounterVec,
    aborted_connections: IntCounterVec,
    go_write_timeouts: IntCounterVec,
    explained: IntCounterVec,
}

/// The agent's own series: what the kernel side did, and what runs.
struct Health {
    events_dropped: IntCounter,
    kernel_events: IntCounter,
    kernel_errors: IntCounterVec,
    sockets_observed: IntCounter,
    tracked_sockets: IntGauge,
    socket_evictions: IntCounter,
    decode_errors: IntCounter,
    detector_enabled: IntGaugeVec,
    detector_off: IntGaugeVec,
    /// The off detectors' explanations, for `/healthz`.
    detectors_off: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>,
    probe_mode: IntGaugeVec,
    socket_state: IntGaugeVec,
}

impl Losses {
    fn new(r: &Registry, pod_labels: bool) -> Self {
        let per_process = |base: &[&'static str]| label_names(base, pod_labels);
        Self {
            unanswered: counters(
                r,
                "lostwrite_unanswered_closes_total",
                "Connections closed by the local process after reading input it never answered.",
                &per_process(&["comm", "port", "role", "protocol", "ended_by"]),
            ),
            unanswered_delay: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "lostwrite_unanswered_close_delay_seconds",
                        "Time from the last unanswered read to the close.",
                    )
                    .buckets(DELAY_BUCKETS.to_vec()),
                    &per_process(&["comm", "port"]),
                ),
            ),
            writes_after_close: counters(
                r,
                "lostwrite_writes_after_close_total",
                "Write-family calls that failed because the connection was already torn down.",
                &per_process(&["comm", "port", "role", "errno", "ended_by"]),
            ),
            writes_after_close_bytes: counters(
                r,
                "lostwrite_writes_after_close_bytes_total",
                "Bytes those calls tried to write (only where the probe mode sees the size).",
                &per_process(&["comm", "port", "role", "errno", "ended_by"]),
            ),
            undelivered_bytes: counters(
                r,
                "lostwrite_undelivered_bytes_total",
                "Bytes write() accepted that the peer never acknowledged before an abortive end.",
                &per_process(&["comm", "port", "role", "reason", "ended_by"]),
            ),
            aborted_connections: counters(
                r,
                "lostwrite_aborted_connections_total",
                "Connections that ended abortively with data at stake.",
                &per_process(&["comm", "port", "role", "reason", "ended_by"]),
            ),
            go_write_timeouts: counters(
                r,
                "lostwrite_go_write_timeouts_total",
                "Responses a Go server dropped or cut short because its write deadline \
             (net/http's WriteTimeout) expired, by protocol (http1: the connection \
             closed; h2: the stream was reset).",
                &per_process(&["comm", "port", "protocol", "ended_by"]),
            ),
            explained: counters(
                r,
                "lostwrite_explained_closes_total",
                "Closes judged on an --explain-port, by verdict (unanswered, answered, \
             peer_goodbye, session_end, goodbye_sent, peer_closed, client, \
             simultaneous_close, not_the_responder).",
                &["port", "verdict"],
            ),
        }
    }
}

impl Health {
    fn new(r: &Registry) -> Self {
        Self {
            events_dropped: counter(
                r,
                "lostwrite_events_dropped_total",
                "Kernel records lost because the ring buffer was full.",
            ),
            kernel_events: counter(
                r,
                "lostwrite_kernel_events_total",
                "Records the kernel programs sent to the agent.",
            ),
            kernel_errors: counters(
                r,
                "lostwrite_kernel_errors_total",
                "Failures inside the kernel programs, by error: map_update (a map refused an \
             update: that connection goes unwatched, or a Go cause unnamed), read (a read \
             of kernel memory failed and gave zero), run_skipped (the kernel skipped a run \
             of a program already running on that CPU: what it would have seen is lost, \
             and lostwrite_tracked_sockets may count a socket that is gone).",
                &["error"],
            ),
            sockets_observed: counter(
                r,
                "lostwrite_sockets_observed_total",
                "TCP sockets the kernel programs started tracking.",
            ),
            tracked_sockets: register(
                r,
                IntGauge::new(
                    "lostwrite_tracked_sockets",
                    "TCP sockets currently tracked in kernel memory.",
                ),
            ),
            socket_evictions: counter(
                r,
                "lostwrite_socket_evictions_total",
                "Sockets dropped from kernel memory before they closed, because --max-sockets was \
             reached (the least recently used go first); their connections are no longer \
             watched.",
            ),
            decode_errors: counter(
                r,
                "lostwrite_decode_errors_total",
                "Kernel records the agent could not decode.",
            ),
            detector_enabled: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "lostwrite_detector_enabled",
                        "1 if the detector runs on this kernel and probe mode, 0 if it cannot.",
                    ),
                    &["detector"],
                ),
            ),
            detector_off: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "lostwrite_detector_off",
                        "1 for an off detector, with why: disabled (a flag), unavailable (this \
                         kernel or probe mode), not_attachable (loaded, refused here), stopped \
                         (worked, then stopped). /healthz's body says more.",
                    ),
                    &["detector", "reason"],
                ),
            ),
            detectors_off: Default::default(),
            probe_mode: register(
                r,
                IntGaugeVec::new(
                    Opts::new("lostwrite_probe_mode_info", "The probe mode in use."),
                    &["mode"],
                ),
            ),
            socket_state: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "lostwrite_socket_state_info",
                        "Where the programs keep connection state: sk_storage (on the socket, \
                         freed with it) or lru (a map of --max-sockets entries).",
                    ),
                    &["store"],
                ),
            ),
        }
    }
}

impl Metrics {
    /// `pod_labels`: add namespace, pod and container to the per-process series (Kubernetes).
    pub fn new(pod_labels: bool) -> Self {
        let r = Registry::new();
        let build = register(
            &r,
            IntGaugeVec::new(
                Opts::new("lostwrite_build_info", "The agent's version."),
                &["version"],
            ),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self {
            losses: Losses::new(&r, pod_labels),
            health: Health::new(&r),
            registry: r,
            pod_labels,
            pod_series: Default::default(),
        }
    }

    pub fn set_probe_mode(&self, mode: &str, detectors: &[(Detector, DetectorState)]) {
        self.health.probe_mode.with_label_values(&[mode]).set(1);
        for (d, state) in detectors {
            self.set_detector(*d, state);
        }
    }

    /// `lostwrite_detector_enabled{detector}` and, for an off one, `lostwrite_detector_off`
    /// with its reason and the explanation `/healthz` gives: at start, and again when a
    /// detector stops working later (its programs, or the thread that serves them).
    pub fn set_detector(&self, d: Detector, state: &DetectorState) {
        let h = &self.health;
        h.detector_enabled
            .with_label_values(&[d.as_str()])
            .set(i64::from(state.is_on()));
        for reason in OffReason::ALL {
            let _ = h
                .detector_off
                .remove_label_values(&[d.as_str(), reason.as_str()]);
        }
        let mut off = h.detectors_off.lock().unwrap_or_else(|e| e.into_inner());
        match state {
            DetectorState::On => {
                off.remove(d.as_str());
            }
            DetectorState::Off(reason, why) => {
                h.detector_off
                    .with_label_values(&[d.as_str(), reason.as_str()])
                    .set(1);
                off.insert(
                    d.as_str(),
                    format!("{} ({}): {why}", d.as_str(), reason.as_str()),
                );
            }
        }
    }

    /// One line per off detector, with its reason and explanation (`/healthz`'s body).
    pub fn detectors_off(&self) -> Vec<String> {
        let off = self
            .health
            .detectors_off
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        off.values().cloned().collect()
    }

    pub fn set_socket_state(&self, store: &str) {
        self.health.socket_state.with_label_values(&[store]).set(1);
    }

    pub fn record(&self, a: &Attributed) {
        let i = &a.incident;
        let port = i.port.to_string();
        let (comm, role, ended_by) = (i.comm.as_str(), i.role.as_str(), i.ended_by.as_str());
        // A process outside any pod, on Kubernetes, gets empty values (Prometheus drops them).
        let pod = match (&a.pod, self.pod_labels) {
            (_, false) => vec![],
            (Some(p), true) => vec![p.namespace.as_str(), p.name.as_str(), p.container.as_str()],
            (None, true) => vec![""; 3],
        };
        let mut made: Vec<(Family, Vec<&str>)> = Vec::with_capacity(2);
        match &i.detail {
            Detail::UnansweredClose {
                delay, protocol, ..
            } => {
                let labels = [&[comm, &port, role, protocol, ended_by][..], &pod].concat();
                self.losses.unanswered.with_label_values(&labels).inc();
                let delay_labels = [&[comm, &port][..], &pod].concat();
                self.losses
                    .unanswered_delay
                    .with_label_values(&delay_labels)
                    .observe(delay.as_secs_f64());
                made.push((Family::Unanswered, labels));
                made.push((Family::UnansweredDelay, delay_labels));
            }
            Detail::WriteAfterClose { errno, attempted } => {
                let labels = [&[comm, &port, role, errno.as_str(), ended_by][..], &pod].concat();
                self.losses
                    .writes_after_close
                    .with_label_values(&labels)
                    .inc();
                if let Some(n) = attempted {
                    self.losses
                        .writes_after_close_bytes
                        .with_label_values(&labels)
                        .inc_by(*n);
                    made.push((Family::WritesAfterCloseBytes, labels.clone()));
                }
                made.push((Family::WritesAfterClose, labels));
            }
            Detail::Undelivered {
                reason,
                undelivered_bytes,
                ..
            } => {
                let labels = [&[comm, &port, role, reason.as_str(), ended_by][..], &pod].concat();
                self.losses
                    .aborted_connections
                    .with_label_values(&labels)
                    .inc();
                self.losses
                    .undelivered_bytes
                    .with_label_values(&labels)
                    .inc_by(*undelivered_bytes);
                made.push((Family::AbortedConnections, labels.clone()));
                made.push((Family::UndeliveredBytes, labels));
            }
            Detail::GoWriteTimeout { .. } => {}
        }
        if let Some(go) = &i.go {
            let labels = [&[comm, &port, go.protocol(), ended_by][..], &pod].concat();
            self.losses
                .go_write_timeouts
                .with_label_values(&labels)
                .inc();
            made.push((Family::GoWriteTimeouts, labels));
        }
        if let (Some(p), true) = (&a.pod, self.pod_labels) {
            let mut pods = self.pod_series.lock().unwrap_or_else(|e| e.into_inner());
            let series = pods
                .entry((p.namespace.clone(), p.name.clone()))
                .or_default();
            for (family, labels) in made {
                series.insert((family, labels.into_iter().map(str::to_owned).collect()));
            }
        }
    }

    /// The pods whose incidents made series.
    pub fn pods_with_series(&self) -> HashSet<PodKey> {
        let pods = self.pod_series.lock().unwrap_or_else(|e| e.into_inner());
        pods.keys().cloned().collect()
    }

    /// Drops every series the pod's incidents made; returns how many there were.
    pub fn forget_pod(&self, pod: &PodKey) -> usize {
        let mut pods = self.pod_series.lock().unwrap_or_else(|e| e.into_inner());
        let Some(series) = pods.remove(pod) else {
            return 0;
        };
        let l = &self.losses;
        for (family, values) in &series {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let _ = match family {
                Family::Unanswered => l.unanswered.remove_label_values(&values),
                Family::UnansweredDelay => l.unanswered_delay.remove_label_values(&values),
                Family::WritesAfterClose => l.writes_after_close.remove_label_values(&values),
                Family::WritesAfterCloseBytes => {
                    l.writes_after_close_bytes.remove_label_values(&values)
                }
                Family::AbortedConnections => l.aborted_connections.remove_label_values(&values),
                Family::UndeliveredBytes => l.undelivered_bytes.remove_label_values(&values),
                Family::GoWriteTimeouts => l.go_write_timeouts.remove_label_values(&values),
            };
        }
        series.len()
    }

    /// A close on an `--explain-port` and its verdict.
    pub fn explained(&self, e: &Explained) {
        self.losses
            .explained
            .with_label_values(&[&e.port.to_string(), e.verdict.as_str()])
            .inc();
    }

    pub fn decode_error(&self) {
        self.health.decode_errors.inc();
    }

    /// Brings the kernel-side counters up to date (they are monotonic totals).
    pub fn set_kernel(&self, k: KernelStats) {
        catch_up(&self.health.events_dropped, k.events_dropped);
        catch_up(&self.health.kernel_events, k.events_sent);
        for (error, n) in [
            ("map_update", k.map_update_failed),
            ("read", k.read_failed),
            ("run_skipped", k.runs_skipped),
        ] {
            catch_up(&self.health.kernel_errors.with_label_values(&[error]), n);
        }
        catch_up(&self.health.sockets_observed, k.sockets_tracked);
        // Every entry that entered the map was released at socket destruction, was evicted, or
        // is still there (see probes::stats). Without a count of the map, tracked - released is
        // the best estimate of what it holds.
        let not_released = k.sockets_tracked.saturating_sub(k.sockets_released);
        let live = match k.sockets_live {
            Some(live) => {
                catch_up(
                    &self.health.socket_evictions,
                    not_released.saturating_sub(live),
                );
                live
            }
            None => not_released,
        };
        self.health
            .tracked_sockets
            .set(i64::try_from(live).unwrap_or(i64::MAX));
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

fn catch_up(c: &IntCounter, total: u64) {
    let cur = c.get();
    if total > cur {
        c.inc_by(total - cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{correlate::samples, k8s::samples as k8s_samples};

    #[test]
    fn an_off_detector_says_why_until_it_is_on_again() {
        let m = Metrics::new(false);
        let off = DetectorState::Off(OffReason::NotAttachable, "perf_event_open: EACCES".into());
        m.set_detector(Detector::GoWriteTimeout, &off);
        m.set_detector(Detector::UnansweredClose, &DetectorState::On);
        let text = m.render();
        for line in [
            r#"lostwrite_detector_enabled{detector="go_write_timeout"} 0"#,
            r#"lostwrite_detector_off{detector="go_write_timeout",reason="not_attachable"} 1"#,
            r#"lostwrite_detector_enabled{detector="unanswered_close"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(
            m.detectors_off(),
            ["go_write_timeout (not_attachable): perf_event_open: EACCES"]
        );
        // It stops later: one reason at a time.
        let stopped = DetectorState::Off(OffReason::Stopped, "the reader stopped".into());
        m.set_detector(Detector::GoWriteTimeout, &stopped);
        let text = m.render();
        assert!(!text.contains(r#"reason="not_attachable""#), "{text}");
        assert!(text.contains(r#"reason="stopped"} 1"#), "{text}");
        m.set_detector(Detector::GoWriteTimeout, &DetectorState::On);
        assert!(m.detectors_off().is_empty());
        assert!(!m.render().contains("lostwrite_detector_off{"));
    }

    #[test]
    fn undelivered_counts_connections_and_bytes() {
        let m = Metrics::new(false);
        let i = samples::nginx_linger();
        m.record(&i.clone().into());
        m.record(&i.into());
        let text = m.render();
        for line in [
            r#"lostwrite_undelivered_bytes_total{comm="nginx",ended_by="local",port="8800",reason="linger_zero",role="server"} 5607424"#,
            r#"lostwrite_aborted_connections_total{comm="nginx",ended_by="local",port="8800",reason="linger_zero",role="server"} 2"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn go_write_timeouts_count_incidents_with_a_go_cause() {
        let m = Metrics::new(false);
        m.record(&samples::seed().into());
        m.record(&samples::seed_with_cause().into());
        let out = m.render();
        assert!(
            out.contains(
                "lostwrite_go_write_timeouts_total{comm=\"seedsrv\",ended_by=\"local\",port=\"8800\",protocol=\"http1\"} 1"
            ),
            "{out}"
        );
        assert!(out.contains(
            "lostwrite_unanswered_closes_total{comm=\"seedsrv\",ended_by=\"local\",port=\"8800\",protocol=\"http\",role=\"server\"} 2"
        ));
    }

    #[test]
    fn exposition_has_the_spec_series() {
        let m = Metrics::new(false);
        m.set_probe_mode(
            "tracepoint",
            &[
                (Detector::UnansweredClose, DetectorState::On),
                (
                    Detector::WriteAfterClose,
                    DetectorState::Off(OffReason::Unavailable, "no hook".into()),
                ),
            ],
        );
        m.record(&samples::seed().into());
        m.set_kernel(KernelStats {
            events_dropped: 3,
            events_sent: 5,
            sockets_tracked: 10,
            sockets_released: 4,
            map_update_failed: 2,
            read_failed: 0,
            sockets_live: None,
            runs_skipped: 0,
        });
        let text = m.render();
        for line in [
            r#"lostwrite_unanswered_closes_total{comm="seedsrv",ended_by="local",port="8800",protocol="http",role="server"} 1"#,
            r#"lostwrite_unanswered_close_delay_seconds_bucket{comm="seedsrv",port="8800",le="2.5"} 1"#,
            r#"lostwrite_unanswered_close_delay_seconds_bucket{comm="seedsrv",port="8800",le="1"} 0"#,
            "lostwrite_events_dropped_total 3",
            "lostwrite_tracked_sockets 6",
            r#"lostwrite_kernel_errors_total{error="map_update"} 2"#,
            r#"lostwrite_kernel_errors_total{error="read"} 0"#,
            r#"lostwrite_probe_mode_info{mode="tracepoint"} 1"#,
            r#"lostwrite_detector_enabled{detector="write_after_close"} 0"#,
            concat!(
                r#"lostwrite_build_info{version=""#,
                env!("CARGO_PKG_VERSION"),
                r#""} 1"#
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn pod_labels_on_kubernetes_only() {
        let on = Metrics::new(true);
        on.record(&k8s_samples::seed_in_pod());
        // A host process on a Kubernetes node.
        on.record(&samples::nginx_linger().into());
        let text = on.render();
        for line in [
            r#"lostwrite_unanswered_closes_total{comm="seedsrv",container="api",ended_by="local",namespace="shop",pod="checkout-7d9f8b6c5-x2x9q",port="8800",protocol="http",role="server"} 1"#,
            r#"lostwrite_unanswered_close_delay_seconds_count{comm="seedsrv",container="api",namespace="shop",pod="checkout-7d9f8b6c5-x2x9q",port="8800"} 1"#,
            r#"lostwrite_aborted_connections_total{comm="nginx",container="",ended_by="local",namespace="",pod="",port="8800",reason="linger_zero",role="server"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }

        let off = Metrics::new(false);
        // Even an incident that carries a pod: the series shape is fixed at start.
        off.record(&k8s_samples::seed_in_pod());
        let text = off.render();
        assert!(
            text.lines().any(|l| l
                == r#"lostwrite_unanswered_closes_total{comm="seedsrv",ended_by="local",port="8800",protocol="http",role="server"} 1"#),
            "{text}"
        );
        for label in ["namespace=", "pod=", "container="] {
            assert!(!text.contains(label), "{label} in\n{text}");
        }
    }

    #[test]
    fn evictions_are_what_left_the_map_unreleased() {
        let m = Metrics::new(false);
        let k = KernelStats {
            sockets_tracked: 100,
            sockets_released: 30,
            sockets_live: Some(50),
            runs_skipped: 0,
            ..KernelStats::default()
        };
        m.set_kernel(k);
        assert_eq!(m.health.socket_evictions.get(), 20);
        assert_eq!(m.health.tracked_sockets.get(), 50);
        // A walk that saw entries whose tracking was not counted yet never makes it go back.
        m.set_kernel(KernelStats {
            sockets_live: Some(75),
            runs_skipped: 0,
            ..k
        });
        assert_eq!(m.health.socket_evictions.get(), 20);
        assert_eq!(m.health.tracked_sockets.get(), 75);
        let text = m.render();
        assert!(
            text.lines()
                .any(|l| l == "lostwrite_socket_evictions_total 20"),
            "{text}"
        );
    }

    #[test]
    fn kernel_counters_only_move_forward() {
        let m = Metrics::new(false);
        let k = KernelStats {
            events_dropped: 7,
            ..KernelStats::default()
        };
        m.set_kernel(k);
        m.set_kernel(k);
        assert_eq!(m.health.events_dropped.get(), 7);
    }
}
