//! The SSH leaf of the connection path: tunnels through a customer's jumphost (at an address
//! already resolved and checked). Log in with the stored key, verify (or record) the jumphost's
//! host key, and forward a local loopback port to MySQL as the jumphost sees it. A tunnel lives
//! as long as its `Tunnel` value: dropping it closes the session and every forward.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use russh::{
    ChannelOpenFailure, Disconnect,
    client::{self, Handle},
    keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate},
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    ConnectContext, Stage,
    failure::{MysqlFailure, unreachable},
};
use crate::{
    domain::{
        fields::HostKeyFingerprint,
        server::{Server, SshTunnel},
    },
    store::{Scope, Store, StoreError},
};

/// Checks the jumphost's host key against the expected fingerprint, remembering what it saw.
struct HostKeyCheck {
    expected: Option<String>,
    presented: Arc<Mutex<Option<String>>>,
}

fn fingerprint(key: &PublicKeyOrCertificate) -> String {
    match key {
        PublicKeyOrCertificate::PublicKey { key, .. } => key.fingerprint(HashAlg::Sha256),
        PublicKeyOrCertificate::Certificate(certificate) => {
            certificate.public_key().fingerprint(HashAlg::Sha256)
        }
    }
    .to_string()
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let presented = fingerprint(key);
        let accepted = self
            .expected
            .as_ref()
            .is_none_or(|expected| *expected == presented);
        *self
            .presented
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(presented);
        Ok(accepted)
    }
}

/// An open tunnel: MySQL is reachable at `local_address` while it lives.
pub struct Tunnel {
    /// The loopback address that forwards to MySQL through the jumphost.
    pub local_address: SocketAddr,
    session: Arc<Handle<HostKeyCheck>>,
    forwarding: tokio::task::JoinHandle<()>,
    accepting: CancellationToken,
}

impl Tunnel {
    /// Closes the local port once the agent's connection is made, so nothing else on this host
    /// can ride the tunnel.
    pub fn stop_accepting(&self) {
        self.accepting.cancel();
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        // Aborting the forward drops its connections: the agent's socket and the channels close.
        self.forwarding.abort();
        let session = self.session.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = session
                    .disconnect(Disconnect::ByApplication, "tunnel closed", "en")
                    .await;
            });
        }
    }
}

fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A TCP connection to `address`, from the agent's source address when one is set.
async fn connect_from(
    context: &ConnectContext<'_>,
    address: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(source) = context.reach.source_address else {
        return tokio::net::TcpStream::connect(address).await;
    };
    let socket = match address {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket.connect(address).await
}

/// The jumphost as the tunnel's messages name it, with the time limits of talking to it.
struct Jumphost<'a> {
    tunnel: &'a SshTunnel,
    /// `host:port` of the jumphost.
    endpoint: String,
    /// The address the customer must allow on the jumphost.
    outbound_ip: &'a str,
    /// Time limit of the TCP connection and of the SSH handshake.
    connect_timeout: Duration,
    /// Time limit of each request once connected.
    query_timeout: Duration,
}

impl<'a> Jumphost<'a> {
    /// The jumphost of `tunnel`, reached by the agent of `context`.
    fn new(context: &'a ConnectContext<'_>, tunnel: &'a SshTunnel) -> Jumphost<'a> {
        Jumphost {
            tunnel,
            endpoint: endpoint(&tunnel.host, tunnel.port.get()),
            outbound_ip: context
                .server
                .agent_outbound_ip
                .as_deref()
                .unwrap_or("the agent's outbound IP"),
            connect_timeout: context.reach.connect_timeout,
            query_timeout: context.reach.query_timeout,
        }
    }

    /// The jumphost cannot be reached: transient, saying which address to allow on which port.
    fn unreachable(&self, detail: String) -> MysqlFailure {
        let reason = unreachable(&format!("the SSH jumphost {}", self.endpoint), &detail);
        MysqlFailure::Transient(format!(
            "{reason}; allow {} on TCP port {} of the jumphost",
            self.outbound_ip, self.tunnel.port
        ))
    }

    /// The jumphost left `what` unanswered past the request time limit.
    fn stalled(&self, what: &str) -> MysqlFailure {
        MysqlFailure::Transient(format!(
            "the SSH jumphost {} did not answer {what} within {}",
            self.endpoint,
            humantime::format_duration(self.query_timeout)
        ))
    }
}

/// Opens the server's SSH tunnel through the jumphost at `jumphost_address` (resolved and
/// checked by the caller), logging in with `private_key` and recording the jumphost's host key
/// on first contact.
pub async fn open(
    context: &ConnectContext<'_>,
    tunnel: &SshTunnel,
    private_key: russh::keys::PrivateKey,
    jumphost_address: SocketAddr,
) -> Result<Tunnel, MysqlFailure> {
    let jumphost = Jumphost::new(context, tunnel);
    let holder = context.holder;
    let socket = connect_to_jumphost(context, &jumphost, jumphost_address).await?;
    holder.passed(Stage::Reachable);
    let mut session = handshake(context, &jumphost, socket).await?;
    holder.passed(Stage::HostKey);
    log_in(&mut session, &jumphost, private_key).await?;
    holder.passed(Stage::SshLogin);
    // Prove the jumphost can reach MySQL before handing the tunnel out.
    reach_mysql(&session, &jumphost, context.server).await?;
    holder.passed(Stage::SshForwarding);
    forward(
        session,
        context.server.spec.host.to_string(),
        context.server.spec.port.get(),
    )
    .await
}

/// The TCP connection to the jumphost, within the connect time limit.
async fn connect_to_jumphost(
    context: &ConnectContext<'_>,
    jumphost: &Jumphost<'_>,
    address: SocketAddr,
) -> Result<tokio::net::TcpStream, MysqlFailure> {
    let timeout = jumphost.connect_timeout;
    match tokio::time::timeout(timeout, connect_from(context, address)).await {
        Ok(Ok(socket)) => Ok(socket),
        Ok(Err(error)) => Err(jumphost.unreachable(error.to_string())),
        Err(_) => Err(jumphost.unreachable(format!("timed out after {}s", timeout.as_secs()))),
    }
}

/// The SSH session over `socket`, once the jumphost's host key matched the expected one; a key
/// seen on first contact is recorded, and later connections enforce it.
async fn handshake(
    context: &ConnectContext<'_>,
    jumphost: &Jumphost<'_>,
    socket: tokio::net::TcpStream,
) -> Result<Handle<HostKeyCheck>, MysqlFailure> {
    let tunnel = jumphost.tunnel;
    let presented = Arc::new(Mutex::new(None));
    let check = HostKeyCheck {
        expected: tunnel
            .host_key_fingerprint
            .as_ref()
            .map(ToString::to_string),
        presented: presented.clone(),
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        ..Default::default()
    });
    let timeout = jumphost.connect_timeout;
    let handshake =
        tokio::time::timeout(timeout, client::connect_stream(config, socket, check)).await;
    let seen = presented
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    if let Some(seen) = &seen {
        context.holder.saw_host_key(seen);
    }
    let session = match handshake {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => return Err(handshake_failure(jumphost, seen.as_deref(), &error)),
        Err(_) => {
            return Err(jumphost.unreachable(format!(
                "SSH handshake timed out after {}s",
                timeout.as_secs()
            )));
        }
    };
    if tunnel.host_key_fingerprint.is_none()
        && let Some(seen) = &seen
    {
        record_first_host_key(context, seen).await?;
    }
    Ok(session)
}

/// Why a handshake the jumphost answered failed: a host key other than the expected one is
/// permanent (only the client can confirm a new key); anything else leaves it unreachable.
fn handshake_failure(
    jumphost: &Jumphost<'_>,
    seen: Option<&str>,
    error: &russh::Error,
) -> MysqlFailure {
    match (&jumphost.tunnel.host_key_fingerprint, seen) {
        (Some(expected), Some(seen)) if expected.as_str() != seen => {
            MysqlFailure::Permanent(format!(
                "the SSH jumphost {} presented host key {seen}, but {expected} is expected; \
                     if the jumphost's key really changed, set ssh_tunnel.host_key_fingerprint to the new one with UpdateServer",
                jumphost.endpoint
            ))
        }
        _ => jumphost.unreachable(format!("SSH handshake failed: {error}")),
    }
}

/// Records the host key a jumphost presented on first contact; later connections enforce it.
async fn record_first_host_key(
    context: &ConnectContext<'_>,
    seen: &str,
) -> Result<(), MysqlFailure> {
    context
        .holder
        .record_host_key(context.server, seen)
        .await
        .map_err(|error| {
            MysqlFailure::Transient(format!("could not record the jumphost's host key: {error}"))
        })
}

/// Logs in to the jumphost as the tunnel's user with the stored private key.
async fn log_in(
    session: &mut Handle<HostKeyCheck>,
    jumphost: &Jumphost<'_>,
    private_key: russh::keys::PrivateKey,
) -> Result<(), MysqlFailure> {
    let tunnel = jumphost.tunnel;
    let rsa_hash = session
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .unwrap_or(Some(HashAlg::Sha256));
    let login = session.authenticate_publickey(
        tunnel.user.clone(),
        PrivateKeyWithHashAlg::new(Arc::new(private_key), rsa_hash),
    );
    let authenticated = tokio::time::timeout(jumphost.query_timeout, login)
        .await
        .map_err(|_| jumphost.stalled("the login"))?
        .map_err(|error| {
            MysqlFailure::Transient(format!(
                "SSH login at {} failed: {error}",
                jumphost.endpoint
            ))
        })?;
    if !authenticated.success() {
        return Err(MysqlFailure::Permanent(format!(
            "SSH authentication refused: the jumphost {} did not accept the stored private key for user {}; \
             add its public key to ~{}/.ssh/authorized_keys",
            jumphost.endpoint, tunnel.user, tunnel.user
        )));
    }
    Ok(())
}

/// Opens (and closes) one channel to MySQL as the jumphost sees it: the jumphost can reach it.
async fn reach_mysql(
    session: &Handle<HostKeyCheck>,
    jumphost: &Jumphost<'_>,
    server: &Server,
) -> Result<(), MysqlFailure> {
    let target = endpoint(&server.spec.host, server.spec.port.get());
    let channel = session.channel_open_direct_tcpip(
        server.spec.host.clone(),
        u32::from(server.spec.port.get()),
        "127.0.0.1",
        0,
    );
    match tokio::time::timeout(jumphost.query_timeout, channel)
        .await
        .map_err(|_| jumphost.stalled("a channel to MySQL"))?
    {
        Ok(channel) => {
            let _ = channel.close().await;
            Ok(())
        }
        Err(russh::Error::ChannelOpenFailure(reason)) => Err(MysqlFailure::Transient(format!(
            "the SSH jumphost {} could not reach MySQL at {target} ({})",
            jumphost.endpoint,
            describe(reason)
        ))),
        Err(error) => Err(MysqlFailure::Transient(format!(
            "the SSH jumphost {} could not open a channel to {target}: {error}",
            jumphost.endpoint
        ))),
    }
}

fn describe(reason: ChannelOpenFailure) -> &'static str {
    match reason {
        ChannelOpenFailure::AdministrativelyProhibited => {
            "forwarding is prohibited: AllowTcpForwarding must be yes"
        }
        ChannelOpenFailure::ConnectFailed => "the connection was refused or timed out",
        ChannelOpenFailure::UnknownChannelType => "direct-tcpip channels are not supported",
        ChannelOpenFailure::ResourceShortage => "the jumphost is short of resources",
        _ => "the channel was refused",
    }
}

/// The server's stored SSH private key, decrypted and parsed.
pub fn private_key(context: &ConnectContext<'_>) -> Result<russh::keys::PrivateKey, MysqlFailure> {
    let server = context.server;
    let sealed = server.secrets.ssh_private_key.as_ref().ok_or_else(|| {
        MysqlFailure::Permanent("no SSH private key is stored: set ssh_tunnel.private_key".into())
    })?;
    let key = context
        .secrets
        .open(sealed, &format!("{}/ssh_private_key", server.id))
        .map_err(|error| {
            MysqlFailure::Permanent(format!(
                "the stored SSH private key cannot be used ({error}); set it again with UpdateServer"
            ))
        })?;
    russh::keys::decode_secret_key(&key.0, None).map_err(|_| {
        MysqlFailure::Permanent(
            "the stored SSH private key cannot be parsed; set it again with UpdateServer".into(),
        )
    })
}

/// Records the jumphost's host key seen on first contact, by a write fenced by `scope` (the
/// holder's lease); later connections enforce it.
pub async fn record_host_key(
    store: &Store,
    scope: Scope,
    server: &Server,
    fingerprint: &str,
) -> Result<(), StoreError> {
    store
        .modify_server(scope, server.id, |server| {
            if let Some(tunnel) = server.spec.ssh_tunnel.as_mut()
                && tunnel.host_key_fingerprint.is_none()
            {
                // russh writes SHA256 fingerprints in OpenSSH's form, which always parses.
                tunnel.host_key_fingerprint = HostKeyFingerprint::parse(fingerprint).ok();
            }
            Ok::<_, StoreError>(())
        })
        .await
        .map(drop)
}

/// Listens on a loopback port and forwards each connection through the session.
async fn forward(
    session: Handle<HostKeyCheck>,
    host: String,
    port: u16,
) -> Result<Tunnel, MysqlFailure> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|error| {
        MysqlFailure::Transient(format!("cannot open a local tunnel port: {error}"))
    })?;
    let local_address = listener.local_addr().map_err(|error| {
        MysqlFailure::Transient(format!("cannot open a local tunnel port: {error}"))
    })?;
    let session = Arc::new(session);
    let forwarding_session = session.clone();
    let accepting = CancellationToken::new();
    let stop_accepting = accepting.clone();
    let forwarding = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let (mut socket, peer) = tokio::select! {
                () = stop_accepting.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => break,
                },
            };
            let session = forwarding_session.clone();
            let host = host.clone();
            connections.spawn(async move {
                let channel = match session
                    .channel_open_direct_tcpip(
                        host,
                        u32::from(port),
                        peer.ip().to_string(),
                        u32::from(peer.port()),
                    )
                    .await
                {
                    Ok(channel) => channel,
                    Err(error) => {
                        tracing::warn!(%error, "SSH tunnel could not open a channel");
                        return;
                    }
                };
                let mut stream = channel.into_stream();
                let _ = tokio::io::copy_bidirectional(&mut socket, &mut stream).await;
            });
        }
        // The port is closed; the connections made through it live on until the tunnel drops.
        drop(listener);
        while connections.join_next().await.is_some() {}
    });
    Ok(Tunnel {
        local_address,
        session,
        forwarding,
        accepting,
    })
}
