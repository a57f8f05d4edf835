//! The auth matrix: every RPC × {no key, malformed, unknown, expired, revoked, key without the
//! permission, key of another tenant} gives the exact code and reason of api.md (the webhook calls
//! against a webhook with a delivery); revocation ends an open watch; health needs no key.

use std::time::{Duration, Instant};

use crate::common::*;
use dbtrail_servers::proto::{
    self, ConfirmFirewallRequest, DecommissionServerRequest, GetOnboardingStatusRequest,
    GetServerRequest, ListServersRequest, RegisterServerRequest, RetryOnboardingRequest,
    UpdateServerRequest,
};
use futures_util::StreamExt;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rpc {
    ListServers,
    GetServer,
    RegisterServer,
    UpdateServer,
    DecommissionServer,
    GetOnboardingStatus,
    ConfirmFirewall,
    WatchOnboarding,
    RetryOnboarding,
    PauseStream,
    ResumeStream,
    ListSchemaChanges,
    WatchServers,
    CheckServer,
    RevertChanges,
    GetRowHistory,
    ListAuditEvents,
    CreateWebhook,
    GetWebhook,
    ListWebhooks,
    DeleteWebhook,
    ListWebhookDeliveries,
    RedeliverWebhook,
}

const RPCS: [Rpc; 23] = [
    Rpc::ListServers,
    Rpc::GetServer,
    Rpc::RegisterServer,
    Rpc::UpdateServer,
    Rpc::DecommissionServer,
    Rpc::GetOnboardingStatus,
    Rpc::ConfirmFirewall,
    Rpc::WatchOnboarding,
    Rpc::RetryOnboarding,
    Rpc::PauseStream,
    Rpc::ResumeStream,
    Rpc::ListSchemaChanges,
    Rpc::WatchServers,
    Rpc::CheckServer,
    Rpc::RevertChanges,
    Rpc::GetRowHistory,
    Rpc::ListAuditEvents,
    Rpc::CreateWebhook,
    Rpc::GetWebhook,
    Rpc::ListWebhooks,
    Rpc::DeleteWebhook,
    Rpc::ListWebhookDeliveries,
    Rpc::RedeliverWebhook,
];

/// What the calls address: a server of the owner's, and a webhook of its with one delivery.
struct Target {
    server_id: String,
    webhook_id: String,
    delivery_id: String,
}

/// Registers an SSH-tunnel server that waits for its firewall, and a webhook with one delivery
/// (another server decommissioned; its receiver is never reached).
async fn target(owner: &mut Client, name: &str) -> Target {
    let (server_id, _) = register_and_settle(owner, ssh_server(name)).await;
    let webhook_id = owner
        .create_webhook(proto::CreateWebhookRequest {
            webhook: Some(proto::Webhook {
                url: "https://203.0.113.9/never".into(),
                events: vec![proto::WebhookEvent::Decommissioned as i32],
                ..Default::default()
            }),
        })
        .await
        .expect("CreateWebhook")
        .into_inner()
        .webhook_id;
    let gone = register(owner, direct_server(&format!("{name}-gone"))).await;
    owner
        .decommission_server(DecommissionServerRequest {
            server_id: gone.server_id,
            ..Default::default()
        })
        .await
        .expect("DecommissionServer");
    let delivery_id = owner
        .list_webhook_deliveries(proto::ListWebhookDeliveriesRequest {
            webhook_id: webhook_id.clone(),
            ..Default::default()
        })
        .await
        .expect("ListWebhookDeliveries")
        .into_inner()
        .deliveries
        .first()
        .expect("the decommission's delivery")
        .delivery_id
        .clone();
    Target {
        server_id,
        webhook_id,
        delivery_id,
    }
}

impl Rpc {
    /// The permission api.md §2 requires.
    fn permission(self) -> &'static str {
        match self {
            Rpc::ListServers
            | Rpc::GetServer
            | Rpc::GetOnboardingStatus
            | Rpc::WatchOnboarding
            | Rpc::WatchServers => "servers:read",
            Rpc::RegisterServer
            | Rpc::UpdateServer
            | Rpc::ConfirmFirewall
            | Rpc::RetryOnboarding
            | Rpc::PauseStream
            | Rpc::ResumeStream
            | Rpc::CheckServer => "servers:write",
            Rpc::DecommissionServer => "servers:delete",
            Rpc::ListSchemaChanges | Rpc::RevertChanges | Rpc::GetRowHistory => "changes:read",
            Rpc::ListAuditEvents => "audit:read",
            Rpc::GetWebhook | Rpc::ListWebhooks | Rpc::ListWebhookDeliveries => "webhooks:read",
            Rpc::CreateWebhook | Rpc::DeleteWebhook | Rpc::RedeliverWebhook => "webhooks:write",
        }
    }

    /// The reason of the NOT_FOUND the call gives for another tenant's resource, when it
    /// addresses one.
    fn not_found(self) -> Option<&'static str> {
        match self {
            Rpc::ListServers
            | Rpc::RegisterServer
            | Rpc::WatchServers
            | Rpc::ListAuditEvents
            | Rpc::CreateWebhook
            | Rpc::ListWebhooks => None,
            Rpc::GetWebhook
            | Rpc::DeleteWebhook
            | Rpc::ListWebhookDeliveries
            | Rpc::RedeliverWebhook => Some("WEBHOOK_NOT_FOUND"),
            _ => Some("SERVER_NOT_FOUND"),
        }
    }

    /// Calls the RPC with valid arguments against `target`; the watch's first message counts.
    async fn call(self, client: &mut Client, target: &Target) -> Result<CallOutcome, Status> {
        if let Some(outcome) = self.call_webhooks(client, target).await {
            return outcome;
        }
        let id = target.server_id.clone();
        match self {
            Rpc::ListServers => {
                let servers = client
                    .list_servers(ListServersRequest::default())
                    .await?
                    .into_inner()
                    .servers;
                Ok(CallOutcome::Listed(
                    servers.into_iter().map(|server| server.server_id).collect(),
                ))
            }
            Rpc::GetServer => client
                .get_server(GetServerRequest { server_id: id })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::RegisterServer => client
                .register_server(RegisterServerRequest {
                    server: Some(direct_server(&format!(
                        "auth-{}",
                        uuid::Uuid::new_v4().simple()
                    ))),
                    ..Default::default()
                })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::UpdateServer => client
                .update_server(UpdateServerRequest {
                    server: Some(proto::Server {
                        server_id: id,
                        labels: labels(&[("touched", "yes")]),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["labels".to_owned()],
                    }),
                    request_id: String::new(),
                })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::DecommissionServer => client
                .decommission_server(DecommissionServerRequest {
                    server_id: id,
                    ..Default::default()
                })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::GetOnboardingStatus => client
                .get_onboarding_status(GetOnboardingStatusRequest { server_id: id })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::ConfirmFirewall => client
                .confirm_firewall(ConfirmFirewallRequest { server_id: id })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::WatchOnboarding => {
                let mut watch = open_watch(client, &id, None, false).await?;
                match watch.next(Duration::from_secs(5)).await {
                    WatchEvent::Message(_) => Ok(CallOutcome::Done),
                    WatchEvent::Error(status) => Err(status),
                    other => {
                        panic!("WatchOnboarding gave neither a message nor an error: {other:?}")
                    }
                }
            }
            Rpc::RetryOnboarding => client
                .retry_onboarding(RetryOnboardingRequest { server_id: id })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::PauseStream => client
                .pause_stream(proto::PauseStreamRequest { server_id: id })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::ResumeStream => client
                .resume_stream(proto::ResumeStreamRequest { server_id: id })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::ListSchemaChanges => client
                .list_schema_changes(proto::ListSchemaChangesRequest {
                    server_id: id,
                    ..Default::default()
                })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::WatchServers => {
                let mut stream = client
                    .watch_servers(proto::WatchServersRequest::default())
                    .await?
                    .into_inner();
                match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                    Ok(Ok(Some(list))) => Ok(CallOutcome::Listed(
                        list.servers
                            .into_iter()
                            .map(|server| server.server_id)
                            .collect(),
                    )),
                    Ok(Err(status)) => Err(status),
                    other => panic!("WatchServers gave neither a list nor an error: {other:?}"),
                }
            }
            Rpc::CheckServer => client
                .check_server(proto::CheckServerRequest {
                    target: Some(proto::check_server_request::Target::ServerId(id)),
                })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::RevertChanges => {
                let mut stream = client
                    .revert_changes(proto::RevertChangesRequest {
                        server_id: id,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                // The script's first chunk (its header) or the stream's error.
                match stream.message().await {
                    Ok(Some(_)) => Ok(CallOutcome::Done),
                    Ok(None) => panic!("RevertChanges sent no script"),
                    Err(status) => Err(status),
                }
            }
            Rpc::GetRowHistory => client
                .get_row_history(proto::GetRowHistoryRequest {
                    server_id: id,
                    schema: "shop".into(),
                    table: "items".into(),
                    key: r#"{"id":1}"#.into(),
                    as_of: None,
                })
                .await
                .map(|_| CallOutcome::Done),
            Rpc::ListAuditEvents => {
                let events = client
                    .list_audit_events(proto::ListAuditEventsRequest::default())
                    .await?
                    .into_inner()
                    .audit_events;
                // What another tenant's log shows of the server: no change (its own refused
                // attempts at the id are its own records, NOT_FOUND like any unknown id).
                Ok(CallOutcome::Listed(
                    events
                        .into_iter()
                        .filter(|event| event.outcome == "OK")
                        .map(|event| event.server_id)
                        .collect(),
                ))
            }
            _ => unreachable!("{self:?} is a webhook call"),
        }
    }

    /// The webhook calls against `target`'s webhook and delivery; None for the others.
    async fn call_webhooks(
        self,
        client: &mut Client,
        target: &Target,
    ) -> Option<Result<CallOutcome, Status>> {
        let webhook_id = target.webhook_id.clone();
        match self {
            Rpc::CreateWebhook => done(
                client
                    .create_webhook(proto::CreateWebhookRequest {
                        webhook: Some(proto::Webhook {
                            url: "https://203.0.113.9/auth".into(),
                            events: vec![proto::WebhookEvent::LostPosition as i32],
                            ..Default::default()
                        }),
                    })
                    .await,
            ),
            Rpc::GetWebhook => done(
                client
                    .get_webhook(proto::GetWebhookRequest { webhook_id })
                    .await,
            ),
            Rpc::ListWebhooks => Some(
                client
                    .list_webhooks(proto::ListWebhooksRequest::default())
                    .await
                    .map(|response| {
                        let webhooks = response.into_inner().webhooks;
                        CallOutcome::Listed(
                            webhooks.into_iter().map(|hook| hook.webhook_id).collect(),
                        )
                    }),
            ),
            Rpc::DeleteWebhook => done(
                client
                    .delete_webhook(proto::DeleteWebhookRequest { webhook_id })
                    .await,
            ),
            Rpc::ListWebhookDeliveries => done(
                client
                    .list_webhook_deliveries(proto::ListWebhookDeliveriesRequest {
                        webhook_id,
                        ..Default::default()
                    })
                    .await,
            ),
            Rpc::RedeliverWebhook => done(
                client
                    .redeliver_webhook(proto::RedeliverWebhookRequest {
                        webhook_id,
                        delivery_id: target.delivery_id.clone(),
                    })
                    .await,
            ),
            _ => None,
        }
    }
}

/// A call that answers nothing the matrix looks at.
fn done<T>(result: Result<T, Status>) -> Option<Result<CallOutcome, Status>> {
    Some(result.map(|_| CallOutcome::Done))
}

#[derive(Debug)]
enum CallOutcome {
    Done,
    Listed(Vec<String>),
}

/// Asserts that every RPC fails with `code` / `reason` for `client`.
async fn assert_every_rpc_fails(
    client: &mut Client,
    target: &Target,
    case: &str,
    code: Code,
    reason: &str,
) {
    for rpc in RPCS {
        let status = match rpc.call(client, target).await {
            Ok(outcome) => {
                panic!("{case}: {rpc:?} succeeded ({outcome:?}); expected {code:?}/{reason}")
            }
            Err(status) => status,
        };
        assert_eq!(
            status.code(),
            code,
            "{case}: {rpc:?} gave {:?} {:?}",
            status.code(),
            status.message()
        );
        assert_error(&status, code, reason);
    }
}

/// A well-formed key that was never issued: the body of a real key, reversed.
fn unknown_key(real: &str) -> String {
    let body = real.strip_prefix("dbt_").expect("keys start with dbt_");
    format!("dbt_{}", body.chars().rev().collect::<String>())
}

#[test]
fn every_rpc_rejects_missing_malformed_unknown_expired_and_revoked_keys() {
    block_on(async {
        let app = TestApp::start().await;
        let mut owner = app.client();
        let target = target(&mut owner, "guarded").await;
        let id = target.server_id.clone();
        assert!(
            app.tenant.key.starts_with("dbt_"),
            "keys have the dbt_ prefix"
        );

        // The expiring and the revoked key are used once first, so that a cache has seen them.
        let expiring = app
            .db
            .create_key(
                &app.tenant.name,
                &ALL_PERMISSIONS,
                Some(Duration::from_secs(1)),
            )
            .await;
        let revoked = app.key_with(&ALL_PERMISSIONS).await;
        for key in [&expiring.secret, &revoked.secret] {
            app.client_with_key(key)
                .get_server(GetServerRequest {
                    server_id: id.clone(),
                })
                .await
                .expect("a fresh key works");
        }
        app.db.revoke_key(revoked.id).await;
        let mut revoked_client = app.client_with_key(&revoked.secret);
        wait_until_refused(&revoked_client, Duration::from_secs(2)).await;

        let mut none = app.client_with_authorization(None);
        assert_every_rpc_fails(
            &mut none,
            &target,
            "no key",
            Code::Unauthenticated,
            "MISSING_CREDENTIALS",
        )
        .await;

        for malformed in [
            "Bearer not-a-key",
            "Bearer dbt_",
            "Bearer dbt_!!!",
            "Bearer dbt_short",
        ] {
            let mut client = app.client_with_authorization(Some(malformed));
            assert_every_rpc_fails(
                &mut client,
                &target,
                malformed,
                Code::Unauthenticated,
                "INVALID_API_KEY",
            )
            .await;
        }

        let mut unknown = app.client_with_key(&unknown_key(&app.tenant.key));
        assert_every_rpc_fails(
            &mut unknown,
            &target,
            "unknown key",
            Code::Unauthenticated,
            "INVALID_API_KEY",
        )
        .await;

        let expires_at = Instant::now() + Duration::from_millis(1200);
        tokio::time::sleep_until(expires_at.into()).await;
        let mut expired = app.client_with_key(&expiring.secret);
        assert_every_rpc_fails(
            &mut expired,
            &target,
            "expired key",
            Code::Unauthenticated,
            "API_KEY_EXPIRED",
        )
        .await;

        assert_every_rpc_fails(
            &mut revoked_client,
            &target,
            "revoked key",
            Code::Unauthenticated,
            "API_KEY_REVOKED",
        )
        .await;

        // None of it changed the server.
        let after = get_server(&mut owner, &id).await;
        assert!(
            after.labels.is_empty(),
            "a refused update changed the server"
        );
        assert_eq!(after.status, proto::ServerStatus::Pending as i32);
        assert!(is_awaiting_firewall(
            &onboarding_status(&mut owner, &id).await
        ));
        app.shutdown().await;
    });
}

#[test]
fn every_rpc_needs_its_permission() {
    block_on(async {
        let app = TestApp::start().await;
        let mut owner = app.client();
        let target = target(&mut owner, "permissioned").await;
        let id = target.server_id.clone();

        for rpc in RPCS {
            let others: Vec<&str> = ALL_PERMISSIONS
                .iter()
                .copied()
                .filter(|permission| *permission != rpc.permission())
                .collect();
            let key = app.key_with(&others).await;
            let mut client = app.client_with_key(&key.secret);
            let status = match rpc.call(&mut client, &target).await {
                Ok(outcome) => panic!(
                    "{rpc:?} without {} succeeded: {outcome:?}",
                    rpc.permission()
                ),
                Err(status) => status,
            };
            assert_error(&status, Code::PermissionDenied, "MISSING_PERMISSION");
            assert!(
                status.message().contains(rpc.permission()),
                "{rpc:?}: the error names the missing permission {}: {:?}",
                rpc.permission(),
                status.message()
            );
        }
        let after = get_server(&mut owner, &id).await;
        assert!(after.labels.is_empty());
        assert_eq!(after.status, proto::ServerStatus::Pending as i32);
        app.shutdown().await;
    });
}

#[test]
fn a_key_with_exactly_the_permission_is_enough() {
    block_on(async {
        let app = TestApp::start().await;
        let mut owner = app.client();
        let target = target(&mut owner, "enough").await;
        // RetryOnboarding passes authorization and reaches its precondition.
        let key = app.key_with(&["servers:write"]).await;
        let status = expect_err(
            Rpc::RetryOnboarding
                .call(&mut app.client_with_key(&key.secret), &target)
                .await,
        );
        assert_error(&status, Code::FailedPrecondition, "ONBOARDING_NOT_FAILED");

        for rpc in [
            Rpc::ListServers,
            Rpc::GetServer,
            Rpc::GetOnboardingStatus,
            Rpc::WatchOnboarding,
            Rpc::RegisterServer,
            Rpc::UpdateServer,
            Rpc::ConfirmFirewall,
            Rpc::PauseStream,
            Rpc::ResumeStream,
            Rpc::ListSchemaChanges,
            Rpc::RevertChanges,
            Rpc::GetRowHistory,
            Rpc::WatchServers,
            Rpc::CheckServer,
            Rpc::ListAuditEvents,
            Rpc::CreateWebhook,
            Rpc::GetWebhook,
            Rpc::ListWebhooks,
            Rpc::ListWebhookDeliveries,
            Rpc::RedeliverWebhook,
            Rpc::DeleteWebhook,
            Rpc::DecommissionServer,
        ] {
            let key = app.key_with(&[rpc.permission()]).await;
            let mut client = app.client_with_key(&key.secret);
            rpc.call(&mut client, &target)
                .await
                .unwrap_or_else(|status| {
                    panic!("{rpc:?} with only {}: {status:?}", rpc.permission())
                });
        }
        app.shutdown().await;
    });
}

#[test]
fn another_tenants_server_does_not_exist_for_every_rpc() {
    block_on(async {
        let app = TestApp::start().await;
        let mut owner = app.client();
        let target = target(&mut owner, "private").await;
        let id = target.server_id.clone();
        let stranger = app.other_tenant("tenant-b").await;
        let mut client = app.client_with_key(&stranger.key);

        for rpc in RPCS {
            let outcome = rpc.call(&mut client, &target).await;
            if let Some(reason) = rpc.not_found() {
                let status = expect_err(outcome);
                assert_error(&status, Code::NotFound, reason);
            } else {
                match outcome {
                    Ok(CallOutcome::Listed(ids)) => assert!(
                        !ids.contains(&id) && !ids.contains(&target.webhook_id),
                        "another tenant lists the server or the webhook"
                    ),
                    Ok(CallOutcome::Done) => {}
                    Err(status) => panic!("{rpc:?} as another tenant failed: {status:?}"),
                }
            }
        }
        // The same name is free in another tenant.
        register(&mut client, ssh_server("private")).await;

        let after = get_server(&mut owner, &id).await;
        assert!(after.labels.is_empty(), "another tenant updated the server");
        assert_eq!(after.status, proto::ServerStatus::Pending as i32);
        assert!(is_awaiting_firewall(
            &onboarding_status(&mut owner, &id).await
        ));
        let listed = owner
            .list_servers(ListServersRequest::default())
            .await
            .expect("ListServers")
            .into_inner()
            .servers;
        assert_eq!(listed.len(), 1, "the owner sees only its own server");
        let webhooks = owner
            .list_webhooks(proto::ListWebhooksRequest::default())
            .await
            .expect("ListWebhooks")
            .into_inner()
            .webhooks;
        assert_eq!(
            webhooks.len(),
            1,
            "the owner's webhook is untouched, and only its own"
        );
        app.shutdown().await;
    });
}

#[test]
fn revocation_ends_an_open_watch() {
    block_on(async {
        let app = TestApp::start().await;
        let mut owner = app.client();
        let (id, _) = register_and_settle(&mut owner, ssh_server("watched-by-revoked")).await;
        let key = app.key_with(&["servers:read"]).await;
        let mut client = app.client_with_key(&key.secret);
        let mut watch = open_watch(&mut client, &id, None, true)
            .await
            .expect("WatchOnboarding");
        watch.message(Duration::from_secs(5)).await;

        app.db.revoke_key(key.id).await;
        let revoked_at = Instant::now();
        match watch.next(Duration::from_secs(3)).await {
            WatchEvent::Error(status) => {
                assert_error(&status, Code::Unauthenticated, "API_KEY_REVOKED");
            }
            other => panic!("expected the watch to end with UNAUTHENTICATED, got {other:?}"),
        }
        let elapsed = revoked_at.elapsed();
        assert!(
            elapsed <= Duration::from_millis(1100),
            "the watch of a revoked key stayed open for {elapsed:?}"
        );
        app.shutdown().await;
    });
}

#[test]
fn health_needs_no_key() {
    block_on(async {
        let app = TestApp::start().await;
        // Health follows a probe of the database, which may take a moment after start.
        for service in ["", SERVERS_SERVICE] {
            wait_until(
                &format!("health of {service:?} to be SERVING without a key"),
                Duration::from_secs(5),
                || async {
                    matches!(
                        health(app.grpc_addr, service).await,
                        Ok(ServingStatus::Serving)
                    )
                },
            )
            .await;
        }
        app.shutdown().await;
    });
}

#[test]
fn unknown_methods_are_refused_before_anything_and_make_no_metric_series() {
    block_on(async {
        let app = TestApp::start().await;
        let grpc = tonic::client::Grpc::new(channel(app.grpc_addr).await);
        let call_unknown = |index: usize| {
            let mut grpc = grpc.clone();
            async move {
                grpc.ready().await.expect("a ready channel");
                let path = format!("/dbtrail.servers.v1.ServersService/Nope{index}");
                let result: Result<tonic::Response<dbtrail_servers::proto::Server>, Status> = grpc
                    .unary(
                        tonic::Request::new(dbtrail_servers::proto::GetServerRequest::default()),
                        http::uri::PathAndQuery::try_from(path).expect("a path"),
                        tonic_prost::ProstCodec::default(),
                    )
                    .await;
                let status = result.expect_err("no such method");
                assert_error(&status, Code::Unimplemented, "UNKNOWN_METHOD");
            }
        };
        call_unknown(0).await;
        let series = |metrics: &str| {
            metrics
                .lines()
                .filter(|line| !line.starts_with('#'))
                .count()
        };
        // The stream supervisor's gauges appear with its first sweep; count after it.
        wait_until(
            "the stream gauges to be exported",
            Duration::from_secs(15),
            || async {
                metrics_text(app.http_addr)
                    .await
                    .contains("dbtrail_streams{")
            },
        )
        .await;
        let before = metrics_text(app.http_addr).await;
        assert!(
            before.contains("method=\"unknown\""),
            "they are counted as unknown: {before}"
        );
        for chunk in (1..10_000).collect::<Vec<_>>().chunks(100) {
            futures_util::future::join_all(chunk.iter().map(|&index| call_unknown(index))).await;
        }
        let after = metrics_text(app.http_addr).await;
        assert!(
            !after.contains("Nope"),
            "made-up names are not series: {after}"
        );
        assert_eq!(
            series(&after),
            series(&before),
            "10,000 made-up methods add no series:\n{before}\n---\n{after}"
        );
        app.shutdown().await;
    });
}

/// The value of an unlabelled counter in a /metrics page (0 before its first increment).
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The /metrics page of a replica.
async fn metrics_text(http_addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{http_addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

async fn key_lookups(app: &TestApp) -> f64 {
    counter(
        &metrics_text(app.http_addr).await,
        "dbtrail_auth_key_lookups_total",
    )
}

/// A well-formed key that was never issued, the `index`th of a flood.
fn made_up_key(index: usize) -> String {
    format!("dbt_{index:043}")
}

#[test]
fn a_flood_of_bad_keys_costs_a_bounded_number_of_lookups_and_leaves_good_keys_working() {
    block_on(async {
        let app = TestApp::start().await;
        let mut owner = app.client();
        let server = register(&mut owner, direct_server("flooded")).await;
        let before = key_lookups(&app).await;

        // One bad key, again and again: looked up once.
        let mut repeated = app.client_with_key(&made_up_key(0));
        for _ in 0..200 {
            let status = expect_err(repeated.list_servers(ListServersRequest::default()).await);
            assert_error(&status, Code::Unauthenticated, "INVALID_API_KEY");
        }
        assert_eq!(key_lookups(&app).await - before, 1.0, "a repeated bad key");

        // 10,000 different ones from one address, 32 at a time.
        let started = Instant::now();
        let outcomes = futures_util::stream::iter(1..=10_000)
            .map(|index| {
                let mut client = app.client_with_key(&made_up_key(index));
                async move {
                    let status =
                        expect_err(client.list_servers(ListServersRequest::default()).await);
                    status.code()
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let lookups = key_lookups(&app).await - before;
        // The repeated key's one lookup, the burst (20) and the refill (2 a second).
        let bound = 1.0 + 20.0 + 2.0 * elapsed.ceil();
        assert!(
            lookups <= bound,
            "{lookups} key lookups for 10,000 bad keys in {elapsed:.1} s (bound {bound})"
        );
        let limited = outcomes
            .iter()
            .filter(|code| **code == Code::ResourceExhausted)
            .count();
        assert!(
            limited >= 9_000,
            "{limited} of 10,000 were refused as too many"
        );
        assert!(
            outcomes
                .iter()
                .all(|code| matches!(code, Code::ResourceExhausted | Code::Unauthenticated)),
            "every bad key is refused as unknown or as one too many"
        );
        // The bucket refills at 2 a second, so on a slow machine a token may be back by now: a
        // fresh bad key then costs that token (UNAUTHENTICATED) and the next one is refused.
        let mut status = None;
        for index in 20_000..20_010 {
            let refused = expect_err(
                app.client_with_key(&made_up_key(index))
                    .list_servers(ListServersRequest::default())
                    .await,
            );
            if refused.code() != Code::Unauthenticated {
                status = Some(refused);
                break;
            }
        }
        let status = status.expect("a bad key refused as one too many within 10 tries");
        assert_error(
            &status,
            Code::ResourceExhausted,
            "TOO_MANY_FAILED_AUTHENTICATIONS",
        );
        assert!(
            status.metadata().get("retry-after").is_some(),
            "a retry-after hint: {status:?}"
        );

        // The same address's good key, already known, keeps working.
        owner
            .get_server(GetServerRequest {
                server_id: server.server_id.clone(),
            })
            .await
            .expect("a good key during a flood of bad ones");

        // REST tells the same, as 429 with Retry-After (401 while a refilled token lasts).
        let http = reqwest::Client::new();
        let mut statuses = Vec::new();
        for index in 20_010..20_020 {
            let response = http
                .get(format!("http://{}/servers", app.http_addr))
                .bearer_auth(made_up_key(index))
                .send()
                .await
                .expect("GET /servers");
            statuses.push(response.status().as_u16());
            if response.status().as_u16() != 401 {
                assert!(response.headers().contains_key("retry-after"));
                break;
            }
        }
        assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
        app.shutdown().await;
    });
}
