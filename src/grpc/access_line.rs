//! The access line of each call: what tower-http's `DefaultOnResponse` logs at INFO, field for
//! field (its target, `message`, `latency` as "N ms", the gRPC `status`, inside the call's
//! span), with the latency written without `core::fmt`'s u128 formatting and the status read
//! without decoding the error message it does not log.

use std::{fmt, time::Duration};

use tower_http::trace::OnResponse;

/// The target tower-http's access line has, which log filters may name.
const TARGET: &str = "tower_http::trace::on_response";

/// Logs one line per call when its response starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLine;

impl<B> OnResponse<B> for AccessLine {
    fn on_response(self, response: &http::Response<B>, latency: Duration, span: &tracing::Span) {
        tracing::event!(
            target: TARGET,
            parent: span,
            tracing::Level::INFO,
            latency = %Millis(latency),
            status = status(response),
            "finished processing request"
        );
    }
}

/// A latency in whole milliseconds, as `DefaultOnResponse` writes it: `12 ms`.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut millis = self.0.as_millis();
        let mut digits = [0u8; 39];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (millis % 10) as u8;
            millis /= 10;
            if millis == 0 {
                break;
            }
        }
        formatter.write_str(std::str::from_utf8(&digits[start..]).map_err(|_| fmt::Error)?)?;
        formatter.write_str(" ms")
    }
}

/// The call's status as `DefaultOnResponse` logs it: a gRPC response's `grpc-status` (0 when it
/// is not a number; none while a stream has none yet), else the HTTP status.
fn status<B>(response: &http::Response<B>) -> Option<i32> {
    let headers = response.headers();
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return Some(response.status().as_u16().into());
    }
    let code = headers.get("grpc-status")?;
    Some(
        code.to_str()
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_written_as_tower_http_writes_it() {
        for millis in [0, 7, 10, 999, 1_000, 86_400_000] {
            let latency = Duration::from_millis(millis) + Duration::from_micros(999);
            assert_eq!(
                Millis(latency).to_string(),
                format!("{} ms", latency.as_millis())
            );
        }
    }

    #[test]
    fn the_status_is_the_grpc_status_or_the_http_one() {
        let response = |content_type: &str, grpc_status: Option<&str>| {
            let mut builder = http::Response::builder()
                .status(200)
                .header("content-type", content_type);
            if let Some(code) = grpc_status {
                builder = builder.header("grpc-status", code);
            }
            builder.body(()).unwrap()
        };
        assert_eq!(status(&response("application/grpc", Some("0"))), Some(0));
        assert_eq!(status(&response("application/grpc", Some("5"))), Some(5));
        assert_eq!(status(&response("application/grpc", Some("99"))), Some(99));
        assert_eq!(status(&response("application/grpc", Some("x"))), Some(0));
        assert_eq!(status(&response("application/grpc", None)), None);
        assert_eq!(status(&response("application/json", Some("5"))), Some(200));
    }
}
