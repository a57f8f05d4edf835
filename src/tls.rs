//! TLS on the two listeners (rustls, ring): the certificate chain, its key and an optional client
//! CA read from PEM files, and read again on SIGHUP or when one of the files changes. A reload
//! serves new handshakes; connections already open keep their session. A reload that fails
//! (a half-written file, a key that does not match) keeps the material that works, and says so.

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    signal::unix::{SignalKind, signal},
};
use tokio_util::sync::CancellationToken;

/// How often the files are looked at for a change.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one crypto provider of every TLS session the service makes or accepts.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file, naming the file when it has none or cannot be read.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certificates)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|error| format!("{}: no usable PEM private key: {error}", path.display()))
}

/// Where the listeners' TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// When set, clients must present a certificate this CA signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [
            Some(&self.certificate),
            Some(&self.private_key),
            self.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
    }

    /// What the files look like now, to notice a change.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.paths()
            .map(|path| {
                let metadata = std::fs::metadata(path).ok()?;
                Some((metadata.modified().ok()?, metadata.len()))
            })
            .collect()
    }
}

/// Which listener a configuration is for: the protocols it offers in ALPN.
#[derive(Debug, Clone, Copy)]
pub enum Listener {
    /// HTTP/2 only.
    Grpc,
    /// HTTP/2 and HTTP/1.1.
    Http,
}

impl Listener {
    /// Its name in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Http => "http",
        }
    }
}

/// The configurations of both listeners, built from one reading of the files.
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

impl Configs {
    fn load(files: &TlsFiles) -> Result<Configs, String> {
        let chain = read_certificates(&files.certificate)?;
        let key = read_private_key(&files.private_key)?;
        let client_verifier = match &files.client_ca {
            None => None,
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in read_certificates(path)? {
                    roots
                        .add(certificate)
                        .map_err(|error| format!("{}: {error}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|error| format!("{}: {error}", path.display()))?;
                Some(verifier)
            }
        };
        let build = |protocols: &[&[u8]]| -> Result<Arc<ServerConfig>, String> {
            let builder = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|error| error.to_string())?;
            let builder = match &client_verifier {
                Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|error| {
                    format!(
                        "{} and {} do not make a usable certificate: {error}",
                        files.certificate.display(),
                        files.private_key.display()
                    )
                })?;
            config.alpn_protocols = protocols.iter().map(|protocol| protocol.to_vec()).collect();
            Ok(Arc::new(config))
        };
        Ok(Configs {
            grpc: build(&[b"h2"])?,
            http: build(&[b"h2", b"http/1.1"])?,
        })
    }
}

/// The listeners' TLS, always the newest material that loaded.
pub struct ServerTls {
    files: TlsFiles,
    configs: RwLock<Arc<Configs>>,
}

impl ServerTls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, String> {
        let configs = Configs::load(&files)?;
        Ok(Arc::new(ServerTls {
            files,
            configs: RwLock::new(Arc::new(configs)),
        }))
    }

    fn config(&self, listener: Listener) -> Arc<ServerConfig> {
        let configs = self
            .configs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        match listener {
            Listener::Grpc => configs.grpc.clone(),
            Listener::Http => configs.http.clone(),
        }
    }

    /// Reads the files again; on failure the material in use stays.
    pub fn reload(&self) {
        match Configs::load(&self.files) {
            Ok(configs) => {
                *self
                    .configs
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(configs);
                metrics::counter!("dbtrail_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(certificate = %self.files.certificate.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                metrics::counter!("dbtrail_tls_reloads_total", "result" => "failed").increment(1);
                tracing::warn!(%error, "TLS reload failed; the previous certificate stays in use");
            }
        }
    }

    /// Reloads on SIGHUP and whenever a file changes, until `stop`. The SIGHUP handler is in
    /// place when this returns (before the future first runs), so a SIGHUP never ends the process.
    pub fn watch(self: Arc<Self>, stop: CancellationToken) -> impl Future<Output = ()> + Send {
        let mut hangups = signal(SignalKind::hangup())
            .inspect_err(|error| {
                tracing::warn!(%error, "SIGHUP cannot be watched; TLS files are still polled");
            })
            .ok();
        async move {
            let mut stamp = self.files.stamp();
            let mut ticks = tokio::time::interval(FILE_CHECK_INTERVAL);
            loop {
                let hangup = async {
                    match hangups.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = hangup => {
                        stamp = self.files.stamp();
                        self.reload();
                    }
                    _ = ticks.tick() => {
                        let now = self.files.stamp();
                        if now != stamp {
                            stamp = now;
                            self.reload();
                        }
                    }
                }
            }
        }
    }

    /// The server side of a handshake on `stream`, bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, stream: TcpStream, listener: Listener) -> io::Result<TlsConnection> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config(listener));
        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
            .map(TlsConnection)
    }
}

/// An accepted TLS connection.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(context, buffer)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(context, buffer)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(context)
    }
}

/// Sets what every accepted connection needs: TCP_NODELAY (a response's last frames must not wait
/// for the client's delayed ACK) and keepalive (a silently dead client is noticed).
pub fn tune(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "could not set TCP keepalive");
    }
}
