//! The connection path: how the embedded agent reaches a customer's MySQL, the one path the
//! onboarding steps and the live streams (`crate::stream`) share. It resolves the target once and
//! holds every address to the target policy, opens the SSH tunnel when the server has one, and
//! logs in. `mysql` (login, TLS, errors) and `ssh` (the tunnel) are its leaves: neither imports
//! the other nor this path; what they share is `failure`.

mod failure;
pub mod mysql;
mod ssh;

use std::net::{IpAddr, SocketAddr};

use mysql_async::Conn;

pub use failure::{MysqlFailure, UNREACHABLE};
pub use ssh::Tunnel;

use super::StepContext;
use crate::domain::{
    ConnectionMethod,
    server::SshTunnel,
    target::{DENIED, JUMPHOST},
};

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
pub async fn connect(context: &StepContext) -> Result<Link, MysqlFailure> {
    let server = &context.server;
    let address = mysql::address(context);
    let tunnel = match (&server.spec.connection_method, &server.spec.ssh_tunnel) {
        (ConnectionMethod::SshTunnel, Some(tunnel)) => {
            context.activity.set(format!(
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
            resolve(
                context,
                &server.spec.host,
                server.spec.port.get(),
                "MySQL host",
            )
            .await?
        }
    };
    context
        .activity
        .set(format!("logging in to MySQL at {address}"));
    let connection = mysql::login(context, target, password, &address).await?;
    if let Some(tunnel) = &tunnel {
        tunnel.stop_accepting();
    }
    context
        .activity
        .set(format!("waiting for MySQL at {address} to answer a query"));
    Ok(Link { connection, tunnel })
}

/// Opens the server's SSH tunnel: the stored key first, then the jumphost's address, resolved
/// and held to the target policy like any target the agent connects to itself.
async fn open_tunnel(context: &StepContext, tunnel: &SshTunnel) -> Result<Tunnel, MysqlFailure> {
    let private_key = ssh::private_key(context)?;
    let jumphost_address =
        resolve(context, &tunnel.host, tunnel.port.get(), JUMPHOST_TARGET).await?;
    ssh::open(context, tunnel, private_key, jumphost_address).await
}

/// Resolves a target once and checks every address; the caller connects to the address that
/// was checked, so a second lookup cannot lead elsewhere.
async fn resolve(
    context: &StepContext,
    host: &str,
    port: u16,
    what: &str,
) -> Result<SocketAddr, MysqlFailure> {
    let lookup = tokio::time::timeout(
        context.agent.connect_timeout,
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
        let range = context.agent.targets.refuses(address.ip(), method)?;
        Some((address.ip(), range))
    });
    if let Some((address, range)) = refused {
        tracing::info!(server_id = %context.server.id, %host, %address, %range, "target refused");
        let error = match host.parse::<IpAddr>() {
            Ok(_) => format!("{what} {host} is {DENIED}"),
            Err(_) => format!("{what} {host} resolves to {address}, {DENIED}"),
        };
        return Err(MysqlFailure::Permanent(error));
    }
    addresses
        .into_iter()
        .next()
        .ok_or_else(|| MysqlFailure::Transient(format!("{what} {host} resolves to no address")))
}
