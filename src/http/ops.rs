//! The operational endpoints: `/healthz` (the process answers), `/readyz` (the database is
//! reachable and the service is not stopping) and `/metrics` (Prometheus text, with the pool's
//! connection gauges refreshed on each scrape).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::store::Store;

/// What the operational endpoints read.
#[derive(Clone)]
pub struct OpsState {
    pub ready: Arc<AtomicBool>,
    pub metrics: PrometheusHandle,
    pub store: Store,
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn ops_router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the database is unreachable or the service is stopping\n",
        )
    }
}

async fn render_metrics(State(state): State<OpsState>) -> String {
    let (open, idle, max) = state.store.pool_usage();
    metrics::gauge!("dbtrail_db_pool_connections", "state" => "open").set(open as f64);
    metrics::gauge!("dbtrail_db_pool_connections", "state" => "idle").set(idle as f64);
    metrics::gauge!("dbtrail_db_pool_connections", "state" => "max").set(max as f64);
    state.metrics.render()
}
