//! A TCP proxy in front of PostgreSQL that a test can cut or black-hole.

use super::*;

// ------------------------------------------------------------------------------------------------
// A TCP proxy in front of PostgreSQL that a test can cut
// ------------------------------------------------------------------------------------------------

/// Forwards 127.0.0.1:port to an upstream address until `cut()`, which closes every open
/// connection and turns new ones away at once, or `black_hole()`, which keeps every connection
/// open and forwards nothing (a silent network death), until `restore()`.
pub struct TcpProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept_task: tokio::task::JoinHandle<()>,
}

pub(super) struct ProxyState {
    cut: bool,
    /// Cancelled by `cut()`; every forwarded connection ends with it.
    connections: CancellationToken,
    /// Cancelled by `black_hole()`; forwarding stops, connections stay open.
    forwarding: CancellationToken,
}

impl TcpProxy {
    /// A proxy to the test PostgreSQL server.
    pub async fn to_postgres() -> TcpProxy {
        let admin = admin_database_url();
        let rest = admin
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(&admin);
        let authority = rest.split('/').next().unwrap_or(rest);
        let host_port = authority
            .rsplit_once('@')
            .map(|(_, hp)| hp)
            .unwrap_or(authority);
        let upstream = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        Self::start(upstream).await
    }

    /// A proxy to `upstream` ("host:port").
    pub async fn start(upstream: String) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(Mutex::new(ProxyState {
            cut: false,
            connections: CancellationToken::new(),
            forwarding: CancellationToken::new(),
        }));
        let accept_state = state.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let (token, stalled) = {
                    let state = accept_state.lock().expect("proxy lock");
                    if state.cut {
                        // Turned away: the connection closes at once.
                        drop(inbound);
                        continue;
                    }
                    (state.connections.clone(), state.forwarding.clone())
                };
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let mut inbound = inbound;
                    if stalled.is_cancelled() {
                        // Black-holed: accepted, and then nothing ever arrives.
                        token.cancelled().await;
                        return;
                    }
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = stalled.cancelled() => token.cancelled().await,
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                    drop(outbound);
                });
            }
        });
        TcpProxy {
            addr,
            state,
            accept_task,
        }
    }

    /// Closes every open connection and turns new ones away.
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy lock");
        state.cut = true;
        state.connections.cancel();
    }

    /// Stops forwarding without closing anything: open connections hang, new ones are accepted
    /// and hang too.
    pub fn black_hole(&self) {
        self.state.lock().expect("proxy lock").forwarding.cancel();
    }

    /// Forwards new connections again (black-holed ones are closed).
    pub fn restore(&self) {
        let mut state = self.state.lock().expect("proxy lock");
        state.cut = false;
        state.connections.cancel();
        state.connections = CancellationToken::new();
        state.forwarding = CancellationToken::new();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept_task.abort();
    }
}
