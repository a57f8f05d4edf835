//! The server resource over gRPC: register, get, list, update, decommission, etags, request_id
//! idempotency and concurrency.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use dbtrail_servers::proto::{
    self, ConnectionMethod, DecommissionServerRequest, GetServerRequest, ListServersRequest,
    OnboardingStep, RegisterServerRequest, ServerStatus, StepStatus, UpdateServerRequest,
};
use futures_util::future::join_all;
use tonic::Code;

const SETTLE: Duration = Duration::from_secs(15);

async fn list_all(client: &mut Client, show_decommissioned: bool) -> Vec<proto::Server> {
    client
        .list_servers(ListServersRequest {
            page_size: 500,
            show_decommissioned,
            ..Default::default()
        })
        .await
        .expect("ListServers")
        .into_inner()
        .servers
}

/// The server once onboarding waits for an agent (so that its etag stays put).
async fn settled(client: &Client, server_id: &str) -> proto::Server {
    wait_for_onboarding(
        client,
        server_id,
        "waiting_for_agent",
        SETTLE,
        is_waiting_for_agent,
    )
    .await;
    get_server(&mut client.clone(), server_id).await
}

#[test]
fn register_get_list_direct_server() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();

        let mut input = direct_server("orders-primary");
        input.port = 0; // the default, 3306
        input.labels = labels(&[("env", "prod")]);
        let registered = register(&mut client, input).await;

        assert!(
            uuid::Uuid::parse_str(&registered.server_id).is_ok(),
            "server_id is a UUID"
        );
        assert_eq!(registered.name, "orders-primary");
        assert_eq!(registered.host, "127.0.0.1");
        assert_eq!(registered.port, 3306, "port defaults to 3306");
        assert_eq!(registered.mysql_user, "bintrail");
        assert_eq!(registered.mysql_password, "", "the password is input only");
        assert!(registered.has_mysql_password);
        assert_eq!(
            registered.connection_method,
            ConnectionMethod::Direct as i32
        );
        assert_eq!(registered.ssh_tunnel, None);
        assert_eq!(registered.labels, labels(&[("env", "prod")]));
        assert_eq!(registered.status, ServerStatus::Pending as i32);
        assert_eq!(registered.error, None);
        assert!(registered.created_at.is_some() && registered.updated_at.is_some());
        assert_eq!(registered.decommissioned_at, None);
        assert!(!registered.etag.is_empty(), "reads carry an etag");

        let fetched = get_server(&mut client, &registered.server_id).await;
        assert_eq!(fetched.server_id, registered.server_id);
        assert_eq!(fetched.name, "orders-primary");
        assert_eq!(fetched.mysql_password, "");
        assert!(fetched.has_mysql_password);

        let listed = list_all(&mut client, false).await;
        assert_eq!(
            listed
                .iter()
                .map(|server| server.server_id.as_str())
                .collect::<Vec<_>>(),
            vec![registered.server_id.as_str()]
        );
        assert_eq!(listed[0].mysql_password, "");

        // Onboarding: provisioning and awaiting_firewall complete, then it waits for an agent.
        let status = waiting_for_agent(&client, &registered.server_id).await;
        assert_eq!(status.server_id, registered.server_id);
        assert_six_steps_in_order(&status);
        assert_eq!(
            step_status(&status, OnboardingStep::Provisioning),
            StepStatus::Completed
        );
        assert_eq!(
            step_status(&status, OnboardingStep::AwaitingFirewall),
            StepStatus::Completed
        );
        let firewall = step(&status, OnboardingStep::AwaitingFirewall);
        assert!(
            firewall.message.contains("auto-completed"),
            "awaiting_firewall says it was auto-completed: {firewall:?}"
        );
        assert!(firewall.started_at.is_some() && firewall.completed_at.is_some());
        assert_eq!(
            step_status(&status, OnboardingStep::WaitingForAgent),
            StepStatus::InProgress
        );
        for later in [
            OnboardingStep::Initializing,
            OnboardingStep::Snapshotting,
            OnboardingStep::Streaming,
        ] {
            assert_eq!(
                step_status(&status, later),
                StepStatus::Pending,
                "{later:?}"
            );
        }
        assert_eq!(
            status.current_step,
            Some(OnboardingStep::WaitingForAgent as i32)
        );
        assert_eq!(status.server_status, ServerStatus::Pending as i32);
        assert_eq!(status.agent_outbound_ip, None);
        assert_eq!(status.error, None);

        let fetched = get_server(&mut client, &registered.server_id).await;
        assert_eq!(
            fetched.onboarding_step,
            Some(OnboardingStep::WaitingForAgent as i32),
            "onboarding_step is the status's current_step"
        );
        assert_eq!(fetched.status, ServerStatus::Pending as i32);
        assert_same_timestamp(
            "created_at of RegisterServer and GetServer",
            &registered.created_at,
            &fetched.created_at,
        );

        app.shutdown().await;
    });
}

#[test]
fn vpn_server_auto_completes_the_firewall_step() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let mut input = direct_server("vpn-one");
        input.connection_method = ConnectionMethod::Vpn as i32;
        let server = register(&mut client, input).await;
        let status = waiting_for_agent(&client, &server.server_id).await;
        let firewall = step(&status, OnboardingStep::AwaitingFirewall);
        assert_eq!(firewall.status, StepStatus::Completed as i32);
        assert!(firewall.message.contains("auto-completed"), "{firewall:?}");
        assert_eq!(status.agent_outbound_ip, None);
        app.shutdown().await;
    });
}

#[test]
fn validate_only_registers_nothing() {
    block_on(async {
        // A dry run runs CheckServer's checks (tests/api/check.rs): against a real server.
        let mariadb = crate::common::mariadb::onboardable_mariadb().await;
        let app = TestApp::start().await;
        let mut client = app.client();
        let response = client
            .register_server(RegisterServerRequest {
                server: Some(mariadb.server(
                    "dry-run",
                    crate::common::mariadb::USER,
                    crate::common::mariadb::PASSWORD,
                )),
                validate_only: true,
                ..Default::default()
            })
            .await
            .expect("a valid validate_only registration succeeds")
            .into_inner();
        assert_eq!(response.name, "dry-run");
        assert_eq!(response.mysql_password, "");
        assert!(
            list_all(&mut client, true).await.is_empty(),
            "validate_only stored a server"
        );

        // The name is still free.
        register(&mut client, direct_server("dry-run")).await;

        // Once taken, a dry run says so as a real registration would.
        let status = expect_err(
            client
                .register_server(RegisterServerRequest {
                    server: Some(direct_server("dry-run")),
                    validate_only: true,
                    ..Default::default()
                })
                .await,
        );
        assert_error(&status, Code::AlreadyExists, "SERVER_NAME_TAKEN");
        assert_eq!(list_all(&mut client, true).await.len(), 1);

        // And an invalid one is still rejected.
        let mut bad = direct_server("");
        bad.port = 70000;
        let status = expect_err(
            client
                .register_server(RegisterServerRequest {
                    server: Some(bad),
                    validate_only: true,
                    ..Default::default()
                })
                .await,
        );
        assert_bad_request(&status, &["server.name", "server.port"]);
        app.shutdown().await;
    });
}

#[test]
fn decommission_is_a_soft_delete_and_idempotent() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("to-retire")).await;
        let kept = register(&mut client, direct_server("kept")).await;
        // The etag follows the whole resource, onboarding_step included: read it once settled.
        let server = settled(&client, &server.server_id).await;

        let retired = client
            .decommission_server(DecommissionServerRequest {
                server_id: server.server_id.clone(),
                etag: server.etag.clone(),
                request_id: String::new(),
            })
            .await
            .expect("DecommissionServer")
            .into_inner();
        assert_eq!(retired.server_id, server.server_id);
        assert_eq!(retired.status, ServerStatus::Decommissioned as i32);
        assert!(retired.decommissioned_at.is_some());
        assert_eq!(retired.onboarding_step, None);

        // Idempotent: a second call returns the same decommissioned server.
        let again = client
            .decommission_server(DecommissionServerRequest {
                server_id: server.server_id.clone(),
                ..Default::default()
            })
            .await
            .expect("a second DecommissionServer succeeds")
            .into_inner();
        assert_eq!(again.status, ServerStatus::Decommissioned as i32);

        let fetched = get_server(&mut client, &server.server_id).await;
        assert_eq!(
            fetched.status,
            ServerStatus::Decommissioned as i32,
            "GetServer returns it"
        );

        let visible: Vec<String> = list_all(&mut client, false)
            .await
            .into_iter()
            .map(|server| server.server_id)
            .collect();
        assert_eq!(visible, vec![kept.server_id.clone()], "hidden by default");
        let all: HashSet<String> = list_all(&mut client, true)
            .await
            .into_iter()
            .map(|server| server.server_id)
            .collect();
        assert_eq!(
            all,
            HashSet::from([kept.server_id.clone(), server.server_id.clone()])
        );

        let status = onboarding_status(&mut client, &server.server_id).await;
        assert_eq!(status.server_status, ServerStatus::Decommissioned as i32);
        assert_eq!(status.current_step, None);
        assert_eq!(status.agent_outbound_ip, None);
        assert_six_steps_in_order(&status);

        // A decommissioned server cannot be updated.
        let mut change = fetched.clone();
        change.labels = labels(&[("a", "b")]);
        change.etag = String::new();
        let status = expect_err(
            client
                .update_server(update_request(change, &["labels"]))
                .await,
        );
        assert_error(&status, Code::FailedPrecondition, "SERVER_DECOMMISSIONED");
        assert_same_timestamp(
            "decommissioned_at of two DecommissionServer calls",
            &retired.decommissioned_at,
            &again.decommissioned_at,
        );
        assert_same_timestamp(
            "decommissioned_at of DecommissionServer and GetServer",
            &retired.decommissioned_at,
            &fetched.decommissioned_at,
        );
        app.shutdown().await;
    });
}

#[test]
fn decommission_with_a_stale_etag_is_aborted() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("etagged")).await;
        let server = settled(&client, &server.server_id).await;
        let mut change = server.clone();
        change.labels = labels(&[("team", "a")]);
        update_server(&mut client, change, &["labels"]).await;
        let status = expect_err(
            client
                .decommission_server(DecommissionServerRequest {
                    server_id: server.server_id.clone(),
                    etag: server.etag.clone(),
                    request_id: String::new(),
                })
                .await,
        );
        assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
        assert_eq!(
            get_server(&mut client, &server.server_id).await.status,
            ServerStatus::Pending as i32
        );
        app.shutdown().await;
    });
}

#[test]
fn update_of_name_and_labels_changes_no_onboarding() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("before")).await;
        let settled = waiting_for_agent(&client, &server.server_id).await;
        let current = get_server(&mut client, &server.server_id).await;

        let mut change = proto::Server {
            server_id: server.server_id.clone(),
            name: "after".to_owned(),
            labels: labels(&[("env", "staging"), ("team", "db")]),
            etag: current.etag.clone(),
            ..Default::default()
        };
        let updated = update_server(&mut client, change.clone(), &["name", "labels"]).await;
        assert_eq!(updated.name, "after");
        assert_eq!(
            updated.labels,
            labels(&[("env", "staging"), ("team", "db")])
        );
        assert_eq!(
            updated.host, "127.0.0.1",
            "fields outside the mask are kept"
        );
        assert!(updated.has_mysql_password, "the password is kept");
        assert_ne!(
            updated.etag, current.etag,
            "the etag changes with the resource"
        );
        let read_back = get_server(&mut client, &server.server_id).await;
        assert_eq!(
            proto::Server {
                updated_at: None,
                ..read_back.clone()
            },
            proto::Server {
                updated_at: None,
                ..updated.clone()
            },
            "GetServer returns what UpdateServer returned"
        );

        // name and labels change nothing in onboarding.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = onboarding_status(&mut client, &server.server_id).await;
        assert_eq!(
            after.revision, settled.revision,
            "a rename made an onboarding revision"
        );
        assert!(is_waiting_for_agent(&after));

        // The old etag is now stale.
        change.name = "again".to_owned();
        let status = expect_err(
            client
                .update_server(update_request(change, &["name"]))
                .await,
        );
        assert_error(&status, Code::Aborted, "ETAG_MISMATCH");

        // Without update_mask, the populated fields are updated.
        let updated = client
            .update_server(UpdateServerRequest {
                server: Some(proto::Server {
                    server_id: server.server_id.clone(),
                    name: "third".to_owned(),
                    ..Default::default()
                }),
                update_mask: None,
                request_id: String::new(),
            })
            .await
            .expect("UpdateServer without a mask")
            .into_inner();
        assert_eq!(updated.name, "third");
        assert_eq!(
            updated.labels,
            labels(&[("env", "staging"), ("team", "db")])
        );
        assert_eq!(updated.mysql_user, "bintrail");
        let read_back = get_server(&mut client, &server.server_id).await;
        assert_same_timestamp(
            "updated_at of UpdateServer and GetServer",
            &updated.updated_at,
            &read_back.updated_at,
        );
        app.shutdown().await;
    });
}

#[test]
fn update_of_the_jumphost_reruns_onboarding_from_awaiting_firewall() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, ssh_server("tunnelled")).await;
        awaiting_firewall(&client, &server.server_id).await;
        client
            .confirm_firewall(proto::ConfirmFirewallRequest {
                server_id: server.server_id.clone(),
            })
            .await
            .expect("ConfirmFirewall");
        waiting_for_agent(&client, &server.server_id).await;

        let change = proto::Server {
            server_id: server.server_id.clone(),
            ssh_tunnel: Some(proto::SshTunnel {
                host: "127.0.0.2".to_owned(),
                user: "ec2-user".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let updated =
            update_server(&mut client, change, &["ssh_tunnel.host", "ssh_tunnel.user"]).await;
        assert_eq!(updated.status, ServerStatus::Pending as i32);
        let tunnel = updated.ssh_tunnel.expect("the tunnel is returned");
        assert_eq!(tunnel.host, "127.0.0.2");
        assert!(tunnel.has_private_key, "the private key is kept");
        assert_eq!(tunnel.private_key, "");

        let status = wait_for_onboarding(
            &client,
            &server.server_id,
            "awaiting_firewall again",
            SETTLE,
            is_awaiting_firewall,
        )
        .await;
        assert_eq!(
            step_status(&status, OnboardingStep::Provisioning),
            StepStatus::Completed
        );
        assert_eq!(
            step_status(&status, OnboardingStep::WaitingForAgent),
            StepStatus::Pending
        );
        assert_eq!(status.agent_outbound_ip.as_deref(), Some(AGENT_OUTBOUND_IP));
        assert_eq!(status.server_status, ServerStatus::Pending as i32);
        app.shutdown().await;
    });
}

#[test]
fn retry_onboarding_needs_a_failed_onboarding() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("healthy")).await;
        let status = expect_err(
            client
                .retry_onboarding(proto::RetryOnboardingRequest {
                    server_id: server.server_id.clone(),
                })
                .await,
        );
        assert_error(&status, Code::FailedPrecondition, "ONBOARDING_NOT_FAILED");
        app.shutdown().await;
    });
}

#[test]
fn an_unknown_server_is_not_found_for_every_call() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let unknown = uuid::Uuid::new_v4().to_string();

        let status = expect_err(
            client
                .get_server(GetServerRequest {
                    server_id: unknown.clone(),
                })
                .await,
        );
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");

        let status = expect_err(
            client
                .update_server(update_request(
                    proto::Server {
                        server_id: unknown.clone(),
                        name: "x".to_owned(),
                        ..Default::default()
                    },
                    &["name"],
                ))
                .await,
        );
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");

        let status = expect_err(
            client
                .decommission_server(DecommissionServerRequest {
                    server_id: unknown.clone(),
                    ..Default::default()
                })
                .await,
        );
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");

        let status = expect_err(
            client
                .get_onboarding_status(proto::GetOnboardingStatusRequest {
                    server_id: unknown.clone(),
                })
                .await,
        );
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");

        let status = expect_err(
            client
                .confirm_firewall(proto::ConfirmFirewallRequest {
                    server_id: unknown.clone(),
                })
                .await,
        );
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");

        let status = expect_err(
            client
                .retry_onboarding(proto::RetryOnboardingRequest {
                    server_id: unknown.clone(),
                })
                .await,
        );
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");

        let status = watch_error(&mut client, &unknown).await;
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");
        app.shutdown().await;
    });
}

#[test]
fn twenty_concurrent_updates_with_one_etag_exactly_one_wins() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("contended")).await;
        let etag = settled(&client, &server.server_id).await.etag;

        let attempts = (0..20).map(|writer| {
            let mut client = app.client();
            let change = proto::Server {
                server_id: server.server_id.clone(),
                labels: labels(&[("writer", &writer.to_string())]),
                etag: etag.clone(),
                ..Default::default()
            };
            async move {
                (
                    writer,
                    client
                        .update_server(update_request(change, &["labels"]))
                        .await,
                )
            }
        });
        let results = join_all(attempts).await;

        let winners: Vec<usize> = results
            .iter()
            .filter(|(_, result)| result.is_ok())
            .map(|(writer, _)| *writer)
            .collect();
        assert_eq!(winners.len(), 1, "exactly one update wins, not {winners:?}");
        for (_, result) in &results {
            if let Err(status) = result {
                assert_error(status, Code::Aborted, "ETAG_MISMATCH");
            }
        }
        let stored = get_server(&mut client, &server.server_id).await;
        assert_eq!(
            stored.labels,
            labels(&[("writer", &winners[0].to_string())])
        );
        app.shutdown().await;
    });
}

#[test]
fn register_retried_with_the_same_request_id_creates_one_server() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let request = RegisterServerRequest {
            server: Some(direct_server("idempotent")),
            request_id: uuid::Uuid::new_v4().to_string(),
            validate_only: false,
        };
        let first = client
            .register_server(request.clone())
            .await
            .expect("first RegisterServer")
            .into_inner();
        let retry = client
            .register_server(request.clone())
            .await
            .expect("a retried RegisterServer returns the first result")
            .into_inner();
        assert_eq!(retry.server_id, first.server_id);
        assert_eq!(retry.name, first.name);

        let listed = list_all(&mut client, true).await;
        assert_eq!(listed.len(), 1, "one server, not {listed:#?}");

        // A different request_id with the same name is a new registration: the name is taken.
        let status = expect_err(
            client
                .register_server(RegisterServerRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    ..request
                })
                .await,
        );
        assert_error(&status, Code::AlreadyExists, "SERVER_NAME_TAKEN");
        assert_same_timestamp(
            "created_at of a RegisterServer and its retry",
            &first.created_at,
            &retry.created_at,
        );
        app.shutdown().await;
    });
}

#[test]
fn concurrent_retries_with_the_same_request_id_create_one_server() {
    block_on(async {
        let app = TestApp::start().await;
        let request = RegisterServerRequest {
            server: Some(direct_server("raced")),
            request_id: uuid::Uuid::new_v4().to_string(),
            validate_only: false,
        };
        let results = join_all((0..8).map(|_| {
            let mut client = app.client();
            let request = request.clone();
            async move { client.register_server(request).await }
        }))
        .await;
        let ids: HashSet<String> = results
            .into_iter()
            .map(|result| {
                result
                    .expect("every retry of one request returns its result")
                    .into_inner()
                    .server_id
            })
            .collect();
        assert_eq!(ids.len(), 1, "one server id for one request_id: {ids:?}");
        assert_eq!(list_all(&mut app.client(), true).await.len(), 1);
        app.shutdown().await;
    });
}

/// Concurrent retries of one UpdateServer request apply it once; the id cannot be reused for a
/// different change.
#[test]
fn concurrent_update_retries_with_one_request_id_apply_once() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let registered = register(&mut client, direct_server("retried-update")).await;
        let before = settled(&client, &registered.server_id).await;
        let mut request = update_request(
            proto::Server {
                server_id: before.server_id.clone(),
                labels: [("env".to_owned(), "prod".to_owned())].into(),
                // With the etag, a retry that ran the change again would be ABORTED: all succeeding
                // shows they waited for the first and replayed it.
                etag: before.etag.clone(),
                ..Default::default()
            },
            &["labels"],
        );
        request.request_id = uuid::Uuid::new_v4().to_string();
        let results = join_all((0..8).map(|_| {
            let mut client = app.client();
            let request = request.clone();
            async move { client.update_server(request).await }
        }))
        .await;
        for result in results {
            let server = result.expect("every retry answers").into_inner();
            assert_eq!(server.labels.get("env").map(String::as_str), Some("prod"));
        }
        let after = get_server(&mut client, &before.server_id).await;
        let version = |etag: &str| {
            etag.trim_matches('"')
                .parse::<i64>()
                .expect("a numeric etag")
        };
        assert_eq!(
            version(&after.etag),
            version(&before.etag) + 1,
            "the change was applied exactly once"
        );

        let mut different = request.clone();
        different.server.as_mut().expect("server").labels =
            [("env".to_owned(), "staging".to_owned())].into();
        let status = expect_err(client.update_server(different).await);
        assert_error(&status, Code::InvalidArgument, "REQUEST_ID_REUSED");
        app.shutdown().await;
    });
}
