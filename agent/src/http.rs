//! `/metrics` and `/healthz`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use crate::{metrics::Metrics, probes::KernelStats};

pub struct AppState {
    pub metrics: Arc<Metrics>,
    /// Reads the kernel counters at scrape time, so they are never stale.
    pub kernel_stats: Box<dyn Fn() -> KernelStats + Send + Sync>,
    /// Set once the probes are attached.
    pub ready: AtomicBool,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    s.metrics.set_kernel((s.kernel_stats)());
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        s.metrics.render(),
    )
}

/// A read shared by every caller within [`Coalesced::FRESH`] of it. The runtime that serves
/// scrapes also drains the ring buffer, and reading the kernel counters walks the LRU map: a
/// flood of scrapes (anyone who reaches the port can send one) costs at most one read per
/// `FRESH`, so it cannot make the agent fall behind its records. A snapshot is kept whole, so
/// the figures derived from several counters (evictions) stay consistent.
pub struct Coalesced<T, F> {
    inner: std::sync::Mutex<(F, Option<(std::time::Instant, T)>)>,
}

impl<T: Copy, F: FnMut() -> T> Coalesced<T, F> {
    /// Far below any scrape interval, so a scraper never sees a stale figure twice.
    pub const FRESH: std::time::Duration = std::time::Duration::from_millis(100);

    pub fn new(read: F) -> Self {
        Self {
            inner: std::sync::Mutex::new((read, None)),
        }
    }

    pub fn read(&self) -> T {
        self.read_at(std::time::Instant::now())
    }

    fn read_at(&self, now: std::time::Instant) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (read, last) = &mut *guard;
        if let Some((at, value)) = *last
            && now.saturating_duration_since(at) < Self::FRESH
        {
            return value;
        }
        let value = read();
        *last = Some((now, value));
        value
    }
}

/// 200 once the probes are attached. The body names each detector that is off, and why: an
/// agent that runs with a detector off is healthy, but a person reading the probe's output
/// should not have to guess.
async fn healthz(State(s): State<Arc<AppState>>) -> (StatusCode, String) {
    if !s.ready.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "probes not attached\n".into(),
        );
    }
    let mut body = String::from("ok\n");
    for line in s.metrics.detectors_off() {
        body.push_str("off: ");
        body.push_str(&line);
        body.push('\n');
    }
    (StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicUsize,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn a_flood_of_readers_shares_the_reads() {
        let reads = AtomicUsize::new(0);
        let counted = Coalesced::new(|| reads.fetch_add(1, Ordering::Relaxed));
        let start = Instant::now();
        // A thousand scrapes within the window: one read.
        for i in 0..1000 {
            assert_eq!(counted.read_at(start + Duration::from_micros(i * 50)), 0);
        }
        assert_eq!(reads.load(Ordering::Relaxed), 1);
        // Past it, a fresh one.
        let later = start + Coalesced::<usize, fn() -> usize>::FRESH;
        assert_eq!(counted.read_at(later), 1);
        assert_eq!(reads.load(Ordering::Relaxed), 2);
    }
}
