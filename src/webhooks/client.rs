//! One delivery attempt over the network: the receiver's host resolved and every address held to
//! the target policy when a connection is opened (a name rebound to a refused address is
//! refused), a connection to an address that was checked, TLS by rustls against the web PKI
//! roots (and the operator's CA file, when given), one HTTP/1.1 POST, redirects never followed,
//! and at most a short excerpt of the answer kept. The whole attempt has one deadline. A lane
//! keeps its connection for its next delivery to the same webhook, while it stays usable.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    task::JoinHandle,
};

use crate::{
    domain::{
        target::TargetPolicy,
        webhook::{self, WebhookUrl},
    },
    tls,
};

/// The most bytes of an answer's body kept, for the delivery's last error.
const EXCERPT_BYTES: usize = 256;
/// The most bytes of an answer read so that its connection can carry the next delivery.
const DRAIN_BYTES: usize = 64 * 1024;
/// How long an answer's body is waited for after its head.
const BODY_WAIT: Duration = Duration::from_secs(1);

/// What an attempt came to, as far as the network tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// The receiver answered with this status; the start of its body.
    Answered { code: u16, excerpt: String },
    /// No answer: why (unresolvable, refused target, no connection, TLS, timeout).
    Failed(String),
}

/// A connection kept between deliveries to one receiver (its scheme, host and port).
pub struct Kept {
    origin: String,
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Sends deliveries: the policy, TLS roots and deadline every attempt shares.
#[derive(Clone)]
pub struct Sender {
    targets: Arc<TargetPolicy>,
    tls: Arc<ClientConfig>,
    timeout: Duration,
}

impl Sender {
    /// A sender with the web PKI roots and the certificates of `ca_file`, if any.
    pub fn new(
        targets: Arc<TargetPolicy>,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Sender, String> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            for certificate in tls::read_certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
            }
        }
        let config = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS cannot be set up: {error}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Sender {
            targets,
            tls: Arc::new(config),
            timeout,
        })
    }

    /// POSTs `body` with `headers` to `url` within the deadline, over `kept` when it is a usable
    /// connection to the same receiver; what is left usable afterwards stays in `kept`.
    pub async fn send(
        &self,
        url: &WebhookUrl,
        headers: &[(&str, String)],
        body: Bytes,
        kept: &mut Option<Kept>,
    ) -> Exchange {
        let origin = format!("{}://{}:{}", url.url().scheme(), url.host(), url.port());
        let reusable = kept
            .take()
            .filter(|connection| connection.origin == origin && !connection.sender.is_closed());
        let exchange = self.exchange(url, origin, reusable, headers, body);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((exchange, connection))) => {
                *kept = connection;
                exchange
            }
            Ok(Err(reason)) => Exchange::Failed(reason),
            Err(_) => Exchange::Failed(format!(
                "no answer within {} (--webhook-timeout)",
                humantime::format_duration(self.timeout)
            )),
        }
    }

    async fn exchange(
        &self,
        url: &WebhookUrl,
        origin: String,
        reusable: Option<Kept>,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<(Exchange, Option<Kept>), String> {
        let request = request(url, headers, body)?;
        let http_error = |error: hyper::Error| format!("HTTP with {}: {error}", url.host());
        // A kept connection the receiver has closed meanwhile is replaced, once.
        let mut kept = reusable;
        let (connection, response) = loop {
            let reused = kept.is_some();
            let mut connection = match kept.take() {
                Some(connection) => connection,
                None => self.open(url, origin.clone()).await?,
            };
            let sent = match connection.sender.ready().await {
                Ok(()) => connection.sender.send_request(request.clone()).await,
                Err(error) => Err(error),
            };
            match sent {
                Ok(response) => break (connection, response),
                Err(_) if reused => continue,
                Err(error) => return Err(http_error(error)),
            }
        };
        let code = response.status().as_u16();
        let (excerpt, drained) = read_body(response.into_body(), code).await;
        Ok((
            Exchange::Answered { code, excerpt },
            drained.then_some(connection),
        ))
    }

    /// A new connection to the receiver: resolved, checked, connected, TLS when https.
    async fn open(&self, url: &WebhookUrl, origin: String) -> Result<Kept, String> {
        let addresses = self.resolve(url).await?;
        let stream = connect(&addresses, url.host()).await?;
        if !url.is_https() {
            return handshake(stream, url, origin).await;
        }
        let name = ServerName::try_from(url.host().trim_matches(['[', ']']).to_owned())
            .map_err(|error| format!("{} is not a TLS server name: {error}", url.host()))?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, stream)
            .await
            .map_err(|error| format!("TLS with {}: {error}", url.host()))?;
        handshake(stream, url, origin).await
    }

    /// The receiver's addresses, every one allowed by the target policy.
    async fn resolve(&self, url: &WebhookUrl) -> Result<Vec<SocketAddr>, String> {
        let host = url.host();
        let addresses: Vec<SocketAddr> = match url.literal_address() {
            Some(address) => vec![SocketAddr::new(address, url.port())],
            None => tokio::net::lookup_host((host, url.port()))
                .await
                .map_err(|error| format!("cannot resolve {host}: {error}"))?
                .collect(),
        };
        let refused = addresses.iter().find_map(|address| {
            Some((
                address.ip(),
                webhook::refused_address(&self.targets, address.ip())?,
            ))
        });
        if let Some((address, reason)) = refused {
            tracing::info!(%host, %address, "webhook target refused");
            return Err(match url.literal_address() {
                Some(_) => format!("{host} is {reason}"),
                None => format!("{host} resolves to {address}, {reason}"),
            });
        }
        if addresses.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        Ok(addresses)
    }
}

/// A connection to the first of `addresses` that accepts one.
async fn connect(addresses: &[SocketAddr], host: &str) -> Result<TcpStream, String> {
    let mut last = String::new();
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(error) => last = format!("cannot connect to {host} at {address}: {error}"),
        }
    }
    Err(last)
}

/// HTTP/1.1 over `stream`, its connection driven by a task of its own.
async fn handshake<S>(stream: S, url: &WebhookUrl, origin: String) -> Result<Kept, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP with {}: {error}", url.host()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Kept {
        origin,
        sender,
        driver,
    })
}

/// The POST of one delivery.
fn request(
    url: &WebhookUrl,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, String> {
    let target = match url.url().query() {
        Some(query) => format!("{}?{query}", url.url().path()),
        None => url.url().path().to_owned(),
    };
    let authority = match url.url().port() {
        Some(port) => format!("{}:{port}", url.host()),
        None => url.host().to_owned(),
    };
    let mut request = http::Request::post(target)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("dbtrail-servers/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request
        .body(Full::new(body))
        .map_err(|error| format!("the request cannot be built: {error}"))
}

/// Reads an answer's body for [`BODY_WAIT`] at most: the first [`EXCERPT_BYTES`] of one that is
/// not a 2xx, and whether it ended within [`DRAIN_BYTES`] (so its connection can be used again).
async fn read_body(mut body: hyper::body::Incoming, code: u16) -> (String, bool) {
    let mut excerpt = Vec::new();
    let mut read = 0;
    let drained = tokio::time::timeout(BODY_WAIT, async {
        while read <= DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        read += data.len();
                        if !(200..300).contains(&code) && excerpt.len() < EXCERPT_BYTES {
                            excerpt.extend_from_slice(data);
                        }
                    }
                }
                Some(Err(_)) => return false,
                None => return true,
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    excerpt.truncate(EXCERPT_BYTES);
    (String::from_utf8_lossy(&excerpt).into_owned(), drained)
}
