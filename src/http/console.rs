//! `GET /console`: one small page for the people who watch onboarding, embedded in the binary.
//! It calls the REST API of its own origin with the key pasted into it (kept in sessionStorage
//! only); nothing comes from elsewhere, and a strict Content-Security-Policy says so.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::IntoResponse,
    routing::get,
};

/// Only this origin's script, style and API; no inline code, no frames, no forms.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

const PAGE: &str = include_str!("console/index.html");
const STYLE: &str = include_str!("console/console.css");
/// The page's scripts, in the order it loads them (classic scripts sharing one global scope):
/// the core, the fleet, the open server, the change-event explorer.
const SCRIPTS: [(&str, &str); 4] = [
    ("/console/console.js", include_str!("console/console.js")),
    ("/console/fleet.js", include_str!("console/fleet.js")),
    ("/console/server.js", include_str!("console/server.js")),
    ("/console/explorer.js", include_str!("console/explorer.js")),
];

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
}

/// `/console`, its scripts (`/console/console.js`, `fleet.js`, `server.js`, `explorer.js`) and
/// `/console/console.css`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        );
    for (path, script) in SCRIPTS {
        router = router.route(
            path,
            get(move || async move { asset("text/javascript; charset=utf-8", script) }),
        );
    }
    router
}
