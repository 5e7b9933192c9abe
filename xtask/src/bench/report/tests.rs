//! Whole reports rendered from synthetic results, and the figures and tables that need a case
//! of their own.

use super::{
    breakdown::{dispatch, floor},
    *,
};
use crate::bench::{BpfStats, Case, Run};

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
    assert_golden(&full_report(), "full.md", include_str!("golden/full.md"));
    assert_golden(&plain_report(), "plain.md", include_str!("golden/plain.md"));
}
