//! The connection path: how the embedded agent reaches a customer's MySQL, the one path the
//! onboarding steps and the live streams share. It resolves the target once and holds every
//! address to the target policy, opens the SSH tunnel when the server has one, and logs in. It
//! takes a narrow [`ConnectContext`] (the server, its secrets, the agent's reach, and the lease
//! holder that fences its one write), never a caller's own context. `mysql` (login, TLS, errors)
//! and `ssh` (the tunnel) are its leaves: neither imports the other nor this path; what they
//! share is `failure`.

mod failure;
pub mod interfaces;
pub mod mysql;
mod ssh;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use mysql_async::Conn;

pub use failure::{MysqlFailure, UNREACHABLE};
pub use ssh::{Tunnel, record_host_key};

use crate::{
    domain::{
        ConnectionMethod,
        server::{Server, SshTunnel},
        target::{JUMPHOST, TargetPolicy},
    },
    secrets::SecretBox,
    store::StoreError,
};

/// How the agent reaches customers' MySQL: the addresses it refuses, where its connections leave
/// from, and how long connecting and each request may take.
#[derive(Debug, Clone)]
pub struct Reach {
    /// The addresses the agent refuses to connect to.
    pub targets: Arc<TargetPolicy>,
    /// The local address connections to jumphosts leave from, when the host has several.
    pub source_address: Option<IpAddr>,
    /// Time limit of one connection attempt (and of a lookup, a TCP connect, an SSH handshake).
    pub connect_timeout: Duration,
    /// How long one request to MySQL or the jumphost may go unanswered.
    pub query_timeout: Duration,
}

/// Whose lease a connection is opened under: an onboarding step's, a stream's, or none (a check
/// that only reads the source). Connecting tells it what it is doing, and makes its one write,
/// the jumphost's host key on first contact, through it, fenced by that lease.
#[async_trait]
pub trait LeaseHolder: Send + Sync {
    /// Records `fingerprint` as the server's jumphost host key (when none is recorded) while the
    /// lease is held: `StoreError::Fenced` once it is not.
    async fn record_host_key(&self, server: &Server, fingerprint: &str) -> Result<(), StoreError>;

    /// What connecting does now ("logging in to MySQL at db:3306"), for a holder that names it
    /// when it stalls; nothing by default.
    fn doing(&self, _what: String) {}

    /// A stage of the path passed, for a holder that reports each (a preflight); nothing by
    /// default.
    fn passed(&self, _stage: Stage) {}

    /// The host key the jumphost presented, matched or not; nothing by default.
    fn saw_host_key(&self, _fingerprint: &str) {}
}

/// The stages of the connection path, in the order it passes them (an SSH tunnel's only with
/// one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The first target (the jumphost, else MySQL) resolved to addresses the policy allows.
    Target,
    /// The jumphost accepted the TCP connection.
    Reachable,
    /// The jumphost's host key is the expected one (or, none expected, was seen).
    HostKey,
    /// The jumphost accepted the private key.
    SshLogin,
    /// The jumphost opened a channel to MySQL.
    SshForwarding,
    /// MySQL logged the user in.
    Login,
}

/// What connecting to a customer's MySQL needs, and nothing more.
pub struct ConnectContext<'a> {
    /// The server as it is now: address, user, tunnel, TLS mode, sealed secrets, and the
    /// outbound IP its customer allows.
    pub server: &'a Server,
    /// Opens the server's sealed MySQL password and SSH key.
    pub secrets: &'a SecretBox,
    pub reach: Reach,
    pub holder: &'a dyn LeaseHolder,
}

/// What `resolve` calls a jumphost (judged as a direct target: the agent connects to it itself).
const JUMPHOST_TARGET: &str = "SSH jumphost";

/// A logged-in connection and the SSH tunnel it runs through, if any; the tunnel closes when
/// the link is dropped.
pub struct Link {
    pub connection: Conn,
    pub tunnel: Option<Tunnel>,
}

impl Link {
    /// Closes the connection, then the tunnel.
    pub async fn close(self) {
        mysql::close(self.connection).await;
        drop(self.tunnel);
    }
}

/// Logs in to the server with its stored credentials, through its SSH tunnel when it has one,
/// honouring its ssl_mode.
pub async fn connect(context: &ConnectContext<'_>) -> Result<Link, MysqlFailure> {
    let server = context.server;
    let address = mysql::address(context);
    let tunnel = match (&server.spec.connection_method, &server.spec.ssh_tunnel) {
        (ConnectionMethod::SshTunnel, Some(tunnel)) => {
            context.holder.doing(format!(
                "opening the SSH tunnel through {}:{}",
                tunnel.host, tunnel.port
            ));
            Some(open_tunnel(context, tunnel).await?)
        }
        (ConnectionMethod::SshTunnel, None) => {
            return Err(MysqlFailure::Permanent(
                "connection_method is ssh_tunnel but no ssh_tunnel is set".into(),
            ));
        }
        _ => None,
    };
    let password = mysql::password(context)?;
    let target = match &tunnel {
        Some(tunnel) => tunnel.local_address,
        None => {
            let address = resolve(
                context,
                &server.spec.host,
                server.spec.port.get(),
                "MySQL host",
            )
            .await?;
            context.holder.passed(Stage::Target);
            address
        }
    };
    context
        .holder
        .doing(format!("logging in to MySQL at {address}"));
    let connection = mysql::login(context, target, password, &address).await?;
    context.holder.passed(Stage::Login);
    if let Some(tunnel) = &tunnel {
        tunnel.stop_accepting();
    }
    context
        .holder
        .doing(format!("waiting for MySQL at {address} to answer a query"));
    Ok(Link { connection, tunnel })
}

/// Opens the server's SSH tunnel: the stored key first, then the jumphost's address, resolved
/// and held to the target policy like any target the agent connects to itself.
async fn open_tunnel(
    context: &ConnectContext<'_>,
    tunnel: &SshTunnel,
) -> Result<Tunnel, MysqlFailure> {
    let private_key = ssh::private_key(context)?;
    let jumphost_address =
        resolve(context, &tunnel.host, tunnel.port.get(), JUMPHOST_TARGET).await?;
    context.holder.passed(Stage::Target);
    ssh::open(context, tunnel, private_key, jumphost_address).await
}

/// How long a registration or update waits for a host name to resolve before it lets the
/// onboarding judge the name instead.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The addresses a host name resolves to now, for the target policy's check at RegisterServer
/// and UpdateServer; none for an IP literal (checked as such) or a name that does not resolve
/// within [`LOOKUP_TIMEOUT`] (the onboarding resolves it again, and says why it cannot).
pub async fn lookup(host: &str) -> Vec<IpAddr> {
    if host.is_empty() || host.parse::<IpAddr>().is_ok() {
        return Vec::new();
    }
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, 0))).await {
        Ok(Ok(addresses)) => addresses.map(|address| address.ip()).collect(),
        _ => Vec::new(),
    }
}

/// Resolves a target once and checks every address; the caller connects to the address that
/// was checked, so a second lookup cannot lead elsewhere.
async fn resolve(
    context: &ConnectContext<'_>,
    host: &str,
    port: u16,
    what: &str,
) -> Result<SocketAddr, MysqlFailure> {
    let lookup = tokio::time::timeout(
        context.reach.connect_timeout,
        tokio::net::lookup_host((host, port)),
    );
    let addresses: Vec<SocketAddr> = match lookup.await {
        Ok(Ok(addresses)) => addresses.collect(),
        Ok(Err(error)) => {
            return Err(MysqlFailure::Transient(format!(
                "cannot resolve {what} {host}: {error}"
            )));
        }
        Err(_) => {
            return Err(MysqlFailure::Transient(format!(
                "resolving {what} {host} timed out"
            )));
        }
    };
    let method = match what {
        JUMPHOST_TARGET => JUMPHOST,
        _ => context.server.spec.connection_method,
    };
    let refused = addresses.iter().find_map(|address| {
        let range = context.reach.targets.refuses(address.ip(), method)?;
        let reason = context.reach.targets.refusal(address.ip(), method)?;
        Some((address.ip(), range, reason))
    });
    if let Some((address, range, reason)) = refused {
        tracing::info!(server_id = %context.server.id, %host, %address, %range, "target refused");
        let error = match host.parse::<IpAddr>() {
            Ok(_) => format!("{what} {host} is {reason}"),
            Err(_) => format!("{what} {host} resolves to {address}, {reason}"),
        };
        return Err(MysqlFailure::Permanent(error));
    }
    addresses
        .into_iter()
        .next()
        .ok_or_else(|| MysqlFailure::Transient(format!("{what} {host} resolves to no address")))
}
