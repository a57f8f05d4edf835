//! What both listeners (gRPC and HTTP) do with a connection, from accept to close:
//! - admit it under `--max-connections` (per listener) and `--max-connections-per-address`;
//!   past either cap it is closed at once and counted (`dbtrail_connections_refused_total`);
//! - give it `--header-read-timeout` from its accept to finish the TLS handshake and send a
//!   complete request head (HTTP/1.1) or the preface and SETTINGS (HTTP/2), else close it;
//! - serve it with hyper, HTTP/2 keepalive pings finding dead peers;
//! - once it has had no open request for `--idle-timeout`, end it gracefully (GOAWAY on
//!   HTTP/2), and do the same for every connection when the process stops.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use ::http::{Request, Response};
use axum::extract::ConnectInfo;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::Connected;

use crate::tls::{self, ServerTls};

/// How a listener treats its connections (the `serve` flags of the same names).
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    /// From accept to a complete request head or HTTP/2 preface and SETTINGS.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open without a request before it is ended.
    pub idle_timeout: Duration,
    /// Open connections on one listener at most.
    pub max_connections: usize,
    /// Open connections from one client address on one listener at most.
    pub max_connections_per_address: usize,
}

/// What a listener serves: a connection's requests, answered with a body hyper can send.
pub trait Serves:
    tower::Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    type Body: Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Unpin
        + Send
        + 'static;
}

impl<S, B> Serves for S
where
    S: tower::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
    B: Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Unpin
        + Send
        + 'static,
{
    type Body = B;
}

/// HTTP/2 keepalive: a ping after this much silence from the peer...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...that must be answered within this, or the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` (over TLS when `tls` is set) until `stop`, then lets the open
/// connections finish their requests.
pub async fn serve<S: Serves>(
    listener: TcpListener,
    which: tls::Listener,
    tls: Option<Arc<ServerTls>>,
    service: S,
    settings: ListenerSettings,
    stop: CancellationToken,
) {
    let builder = Arc::new(builder(which, settings));
    let admission = Arc::new(Admission::new(which, settings));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was taken.
                    tracing::warn!(%error, listener = which.label(), "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = admission.admit(peer.ip()) else {
            // Dropping the socket closes it at once: the client sees the end, not a wait.
            continue;
        };
        tls::tune(&stream);
        let connection = Connection {
            builder: builder.clone(),
            which,
            settings,
            peer,
            stop: stop.clone(),
            place: admitted,
        };
        connections.spawn(connection.run(stream, tls.clone(), service.clone()));
    }
    connections.close();
    connections.wait().await;
}

/// hyper's settings for `which`: gRPC speaks HTTP/2 only, HTTP both versions.
fn builder(which: tls::Listener, settings: ListenerSettings) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    match which {
        // As tonic's own server: a call refused before its body is read resets its stream, and
        // hyper's default would end a connection after 1,024 of them, failing the calls in
        // flight on it (rapid reset stays bounded by h2's pending-reset limit); and no cap on
        // a connection's streams (watches and calls have their own, per key and per replica).
        tls::Listener::Grpc => {
            builder
                .http2()
                .max_local_error_reset_streams(None)
                .max_concurrent_streams(None);
            builder.http2_only()
        }
        tls::Listener::Http => builder,
    }
}

/// The open connections of one listener, in all and per client address.
struct Admission {
    which: tls::Listener,
    settings: ListenerSettings,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One admitted connection's place under the caps, given back when dropped.
struct Admitted {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Admission {
    fn new(which: tls::Listener, settings: ListenerSettings) -> Admission {
        Admission {
            which,
            settings,
            open: Mutex::new(Open::default()),
        }
    }

    /// A place for a connection from `address`, or `None` (counted) past a cap.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().expect("the connection counts");
        let from_address = open.by_address.get(&address).copied().unwrap_or(0);
        let refused = if open.total >= self.settings.max_connections {
            Some("max_connections")
        } else if from_address >= self.settings.max_connections_per_address {
            Some("max_connections_per_address")
        } else {
            None
        };
        if let Some(reason) = refused {
            metrics::counter!(
                "dbtrail_connections_refused_total",
                "listener" => self.which.label(),
                "reason" => reason,
            )
            .increment(1);
            return None;
        }
        open.total += 1;
        open.by_address.insert(address, from_address + 1);
        self.report(open.total);
        Some(Admitted {
            admission: self.clone(),
            address,
        })
    }

    fn report(&self, total: usize) {
        metrics::gauge!("dbtrail_connections_open", "listener" => self.which.label())
            .set(total as f64);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().expect("the connection counts");
        open.total -= 1;
        if let Some(count) = open.by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.by_address.remove(&self.address);
            }
        }
        self.admission.report(open.total);
    }
}

/// Why a connection was ended by us, for `dbtrail_connections_closed_total`.
fn count_closed(which: tls::Listener, reason: &'static str) {
    metrics::counter!(
        "dbtrail_connections_closed_total",
        "listener" => which.label(),
        "reason" => reason,
    )
    .increment(1);
}

/// One accepted connection and what it needs to be served.
struct Connection {
    builder: Arc<Builder<TokioExecutor>>,
    which: tls::Listener,
    settings: ListenerSettings,
    peer: SocketAddr,
    stop: CancellationToken,
    place: Admitted,
}

impl Connection {
    /// The TLS handshake when there is one (within the head's deadline), then hyper.
    async fn run<S: Serves>(self, stream: TcpStream, tls: Option<Arc<ServerTls>>, service: S) {
        let head_deadline = Instant::now() + self.settings.header_read_timeout;
        // REST reads axum's ConnectInfo, the gRPC layers tonic's (the bad-key limit is per
        // client address).
        let peer = self.peer;
        let tcp_info = stream.connect_info();
        let service = tower::ServiceExt::map_request(service, move |mut request: Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(tcp_info.clone());
            request
        });
        let Some(tls) = tls else {
            return self.drive(stream, service, head_deadline).await;
        };
        match tokio::time::timeout_at(head_deadline, tls.accept(stream, self.which)).await {
            Ok(Ok(stream)) => self.drive(stream, service, head_deadline).await,
            Ok(Err(error)) => {
                metrics::counter!("dbtrail_tls_handshake_failures_total").increment(1);
                tracing::debug!(%error, peer = %self.peer, "TLS handshake failed");
            }
            Err(_) => count_closed(self.which, "header_timeout"),
        }
    }

    /// Runs hyper on `io` until the client is done, the head's deadline passes without a head,
    /// the connection has been idle too long, or `stop` fires (then until the requests in
    /// flight are answered).
    async fn drive<I, S: Serves>(self, io: I, service: S, head_deadline: Instant)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let head = Arc::new(AtomicBool::new(false));
        let activity = Arc::new(Activity::new());
        let io = HeadWatch::new(io, head.clone(), self.place);
        let service = Tracked {
            inner: service,
            activity: activity.clone(),
        };
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
        tokio::pin!(connection);
        let idle_timeout = self.settings.idle_timeout;
        let mut head_pending = true;
        let mut idle_check = Instant::now() + idle_timeout;
        let mut ending = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, peer = %self.peer, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(head_deadline), if head_pending => {
                    if !head.load(Ordering::Acquire) {
                        count_closed(self.which, "header_timeout");
                        return;
                    }
                    head_pending = false;
                }
                () = tokio::time::sleep_until(idle_check), if !ending => {
                    match activity.idle_for() {
                        Some(idle) if idle >= idle_timeout => {
                            count_closed(self.which, "idle");
                            connection.as_mut().graceful_shutdown();
                            ending = true;
                        }
                        Some(idle) => idle_check = Instant::now() + (idle_timeout - idle),
                        None => idle_check = Instant::now() + idle_timeout,
                    }
                }
                () = self.stop.cancelled(), if !ending => {
                    connection.as_mut().graceful_shutdown();
                    ending = true;
                }
            }
        }
    }
}

/// A connection's open requests and when the last one began or ended.
struct Activity {
    since: Instant,
    open: AtomicUsize,
    /// Milliseconds from `since` to the last request's start or end.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            since: Instant::now(),
            open: AtomicUsize::new(0),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Release);
    }

    /// How long the connection has had no open request; `None` while one is open.
    fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Acquire));
        Some(self.since.elapsed().saturating_sub(last))
    }
}

/// One open request: from the call until its response body is done or dropped.
struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    fn start(activity: &Arc<Activity>) -> OpenRequest {
        activity.open.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        OpenRequest(activity.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The service, counting each request as open until its response body ends (a watch's stream
/// keeps its connection busy).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R, B> tower::Service<Request<R>> for Tracked<S>
where
    S: tower::Service<Request<R>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<R>) -> Self::Future {
        let open = OpenRequest::start(&self.activity);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, _open: open }))
        })
    }
}

/// A response body that holds its request open.
struct TrackedBody<B> {
    body: B,
    _open: OpenRequest,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's bytes as they arrive, read only until the first request head (HTTP/1.1) or
/// the preface and first SETTINGS frame (HTTP/2) is complete.
/// It also holds the connection's place under the caps, and gives it back when the connection
/// begins to close: a client that reads our end of a `Connection: close` answer may connect
/// again at once.
struct HeadWatch<I> {
    io: I,
    scan: HeadScan,
    complete: Arc<AtomicBool>,
    place: Option<Admitted>,
}

impl<I> HeadWatch<I> {
    fn new(io: I, complete: Arc<AtomicBool>, place: Admitted) -> HeadWatch<I> {
        HeadWatch {
            io,
            scan: HeadScan::default(),
            complete,
            place: Some(place),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HeadWatch<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buffer.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(context, buffer);
        if !self.scan.is_complete() && self.scan.feed(&buffer.filled()[before..]) {
            self.complete.store(true, Ordering::Release);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadWatch<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(context, buffer)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.place = None;
        Pin::new(&mut self.io).poll_shutdown(context)
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The end of an HTTP/1.1 head: an empty line.
const HEAD_END: u32 = u32::from_be_bytes(*b"\r\n\r\n");
/// An HTTP/2 frame header's length (RFC 9113 §4.1).
const FRAME_HEADER: usize = 9;

/// How far a connection's first bytes have come, a byte at a time, without keeping them.
#[derive(Debug, PartialEq, Eq)]
enum HeadScan {
    /// `matched` bytes of the HTTP/2 preface so far; `tail` the last four bytes.
    Preface {
        matched: usize,
        tail: u32,
    },
    /// An HTTP/1.1 head, ending at an empty line.
    Http1 {
        tail: u32,
    },
    /// The first HTTP/2 frame's header (SETTINGS), `read` bytes of it.
    FrameHeader {
        header: [u8; FRAME_HEADER],
        read: usize,
    },
    /// The first frame's payload, `left` bytes to go.
    Payload {
        left: usize,
    },
    Complete,
}

impl Default for HeadScan {
    fn default() -> HeadScan {
        HeadScan::Preface {
            matched: 0,
            tail: 0,
        }
    }
}

impl HeadScan {
    fn is_complete(&self) -> bool {
        *self == HeadScan::Complete
    }

    /// Takes the next bytes; whether the head is complete.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while let Some((&byte, rest)) = bytes.split_first() {
            if let HeadScan::Payload { left } = self {
                let skipped = (*left).min(bytes.len());
                *left -= skipped;
                bytes = &bytes[skipped..];
                if *left == 0 {
                    *self = HeadScan::Complete;
                }
                continue;
            }
            self.step(byte);
            bytes = rest;
        }
        if *self == (HeadScan::Payload { left: 0 }) {
            *self = HeadScan::Complete;
        }
        self.is_complete()
    }

    fn step(&mut self, byte: u8) {
        *self = match *self {
            HeadScan::Preface { matched, tail } => {
                let tail = tail << 8 | u32::from(byte);
                if PREFACE[matched] != byte {
                    HeadScan::Http1 { tail }.after_byte()
                } else if matched + 1 == PREFACE.len() {
                    HeadScan::FrameHeader {
                        header: [0; FRAME_HEADER],
                        read: 0,
                    }
                } else {
                    HeadScan::Preface {
                        matched: matched + 1,
                        tail,
                    }
                }
            }
            HeadScan::Http1 { tail } => HeadScan::Http1 {
                tail: tail << 8 | u32::from(byte),
            }
            .after_byte(),
            HeadScan::FrameHeader { mut header, read } => {
                header[read] = byte;
                if read + 1 < FRAME_HEADER {
                    HeadScan::FrameHeader {
                        header,
                        read: read + 1,
                    }
                } else {
                    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                    HeadScan::Payload {
                        left: length as usize,
                    }
                }
            }
            HeadScan::Payload { .. } | HeadScan::Complete => HeadScan::Complete,
        };
    }

    /// An HTTP/1.1 head is complete at its empty line.
    fn after_byte(self) -> HeadScan {
        match self {
            HeadScan::Http1 { tail } if tail == HEAD_END => HeadScan::Complete,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete_after(chunks: &[&[u8]]) -> Vec<bool> {
        let mut scan = HeadScan::default();
        chunks.iter().map(|chunk| scan.feed(chunk)).collect()
    }

    const SETTINGS: &[u8] = &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];

    #[test]
    fn an_http1_head_is_complete_at_its_empty_line() {
        assert_eq!(
            complete_after(&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r", b"\n"]),
            [false, false, true]
        );
        assert_eq!(complete_after(&[b"GET / HTTP/1.1\r\n\r\n"]), [true]);
        // A silent connection, or one that trickles a head, is not complete.
        assert_eq!(complete_after(&[b"", b"GET / HT"]), [false, false]);
    }

    #[test]
    fn http2_needs_the_whole_preface_and_the_first_settings_frame() {
        let whole: Vec<u8> = [PREFACE, SETTINGS].concat();
        assert_eq!(complete_after(&[&whole]), [true]);
        // Byte by byte: complete only at the frame's last byte.
        let mut scan = HeadScan::default();
        for (at, byte) in whole.iter().enumerate() {
            assert_eq!(scan.feed(&[*byte]), at + 1 == whole.len(), "byte {at}");
        }
        // A partial preface, the preface alone, or a frame header without its payload.
        assert_eq!(complete_after(&[&PREFACE[..10]]), [false]);
        assert_eq!(complete_after(&[PREFACE]), [false]);
        assert_eq!(complete_after(&[PREFACE, &SETTINGS[..12]]), [false, false]);
        // An empty SETTINGS frame ends with its header.
        assert_eq!(
            complete_after(&[PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]]),
            [false, true]
        );
    }

    #[test]
    fn a_head_that_starts_like_the_preface_is_read_as_http1() {
        assert_eq!(complete_after(&[b"PRIX\r\n\r\n"]), [true]);
        assert_eq!(complete_after(&[b"POST /servers HTTP/1.1\r\n\r\n"]), [true]);
    }
}
