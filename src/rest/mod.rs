//! The HTTP side: the REST translation of ServersService (grpc-gateway style, driven by the proto
//! descriptors and their `google.api.http` rules, dispatched in process through the same layered
//! gRPC stack), `GET /openapi.json`, and the operational endpoints `/healthz`, `/readyz` and
//! `/metrics`.

mod console;
pub mod cors;
mod descriptors;
mod dispatch;
mod errors;
mod gateway;
mod json;
mod openapi;
mod request;
mod routes;
mod serve;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, Method, StatusCode, header},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;

pub use gateway::Gateway;
pub use json::MessageJson;
pub use routes::RouteError;
pub use serve::{HttpSettings, serve};

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

/// Everything the HTTP address serves: the operational endpoints, `/openapi.json`, and the REST
/// translation for every other path. A wrong method on any of them is a 405 with a Status body.
/// With `cors_origins`, browsers on those origins may call all of it.
pub fn http_router(ops: OpsState, gateway: Gateway, cors_origins: &[String]) -> Router {
    let gateway = Arc::new(gateway);
    let document = gateway.openapi.clone();
    let fixed = ops_router(ops)
        .merge(console::router())
        .route(
            "/openapi.json",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    document,
                )
            }),
        )
        .method_not_allowed_fallback({
            let gateway = gateway.clone();
            move |method: Method, uri: axum::http::Uri| async move {
                errors::RestError::MethodNotAllowed {
                    method,
                    path: uri.path().to_owned(),
                    allowed: vec![Method::GET, Method::HEAD],
                }
                .into_http(&gateway.descriptors)
            }
        });
    let router = fixed
        .fallback(move |request: axum::extract::Request| gateway::handle(gateway.clone(), request));
    match cors::layer(cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
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
