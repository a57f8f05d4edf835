//! One delivery attempt over the network: the receiver's host resolved and every address held to
//! the target policy at the moment of sending (a name rebound to a refused address is refused),
//! a connection to an address that was checked, TLS by rustls against the web PKI roots (and
//! the operator's CA file, when given), one HTTP/1.1 POST, redirects never followed, and at most
//! a short excerpt of the answer read. The whole exchange has one deadline.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{
    domain::{
        target::TargetPolicy,
        webhook::{self, WebhookUrl},
    },
    tls,
};

/// The most bytes of an answer's body read, for the delivery's last error.
const EXCERPT_BYTES: usize = 256;
/// How long those bytes are waited for after the answer's head.
const EXCERPT_WAIT: Duration = Duration::from_secs(1);

/// What an attempt came to, as far as the network tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// The receiver answered with this status; the start of its body.
    Answered { code: u16, excerpt: String },
    /// No answer: why (unresolvable, refused target, no connection, TLS, timeout).
    Failed(String),
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

    /// POSTs `body` with `headers` to `url`, within the deadline.
    pub async fn send(
        &self,
        url: &WebhookUrl,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Exchange {
        match tokio::time::timeout(self.timeout, self.exchange(url, headers, body)).await {
            Ok(Ok(exchange)) => exchange,
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
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Exchange, String> {
        let addresses = self.resolve(url).await?;
        let stream = connect(&addresses, url.host()).await?;
        if !url.is_https() {
            return post(stream, url, headers, body).await;
        }
        let name = ServerName::try_from(url.host().trim_matches(['[', ']']).to_owned())
            .map_err(|error| format!("{} is not a TLS server name: {error}", url.host()))?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, stream)
            .await
            .map_err(|error| format!("TLS with {}: {error}", url.host()))?;
        post(stream, url, headers, body).await
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

/// One POST over `stream`, and the answer's status with the start of its body.
async fn post<S>(
    stream: S,
    url: &WebhookUrl,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Exchange, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP with {}: {error}", url.host()))?;
    let driver = tokio::spawn(connection);
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
    let request = request
        .body(Full::new(body))
        .map_err(|error| format!("the request cannot be built: {error}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("HTTP with {}: {error}", url.host()))?;
    let code = response.status().as_u16();
    // A 2xx is all a delivery needs; another answer's first bytes say why, if they come soon.
    let excerpt = if response.status().is_success() {
        String::new()
    } else {
        tokio::time::timeout(EXCERPT_WAIT, excerpt(response.into_body()))
            .await
            .unwrap_or_default()
    };
    driver.abort();
    Ok(Exchange::Answered { code, excerpt })
}

/// The first [`EXCERPT_BYTES`] of a body, as text (whatever arrives before the deadline).
async fn excerpt(mut body: hyper::body::Incoming) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < EXCERPT_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    bytes.truncate(EXCERPT_BYTES);
    String::from_utf8_lossy(&bytes).into_owned()
}
