//! BENCHMARKS.md: the machine, the method, the medians and their spread, and a verdict per case.
//!
//! Longer than most files: most of it is the prose of BENCHMARKS.md, one function per section,
//! and its last third is tests that render whole reports from synthetic results.

use std::fmt::Write as _;

use super::{
    Case, CaseResult, DispatchRound,
    machine::{Machine, Quiet},
    median,
};

pub struct Context<'a> {
    pub results: &'a [CaseResult],
    /// `--floor`'s dispatch calibration (empty without `--floor`).
    pub dispatch: &'a [DispatchRound],
    pub machine: &'a Machine,
    pub quiet: &'a Quiet,
    pub pairs: usize,
    pub seconds: f64,
    pub started: String,
}

/// The figures a case is judged on.
pub struct Verdict {
    /// Median over pairs of (on throughput / off throughput).
    pub ratio: f64,
    pub budget: f64,
    /// Ring-buffer records (sent + dropped) over all agent-on runs.
    pub records: u64,
}

impl Verdict {
    pub fn of(r: &CaseResult) -> Self {
        Self {
            ratio: median(pair_ratios(r)),
            budget: r.case.budget(),
            records: r.pairs.iter().map(|p| p.agent.records()).sum(),
        }
    }

    pub fn loss(&self) -> f64 {
        1.0 - self.ratio
    }

    pub fn met(&self) -> bool {
        self.loss() <= self.budget && self.records == 0
    }
}

fn pair_ratios(r: &CaseResult) -> Vec<f64> {
    r.pairs.iter().map(|p| p.on.rate() / p.off.rate()).collect()
}

/// A confidence interval of at least 90 % for the median of `v`, from its order statistics (the
/// sign-test interval: it assumes nothing about the distribution). `None` below 5 values.
fn median_ci(v: &[f64]) -> Option<(f64, f64)> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    // The largest k with P(Binomial(n, 1/2) < k) <= 5 %: the true median lies below the k-th
    // smallest value, or above the k-th largest, with at most 5 % probability each.
    let (mut k, mut below, mut term) = (0, 0.0, 0.5f64.powi(n as i32));
    while k < n / 2 && below + term <= 0.05 {
        below += term;
        term = term * (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    (k > 0).then(|| (v[k - 1], v[n - k]))
}

/// `ratios`' median as a loss in percent, with the interval of [`median_ci`] (also as losses).
fn loss_with_ci(ratios: &[f64]) -> String {
    let loss = (1.0 - median(ratios.to_vec())) * 100.0;
    match median_ci(ratios) {
        Some((lo, hi)) => format!(
            "{loss:.2} % ({:.2} to {:.2})",
            (1.0 - hi) * 100.0,
            (1.0 - lo) * 100.0
        ),
        None => format!("{loss:.2} %"),
    }
}

/// The 25th and 75th percentiles (nearest rank).
fn quartiles(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.75))
}

fn headline(r: &CaseResult) -> (String, String, String) {
    let off = median(r.pairs.iter().map(|p| p.off.rate()).collect());
    let on = median(r.pairs.iter().map(|p| p.on.rate()).collect());
    match r.case {
        // Throughput is the ratio's basis everywhere; small writes are also shown per call.
        Case::Writes => (
            format!("{:.0} ns/write", 1e9 / off),
            format!("{:.0} ns/write", 1e9 / on),
            format!("{:+.0} ns/write", 1e9 / on - 1e9 / off),
        ),
        Case::Http => (
            format!("{off:.0} req/s"),
            format!("{on:.0} req/s"),
            format!("{:+.0} req/s", on - off),
        ),
        Case::Churn => (
            format!("{off:.0} conn/s"),
            format!("{on:.0} conn/s"),
            format!("{:+.0} conn/s", on - off),
        ),
    }
}

/// One line per case for the terminal.
pub fn summary(results: &[CaseResult]) -> String {
    let mut s = String::new();
    for r in results {
        let v = Verdict::of(r);
        let (off, on, delta) = headline(r);
        let _ = writeln!(
            s,
            "{:<6} off {off:>16}  on {on:>16}  ({delta})  on/off {:.4}  loss {:+.2} % \
             (budget {:.0} %)  records {}  {}",
            r.case.unit(),
            v.ratio,
            v.loss() * 100.0,
            v.budget * 100.0,
            v.records,
            if v.met() { "ok" } else { "MISSED" }
        );
    }
    s
}

/// BENCHMARKS.md, section by section.
pub fn render(cx: &Context<'_>) -> String {
    let mut s = String::new();
    let w = &mut s;
    header(w, &cx.started);
    machine(w, cx.machine);
    quiet(w, cx.quiet);
    method(w, cx.pairs, cx.seconds);
    throughput(w, cx.results);
    floor(w, cx.results);
    peer(w, cx.results);
    lru(w, cx.results);
    missed_note(w, cx.results);
    agent_method(w);
    agent_table(w, cx.results);
    dispatch(w, cx.results, cx.dispatch);
    profiles(w, cx.results);
    every_pair(w, cx.results);
    s
}

/// The title, and where the file comes from.
fn header(w: &mut String, started: &str) {
    let _ = writeln!(w, "# lostwrite overhead benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `cargo xtask bench` on {started}; do not edit by hand, rerun it.\n",
    );
}

/// The machine's table: hardware, kernel and the versions measured.
fn machine(w: &mut String, m: &Machine) {
    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    for (k, v) in [
        ("CPU", format!("{} ({} cores)", m.cpu, m.cores)),
        ("memory", m.memory.clone()),
        ("kernel", m.kernel.clone()),
        (
            "agent",
            format!(
                "commit {}, `agent run` defaults (`--probe-mode auto` and `--socket-state auto` \
                 chose `{}`)",
                m.commit, m.probe_mode
            ),
        ),
        ("nginx", m.nginx.clone()),
        ("wrk", m.wrk.clone()),
        ("bpftrace (the reference peer)", m.bpftrace.clone()),
    ] {
        let _ = writeln!(w, "| {k} | {v} |");
    }
}

/// How busy the machine was before the pairs, and what else ran on it.
fn quiet(w: &mut String, quiet: &Quiet) {
    let loads = &quiet.loads;
    let max_load = loads.iter().copied().fold(f64::NAN, f64::max);
    let _ = writeln!(
        w,
        "\nBefore the pairs the 1-minute load average was {:.2} (median) to {:.2} (max); {} of \
         the pairs waited for other work on the machine to stop first (with `--wait-quiet`, each \
         pair starts only when no compiler or VM runs and the CPUs are under 10 % busy, and \
         is measured again when one started during it: {} times here); compilers or VMs seen \
         running anyway: {}.\n",
        median(loads.clone()),
        max_load,
        quiet.waited,
        quiet.discarded,
        if quiet.competitors.is_empty() {
            "none".to_owned()
        } else {
            quiet
                .competitors
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
}

/// How the pairs are run and compared, and what each workload does.
fn method(w: &mut String, pairs: usize, seconds: f64) {
    let _ = writeln!(w, "## Method\n");
    let _ = writeln!(
        w,
        "Each case runs {} pairs of {:.1} s runs, agent off then agent on, alternating in one \
         invocation, after one unmeasured warm-up run. For each agent-on run the agent is started \
         fresh in its default configuration, measured only after its `/healthz` answers and {:.1} s \
         more, and stopped with SIGTERM afterwards. **on/off** is the median over pairs of (agent-on \
         throughput / agent-off throughput of the same pair); the spread is the interquartile range \
         and the extremes of those per-pair ratios. A loss inside the spread is within this \
         machine's noise.\n",
        pairs,
        seconds,
        super::agent::SETTLE.as_secs_f64()
    );
    let _ = writeln!(
        w,
        "- **writes**: one loopback TCP connection with TCP_NODELAY, 64-byte `write()` calls in a \
         loop, a thread reading the other end in 64 KiB reads.\n\
         - **http**: `wrk -t1 -c32` against nginx (1 worker, `access_log off`, keep-alive for the \
         whole run), GET of a 1 KiB file.\n\
         - **churn**: two client threads, each connecting, sending one `Connection: close` request \
         for the 1 KiB file to the same nginx, reading until nginx closes, and closing.\n"
    );
}

/// The throughput table: medians, spread, loss and verdict per case.
fn throughput(w: &mut String, results: &[CaseResult]) {
    let _ = writeln!(w, "## Throughput\n");
    let _ = writeln!(
        w,
        "| case | agent off (median) | agent on (median) | difference | on/off | spread of on/off \
         (IQR; min–max) | loss (90 % CI) | budget | |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let v = Verdict::of(r);
        let (off, on, delta) = headline(r);
        let ratios = pair_ratios(r);
        let (q1, q3) = quartiles(&ratios);
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        let _ = writeln!(
            w,
            "| {} | {off} | {on} | {delta} | {:.4} | {q1:.4}–{q3:.4}; {lo:.4}–{hi:.4} | {} | ≤{:.0} % \
             | {} |",
            r.case.title(),
            v.ratio,
            loss_with_ci(&ratios),
            v.budget * 100.0,
            match (v.met(), median_ci(&ratios)) {
                (true, _) => "met",
                // The interval's best end (highest on/off) is still a loss over the budget.
                (false, Some((_, best))) if 1.0 - best > v.budget => "**missed**",
                (false, _) => "**missed** (the interval reaches the budget)",
            },
        );
    }
}

/// Where a missed target is explained, when one was missed.
fn missed_note(w: &mut String, results: &[CaseResult]) {
    if results.iter().any(|r| !Verdict::of(r).met()) {
        let _ = writeln!(
            w,
            "\nA missed target is explained, with its profile and what would close the gap, in \
             the README's \"Overhead and bounds\" section."
        );
    }
}

/// What the agent's own columns mean and where they come from.
fn agent_method(w: &mut String) {
    let _ = writeln!(w, "\n## The agent\n");
    let _ = writeln!(
        w,
        "\"Events\" are the workload's units: one `write()` call, one HTTP request, one connection. \
         CPU is the agent process's user + system time (`/proc/<pid>/stat` utime + stime, read \
         before and after each agent-on run, summed over them), per million units. Peak RSS is \
         the highest `VmHWM` of any agent-on run (most of it is the start-up parse of the \
         kernel's BTF), with the highest `VmRSS` at a run's end beside it. Ring-buffer records \
         are the agent's own `lostwrite_kernel_events_total` + `lostwrite_events_dropped_total`, \
         scraped at the start and end of each run's steady window (for wrk, the run less 0.4 s \
         at each end, so that wrk's exit, which resets connections with responses in flight and \
         is rightly reported, is left out; the window's requests are estimated from wrk's rate): \
         the traffic is healthy, so the target is 0.\n\n\
         The programs themselves run in the kernel, in the context of the traced tasks, so their \
         cost shows as the throughput loss above, not in the agent's CPU. The probe columns come \
         from one extra agent-on run per case with `kernel.bpf_stats_enabled=1` (which adds its \
         own timing cost, so it is kept apart from the pairs): `run_cnt` and `run_time_ns` summed \
         over the agent's programs. They time the program bodies only (not the tracepoint's \
         dispatch) and include two clock reads per run of their own. **Share of CPU** divides \
         that program time by the busy CPU time of the whole machine (/proc/stat user, nice, \
         system, irq and softirq) over the same window: the two are measured together, so a \
         host that slows this VM down slows both, and the share stays steady where the \
         throughput pairs do not. With every CPU saturated (which these workloads are), it is \
         close to the throughput the programs' bodies take away; the dispatch comes on top.\n"
    );
}

/// The agent's table: its CPU, memory and records, and the probes' cost, per case.
fn agent_table(w: &mut String, results: &[CaseResult]) {
    let _ = writeln!(
        w,
        "| case | agent CPU (s per 1M events) | peak RSS | ring-buffer records per event | records \
         (sent + dropped, all runs) | probe runs per event | kernel ns per probe run | probe ns \
         per event | share of CPU |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let cpu: f64 = r.pairs.iter().map(|p| p.agent.cpu_seconds).sum();
        let units: u64 = r.pairs.iter().map(|p| p.on.units).sum();
        let peak = r
            .pairs
            .iter()
            .map(|p| p.agent.peak_rss_kib)
            .max()
            .unwrap_or(0);
        let rss = r.pairs.iter().map(|p| p.agent.rss_kib).max().unwrap_or(0);
        let records: u64 = r.pairs.iter().map(|p| p.agent.records()).sum();
        let steady: f64 = r.pairs.iter().map(|p| p.agent.steady_units).sum();
        let (runs, ns_run, ns_unit, share) = match ProbeCost::of(&r.probe_stats) {
            Some(c) => (
                format!("{:.2}", c.runs),
                format!("{:.0}", c.ns_run),
                format!("{:.0}", c.ns_run * c.runs),
                format!("{:.2} %", c.ns_run * c.runs / c.busy_ns * 100.0),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()),
        };
        let _ = writeln!(
            w,
            "| {} | {:.3} | {:.1} MiB ({:.1} MiB at the end) | {} | {records} | {runs} | {ns_run} | \
             {ns_unit} | {share} |",
            r.case.unit(),
            cpu / units as f64 * 1e6,
            peak as f64 / 1024.0,
            rss as f64 / 1024.0,
            if steady > 0.0 {
                format!("{:.2e}", records as f64 / steady)
            } else {
                "n/a".to_owned()
            },
        );
    }
}

/// Every run's throughput, pair by pair.
fn every_pair(w: &mut String, results: &[CaseResult]) {
    let _ = writeln!(w, "\n## Every pair\n");
    let _ = writeln!(
        w,
        "Throughput per run (units/s), off → on (with `--floor`, the emptied programs' run and \
         the sham in parentheses).\n"
    );
    for r in results {
        let runs: Vec<String> = r
            .pairs
            .iter()
            .map(|p| match p.floor {
                Some(f) => format!(
                    "{:.0} → {:.0} (empty {:.0}, sham {:.0})",
                    p.off.rate(),
                    p.on.rate(),
                    f.empty.rate(),
                    f.sham.rate()
                ),
                None => format!("{:.0} → {:.0}", p.off.rate(), p.on.rate()),
            })
            .collect();
        let _ = writeln!(w, "- **{}**: {}", r.case.unit(), runs.join(", "));
    }
}

/// The `--floor` table: the same hooks with emptied programs, against off and against on.
fn floor(w: &mut String, results: &[CaseResult]) {
    let with_floor: Vec<_> = results
        .iter()
        .filter(|r| r.pairs.iter().all(|p| p.floor.is_some()))
        .collect();
    if with_floor.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n### The hooks alone\n");
    let _ = writeln!(
        w,
        "Each pair above had two more runs (`--floor`). In one, the agent was started the same \
         way with `--empty-programs`, so that every program is attached and returns as soon as \
         it has its arguments: **empty/off** is what attaching programs to these hooks costs \
         before they do any work, and **on/empty** is what the programs' work adds to that. In \
         the other, the sham, the agent was started and stopped, and the workload ran after the \
         same pause with nothing attached: **sham/off** is the method's own bias and noise, what \
         this bench reports for an agent that costs nothing. All are medians over pairs, with \
         the interquartile range, and the losses with the 90 % interval of their median. Where \
         that interval for empty programs lies wholly over the budget, no program on these hooks \
         meets the budget on this machine.\n"
    );
    let _ = writeln!(
        w,
        "| case | sham/off (IQR) | empty/off (IQR) | loss with empty programs | on/empty (IQR) \
         | loss the work adds |\n|---|---|---|---|---|---|"
    );
    // The median of `v` with its interquartile range.
    let spread = |v: &[f64]| {
        let (q1, q3) = quartiles(v);
        format!("{:.4} ({q1:.4}–{q3:.4})", median(v.to_vec()))
    };
    for r in with_floor {
        let ratios = |f: &dyn Fn(&super::Pair) -> f64| r.pairs.iter().map(f).collect::<Vec<_>>();
        let empty = |p: &super::Pair| p.floor.map_or(f64::NAN, |f| f.empty.rate());
        let sham = ratios(&|p| p.floor.map_or(f64::NAN, |f| f.sham.rate()) / p.off.rate());
        let hooks = ratios(&|p| empty(p) / p.off.rate());
        let work = ratios(&|p| p.on.rate() / empty(p));
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            r.case.title(),
            spread(&sham),
            spread(&hooks),
            loss_with_ci(&hooks),
            spread(&work),
            loss_with_ci(&work),
        );
    }
}

/// The reference peer beside the agent: its throughput loss over the same pairs, and both
/// share of CPU where statistics runs were made.
fn peer(w: &mut String, results: &[CaseResult]) {
    let with_peer: Vec<_> = results
        .iter()
        .filter(|r| !r.pairs.is_empty() && r.pairs.iter().all(|p| p.peer.is_some()))
        .collect();
    if with_peer.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n### Beside a bpftrace script\n");
    let _ = writeln!(
        w,
        "Each pair above had one more run, with bpftrace running `xtask/src/bench/peer.bt` \
         instead of the agent: the unanswered-close detector as a person \
         would write it by hand, on the same tracepoints (a hash map of `copied_seq` per socket, \
         written at every successful send, read at every local close; no protocol, role or \
         goodbye told apart). **peer/off** is its throughput over the agent-off run of the same \
         pair; the shares of CPU are each one's program time over the machine's busy time, from \
         one run with BPF statistics on (the method of [The agent](#the-agent)).\n"
    );
    let _ = writeln!(
        w,
        "| case | peer/off (IQR) | peer's loss (90 % CI) | agent's loss (90 % CI) | peer's share \
         of CPU | agent's share of CPU |\n|---|---|---|---|---|---|"
    );
    let share = |stats: &Option<super::ProbeStats>| {
        ProbeCost::of(stats).map_or("n/a".to_owned(), |c| {
            format!("{:.2} %", c.ns_run * c.runs / c.busy_ns * 100.0)
        })
    };
    for r in with_peer {
        let ratios: Vec<f64> = r
            .pairs
            .iter()
            .map(|p| p.peer.map_or(f64::NAN, |peer| peer.rate()) / p.off.rate())
            .collect();
        let (q1, q3) = quartiles(&ratios);
        let _ = writeln!(
            w,
            "| {} | {:.4} ({q1:.4}–{q3:.4}) | {} | {} | {} | {} |",
            r.case.title(),
            median(ratios.clone()),
            loss_with_ci(&ratios),
            loss_with_ci(&pair_ratios(r)),
            share(&r.peer_stats),
            share(&r.probe_stats),
        );
    }
}

/// The agent with its state in the LRU map, beside the default store: throughput over the same
/// pairs, records, and share of CPU.
fn lru(w: &mut String, results: &[CaseResult]) {
    let with_lru: Vec<_> = results
        .iter()
        .filter(|r| !r.pairs.is_empty() && r.pairs.iter().all(|p| p.lru.is_some()))
        .collect();
    if with_lru.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n### With the LRU map\n");
    let _ = writeln!(
        w,
        "Each pair above had one more run with the agent started with `--socket-state lru`: \
         its connection state in the LRU hash map (the store of kprobe mode, classic \
         tracepoints and kernels before 5.11) instead of the default store named under Machine. \
         **lru/off** is its throughput over the agent-off run of the same pair; the shares of \
         CPU come from one run each with BPF statistics on (the method of \
         [The agent](#the-agent)), and the split into hooks and work is in \
         [One program run](#one-program-run-in-cpu-time).\n"
    );
    let _ = writeln!(
        w,
        "| case | lru/off (IQR) | lru's loss (90 % CI) | default store's loss (90 % CI) | lru's \
         records | lru's probe runs per unit | lru's share of CPU | default store's share of \
         CPU |\n|---|---|---|---|---|---|---|---|"
    );
    let share = |stats: &Option<super::ProbeStats>| {
        ProbeCost::of(stats).map_or("n/a".to_owned(), |c| {
            format!("{:.2} %", c.ns_run * c.runs / c.busy_ns * 100.0)
        })
    };
    for r in with_lru {
        let ratios: Vec<f64> = r
            .pairs
            .iter()
            .map(|p| p.lru.as_ref().map_or(f64::NAN, |(run, _)| run.rate()) / p.off.rate())
            .collect();
        let records: u64 = r
            .pairs
            .iter()
            .filter_map(|p| p.lru.as_ref().map(|(_, a)| a.records()))
            .sum();
        let (q1, q3) = quartiles(&ratios);
        let _ = writeln!(
            w,
            "| {} | {:.4} ({q1:.4}–{q3:.4}) | {} | {} | {records} | {} | {} | {} |",
            r.case.title(),
            median(ratios.clone()),
            loss_with_ci(&ratios),
            loss_with_ci(&pair_ratios(r)),
            ProbeCost::of(&r.lru_stats).map_or("n/a".to_owned(), |c| format!("{:.2}", c.runs)),
            share(&r.lru_stats),
            share(&r.probe_stats),
        );
    }
}

/// A statistics run's figures per workload unit.
struct ProbeCost {
    /// Program runs per unit.
    runs: f64,
    /// Kernel ns per program run.
    ns_run: f64,
    /// The machine's busy CPU ns per unit.
    busy_ns: f64,
}

impl ProbeCost {
    fn of(stats: &Option<(super::Run, super::agent::BpfStats)>) -> Option<Self> {
        let (run, st) = stats.as_ref().filter(|(_, st)| st.run_cnt > 0)?;
        let units = run.units.max(1) as f64;
        Some(Self {
            runs: st.run_cnt as f64 / units,
            ns_run: st.run_time_ns as f64 / st.run_cnt as f64,
            busy_ns: st.busy_ns.max(1) as f64 / units,
        })
    }
}

/// `--floor`'s dispatch calibration, and what it makes of each case: the hooks' cost in CPU
/// time, beside the programs' bodies.
fn dispatch(w: &mut String, results: &[CaseResult], rounds: &[DispatchRound]) {
    if rounds.is_empty() {
        return;
    }
    let added: Vec<f64> = rounds.iter().map(DispatchRound::added).collect();
    let per_run = median(added.clone());
    let interval = median_ci(&added).map_or(String::new(), |(lo, hi)| {
        format!(" (90 % interval {lo:.1} to {hi:.1})")
    });
    let _ = writeln!(w, "\n### One program run, in CPU time\n");
    let _ = writeln!(
        w,
        "With `--floor`, the bench also alternated {} rounds of {} `send()` calls on an \
         unconnected UDP socket, with nothing attached and with the emptied programs attached. \
         Each call fails at once (no destination) but still fires `sock:sock_send_length`, so \
         the difference is one tracepoint dispatch into a program that returns at once, measured \
         as the caller's CPU time, with no packet, wake-up or other task involved: {:.1} ns per \
         call with nothing attached, **{per_run:.1} ns more per program run**{interval}.\n\n\
         Times the program runs per unit (from the probe columns above) and over the machine's \
         busy CPU time per unit in that run, this is the share of a CPU-bound workload the hooks \
         take before the programs do anything. The programs' work is the same statistics run's \
         program time per unit less that of a run with the programs emptied (which is almost \
         all the statistics' own clock reads), so that neither the dispatch nor the statistics \
         are counted in it.\n",
        rounds.len(),
        super::workload::DISPATCH_CALLS,
        median(rounds.iter().map(|r| r.off).collect()),
    );
    let _ = writeln!(
        w,
        "| case | program runs per unit | busy CPU per unit | the hooks per unit | the work per \
         unit | the hooks' share of CPU | the work's share | both | budget |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let Some(empty) = ProbeCost::of(&r.empty_probe_stats) else {
            continue;
        };
        // The emptied programs' time per run is the statistics' own cost, the same for either
        // store's programs.
        for (label, stats) in [("", &r.probe_stats), (" (lru)", &r.lru_stats)] {
            let Some(on) = ProbeCost::of(stats) else {
                continue;
            };
            let (runs, ns_run, busy) = (on.runs, on.ns_run, on.busy_ns);
            let hooks = per_run * runs;
            let work = (ns_run - empty.ns_run) * runs;
            let _ = writeln!(
                w,
                "| {}{label} | {runs:.2} | {busy:.0} ns | {hooks:.0} ns | {work:.0} ns | {:.2} % \
                 | {:.2} % | {:.2} % | {:.0} % |",
                r.case.unit(),
                hooks / busy * 100.0,
                work / busy * 100.0,
                (hooks + work) / busy * 100.0,
                r.case.budget() * 100.0,
            );
        }
    }
}

/// `--profile`'s tables: where each case's BPF time goes, per unit and as a share of the busy
/// CPU, for each store.
fn profiles(w: &mut String, results: &[CaseResult]) {
    if results.iter().all(|r| r.profiles.is_empty()) {
        return;
    }
    let _ = writeln!(w, "\n### Where the time goes\n");
    let _ = writeln!(
        w,
        "With `--profile`, one more agent-on run per case and store ran under `perf record -e \
         cpu-clock -a -g -F{}` over its steady window. Each sample on a busy CPU is placed by its \
         call chain: in a program (**body**: its own instructions; else the helper or map \
         function it was in, with what that called), in the tracepoint's dispatch around the \
         programs, or in freeing a socket's local storage when the socket is destroyed, which \
         runs in no program and so is in no BPF statistic above. A sample is {} µs of one CPU; \
         places under {:.2} % of the busy CPU are in the total only. Sampling slows the workload \
         (each total row gives the profiled run's rate beside the agent-on pairs'), so the shares \
         are the measure and the ns per unit are those of the slowed run; these runs are apart \
         from the pairs.\n",
        super::profile::FREQUENCY,
        1e6 / super::profile::FREQUENCY as f64,
        0.02,
    );
    let _ = writeln!(
        w,
        "| case | store | where | what | ns per unit | share of busy CPU |\n\
         |---|---|---|---|---|---|"
    );
    for r in results {
        for (store, p) in &r.profiles {
            for ((place, what), samples) in p.listed() {
                let _ = writeln!(
                    w,
                    "| {} | {store} | {place} | {what} | {:.0} | {:.2} % |",
                    r.case.unit(),
                    p.ns_per_unit(samples),
                    p.share(samples) * 100.0,
                );
            }
            let _ = writeln!(
                w,
                "| {} | {store} | **all of it** | of {:.0} ns busy per unit, at {:.0} units/s \
                 (agent-on pairs: {:.0}) | **{:.0}** | **{:.2} %** |",
                r.case.unit(),
                p.ns_per_unit(p.busy),
                p.units / p.seconds,
                median(r.pairs.iter().map(|x| x.on.rate()).collect()),
                p.ns_per_unit(p.total()),
                p.share(p.total()) * 100.0,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{BpfStats, Run};

    #[test]
    fn median_interval_from_order_statistics() {
        let v: Vec<f64> = (1..=16).map(f64::from).collect();
        // n = 16: P(B <= 4) = 3.8 %, P(B <= 5) = 10.5 %, so the 5th and 12th values (92.3 %).
        assert_eq!(median_ci(&v), Some((5.0, 12.0)));
        let v: Vec<f64> = (1..=5).map(f64::from).collect();
        // n = 5: P(B = 0) = 3.1 %: the extremes.
        assert_eq!(median_ci(&v), Some((1.0, 5.0)));
        assert_eq!(median_ci(&[1.0, 2.0, 3.0, 4.0]), None);
        assert_eq!(
            loss_with_ci(&[0.99, 0.98, 0.97, 0.96, 0.95]),
            "3.00 % (1.00 to 5.00)"
        );
    }

    #[test]
    fn quartiles_by_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quartiles(&v), (2.0, 4.0));
    }

    fn run(units: u64) -> crate::bench::Run {
        crate::bench::Run {
            units,
            seconds: 1.0,
        }
    }

    fn pair(off: u64, on: u64, floor: Option<(u64, u64)>) -> crate::bench::Pair {
        crate::bench::Pair {
            off: run(off),
            on: run(on),
            agent: Default::default(),
            floor: floor.map(|(empty, sham)| crate::bench::Floor {
                empty: run(empty),
                sham: run(sham),
            }),
            peer: None,
            lru: None,
        }
    }

    #[test]
    fn floor_table_splits_the_hooks_from_the_work() {
        let results = [CaseResult {
            case: Case::Http,
            pairs: vec![
                pair(1000, 950, Some((980, 1010))),
                pair(1000, 940, Some((960, 990))),
            ],
            probe_stats: None,
            empty_probe_stats: None,
            peer_stats: None,
            lru_stats: None,
            profiles: Vec::new(),
        }];
        let mut w = String::new();
        floor(&mut w, &results);
        // sham/off: 1.01 and 0.99; empty/off: 0.98 and 0.96, median 0.97; on/empty: 0.9694 and
        // 0.9792, median 0.9743.
        let row = w
            .lines()
            .find(|l| l.starts_with("| wrk"))
            .expect("a row for the case");
        assert!(row.contains("| 1.0000 (0.9900–1.0100) |"), "{row}");
        assert!(row.contains("| 0.9700 (0.9600–0.9800) | 3.00 % |"), "{row}");
        assert!(row.contains("| 0.9743 (0.9694–0.9792) | 2.57 % |"), "{row}");
    }

    #[test]
    fn dispatch_table_scales_one_run_by_the_runs_per_unit() {
        let results = [CaseResult {
            case: Case::Http,
            pairs: vec![pair(1000, 950, None)],
            probe_stats: Some((
                run(1000),
                crate::bench::agent::BpfStats {
                    run_cnt: 2000,
                    run_time_ns: 300_000,
                    busy_ns: 20_000_000,
                },
            )),
            empty_probe_stats: Some((
                run(2000),
                crate::bench::agent::BpfStats {
                    run_cnt: 4000,
                    run_time_ns: 200_000,
                    busy_ns: 40_000_000,
                },
            )),
            peer_stats: None,
            lru_stats: None,
            profiles: Vec::new(),
        }];
        let rounds: Vec<DispatchRound> = [(160.0, 210.0), (162.0, 222.0), (158.0, 213.0)]
            .map(|(off, empty)| DispatchRound { off, empty })
            .into();
        let mut w = String::new();
        dispatch(&mut w, &results, &rounds);
        // Added: 50, 60, 55 ns, median 55; 2 runs per request over 20 µs of busy CPU. The
        // programs ran 150 ns, emptied 50 ns: 100 ns of work per run, 200 per request.
        assert!(w.contains("**55.0 ns more per program run**"), "{w}");
        let row = w.lines().find(|l| l.starts_with("| request")).unwrap();
        assert_eq!(
            row,
            "| request | 2.00 | 20000 ns | 110 ns | 200 ns | 0.55 % | 1.00 % | 1.55 % | 1 % |"
        );
        let mut w = String::new();
        dispatch(&mut w, &results, &[]);
        assert!(w.is_empty());
    }

    fn agent(cpu_seconds: f64, peak_rss_kib: u64, records_sent: u64) -> crate::bench::AgentRun {
        crate::bench::AgentRun {
            cpu_seconds,
            peak_rss_kib,
            rss_kib: peak_rss_kib - 1024,
            records_sent,
            records_dropped: 0,
            steady_units: 900.0,
            probe_mode: "tracepoint".into(),
        }
    }

    fn stats(units: u64, run_cnt: u64, run_time_ns: u64) -> Option<(Run, BpfStats)> {
        Some((
            run(units),
            BpfStats {
                run_cnt,
                run_time_ns,
                busy_ns: 20_000_000,
            },
        ))
    }

    /// Every case, one of them over its budget and one with records, with `--floor`'s runs, the
    /// probe statistics and the dispatch calibration: every section and branch of the report.
    fn full_results() -> Vec<CaseResult> {
        let with_agent = |mut p: crate::bench::Pair, records| {
            p.agent = agent(0.25, 40_960, records);
            p
        };
        vec![
            CaseResult {
                case: Case::Writes,
                pairs: (0..5)
                    .map(|i| {
                        let mut p = pair(100_000, 99_000 - i * 100, Some((99_500, 100_100)));
                        p.peer = Some(run(92_000 + i * 100));
                        p.lru = Some((run(97_000 + i * 100), agent(0.25, 40_960, 0)));
                        with_agent(p, 0)
                    })
                    .collect(),
                probe_stats: stats(100_000, 200_000, 30_000_000),
                empty_probe_stats: stats(100_000, 200_000, 10_000_000),
                peer_stats: stats(100_000, 200_000, 90_000_000),
                lru_stats: stats(100_000, 200_000, 50_000_000),
                profiles: vec![("default store", profile())],
            },
            CaseResult {
                case: Case::Http,
                pairs: (0..5)
                    .map(|i| with_agent(pair(1000, 900 + i, Some((950, 1001))), 0))
                    .collect(),
                probe_stats: stats(1000, 2000, 300_000),
                empty_probe_stats: None,
                peer_stats: None,
                lru_stats: None,
                profiles: Vec::new(),
            },
            CaseResult {
                case: Case::Churn,
                pairs: vec![with_agent(pair(500, 495, None), 3)],
                probe_stats: None,
                empty_probe_stats: None,
                peer_stats: None,
                lru_stats: None,
                profiles: Vec::new(),
            },
        ]
    }

    /// 1000 busy samples over 100 units (at 4 kHz a sample is 250 µs of CPU, 2.5 µs per unit): a
    /// program's body, a helper, and one place too small to list.
    fn profile() -> crate::bench::profile::Profile {
        let mut p = crate::bench::profile::Profile {
            busy: 1000,
            units: 100.0,
            seconds: 1.0,
            ..Default::default()
        };
        for (place, what, n) in [
            ("btf_sock_send_length_local", "body", 30),
            ("btf_sock_send_length_local", "bpf_probe_read_user", 10),
            ("dispatch", "bpf_trace_run3", 0),
        ] {
            p.places.insert((place.into(), what.into()), n);
        }
        p
    }

    fn machine() -> Machine {
        Machine {
            cpu: "Test CPU".into(),
            cores: 2,
            memory: "4.0 GiB".into(),
            kernel: "6.12.0".into(),
            probe_mode: "tracepoint".into(),
            nginx: "nginx/1.22.1".into(),
            wrk: "wrk 4.1.0".into(),
            bpftrace: "bpftrace v0.17.0".into(),
            commit: "0123456".into(),
        }
    }

    /// The report of [`full_results`], with the dispatch calibration, waits and a competitor.
    fn full_report() -> String {
        let results = full_results();
        let dispatch: Vec<DispatchRound> = [(160.0, 210.0), (162.0, 222.0), (158.0, 213.0)]
            .map(|(off, empty)| DispatchRound { off, empty })
            .into();
        let mut quiet = Quiet::default();
        quiet.loads = vec![0.3, 0.5, 0.4];
        quiet.waited = 2;
        quiet.discarded = 1;
        quiet.competitors.insert("rustc".into());
        render(&Context {
            results: &results,
            dispatch: &dispatch,
            machine: &machine(),
            quiet: &quiet,
            pairs: 5,
            seconds: 3.0,
            started: "2024-01-01 00:00 UTC".into(),
        })
    }

    /// The report of one case that meets its budget, without `--floor` or probe statistics.
    fn plain_report() -> String {
        let results = [CaseResult {
            case: Case::Writes,
            pairs: vec![pair(100_000, 99_500, None)],
            probe_stats: None,
            empty_probe_stats: None,
            peer_stats: None,
            lru_stats: None,
            profiles: Vec::new(),
        }];
        render(&Context {
            results: &results,
            dispatch: &[],
            machine: &machine(),
            quiet: &Quiet::default(),
            pairs: 1,
            seconds: 1.5,
            started: "2024-01-01 00:00 UTC".into(),
        })
    }

    #[test]
    fn render_has_every_section_in_order() {
        let full = full_report();
        let headings: Vec<&str> = full.lines().filter(|l| l.starts_with('#')).collect();
        assert_eq!(
            headings,
            [
                "# lostwrite overhead benchmarks",
                "## Machine",
                "## Method",
                "## Throughput",
                "### The hooks alone",
                "### Beside a bpftrace script",
                "### With the LRU map",
                "## The agent",
                "### One program run, in CPU time",
                "### Where the time goes",
                "## Every pair",
            ]
        );
        assert!(
            full.contains("compilers or VMs seen running anyway: rustc."),
            "{full}"
        );
        assert!(full.contains("A missed target is explained"), "{full}");
        // The peer's row: 92,200 of 100,000 (median), its share from 90 ms over 20 ms busy
        // time per 100,000 units; only the case whose every pair had a peer run.
        assert!(
            full.contains("| 64-byte write() loop, loopback TCP | 0.9220 (0.9210–0.9230) | 7.80 %"),
            "{full}"
        );
        assert!(full.contains("| 450.00 % | 150.00 % |"), "{full}");
        // The LRU row: 97,200 of 100,000, no records, 2 runs per write, 50 ms over 20 ms.
        assert!(
            full.contains(
                "| 64-byte write() loop, loopback TCP | 0.9720 (0.9710–0.9730) | 2.80 % (2.60 to \
                 3.00) |"
            ),
            "{full}"
        );
        assert!(
            full.contains("| 0 | 2.00 | 250.00 % | 150.00 % |"),
            "{full}"
        );
        assert!(full.contains("| write (lru) | 2.00 |"), "{full}");
        // The profile: 30 samples are 75 µs per unit and 3 % of the 1000 busy ones; the empty
        // place is left out of the rows.
        assert!(
            full.contains(
                "| write | default store | btf_sock_send_length_local | body | 75000 | 3.00 % |"
            ),
            "{full}"
        );
        assert!(
            full.contains("| write | default store | **all of it** | of 2500000 ns busy per unit, at 100 units/s (agent-on pairs: 98800) | **100000** | **4.00 %** |"),
            "{full}"
        );
        assert!(!full.contains("bpf_trace_run3"), "{full}");
        assert_eq!(
            full.matches("| wrk -> nginx, keep-alive").count(),
            2,
            "{full}"
        );
        assert!(full.ends_with("- **connection**: 500 → 495\n"), "{full}");

        let plain = plain_report();
        assert!(!plain.contains("###"), "{plain}");
        assert!(!plain.contains("A missed target"), "{plain}");
        assert!(plain.contains("running anyway: none."), "{plain}");
    }

    #[test]
    fn no_floor_table_without_floor_runs() {
        let results = [CaseResult {
            case: Case::Writes,
            pairs: vec![pair(1000, 950, None)],
            probe_stats: None,
            empty_probe_stats: None,
            peer_stats: None,
            lru_stats: None,
            profiles: Vec::new(),
        }];
        let mut w = String::new();
        floor(&mut w, &results);
        assert!(w.is_empty());
    }

    /// Compares `rendered` with the stored report `name` under `report/golden/`, naming the
    /// first line that differs (the whole text would bury it).
    fn assert_golden(rendered: &str, name: &str, expected: &str) {
        let first = rendered
            .lines()
            .zip(expected.lines())
            .position(|(r, e)| r != e)
            .unwrap_or_else(|| rendered.lines().count().min(expected.lines().count()));
        assert!(
            rendered == expected,
            "the report differs from report/golden/{name} at line {}:\n  rendered: {:?}\n  \
             expected: {:?}\nif the change is intended, store the new rendering there",
            first + 1,
            rendered.lines().nth(first),
            expected.lines().nth(first),
        );
    }

    /// The whole report, byte for byte, from the inputs of [`full_report`] and
    /// [`plain_report`]: a change in wording or layout shows here, not only in BENCHMARKS.md.
    #[test]
    fn render_matches_the_stored_reports() {
        assert_golden(
            &full_report(),
            "full.md",
            include_str!("report/golden/full.md"),
        );
        assert_golden(
            &plain_report(),
            "plain.md",
            include_str!("report/golden/plain.md"),
        );
    }
}
