//! The gRPC surface: ServersService with its conversions and error table, registered in one
//! place with health, reflection (v1 and v1alpha), request ids, tracing, caught panics,
//! authentication, admission control and the audit log's record of refused changes.
//! The layered stack is built once: the tonic server serves it, and the REST translation calls
//! the very same stack in process (`GrpcStack::in_process`).

mod access_line;
mod admission;
mod audit;
mod audit_events;
mod changes;
mod check;
pub mod codec;
pub mod convert;
pub mod errors;
mod fleet_watch;
mod idempotency;
mod metrics;
mod paging;
mod panics;
mod restart;
mod revert;
mod row_history;
mod schema_changes;
mod server_pages;
mod service;
mod size_faults;
mod update_mask;
mod webhooks;

use std::{convert::Infallible, sync::Arc};

use http::{HeaderValue, Request};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::pb::health_server::{Health, HealthServer};
use tower::{
    Layer, ServiceBuilder, ServiceExt,
    layer::util::{Identity, Stack},
    util::{BoxCloneSyncService, MapRequestLayer},
};
use tower_http::{
    classify::{GrpcErrorsAsFailures, SharedClassifier},
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::{DefaultOnFailure, DefaultOnRequest, TraceLayer},
};

pub use admission::AdmissionSettings;
pub use audit::{AUDITED, AuditedCall, Untranslated};
pub use check::CheckLimits;
pub use paging::PageTokens;
pub use service::ServersApi;

use access_line::AccessLine;
use admission::AdmissionLayer;
use audit::AuditLayer;
use metrics::MetricsLayer;
use panics::CatchPanicLayer;
use size_faults::SizeFaultsLayer;

use crate::{
    auth::{AuthLayer, Authenticator, TrustedProxies},
    proto::{FILE_DESCRIPTOR_SET, servers_service_server::ServersServiceServer},
    telemetry,
    tls::{self, ServerTls},
};

/// The request id header, read from clients and echoed back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client request id the service keeps.
pub const MAX_REQUEST_ID_LENGTH: usize = 128;

/// The client's `x-request-id` when the service keeps it: one header of 1 to 128 letters, digits,
/// `.`, `_`, `:` and `-` (a UUID, a ULID, a trace id). Anything else is replaced by a fresh id and
/// is never logged: the id is on every log line of the call, before authentication too.
pub fn client_request_id(headers: &http::HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(REQUEST_ID_HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let bytes = value.as_bytes();
    let safe = (1..=MAX_REQUEST_ID_LENGTH).contains(&bytes.len())
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-'));
    if safe { value.to_str().ok() } else { None }
}

/// Removes an `x-request-id` the service does not keep, so that the next layer makes a fresh one.
fn drop_unsafe_request_id(mut request: Request<tonic::body::Body>) -> Request<tonic::body::Body> {
    if client_request_id(request.headers()).is_none() {
        request.headers_mut().remove(REQUEST_ID_HEADER);
    }
    request
}

/// Drops an unsafe request id.
type DropUnsafeRequestId = fn(Request<tonic::body::Body>) -> Request<tonic::body::Body>;

/// Gives each call without an x-request-id a fresh UUID.
#[derive(Clone, Copy, Default)]
pub struct UuidRequestId;

impl MakeRequestId for UuidRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        // Written into a buffer, not through `to_string`'s formatter.
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

/// The span of one call: its method and request id, on every log line of the call; exported
/// (with traces on) as a server span named after the method, continuing the caller's
/// `traceparent`.
pub fn call_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = client_request_id(request.headers()).unwrap_or("");
    let method = request.uri().path();
    let span = tracing::info_span!(
        "call",
        method = %method,
        request_id = %request_id,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    );
    telemetry::continue_caller(&span, method.trim_start_matches('/'), request.headers());
    span
}

/// Makes the span of one call.
type MakeCallSpan = fn(&Request<tonic::body::Body>) -> tracing::Span;

/// What every call passes through first, outermost first: a request id (the client's when it is
/// safe to keep, else a fresh one), a span, the id echoed back, a panic answered as INTERNAL.
type FrontLayers = Stack<
    CatchPanicLayer,
    Stack<
        PropagateRequestIdLayer,
        Stack<
            TraceLayer<
                SharedClassifier<GrpcErrorsAsFailures>,
                MakeCallSpan,
                DefaultOnRequest,
                AccessLine,
            >,
            Stack<
                SetRequestIdLayer<UuidRequestId>,
                Stack<MapRequestLayer<DropUnsafeRequestId>, Identity>,
            >,
        >,
    >,
>;

/// Every layer of a call: the front layers, then authentication, admission control and the
/// audit log's record of a refused change.
type CallLayers = Stack<AuditLayer, Stack<AdmissionLayer, Stack<AuthLayer, FrontLayers>>>;

/// Builds the front layers.
fn front_layers() -> ServiceBuilder<FrontLayers> {
    ServiceBuilder::new()
        .layer(MapRequestLayer::new(
            drop_unsafe_request_id as DropUnsafeRequestId,
        ))
        .layer(SetRequestIdLayer::new(
            http::HeaderName::from_static(REQUEST_ID_HEADER),
            UuidRequestId,
        ))
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(call_span as MakeCallSpan)
                // One line per call, inside its span (so it carries the request id).
                .on_response(AccessLine)
                // Client errors are answers, not faults; the error table logs real faults.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(http::HeaderName::from_static(
            REQUEST_ID_HEADER,
        )))
        .layer(CatchPanicLayer)
}

/// The layered stack as one cloneable service, for callers in this process (the REST layer).
pub type InProcessService =
    BoxCloneSyncService<Request<tonic::body::Body>, http::Response<tonic::body::Body>, Infallible>;

/// ServersService, health and reflection behind the call layers, built once.
#[derive(Clone)]
pub struct GrpcStack {
    routes: Routes,
    layers: CallLayers,
}

impl GrpcStack {
    /// Registers the services and builds the layers; `X-Forwarded-For` is believed from
    /// `trusted_proxies` only.
    pub fn new(
        api: ServersApi,
        authenticator: Arc<Authenticator>,
        admission: AdmissionSettings,
        trusted_proxies: TrustedProxies,
        health: HealthServer<impl Health>,
    ) -> Result<GrpcStack, tonic_reflection::server::Error> {
        let store = api.store().clone();
        // The google.rpc error details too: grpcurl decodes an error's ErrorInfo, BadRequest
        // and PreconditionFailure only when reflection can describe them.
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        // The message limit on both directions, set rather than left to tonic's defaults
        // (which send without one); a refused request is mapped into the error table.
        let servers = ServersServiceServer::new(api)
            .max_decoding_message_size(codec::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(codec::MAX_MESSAGE_BYTES);
        let routes = Routes::new(MetricsLayer.layer(SizeFaultsLayer.layer(servers)))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .prepare();
        let layers = front_layers()
            .layer(AuthLayer::new(
                authenticator,
                trusted_proxies,
                store.clone(),
            ))
            .layer(AdmissionLayer::new(admission))
            .layer(AuditLayer::new(store))
            .into_inner();
        Ok(GrpcStack { routes, layers })
    }

    /// The same layers around the same services, called without a network hop.
    pub fn in_process(&self) -> InProcessService {
        let service = self.layers.layer(self.routes.clone());
        BoxCloneSyncService::new(
            service.map_response(|response| response.map(tonic::body::Body::new)),
        )
    }

    /// The same layers around a service that accepts every call without running it: whether
    /// the stack would admit a caller (key and permission), for the REST layer to ask before it
    /// reports a request it could not translate, so that authentication still comes first.
    pub fn admission(&self) -> InProcessService {
        let admit = tower::service_fn(|_: Request<tonic::body::Body>| async {
            Ok::<_, Infallible>(tonic::Status::ok("").into_http::<tonic::body::Body>())
        });
        let service = self.layers.layer(admit);
        BoxCloneSyncService::new(
            service.map_response(|response| response.map(tonic::body::Body::new)),
        )
    }
}

/// Serves the stack on `listener` until `stop`, over TLS when `tls` is set, with the front
/// door's connection rules.
pub async fn serve(
    stack: GrpcStack,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    settings: crate::http::ListenerSettings,
    stop: CancellationToken,
) {
    let service = stack
        .in_process()
        .map_request(|request: Request<hyper::body::Incoming>| request.map(tonic::body::Body::new));
    crate::http::serve(listener, tls::Listener::Grpc, tls, service, settings, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append(REQUEST_ID_HEADER, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn only_short_ids_of_a_safe_alphabet_are_kept() {
        let uuid = "0192f0c4-7b5e-7c1a-9d2e-3f4a5b6c7d8e";
        assert_eq!(client_request_id(&headers(&[uuid])), Some(uuid));
        let longest = "a".repeat(MAX_REQUEST_ID_LENGTH);
        assert_eq!(
            client_request_id(&headers(&[&longest])),
            Some(longest.as_str())
        );
        assert_eq!(
            client_request_id(&headers(&["trace:1.2_3-x"])),
            Some("trace:1.2_3-x")
        );
        for refused in [
            &"a".repeat(MAX_REQUEST_ID_LENGTH + 1),
            "",
            "has space",
            "quote\"",
            "{\"json\":1}",
            "new\tline",
        ] {
            assert_eq!(client_request_id(&headers(&[refused])), None, "{refused:?}");
        }
        assert_eq!(client_request_id(&headers(&[])), None);
        assert_eq!(client_request_id(&headers(&["a", "b"])), None);
    }
}
