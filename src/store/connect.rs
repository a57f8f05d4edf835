//! Every connection to PostgreSQL starts here: the URL's `sslmode` and `sslrootcert` read as
//! libpq reads them, TLS by rustls.
//!
//! - no `sslmode`, `disable`: plaintext (local development; tokio-postgres' own default);
//! - `allow`, `prefer`: TLS when the server offers it, the certificate unchecked, else plaintext;
//! - `require`: TLS or no connection; the chain is checked only when `sslrootcert` is given;
//! - `verify-ca`: TLS with the chain checked against `sslrootcert`;
//! - `verify-full`: that, and the certificate must name the host of the URL.
//!
//! `sslrootcert=system` trusts the Mozilla roots (managed databases with a public CA).

use std::{
    io,
    pin::Pin,
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
};

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use futures_util::FutureExt;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::{
    Socket,
    config::SslMode,
    tls::{ChannelBinding, MakeTlsConnect, NoTls, TlsConnect, TlsStream},
};

use crate::tls;

/// How strictly the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verification {
    None,
    Chain,
    ChainAndHost,
}

/// A database URL taken apart: what tokio-postgres reads, and the TLS it needs.
struct Target {
    config: tokio_postgres::Config,
    tls: Option<Arc<ClientConfig>>,
}

/// Why a connection failed: tokio-postgres' own text is only the kind ("db error"); the reason
/// is in the chain.
fn unreachable(error: tokio_postgres::Error) -> ConnectionError {
    let mut message = format!("cannot connect to PostgreSQL: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    ConnectionError::BadConnection(message)
}

/// Connects to the database at `database_url`, with TLS as its `sslmode` asks.
pub async fn establish(database_url: &str) -> Result<AsyncPgConnection, ConnectionError> {
    let target = target(database_url)?;
    match target.tls {
        None => {
            let (client, connection) = target.config.connect(NoTls).await.map_err(unreachable)?;
            AsyncPgConnection::try_from_client_and_connection(client, connection).await
        }
        Some(tls) => {
            let (client, connection) = target
                .config
                .connect(RustlsConnect(tls))
                .await
                .map_err(unreachable)?;
            AsyncPgConnection::try_from_client_and_connection(client, connection).await
        }
    }
}

/// `establish`, as a bare tokio-postgres client (for what diesel does not speak: COPY); its
/// connection runs on a task of its own until the client is dropped.
pub async fn establish_client(
    database_url: &str,
) -> Result<tokio_postgres::Client, ConnectionError> {
    let target = target(database_url)?;
    match target.tls {
        None => {
            let (client, connection) = target.config.connect(NoTls).await.map_err(unreachable)?;
            tokio::spawn(connection);
            Ok(client)
        }
        Some(tls) => {
            let (client, connection) = target
                .config
                .connect(RustlsConnect(tls))
                .await
                .map_err(unreachable)?;
            tokio::spawn(connection);
            Ok(client)
        }
    }
}

/// `database_url` fit for a log or an error: any password replaced by `***`.
pub fn redacted(database_url: &str) -> String {
    match url::Url::parse(database_url) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "(a database URL that cannot be read)".to_owned(),
    }
}

/// Reads the URL; the TLS parameters are ours, the rest is tokio-postgres'.
fn target(database_url: &str) -> Result<Target, ConnectionError> {
    let invalid = |problem: String| ConnectionError::InvalidConnectionUrl(problem);
    let mut url = url::Url::parse(database_url)
        .map_err(|error| invalid(format!("the database URL cannot be read: {error}")))?;
    let mut mode = None;
    let mut root_certificate = None;
    let rest: Vec<(String, String)> = url
        .query_pairs()
        .filter_map(|(name, value)| match &*name {
            "sslmode" => {
                mode = Some(value.into_owned());
                None
            }
            "sslrootcert" => {
                root_certificate = Some(value.into_owned());
                None
            }
            _ => Some((name.into_owned(), value.into_owned())),
        })
        .collect();
    // Percent-encoded as tokio-postgres decodes it (a form's `+` for a space would stay `+`).
    let encode = |text: &str| {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let query: Vec<String> = rest
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect();
    url.set_query((!query.is_empty()).then(|| query.join("&")).as_deref());
    let mut config = tokio_postgres::Config::from_str(url.as_str())
        .map_err(|error| invalid(format!("the database URL cannot be read: {error}")))?;
    let (ssl_mode, verification) = match mode.as_deref() {
        None | Some("disable") => (SslMode::Disable, None),
        Some("allow" | "prefer") => (SslMode::Prefer, Some(Verification::None)),
        Some("require") if root_certificate.is_some() => {
            (SslMode::Require, Some(Verification::Chain))
        }
        Some("require") => (SslMode::Require, Some(Verification::None)),
        Some("verify-ca") => (SslMode::Require, Some(Verification::Chain)),
        Some("verify-full") => (SslMode::Require, Some(Verification::ChainAndHost)),
        Some(other) => {
            return Err(invalid(format!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    config.ssl_mode(ssl_mode);
    let tls = match verification {
        None => None,
        Some(verification) => Some(client_config(
            verification,
            root_certificate.as_deref(),
            mode.as_deref().unwrap_or_default(),
        )?),
    };
    Ok(Target { config, tls })
}

/// The rustls client configuration for one way of checking the server.
fn client_config(
    verification: Verification,
    root_certificate: Option<&str>,
    mode: &str,
) -> Result<Arc<ClientConfig>, ConnectionError> {
    let invalid = ConnectionError::InvalidConnectionUrl;
    let builder = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid(format!("TLS cannot be set up: {error}")))?;
    if verification == Verification::None {
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptionOnly))
            .with_no_client_auth();
        return Ok(Arc::new(config));
    }
    let roots = match root_certificate {
        None => {
            return Err(invalid(format!(
                "sslmode={mode} checks the server's certificate: add sslrootcert=<CA file> (or sslrootcert=system) to the database URL"
            )));
        }
        Some(path) => Arc::new(root_store(path).map_err(invalid)?),
    };
    let web_pki = WebPkiServerVerifier::builder_with_provider(roots, tls::provider())
        .build()
        .map_err(|error| invalid(format!("sslrootcert cannot be used: {error}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::ChainAndHost => web_pki,
        _ => Arc::new(ChainOnly(web_pki)),
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The roots named by `sslrootcert`: a PEM file, or `system` for the Mozilla roots.
fn root_store(path: &str) -> Result<RootCertStore, String> {
    if path == "system" {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    }
    let mut store = RootCertStore::empty();
    for certificate in tls::read_certificates(std::path::Path::new(path))? {
        store
            .add(certificate)
            .map_err(|error| format!("sslrootcert {path}: {error}"))?;
    }
    Ok(store)
}

/// `verify-ca`: the chain must lead to a trusted root; the name in it may be anything.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without a root certificate, `prefer`: encrypted, whoever the server is (libpq's
/// meaning). The handshake's signatures are still checked, so the session is the certificate's.
#[derive(Debug)]
struct EncryptionOnly;

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &tls::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &tls::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// tokio-postgres' TLS hook, over rustls.
#[derive(Clone)]
struct RustlsConnect(Arc<ClientConfig>);

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsHandshake;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsHandshake, Self::Error> {
        Ok(RustlsHandshake {
            config: self.0.clone(),
            server_name: ServerName::try_from(host.to_owned())?,
        })
    }
}

/// One TLS handshake with the server at `server_name`.
struct RustlsHandshake {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsHandshake {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = futures_util::future::BoxFuture<'static, io::Result<RustlsStream>>;

    fn connect(self, socket: Socket) -> Self::Future {
        tokio_rustls::TlsConnector::from(self.config)
            .connect(self.server_name, socket)
            .map(|stream| stream.map(RustlsStream))
            .boxed()
    }
}

/// A TLS session with PostgreSQL.
struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(context, buffer)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(url: &str) -> Result<(SslMode, bool), String> {
        target(url)
            .map(|target| (target.config.get_ssl_mode(), target.tls.is_some()))
            .map_err(|error| error.to_string())
    }

    #[test]
    fn sslmode_is_read_as_libpq_reads_it() {
        let base = "postgres://postgres@127.0.0.1:5432/dbtrail";
        assert_eq!(mode_of(base), Ok((SslMode::Disable, false)));
        assert_eq!(
            mode_of(&format!("{base}?sslmode=disable")),
            Ok((SslMode::Disable, false))
        );
        assert_eq!(
            mode_of(&format!("{base}?sslmode=prefer")),
            Ok((SslMode::Prefer, true))
        );
        assert_eq!(
            mode_of(&format!("{base}?sslmode=require&application_name=x")),
            Ok((SslMode::Require, true))
        );
        assert_eq!(
            mode_of(&format!("{base}?sslmode=verify-full&sslrootcert=system")),
            Ok((SslMode::Require, true))
        );
    }

    #[test]
    fn a_redacted_url_shows_no_password() {
        assert_eq!(
            redacted("postgres://dbtrail:hunter2@db.internal:5432/dbtrail?sslmode=require"),
            "postgres://dbtrail:***@db.internal:5432/dbtrail?sslmode=require"
        );
        assert_eq!(
            redacted("postgres://postgres@127.0.0.1:5432/dbtrail"),
            "postgres://postgres@127.0.0.1:5432/dbtrail"
        );
    }

    #[test]
    fn a_checked_mode_needs_a_root_certificate_and_a_known_mode_is_asked_for() {
        let base = "postgres://postgres@127.0.0.1:5432/dbtrail";
        let missing = mode_of(&format!("{base}?sslmode=verify-full")).unwrap_err();
        assert!(missing.contains("add sslrootcert="), "{missing}");
        let unknown = mode_of(&format!("{base}?sslmode=maybe")).unwrap_err();
        assert!(unknown.contains("sslmode=maybe is not one of"), "{unknown}");
        let absent = mode_of(&format!(
            "{base}?sslmode=verify-ca&sslrootcert=/nonexistent.pem"
        ))
        .unwrap_err();
        assert!(absent.contains("/nonexistent.pem"), "{absent}");
    }
}
