//! One shape for the tower layers that wrap each call of the gRPC stack (authentication,
//! admission, caught panics, metrics, size faults): a [`Wrap`] says what a call does around the
//! inner service, and [`Wrapped`] is the Service plumbing they share: readiness from the inner
//! service, the inner service's name kept for routing, one boxed future per call. It compiles to
//! what each layer wrote by hand before, so it costs nothing on the call path.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::server::NamedService;
use tower::Service;

/// The future of one wrapped call.
pub type CallFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

/// What a layer does with each call: checks before the inner service, answers instead of it, or
/// looks at what it answered.
pub trait Wrap<S, B>: Clone
where
    S: Service<http::Request<B>>,
{
    /// The response the wrapped service answers with.
    type Response;

    /// One call. `inner` has been polled ready: call it at once, or move it into the future
    /// with [`take_ready`].
    fn wrap(
        &self,
        inner: &mut S,
        request: http::Request<B>,
    ) -> CallFuture<Self::Response, S::Error>;
}

/// An inner service a wrap can move into its call's future (see [`take_ready`]): the routes
/// behind the front layers, answering with tonic's body.
pub trait Movable<B>:
    Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> Movable<B> for S where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// The service a [`Wrap`] puts around `S`.
#[derive(Debug, Clone)]
pub struct Wrapped<S, W> {
    inner: S,
    wrap: W,
}

impl<S, W> Wrapped<S, W> {
    /// `inner`, each call going through `wrap`.
    pub fn new(inner: S, wrap: W) -> Wrapped<S, W> {
        Wrapped { inner, wrap }
    }
}

impl<S: NamedService, W> NamedService for Wrapped<S, W> {
    const NAME: &'static str = S::NAME;
}

impl<S, W, B> Service<http::Request<B>> for Wrapped<S, W>
where
    S: Service<http::Request<B>>,
    W: Wrap<S, B>,
{
    type Response = W::Response;
    type Error = S::Error;
    type Future = CallFuture<W::Response, S::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.wrap.wrap(&mut self.inner, request)
    }
}

/// The inner service that was polled ready, for a call's future to own: the clone that was
/// polled serves this call, and a fresh clone waits for the next one.
pub fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
