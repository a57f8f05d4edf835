//! CORS for browser dashboards on the configured origins (`--cors-allowed-origins`): preflights
//! answered, the API key sent in `Authorization`, the request id and retry hints readable by the
//! page. Without origins nothing is allowed, and no CORS header is ever sent.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Reads one origin as browsers send it (`https://console.example.com`, a port when not the
/// scheme's), or `*` for any origin.
pub fn parse_origin(text: &str) -> Result<String, String> {
    if text == "*" {
        return Ok(text.to_owned());
    }
    let url =
        url::Url::parse(text).map_err(|error| format!("{text:?} is not an origin: {error}"))?;
    let origin = url.origin().ascii_serialization();
    let is_web = matches!(url.scheme(), "http" | "https");
    if !is_web || origin != text.trim_end_matches('/') {
        return Err(format!(
            "{text:?} is not an origin: give scheme, host and port only, like https://console.example.com"
        ));
    }
    Ok(origin)
}

/// The CORS layer for `origins` (already parsed), or none when there are none.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert_eq!(
            parse_origin("https://console.example.com"),
            Ok("https://console.example.com".to_owned())
        );
        assert_eq!(
            parse_origin("http://localhost:3000/"),
            Ok("http://localhost:3000".to_owned())
        );
        assert_eq!(parse_origin("*"), Ok("*".to_owned()));
        for bad in [
            "console.example.com",
            "https://console.example.com/app",
            "ftp://example.com",
            "https://user@example.com",
            "https://example.com:443",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad} was taken");
        }
    }
}
