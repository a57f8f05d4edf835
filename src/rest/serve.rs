//! The HTTP listener: one task per connection, HTTP/1.1 and h2 (and TLS when configured) by
//! hyper, a header read timeout so a client that trickles its request head (slowloris) is let go,
//! and a graceful drain on shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::tls::{self, ServerTls};

/// How the HTTP listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// An HTTP/1.1 request head must arrive within this time of the connection or of the
    /// previous response.
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `stop`, then lets the open connections finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ServerTls>>,
    settings: HttpSettings,
    stop: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was taken.
                    tracing::warn!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tls::tune(&stream);
        connections.spawn(connection(
            builder.clone(),
            stream,
            peer,
            tls.clone(),
            router.clone(),
            stop.clone(),
        ));
    }
    connections.close();
    connections.wait().await;
}

/// One accepted connection, after its TLS handshake when there is one.
async fn connection(
    builder: Arc<Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    stop: CancellationToken,
) {
    match tls {
        None => drive(&builder, stream, peer, router, stop).await,
        Some(tls) => match tls.accept(stream, tls::Listener::Http).await {
            Ok(stream) => drive(&builder, stream, peer, router, stop).await,
            Err(error) => {
                metrics::counter!("dbtrail_tls_handshake_failures_total").increment(1);
                tracing::debug!(%error, %peer, "TLS handshake failed");
            }
        },
    }
}

/// Runs hyper on `io` until the client is done, or, once `stop` fires, until the requests in
/// flight are answered.
async fn drive<I>(
    builder: &Builder<TokioExecutor>,
    io: I,
    peer: SocketAddr,
    router: Router,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The REST layer reads the peer (the bad-key limit is per client address).
    let service = router.map_request(move |mut request: axum::extract::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let connection =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "HTTP connection ended with an error");
            }
            return;
        }
        () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
    }
    if let Err(error) = connection.await {
        tracing::debug!(%error, %peer, "HTTP connection ended with an error");
    }
}
