//! Requests larger than the message limit, over gRPC: tonic refuses them while reading the
//! length prefix (before buffering the body) with a bare OUT_OF_RANGE; this layer around
//! ServersService puts that answer through the error table instead (RESOURCE_EXHAUSTED,
//! `REQUEST_TOO_LARGE`, with an ErrorInfo).

use tonic::Status;
use tower::{Layer, Service};

use super::errors::{Side, tonic_size_fault};
use crate::call_layer::{CallFuture, Wrap, Wrapped};

/// Maps tonic's size refusals of requests to ServersService into the error table.
#[derive(Debug, Clone, Copy, Default)]
pub struct SizeFaultsLayer;

impl<S> Layer<S> for SizeFaultsLayer {
    type Service = Wrapped<S, SizeFaultsLayer>;

    fn layer(&self, inner: S) -> Wrapped<S, SizeFaultsLayer> {
        Wrapped::new(inner, *self)
    }
}

impl<S, B, R> Wrap<S, B> for SizeFaultsLayer
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;

    fn wrap(&self, inner: &mut S, request: http::Request<B>) -> CallFuture<S::Response, S::Error> {
        let call = inner.call(request);
        Box::pin(async move { call.await.map(mapped) })
    }
}

/// The response, or the table's answer when it is tonic's trailers-only refusal of a request
/// too large.
fn mapped<R: Default>(response: http::Response<R>) -> http::Response<R> {
    match Status::from_header_map(response.headers())
        .and_then(|status| tonic_size_fault(&status, Side::Server))
    {
        Some(status) => status.into_http(),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn a_refused_request_size_becomes_request_too_large_and_anything_else_passes() {
        let refused = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: \
             4194304 bytes",
        )
        .into_http::<tonic::body::Body>();
        let answer = Status::from_header_map(mapped(refused).headers()).unwrap();
        assert_eq!(answer.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            answer.get_details_error_info().unwrap().reason,
            "REQUEST_TOO_LARGE"
        );
        let other = Status::not_found("no").into_http::<tonic::body::Body>();
        let answer = Status::from_header_map(mapped(other).headers()).unwrap();
        assert_eq!(answer.code(), tonic::Code::NotFound);
        let ok = http::Response::new(tonic::body::Body::default());
        assert!(Status::from_header_map(mapped(ok).headers()).is_none());
    }
}
