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
    // Off the runtime's thread, which also drains the ring buffer: reading the counters (and
    // walking the LRU map) takes syscalls, and a burst of scrapes must not hold up the records.
    let state = s.clone();
    if let Ok(k) = tokio::task::spawn_blocking(move || (state.kernel_stats)()).await {
        s.metrics.set_kernel(k);
    }
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        s.metrics.render(),
    )
}

/// One read shared by every caller that asked while it was waiting: a burst of callers (a
/// burst of scrapes) takes at most two reads, the one under way when they came and the next,
/// however many they are.
pub struct Coalesced<T, F> {
    inner: std::sync::Mutex<(F, Option<(std::time::Instant, T)>)>,
}

impl<T: Copy, F: FnMut() -> T> Coalesced<T, F> {
    pub fn new(read: F) -> Self {
        Self {
            inner: std::sync::Mutex::new((read, None)),
        }
    }

    pub fn read(&self) -> T {
        let asked = std::time::Instant::now();
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (read, last) = &mut *guard;
        // A read that started after this call asked has a fresh enough answer.
        if let Some((started, value)) = *last
            && started >= asked
        {
            return value;
        }
        let started = std::time::Instant::now();
        let value = read();
        *last = Some((started, value));
        value
    }
}

async fn healthz(State(s): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "probes not attached\n")
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicUsize,
        thread,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn a_burst_of_readers_shares_the_reads() {
        let reads = AtomicUsize::new(0);
        let slow = Coalesced::new(|| {
            thread::sleep(Duration::from_millis(100));
            reads.fetch_add(1, Ordering::Relaxed)
        });
        let start = Instant::now();
        thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| slow.read());
                thread::sleep(Duration::from_millis(2));
            }
        });
        // One read under way when the burst came, one for all who waited behind it.
        assert!(reads.load(Ordering::Relaxed) <= 2, "{reads:?}");
        assert!(start.elapsed() < Duration::from_millis(600));
    }
}
