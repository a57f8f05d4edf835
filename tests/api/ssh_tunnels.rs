//! Onboarding through an SSH jumphost, for real: a private OpenSSH server on loopback
//! (`common::sshd`) forwards to a private MariaDB (`common::mariadb`), and every MySQL step of the
//! service runs through the tunnel it opens.
//!
//! 1. the whole flow: awaiting_firewall with the outbound IP, ConfirmFirewall, the four MySQL
//!    steps watched, active, the host key recorded;
//! 2. key types: Ed25519, RSA (PEM and OpenSSH), ECDSA (OpenSSH and PEM), and an RSA host key;
//! 3. a changed host key fails waiting_for_agent with both fingerprints (UpdateServer and
//!    RetryOnboarding), and pinning the new one with UpdateServer passes;
//! 4. a wrong pinned fingerprint fails with both fingerprints, the right one passes;
//! 5. a key the jumphost refuses fails at once;
//! 6. a jumphost nobody listens on is retried, then fails with the firewall hint;
//! 7. a jumphost that cannot reach MySQL says so;
//! 8. decommissioning mid-onboarding closes the tunnel, as the sshd's own connections show;
//!
//! and validation at the edge: encrypted and garbage keys, SSH ports out of range, and moving the
//! jumphost forgetting the recorded host key.
//!
//! Every host here is 127.0.0.1 (or `localhost`): the jumphost, and MySQL as the jumphost sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::mariadb::*;
use crate::common::sshd::*;
use crate::common::*;
use dbtrail_servers::proto::{
    self, ConfirmFirewallRequest, DecommissionServerRequest, ListServersRequest, OnboardingStatus,
    OnboardingStep, ServerStatus, StepStatus,
};
use tokio::io::AsyncReadExt;
use tonic::Code;

/// Between two messages of a watch.
const NEXT: Duration = Duration::from_secs(20);
/// How long a tunnel may take to close once its step ended or its server went away.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

/// A private MariaDB with the replication user and a table to snapshot.
async fn replication_source() -> MariaDb {
    mariadb_with(&[
        "CREATE DATABASE shop",
        "CREATE TABLE shop.orders (id INT PRIMARY KEY, total DECIMAL(10,2))",
        "INSERT INTO shop.orders VALUES (1, 9.99)",
    ])
    .await
}

/// An ssh_tunnel server reaching MySQL at 127.0.0.1:`mysql_port` as the jumphost `sshd` sees it.
fn tunneled(name: &str, sshd: &Sshd, mysql_port: u16) -> proto::Server {
    proto::Server {
        host: "127.0.0.1".to_owned(),
        port: i32::from(mysql_port),
        mysql_user: USER.to_owned(),
        mysql_password: PASSWORD.to_owned(),
        ssh_tunnel: Some(sshd.tunnel()),
        ..ssh_server(name)
    }
}

/// Waits until `server_id` waits for ConfirmFirewall, and checks what it asks for: the outbound
/// IP, on the jumphost's SSH port, with nothing after it started.
async fn wait_awaiting_firewall(
    client: &Client,
    server_id: &str,
    ssh_port: u16,
) -> OnboardingStatus {
    let status = awaiting_firewall(client, server_id).await;
    assert_eq!(
        status.server_status,
        ServerStatus::Pending as i32,
        "{status:#?}"
    );
    assert_eq!(
        status.agent_outbound_ip.as_deref(),
        Some(AGENT_OUTBOUND_IP),
        "{status:#?}"
    );
    assert_eq!(
        step(&status, OnboardingStep::AwaitingFirewall).message,
        format!(
            "allow {AGENT_OUTBOUND_IP} on TCP port {ssh_port} of the jumphost, then call \
             ConfirmFirewall"
        )
    );
    for later in &STEPS[2..] {
        assert_eq!(
            step_status(&status, *later),
            StepStatus::Pending,
            "{later:?} started before the firewall was confirmed: {status:#?}"
        );
    }
    status
}

/// ConfirmFirewall, which answers `{status: "confirmed"}`.
async fn confirm_firewall(client: &mut Client, server_id: &str) {
    let response = client
        .confirm_firewall(ConfirmFirewallRequest {
            server_id: server_id.to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("ConfirmFirewall {server_id}: {status:?}"))
        .into_inner();
    assert_eq!(response.status, "confirmed");
}

/// Registers `server`, waits at awaiting_firewall, confirms and waits until onboarding settles.
async fn register_confirm_settle(
    client: &mut Client,
    server: proto::Server,
) -> (String, OnboardingStatus) {
    let ssh_port = server.ssh_tunnel.as_ref().map_or(22, |tunnel| {
        u16::try_from(tunnel.port).expect("an SSH port")
    });
    let id = register(client, server).await.server_id;
    wait_awaiting_firewall(client, &id, ssh_port).await;
    confirm_firewall(client, &id).await;
    let status = wait_settled(client, &id).await;
    (id, status)
}

/// A change of `server_id`'s ssh_tunnel to the fields set in `tunnel`.
fn tunnel_change(server_id: &str, tunnel: proto::SshTunnel) -> proto::Server {
    proto::Server {
        server_id: server_id.to_owned(),
        ssh_tunnel: Some(tunnel),
        ..Default::default()
    }
}

/// The host key fingerprint GetServer shows ("" when none is recorded or pinned).
async fn recorded_fingerprint(client: &mut Client, server_id: &str) -> String {
    let server = get_server(client, server_id).await;
    let tunnel = server
        .ssh_tunnel
        .unwrap_or_else(|| panic!("an ssh_tunnel server shows its ssh_tunnel: {server_id}"));
    assert!(tunnel.has_private_key, "{tunnel:?}");
    assert!(tunnel.private_key.is_empty(), "the key is never returned");
    tunnel.host_key_fingerprint
}

/// The waiting_for_agent message of a login through `sshd`.
#[track_caller]
fn assert_logged_in_through(status: &OnboardingStatus, mariadb: &MariaDb, sshd: &Sshd) {
    assert_eq!(
        step(status, OnboardingStep::WaitingForAgent).message,
        format!(
            "logged in to MariaDB {} at 127.0.0.1:{} as {USER} through the SSH jumphost \
             127.0.0.1:{}",
            mariadb.version, mariadb.port, sshd.port
        ),
        "waiting_for_agent names the server and the jumphost: {status:#?}"
    );
}

/// Waits until the sshd has no established connection and no session process left.
async fn assert_tunnels_close(sshd: &Sshd, what: &str) {
    assert_tunnels_left(sshd, what, 0).await;
}

/// Waits until onboarding's tunnels are closed and only the live binlog stream's one is open.
async fn assert_only_the_stream_tunnel(sshd: &Sshd, what: &str) {
    assert_tunnels_left(sshd, what, 1).await;
}

/// Waits until the sshd has `left` established connections and session processes.
async fn assert_tunnels_left(sshd: &Sshd, what: &str, left: usize) {
    let started = Instant::now();
    loop {
        let (connections, sessions) = (sshd.established_connections(), sshd.session_processes());
        if connections == left && sessions == left {
            return;
        }
        if started.elapsed() > CLOSE_TIMEOUT {
            panic!(
                "{what}: the sshd still has {connections} established connection(s) and \
                 {sessions} session process(es) after {CLOSE_TIMEOUT:?}\n{}",
                sshd.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole flow through `sshd` with its client key: registered, confirmed, active, host key
/// recorded, a login per MySQL step, and every tunnel closed after.
async fn onboard_through(sshd: &Sshd) {
    let mariadb = replication_source().await;
    let app = mysql_app().await;
    let mut client = app.client();
    let (id, status) = register_confirm_settle(
        &mut client,
        tunneled("through-jumphost", sshd, mariadb.port),
    )
    .await;
    assert_active(&status);
    assert_logged_in_through(&status, &mariadb, sshd);
    assert_eq!(
        recorded_fingerprint(&mut client, &id).await,
        sshd.host_key_fingerprint()
    );
    assert!(
        sshd.accepted_logins() >= 4,
        "waiting_for_agent, initializing, snapshotting and streaming each log in through the \
         jumphost; the sshd saw {} logins:\n{}",
        sshd.accepted_logins(),
        sshd.log()
    );
    assert_only_the_stream_tunnel(sshd, "after onboarding").await;
    let state = index_state(&app.db, &id).await;
    assert_eq!(state.checkpoints.len(), 1, "{state:#?}");
}

/// Asserts that nothing of `key` shows in `status` (message, details, debug form).
#[track_caller]
fn assert_key_not_echoed(status: &tonic::Status, key: &str) {
    let haystack = format!(
        "{}\n{}\n{status:?}",
        status.message(),
        String::from_utf8_lossy(status.details())
    );
    assert!(
        !haystack.contains("PRIVATE KEY"),
        "the error echoes the key's armour: {haystack}"
    );
    for line in key
        .lines()
        .map(str::trim)
        .filter(|line| line.len() >= 16 && !line.starts_with("-----") && !line.contains(':'))
    {
        assert!(
            !haystack.contains(line),
            "the error echoes a line of the key ({line}): {haystack}"
        );
    }
}

/// The BadRequest description of `field` in `status`.
#[track_caller]
fn violation(status: &tonic::Status, field: &str) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"))
        .field_violations
        .iter()
        .find(|violation| violation.field == field)
        .unwrap_or_else(|| panic!("no violation of {field} in {status:?}"))
        .description
        .clone()
}

async fn list_count(client: &mut Client) -> usize {
    client
        .list_servers(ListServersRequest::default())
        .await
        .expect("ListServers")
        .into_inner()
        .servers
        .len()
}

// ------------------------------------------------------------------------------------------------
// 1. The whole flow
// ------------------------------------------------------------------------------------------------

#[test]
fn a_server_behind_a_jumphost_goes_from_awaiting_firewall_to_active_through_the_tunnel() {
    block_on(async {
        let mariadb = replication_source().await;
        let sshd = Sshd::start().await;
        let app = mysql_app().await;
        let mut client = app.client();

        let registered = register(
            &mut client,
            tunneled("behind-jumphost", &sshd, mariadb.port),
        )
        .await;
        let id = registered.server_id.clone();
        let tunnel = registered.ssh_tunnel.clone().expect("ssh_tunnel is shown");
        assert_eq!(tunnel.host, "127.0.0.1");
        assert_eq!(tunnel.port, i32::from(sshd.port));
        assert_eq!(tunnel.user, SSH_USER);
        assert!(
            tunnel.has_private_key && tunnel.private_key.is_empty(),
            "{tunnel:?}"
        );
        assert_eq!(
            tunnel.host_key_fingerprint, "",
            "nothing is recorded before a connection"
        );

        // It stops at awaiting_firewall with the agent's outbound IP, and nothing connects yet.
        let waiting = wait_awaiting_firewall(&client, &id, sshd.port).await;
        assert_outbound_ip_invariant(&waiting);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let still = onboarding_status(&mut client, &id).await;
        assert_eq!(still.revision, waiting.revision, "it waits: {still:#?}");
        assert_eq!(sshd.accepted_logins(), 0, "{}", sshd.log());
        assert_eq!(sshd.established_connections(), 0);

        // Watched from the confirmation on.
        let mut watch = open_watch(&mut client, &id, Some(waiting.revision), false)
            .await
            .expect("WatchOnboarding");
        confirm_firewall(&mut client, &id).await;
        let (messages, last) = watch_until_settled(&mut watch, &mut client, &id, NEXT).await;
        assert!(
            matches!(watch.next(Duration::from_secs(5)).await, WatchEvent::Ended),
            "a watch without follow ends after the active message"
        );
        assert_eq!(messages[0].revision, waiting.revision + 1, "{messages:#?}");
        for message in &messages {
            assert_six_steps_in_order(message);
            assert_outbound_ip_invariant(message);
            assert_eq!(message.error, None, "{message:#?}");
        }
        // The current step moves waiting_for_agent → initializing → snapshotting → streaming, then
        // there is none: active.
        let mut current: Vec<Option<i32>> = messages
            .iter()
            .map(|message| message.current_step)
            .collect();
        current.dedup();
        assert_eq!(
            current,
            vec![
                Some(OnboardingStep::WaitingForAgent as i32),
                Some(OnboardingStep::Initializing as i32),
                Some(OnboardingStep::Snapshotting as i32),
                Some(OnboardingStep::Streaming as i32),
                None
            ],
            "{}",
            describe_history(&messages)
        );
        // Each MySQL step was seen in progress and then completed.
        for which in &STEPS[2..] {
            let in_progress = messages
                .iter()
                .position(|message| step_status(message, *which) == StepStatus::InProgress)
                .unwrap_or_else(|| {
                    panic!(
                        "{which:?} never seen in progress: {}",
                        describe_history(&messages)
                    )
                });
            let completed = messages
                .iter()
                .position(|message| step_status(message, *which) == StepStatus::Completed)
                .unwrap_or_else(|| panic!("{which:?} never seen completed"));
            assert!(in_progress < completed, "{}", describe_history(&messages));
        }
        assert_eq!(
            step(&messages[0], OnboardingStep::AwaitingFirewall).message,
            "firewall confirmed by the customer"
        );

        assert_active(&last);
        for progress in &last.steps {
            assert_eq!(progress.attempts, 1, "a clean run: {last:#?}");
        }
        assert_server_agrees(&client, &last).await;
        // waiting_for_agent says it went through the jumphost.
        assert_logged_in_through(&last, &mariadb, &sshd);
        assert_eq!(
            step(&last, OnboardingStep::Snapshotting).message,
            "snapshot of 1 schema and 1 table"
        );

        // The host key is recorded: the sshd's own, as ssh-keygen computes it.
        let server = get_server(&mut client, &id).await;
        assert_eq!(server.status, ServerStatus::Active as i32);
        assert_eq!(
            server.ssh_tunnel.expect("ssh_tunnel").host_key_fingerprint,
            sshd.host_key_fingerprint()
        );

        // The sshd saw the logins (one per MySQL step), and every tunnel is closed now.
        assert!(
            sshd.accepted_logins() >= 4,
            "each MySQL step logs in through the jumphost; the sshd saw {}:\n{}",
            sshd.accepted_logins(),
            sshd.log()
        );
        assert!(
            sshd.log()
                .contains(&format!("Accepted publickey for {SSH_USER} from 127.0.0.1")),
            "{}",
            sshd.log()
        );
        assert_only_the_stream_tunnel(&sshd, "after onboarding").await;

        // What the steps wrote in PostgreSQL came through the tunnel.
        let state = index_state(&app.db, &id).await;
        assert_eq!(state.snapshots.len(), 1, "{state:#?}");
        let master = mariadb.master_status().await.expect("the binlog is on");
        assert_eq!(state.checkpoints.len(), 1, "{state:#?}");
        assert_eq!(state.checkpoints[0].binlog_file, master.file);
        assert_eq!(state.checkpoints[0].binlog_position as u64, master.position);
    });
}

// ------------------------------------------------------------------------------------------------
// 2. Key types
// ------------------------------------------------------------------------------------------------

/// The whole flow with a client key of type `key`, which `ssh-keygen` writes in `armour` (checked
/// where given).
async fn onboard_with_client_key(key: KeyType, armour: Option<&str>) {
    let sshd = Sshd::options().client_key(key).start().await;
    if let Some(armour) = armour {
        assert!(
            sshd.client.private_key.starts_with(armour),
            "ssh-keygen writes a {key:?} key as {armour}"
        );
    }
    onboard_through(&sshd).await;
}

const OPENSSH: Option<&str> = Some("-----BEGIN OPENSSH PRIVATE KEY-----");

#[test]
fn an_ed25519_key_onboards_through_the_jumphost() {
    block_on(onboard_with_client_key(KeyType::Ed25519, OPENSSH));
}

/// `ssh-keygen -m PEM` writes PKCS#1.
#[test]
fn an_rsa_pem_key_onboards_through_the_jumphost() {
    let pkcs1 = Some("-----BEGIN RSA PRIVATE KEY-----");
    block_on(onboard_with_client_key(KeyType::RsaPem, pkcs1));
}

#[test]
fn an_rsa_openssh_key_onboards_through_the_jumphost() {
    block_on(onboard_with_client_key(KeyType::RsaOpenSsh, OPENSSH));
}

#[test]
fn an_ecdsa_key_onboards_through_the_jumphost() {
    block_on(onboard_with_client_key(KeyType::Ecdsa, None));
}

/// `ssh-keygen -m PEM` writes SEC1.
#[test]
fn an_ecdsa_pem_key_onboards_through_the_jumphost() {
    let sec1 = Some("-----BEGIN EC PRIVATE KEY-----");
    block_on(onboard_with_client_key(KeyType::EcdsaPem, sec1));
}

#[test]
fn an_rsa_host_key_is_verified_and_recorded() {
    block_on(async {
        let sshd = Sshd::options().host_key(KeyType::RsaOpenSsh).start().await;
        onboard_through(&sshd).await;
    });
}

// ------------------------------------------------------------------------------------------------
// 3. Changed host key
// ------------------------------------------------------------------------------------------------

#[test]
fn a_changed_host_key_fails_waiting_for_agent_with_both_fingerprints() {
    block_on(async {
        let mariadb = replication_source().await;
        let mut sshd = Sshd::start().await;
        let app = mysql_app().await;
        let mut client = app.client();
        let (id, status) =
            register_confirm_settle(&mut client, tunneled("rekeyed", &sshd, mariadb.port)).await;
        assert_active(&status);
        let recorded = sshd.host_key_fingerprint();
        assert_eq!(recorded_fingerprint(&mut client, &id).await, recorded);
        assert_only_the_stream_tunnel(&sshd, "after onboarding").await;

        // The jumphost comes back with another host key.
        let presented = sshd.restart_with_new_host_key().await;
        assert_ne!(presented, recorded);
        let logins_before = sshd.accepted_logins();
        let expected_error = format!(
            "the SSH jumphost 127.0.0.1:{} presented host key {presented}, but {recorded} is \
             expected; if the jumphost's key really changed, set ssh_tunnel.host_key_fingerprint \
             to the new one with UpdateServer",
            sshd.port
        );

        // Re-onboarding (a new password re-runs from waiting_for_agent) meets the new key.
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
        assert_eq!(
            updated.onboarding_step,
            Some(OnboardingStep::WaitingForAgent as i32)
        );
        let status = wait_settled(&client, &id).await;
        let error = assert_failed_at(&status, OnboardingStep::WaitingForAgent);
        assert!(
            error.contains(&recorded) && error.contains(&presented),
            "the error shows the expected and the presented fingerprints: {error}"
        );
        assert_eq!(error, expected_error);
        assert_eq!(
            step(&status, OnboardingStep::WaitingForAgent).attempts,
            1,
            "a host key mismatch is not retried: {status:#?}"
        );
        assert_server_agrees(&client, &status).await;
        // The recorded key is enforced, not replaced, and the client never logged in to the
        // impostor (its key was never offered).
        assert_eq!(recorded_fingerprint(&mut client, &id).await, recorded);
        assert_eq!(sshd.accepted_logins(), logins_before, "{}", sshd.log());

        // RetryOnboarding meets it again.
        retry_onboarding(&mut client, &id).await;
        let status = wait_settled(&client, &id).await;
        let error = assert_failed_at(&status, OnboardingStep::WaitingForAgent);
        assert_eq!(error, expected_error);
        assert_eq!(recorded_fingerprint(&mut client, &id).await, recorded);
        assert_eq!(sshd.accepted_logins(), logins_before, "{}", sshd.log());
        assert_tunnels_close(&sshd, "after the mismatch").await;

        // The operator pins the new key with UpdateServer: onboarding passes again.
        let updated = update_server(
            &mut client,
            tunnel_change(
                &id,
                proto::SshTunnel {
                    host_key_fingerprint: presented.clone(),
                    ..Default::default()
                },
            ),
            &["ssh_tunnel.host_key_fingerprint"],
        )
        .await;
        assert_eq!(
            updated.ssh_tunnel.expect("ssh_tunnel").host_key_fingerprint,
            presented
        );
        assert_eq!(
            updated.onboarding_step,
            Some(OnboardingStep::WaitingForAgent as i32)
        );
        let status = wait_settled(&client, &id).await;
        assert_active(&status);
        assert_logged_in_through(&status, &mariadb, &sshd);
        assert_eq!(recorded_fingerprint(&mut client, &id).await, presented);
        assert!(sshd.accepted_logins() > logins_before);
    });
}

// ------------------------------------------------------------------------------------------------
// 4. Pinned key
// ------------------------------------------------------------------------------------------------

#[test]
fn a_wrong_pinned_fingerprint_fails_and_the_right_one_passes() {
    block_on(async {
        let mariadb = replication_source().await;
        let sshd = Sshd::start().await;
        let app = mysql_app().await;
        let mut client = app.client();
        let actual = sshd.host_key_fingerprint();
        // A well-formed fingerprint of another key (the client's own).
        let wrong = sshd.client.fingerprint.clone();
        assert_ne!(wrong, actual);

        let mut server = tunneled("pinned-wrong", &sshd, mariadb.port);
        server.ssh_tunnel.as_mut().unwrap().host_key_fingerprint = wrong.clone();
        let registered = register(&mut client, server.clone()).await;
        assert_eq!(
            registered.ssh_tunnel.as_ref().unwrap().host_key_fingerprint,
            wrong,
            "a pinned fingerprint is shown as given"
        );
        let id = registered.server_id;
        wait_awaiting_firewall(&client, &id, sshd.port).await;
        confirm_firewall(&mut client, &id).await;
        let status = wait_settled(&client, &id).await;
        let error = assert_failed_at(&status, OnboardingStep::WaitingForAgent);
        assert_eq!(
            error,
            format!(
                "the SSH jumphost 127.0.0.1:{} presented host key {actual}, but {wrong} is \
                 expected; if the jumphost's key really changed, set \
                 ssh_tunnel.host_key_fingerprint to the new one with UpdateServer",
                sshd.port
            )
        );
        assert_eq!(step(&status, OnboardingStep::WaitingForAgent).attempts, 1);
        assert_eq!(
            recorded_fingerprint(&mut client, &id).await,
            wrong,
            "a pin is never overwritten"
        );
        assert_eq!(
            sshd.accepted_logins(),
            0,
            "no login at a jumphost with the wrong key"
        );

        // Correcting the pin with UpdateServer passes.
        update_server(
            &mut client,
            tunnel_change(
                &id,
                proto::SshTunnel {
                    host_key_fingerprint: actual.clone(),
                    ..Default::default()
                },
            ),
            &["ssh_tunnel.host_key_fingerprint"],
        )
        .await;
        let status = wait_settled(&client, &id).await;
        assert_active(&status);
        assert_eq!(recorded_fingerprint(&mut client, &id).await, actual);

        // Registered with the right pin from the start: active.
        server.name = "pinned-right".to_owned();
        server.ssh_tunnel.as_mut().unwrap().host_key_fingerprint = actual.clone();
        let (right, status) = register_confirm_settle(&mut client, server).await;
        assert_active(&status);
        assert_logged_in_through(&status, &mariadb, &sshd);
        assert_eq!(recorded_fingerprint(&mut client, &right).await, actual);
    });
}

// ------------------------------------------------------------------------------------------------
// 5. Refused key
// ------------------------------------------------------------------------------------------------

#[test]
fn a_key_the_jumphost_refuses_fails_waiting_for_agent_at_once() {
    block_on(async {
        let mariadb = replication_source().await;
        let sshd = Sshd::options().refusing_the_client().start().await;
        let app = mysql_app().await;
        let mut client = app.client();
        let (id, status) =
            register_confirm_settle(&mut client, tunneled("refused", &sshd, mariadb.port)).await;
        let error = assert_failed_at(&status, OnboardingStep::WaitingForAgent);
        assert_eq!(
            error,
            format!(
                "SSH authentication refused: the jumphost 127.0.0.1:{} did not accept the stored \
                 private key for user {SSH_USER}; add its public key to \
                 ~{SSH_USER}/.ssh/authorized_keys",
                sshd.port
            )
        );
        assert_eq!(
            step(&status, OnboardingStep::WaitingForAgent).attempts,
            1,
            "an authentication refusal is not retried: {status:#?}"
        );
        assert_key_not_echoed(
            &tonic::Status::unknown(error.clone()),
            &sshd.client.private_key,
        );
        assert_server_agrees(&client, &status).await;
        assert_eq!(sshd.accepted_logins(), 0, "{}", sshd.log());
        assert_tunnels_close(&sshd, "after the refusal").await;

        // The operator stores the key the jumphost accepts: onboarding passes from
        // waiting_for_agent.
        let updated = update_server(
            &mut client,
            tunnel_change(
                &id,
                proto::SshTunnel {
                    private_key: sshd.authorized.private_key.clone(),
                    ..Default::default()
                },
            ),
            &["ssh_tunnel.private_key"],
        )
        .await;
        assert_eq!(
            updated.onboarding_step,
            Some(OnboardingStep::WaitingForAgent as i32)
        );
        assert!(updated.ssh_tunnel.as_ref().unwrap().private_key.is_empty());
        let status = wait_settled(&client, &id).await;
        assert_active(&status);
        assert_logged_in_through(&status, &mariadb, &sshd);
        assert!(sshd.accepted_logins() >= 4, "{}", sshd.log());
    });
}

// ------------------------------------------------------------------------------------------------
// 6. Jumphost down
// ------------------------------------------------------------------------------------------------

#[test]
fn a_jumphost_nobody_listens_on_is_retried_then_fails_with_the_firewall_hint() {
    block_on(async {
        // Nothing listens on either port of 127.0.0.1.
        let ssh_port = free_port();
        let mysql_port = free_port();
        let app = mysql_app().await;
        let mut client = app.client();
        let server = proto::Server {
            host: "127.0.0.1".to_owned(),
            port: i32::from(mysql_port),
            mysql_user: USER.to_owned(),
            mysql_password: PASSWORD.to_owned(),
            ssh_tunnel: Some(proto::SshTunnel {
                host: "127.0.0.1".to_owned(),
                port: i32::from(ssh_port),
                user: SSH_USER.to_owned(),
                private_key: TEST_PRIVATE_KEY.to_owned(),
                ..Default::default()
            }),
            ..ssh_server("jumphost-down")
        };
        let id = register(&mut client, server).await.server_id;
        let mut watch = open_watch(&mut client, &id, Some(0), false)
            .await
            .expect("WatchOnboarding");
        wait_awaiting_firewall(&client, &id, ssh_port).await;
        confirm_firewall(&mut client, &id).await;
        let (messages, status) = watch_until_settled(&mut watch, &mut client, &id, NEXT).await;

        let error = assert_failed_at(&status, OnboardingStep::WaitingForAgent);
        let jumphost = format!("127.0.0.1:{ssh_port}");
        let hint = format!("; allow {AGENT_OUTBOUND_IP} on TCP port {ssh_port} of the jumphost");
        assert!(
            error.starts_with(&format!(
                "cannot reach the SSH jumphost {jumphost}: {UNREACHABLE}"
            )) && error.contains(&hint)
                && error.ends_with(&format!("(gave up after {CONNECT_ATTEMPTS} attempts)")),
            "the error names the jumphost, the cause, the outbound IP and TCP port to allow, and \
             the budget: {error}"
        );
        assert_eq!(
            step(&status, OnboardingStep::WaitingForAgent).attempts,
            CONNECT_ATTEMPTS,
            "attempts count every try, up to the budget: {status:#?}"
        );

        // Each retry was announced with its reason while the step was in progress. (The wording of
        // the retry suffix is the MySQL steps' own; what matters here is the reason with its hint,
        // and which attempt failed.)
        assert_retries_announced(
            &messages,
            OnboardingStep::WaitingForAgent,
            CONNECT_ATTEMPTS,
            |failed, message| {
                message.starts_with(&format!("cannot reach the SSH jumphost {jumphost}: "))
                    && message.contains(&hint)
                    && message.contains("retrying")
                    && message.contains(&format!("attempt {failed} of {CONNECT_ATTEMPTS}"))
            },
        );
        assert_server_agrees(&client, &status).await;
        assert_eq!(recorded_fingerprint(&mut client, &id).await, "");
    });
}

// ------------------------------------------------------------------------------------------------
// 7. The jumphost cannot reach MySQL
// ------------------------------------------------------------------------------------------------

#[test]
fn a_jumphost_that_cannot_reach_mysql_says_so() {
    block_on(async {
        let sshd = Sshd::start().await;
        // Nothing listens on this port: the jumphost's connection to it is refused.
        let mysql_port = free_port();
        let app = mysql_app().await;
        let mut client = app.client();
        let (id, status) = register_confirm_settle(
            &mut client,
            tunneled("mysql-unreachable", &sshd, mysql_port),
        )
        .await;
        let error = assert_failed_at(&status, OnboardingStep::WaitingForAgent);
        assert!(
            error.starts_with(&format!(
                "the SSH jumphost 127.0.0.1:{} could not reach MySQL at 127.0.0.1:{mysql_port}",
                sshd.port
            )),
            "the error says the jumphost could not reach host:port: {error}"
        );
        assert_eq!(
            error,
            format!(
                "the SSH jumphost 127.0.0.1:{} could not reach MySQL at 127.0.0.1:{mysql_port} \
                 (the connection was refused or timed out) (gave up after {CONNECT_ATTEMPTS} \
                 attempts)",
                sshd.port
            )
        );
        assert_eq!(
            step(&status, OnboardingStep::WaitingForAgent).attempts,
            CONNECT_ATTEMPTS
        );
        assert_server_agrees(&client, &status).await;
        // The SSH side worked: logged in, host key recorded.
        assert!(sshd.accepted_logins() >= 1, "{}", sshd.log());
        assert_eq!(
            recorded_fingerprint(&mut client, &id).await,
            sshd.host_key_fingerprint()
        );
        assert_tunnels_close(&sshd, "after the failure").await;
    });
}

// ------------------------------------------------------------------------------------------------
// 8. Decommission mid-onboarding
// ------------------------------------------------------------------------------------------------

/// A TCP server on 127.0.0.1 that accepts and never says a word: a MySQL client waits for its
/// greeting until it gives up. Counts the connections it accepted and those still open.
struct SilentServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    async fn start() -> SilentServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the silent server");
        let port = listener.local_addr().expect("its address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (accepted_in, open_in) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                accepted_in.fetch_add(1, Ordering::SeqCst);
                open_in.fetch_add(1, Ordering::SeqCst);
                let open = open_in.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(read) = socket.read(&mut buffer).await {
                        if read == 0 {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        SilentServer {
            port,
            accepted,
            open,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[test]
fn decommissioning_mid_onboarding_closes_the_tunnel_and_its_connections() {
    block_on(async {
        let sshd = Sshd::start().await;
        let silent = SilentServer::start().await;
        // A MySQL handshake that hangs for up to 20 s, well past the few seconds the tunnel may
        // take to close after the decommission. A 30 s lease is renewed every 10 s: the runner must
        // learn of the decommission from its NOTIFY, not from a renewal.
        let app = TestApp::start_with(ReplicaOptions {
            mysql_steps: true,
            lease_ttl: "30s".into(),
            extra_args: vec![
                "--mysql-connect-attempts".into(),
                CONNECT_ATTEMPTS.to_string(),
                "--mysql-connect-timeout".into(),
                "20s".into(),
            ],
            ..Default::default()
        })
        .await;
        let mut client = app.client();
        let id = register(
            &mut client,
            tunneled("decommissioned-mid-way", &sshd, silent.port),
        )
        .await
        .server_id;
        wait_awaiting_firewall(&client, &id, sshd.port).await;
        confirm_firewall(&mut client, &id).await;

        // The tunnel is open and the MySQL handshake through it hangs: the sshd holds the
        // connection, and the silent server holds the forwarded one.
        wait_until(
            "the tunnel to be open with a forwarded connection held",
            Duration::from_secs(15),
            || async {
                sshd.established_connections() >= 1
                    && sshd.accepted_logins() >= 1
                    && silent.open() >= 1
            },
        )
        .await;
        let status = onboarding_status(&mut client, &id).await;
        assert_eq!(
            status.current_step,
            Some(OnboardingStep::WaitingForAgent as i32)
        );
        assert_eq!(
            step_status(&status, OnboardingStep::WaitingForAgent),
            StepStatus::InProgress,
            "{status:#?}"
        );
        assert_eq!(
            sshd.established_connections(),
            1,
            "one tunnel, one SSH connection"
        );
        assert!(sshd.session_processes() >= 1);

        let decommissioned_at = Instant::now();
        let server = client
            .decommission_server(DecommissionServerRequest {
                server_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer")
            .into_inner();
        assert_eq!(server.status, ServerStatus::Decommissioned as i32);

        // The tunnel closes within a few seconds, not when the 20 s connect timeout runs out: the
        // sshd's connections and sessions go to zero, and so do the connections it forwarded.
        assert_tunnels_close(&sshd, "after DecommissionServer").await;
        wait_until(
            "the forwarded connections to close",
            CLOSE_TIMEOUT,
            || async { silent.open() == 0 },
        )
        .await;
        let elapsed = decommissioned_at.elapsed();
        assert!(
            elapsed < Duration::from_secs(5),
            "the tunnel took {elapsed:?} to close: it outlived the decommission"
        );

        // And nothing comes back: no new attempt after the decommission.
        let accepted = silent.accepted();
        let logins = sshd.accepted_logins();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(sshd.established_connections(), 0);
        assert_eq!(
            silent.accepted(),
            accepted,
            "a new MySQL connection after the decommission"
        );
        assert_eq!(
            sshd.accepted_logins(),
            logins,
            "a new SSH login after the decommission"
        );
        let status = onboarding_status(&mut client, &id).await;
        assert_eq!(
            status.server_status,
            ServerStatus::Decommissioned as i32,
            "{status:#?}"
        );
    });
}

// ------------------------------------------------------------------------------------------------
// Validation at the edge
// ------------------------------------------------------------------------------------------------

#[test]
fn a_passphrase_encrypted_key_is_refused_without_echoing_it() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let encrypted = TempKey::generate(KeyType::Ed25519, "correct horse battery staple");
        assert!(
            encrypted
                .key
                .private_key
                .contains("BEGIN OPENSSH PRIVATE KEY")
        );
        let mut server = ssh_server("encrypted-key");
        server.ssh_tunnel.as_mut().unwrap().private_key = encrypted.key.private_key.clone();

        let status = expect_err(
            client
                .register_server(proto::RegisterServerRequest {
                    server: Some(server.clone()),
                    ..Default::default()
                })
                .await,
        );
        assert_bad_request(&status, &["server.ssh_tunnel.private_key"]);
        let description = violation(&status, "server.ssh_tunnel.private_key");
        assert!(description.contains("passphrase"), "{description}");
        assert_key_not_echoed(&status, &encrypted.key.private_key);
        assert_eq!(list_count(&mut client).await, 0, "nothing was registered");

        // An RSA PEM key with a passphrase too.
        let encrypted_pem = TempKey::generate(KeyType::RsaPem, "correct horse battery staple");
        assert!(
            encrypted_pem.key.private_key.contains("ENCRYPTED"),
            "{}",
            encrypted_pem
                .key
                .private_key
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
        server.ssh_tunnel.as_mut().unwrap().private_key = encrypted_pem.key.private_key.clone();
        let status = expect_err(
            client
                .register_server(proto::RegisterServerRequest {
                    server: Some(server),
                    ..Default::default()
                })
                .await,
        );
        assert_bad_request(&status, &["server.ssh_tunnel.private_key"]);
        let description = violation(&status, "server.ssh_tunnel.private_key");
        assert!(description.contains("passphrase"), "{description}");
        assert_key_not_echoed(&status, &encrypted_pem.key.private_key);

        // UpdateServer refuses it the same way.
        let id = register(&mut client, ssh_server("plain-key"))
            .await
            .server_id;
        let status = expect_err(
            client
                .update_server(update_request(
                    tunnel_change(
                        &id,
                        proto::SshTunnel {
                            private_key: encrypted.key.private_key.clone(),
                            ..Default::default()
                        },
                    ),
                    &["ssh_tunnel.private_key"],
                ))
                .await,
        );
        assert_bad_request(&status, &["server.ssh_tunnel.private_key"]);
        let description = violation(&status, "server.ssh_tunnel.private_key");
        assert!(description.contains("passphrase"), "{description}");
        assert_key_not_echoed(&status, &encrypted.key.private_key);
    });
}

#[test]
fn garbage_key_material_is_refused_without_echoing_it() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let garbage_keys = [
            "-----BEGIN OPENSSH PRIVATE KEY-----\n\
             Z2FyYmFnZS1rZXktbWF0ZXJpYWwtdGhhdC1kZWNvZGVzLXRvLW5vdGhpbmctdXNlZnVs\n\
             -----END OPENSSH PRIVATE KEY-----\n"
                .to_owned(),
            "this-is-not-a-private-key-at-all-zq9x7w".to_owned(),
            // A public key where the private one belongs.
            TempKey::generate(KeyType::Ed25519, "").key.public_key,
        ];
        for key in garbage_keys {
            let mut server = ssh_server("garbage-key");
            server.ssh_tunnel.as_mut().unwrap().private_key = key.clone();
            let status = expect_err(
                client
                    .register_server(proto::RegisterServerRequest {
                        server: Some(server),
                        ..Default::default()
                    })
                    .await,
            );
            assert_bad_request(&status, &["server.ssh_tunnel.private_key"]);
            let description = violation(&status, "server.ssh_tunnel.private_key");
            assert!(
                description.contains("not a valid private key"),
                "{key:?}: {description}"
            );
            assert_key_not_echoed(&status, &key);
            assert!(
                !status.message().contains("zq9x7w") && !description.contains("zq9x7w"),
                "{status:?}"
            );
        }
        assert_eq!(list_count(&mut client).await, 0, "nothing was registered");
    });
}

#[test]
fn ssh_ports_out_of_range_are_refused_and_zero_means_22() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        for port in [70000, 65536, -1] {
            let mut server = ssh_server("bad-ssh-port");
            server.ssh_tunnel.as_mut().unwrap().port = port;
            let status = expect_err(
                client
                    .register_server(proto::RegisterServerRequest {
                        server: Some(server),
                        ..Default::default()
                    })
                    .await,
            );
            assert_bad_request(&status, &["server.ssh_tunnel.port"]);
            assert_eq!(
                violation(&status, "server.ssh_tunnel.port"),
                format!("{port} is out of range: 1 to 65535")
            );
        }
        assert_eq!(list_count(&mut client).await, 0);

        let mut server = ssh_server("default-ssh-port");
        server.ssh_tunnel.as_mut().unwrap().port = 0;
        let registered = register(&mut client, server).await;
        assert_eq!(registered.ssh_tunnel.as_ref().unwrap().port, 22);

        // UpdateServer checks the range too.
        let status = expect_err(
            client
                .update_server(update_request(
                    tunnel_change(
                        &registered.server_id,
                        proto::SshTunnel {
                            port: 100_000,
                            ..Default::default()
                        },
                    ),
                    &["ssh_tunnel.port"],
                ))
                .await,
        );
        assert_bad_request(&status, &["server.ssh_tunnel.port"]);
    });
}

#[test]
fn moving_the_jumphost_forgets_a_fingerprint_unless_a_new_one_is_given() {
    block_on(async {
        // Core steps only: servers stop at awaiting_firewall and nothing connects anywhere.
        let app = TestApp::start().await;
        let mut client = app.client();
        let pinned = "SHA256:ngCYWQSEFMegyZZ/k6vAwSx3ionhBUMxw0lm0Buq7d0";
        let other = "SHA256:AAAAWQSEFMegyZZ/k6vAwSx3ionhBUMxw0lm0Buq7d0";
        let mut server = ssh_server("moving-jumphost");
        server.ssh_tunnel.as_mut().unwrap().host_key_fingerprint = pinned.to_owned();
        let id = register(&mut client, server).await.server_id;
        assert_eq!(recorded_fingerprint(&mut client, &id).await, pinned);

        // Another user on the same jumphost keeps it.
        update_server(
            &mut client,
            tunnel_change(
                &id,
                proto::SshTunnel {
                    user: "admin".into(),
                    ..Default::default()
                },
            ),
            &["ssh_tunnel.user"],
        )
        .await;
        assert_eq!(recorded_fingerprint(&mut client, &id).await, pinned);

        // Another host with a new pin keeps the new pin.
        update_server(
            &mut client,
            tunnel_change(
                &id,
                proto::SshTunnel {
                    host: "127.0.0.1".into(),
                    host_key_fingerprint: other.into(),
                    ..Default::default()
                },
            ),
            &["ssh_tunnel.host", "ssh_tunnel.host_key_fingerprint"],
        )
        .await;
        assert_eq!(recorded_fingerprint(&mut client, &id).await, other);

        // Another host alone forgets it.
        let updated = update_server(
            &mut client,
            tunnel_change(
                &id,
                proto::SshTunnel {
                    host: "localhost".into(),
                    ..Default::default()
                },
            ),
            &["ssh_tunnel.host"],
        )
        .await;
        assert_eq!(updated.ssh_tunnel.unwrap().host_key_fingerprint, "");
        assert_eq!(recorded_fingerprint(&mut client, &id).await, "");

        // Another port is another jumphost too.
        update_server(
            &mut client,
            tunnel_change(
                &id,
                proto::SshTunnel {
                    host_key_fingerprint: pinned.into(),
                    ..Default::default()
                },
            ),
            &["ssh_tunnel.host_key_fingerprint"],
        )
        .await;
        assert_eq!(recorded_fingerprint(&mut client, &id).await, pinned);
        update_server(
            &mut client,
            tunnel_change(
                &id,
                proto::SshTunnel {
                    port: 2222,
                    ..Default::default()
                },
            ),
            &["ssh_tunnel.port"],
        )
        .await;
        assert_eq!(recorded_fingerprint(&mut client, &id).await, "");

        // A malformed fingerprint is refused.
        let status = expect_err(
            client
                .update_server(update_request(
                    tunnel_change(
                        &id,
                        proto::SshTunnel {
                            host_key_fingerprint: "MD5:16:27:ac:a5:76:28:2d:36".into(),
                            ..Default::default()
                        },
                    ),
                    &["ssh_tunnel.host_key_fingerprint"],
                ))
                .await,
        );
        assert_bad_request(&status, &["server.ssh_tunnel.host_key_fingerprint"]);
        assert_eq!(status.code(), Code::InvalidArgument);
    });
}

#[test]
fn moving_the_jumphost_after_onboarding_clears_the_recorded_key_and_awaits_the_firewall() {
    block_on(async {
        let mariadb = replication_source().await;
        let sshd = Sshd::start().await;
        let app = mysql_app().await;
        let mut client = app.client();
        let (id, status) =
            register_confirm_settle(&mut client, tunneled("moved", &sshd, mariadb.port)).await;
        assert_active(&status);
        assert_eq!(
            recorded_fingerprint(&mut client, &id).await,
            sshd.host_key_fingerprint()
        );
        // The stream connects once it is claimed; only a stream already running is known to have
        // made its login before the jumphost moves.
        wait_until("the stream to run", Duration::from_secs(20), || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                get_server(&mut client, &id)
                    .await
                    .stream
                    .is_some_and(|stream| stream.state == proto::StreamState::Running as i32)
            }
        })
        .await;

        // The same sshd, named another way: a new jumphost as far as the service can tell.
        let updated = update_server(
            &mut client,
            tunnel_change(
                &id,
                proto::SshTunnel {
                    host: "localhost".into(),
                    ..Default::default()
                },
            ),
            &["ssh_tunnel.host"],
        )
        .await;
        let tunnel = updated.ssh_tunnel.clone().expect("ssh_tunnel");
        assert_eq!(tunnel.host, "localhost");
        assert_eq!(
            tunnel.host_key_fingerprint, "",
            "the recorded key is forgotten"
        );
        assert_eq!(updated.status, ServerStatus::Pending as i32);
        assert_eq!(
            updated.onboarding_step,
            Some(OnboardingStep::AwaitingFirewall as i32)
        );
        assert_eq!(recorded_fingerprint(&mut client, &id).await, "");

        // Onboarding waits for the firewall of the new jumphost again, from awaiting_firewall on.
        let status = wait_awaiting_firewall(&client, &id, sshd.port).await;
        assert_eq!(
            step_status(&status, OnboardingStep::Provisioning),
            StepStatus::Completed
        );
        let logins = sshd.accepted_logins();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            sshd.accepted_logins(),
            logins,
            "nothing connects before ConfirmFirewall"
        );

        confirm_firewall(&mut client, &id).await;
        let status = wait_settled(&client, &id).await;
        assert_active(&status);
        assert_eq!(
            step(&status, OnboardingStep::WaitingForAgent).message,
            format!(
                "logged in to MariaDB {} at 127.0.0.1:{} as {USER} through the SSH jumphost \
                 localhost:{}",
                mariadb.version, mariadb.port, sshd.port
            )
        );
        // The key is recorded anew on the first connection.
        assert_eq!(
            recorded_fingerprint(&mut client, &id).await,
            sshd.host_key_fingerprint()
        );
    });
}

/// How many change events the stream stored for `server_id`.
async fn event_count(client: &Client, server_id: &str) -> usize {
    client
        .clone()
        .list_change_events(proto::ListChangeEventsRequest {
            server_id: server_id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("ListChangeEvents")
        .into_inner()
        .events
        .len()
}

/// Waits until the stream of `server_id` stored `count` events.
async fn wait_events(client: &Client, server_id: &str, count: usize) {
    let started = Instant::now();
    while event_count(client, server_id).await != count {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the stream did not store {count} events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_stream_runs_through_the_tunnel_and_reconnects_when_the_jumphost_drops_it() {
    block_on(async {
        let sshd = Sshd::start().await;
        let mariadb = replication_source().await;
        let app = mysql_app().await;
        let mut client = app.client();
        let (id, status) =
            register_confirm_settle(&mut client, tunneled("streamed", &sshd, mariadb.port)).await;
        assert_active(&status);
        mariadb
            .exec(&["INSERT INTO shop.orders VALUES (2, 1.00)"])
            .await;
        wait_events(&client, &id, 1).await;
        assert_only_the_stream_tunnel(&sshd, "while streaming").await;

        // The jumphost drops the session: the stream reconnects through a new one.
        let logins = sshd.accepted_logins();
        assert!(sshd.kill_sessions() >= 1);
        mariadb
            .exec(&["INSERT INTO shop.orders VALUES (3, 2.00)"])
            .await;
        wait_events(&client, &id, 2).await;
        let server = get_server(&mut client, &id).await;
        assert!(server.stream.expect("stream").reconnects >= 1);
        assert!(
            sshd.accepted_logins() > logins,
            "the stream logged in again"
        );
        app.shutdown().await;
    });
}

// ------------------------------------------------------------------------------------------------
// The console, in a real browser
// ------------------------------------------------------------------------------------------------

/// GET /console in headless Chromium (Debian's, driven by Playwright: tests/console/console.mjs),
/// at 1400 px and again at 390 px: a key pasted in, the fleet overview and its filters, a server
/// added with the register form (Test connection, then Register) and watched to active, paused
/// and resumed behind a confirmation, its change events explored (a filter, and the before →
/// after diff of the UPDATE this test runs on the MariaDB, beside the CREATE TABLE it runs, and
/// its Undo SQL; the refusal of a table without a primary key), its
/// settings edited (a bad host shown beside the host field) and the server decommissioned behind
/// a confirmation; an SSH-tunnel server confirmed with the button and onboarded; axe-core finds no
/// serious or critical accessibility violation; no CSP violation or script error on the way.
/// Screenshots of each state stay under target/tmp/console/.
#[test]
fn the_console_shows_onboarding_live_and_confirms_the_firewall_in_chromium() {
    block_on(async {
        let mariadb = std::sync::Arc::new(replication_source().await);
        let sshd = Sshd::start().await;
        let app = mysql_app().await;
        let mut client = app.client();

        let page = reqwest::get(format!("http://{}/console", app.http_addr))
            .await
            .expect("GET /console");
        assert_eq!(page.status(), 200);
        let policy = page
            .headers()
            .get("content-security-policy")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            policy.contains("default-src 'none'") && policy.contains("script-src 'self'"),
            "a strict Content-Security-Policy: {policy:?}"
        );
        let html = page.text().await.expect("the page");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "nothing from elsewhere"
        );

        let tunnel = register(&mut client, tunneled("console-tunnel", &sshd, mariadb.port)).await;
        let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
        let _ = std::fs::remove_dir_all(&artifacts);
        std::fs::create_dir_all(&artifacts).expect("the artifact directory");
        // The page registers FORM_SERVER with its form; once that server streams, a DDL statement
        // and an UPDATE for the explorer to show and undo, and a change to a table without a
        // primary key, whose undo is refused.
        const FORM_SERVER: &str = "console-form";
        let writes = {
            let mut client = app.client();
            let source = std::sync::Arc::clone(&mariadb);
            tokio::spawn(async move {
                let id = registered_named(&mut client, FORM_SERVER).await;
                crate::common::stream::wait_stream(
                    &mut client,
                    &id,
                    "the server registered by the page to stream",
                    crate::common::stream::running,
                )
                .await;
                source
                    .exec(&[
                        "CREATE TABLE shop.console_ddl (id INT PRIMARY KEY)",
                        "UPDATE shop.orders SET total = 12.34 WHERE id = 1",
                        // Its Undo SQL is refused: TABLE_WITHOUT_PRIMARY_KEY.
                        "CREATE TABLE shop.console_nokey (v INT)",
                        "INSERT INTO shop.console_nokey VALUES (1)",
                    ])
                    .await;
            })
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/console.mjs");
        let output = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new("node")
                .arg(script)
                .env("CONSOLE_URL", format!("http://{}/console", app.http_addr))
                .env("DBTRAIL_KEY", &app.tenant.key)
                .env("FORM_SERVER_NAME", FORM_SERVER)
                .env("TUNNEL_SERVER_ID", &tunnel.server_id)
                .env("MYSQL_PORT", mariadb.port.to_string())
                .env("MYSQL_USER", USER)
                .env("MYSQL_PASSWORD", PASSWORD)
                .env("SCREENSHOT_DIR", &artifacts)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the browser test finishes within 5 minutes")
        .expect("run node (scripts/test installs Node.js, Chromium and tests/console's packages)");
        let printed = echo_output(&output);
        assert!(
            output.status.success(),
            "the browser test failed:\n{printed}"
        );
        writes.await.expect("the DDL and UPDATE task");
        for name in [
            "console-1400-explorer.png",
            "console-1400-undo.png",
            "console-390-detail.png",
            "console-390-undo.png",
        ] {
            let png = std::fs::read(artifacts.join(name)).expect("the screenshot was taken");
            assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG screenshot");
        }
        app.shutdown().await;
    });
}

/// The id of the server named `name`, once one is registered (within 3 minutes).
async fn registered_named(client: &mut Client, name: &str) -> String {
    let started = Instant::now();
    loop {
        let servers = client
            .list_servers(ListServersRequest {
                filter: format!("name = \"{name}\""),
                ..Default::default()
            })
            .await
            .expect("ListServers")
            .into_inner()
            .servers;
        if let Some(server) = servers.into_iter().next() {
            return server.server_id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no server named {name} was registered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------------------------------------
// Agents: each server is run by the agent whose IP it showed; a dead agent's servers move
// ------------------------------------------------------------------------------------------------

/// The source addresses of the logins `sshd` accepted (the test's own readiness probe of the
/// port never logs in).
fn connection_sources(sshd: &Sshd) -> std::collections::BTreeSet<String> {
    connection_sources_in(&sshd.log())
}

/// The source addresses of the logins in an sshd log.
fn connection_sources_in(log: &str) -> std::collections::BTreeSet<String> {
    log.lines()
        .filter(|line| line.starts_with("Accepted publickey for "))
        .filter_map(|line| line.split(" from ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// A replica whose agent has `outbound_ip` and whose jumphost connections leave from it.
fn agent_at(outbound_ip: &str, capacity: u32) -> ReplicaOptions {
    let mut options = mysql_replica_options();
    options.agent_outbound_ip = outbound_ip.to_owned();
    options.agent_capacity = capacity;
    // Agents beat on every sweep and are dead after three missed beats: 3 s, not the tests'
    // usual 1.5 s, so a loaded machine does not make a live agent look dead.
    options.sweep_interval = "1s".to_owned();
    options
        .extra_args
        .extend(["--agent-source-address".to_owned(), outbound_ip.to_owned()]);
    options
}

/// Waits until `server_id` waits for the firewall, and returns the outbound IP it shows.
async fn shown_ip(client: &Client, server_id: &str) -> String {
    let status = awaiting_firewall(client, server_id).await;
    let ip = status
        .agent_outbound_ip
        .clone()
        .unwrap_or_else(|| panic!("awaiting_firewall shows the agent's IP: {status:#?}"));
    assert!(
        step(&status, OnboardingStep::AwaitingFirewall)
            .message
            .starts_with(&format!("allow {ip} on TCP port")),
        "{status:#?}"
    );
    ip
}

/// Confirms the firewall of `server_id` and checks that it onboards with every login through
/// `sshd` coming from `ip` (and none from anywhere else, a dead agent's IP included).
async fn confirm_and_log_in_from(client: &mut Client, server_id: &str, sshd: &Sshd, ip: &str) {
    confirm_firewall(client, server_id).await;
    assert_active(&wait_settled(client, server_id).await);
    assert_eq!(
        connection_sources(sshd),
        [ip.to_owned()].into(),
        "{}",
        sshd.log()
    );
}

#[test]
fn servers_connect_from_the_ip_they_showed_and_a_dead_agents_servers_move_with_the_new_ip() {
    block_on(async {
        const FIRST: &str = "127.0.0.2";
        const SECOND: &str = "127.0.0.3";
        let mariadb = replication_source().await;
        let mut first_options = agent_at(FIRST, 4);
        first_options
            .extra_args
            .extend(["--agent-replaced-after".to_owned(), "4s".to_owned()]);
        let first = TestApp::start_with(first_options).await;
        let mut second = ServiceProcess::serve("second", &first.db.url, &agent_at(SECOND, 2)).await;
        let mut client = first.client();
        wait_until("both agents to beat", Duration::from_secs(10), || async {
            let live: i64 = first
                .db
                .connect()
                .await
                .query_one(
                    "SELECT count(*) FROM agents WHERE heartbeat_at > now() - interval '1 second'",
                    &[],
                )
                .await
                .expect("count live agents")
                .get(0);
            live == 2
        })
        .await;
        // One jumphost per server, so each one's log tells where that server's connections came
        // from.
        let mut servers = Vec::new();
        for index in 0..4 {
            let sshd = Sshd::start().await;
            let id = register(
                &mut client,
                tunneled(&format!("agent-{index}"), &sshd, mariadb.port),
            )
            .await
            .server_id;
            let ip = shown_ip(&client, &id).await;
            servers.push((id, sshd, ip));
        }
        let on_second: Vec<usize> = (0..4).filter(|&i| servers[i].2 == SECOND).collect();
        if on_second.is_empty() || on_second.len() == 4 {
            let agents = first
                .db
                .connect()
                .await
                .query(
                    "SELECT outbound_ip, capacity, assigned, (now() - heartbeat_at)::text FROM \
                     agents",
                    &[],
                )
                .await
                .expect("read agents");
            let agents: Vec<(String, i32, i32, String)> = agents
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
                .collect();
            panic!(
                "the servers are not spread over both agents: {:?}; agents {agents:?}",
                servers.iter().map(|server| &server.2).collect::<Vec<_>>()
            );
        }

        // The first agent's servers, confirmed, connect from its IP only, whichever replica's
        // engine is woken.
        for (id, sshd, _) in servers.iter().filter(|server| server.2 == FIRST) {
            confirm_and_log_in_from(&mut client, id, sshd, FIRST).await;
        }

        // One of the second agent's servers goes active, streaming from the second IP.
        let (streaming_id, streaming_sshd, _) = &servers[on_second[0]];
        confirm_and_log_in_from(&mut client, streaming_id, streaming_sshd, SECOND).await;
        let logins_before_the_move = streaming_sshd.log().lines().count();

        // The second replica dies before its other servers' firewalls are confirmed: once its agent
        // has missed three heartbeats, the first adopts them, and they ask for the first agent's
        // IP. The active one moves too once the second agent has been silent for
        // --agent-replaced-after (its stream cannot run from the first IP without the firewall).
        second.kill().await;
        for &index in &on_second {
            let (id, sshd, _) = &servers[index];
            let status = wait_for_onboarding(
                &client,
                id,
                "the adopted server to show the new IP",
                Duration::from_secs(20),
                |status| {
                    is_awaiting_firewall(status)
                        && status.agent_outbound_ip.as_deref() == Some(FIRST)
                },
            )
            .await;
            assert_eq!(
                step(&status, OnboardingStep::AwaitingFirewall).message,
                format!(
                    "allow {FIRST} on TCP port {} of the jumphost, then call ConfirmFirewall",
                    sshd.tunnel().port
                )
            );
            if id == streaming_id {
                confirm_firewall(&mut client, id).await;
                assert_active(&wait_settled(&client, id).await);
                let sources = connection_sources_in(
                    &sshd
                        .log()
                        .lines()
                        .skip(logins_before_the_move)
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
                assert_eq!(sources, [FIRST.to_owned()].into(), "{}", sshd.log());
            } else {
                confirm_and_log_in_from(&mut client, id, sshd, FIRST).await;
            }
        }
        first.shutdown().await;
    });
}
