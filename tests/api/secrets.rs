//! Secrets at rest (onboarding.md §6): after registration and update, no byte of any row holds the
//! MySQL password or the SSH private key in clear; no response returns them; the binary's logs
//! never print them.

use std::sync::Arc;

use crate::common::*;
use base64::Engine as _;
use dbtrail_servers::proto::{
    self, ConfirmFirewallRequest, ListServersRequest, RegisterServerRequest, UpdateServerRequest,
};

const PASSWORD: &str = "pw-7c4e1b9a-never-in-clear";
const NEW_PASSWORD: &str = "pw-2d8f6a03-rotated-also-hidden";

/// The forms a secret could take in a dump: itself, hex (bytea), base64.
fn forms(secret: &str) -> Vec<String> {
    vec![
        secret.to_owned(),
        hex::encode(secret.as_bytes()),
        base64::engine::general_purpose::STANDARD.encode(secret.as_bytes()),
    ]
}

/// Distinctive pieces of the private key: every body line, and the whole key.
fn key_pieces() -> Vec<String> {
    let mut pieces: Vec<String> = TEST_PRIVATE_KEY
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    pieces.push(TEST_PRIVATE_KEY_BODY_LINE.to_owned());
    pieces.extend(forms(TEST_PRIVATE_KEY));
    pieces
}

fn secret_needles() -> Vec<String> {
    let mut needles = forms(PASSWORD);
    needles.extend(forms(NEW_PASSWORD));
    needles.extend(key_pieces());
    needles
}

#[track_caller]
fn assert_free_of_secrets(what: &str, text: &str) {
    for needle in secret_needles() {
        assert!(
            !text.contains(&needle),
            "{what} contains a secret in clear ({}...)",
            &needle[..needle.len().min(12)]
        );
    }
}

/// A direct server with the MySQL password and an ssh_tunnel one with the private key too, each
/// registered with a request_id (so that an idempotency record is stored as well).
async fn register_secret_servers(client: &mut Client) -> (proto::Server, proto::Server) {
    let mut registered = Vec::new();
    for mut server in [
        direct_server("with-password"),
        ssh_server("with-private-key"),
    ] {
        server.mysql_password = PASSWORD.to_owned();
        let name = server.name.clone();
        registered.push(
            client
                .register_server(RegisterServerRequest {
                    server: Some(server),
                    request_id: uuid::Uuid::new_v4().to_string(),
                    validate_only: false,
                })
                .await
                .unwrap_or_else(|status| panic!("RegisterServer {name}: {status:?}"))
                .into_inner(),
        );
    }
    let tunnelled = registered.pop().expect("the ssh_tunnel server");
    let direct = registered.pop().expect("the direct server");
    (direct, tunnelled)
}

#[test]
fn no_row_of_the_database_holds_a_secret_in_clear() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let (direct, tunnelled) = register_secret_servers(&mut client).await;
        wait_for_onboarding(
            &client,
            &tunnelled.server_id,
            "awaiting_firewall",
            std::time::Duration::from_secs(15),
            is_awaiting_firewall,
        )
        .await;
        client
            .confirm_firewall(ConfirmFirewallRequest {
                server_id: tunnelled.server_id.clone(),
            })
            .await
            .expect("ConfirmFirewall");
        // A rotated password is sealed too.
        client
            .update_server(UpdateServerRequest {
                server: Some(proto::Server {
                    server_id: direct.server_id.clone(),
                    mysql_password: NEW_PASSWORD.to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["mysql_password".to_owned()],
                }),
                request_id: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .expect("UpdateServer mysql_password");
        wait_for_onboarding(
            &client,
            &direct.server_id,
            "waiting_for_agent",
            std::time::Duration::from_secs(15),
            is_waiting_for_agent,
        )
        .await;

        let dump = dump_all_rows(&app.db).await;
        assert!(
            dump.keys().any(|table| table.ends_with("servers")),
            "the dump covers the servers table: {:?}",
            dump.keys()
        );
        let server_rows = dump
            .iter()
            .filter(|(table, _)| table.ends_with(".servers"))
            .map(|(_, rows)| rows.len())
            .sum::<usize>();
        assert_eq!(server_rows, 2, "both servers are in the dump");
        for (table, rows) in &dump {
            for row in rows {
                assert_free_of_secrets(&format!("a row of {table}"), row);
            }
        }

        // The sealed values are there.
        let sql = app.db.connect().await;
        let sealed: Vec<Option<Vec<u8>>> = sql
            .query(
                "SELECT mysql_password_sealed FROM servers ORDER BY name",
                &[],
            )
            .await
            .expect("read sealed passwords")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(sealed.len(), 2);
        assert!(
            sealed.iter().all(Option::is_some),
            "both servers store a sealed password"
        );
        app.shutdown().await;
    });
}

#[test]
fn no_response_returns_a_secret() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let (direct, tunnelled) = register_secret_servers(&mut client).await;
        for server in [&direct, &tunnelled] {
            assert_eq!(server.mysql_password, "");
            assert!(server.has_mysql_password);
            assert_free_of_secrets("a RegisterServer response", &format!("{server:?}"));
        }
        let tunnel = tunnelled.ssh_tunnel.as_ref().expect("the tunnel");
        assert_eq!(tunnel.private_key, "");
        assert!(tunnel.has_private_key);

        for server in [&direct, &tunnelled] {
            let fetched = get_server(&mut client, &server.server_id).await;
            assert_free_of_secrets("a GetServer response", &format!("{fetched:?}"));
            let status = onboarding_status(&mut client, &server.server_id).await;
            assert_free_of_secrets("an onboarding status", &format!("{status:?}"));
            let mut watch = open_watch(&mut client, &server.server_id, Some(0), false)
                .await
                .expect("WatchOnboarding");
            let first = watch.message(std::time::Duration::from_secs(5)).await;
            assert_free_of_secrets("a watch message", &format!("{first:?}"));
        }
        let listed = client
            .list_servers(ListServersRequest::default())
            .await
            .expect("ListServers")
            .into_inner();
        assert_free_of_secrets("a ListServers response", &format!("{listed:?}"));
        app.shutdown().await;
    });
}

#[test]
fn the_binary_never_logs_a_secret() {
    block_on(async {
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let mut process = ServiceProcess::serve_with_env(
            "logging",
            &db.url,
            &ReplicaOptions::default(),
            &[("RUST_LOG", "debug")],
        )
        .await;
        let mut client = process.client(&tenant.key).await;
        let (_, tunnelled) = register_secret_servers(&mut client).await;
        // A rejected registration with secrets in it, too.
        let mut bad = ssh_server("");
        bad.mysql_password = PASSWORD.to_owned();
        let _ = client
            .register_server(RegisterServerRequest {
                server: Some(bad),
                ..Default::default()
            })
            .await;
        wait_for_onboarding(
            &client,
            &tunnelled.server_id,
            "awaiting_firewall",
            std::time::Duration::from_secs(15),
            is_awaiting_firewall,
        )
        .await;
        process.signal(libc::SIGTERM);
        process.wait_exit(std::time::Duration::from_secs(10)).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let output = format!("{}\n{}", process.stdout(), process.stderr());
        assert!(!output.trim().is_empty(), "the service logged nothing");
        assert_free_of_secrets("the service's output", &output);
    });
}

/// Replicas started with different secrets keys on one database: the second refuses to start and
/// says why, while a replica with the deployment's key (or given it as an old key, rotating)
/// starts.
#[test]
fn a_replica_with_another_secrets_key_refuses_to_start() {
    block_on(async {
        let db = Arc::new(TestDatabase::create().await);
        let first_key = random_secrets_key();
        let options = |key: &str| ReplicaOptions {
            secrets_key: key.to_owned(),
            ..ReplicaOptions::default()
        };
        let first = ServiceProcess::serve("first-key", &db.url, &options(&first_key)).await;

        let other_key = random_secrets_key();
        let data_dir = tempfile::tempdir().expect("a data directory");
        let mut args = vec!["serve".to_owned()];
        args.extend(options(&other_key).serve_args(
            &db.url,
            &format!("127.0.0.1:{}", free_port()),
            &format!("127.0.0.1:{}", free_port()),
            data_dir.path(),
        ));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let refused = run_cli(&args, &[]).await;
        assert!(
            !refused.status.success(),
            "a replica with another key started: {}",
            refused.stderr
        );
        assert!(
            refused.stderr.contains("this replica's secrets key (id ")
                && refused.stderr.contains("is not the deployment's")
                && refused.stderr.contains("--secrets-key"),
            "the refusal names the problem and the fix: {}",
            refused.stderr
        );
        assert!(
            !refused.stderr.contains(&other_key) && !refused.stderr.contains(&first_key),
            "no key is printed"
        );

        // Rotating: the new key with the deployment's as an old one is let in, and so is the
        // deployment's own key on another replica.
        let rotating = ServiceProcess::serve(
            "rotating",
            &db.url,
            &ReplicaOptions {
                extra_args: vec!["--secrets-old-keys".to_owned(), first_key.clone()],
                ..options(&other_key)
            },
        )
        .await;
        let second = ServiceProcess::serve("same-key", &db.url, &options(&first_key)).await;
        drop((first, rotating, second));
    });
}
