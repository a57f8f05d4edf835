//! The MySQL leaf of the connection path: logging in with the server's user and decrypted
//! password over an address already resolved (or the tunnel's), the TLS mode, the per-query time
//! limit, and the sorting of MySQL's errors into those worth retrying (unreachable, timeouts) and
//! those that need the operator (access denied).

use std::{net::SocketAddr, time::Duration};

use mysql_async::{Conn, OptsBuilder, SslOpts, prelude::Queryable};

use super::failure::{MysqlFailure, unreachable};
use crate::{domain::SslMode, onboarding::StepContext};

/// The idle time before the kernel probes a customer connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// MySQL server error codes that a retry may cure.
const TRANSIENT_SERVER_ERRORS: &[u16] = &[
    1040, // too many connections
    1203, // max_user_connections
    1205, // lock wait timeout
    2013, // lost connection during query
];

/// MariaDB's ER_SLAVE_SAME_ID, sent to the older reader when a second one registers the same
/// replica server id.
const REPLICA_ID_TAKEN_OVER: u16 = 4052;

/// Sorts a mysql_async error; `address` names the server in messages.
pub fn classify(error: &mysql_async::Error, address: &str) -> MysqlFailure {
    match error {
        mysql_async::Error::Server(server) if TRANSIENT_SERVER_ERRORS.contains(&server.code) => {
            MysqlFailure::Transient(format!("{address} answered: {}", server.message))
        }
        // The source ends the older of two binlog readers with one server id: another reader
        // took this server's id over (an earlier attempt's, still being torn down, or a
        // misconfigured replica). Retried within the budget; past it, the step fails naming it.
        mysql_async::Error::Server(server) if server.code == REPLICA_ID_TAKEN_OVER => {
            MysqlFailure::Transient(format!(
                "another binlog reader with this server's replica server id connected to {address}, \
                 and the source ended ours (error {REPLICA_ID_TAKEN_OVER}: {})",
                server.message
            ))
        }
        mysql_async::Error::Server(server) => MysqlFailure::Permanent(format!(
            "MySQL at {address} refused: {} (error {})",
            server.message, server.code
        )),
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => {
            MysqlFailure::Transient(unreachable(&format!("MySQL at {address}"), io))
        }
        mysql_async::Error::Io(tls) => MysqlFailure::Permanent(format!(
            "TLS with MySQL at {address} failed: {tls}; check stream_options.ssl_mode"
        )),
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
            MysqlFailure::Permanent(format!(
                "MySQL at {address} does not offer TLS, but stream_options.ssl_mode requires it"
            ))
        }
        other => MysqlFailure::Transient(unreachable(&format!("MySQL at {address}"), other)),
    }
}

/// `host:port` of the server.
pub fn address(context: &StepContext) -> Endpoint {
    let spec = &context.server.spec;
    let name = if spec.host.contains(':') {
        format!("[{}]:{}", spec.host, spec.port)
    } else {
        format!("{}:{}", spec.host, spec.port)
    };
    Endpoint {
        name,
        query_timeout: context.agent.query_timeout,
    }
}

/// A customer's MySQL as messages name it (`host:port`), with how long one request to it may
/// take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    name: String,
    query_timeout: Duration,
}

impl std::ops::Deref for Endpoint {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.name)
    }
}

impl Endpoint {
    /// Waits for one request (`what`, for the message) at most the per-query timeout: a MySQL
    /// that logged us in and then stops answering is a transient fault naming what it left
    /// unanswered. Errors are sorted by [`classify`].
    pub async fn ask<T>(
        &self,
        what: &str,
        request: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
    ) -> Result<T, MysqlFailure> {
        match tokio::time::timeout(self.query_timeout, request).await {
            Ok(result) => result.map_err(|error| classify(&error, self)),
            Err(_) => Err(MysqlFailure::Transient(format!(
                "MySQL at {self} did not answer {what} within {}",
                humantime::format_duration(self.query_timeout)
            ))),
        }
    }
}

fn ssl_options(mode: SslMode) -> Option<SslOpts> {
    let encrypted = SslOpts::default();
    match mode {
        SslMode::Disabled => None,
        // Encryption without verification, as MySQL's own clients do for these modes.
        SslMode::Preferred | SslMode::Required => Some(
            encrypted
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        SslMode::VerifyCa => Some(encrypted.with_danger_skip_domain_validation(true)),
        SslMode::VerifyFull => Some(encrypted),
    }
}

/// The server's stored MySQL password, decrypted (`None` when it has none).
pub fn password(context: &StepContext) -> Result<Option<String>, MysqlFailure> {
    let server = &context.server;
    let Some(sealed) = &server.secrets.mysql_password else {
        return Ok(None);
    };
    let password = context
        .secrets
        .open(sealed, &format!("{}/mysql_password", server.id))
        .map_err(|error| {
            MysqlFailure::Permanent(format!(
                "the stored MySQL password cannot be used ({error}); set it again with UpdateServer"
            ))
        })?;
    Ok(Some(password.0))
}

/// Logs in at `target` (an address resolved and checked, or the tunnel's) as the server's
/// user, honouring its ssl_mode; `address` names the server in messages.
pub async fn login(
    context: &StepContext,
    target: SocketAddr,
    password: Option<String>,
    address: &Endpoint,
) -> Result<Conn, MysqlFailure> {
    let server = &context.server;
    let base = OptsBuilder::default()
        .ip_or_hostname(target.ip().to_string())
        .tcp_port(target.port())
        // A peer that vanishes without a FIN is noticed by the kernel, not only by a timeout.
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .user(Some(server.spec.mysql_user.clone()))
        .pass(password)
        .prefer_socket(false)
        .stmt_cache_size(0);
    let mode = server.spec.stream_options.ssl_mode;
    // Connecting to an address (resolved, or the tunnel's), the certificate still names the host.
    let tls = |mode| {
        ssl_options(mode).map(|options| {
            options.with_danger_tls_hostname_override(Some(server.spec.host.to_string()))
        })
    };
    let attempt = |ssl: Option<SslOpts>| {
        let options = base.clone().ssl_opts(ssl);
        let timeout = context.agent.connect_timeout;
        let address = address.clone();
        async move {
            match tokio::time::timeout(timeout, Conn::new(options)).await {
                Ok(Ok(connection)) => Ok(connection),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(mysql_async::Error::Io(mysql_async::IoError::Io(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "timed out after {}s connecting to {address}",
                            timeout.as_secs()
                        ),
                    ),
                ))),
            }
        }
    };
    match attempt(tls(mode)).await {
        Ok(connection) => Ok(connection),
        // "preferred" falls back to plain text when the server offers no TLS.
        Err(mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer))
            if mode == SslMode::Preferred =>
        {
            attempt(None)
                .await
                .map_err(|error| classify(&error, address))
        }
        Err(error) => Err(classify(&error, address)),
    }
}

/// The server's version and flavour, e.g. ("MariaDB", "10.11.19-MariaDB-0+deb12u1").
pub async fn version(
    connection: &mut Conn,
    address: &Endpoint,
) -> Result<(String, String), MysqlFailure> {
    let version: Option<String> = address
        .ask(
            "SELECT VERSION()",
            connection.query_first("SELECT VERSION()"),
        )
        .await?;
    let version = version.unwrap_or_default();
    let flavour = if version.to_ascii_lowercase().contains("mariadb") {
        "MariaDB"
    } else {
        "MySQL"
    };
    Ok((flavour.to_owned(), version))
}

/// Closes a connection politely, without waiting long on a broken one.
pub async fn close(connection: Conn) {
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.disconnect()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: u16, message: &str) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: message.to_owned(),
            state: "HY000".to_owned(),
        })
    }

    #[test]
    fn a_reader_ended_for_a_newer_one_with_its_id_is_retried_and_says_why() {
        let taken = "A slave with the same server_uuid/server_id is already connected";
        match classify(&server_error(4052, taken), "db:3306") {
            MysqlFailure::Transient(message) => {
                assert!(message.contains("replica server id") && message.contains(taken))
            }
            other => panic!("expected a transient fault, got {other:?}"),
        }
        assert!(matches!(
            classify(&server_error(1045, "Access denied"), "db:3306"),
            MysqlFailure::Permanent(_)
        ));
    }
}
