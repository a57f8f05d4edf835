//! The HTTP front door: what the HTTP address serves (the operational endpoints in ops.rs, the
//! /console page, `/openapi.json` and the REST gateway for every other path), CORS for browser
//! dashboards (cors.rs), and how both listeners accept, bound and end connections (listener.rs).

mod console;
mod cors;
mod listener;
mod ops;

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderValue, Method, header},
    routing::get,
};

pub use listener::{ListenerSettings, serve};
pub use ops::OpsState;
use ops::ops_router;

use crate::gateway::{self, Gateway};

/// Everything the HTTP address serves: the operational endpoints, `/openapi.json`, and the REST
/// translation for every other path. A wrong method on any of them is a 405 with a Status body.
/// With `cors_origins`, browsers on those origins may call all of it.
pub fn http_router(ops: OpsState, gateway: Gateway, cors_origins: &[String]) -> Router {
    let gateway = Arc::new(gateway);
    let document = gateway.openapi_document();
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
                gateway.method_not_allowed(method, uri.path(), vec![Method::GET, Method::HEAD])
            }
        });
    let router = fixed
        .fallback(move |request: axum::extract::Request| gateway::handle(gateway.clone(), request));
    match cors::layer(cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}
