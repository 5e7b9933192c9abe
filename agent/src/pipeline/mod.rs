//! The flow of a kernel record, stage by stage:
//!
//! ring buffer → [`ingest`] (decode, then correlate) → [`filter`] → enrich (the pod,
//! [`k8s::Resolver`]) → report (metrics, [`report`] log line).
//!
//! The filter runs before the enrichment, not after: it needs no pod, and attributing an
//! incident reads the filesystem, which only reported incidents are worth.

pub mod filter;
pub mod ingest;

pub use filter::Filter;

use crate::{
    correlate::{Correlator, Incident, Listeners},
    k8s::{self, Attributed},
    metrics::Metrics,
    report::{self, LogFormat},
};

/// Everything after the ring buffer, for one reader.
pub struct Pipeline {
    pub correlator: Correlator,
    pub filter: Filter,
    pub pods: Option<k8s::Resolver>,
    pub metrics: std::sync::Arc<Metrics>,
    pub format: LogFormat,
    /// Warnings of malformed records, rate-limited.
    pub warnings: ingest::Throttle,
    /// Drops the series of pods that are gone (with `pods`).
    pub pod_expiry: k8s::PodExpiry,
}

impl Pipeline {
    /// One ring-buffer record, through every stage.
    pub fn record(&mut self, bytes: &[u8], listeners: &impl Listeners) {
        let i = ingest::record(
            bytes,
            &mut self.correlator,
            listeners,
            &self.metrics,
            &mut self.warnings,
        );
        if let Some(i) = i {
            self.report(i);
        }
    }

    /// The periodic tick: incidents held back whose window passed (peer resets waiting for a
    /// local peer's record, unanswered closes waiting for a crossing FIN), `now_ns` on the
    /// programs' clock.
    pub fn tick(&mut self, now_ns: u64) {
        for i in self.correlator.expired(now_ns) {
            self.report(i);
        }
        self.report_explained();
        if let Some(pods) = &mut self.pods {
            let now = std::time::Instant::now();
            for ((namespace, pod), series) in self.pod_expiry.run(now, pods, &self.metrics) {
                tracing::info!(
                    namespace,
                    pod,
                    series,
                    "the pod is gone: its series are dropped"
                );
            }
        }
    }

    /// After a batch of records: the `--explain-port` verdicts they made, and the processes that
    /// exec'd (for the Go runtime hooks).
    pub fn after_batch(&mut self) -> Vec<u32> {
        self.report_explained();
        self.correlator.take_execs()
    }

    fn report_explained(&mut self) {
        for e in self.correlator.take_explained() {
            self.metrics.explained(&e);
            report::emit_explained(self.format, &e);
        }
    }

    fn report(&mut self, i: Incident) {
        if !self.filter.allows(&i) {
            return;
        }
        let pod = self
            .pods
            .as_mut()
            .and_then(|pods| pods.resolve(i.cgroup_id, i.pid));
        let a = Attributed { incident: i, pod };
        self.metrics.record(&a);
        report::emit(self.format, &a);
    }
}
