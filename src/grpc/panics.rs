//! A call whose handler panics is answered like any other fault (IOx's habit): the panic is
//! caught around the call, logged once inside the call's span, and answered from the error table
//! (INTERNAL, with the request id in the ErrorInfo). The connection and every other call go on.
//!
//! tower-http's `CatchPanicLayer` would box every response body again and does not see the
//! request, so it could not name the request id; this one keeps tonic's body as it is.

use std::{
    any::Any,
    panic::{AssertUnwindSafe, catch_unwind},
};

use futures_util::FutureExt;
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use super::{REQUEST_ID_HEADER, errors};
use crate::call_layer::{CallFuture, Wrap, Wrapped};

/// Answers a panic in the service it wraps with INTERNAL; it sits inside the request-id layers,
/// so the id it reports is the one the response echoes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = Wrapped<S, CatchPanicLayer>;

    fn layer(&self, inner: S) -> Wrapped<S, CatchPanicLayer> {
        Wrapped::new(inner, *self)
    }
}

impl<S, B> Wrap<S, B> for CatchPanicLayer
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;

    fn wrap(&self, inner: &mut S, request: Request<B>) -> CallFuture<Self::Response, S::Error> {
        let request_id = request.headers().get(REQUEST_ID_HEADER).cloned();
        let call = match catch_unwind(AssertUnwindSafe(|| inner.call(request))) {
            Ok(call) => call,
            Err(panic) => {
                let answer = answer(&*panic, request_id.as_ref());
                return Box::pin(async move { Ok(answer) });
            }
        };
        Box::pin(async move {
            match AssertUnwindSafe(call).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Ok(answer(&*panic, request_id.as_ref())),
            }
        })
    }
}

/// The error table's answer to a panic, as a trailers-only gRPC response.
fn answer(
    panic: &(dyn Any + Send),
    request_id: Option<&HeaderValue>,
) -> Response<tonic::body::Body> {
    let request_id = request_id.and_then(|id| id.to_str().ok()).unwrap_or("");
    errors::panicked(panic_message(panic), request_id).into_http()
}

/// What a caught panic said.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        future::Ready,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use tonic::{Code, Status, body::Body};
    use tonic_types::StatusExt;
    use tower::ServiceExt;

    use super::*;
    use crate::grpc::{errors::ERROR_DOMAIN, front_layers};

    fn request(request_id: Option<&str>) -> Request<Body> {
        let mut request = Request::builder().uri("/dbtrail.servers.v1.ServersService/GetServer");
        if let Some(id) = request_id {
            request = request.header(REQUEST_ID_HEADER, id);
        }
        request.body(Body::empty()).unwrap()
    }

    /// The INTERNAL status a response carries, after checking that it names the echoed id.
    fn internal_naming_the_echoed_id<R>(response: &Response<R>) -> Status {
        let echoed = response.headers()[REQUEST_ID_HEADER].to_str().unwrap();
        let status = Status::from_header_map(response.headers()).expect("a trailers-only status");
        assert_eq!(status.code(), Code::Internal);
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.reason, "INTERNAL");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["request_id"], echoed);
        status
    }

    #[tokio::test]
    async fn a_handler_that_panics_answers_internal_with_the_request_id_and_the_next_call_runs() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let handler = tower::service_fn(move |_: Request<Body>| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                assert!(!first, "the handler's secret bug");
                Ok::<_, Infallible>(Status::ok("").into_http::<Body>())
            }
        });
        let mut service = front_layers().service(handler);

        let response = service.ready().await.unwrap();
        let response = response.call(request(Some("req-1"))).await.unwrap();
        let status = internal_naming_the_echoed_id(&response);
        assert_eq!(response.headers()[REQUEST_ID_HEADER], "req-1");
        assert!(!status.message().contains("secret"), "{}", status.message());

        let next = service.ready().await.unwrap();
        let next = next.call(request(None)).await.unwrap();
        let status = Status::from_header_map(next.headers()).expect("a status");
        assert_eq!(status.code(), Code::Ok);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panic_before_the_handler_returns_its_future_is_caught_with_a_fresh_id() {
        type Answer = Ready<Result<Response<Body>, Infallible>>;
        let handler =
            tower::service_fn(|_: Request<Body>| -> Answer { panic!("while starting the call") });
        let response = front_layers().service(handler).oneshot(request(None));
        let response = response.await.unwrap();
        internal_naming_the_echoed_id(&response);
        assert!(
            uuid::Uuid::try_parse(response.headers()[REQUEST_ID_HEADER].to_str().unwrap()).is_ok()
        );
    }
}
