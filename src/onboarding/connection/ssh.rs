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

use super::failure::{MysqlFailure, unreachable};
use crate::{
    domain::{fields::HostKeyFingerprint, server::SshTunnel},
    onboarding::StepContext,
    store::{Scope, StoreError},
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
    context: &StepContext,
    address: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(source) = context.agent.source_address else {
        return tokio::net::TcpStream::connect(address).await;
    };
    let socket = match address {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    socket.connect(address).await
}

/// Opens the server's SSH tunnel through the jumphost at `jumphost_address` (resolved and
/// checked by the caller), logging in with `private_key` and recording the jumphost's host key
/// on first contact.
pub async fn open(
    context: &StepContext,
    tunnel: &SshTunnel,
    private_key: russh::keys::PrivateKey,
    jumphost_address: SocketAddr,
) -> Result<Tunnel, MysqlFailure> {
    let server = &context.server;
    let jumphost = endpoint(&tunnel.host, tunnel.port.get());
    let target = endpoint(&server.spec.host, server.spec.port.get());
    let timeout = context.agent.connect_timeout;
    let outbound_ip = server
        .agent_outbound_ip
        .as_deref()
        .unwrap_or("the agent's outbound IP");
    let unreachable = |detail: String| {
        let reason = unreachable(&format!("the SSH jumphost {jumphost}"), &detail);
        MysqlFailure::Transient(format!(
            "{reason}; allow {outbound_ip} on TCP port {} of the jumphost",
            tunnel.port
        ))
    };
    let socket = match tokio::time::timeout(timeout, connect_from(context, jumphost_address)).await
    {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => return Err(unreachable(error.to_string())),
        Err(_) => {
            return Err(unreachable(format!(
                "timed out after {}s",
                timeout.as_secs()
            )));
        }
    };
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
    let handshake =
        tokio::time::timeout(timeout, client::connect_stream(config, socket, check)).await;
    let seen = presented
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let mut session = match handshake {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => {
            return Err(match (&tunnel.host_key_fingerprint, &seen) {
                (Some(expected), Some(seen)) if expected.as_str() != seen => {
                    MysqlFailure::Permanent(format!(
                        "the SSH jumphost {jumphost} presented host key {seen}, but {expected} is expected; \
                     if the jumphost's key really changed, set ssh_tunnel.host_key_fingerprint to the new one with UpdateServer"
                    ))
                }
                _ => unreachable(format!("SSH handshake failed: {error}")),
            });
        }
        Err(_) => {
            return Err(unreachable(format!(
                "SSH handshake timed out after {}s",
                timeout.as_secs()
            )));
        }
    };
    if tunnel.host_key_fingerprint.is_none()
        && let Some(seen) = &seen
    {
        record_host_key(context, seen).await?;
    }
    let rsa_hash = session
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .unwrap_or(Some(HashAlg::Sha256));
    let operation = context.agent.query_timeout;
    let stalled = |what: &str| {
        MysqlFailure::Transient(format!(
            "the SSH jumphost {jumphost} did not answer {what} within {}",
            humantime::format_duration(operation)
        ))
    };
    let login = session.authenticate_publickey(
        tunnel.user.clone(),
        PrivateKeyWithHashAlg::new(Arc::new(private_key), rsa_hash),
    );
    let authenticated = tokio::time::timeout(operation, login)
        .await
        .map_err(|_| stalled("the login"))?
        .map_err(|error| {
            MysqlFailure::Transient(format!("SSH login at {jumphost} failed: {error}"))
        })?;
    if !authenticated.success() {
        return Err(MysqlFailure::Permanent(format!(
            "SSH authentication refused: the jumphost {jumphost} did not accept the stored private key for user {}; \
             add its public key to ~{}/.ssh/authorized_keys",
            tunnel.user, tunnel.user
        )));
    }
    // Prove the jumphost can reach MySQL before handing the tunnel out.
    let channel = session.channel_open_direct_tcpip(
        server.spec.host.clone(),
        u32::from(server.spec.port.get()),
        "127.0.0.1",
        0,
    );
    match tokio::time::timeout(operation, channel)
        .await
        .map_err(|_| stalled("a channel to MySQL"))?
    {
        Ok(channel) => {
            let _ = channel.close().await;
        }
        Err(russh::Error::ChannelOpenFailure(reason)) => {
            return Err(MysqlFailure::Transient(format!(
                "the SSH jumphost {jumphost} could not reach MySQL at {target} ({})",
                describe(reason)
            )));
        }
        Err(error) => {
            return Err(MysqlFailure::Transient(format!(
                "the SSH jumphost {jumphost} could not open a channel to {target}: {error}"
            )));
        }
    }
    forward(
        session,
        server.spec.host.to_string(),
        server.spec.port.get(),
    )
    .await
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
pub fn private_key(context: &StepContext) -> Result<russh::keys::PrivateKey, MysqlFailure> {
    let server = &context.server;
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

/// Records the jumphost's host key seen on first contact; later connections enforce it.
async fn record_host_key(context: &StepContext, fingerprint: &str) -> Result<(), MysqlFailure> {
    let recorded = context
        .store
        .modify_server(
            Scope::Runner(context.claim.fence),
            context.server.id,
            |server| {
                if let Some(tunnel) = server.spec.ssh_tunnel.as_mut()
                    && tunnel.host_key_fingerprint.is_none()
                {
                    // russh writes SHA256 fingerprints in OpenSSH's form, which always parses.
                    tunnel.host_key_fingerprint = HostKeyFingerprint::parse(fingerprint).ok();
                }
                Ok::<_, StoreError>(())
            },
        )
        .await;
    recorded.map(drop).map_err(|error| {
        MysqlFailure::Transient(format!("could not record the jumphost's host key: {error}"))
    })
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
