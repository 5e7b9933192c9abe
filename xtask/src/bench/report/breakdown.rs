//! The sections only some runs make, each written only when its runs were: the hooks alone and
//! the sham (`--floor`), the reference peer, the LRU map, one program run in CPU time (`--floor`'s
//! dispatch calibration) and where the time goes (`--profile`).

use std::fmt::Write as _;

use super::{
    figures::{ProbeCost, loss_with_ci, median_ci, pair_ratios, quartiles},
    prose,
};
use crate::bench::{
    CaseResult, DispatchRound, Pair, ProbeStats, median, profile::FREQUENCY,
    workload::DISPATCH_CALLS,
};

/// The `--floor` table: the same hooks with emptied programs, against off and against on.
pub(super) fn floor(w: &mut String, results: &[CaseResult]) {
    let with_floor: Vec<_> = results
        .iter()
        .filter(|r| r.pairs.iter().all(|p| p.floor.is_some()))
        .collect();
    if with_floor.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n### The hooks alone\n");
    let _ = writeln!(w, "{}", prose::FLOOR);
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
        let ratios = |f: &dyn Fn(&Pair) -> f64| r.pairs.iter().map(f).collect::<Vec<_>>();
        let empty = |p: &Pair| p.floor.map_or(f64::NAN, |f| f.empty.rate());
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
pub(super) fn peer(w: &mut String, results: &[CaseResult]) {
    let with_peer: Vec<_> = results
        .iter()
        .filter(|r| !r.pairs.is_empty() && r.pairs.iter().all(|p| p.peer.is_some()))
        .collect();
    if with_peer.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n### Beside a bpftrace script\n");
    let _ = writeln!(w, "{}", prose::PEER);
    let _ = writeln!(
        w,
        "| case | peer/off (IQR) | peer's loss (90 % CI) | agent's loss (90 % CI) | peer's share \
         of CPU | agent's share of CPU |\n|---|---|---|---|---|---|"
    );
    let share = |stats: &Option<ProbeStats>| {
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
pub(super) fn lru(w: &mut String, results: &[CaseResult]) {
    let with_lru: Vec<_> = results
        .iter()
        .filter(|r| !r.pairs.is_empty() && r.pairs.iter().all(|p| p.lru.is_some()))
        .collect();
    if with_lru.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n### With the LRU map\n");
    let _ = writeln!(w, "{}", prose::LRU);
    let _ = writeln!(
        w,
        "| case | lru/off (IQR) | lru's loss (90 % CI) | default store's loss (90 % CI) | lru's \
         records | lru's probe runs per unit | lru's share of CPU | default store's share of \
         CPU |\n|---|---|---|---|---|---|---|---|"
    );
    let share = |stats: &Option<ProbeStats>| {
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

/// `--floor`'s dispatch calibration, and what it makes of each case: the hooks' cost in CPU
/// time, beside the programs' bodies.
pub(super) fn dispatch(w: &mut String, results: &[CaseResult], rounds: &[DispatchRound]) {
    if rounds.is_empty() {
        return;
    }
    let added: Vec<f64> = rounds.iter().map(DispatchRound::added).collect();
    let per_run = median(added.clone());
    let interval = median_ci(&added).map_or(String::new(), |(lo, hi)| {
        format!(" (90 % interval {lo:.1} to {hi:.1})")
    });
    // A call's time with nothing attached.
    let off = median(rounds.iter().map(|r| r.off).collect());
    let _ = writeln!(w, "\n### One program run, in CPU time\n");
    let _ = writeln!(
        w,
        "{}",
        prose::dispatch(rounds.len(), DISPATCH_CALLS, off, per_run, &interval)
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
pub(super) fn profiles(w: &mut String, results: &[CaseResult]) {
    if results.iter().all(|r| r.profiles.is_empty()) {
        return;
    }
    let _ = writeln!(w, "\n### Where the time goes\n");
    let _ = writeln!(w, "{}", prose::profiles(FREQUENCY));
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
