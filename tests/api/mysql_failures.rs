//! Onboarding that cannot pass, against private MariaDB instances, through the gRPC API: each
//! misconfiguration stops onboarding at the step that detects it, with status error and a message
//! naming the cause and the fix; fixing it and retrying (or updating the password) takes the server
//! to active.
//!
//! Every server registered here points at 127.0.0.1: a MariaDB this test started, or a port on
//! which nothing listens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::mariadb::*;
use crate::common::*;
use dbtrail_servers::proto::{self, OnboardingStatus, OnboardingStep, ServerStatus, StepStatus};
use tonic::Code;

/// Between two messages of a watch.
const NEXT: Duration = Duration::from_secs(20);

/// A server onboarding against a private MariaDB, settled.
struct Onboarded {
    app: TestApp,
    client: Client,
    id: String,
    status: OnboardingStatus,
}

/// Creates the user with exactly `grants` and a table to snapshot, registers a server logging in
/// with `password`, and waits until onboarding settles.
async fn onboard(mariadb: &MariaDb, grants: &[&str], password: &str) -> Onboarded {
    mariadb
        .exec(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.orders (id INT PRIMARY KEY, total DECIMAL(10,2))",
        ])
        .await;
    mariadb.create_user(USER, PASSWORD, grants).await;
    let app = mysql_app().await;
    let mut client = app.client();
    let server = register(
        &mut client,
        mariadb.server("orders-primary", USER, password),
    )
    .await;
    let status = wait_settled(&client, &server.server_id).await;
    Onboarded {
        app,
        client,
        id: server.server_id,
        status,
    }
}

/// Asserts that no index schema exists yet (nothing passed initializing).
async fn assert_no_index(onboarded: &Onboarded) {
    let state = index_state(&onboarded.app.db, &onboarded.id).await;
    assert!(
        state.all_index_schemas.is_empty(),
        "no index schema before initializing passes: {state:#?}"
    );
}

// ------------------------------------------------------------------------------------------------
// 2. One test for each failure
// ------------------------------------------------------------------------------------------------

#[test]
fn a_wrong_password_fails_waiting_for_agent_at_once() {
    block_on(async {
        let mariadb = MariaDb::start().await;
        let onboarded = onboard(&mariadb, &REPLICATION_GRANTS, "not-the-password").await;
        let status = &onboarded.status;
        let error = assert_failed_at(status, OnboardingStep::WaitingForAgent);
        assert_eq!(
            error,
            format!(
                "MySQL at 127.0.0.1:{} refused: Access denied for user '{USER}'@'127.0.0.1' \
                 (using password: YES) (error 1045)",
                mariadb.port
            ),
            "MySQL's own reason, at once"
        );
        assert_eq!(
            step(status, OnboardingStep::WaitingForAgent).attempts,
            1,
            "access denied is not retried: {status:#?}"
        );
        assert_server_agrees(&onboarded.client, status).await;
        assert_no_index(&onboarded).await;
    });
}

/// docs/mysql.md's user on a fresh MariaDB: mariadb-install-db's anonymous account for a more
/// specific host shadows 'bintrail'@'%', so the right password is refused. The step says so,
/// with both fixes; after the anonymous account is dropped, a retry reaches active.
#[test]
fn an_anonymous_account_shadowing_the_user_is_named_with_its_fix() {
    block_on(async {
        let mariadb = MariaDb::start().await;
        mariadb.exec(&["CREATE USER ''@'127.0.0.1'"]).await;
        let onboarded = onboard(&mariadb, &REPLICATION_GRANTS, PASSWORD).await;
        let error = assert_failed_at(&onboarded.status, OnboardingStep::WaitingForAgent);
        assert!(
            error.starts_with(&format!(
                "MySQL at 127.0.0.1:{} refused: Access denied for user '{USER}'@'127.0.0.1'",
                mariadb.port
            )),
            "{error}"
        );
        for part in [
            "an anonymous account lets anyone log in from here without a password",
            "''@'127.0.0.1' comes before 'bintrail'@'%'",
            "DROP USER IF EXISTS ''@'127.0.0.1'",
            "CREATE USER 'bintrail'@'127.0.0.1' IDENTIFIED BY '...'",
        ] {
            assert!(error.contains(part), "{part:?} not in {error}");
        }
        mariadb.exec(&["DROP USER ''@'127.0.0.1'"]).await;
        let mut client = onboarded.client.clone();
        retry_onboarding(&mut client, &onboarded.id).await;
        let status = wait_settled(&client, &onboarded.id).await;
        assert_active(&status);
    });
}

#[test]
fn an_unreachable_port_fails_waiting_for_agent_after_the_retry_budget() {
    block_on(async {
        // Nothing listens on this port of 127.0.0.1: every attempt is refused.
        let port = free_port();
        let app = mysql_app().await;
        let mut client = app.client();
        let mut input = direct_server("unreachable");
        input.port = i32::from(port);
        let server = register(&mut client, input).await;
        let id = server.server_id.clone();
        let mut watch = open_watch(&mut client, &id, Some(0), false)
            .await
            .expect("WatchOnboarding");
        let (messages, status) = watch_until_settled(&mut watch, &mut client, &id, NEXT).await;

        let error = assert_failed_at(&status, OnboardingStep::WaitingForAgent);
        let address = format!("127.0.0.1:{port}");
        assert!(
            error.starts_with(&format!("cannot reach MySQL at {address}: {UNREACHABLE}"))
                && error.ends_with(&format!("(gave up after {CONNECT_ATTEMPTS} attempts)")),
            "the error names the host and port, the cause and the budget: {error}"
        );
        let waiting = step(&status, OnboardingStep::WaitingForAgent);
        assert_eq!(
            waiting.attempts, CONNECT_ATTEMPTS,
            "attempts count every try, up to the configured budget: {status:#?}"
        );

        // Each retry was a new attempt, announced with its reason while the step was in progress.
        assert_retries_announced(
            &messages,
            OnboardingStep::WaitingForAgent,
            CONNECT_ATTEMPTS,
            |failed, message| {
                message.starts_with(&format!("cannot reach MySQL at {address}: "))
                    && message.ends_with(&format!(
                        "; attempt {failed} of {CONNECT_ATTEMPTS} failed, retrying"
                    ))
            },
        );
        // With backoff between attempts (500 ms, then 1 s).
        let started = waiting.started_at.expect("started_at");
        let completed = waiting.completed_at.expect("completed_at");
        let elapsed = (completed.seconds - started.seconds) as f64
            + f64::from(completed.nanos - started.nanos) / 1e9;
        assert!(
            elapsed >= 1.4,
            "the attempts were {elapsed} s apart in all: no backoff?"
        );
        assert_server_agrees(&client, &status).await;
        let state = index_state(&app.db, &id).await;
        assert!(state.all_index_schemas.is_empty(), "{state:#?}");
    });
}

#[test]
fn log_bin_off_fails_initializing() {
    block_on(async {
        let mariadb = MariaDb::options().without_binlog().start().await;
        assert_eq!(mariadb.global("log_bin").await, "OFF");
        let onboarded = onboard(&mariadb, &REPLICATION_GRANTS, PASSWORD).await;
        let status = &onboarded.status;
        let error = assert_failed_at(status, OnboardingStep::Initializing);
        assert_eq!(
            error,
            "log_bin is OFF; dbtrail needs the binary log: start the server with --log-bin \
             (log_bin in my.cnf) and restart it"
        );
        assert_eq!(step(status, OnboardingStep::WaitingForAgent).attempts, 1);
        assert_eq!(step(status, OnboardingStep::Initializing).attempts, 1);
        assert_server_agrees(&onboarded.client, status).await;
        assert_no_index(&onboarded).await;
    });
}

#[test]
fn binlog_format_statement_fails_initializing_with_the_fix() {
    block_on(async {
        let mariadb = MariaDb::options().binlog_format("STATEMENT").start().await;
        let onboarded = onboard(&mariadb, &REPLICATION_GRANTS, PASSWORD).await;
        let status = &onboarded.status;
        let error = assert_failed_at(status, OnboardingStep::Initializing);
        assert_eq!(
            error,
            "binlog_format is STATEMENT; dbtrail needs ROW: SET GLOBAL binlog_format = 'ROW' and \
             persist it in my.cnf"
        );
        assert_eq!(step(status, OnboardingStep::Initializing).attempts, 1);
        assert_server_agrees(&onboarded.client, status).await;
        assert_no_index(&onboarded).await;
    });
}

#[test]
fn binlog_row_image_minimal_fails_initializing_with_the_fix() {
    block_on(async {
        let mariadb = MariaDb::options().binlog_row_image("MINIMAL").start().await;
        let onboarded = onboard(&mariadb, &REPLICATION_GRANTS, PASSWORD).await;
        let status = &onboarded.status;
        let error = assert_failed_at(status, OnboardingStep::Initializing);
        assert_eq!(
            error,
            "binlog_row_image is MINIMAL; dbtrail needs FULL: SET GLOBAL binlog_row_image = 'FULL' \
             and persist it in my.cnf"
        );
        assert_eq!(step(status, OnboardingStep::Initializing).attempts, 1);
        assert_server_agrees(&onboarded.client, status).await;
        assert_no_index(&onboarded).await;
    });
}

#[test]
fn a_user_without_replication_slave_fails_initializing() {
    block_on(async {
        let mariadb = MariaDb::start().await;
        let onboarded = onboard(&mariadb, &["REPLICATION CLIENT", "SELECT"], PASSWORD).await;
        let status = &onboarded.status;
        let error = assert_failed_at(status, OnboardingStep::Initializing);
        assert_eq!(
            error,
            "the user lacks REPLICATION SLAVE (SHOW GRANTS shows none on *.*): \
             GRANT REPLICATION SLAVE ON *.* TO 'bintrail'@'%'"
        );
        assert_eq!(step(status, OnboardingStep::Initializing).attempts, 1);
        assert_server_agrees(&onboarded.client, status).await;
        assert_no_index(&onboarded).await;
    });
}

#[test]
fn a_user_without_select_fails_snapshotting() {
    block_on(async {
        let mariadb = MariaDb::start().await;
        let onboarded = onboard(
            &mariadb,
            &["REPLICATION SLAVE", "REPLICATION CLIENT"],
            PASSWORD,
        )
        .await;
        let status = &onboarded.status;
        let error = assert_failed_at(status, OnboardingStep::Snapshotting);
        assert_eq!(
            error,
            "SELECT is denied: the user has no SELECT privilege, so no table can be read: \
             GRANT SELECT ON *.* TO 'bintrail'@'%'"
        );
        assert_eq!(step(status, OnboardingStep::Snapshotting).attempts, 1);
        assert_server_agrees(&onboarded.client, status).await;
        // Initializing passed and created the index tables; no snapshot was stored.
        let state = index_state(&onboarded.app.db, &onboarded.id).await;
        assert_eq!(state.all_index_schemas, vec![state.schema.clone()]);
        assert!(state.snapshots.is_empty(), "{state:#?}");
        assert!(state.checkpoints.is_empty(), "{state:#?}");
    });
}

// ------------------------------------------------------------------------------------------------
// 3. Fix, then retry
// ------------------------------------------------------------------------------------------------

#[test]
fn after_set_global_binlog_format_row_retry_onboarding_reaches_active() {
    block_on(async {
        let mariadb = MariaDb::options().binlog_format("STATEMENT").start().await;
        let onboarded = onboard(&mariadb, &REPLICATION_GRANTS, PASSWORD).await;
        let mut client = onboarded.client.clone();
        let id = onboarded.id.clone();
        let failed = onboarded.status.clone();
        let error = assert_failed_at(&failed, OnboardingStep::Initializing);
        assert!(error.starts_with("binlog_format is STATEMENT"), "{error}");

        mariadb.exec(&["SET GLOBAL binlog_format = 'ROW'"]).await;
        let retried = retry_onboarding(&mut client, &id).await;
        // Resumes at the failed step, its attempts reset.
        assert_eq!(retried.server_status, ServerStatus::Pending as i32);
        assert_eq!(retried.error, None);
        assert_eq!(
            retried.current_step,
            Some(OnboardingStep::Initializing as i32)
        );
        let initializing = step(&retried, OnboardingStep::Initializing);
        assert_eq!(
            initializing.status,
            StepStatus::Pending as i32,
            "{retried:#?}"
        );
        assert_eq!(initializing.attempts, 0, "{retried:#?}");
        assert_eq!(initializing.error, None, "{retried:#?}");
        assert_eq!(retried.revision, failed.revision + 1);

        let status = wait_settled(&client, &id).await;
        assert_active(&status);
        assert_server_agrees(&client, &status).await;
        for earlier in [
            OnboardingStep::Provisioning,
            OnboardingStep::AwaitingFirewall,
            OnboardingStep::WaitingForAgent,
        ] {
            assert_eq!(
                step(&status, earlier),
                step(&failed, earlier),
                "{earlier:?} did not run again"
            );
        }
        for step_name in [
            OnboardingStep::Initializing,
            OnboardingStep::Snapshotting,
            OnboardingStep::Streaming,
        ] {
            assert_eq!(step(&status, step_name).attempts, 1, "{status:#?}");
        }
        let state = index_state(&onboarded.app.db, &id).await;
        assert_eq!(state.all_index_schemas, vec![state.schema.clone()]);
        assert_eq!(state.snapshots.len(), 1);
        assert_eq!(state.checkpoints.len(), 1);
    });
}

// ------------------------------------------------------------------------------------------------
// 4. Fix the password, then update
// ------------------------------------------------------------------------------------------------

#[test]
fn after_update_server_with_the_right_password_onboarding_reaches_active() {
    block_on(async {
        let mariadb = MariaDb::start().await;
        let onboarded = onboard(&mariadb, &REPLICATION_GRANTS, "not-the-password").await;
        let mut client = onboarded.client.clone();
        let id = onboarded.id.clone();
        let error = assert_failed_at(&onboarded.status, OnboardingStep::WaitingForAgent);
        assert!(error.contains("Access denied"), "{error}");

        let updated = update_server(
            &mut client,
            proto::Server {
                server_id: id.clone(),
                mysql_password: PASSWORD.to_owned(),
                ..Default::default()
            },
            &["mysql_password"],
        )
        .await;
        assert_eq!(updated.status, ServerStatus::Pending as i32);
        assert_eq!(updated.error, None);
        assert!(updated.has_mysql_password);
        assert!(
            updated.mysql_password.is_empty(),
            "the password is never returned"
        );

        let status = wait_settled(&client, &id).await;
        assert_active(&status);
        assert_server_agrees(&client, &status).await;
        assert_eq!(
            step(&status, OnboardingStep::WaitingForAgent).message,
            format!(
                "logged in to MariaDB {} at 127.0.0.1:{} as {USER}",
                mariadb.version, mariadb.port
            )
        );
        assert_eq!(step(&status, OnboardingStep::WaitingForAgent).attempts, 1);
        let state = index_state(&onboarded.app.db, &id).await;
        assert_eq!(state.all_index_schemas, vec![state.schema.clone()]);
        assert_eq!(state.snapshots.len(), 1);
        assert_eq!(state.checkpoints.len(), 1);
    });
}

/// Without --allow-loopback-targets, a tenant cannot point the agent at instance metadata, the
/// replica itself or its networks, however the address is spelt: an IP literal, or a name that
/// resolves to such an address, is refused by RegisterServer and UpdateServer (naming the address
/// and the way out), and a name is checked again at waiting_for_agent once resolved, before any
/// connection. A direct server's private address is refused naming vpn and ssh_tunnel.
#[test]
fn denied_targets_are_refused_at_registration_or_after_resolution() {
    block_on(async {
        let mariadb = MariaDb::start().await;
        let app = TestApp::start_with(ReplicaOptions {
            allow_loopback_targets: false,
            ..mysql_replica_options()
        })
        .await;
        let mut client = app.client();
        let own = dbtrail_servers::source::connection::interfaces::own_networks()
            .into_iter()
            .map(|range| range.address())
            .find(|address| !address.is_loopback())
            .expect("this host has an address besides loopback");
        let refused = |status: &tonic::Status, field: &str, host: &str| {
            assert_eq!(status.code(), Code::InvalidArgument, "{host}: {status:?}");
            assert_bad_request(status, &[field]);
            assert!(
                status.message().contains(&format!("{host} is {DENIED}")),
                "{host}: {status:?}"
            );
        };
        let literals = [
            "169.254.169.254".to_owned(),
            "fd00:ec2::254".to_owned(),
            "100.100.100.200".to_owned(),
            "::ffff:127.0.0.1".to_owned(),
            "127.0.0.1".to_owned(),
            own.to_string(),
        ];
        for (index, host) in literals.iter().enumerate() {
            // A VPN may reach private ranges, but never these.
            let mut input = direct_server(&format!("denied-{index}"));
            input.host = host.clone();
            input.connection_method = proto::ConnectionMethod::Vpn as i32;
            let status = register_error(&mut client, input).await;
            refused(&status, "server.host", host);
            // Nor may a jumphost be there.
            let mut tunnelled = ssh_server(&format!("denied-jumphost-{index}"));
            tunnelled.ssh_tunnel.as_mut().expect("a tunnel").host = host.clone();
            let status = register_error(&mut client, tunnelled).await;
            refused(&status, "server.ssh_tunnel.host", host);
        }
        // A private address is for VPN and SSH tunnel servers only, and the refusal says so.
        let private_refused = |status: &tonic::Status, field: &str, host: &str| {
            assert_bad_request(status, &[field]);
            assert!(
                status
                    .message()
                    .contains(&format!("{host} is {PRIVATE_FOR_DIRECT}")),
                "{host}: {status:?}"
            );
        };
        let mut private = direct_server("private-direct");
        private.host = "10.20.30.40".to_owned();
        let status = register_error(&mut client, private).await;
        private_refused(&status, "server.host", "10.20.30.40");
        // The agent connects to a jumphost itself: it must be where a direct server could be, while
        // the MySQL host behind it may be private.
        let mut private_jumphost = ssh_server("private-jumphost");
        private_jumphost.ssh_tunnel.as_mut().expect("a tunnel").host = "10.20.30.41".to_owned();
        let status = register_error(&mut client, private_jumphost).await;
        private_refused(&status, "server.ssh_tunnel.host", "10.20.30.41");
        let mut behind = ssh_server("private-behind-public-jumphost");
        behind.host = "10.20.30.42".to_owned();
        behind.ssh_tunnel.as_mut().expect("a tunnel").host = "203.0.113.10".to_owned();
        register(&mut client, behind).await;

        // A name that resolves to a refused address is refused at registration, naming the
        // address, and so is an update to it.
        let named_refusal = |status: &tonic::Status, field: &str, host: &str| {
            assert_bad_request(status, &[field]);
            let message = status.message();
            assert!(
                message.contains(&format!("{host} resolves to ")) && message.ends_with(DENIED),
                "{host}: {status:?}"
            );
        };
        let mut input = direct_server("named-loopback");
        input.host = "localhost".to_owned();
        input.port = i32::from(mariadb.port);
        let status = register_error(&mut client, input.clone()).await;
        named_refusal(&status, "server.host", "localhost");
        let mut tunnelled = ssh_server("named-loopback-jumphost");
        tunnelled.ssh_tunnel.as_mut().expect("a tunnel").host = "localhost".to_owned();
        let status = register_error(&mut client, tunnelled).await;
        named_refusal(&status, "server.ssh_tunnel.host", "localhost");

        // A name is checked again where it is resolved to connect (it may resolve elsewhere by
        // then): a tunnelled server whose MySQL host is `localhost` behind the jumphost, moved
        // to direct without naming the host again, fails at waiting_for_agent.
        let mut behind_loopback = ssh_server("loopback-behind-jumphost");
        behind_loopback.host = "localhost".to_owned();
        behind_loopback.port = i32::from(mariadb.port);
        behind_loopback.ssh_tunnel.as_mut().expect("a tunnel").host = "203.0.113.11".to_owned();
        let server = register(&mut client, behind_loopback).await;
        let direct = proto::Server {
            server_id: server.server_id.clone(),
            connection_method: proto::ConnectionMethod::Direct as i32,
            ..Default::default()
        };
        update_server(&mut client, direct, &["connection_method", "ssh_tunnel"]).await;
        let status = wait_settled(&client, &server.server_id).await;
        let error = assert_failed_at(&status, OnboardingStep::WaitingForAgent);
        assert!(
            error.starts_with("MySQL host localhost resolves to ") && error.ends_with(DENIED),
            "{error}"
        );
        assert_eq!(step(&status, OnboardingStep::WaitingForAgent).attempts, 1);

        // UpdateServer applies the same rules.
        let mut moved = server.clone();
        moved.host = "169.254.169.254".to_owned();
        moved.etag = String::new();
        let status = expect_err(
            client
                .update_server(update_request(moved.clone(), &["host"]))
                .await,
        );
        refused(&status, "server.host", "169.254.169.254");
        moved.host = "localhost".to_owned();
        let status = expect_err(client.update_server(update_request(moved, &["host"])).await);
        named_refusal(&status, "server.host", "localhost");
    });
}

/// A closed port, a host that never answers and a port that speaks another protocol are told
/// apart only in the service's log: the tenant sees one reason, so the agent is no port scanner.
#[test]
fn refused_silent_and_foreign_ports_read_the_same() {
    block_on(async {
        let mariadb = MariaDb::start().await;
        let app = TestApp::start_with(mysql_replica_options()).await;
        let mut client = app.client();
        let closed = free_port();
        let silent = TcpProxy::start(format!("127.0.0.1:{}", mariadb.port)).await;
        silent.black_hole();
        let foreign = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let foreign_port = foreign.local_addr().expect("address").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = foreign.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let mut reasons = Vec::new();
        for (name, port) in [
            ("closed", closed),
            ("silent", silent.addr.port()),
            ("foreign", foreign_port),
        ] {
            let mut input = direct_server(name);
            input.port = i32::from(port);
            let server = register(&mut client, input).await;
            let status = wait_for_onboarding(
                &client,
                &server.server_id,
                "the first failed attempt",
                Duration::from_secs(20),
                |status| {
                    step(status, OnboardingStep::WaitingForAgent)
                        .message
                        .contains("attempt 1 of")
                },
            )
            .await;
            let message = step(&status, OnboardingStep::WaitingForAgent)
                .message
                .clone();
            reasons.push(message.replace(&format!("127.0.0.1:{port}"), "<address>"));
        }
        assert_eq!(
            reasons[0],
            format!(
                "cannot reach MySQL at <address>: {UNREACHABLE}; attempt 1 of {CONNECT_ATTEMPTS} \
                 failed, retrying"
            )
        );
        assert!(
            reasons.iter().all(|reason| *reason == reasons[0]),
            "{reasons:#?}"
        );
    });
}

/// A proxy to `upstream` that forwards until the client sends a packet containing `trigger`,
/// then forwards nothing more in either direction and closes nothing: a MySQL that accepted the
/// login and then stopped answering. (Plain text: the server it fronts is reached with TLS off.)
struct StallingProxy {
    address: std::net::SocketAddr,
    /// Client connections open now (one ends when the client closes it).
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl StallingProxy {
    fn port(&self) -> u16 {
        self.address.port()
    }

    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// In front of `mariadb`: logs the agent in, then swallows its first query after login.
    async fn after_login(mariadb: &MariaDb) -> StallingProxy {
        stalling_proxy(format!("127.0.0.1:{}", mariadb.port), b"SHOW GRANTS").await
    }

    /// A direct server reaching `mariadb` through this proxy, in plain text (so the proxy can
    /// read the query it stalls on).
    fn server(&self, mariadb: &MariaDb, name: &str) -> proto::Server {
        proto::Server {
            port: i32::from(self.port()),
            stream_options: Some(proto::StreamOptions {
                ssl_mode: proto::SslMode::Disabled as i32,
                ..Default::default()
            }),
            ..mariadb.server(name, USER, PASSWORD)
        }
    }
}

async fn stalling_proxy(upstream: String, trigger: &'static [u8]) -> StallingProxy {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let address = listener.local_addr().expect("the proxy's address");
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = open.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let open = counter.clone();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                open.fetch_add(1, Ordering::SeqCst);
                let (mut client_read, mut client_write) = inbound.into_split();
                let (mut server_read, mut server_write) = outbound.into_split();
                let stalled = tokio_util::sync::CancellationToken::new();
                let to_client = {
                    let stalled = stalled.clone();
                    async move {
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let read = tokio::select! {
                                read = server_read.read(&mut buffer) => read,
                                // Dropping the write half would send a FIN: hold it.
                                () = stalled.cancelled() => std::future::pending().await,
                            };
                            match read {
                                Ok(0) | Err(_) => return,
                                Ok(read) => {
                                    if client_write.write_all(&buffer[..read]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                };
                let to_server = async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        match client_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) if stalled.is_cancelled() => {
                                // Swallowed: nothing answers any more.
                                let _ = read;
                            }
                            Ok(read) => {
                                let chunk = &buffer[..read];
                                if chunk.windows(trigger.len()).any(|window| window == trigger) {
                                    stalled.cancel();
                                    continue;
                                }
                                if server_write.write_all(chunk).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                };
                // Until the client closes its side (or the server, before the stall).
                tokio::select! {
                    () = to_client => {}
                    () = to_server => {}
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    StallingProxy { address, open }
}

/// A MariaDB behind a proxy that stalls after login, and a replica started with `args`.
async fn stalling_after_login(args: &[&str]) -> (MariaDb, StallingProxy, TestApp) {
    let mariadb = MariaDb::start().await;
    mariadb
        .create_user(USER, PASSWORD, &REPLICATION_GRANTS)
        .await;
    let proxy = StallingProxy::after_login(&mariadb).await;
    let mut options = mysql_replica_options();
    options
        .extra_args
        .extend(args.iter().map(|arg| arg.to_string()));
    let app = TestApp::start_with(options).await;
    (mariadb, proxy, app)
}

/// A MySQL that logs the agent in and then never answers its query: the step fails within its
/// deadline (--step-timeout) after its attempts, naming what stalled, instead of holding a runner
/// slot for good.
#[test]
fn a_mysql_that_stops_answering_after_login_fails_the_step_within_its_deadline() {
    block_on(async {
        let (mariadb, proxy, app) = stalling_after_login(&["--step-timeout", "2s"]).await;
        let mut client = app.client();
        let server = proxy.server(&mariadb, "stalls");
        let started = std::time::Instant::now();
        let registered = register(&mut client, server).await;
        let status = wait_settled(&client, &registered.server_id).await;
        let took = started.elapsed();
        assert_eq!(
            status.server_status,
            ServerStatus::Error as i32,
            "{status:?}"
        );
        assert_eq!(
            status.current_step,
            Some(OnboardingStep::Initializing as i32),
            "the login passed; the first query after it stalled: {status:?}"
        );
        let error = status.error.clone().unwrap_or_default();
        assert!(
            error.contains("initializing did not finish within 2s")
                && error.contains(&format!("waiting for MySQL at 127.0.0.1:{}", proxy.port()))
                && error.contains(&format!("gave up after {CONNECT_ATTEMPTS} attempts")),
            "the error names the deadline and what stalled: {error}"
        );
        // A few attempts of 2 s and their backoffs, not forever.
        assert!(took < Duration::from_secs(30), "took {took:?}");
        app.shutdown().await;
    });
}

/// The same stall under a per-query timeout shorter than the step's deadline: the step fails
/// naming the query MySQL left unanswered.
#[test]
fn a_query_left_unanswered_fails_within_the_query_timeout_naming_it() {
    block_on(async {
        let (mariadb, proxy, app) =
            stalling_after_login(&["--mysql-query-timeout", "1s", "--step-timeout", "1m"]).await;
        let mut client = app.client();
        let registered = register(&mut client, proxy.server(&mariadb, "unanswered")).await;
        let status = wait_settled(&client, &registered.server_id).await;
        let error = assert_failed_at(&status, OnboardingStep::Initializing);
        assert!(
            error.contains(&format!(
                "MySQL at 127.0.0.1:{} did not answer SHOW GRANTS within 1s",
                proxy.port()
            )) && error.contains(&format!("gave up after {CONNECT_ATTEMPTS} attempts")),
            "{error}"
        );
        app.shutdown().await;
    });
}

/// How many servers whose names start with `prefix` hold a live onboarding lease: their runners.
async fn runners_of(db: &TestDatabase, prefix: &str) -> i64 {
    db.connect()
        .await
        .query_one(
            "SELECT count(*) FROM servers WHERE starts_with(name, $1) \
             AND lease_owner IS NOT NULL AND lease_expires_at > now()",
            &[&prefix],
        )
        .await
        .expect("count runners")
        .get(0)
}

/// Waits until `prefix`'s servers hold exactly `count` runners.
async fn wait_runners(db: &TestDatabase, prefix: &str, count: i64) {
    wait_until(
        &format!("{count} runners for {prefix}*"),
        Duration::from_secs(30),
        || async { runners_of(db, prefix).await == count },
    )
    .await;
}

/// Of `ids`, how many servers show a step in progress, and how many a step that waits for a
/// runner (pending, saying so: its runner yielded the slot to another tenant).
async fn steps_waiting_for_a_runner(client: &mut Client, ids: &[String]) -> (usize, usize) {
    let (mut running, mut waiting) = (0, 0);
    for id in ids {
        let status = client
            .get_onboarding_status(proto::GetOnboardingStatusRequest {
                server_id: id.clone(),
            })
            .await
            .expect("GetOnboardingStatus")
            .into_inner();
        for step in &status.steps {
            if step.status == StepStatus::InProgress as i32 {
                running += 1;
            } else if step.status == StepStatus::Pending as i32
                && step.message.starts_with("waiting for a runner")
            {
                waiting += 1;
            }
        }
    }
    (running, waiting)
}

/// Runner slots are shared: a tenant whose 70 servers all stall after login leaves a quarter of
/// a replica's 64 runner slots (its share, by default) to the others, and another tenant's server
/// onboards at once; once every slot is taken, a tenant below its share makes one above it yield.
#[test]
fn one_tenants_stalling_servers_do_not_delay_another_tenants_onboarding() {
    block_on(async {
        let mariadb = onboardable_mariadb().await;
        let proxy = StallingProxy::after_login(&mariadb).await;
        let mut options = mysql_replica_options();
        options
            .extra_args
            .extend(["--step-timeout".to_owned(), "5m".to_owned()]);
        let app = TestApp::start_with(options).await;
        let mut hostile = app.client();
        let mut hostile_ids = Vec::new();
        for index in 0..70 {
            let server = proxy.server(&mariadb, &format!("stalls-{index}"));
            hostile_ids.push(register(&mut hostile, server).await.server_id);
        }
        // The hostile tenant takes all but a share's worth (16) of the 64 slots, and stalls there.
        wait_runners(&app.db, "stalls-", 48).await;

        let other = app.db.create_tenant("patient", None).await;
        let mut client = app.client_with_key(&other.key);
        let started = std::time::Instant::now();
        let server = register(&mut client, mariadb.server("onboards", USER, PASSWORD)).await;
        assert_active(&wait_settled(&client, &server.server_id).await);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "another tenant's server waited {:?} for a runner",
            started.elapsed()
        );
        assert_eq!(runners_of(&app.db, "stalls-").await, 48);

        // A third tenant's stalling servers take the 16 slots left (its share): every slot is
        // taken. A fourth tenant's server, below its share, makes the hostile tenant (above its
        // share) yield its youngest runner, and onboards.
        let crowded = app.db.create_tenant("crowded", None).await;
        let mut crowded_client = app.client_with_key(&crowded.key);
        for index in 0..20 {
            let server = proxy.server(&mariadb, &format!("crowded-{index}"));
            register(&mut crowded_client, server).await;
        }
        wait_runners(&app.db, "crowded-", 16).await;
        let late = app.db.create_tenant("late", None).await;
        let mut late_client = app.client_with_key(&late.key);
        let server = register(&mut late_client, mariadb.server("late", USER, PASSWORD)).await;
        assert_active(&wait_settled(&late_client, &server.server_id).await);
        assert_eq!(
            runners_of(&app.db, "stalls-").await,
            47,
            "one hostile runner yielded its slot"
        );
        let waiting = steps_waiting_for_a_runner(&mut hostile, &hostile_ids).await;
        assert_eq!(
            waiting,
            (47, 1),
            "(steps in progress, steps waiting for a runner)"
        );
        assert_eq!(
            runners_of(&app.db, "crowded-").await,
            16,
            "within its share"
        );
        app.shutdown().await;
    });
}

/// A runner whose lease renewals fail (its PostgreSQL out of reach, not taken over) stops before
/// its lease may expire: its step is cancelled and its MySQL connection closed, so a runner of
/// another replica that claims the server then never works on it beside this one.
#[test]
fn a_runner_that_cannot_renew_its_lease_lets_go_of_mysql_before_the_lease_expires() {
    block_on(async {
        let mariadb = MariaDb::start().await;
        mariadb
            .create_user(USER, PASSWORD, &REPLICATION_GRANTS)
            .await;
        let mysql = StallingProxy::after_login(&mariadb).await;
        let postgres = TcpProxy::to_postgres().await;
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let mut options = mysql_replica_options();
        options.database_url = Some(with_host_port(&db.url, postgres.addr));
        options
            .extra_args
            .extend(["--step-timeout".to_owned(), "5m".to_owned()]);
        let lease_ttl = Duration::from_secs(2);
        assert_eq!(options.lease_ttl, "2s");
        let app = TestApp::start_on(db.clone(), tenant, options).await;
        let mut client = app.client();
        let server = mysql.server(&mariadb, "renewals-fail");
        let id = register(&mut client, server).await.server_id;
        wait_until(
            "the runner to hold a stalled MySQL connection in initializing",
            Duration::from_secs(20),
            || {
                let mut client = client.clone();
                let id = id.clone();
                let open = mysql.open();
                async move {
                    open == 1
                        && onboarding_status(&mut client, &id).await.current_step
                            == Some(OnboardingStep::Initializing as i32)
                }
            },
        )
        .await;
        // A few renewals succeed; then the database goes silent for this replica.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(mysql.open(), 1, "the step still waits on MySQL");
        let cut = Instant::now();
        postgres.black_hole();
        wait_until(
            "the runner to close its MySQL connection",
            lease_ttl * 3,
            || async { mysql.open() == 0 },
        )
        .await;
        assert!(
            cut.elapsed() < lease_ttl,
            "the runner let go {:?} after its last chance to renew; its lease (TTL {lease_ttl:?}) \
             may have been another replica's by then",
            cut.elapsed()
        );
        postgres.restore();
        app.shutdown().await;
    });
}
