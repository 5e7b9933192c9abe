//! The figures the report's tables show: per-pair ratios, their median with an interval that
//! assumes nothing about their distribution, quartiles, and a statistics run's cost per unit.

use crate::bench::{Case, CaseResult, ProbeStats, median};

/// Each pair's on/off throughput ratio.
pub(super) fn pair_ratios(r: &CaseResult) -> Vec<f64> {
    r.pairs.iter().map(|p| p.on.rate() / p.off.rate()).collect()
}

/// A confidence interval of at least 90 % for the median of `v`, from its order statistics (the
/// sign-test interval: it assumes nothing about the distribution). `None` below 5 values.
pub(super) fn median_ci(v: &[f64]) -> Option<(f64, f64)> {
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
pub(super) fn loss_with_ci(ratios: &[f64]) -> String {
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
pub(super) fn quartiles(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.75))
}

/// A case's median throughput off, on, and the difference, in the case's own unit.
pub(super) fn headline(r: &CaseResult) -> (String, String, String) {
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

/// A statistics run's figures per workload unit.
pub(super) struct ProbeCost {
    /// Program runs per unit.
    pub runs: f64,
    /// Kernel ns per program run.
    pub ns_run: f64,
    /// The machine's busy CPU ns per unit.
    pub busy_ns: f64,
}

impl ProbeCost {
    /// `None` without a statistics run, or for one in which no program ran.
    pub fn of(stats: &Option<ProbeStats>) -> Option<Self> {
        let (run, st) = stats.as_ref().filter(|(_, st)| st.run_cnt > 0)?;
        let units = run.units.max(1) as f64;
        Some(Self {
            runs: st.run_cnt as f64 / units,
            ns_run: st.run_time_ns as f64 / st.run_cnt as f64,
            busy_ns: st.busy_ns.max(1) as f64 / units,
        })
    }
}
