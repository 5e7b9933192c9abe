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

async fn healthz(State(s): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "probes not attached\n")
    }
}
