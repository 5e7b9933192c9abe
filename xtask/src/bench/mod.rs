//! `cargo xtask bench`: what the agent costs, measured as agent-off versus agent-on runs of the
//! same workload, alternating (off, on, off, on, …) in one invocation so that drift on a shared
//! machine hits both sides alike. Never a timed test: it reports, and `BENCHMARKS.md` keeps the
//! report.
//!
//! Three cases (docs/overhead.md): 64-byte writes over loopback, wrk against nginx with keep-alive, and
//! connection churn. For the agent-on runs it also reads the agent's CPU time and peak RSS from
//! /proc and the ring-buffer records it got from its own /metrics.

mod agent;
mod machine;
mod peer;
mod profile;
mod report;
mod sysctl;
pub mod workload;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use self::{
    agent::{AgentRun, BpfStats},
    machine::Quiet,
    workload::Nginx,
};
use crate::workspace::workspace_root;

#[derive(Args)]
pub struct Options {
    /// Off/on pairs per case (the medians need many on a noisy 2-core VM).
    #[arg(long, default_value_t = 12)]
    pairs: usize,
    /// Seconds each run measures.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Cases to run (repeatable); all three by default.
    #[arg(long = "case", value_enum)]
    cases: Vec<Case>,
    /// Where to write the report; `-` prints it only.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: String,
    /// Wait up to this many minutes for a quiet machine (1-minute load < 0.5, no compiler or VM
    /// running) before measuring; without it the bench only warns.
    #[arg(long, value_name = "MINUTES")]
    wait_quiet: Option<u64>,
    /// Skip the extra agent-on run per case with `kernel.bpf_stats_enabled`, which counts probe
    /// invocations and their kernel time.
    #[arg(long)]
    no_probe_stats: bool,
    /// Add two runs to each pair: one with the agent's programs attached but emptied (`agent
    /// run --empty-programs`), which separates what the hooks cost from what the programs do in
    /// them, and a sham (the agent started and stopped, then the workload run with nothing
    /// attached), which measures the method's own bias.
    #[arg(long)]
    floor: bool,
    /// Skip the reference peer: a bpftrace script of the unanswered-close detector on the same
    /// tracepoints (`bench/peer.bt`), run as one more run in each pair and once with BPF
    /// statistics.
    #[arg(long)]
    no_peer: bool,
    /// Skip the LRU map's runs: one more agent-on run in each pair with `--socket-state lru`,
    /// and one with BPF statistics, beside the default store (socket-local storage where the
    /// kernel allows it).
    #[arg(long)]
    no_lru: bool,
    /// Add one agent-on run per case (and one with `--socket-state lru`, unless `--no-lru`)
    /// under `perf record`, which shows where the programs' time goes: their own instructions,
    /// each helper and map function they call, the tracepoints' dispatch, and freeing socket-local
    /// storage when a socket is destroyed (which no BPF statistic counts).
    #[arg(long)]
    profile: bool,
}

/// The agent's arguments for its LRU-map runs.
const LRU: &[&str] = &["--socket-state", "lru"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Case {
    /// 64-byte write() in a loop over loopback TCP, with a reader draining the other end.
    Writes,
    /// wrk against nginx, keep-alive, 1 KiB body.
    Http,
    /// Short connections: connect, one request answered by nginx, close.
    Churn,
}

impl Case {
    const ALL: [Self; 3] = [Self::Writes, Self::Http, Self::Churn];

    fn title(self) -> &'static str {
        match self {
            Self::Writes => "64-byte write() loop, loopback TCP",
            Self::Http => "wrk -> nginx, keep-alive, 1 KiB body",
            Self::Churn => "connection churn (connect, 1 request, close)",
        }
    }

    /// What one workload unit is; also the "event" the agent's CPU is reported per.
    fn unit(self) -> &'static str {
        match self {
            Self::Writes => "write",
            Self::Http => "request",
            Self::Churn => "connection",
        }
    }

    /// The loss budget, as a fraction of throughput (docs/overhead.md).
    fn budget(self) -> f64 {
        match self {
            Self::Http => 0.01,
            Self::Writes | Self::Churn => 0.02,
        }
    }
}

/// One measured run of a workload.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Workload units done (writes, requests, connections).
    pub units: u64,
    pub seconds: f64,
}

impl Run {
    /// Units per second: the throughput every ratio is taken on.
    pub fn rate(&self) -> f64 {
        self.units as f64 / self.seconds
    }
}

/// One off/on pair.
pub struct Pair {
    pub off: Run,
    pub on: Run,
    pub agent: AgentRun,
    /// With `--floor`: the runs that calibrate this pair.
    pub floor: Option<Floor>,
    /// The reference peer attached instead of the agent (unless `--no-peer`).
    pub peer: Option<Run>,
    /// The agent with its state in the LRU map (unless `--no-lru`).
    pub lru: Option<(Run, AgentRun)>,
}

/// `--floor`'s extra runs.
#[derive(Clone, Copy, Debug)]
pub struct Floor {
    /// Every program attached and emptied.
    pub empty: Run,
    /// Nothing attached; the agent started and stopped before, as for an agent-on run.
    pub sham: Run,
}

/// One round of `--floor`'s dispatch calibration: a failing `send()`, ns of CPU per call.
#[derive(Clone, Copy, Debug)]
pub struct DispatchRound {
    /// Nothing attached.
    pub off: f64,
    /// The agent's programs attached and emptied.
    pub empty: f64,
}

impl DispatchRound {
    /// What one run of an emptied program on `sock:sock_send_length` adds, dispatch included.
    pub fn added(&self) -> f64 {
        self.empty - self.off
    }
}

pub struct CaseResult {
    pub case: Case,
    pub pairs: Vec<Pair>,
    /// From the extra run with BPF statistics on, if it was made.
    pub probe_stats: Option<ProbeStats>,
    /// The same with the programs emptied (with `--floor`): the statistics' own cost per run.
    pub empty_probe_stats: Option<ProbeStats>,
    /// The same for the reference peer's programs.
    pub peer_stats: Option<ProbeStats>,
    /// The same for the agent with its state in the LRU map.
    pub lru_stats: Option<ProbeStats>,
    /// With `--profile`: (the agent's store, its profile), the default store's first.
    pub profiles: Vec<(&'static str, profile::Profile)>,
}

/// A run with BPF statistics on, and the statistics.
pub type ProbeStats = (Run, BpfStats);

pub fn run(opts: Options) -> Result<ExitCode> {
    let cases = cases(&opts)?;
    // nginx and wrk come with the test packages.
    crate::setup::all()?;
    let binary = crate::build::build(false)?;
    let dir = crate::workspace::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;

    let mut quiet = Quiet::default();
    quiet.settle(opts.wait_quiet.map(|m| Duration::from_secs(m * 60)))?;
    let started = machine::now_utc();
    let nginx = if cases.iter().any(|c| *c != Case::Writes) {
        Some(Nginx::start(&dir)?)
    } else {
        None
    };
    let bench = Bench {
        opts: &opts,
        binary: &binary,
        dir: &dir,
        nginx: nginx.as_ref(),
        duration: Duration::from_secs_f64(opts.seconds),
    };
    let mut results = Vec::new();
    let mut probe_mode = None;
    for case in cases {
        results.push(bench.case(case, &mut quiet, &mut probe_mode)?);
    }
    let dispatch = if opts.floor {
        dispatch(&binary, &dir, &mut quiet, opts.pairs)?
    } else {
        Vec::new()
    };
    quiet.sample();
    drop(nginx);

    let text = report::render(&report::Context {
        results: &results,
        dispatch: &dispatch,
        machine: &machine::describe(probe_mode.unwrap_or_default()),
        quiet: &quiet,
        pairs: opts.pairs,
        seconds: opts.seconds,
        started,
    });
    write_report(&opts.output, &text, &results)?;
    let missed = results.iter().any(|r| !report::Verdict::of(r).met());
    Ok(if missed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The cases to run, once the options are known to be usable.
fn cases(opts: &Options) -> Result<Vec<Case>> {
    if !crate::workspace::is_root() {
        bail!("the bench loads the agent's eBPF programs: run it as root");
    }
    if opts.pairs == 0 || opts.seconds.is_nan() || opts.seconds <= 0.0 {
        bail!("--pairs and --seconds must be positive");
    }
    Ok(if opts.cases.is_empty() {
        Case::ALL.to_vec()
    } else {
        opts.cases.clone()
    })
}

/// What every case is measured with.
struct Bench<'a> {
    opts: &'a Options,
    /// The agent's binary.
    binary: &'a Path,
    /// Where the agent and nginx keep their files.
    dir: &'a Path,
    nginx: Option<&'a Nginx>,
    /// How long each run measures.
    duration: Duration,
}

impl Bench<'_> {
    /// One case: a warm-up run, the pairs, then the probe statistics runs. `probe_mode` is set
    /// from the first agent-on run that says it.
    fn case(
        &self,
        case: Case,
        quiet: &mut Quiet,
        probe_mode: &mut Option<String>,
    ) -> Result<CaseResult> {
        eprintln!(
            "bench: {} ({} pairs of {:?})",
            case.title(),
            self.opts.pairs,
            self.duration
        );
        let work =
            |steady: workload::Steady<'_>| workload::run(case, self.duration, self.nginx, steady);
        // One unmeasured run warms caches, nginx's worker and the page cache.
        unobserved(&work)?;
        let mut pairs = Vec::new();
        for i in 0..self.opts.pairs {
            let pair = self.pair(&work, quiet)?;
            probe_mode.get_or_insert_with(|| pair.agent.probe_mode.clone());
            log_pair(case, i, &pair);
            pairs.push(pair);
        }
        let (probe_stats, empty_probe_stats) = self.probe_stats(&work)?;
        let peer_stats = if self.opts.no_probe_stats || self.opts.no_peer {
            None
        } else {
            Some(peer::measure_stats(self.dir, &work)?)
        };
        let lru_stats = if self.opts.no_probe_stats || self.opts.no_lru {
            None
        } else {
            Some(agent::measure_probe_stats(
                self.binary,
                self.dir,
                LRU,
                &work,
            )?)
        };
        let profiles = self.profiles(&work)?;
        Ok(CaseResult {
            case,
            pairs,
            probe_stats,
            empty_probe_stats,
            peer_stats,
            lru_stats,
            profiles,
        })
    }

    /// One off/on pair (with `--floor`'s runs), measured again until no competitor started
    /// during it.
    fn pair(&self, work: agent::Work<'_>, quiet: &mut Quiet) -> Result<Pair> {
        loop {
            quiet.sample();
            let off = unobserved(work)?;
            let (on, agent) = agent::measure(self.binary, self.dir, &[], work)?;
            let floor = if self.opts.floor {
                Some(Floor {
                    empty: agent::measure(self.binary, self.dir, &["--empty-programs"], work)?.0,
                    sham: agent::sham(self.binary, self.dir, work)?,
                })
            } else {
                None
            };
            let peer = if self.opts.no_peer {
                None
            } else {
                Some(peer::measure(self.dir, work)?)
            };
            let lru = if self.opts.no_lru {
                None
            } else {
                Some(agent::measure(self.binary, self.dir, LRU, work)?)
            };
            if !quiet.disturbed() {
                return Ok(Pair {
                    off,
                    on,
                    agent,
                    floor,
                    peer,
                    lru,
                });
            }
        }
    }

    /// With `--profile`, one agent-on run under `perf record` per store.
    fn profiles(&self, work: agent::Work<'_>) -> Result<Vec<(&'static str, profile::Profile)>> {
        if !self.opts.profile {
            return Ok(Vec::new());
        }
        let mut stores = vec![("default store", &[][..])];
        if !self.opts.no_lru {
            stores.push(("lru", LRU));
        }
        stores
            .into_iter()
            .map(|(label, args)| {
                Ok((
                    label,
                    agent::measure_profile(self.binary, self.dir, args, work)?,
                ))
            })
            .collect()
    }

    /// The extra runs with BPF statistics on, unless `--no-probe-stats`: with the agent's
    /// programs, and (with `--floor`) with them emptied.
    fn probe_stats(
        &self,
        work: agent::Work<'_>,
    ) -> Result<(Option<ProbeStats>, Option<ProbeStats>)> {
        let probe_stats = if self.opts.no_probe_stats {
            None
        } else {
            Some(agent::measure_probe_stats(
                self.binary,
                self.dir,
                &[],
                work,
            )?)
        };
        let empty_probe_stats = if self.opts.no_probe_stats || !self.opts.floor {
            None
        } else {
            Some(agent::measure_probe_stats(
                self.binary,
                self.dir,
                &["--empty-programs"],
                work,
            )?)
        };
        Ok((probe_stats, empty_probe_stats))
    }
}

/// A run of the workload with nothing attached.
fn unobserved(work: agent::Work<'_>) -> Result<Run> {
    work(&mut |_| Ok(())).map(|m| m.run)
}

/// The pair's progress line (and its `--floor` line) on stderr.
fn log_pair(case: Case, i: usize, pair: &Pair) {
    let Pair {
        off,
        on,
        agent,
        floor,
        peer,
        lru,
    } = pair;
    eprintln!(
        "bench: {:>5} pair {:>2}: off {:>12.1}/s  on {:>12.1}/s  ratio {:.4}  \
         records {}",
        case.unit(),
        i + 1,
        off.rate(),
        on.rate(),
        on.rate() / off.rate(),
        agent.records()
    );
    if let Some(floor) = floor {
        eprintln!(
            "bench: {:>5} pair {:>2}: empty {:>12.1}/s  ratio {:.4}  sham {:>12.1}/s  \
             ratio {:.4}",
            case.unit(),
            i + 1,
            floor.empty.rate(),
            floor.empty.rate() / off.rate(),
            floor.sham.rate(),
            floor.sham.rate() / off.rate(),
        );
    }
    if let Some(peer) = peer {
        eprintln!(
            "bench: {:>5} pair {:>2}: peer {:>12.1}/s  ratio {:.4}",
            case.unit(),
            i + 1,
            peer.rate(),
            peer.rate() / off.rate(),
        );
    }
    if let Some((lru, agent)) = lru {
        eprintln!(
            "bench: {:>5} pair {:>2}: lru  {:>12.1}/s  ratio {:.4}  records {}",
            case.unit(),
            i + 1,
            lru.rate(),
            lru.rate() / off.rate(),
            agent.records()
        );
    }
}

/// Writes the report to `output` (relative to the workspace root) and prints the summary, or
/// with `-` prints the report only.
fn write_report(output: &str, text: &str, results: &[CaseResult]) -> Result<()> {
    if output == "-" {
        println!("{text}");
    } else {
        let path = PathBuf::from(output);
        let path = if path.is_absolute() {
            path
        } else {
            workspace_root().join(path)
        };
        std::fs::write(&path, text)?;
        println!("{}", report::summary(results));
        println!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// `--floor`'s dispatch calibration: `rounds` alternating measurements of a failing `send()`
/// with nothing attached and with the emptied programs attached. Their difference is what one
/// program run costs where the programs do nothing, measured in CPU time rather than throughput,
/// so it is steady where the workloads' pairs are not.
fn dispatch(
    binary: &Path,
    dir: &Path,
    quiet: &mut Quiet,
    rounds: usize,
) -> Result<Vec<DispatchRound>> {
    eprintln!(
        "bench: dispatch ({rounds} rounds of {} failing sends, off and with empty programs)",
        workload::DISPATCH_CALLS
    );
    let sends = || workload::failing_send_ns(workload::DISPATCH_CALLS);
    let mut out = Vec::new();
    for i in 0..rounds {
        let round = loop {
            quiet.sample();
            let off = sends()?;
            let empty = agent::during(binary, dir, &["--empty-programs"], sends)?;
            if !quiet.disturbed() {
                break DispatchRound { off, empty };
            }
        };
        eprintln!(
            "bench: dispatch round {:>2}: off {:.1} ns  empty {:.1} ns  added {:.1} ns",
            i + 1,
            round.off,
            round.empty,
            round.added()
        );
        out.push(round);
    }
    Ok(out)
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
