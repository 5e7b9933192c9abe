//! What a soak run found, judged and written as Markdown: each resource from the end of the
//! warm-up to the end (flat or growing, its slope per hour, and its bound), the incidents caused
//! against those the agent counted, the load that ran, and every sample.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    incidents::{ByPort, Detector, LogCounts, counted},
    load::Activity,
    sample::Sample,
};

/// Everything a run produced.
pub struct Run {
    pub minutes: f64,
    pub warmup_minutes: f64,
    /// How long the load ran.
    pub ran_seconds: f64,
    pub interrupted: bool,
    /// Why and when the run ended early on the agent's account: it exited, or could not be
    /// sampled.
    pub agent_died: Option<String>,
    pub probe_mode: String,
    pub store: String,
    /// The agent's command line.
    pub agent_args: String,
    /// Unanswered closes per burst.
    pub burst: usize,
    /// The detectors `lostwrite_detector_enabled` reported on at the start.
    pub enabled: Vec<Detector>,
    pub samples: Vec<Sample>,
    /// /metrics after the load stopped and the agent settled; none if it died.
    pub last_metrics: Option<BTreeMap<String, f64>>,
    /// TCP sockets on the host at the end neither listening nor in TIME-WAIT.
    pub live_sockets: u64,
    pub log: LogCounts,
    /// The Go binaries the agent read (seconds since the load started, path): the soak's seed
    /// server, and whatever other processes ran. Reading one holds its whole file in memory for
    /// a moment, which can leave the agent's RSS higher for good (the allocator keeps it).
    pub go_binaries: Vec<(f64, String)>,
    /// The incidents the soak caused.
    pub caused: ByPort,
    pub ports: Ports,
    /// The pods' ports and names.
    pub pod_ports: Vec<(u16, String)>,
    pub activities: BTreeMap<&'static str, Activity>,
    pub commit: String,
    pub kernel: String,
}

impl Run {
    /// The Go binaries other than the soak's own that the agent read after `warmup` seconds.
    fn others_after(&self, warmup: f64) -> Vec<String> {
        self.go_binaries
            .iter()
            .filter(|(at, path)| *at >= warmup && !path.ends_with("/seedsrv"))
            .map(|(_, path)| path.clone())
            .collect()
    }
}

/// The soak's own ports.
pub struct Ports {
    /// Where it causes incidents.
    pub incidents: Vec<u16>,
    /// Where its traffic is healthy: any incident there is one it did not cause.
    pub healthy: Vec<u16>,
}

impl Ports {
    fn contains(&self, port: u16) -> bool {
        self.incidents.contains(&port) || self.healthy.contains(&port)
    }

    pub fn all(&self) -> Vec<u16> {
        [&self.incidents[..], &self.healthy[..]].concat()
    }
}

/// What is sampled, and how its growth after the warm-up is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Rss,
    Fds,
    Series,
    AllSeries,
    MapMemory,
    TrackedSockets,
    Cpu,
}

impl Resource {
    pub const ALL: [Self; 7] = [
        Self::Rss,
        Self::Fds,
        Self::Series,
        Self::AllSeries,
        Self::MapMemory,
        Self::TrackedSockets,
        Self::Cpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Rss => "agent RSS (KiB)",
            Self::Fds => "agent open fds",
            Self::Series => "/metrics series, own",
            Self::AllSeries => "/metrics series, all",
            Self::MapMemory => "BPF map memory (KiB)",
            Self::TrackedSockets => "tracked sockets",
            Self::Cpu => "agent CPU (% of a core)",
        }
    }

    fn value(self, s: &Sample) -> Option<f64> {
        Some(match self {
            Self::Rss => s.rss_kib as f64,
            Self::Fds => s.fds as f64,
            Self::Series => s.own_series as f64,
            Self::AllSeries => s.series as f64,
            Self::MapMemory => s.map_kib as f64,
            Self::TrackedSockets => s.tracked_sockets as f64,
            Self::Cpu => s.cpu_pct?,
        })
    }

    /// The growth allowed after the warm-up, as a fraction of the value then; none where the
    /// value follows the load rather than the agent's health (the CPU) or what other processes
    /// on the host do (their incidents' series). The tracked sockets are bounded: the steady
    /// load keeps the same connections open from one sample to the next, and a burst's are
    /// closed before the next sample.
    fn bound(self) -> Option<f64> {
        match self {
            Self::Rss | Self::Fds | Self::Series | Self::MapMemory | Self::TrackedSockets => {
                Some(0.10)
            }
            Self::AllSeries | Self::Cpu => None,
        }
    }

    /// Whether a sample taken while a burst's connections were open says nothing of it: the
    /// tracked sockets then count the burst's thousands, which close seconds later.
    fn skips_bursts(self) -> bool {
        self == Self::TrackedSockets
    }

    /// A change this small is no trend: the jitter of a steady agent (a scrape's connection
    /// open at the moment of a sample, the allocator's arenas).
    fn noise(self) -> f64 {
        match self {
            Self::Rss => 1024.0,
            Self::Fds => 4.0,
            Self::Series | Self::AllSeries | Self::MapMemory => 0.0,
            Self::TrackedSockets => 256.0,
            Self::Cpu => 5.0,
        }
    }
}

/// A resource from the first sample after the warm-up to the last.
#[derive(Clone, Debug, PartialEq)]
pub struct Trend {
    pub resource: Resource,
    pub first: f64,
    pub first_at: f64,
    pub last: f64,
    pub last_at: f64,
    /// Least-squares slope over the samples after the warm-up, per hour.
    pub per_hour: f64,
    pub direction: &'static str,
    /// The growth allowed (`last - first`), if bounded.
    pub limit: Option<f64>,
    pub over: bool,
}

impl Trend {
    /// None with fewer than two samples after the warm-up.
    pub fn of(resource: Resource, samples: &[Sample], warmup_seconds: f64) -> Option<Self> {
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.at >= warmup_seconds)
            .filter(|s| !(s.during_burst && resource.skips_bursts()))
            .filter_map(|s| Some((s.at, resource.value(s)?)))
            .collect();
        let (&(first_at, first), &(last_at, last)) = (points.first()?, points.last()?);
        if points.len() < 2 {
            return None;
        }
        let change = last - first;
        let noise = resource.noise();
        let direction = if change > noise {
            "growing"
        } else if change < -noise {
            "falling"
        } else {
            "flat"
        };
        let limit = resource.bound().map(|b| (first * b).max(noise));
        Some(Self {
            resource,
            first,
            first_at,
            last,
            last_at,
            per_hour: slope(&points) * 3600.0,
            direction,
            limit,
            over: limit.is_some_and(|l| change > l),
        })
    }

    pub fn change(&self) -> f64 {
        self.last - self.first
    }

    fn bound_text(&self) -> String {
        match (self.resource.bound(), self.limit) {
            (Some(b), Some(l)) => format!("+{:.0} % (+{})", b * 100.0, number(l)),
            _ => "none".to_owned(),
        }
    }

    fn verdict(&self) -> &'static str {
        match (self.limit, self.over) {
            (None, _) => "-",
            (Some(_), false) => "ok",
            (Some(_), true) => "OVER",
        }
    }
}

/// The least-squares slope of `points` (x in seconds), per second.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// One detector's incidents on the soak's ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub detector: Option<Detector>,
    pub enabled: bool,
    pub expected: u64,
    /// On /metrics.
    pub counted: u64,
    /// Incident lines.
    pub logged: u64,
    /// Caused and not counted, port by port.
    pub missing: u64,
    /// Counted and not caused, port by port.
    pub extra: u64,
}

/// Caused against counted, per detector (the soak's ports only), with a total row last.
pub fn rows(
    enabled: &[Detector],
    ports: &Ports,
    caused: &ByPort,
    counted: &ByPort,
    logged: &ByPort,
) -> Vec<Row> {
    let mut out = Vec::new();
    for d in Detector::ALL {
        let mut row = Row {
            detector: Some(d),
            enabled: enabled.contains(&d),
            ..Row::default()
        };
        let mut keys: Vec<u16> = [caused, counted, logged]
            .iter()
            .flat_map(|m| m.keys())
            .filter(|(det, port)| *det == d && ports.contains(*port))
            .map(|(_, port)| *port)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for port in keys {
            let get = |m: &ByPort| m.get(&(d, port)).copied().unwrap_or(0);
            let (e, c) = (get(caused), get(counted));
            row.expected += e;
            row.counted += c;
            row.logged += get(logged);
            row.missing += e.saturating_sub(c);
            row.extra += c.saturating_sub(e);
        }
        out.push(row);
    }
    let mut total = Row {
        enabled: true,
        ..Row::default()
    };
    for r in out.iter().filter(|r| r.enabled) {
        total.expected += r.expected;
        total.counted += r.counted;
        total.logged += r.logged;
        total.missing += r.missing;
        total.extra += r.extra;
    }
    out.push(total);
    out
}

/// Incidents lost: caused and not counted, beyond the records the agent counted as dropped.
pub fn lost(missing: u64, dropped: u64) -> u64 {
    missing.saturating_sub(dropped)
}

/// The judgement of a run.
pub struct Outcome {
    pub trends: Vec<Trend>,
    pub rows: Vec<Row>,
    pub dropped: u64,
    pub lost: Option<u64>,
    /// Pod incidents in the log: (with their pod's labels, all).
    pub pods: (u64, u64),
    /// Every reason the run failed, the most telling first.
    pub failures: Vec<String>,
    /// What the run saw that it does not fail on.
    pub warnings: Vec<String>,
}

impl Outcome {
    pub fn of(run: &Run) -> Self {
        let warmup = run.warmup_minutes * 60.0;
        let trends: Vec<Trend> = Resource::ALL
            .into_iter()
            .filter_map(|r| Trend::of(r, &run.samples, warmup))
            .collect();
        let counted = run.last_metrics.as_ref().map(counted).unwrap_or_default();
        let rows = rows(
            &run.enabled,
            &run.ports,
            &run.caused,
            &counted,
            &run.log.by_port,
        );
        let dropped = run
            .last_metrics
            .as_ref()
            .and_then(|m| m.get("lostwrite_events_dropped_total"))
            .map_or(0, |v| *v as u64);
        let total = rows.last().expect("a total row").clone();
        let lost = run
            .last_metrics
            .as_ref()
            .map(|_| lost(total.missing, dropped));
        let pods = run
            .log
            .pods
            .iter()
            .filter_map(|((port, pod), n)| {
                let (_, name) = run.pod_ports.iter().find(|(p, _)| p == port)?;
                Some((if pod == name { *n } else { 0 }, *n))
            })
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));

        let mut failures = Vec::new();
        if run.interrupted {
            failures.push(format!(
                "interrupted after {} of {}",
                clock(run.ran_seconds),
                clock(run.minutes * 60.0)
            ));
        }
        if let Some(why) = &run.agent_died {
            failures.push(why.clone());
        }
        if let Some(lost) = lost.filter(|l| *l > 0) {
            failures.push(format!(
                "{lost} incidents lost: {} caused, {} counted, {} records dropped",
                total.expected, total.counted, dropped
            ));
        }
        if run.last_metrics.is_some() && total.extra > 0 {
            failures.push(format!(
                "{} incidents counted on the soak's ports that it did not cause",
                total.extra
            ));
        }
        for r in rows.iter().filter(|r| r.detector.is_some() && r.enabled) {
            if run.last_metrics.is_some() && r.logged != r.counted {
                failures.push(format!(
                    "{}: {} incident lines but {} counted on /metrics",
                    r.detector.expect("filtered").name(),
                    r.logged,
                    r.counted
                ));
            }
        }
        let others = run.others_after(warmup);
        for t in trends.iter().filter(|t| t.over) {
            let mut why = format!(
                "{} grew from {} to {} after the warm-up (+{:.1} %, bound {})",
                t.resource.name(),
                number(t.first),
                number(t.last),
                percent(t.change(), t.first),
                t.bound_text()
            );
            if t.resource == Resource::Rss && !others.is_empty() {
                let _ = write!(
                    why,
                    "; the agent read {} Go binaries of other processes after the warm-up \
                     ({}): run it on a quiet machine",
                    others.len(),
                    others.join(", ")
                );
            }
            failures.push(why);
        }
        if pods.0 < pods.1 {
            failures.push(format!(
                "{} of {} incidents in pods did not carry their pod's labels",
                pods.1 - pods.0,
                pods.1
            ));
        }
        for (name, a) in &run.activities {
            if a.done == 0 {
                failures.push(format!(
                    "{name} never succeeded ({} failures; first: {})",
                    a.failed,
                    a.first_error.as_deref().unwrap_or("-")
                ));
            }
        }
        if let Some(scrapes) = run.activities.get("scrapes of /metrics")
            && scrapes.failed > 0
        {
            failures.push(format!(
                "{} of {} scrapes of /metrics failed (first: {})",
                scrapes.failed,
                scrapes.failed + scrapes.done,
                scrapes.first_error.as_deref().unwrap_or("-")
            ));
        }
        if !run.interrupted && run.agent_died.is_none() && trends.is_empty() {
            failures.push("fewer than two samples after the warm-up: nothing to judge".to_owned());
        }
        let mut warnings = Vec::new();
        if let Some(tracked) = run
            .last_metrics
            .as_ref()
            .and_then(|m| m.get("lostwrite_tracked_sockets"))
            .map(|v| *v as u64)
            .filter(|t| *t > run.live_sockets + Resource::TrackedSockets.noise() as u64)
        {
            warnings.push(format!(
                "lostwrite_tracked_sockets was {tracked} at the end, with {} TCP sockets on the \
                 host neither listening nor in TIME-WAIT (other network namespaces aside): the \
                 gauge counts sockets that are gone",
                run.live_sockets
            ));
        }
        let foreign: u64 = run
            .log
            .pods
            .iter()
            .filter(|((port, _), _)| !run.ports.contains(*port))
            .map(|(_, n)| n)
            .sum();
        if foreign > 0 || !others.is_empty() {
            warnings.push(format!(
                "the host was not quiet: {foreign} incidents of other processes, {} Go binaries \
                 of other processes read after the warm-up",
                others.len()
            ));
        }
        Self {
            trends,
            rows,
            dropped,
            lost,
            pods,
            failures,
            warnings,
        }
    }

    /// The one line saying why the run failed, if it did.
    pub fn failure(&self) -> Option<String> {
        let first = self.failures.first()?;
        Some(match self.failures.len() {
            1 => first.clone(),
            n => format!("{first} (and {} more reasons in the report)", n - 1),
        })
    }

    /// The one line saying what a passing run showed.
    pub fn passed(&self) -> String {
        let total = self.rows.last().expect("a total row");
        let mut parts = vec![format!(
            "{} incidents caused, {} counted, {} records dropped, 0 lost",
            total.expected, total.counted, self.dropped
        )];
        for t in &self.trends {
            if t.resource.bound().is_some() {
                parts.push(format!(
                    "{} {} -> {}",
                    t.resource.name(),
                    number(t.first),
                    number(t.last)
                ));
            }
        }
        parts.join("; ")
    }
}

/// `mm:ss` (or `h:mm:ss`).
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

/// [`clock`], with times before the load started (the agent's start) as `start`.
fn clock_signed(seconds: f64) -> String {
    if seconds < 0.0 {
        "start".to_owned()
    } else {
        clock(seconds)
    }
}

/// A figure as the tables print it: integers plain, others with one decimal.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn signed(v: f64) -> String {
    // -0.0 (a tiny negative slope, rounded) is 0.
    let v = if v == 0.0 { 0.0 } else { v };
    if v > 0.0 {
        format!("+{}", number(v))
    } else {
        number(v)
    }
}

fn percent(part: f64, of: f64) -> f64 {
    if of == 0.0 { 0.0 } else { part / of * 100.0 }
}

/// The summary table: each resource after the warm-up and at the end.
pub fn summary_table(trends: &[Trend]) -> String {
    let mut t = String::from(
        "| resource | after warm-up | end | change | slope per hour | trend | bound | verdict |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for tr in trends {
        let _ = writeln!(
            t,
            "| {} | {} ({}) | {} ({}) | {} ({:+.1} %) | {} | {} | {} | {} |",
            tr.resource.name(),
            number(tr.first),
            clock(tr.first_at),
            number(tr.last),
            clock(tr.last_at),
            signed(tr.change()),
            percent(tr.change(), tr.first),
            signed((tr.per_hour * 10.0).round() / 10.0),
            tr.direction,
            tr.bound_text(),
            tr.verdict()
        );
    }
    t
}

/// The incidents table, and the line with the dropped records and what was lost.
pub fn incidents_table(outcome: &Outcome) -> String {
    let mut t = String::from(
        "| detector | caused | counted on /metrics | incident lines | missing | extra |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in &outcome.rows {
        let name = r.detector.map_or("**all**", Detector::name);
        if !r.enabled {
            let _ = writeln!(t, "| {name} | off | | | | |");
            continue;
        }
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} | {} | {} |",
            r.expected, r.counted, r.logged, r.missing, r.extra
        );
    }
    let total = outcome.rows.last().expect("a total row");
    match outcome.lost {
        Some(lost) => {
            let _ = writeln!(
                t,
                "\nRecords dropped (`lostwrite_events_dropped_total`, the whole host's): {}. \
                 lost = missing − dropped = {} − {} = **{lost}** (must be 0).",
                outcome.dropped,
                total.missing,
                outcome.dropped.min(total.missing)
            );
        }
        None => {
            let _ = writeln!(
                t,
                "\nNo count: the agent was not there to scrape at the end."
            );
        }
    }
    t
}

/// What the console gets at the end: the two tables, and the warnings.
pub fn console(run: &Run, outcome: &Outcome) -> String {
    let mut text = format!(
        "\nsoak: {} after a warm-up of {}, samples every 10 s\n\n{}\n{}",
        clock(run.ran_seconds),
        clock(run.warmup_minutes * 60.0),
        summary_table(&outcome.trends),
        incidents_table(outcome)
    );
    for w in &outcome.warnings {
        let _ = write!(text, "\nsoak: warning: {w}");
    }
    text
}

/// The whole report.
pub fn render(run: &Run, outcome: &Outcome) -> String {
    let mut r = String::from("# lostwrite soak\n\n");
    let _ = writeln!(
        r,
        "`cargo xtask soak --minutes {} --warmup-minutes {}` at `{}`, Linux {}, {} cores; \
         the load ran {} (warm-up {}), sampled every 10 s.\n",
        run.minutes,
        run.warmup_minutes,
        run.commit,
        run.kernel,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        clock(run.ran_seconds),
        clock(run.warmup_minutes * 60.0),
    );
    let _ = writeln!(
        r,
        "The agent: `{}`, probe mode {} (state in {}); `--pod-logs-root` is the soak's own \
         kubelet log layout, which turns pod attribution on as a node's `/var/log` would. Every \
         other flag is its default.\n",
        run.agent_args, run.probe_mode, run.store
    );
    match outcome.failure() {
        None => {
            let _ = writeln!(r, "**Verdict: ok.** {}\n", outcome.passed());
        }
        Some(_) => {
            let _ = writeln!(r, "**Verdict: FAILED.**\n");
            for f in &outcome.failures {
                let _ = writeln!(r, "- {f}");
            }
            r.push('\n');
        }
    }

    for w in &outcome.warnings {
        let _ = writeln!(r, "Warning: {w}.\n");
    }
    r.push_str("## Summary\n\n");
    r.push_str(
        "From the first sample after the warm-up to the last. A change within the noise (RSS \
         1 MiB, 4 fds, 256 sockets, 5 points of CPU; none for series and map memory) is flat. \
         The bounded resources fail the run when they grow by more than the bound; the tracked \
         sockets leave out the samples taken while a burst's connections were open. The agent \
         watches the whole host: the own series are those without a `port` label or on one of \
         the soak's ports; the rest are other processes' incidents, a series per new port, \
         and are not bounded.\n\n",
    );
    r.push_str(&summary_table(&outcome.trends));
    if let Some(mean) = mean_cpu(run) {
        let _ = writeln!(
            r,
            "\nThe agent's CPU after the warm-up: {mean:.1} % of a core on average."
        );
    }

    r.push_str("\n## Incidents\n\n");
    let _ = writeln!(
        r,
        "Caused by the soak on its own ports ({}), against what the agent counted there, port by \
         port: `missing` is caused and not counted, `extra` counted and not caused (any incident \
         on the healthy traffic's ports, {}, is extra). An unanswered close with a Go cause is \
         also a go_write_timeout, on /metrics and in the log alike.\n",
        list(&run.ports.incidents),
        list(&run.ports.healthy)
    );
    r.push_str(&incidents_table(outcome));
    let _ = writeln!(
        r,
        "\nPod attribution: {} of {} incident lines of the pods' servers carried their pod's \
         namespace, name and container. Other processes on the host: {} incident lines during \
         the run.",
        outcome.pods.0,
        outcome.pods.1,
        run.log
            .pods
            .iter()
            .filter(|((port, _), _)| !run.ports.contains(*port))
            .map(|(_, n)| n)
            .sum::<u64>()
    );

    r.push_str("\n## Go binaries the agent read\n\n");
    r.push_str(
        "Each is read once, whole, to find its Go runtime's functions; the memory goes back to \
         the agent's allocator, not always to the system. The soak's own is seedsrv; any other \
         is another process's on the host.\n\n",
    );
    for (at, path) in &run.go_binaries {
        let _ = writeln!(r, "- {} `{path}`", clock_signed(*at));
    }

    r.push_str("\n## Load\n\n");
    let _ = writeln!(
        r,
        "Each burst is {} connections whose server ends a holder process's exit closes at \
         once; `done` counts its unanswered closes.\n",
        run.burst
    );
    r.push_str(
        "| part | pace | done | failed | slowest step (s) | first failure |\n\
         |---|---|---|---|---|---|\n",
    );
    for (name, a) in &run.activities {
        let _ = writeln!(
            r,
            "| {name} | {} | {} | {} | {:.3} | {} |",
            a.pace,
            a.done,
            a.failed,
            a.slowest,
            a.first_error
                .as_deref()
                .map_or(String::new(), |e| e.replace('|', "/"))
        );
    }

    if let Some(m) = &run.last_metrics {
        r.push_str("\n## The agent's own counters at the end\n\n");
        for (series, value) in m.iter().filter(|(s, _)| {
            [
                "lostwrite_kernel_events_total",
                "lostwrite_events_dropped_total",
                "lostwrite_decode_errors_total",
                "lostwrite_kernel_errors_total",
                "lostwrite_socket_evictions_total",
                "lostwrite_sockets_observed_total",
                "lostwrite_tracked_sockets",
            ]
            .iter()
            .any(|name| s.starts_with(name))
        }) {
            let _ = writeln!(r, "- `{series}` {}", number(*value));
        }
        let _ = writeln!(
            r,
            "\nTCP sockets on the host at the end, neither listening nor in TIME-WAIT: {} (the \
             most `lostwrite_tracked_sockets` can rightly count).",
            run.live_sockets
        );
    }

    r.push_str("\n## Samples\n\n");
    r.push_str(
        "| time | phase | RSS (KiB) | fds | series (own) | BPF maps (KiB) | CPU (%) | tracked \
         sockets | kernel records | dropped | incidents caused |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let warmup = run.warmup_minutes * 60.0;
    for s in &run.samples {
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
            clock(s.at),
            match (s.at < warmup, s.during_burst) {
                (true, false) => "warm-up",
                (true, true) => "warm-up, burst",
                (false, false) => "measured",
                (false, true) => "measured, burst",
            },
            s.rss_kib,
            s.fds,
            s.series,
            s.own_series,
            s.map_kib,
            s.cpu_pct.map_or("-".to_owned(), |c| format!("{c:.1}")),
            s.tracked_sockets,
            s.kernel_records,
            s.dropped,
            s.caused
        );
    }
    r
}

fn mean_cpu(run: &Run) -> Option<f64> {
    let warmup = run.warmup_minutes * 60.0;
    let cpu: Vec<f64> = run
        .samples
        .iter()
        .filter(|s| s.at >= warmup)
        .filter_map(|s| s.cpu_pct)
        .collect();
    (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / cpu.len() as f64)
}

fn list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, rss_kib: u64, fds: u64, series: u64) -> Sample {
        Sample {
            at,
            rss_kib,
            fds,
            series,
            own_series: series,
            map_kib: 2048,
            cpu_pct: Some(10.0),
            ..Sample::default()
        }
    }

    #[test]
    fn a_steady_agent_is_flat_and_within_bounds() {
        let samples: Vec<Sample> = (0..13)
            .map(|i| sample(i as f64 * 10.0, 20_000 + (i % 2) * 300, 40 + i % 3, 250))
            .collect();
        let rss = Trend::of(Resource::Rss, &samples, 60.0).unwrap();
        assert_eq!((rss.first, rss.first_at), (20_000.0, 60.0));
        assert_eq!((rss.last, rss.last_at), (20_000.0, 120.0));
        assert_eq!(rss.direction, "flat");
        assert_eq!(rss.limit, Some(2000.0));
        assert!(!rss.over);
        let series = Trend::of(Resource::Series, &samples, 60.0).unwrap();
        assert_eq!((series.direction, series.per_hour), ("flat", 0.0));
        // Unbounded: judged, never over.
        let cpu = Trend::of(Resource::Cpu, &samples, 60.0).unwrap();
        assert_eq!((cpu.limit, cpu.over, cpu.verdict()), (None, false, "-"));
    }

    #[test]
    fn growth_past_the_bound_fails_and_its_slope_is_per_hour() {
        // +100 KiB every 10 s after the warm-up: 36 MiB an hour, 12 % in a minute.
        let samples: Vec<Sample> = (0..13)
            .map(|i| {
                let grown = (i as u64).saturating_sub(6) * 400;
                sample(i as f64 * 10.0, 20_000 + grown, 40, 250)
            })
            .collect();
        let rss = Trend::of(Resource::Rss, &samples, 60.0).unwrap();
        assert_eq!(rss.change(), 2400.0);
        assert!((rss.per_hour - 144_000.0).abs() < 1e-6, "{}", rss.per_hour);
        assert_eq!(rss.direction, "growing");
        assert!(rss.over);
        assert_eq!(rss.verdict(), "OVER");
        // Within the bound: growing, not over.
        let small: Vec<Sample> = (0..13)
            .map(|i| sample(i as f64 * 10.0, 20_000 + i as u64 * 250, 40, 250))
            .collect();
        let rss = Trend::of(Resource::Rss, &small, 60.0).unwrap();
        assert_eq!((rss.direction, rss.over), ("growing", false));
        // A small count's bound is its noise: 40 fds may move by 4.
        let fds: Vec<Sample> = (0..13)
            .map(|i| sample(i as f64 * 10.0, 20_000, 40 + u64::from(i >= 12) * 5, 250))
            .collect();
        assert!(Trend::of(Resource::Fds, &fds, 60.0).unwrap().over);
    }

    #[test]
    fn tracked_sockets_leave_out_the_samples_taken_during_a_burst() {
        let mut samples: Vec<Sample> = (0..13)
            .map(|i| Sample {
                tracked_sockets: 460,
                ..sample(i as f64 * 10.0, 20_000, 40, 250)
            })
            .collect();
        // The last sample lands in a burst: 16 000 sockets open for a few seconds.
        samples[12].tracked_sockets = 16_460;
        samples[12].during_burst = true;
        let t = Trend::of(Resource::TrackedSockets, &samples, 60.0).unwrap();
        assert_eq!((t.last, t.last_at, t.over), (460.0, 110.0, false));
        // Left behind after the burst: over the bound (its noise, 256).
        samples[12].during_burst = false;
        samples[12].tracked_sockets = 1784;
        let t = Trend::of(Resource::TrackedSockets, &samples, 60.0).unwrap();
        assert_eq!((t.limit, t.over), (Some(256.0), true));
    }

    #[test]
    fn no_trend_without_two_samples_after_the_warm_up() {
        let samples = vec![sample(0.0, 1, 1, 1), sample(10.0, 1, 1, 1)];
        assert!(Trend::of(Resource::Rss, &samples, 10.0).is_none());
        assert!(Trend::of(Resource::Rss, &samples, 0.0).is_some());
        assert_eq!(slope(&[(0.0, 1.0)]), 0.0);
        assert_eq!(slope(&[(0.0, 1.0), (2.0, 5.0)]), 2.0);
    }

    #[test]
    fn incidents_are_matched_port_by_port() {
        use Detector::*;
        let ports = Ports {
            incidents: vec![100, 200],
            healthy: vec![80],
        };
        let caused = ByPort::from([((UnansweredClose, 100), 10), ((UnansweredClose, 200), 5)]);
        // Port 100 short by 2, port 200 over by 1, port 80 a false positive, port 9 not ours.
        let counted = ByPort::from([
            ((UnansweredClose, 100), 8),
            ((UnansweredClose, 200), 6),
            ((UndeliveredBytes, 80), 1),
            ((UnansweredClose, 9), 50),
        ]);
        let rows = rows(
            &[UnansweredClose, UndeliveredBytes],
            &ports,
            &caused,
            &counted,
            &counted,
        );
        let u = &rows[0];
        assert_eq!(
            (u.expected, u.counted, u.logged, u.missing, u.extra),
            (15, 14, 14, 2, 1)
        );
        assert_eq!((rows[2].expected, rows[2].extra), (0, 1));
        assert!(!rows[1].enabled && !rows[3].enabled);
        let total = rows.last().unwrap();
        assert_eq!((total.missing, total.extra), (2, 2));
        assert_eq!(lost(total.missing, 0), 2);
        assert_eq!(lost(total.missing, 1), 1);
        assert_eq!(lost(total.missing, 500), 0);
    }

    fn run(samples: Vec<Sample>) -> Run {
        let caused = ByPort::from([((Detector::UnansweredClose, 100), 3)]);
        let mut log = LogCounts::default();
        for _ in 0..3 {
            log.add(
                "t INCIDENT unanswered_close: pid 1 (x) read [reason=fin role=server port=100 \
                 pid=1 comm=x namespace=soak pod=soak-0 container=app ended_by=local]",
            );
        }
        Run {
            minutes: 2.0,
            warmup_minutes: 1.0,
            ran_seconds: 120.0,
            interrupted: false,
            agent_died: None,
            probe_mode: "tracepoint".into(),
            store: "sk_storage".into(),
            agent_args: "agent run --listen 127.0.0.1:1".into(),
            burst: 8000,
            enabled: vec![Detector::UnansweredClose],
            samples,
            live_sockets: 12,
            last_metrics: Some(crate::net::parse_metrics(
                "lostwrite_unanswered_closes_total{comm=\"x\",port=\"100\"} 3\n\
                 lostwrite_events_dropped_total 0\n",
            )),
            log,
            go_binaries: vec![(-1.0, "/work/target/demo/seedsrv".into())],
            caused,
            ports: Ports {
                incidents: vec![100],
                healthy: vec![],
            },
            pod_ports: vec![(100, "soak-0".into())],
            activities: BTreeMap::from([(
                "scrapes of /metrics",
                Activity {
                    pace: "every 100 ms".into(),
                    done: 1200,
                    ..Activity::default()
                },
            )]),
            commit: "abc".into(),
            kernel: "6.18".into(),
        }
    }

    #[test]
    fn a_clean_run_passes_and_says_so() {
        let samples: Vec<Sample> = (0..13)
            .map(|i| sample(i as f64 * 10.0, 20_000, 40, 250))
            .collect();
        let run = run(samples);
        let outcome = Outcome::of(&run);
        assert_eq!(outcome.failure(), None, "{:?}", outcome.failures);
        assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
        assert_eq!(outcome.lost, Some(0));
        assert_eq!(outcome.pods, (3, 3));
        let text = render(&run, &outcome);
        assert!(text.contains("**Verdict: ok.**"), "{text}");
        assert!(text.contains("| agent RSS (KiB) | 20000 (01:00) | 20000 (02:00) | 0 (+0.0 %) | 0 | flat | +10 % (+2000) | ok |"), "{text}");
        assert!(
            text.contains("| unanswered_close | 3 | 3 | 3 | 0 | 0 |"),
            "{text}"
        );
        assert!(
            text.contains("| go_write_timeout | off | | | | |"),
            "{text}"
        );
        assert!(text.contains("= **0** (must be 0)"), "{text}");
        assert_eq!(text.matches("| measured |").count(), 7);

        let mut run = run;
        run.last_metrics
            .as_mut()
            .unwrap()
            .insert("lostwrite_tracked_sockets".into(), 970.0);
        run.live_sockets = 0;
        let outcome = Outcome::of(&run);
        assert_eq!(outcome.failure(), None);
        assert!(
            outcome.warnings[0].starts_with("lostwrite_tracked_sockets was 970 at the end, with 0"),
            "{:?}",
            outcome.warnings
        );
        assert!(console(&run, &outcome).contains("\nsoak: warning: lostwrite_tracked_sockets"));
    }

    #[test]
    fn a_run_fails_with_one_line_naming_the_first_reason() {
        let samples: Vec<Sample> = (0..13)
            .map(|i| sample(i as f64 * 10.0, 20_000 + i as u64 * 1000, 40, 250))
            .collect();
        let mut run = run(samples);
        run.caused.insert((Detector::UnansweredClose, 100), 5);
        let outcome = Outcome::of(&run);
        assert_eq!(
            outcome.failure().unwrap(),
            "2 incidents lost: 5 caused, 3 counted, 0 records dropped (and 1 more reasons in the \
             report)"
        );
        assert_eq!(
            outcome.failures[1],
            "agent RSS (KiB) grew from 26000 to 32000 after the warm-up (+23.1 %, bound +10 % \
             (+2600))"
        );
        // Another process's Go binary read after the warm-up is named as the likely cause.
        run.go_binaries
            .push((80.0, "/usr/lib/go-1.19/bin/go".into()));
        run.go_binaries.push((30.0, "/usr/bin/early".into()));
        let outcome = Outcome::of(&run);
        assert!(
            outcome.failures[1].ends_with(
                "; the agent read 1 Go binaries of other processes after the warm-up \
                 (/usr/lib/go-1.19/bin/go): run it on a quiet machine"
            ),
            "{:?}",
            outcome.failures
        );
        assert!(render(&run, &outcome).contains("- 01:20 `/usr/lib/go-1.19/bin/go`"));
        assert!(render(&run, &outcome).contains("- start `/work/target/demo/seedsrv`"));
        assert_eq!(
            outcome.warnings,
            [
                "the host was not quiet: 0 incidents of other processes, 1 Go binaries of other \
              processes read after the warm-up"
            ]
        );
        run.agent_died = Some("the agent exited (signal: 9) at 01:10".into());
        run.last_metrics = None;
        let outcome = Outcome::of(&run);
        assert_eq!(outcome.lost, None);
        assert!(
            outcome
                .failure()
                .unwrap()
                .starts_with("the agent exited (signal: 9) at 01:10")
        );
    }

    #[test]
    fn clocks() {
        assert_eq!(clock(0.0), "00:00");
        assert_eq!(clock(125.4), "02:05");
        assert_eq!(clock(3725.0), "1:02:05");
    }
}
