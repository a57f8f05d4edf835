//! The MySQL leaf of the connection path: logging in with the server's user and decrypted
//! password over an address already resolved (or the tunnel's), the TLS mode, the per-query time
//! limit, and the sorting of MySQL's errors into those worth retrying (unreachable, timeouts) and
//! those that need the operator (access denied).

use std::{net::SocketAddr, time::Duration};

use futures_util::FutureExt;
use mysql_async::{Conn, OptsBuilder, SslOpts, prelude::Queryable};
use tokio::io::AsyncReadExt;

use super::ConnectContext;
use super::failure::{MysqlFailure, unreachable};
use crate::domain::SslMode;

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
pub fn address(context: &ConnectContext<'_>) -> Endpoint {
    let spec = &context.server.spec;
    let name = if spec.host.contains(':') {
        format!("[{}]:{}", spec.host, spec.port)
    } else {
        format!("{}:{}", spec.host, spec.port)
    };
    Endpoint {
        name,
        query_timeout: context.reach.query_timeout,
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
pub fn password(context: &ConnectContext<'_>) -> Result<Option<String>, MysqlFailure> {
    let server = context.server;
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
    context: &ConnectContext<'_>,
    target: SocketAddr,
    password: Option<String>,
    address: &Endpoint,
) -> Result<Conn, MysqlFailure> {
    let server = context.server;
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
    let timeout = context.reach.connect_timeout;
    let attempt = |ssl: Option<SslOpts>| log_in_once(base.clone().ssl_opts(ssl), timeout, address);
    let refused = match attempt(tls(mode)).await {
        Ok(connection) => return Ok(connection),
        // "preferred" falls back to plain text when the server offers no TLS.
        Err(Refused::Mysql(mysql_async::Error::Driver(
            mysql_async::DriverError::NoClientSslFlagFromServer,
        ))) if mode == SslMode::Preferred => match attempt(None).await {
            Ok(connection) => return Ok(connection),
            Err(refused) => (refused, false),
        },
        Err(refused) => (refused, mode != SslMode::Disabled),
    };
    Err(refusal(refused, context, (target, &base), address).await)
}

/// One login with `options`, within `timeout`; `address` names the server in messages.
async fn log_in_once(
    options: OptsBuilder,
    timeout: Duration,
    address: &Endpoint,
) -> Result<Conn, Refused> {
    // mysql_common panics in caching_sha2_password's RSA exchange on a server key it cannot
    // parse or a password too long for the key: a refusal, not a dead runner.
    let login = std::panic::AssertUnwindSafe(Conn::new(options)).catch_unwind();
    match tokio::time::timeout(timeout, login).await {
        Ok(Ok(Ok(connection))) => Ok(connection),
        Ok(Ok(Err(error))) => Err(Refused::Mysql(error)),
        Ok(Err(panic)) => Err(Refused::DriverPanicked(panic_message(&*panic))),
        Err(_) => Err(Refused::Mysql(mysql_async::Error::Io(
            mysql_async::IoError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "timed out after {}s connecting to {address}",
                    timeout.as_secs()
                ),
            )),
        ))),
    }
}

/// Why one login attempt failed.
#[derive(Debug)]
enum Refused {
    Mysql(mysql_async::Error),
    /// mysql_async panicked while logging in, saying this.
    DriverPanicked(String),
}

/// MySQL's ER_ACCESS_DENIED_ERROR.
const ACCESS_DENIED: u16 = 1045;

/// The failure of a login over a connection that was encrypted or not. Access denied may have
/// a cause the message alone hides, which it then names with what to change: an anonymous
/// account that anyone may log in to from here (it shadows the user's own account), or, without
/// TLS by MySQL 8 or later (its greeting says which server it is), caching_sha2_password
/// refusing a password sent in plain text.
async fn refusal(
    (refused, encrypted): (Refused, bool),
    context: &ConnectContext<'_>,
    (target, options): (SocketAddr, &OptsBuilder),
    address: &Endpoint,
) -> MysqlFailure {
    let Refused::Mysql(mysql_async::Error::Server(error)) = &refused else {
        return refused.failure(address, &context.server.spec.mysql_user, false);
    };
    if error.code != ACCESS_DENIED {
        return refused.failure(address, &context.server.spec.mysql_user, false);
    }
    let timeout = context.reach.connect_timeout;
    if anonymous_login(options, timeout, address).await {
        let user = &context.server.spec.mysql_user;
        return MysqlFailure::Permanent(format!(
            "MySQL at {address} refused: {} (error {ACCESS_DENIED}); {}",
            error.message,
            shadowed_by_anonymous(user, denied_host(&error.message).unwrap_or("localhost"))
        ));
    }
    let caching_sha2 = !encrypted
        && announced_version(target, timeout)
            .await
            .is_some_and(|version| defaults_to_caching_sha2(&version));
    refused.failure(address, &context.server.spec.mysql_user, caching_sha2)
}

/// Whether an anonymous account lets anyone log in over `options`' address without a password
/// (mariadb-install-db makes ''@'localhost' and ''@'<hostname>').
async fn anonymous_login(options: &OptsBuilder, timeout: Duration, address: &Endpoint) -> bool {
    let anonymous = options
        .clone()
        .user(Some(""))
        .pass(None::<String>)
        .ssl_opts(None::<SslOpts>);
    match log_in_once(anonymous, timeout, address).await {
        Ok(connection) => {
            close(connection).await;
            true
        }
        Err(_) => false,
    }
}

/// The host part of an "Access denied for user 'u'@'host'" message.
fn denied_host(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("'@'")?;
    rest.split_once('\'').map(|(host, _)| host)
}

/// Why `user` was refused when an anonymous account for `host` exists, and the two fixes.
fn shadowed_by_anonymous(user: &str, host: &str) -> String {
    format!(
        "an anonymous account lets anyone log in from here without a password, and MySQL and \
         MariaDB match the account with the most specific host first: ''@'{host}' comes before \
         '{user}'@'%', so the password is checked against the anonymous account. Drop the \
         anonymous accounts (DROP USER IF EXISTS ''@'{host}'; DROP USER IF EXISTS \
         ''@'localhost';), or create the user for that host too (CREATE USER '{user}'@'{host}' \
         IDENTIFIED BY '...'; with the grants '{user}'@'%' has)"
    )
}

/// The version a server announces in its greeting, the packet it sends before any login (e.g.
/// "8.4.3", "5.5.5-10.11.19-MariaDB-0+deb12u1-log"); None when none comes in time.
pub async fn announced_version(target: SocketAddr, timeout: Duration) -> Option<String> {
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(target).await.ok()?;
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).await.ok()?;
        let length =
            usize::from(header[0]) | (usize::from(header[1]) << 8) | (usize::from(header[2]) << 16);
        // The protocol version and the version string come first; 256 bytes hold them.
        let mut payload = vec![0u8; length.min(256)];
        stream.read_exact(&mut payload).await.ok()?;
        greeting_version(&payload).map(str::to_owned)
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// The server version in a greeting's payload (protocol 10: a version byte, then the version
/// as a NUL-terminated string); None for anything else, such as an error packet.
fn greeting_version(payload: &[u8]) -> Option<&str> {
    let (&protocol, rest) = payload.split_first()?;
    if protocol != 10 {
        return None;
    }
    let end = rest.iter().position(|byte| *byte == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Whether a server of `version` is MySQL 8.0 or later, whose default authentication is
/// caching_sha2_password (MariaDB announces itself as MariaDB, after a "5.5.5-" prefix before
/// 11.0).
fn defaults_to_caching_sha2(version: &str) -> bool {
    !version.to_ascii_lowercase().contains("mariadb")
        && version
            .split('.')
            .next()
            .and_then(|major| major.parse::<u32>().ok())
            .is_some_and(|major| major >= 8)
}

impl Refused {
    /// The failure of a login as `user`, sorted by [`classify`]; `caching_sha2` when access was
    /// denied without TLS by a MySQL that defaults to caching_sha2_password, which adds what to
    /// change.
    fn failure(self, address: &str, user: &str, caching_sha2: bool) -> MysqlFailure {
        match self {
            Refused::Mysql(mysql_async::Error::Server(error))
                if error.code == ACCESS_DENIED && caching_sha2 =>
            {
                MysqlFailure::Permanent(format!(
                    "MySQL at {address} refused: {} (error {ACCESS_DENIED}); {}",
                    error.message,
                    without_tls(user)
                ))
            }
            Refused::Mysql(error) => classify(&error, address),
            Refused::DriverPanicked(panic) => MysqlFailure::Permanent(format!(
                "logging in to MySQL at {address} failed in the MySQL driver ({panic}); this \
                 happens in caching_sha2_password's RSA password exchange over a connection \
                 without TLS, when the server's RSA public key is unusable or the password is \
                 longer than the key can encrypt (about 200 bytes for a 2048-bit key): {}",
                TLS_FIX
            )),
        }
    }
}

/// The first fix for a caching_sha2_password login without TLS.
const TLS_FIX: &str = "use TLS: set stream_options.ssl_mode to required (or preferred, when the \
                       server offers TLS)";

/// What to change when `user` was refused over a connection without TLS: the password may be
/// wrong, or caching_sha2_password (MySQL 8's default) may refuse to take it in plain text.
fn without_tls(user: &str) -> String {
    format!(
        "if the password is right, the account probably uses caching_sha2_password (the \
         default of MySQL 8), which without TLS accepts a password only through the server's \
         RSA key pair, or from its cache of earlier logins (emptied by a restart or FLUSH \
         PRIVILEGES, so such logins work for a while and then fail): {TLS_FIX}; or give the server an RSA key pair \
         (caching_sha2_password_auto_generate_rsa_keys = ON, or \
         caching_sha2_password_private_key_path and caching_sha2_password_public_key_path); \
         or, where the server still offers it (MySQL 8.4 disables it by default), ALTER USER \
         '{user}'@'%' IDENTIFIED WITH mysql_native_password BY '...' (with the account's host)"
    )
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
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

    const DENIED: &str = "Access denied for user 'bintrail'@'10.0.0.9' (using password: YES)";

    #[test]
    fn the_denied_host_is_read_from_the_message() {
        assert_eq!(denied_host(DENIED), Some("10.0.0.9"));
        assert_eq!(
            denied_host("Access denied for user 'bin'trail'@'localhost' (using password: YES)"),
            Some("localhost")
        );
        assert_eq!(denied_host("Access denied"), None);
    }

    #[test]
    fn access_denied_without_tls_says_what_to_change_for_caching_sha2_password() {
        let refused = Refused::Mysql(server_error(1045, DENIED));
        assert_eq!(
            refused.failure("db:3306", "bintrail", true),
            MysqlFailure::Permanent(format!(
                "MySQL at db:3306 refused: {DENIED} (error 1045); if the password is right, the \
                 account probably uses caching_sha2_password (the default of MySQL 8), which \
                 without TLS accepts a password only through the server's RSA key pair, or from \
                 its cache of earlier logins (emptied by a restart or FLUSH PRIVILEGES, so such \
                 logins work for a while and then fail): use TLS: set stream_options.ssl_mode to \
                 required (or preferred, when the server offers TLS); or give the server an RSA \
                 key pair (caching_sha2_password_auto_generate_rsa_keys = ON, or \
                 caching_sha2_password_private_key_path and \
                 caching_sha2_password_public_key_path); or, where the server still offers it \
                 (MySQL 8.4 disables it by default), ALTER USER 'bintrail'@'%' IDENTIFIED WITH \
                 mysql_native_password BY '...' (with the account's host)"
            ))
        );
    }

    #[test]
    fn access_denied_over_tls_or_by_another_server_and_other_refusals_are_classified_as_before() {
        assert_eq!(
            Refused::Mysql(server_error(1045, DENIED)).failure("db:3306", "bintrail", false),
            MysqlFailure::Permanent(format!("MySQL at db:3306 refused: {DENIED} (error 1045)"))
        );
        assert_eq!(
            Refused::Mysql(server_error(1040, "Too many connections"))
                .failure("db:3306", "bintrail", false),
            MysqlFailure::Transient("db:3306 answered: Too many connections".into())
        );
    }

    /// A greeting's payload as servers send it: protocol 10, the version, then the rest.
    fn greeting(version: &str) -> Vec<u8> {
        let mut payload = vec![10];
        payload.extend_from_slice(version.as_bytes());
        payload.extend_from_slice(&[0, 8, 0, 0, 0, b'a', b'b']);
        payload
    }

    #[test]
    fn the_greeting_says_whether_the_server_defaults_to_caching_sha2() {
        let version = |payload: &[u8]| greeting_version(payload).map(str::to_owned);
        assert_eq!(version(&greeting("8.4.3")), Some("8.4.3".into()));
        assert_eq!(version(&[0xff, 0x69, 0x04, b'H']), None, "an error packet");
        assert_eq!(version(&[10, b'8', b'.']), None, "cut short");
        assert_eq!(version(&[]), None);
        assert!(defaults_to_caching_sha2("8.0.40"));
        assert!(defaults_to_caching_sha2("8.4.3"));
        assert!(defaults_to_caching_sha2("9.1.0-commercial"));
        assert!(defaults_to_caching_sha2("8.0.mysql_aurora.3.05.2"));
        assert!(!defaults_to_caching_sha2("5.7.44-log"));
        assert!(!defaults_to_caching_sha2(
            "5.5.5-10.11.19-MariaDB-0+deb12u1-log"
        ));
        assert!(!defaults_to_caching_sha2("11.4.2-MariaDB"));
        assert!(!defaults_to_caching_sha2(""));
    }

    #[tokio::test]
    async fn a_panic_in_the_driver_during_login_is_a_refusal_naming_tls() {
        // What mysql_common's RSA code does with a password too long for the server's key.
        let login = std::panic::AssertUnwindSafe(async {
            if DENIED.is_empty() {
                return Ok::<(), ()>(());
            }
            panic!("message too long")
        })
        .catch_unwind()
        .await;
        let Err(panic) = login else {
            panic!("the future panicked");
        };
        let failure =
            Refused::DriverPanicked(panic_message(&*panic)).failure("db:3306", "bintrail", false);
        assert_eq!(
            failure,
            MysqlFailure::Permanent(
                "logging in to MySQL at db:3306 failed in the MySQL driver (message too long); \
                 this happens in caching_sha2_password's RSA password exchange over a \
                 connection without TLS, when the server's RSA public key is unusable or the \
                 password is longer than the key can encrypt (about 200 bytes for a 2048-bit \
                 key): use TLS: set stream_options.ssl_mode to required (or preferred, when the \
                 server offers TLS)"
                    .into()
            )
        );
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
