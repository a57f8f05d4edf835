//! Per-call metrics of ServersService, as a tower layer around it: every call counted by method
//! and code (`dbtrail_grpc_calls_total`) and timed by method (`dbtrail_grpc_call_seconds`), so
//! no handler repeats it. REST calls take the same stack in process and are counted the same.
//! Calls the auth layer refuses never reach this layer; it counts them itself.

use std::{sync::OnceLock, time::Instant};

use metrics::{Counter, Histogram};
use tonic::Code;
use tower::{Layer, Service};

use crate::call_layer::{CallFuture, Wrap, Wrapped};

/// Every method of ServersService: the metric labels are these names and nothing a client sent.
const METHODS: [&str; 25] = [
    "ListServers",
    "GetServer",
    "RegisterServer",
    "UpdateServer",
    "DecommissionServer",
    "GetOnboardingStatus",
    "ConfirmFirewall",
    "WatchOnboarding",
    "RetryOnboarding",
    "RestartStream",
    "PauseStream",
    "ResumeStream",
    "ListChangeEvents",
    "ListSchemaChanges",
    "WatchServers",
    "CheckServer",
    "RevertChanges",
    "GetRowHistory",
    "ListAuditEvents",
    "CreateWebhook",
    "GetWebhook",
    "ListWebhooks",
    "DeleteWebhook",
    "ListWebhookDeliveries",
    "RedeliverWebhook",
];

/// gRPC's codes, 0 to 16.
const CODES: usize = 17;

/// The handles of one method, registered on first use, so a call does not build a metric key.
struct MethodMetrics {
    calls: [OnceLock<Counter>; CODES],
    seconds: OnceLock<Histogram>,
}

impl MethodMetrics {
    const fn new() -> MethodMetrics {
        MethodMetrics {
            calls: [const { OnceLock::new() }; CODES],
            seconds: OnceLock::new(),
        }
    }
}

static HANDLES: [MethodMetrics; METHODS.len()] = [const { MethodMetrics::new() }; METHODS.len()];

/// Counts and times one call of `METHODS[method]` that ended with `code`.
fn record(method: usize, code: Code, started: Instant) {
    let name = METHODS[method];
    let handles = &HANDLES[method];
    handles.calls[code as usize]
        .get_or_init(|| {
            metrics::counter!("dbtrail_grpc_calls_total", "method" => name, "code" => format!("{code:?}"))
        })
        .increment(1);
    handles
        .seconds
        .get_or_init(|| metrics::histogram!("dbtrail_grpc_call_seconds", "method" => name))
        .record(started.elapsed().as_secs_f64());
}

/// The code a response carries in its headers: a handler's error comes as a trailers-only
/// response with `grpc-status`; a response without one is a result (unary) or an opened stream.
fn response_code<B>(response: &http::Response<B>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .map_or(Code::Ok, |value| Code::from_bytes(value.as_bytes()))
}

/// Counts and times each call of ServersService.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = Wrapped<S, MetricsLayer>;

    fn layer(&self, inner: S) -> Wrapped<S, MetricsLayer> {
        Wrapped::new(inner, *self)
    }
}

impl<S, B, R> Wrap<S, B> for MetricsLayer
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;

    fn wrap(&self, inner: &mut S, request: http::Request<B>) -> CallFuture<S::Response, S::Error> {
        let method = request
            .uri()
            .path()
            .rsplit_once('/')
            .and_then(|(_, name)| METHODS.iter().position(|known| *known == name));
        let started = Instant::now();
        let call = inner.call(request);
        Box::pin(async move {
            let result = call.await;
            if let (Some(method), Ok(response)) = (method, &result) {
                record(method, response_code(response), started);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_every_method_of_the_service() {
        let pool = prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptors");
        let service = pool
            .get_service_by_name("dbtrail.servers.v1.ServersService")
            .expect("the service");
        let mut described: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
        let mut listed: Vec<String> = METHODS.iter().map(|name| (*name).to_owned()).collect();
        described.sort();
        listed.sort();
        assert_eq!(described, listed);
    }

    #[test]
    fn a_trailers_only_error_is_its_code_and_anything_else_is_ok() {
        let error = tonic::Status::not_found("no").into_http::<tonic::body::Body>();
        assert_eq!(response_code(&error), Code::NotFound);
        let ok = http::Response::new(());
        assert_eq!(response_code(&ok), Code::Ok);
    }
}
