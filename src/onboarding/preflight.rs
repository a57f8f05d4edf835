//! Preflight (CheckServer, and RegisterServer with validate_only): the checks of
//! waiting_for_agent, initializing and snapshotting, run against a server that need not be
//! registered, writing nothing. The connection path's stages are checks of their own (target,
//! reachable, the jumphost's host key, SSH login and forward, the MySQL login), then TLS, the
//! version, initializing's prerequisites, the source's settings and snapshotting's tables, each
//! by the very function its step calls. The jumphost's host key is reported, never pinned; a check
//! an earlier failure kept from running is `skipped`; the whole run ends within its budget.

use std::{sync::Mutex, time::Duration};

use async_trait::async_trait;
use mysql_async::{Conn, prelude::Queryable};

use super::{initializing::prerequisites, snapshotting};
use crate::{
    agent::AgentSettings,
    domain::{
        ConnectionMethod, SslMode,
        check::{Check, Report},
        server::Server,
    },
    secrets::SecretBox,
    source::connection::{
        self, ConnectContext, LeaseHolder, MysqlFailure, Stage,
        mysql::{self, Endpoint},
    },
    store::StoreError,
};

/// What a preflight runs against, and how long it may take.
pub struct Preflight<'a> {
    /// The server, registered or not, its secrets sealed to its id (in memory for a new one).
    pub server: &'a Server,
    pub secrets: &'a SecretBox,
    /// This replica's agent: the target policy, time limits and snapshot bounds.
    pub agent: &'a AgentSettings,
    /// The whole run's deadline.
    pub budget: Duration,
}

/// The connection stages checked, by name, with the stage of the path that passes each (None:
/// direct MySQL's reachability, known only from how the login ended).
const SSH_STAGES: &[(&str, Option<Stage>)] = &[
    ("target", Some(Stage::Target)),
    ("reachable", Some(Stage::Reachable)),
    ("ssh_host_key", Some(Stage::HostKey)),
    ("ssh_login", Some(Stage::SshLogin)),
    ("ssh_forwarding", Some(Stage::SshForwarding)),
    ("login", Some(Stage::Login)),
];
const DIRECT_STAGES: &[(&str, Option<Stage>)] = &[
    ("target", Some(Stage::Target)),
    ("reachable", None),
    ("login", Some(Stage::Login)),
];

/// The checks after the login, in the order they run.
const SOURCE_CHECKS: &[&str] = &[
    "tls",
    "version",
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "replication_slave_grant",
    "replication_client_grant",
    "retention",
    "sync_binlog",
    "source_role",
    "binlog_options",
    "select_grant",
    "tables",
    "primary_keys",
    "storage_engines",
];

/// Watches the connection path: the stages it passed and the host key it saw. It pins nothing:
/// the host key a first contact would record is only remembered.
#[derive(Default)]
struct Observer {
    passed: Mutex<Option<Stage>>,
    host_key: Mutex<Option<String>>,
}

impl Observer {
    fn last_passed(&self) -> Option<Stage> {
        *self
            .passed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn host_key(&self) -> Option<String> {
        self.host_key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[async_trait]
impl LeaseHolder for Observer {
    async fn record_host_key(&self, _: &Server, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn passed(&self, stage: Stage) {
        *self
            .passed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stage);
    }

    fn saw_host_key(&self, fingerprint: &str) {
        *self
            .host_key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(fingerprint.to_owned());
    }
}

impl Preflight<'_> {
    /// Runs every check within the budget; what did not run is listed as skipped, and the check
    /// the deadline cut short as failed.
    pub async fn run(&self) -> Report {
        let observer = Observer::default();
        let context = ConnectContext {
            server: self.server,
            secrets: self.secrets,
            reach: self.agent.reach(),
            holder: &observer,
        };
        let address = mysql::address(&context);
        let mut checks = Vec::new();
        let checked = self.check(&context, &observer, &address, &mut checks);
        if tokio::time::timeout(self.budget, checked).await.is_err() {
            self.cut_short(&mut checks, &observer, &address);
        }
        self.skip_the_rest(&mut checks);
        Report {
            checks,
            host_key_fingerprint: observer.host_key(),
        }
    }

    /// The deadline passed: the check it cut short fails saying so (a connection stage, when
    /// connecting had not finished).
    fn cut_short(&self, checks: &mut Vec<Check>, observer: &Observer, address: &Endpoint) {
        let late = MysqlFailure::Transient(format!(
            "the checks did not finish within their deadline of {}",
            humantime::format_duration(self.budget)
        ));
        let next = self.missing(checks).next();
        if checks.is_empty() {
            *checks = self.connection_checks(observer, address, Some(&late));
        } else if let Some(name) = next {
            checks.push(Check::fail(
                name,
                failure_message(&late),
                "retry with a longer deadline (grpc-timeout); if it persists, the server or the \
                 network to it is too slow to answer",
            ));
        }
    }

    /// Lists every check that did not run as skipped, saying which failure kept it from running.
    fn skip_the_rest(&self, checks: &mut Vec<Check>) {
        let why = match checks.iter().find(|check| check.failed()) {
            Some(failed) => format!("not checked: {} failed", failed.name),
            None => "not checked".to_owned(),
        };
        let skipped: Vec<Check> = self
            .missing(checks)
            .map(|name| Check::skipped(name, why.clone()))
            .collect();
        checks.extend(skipped);
    }

    /// The checks not in `checks` yet, in order.
    fn missing<'c>(&self, checks: &'c [Check]) -> impl Iterator<Item = &'static str> + 'c {
        self.stages()
            .iter()
            .map(|(name, _)| *name)
            .chain(SOURCE_CHECKS.iter().copied())
            .filter(|name| !checks.iter().any(|check| check.name == *name))
    }

    fn stages(&self) -> &'static [(&'static str, Option<Stage>)] {
        match self.server.spec.connection_method {
            ConnectionMethod::SshTunnel => SSH_STAGES,
            ConnectionMethod::Direct | ConnectionMethod::Vpn => DIRECT_STAGES,
        }
    }

    /// Connects and runs the checks, adding each to `checks` as it completes.
    async fn check(
        &self,
        context: &ConnectContext<'_>,
        observer: &Observer,
        address: &Endpoint,
        checks: &mut Vec<Check>,
    ) {
        let connected = connection::connect(context).await;
        let failure = connected.as_ref().err();
        checks.extend(self.connection_checks(observer, address, failure));
        let Ok(mut link) = connected else {
            return;
        };
        let result = self
            .source_checks(&mut link.connection, address, checks)
            .await;
        link.close().await;
        if let Err(failure) = result {
            let name = self.missing(checks).next().unwrap_or("source");
            checks.push(Check::fail(
                name,
                failure_message(&failure),
                "retry the check; if it persists, see why the server stops answering",
            ));
        }
    }

    /// The connection stages: those passed, then the one the failure belongs to.
    fn connection_checks(
        &self,
        observer: &Observer,
        address: &Endpoint,
        failure: Option<&MysqlFailure>,
    ) -> Vec<Check> {
        let passed = observer.last_passed();
        let mut checks = Vec::new();
        for (name, stage) in self.stages() {
            let done = match (stage, failure) {
                (_, None) => true,
                (Some(stage), Some(_)) => passed.is_some_and(|passed| passed >= *stage),
                // Direct MySQL answered when it refused the login, not when it was unreachable.
                (None, Some(failure)) => {
                    passed.is_some() && matches!(failure, MysqlFailure::Permanent(_))
                }
            };
            match failure {
                Some(failure) if !done => {
                    let seen = observer.host_key();
                    checks.push(Check::fail(
                        name,
                        failure_message(failure),
                        self.remedy(name, address, failure, seen.as_deref()),
                    ));
                    break;
                }
                _ => checks.push(Check::pass(
                    name,
                    self.passed_message(name, address, observer.host_key().as_deref()),
                )),
            }
        }
        checks
    }

    /// What a passed connection stage found.
    fn passed_message(&self, name: &str, address: &Endpoint, seen: Option<&str>) -> String {
        let spec = &self.server.spec;
        let tunnel = spec.ssh_tunnel.as_ref();
        let jumphost = tunnel.map_or_else(String::new, |tunnel| {
            format!("the SSH jumphost {}:{}", tunnel.host, tunnel.port)
        });
        let seen = seen.unwrap_or("none");
        match name {
            "target" if tunnel.is_some() => {
                format!("{jumphost} resolves to addresses the agent may connect to")
            }
            "target" => format!(
                "{} resolves to addresses the agent may connect to",
                spec.host
            ),
            "reachable" if tunnel.is_some() => format!("{jumphost} accepts connections"),
            "reachable" => format!("MySQL at {address} answers"),
            "ssh_host_key" => {
                match tunnel.and_then(|tunnel| tunnel.host_key_fingerprint.as_ref()) {
                    Some(_) => format!("{jumphost} presented the expected host key {seen}"),
                    None => format!(
                        "{jumphost} presented host key {seen}; it is not pinned yet: onboarding \
                     records it on first contact, or set ssh_tunnel.host_key_fingerprint to pin \
                     it now"
                    ),
                }
            }
            "ssh_login" => format!(
                "{jumphost} accepted the private key for user {}",
                tunnel.map_or("", |tunnel| tunnel.user.as_str())
            ),
            "ssh_forwarding" => format!("{jumphost} reaches MySQL at {address}"),
            _ => format!("logged in to MySQL at {address} as {}", spec.mysql_user),
        }
    }

    /// The fix of a failed connection stage.
    fn remedy(
        &self,
        name: &str,
        address: &Endpoint,
        failure: &MysqlFailure,
        seen: Option<&str>,
    ) -> String {
        let spec = &self.server.spec;
        let outbound_ip = &self.agent.outbound_ip;
        let tunnel = spec.ssh_tunnel.as_ref();
        let (host, port) = tunnel.map_or((spec.host.to_string(), spec.port.get()), |tunnel| {
            (tunnel.host.to_string(), tunnel.port.get())
        });
        match (name, failure) {
            ("target", MysqlFailure::Permanent(_)) => {
                "use a host the agent may connect to: not loopback, link-local, cloud metadata \
                 or the service's own networks; a private address only through vpn or \
                 ssh_tunnel"
                    .to_owned()
            }
            ("target", MysqlFailure::Transient(_)) => {
                format!("check that {host} resolves in DNS, as seen from the agent")
            }
            ("reachable", _) if tunnel.is_some() => {
                format!("allow {outbound_ip} on TCP port {port} of the jumphost {host}")
            }
            ("reachable", _) => format!(
                "allow {outbound_ip} to connect to {address} (firewall, security group), and \
                 check that MySQL listens there (bind_address, port)"
            ),
            ("ssh_host_key", _) => match seen {
                Some(seen) => format!(
                    "check the jumphost's key (ssh-keygen -lf on its host key); if it really \
                     changed, set ssh_tunnel.host_key_fingerprint to {seen}"
                ),
                None => format!("check that {host}:{port} is an SSH server"),
            },
            ("ssh_login", _) => format!(
                "add the public key of ssh_tunnel.private_key to ~{}/.ssh/authorized_keys on \
                 the jumphost",
                tunnel.map_or("", |tunnel| tunnel.user.as_str())
            ),
            ("ssh_forwarding", _) => format!(
                "let the jumphost reach MySQL at {address}: AllowTcpForwarding yes in its \
                 sshd_config, and its firewall"
            ),
            _ => format!(
                "check mysql_user and mysql_password, and that the account exists for the \
                 agent's address: CREATE USER '{user}'@'%' IDENTIFIED BY '...'; GRANT \
                 REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO '{user}'@'%'",
                user = spec.mysql_user
            ),
        }
    }

    /// The checks after the login, each by the function its onboarding step calls.
    async fn source_checks(
        &self,
        connection: &mut Conn,
        address: &Endpoint,
        checks: &mut Vec<Check>,
    ) -> Result<(), MysqlFailure> {
        checks.push(
            tls(
                connection,
                address,
                self.server.spec.stream_options.ssl_mode,
            )
            .await?,
        );
        let (flavour, version) = mysql::version(connection, address).await?;
        checks.push(Check::pass("version", format!("{flavour} {version}")));
        checks.extend(prerequisites(connection, address).await?);
        let source = super::source_checks::read(connection, address).await?;
        checks.extend(source.findings().checks);
        let options = &self.server.spec.stream_options;
        let read =
            snapshotting::read_snapshot(connection, address, options, self.agent.snapshot).await?;
        match read {
            Ok(tables) => {
                checks.push(Check::pass("select_grant", "the user may read the tables"));
                checks.push(Check::pass(
                    "tables",
                    format!("{} to snapshot", snapshotting::count(&tables)),
                ));
                checks.extend(snapshotting::table_checks(&tables));
            }
            Err(failed) => {
                if failed.name == "tables" {
                    checks.push(Check::pass("select_grant", "the user holds SELECT"));
                }
                checks.push(failed);
            }
        }
        Ok(())
    }
}

/// Whether the session is encrypted: a warning when it is not, naming how to make it so.
async fn tls(
    connection: &mut Conn,
    address: &Endpoint,
    mode: SslMode,
) -> Result<Check, MysqlFailure> {
    let row: Option<(String, String)> = address
        .ask(
            "the session's TLS cipher",
            connection.query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'"),
        )
        .await?;
    let cipher = row.map(|(_, cipher)| cipher).unwrap_or_default();
    Ok(match (cipher.is_empty(), mode) {
        (false, _) => Check::pass("tls", format!("the connection is encrypted ({cipher})")),
        (true, SslMode::Disabled) => Check::warn(
            "tls",
            "the connection is not encrypted: stream_options.ssl_mode is disabled",
            "set stream_options.ssl_mode to required once the server offers TLS",
        ),
        (true, _) => Check::warn(
            "tls",
            format!("MySQL at {address} offers no TLS, so the connection is not encrypted"),
            "give the server a certificate (ssl_cert and ssl_key in my.cnf, then restart it), \
             then set stream_options.ssl_mode to required",
        ),
    })
}

/// A failure's text.
fn failure_message(failure: &MysqlFailure) -> String {
    match failure {
        MysqlFailure::Transient(message) | MysqlFailure::Permanent(message) => message.clone(),
    }
}
