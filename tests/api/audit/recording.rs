//! Recording: each call that changes something once, with its key, fields and outcome; no
//! secret value; refusals recorded, unauthenticated calls only counted.

use super::*;
use crate::common::mariadb::*;
use crate::common::stream::{restart_at, running, wait_stream};
use crate::rest_common::Rest;
use dbtrail_servers::proto;
use tonic::Code;

#[test]
fn each_mutating_call_is_recorded_once_with_its_key_fields_and_outcome() {
    block_on(async {
        let app = TestApp::start().await;
        let admin = app.db.admin().await;
        let deployer = admin
            .create_key(&app.tenant.name, &ALL_PERMISSIONS, Some("deployer"), None)
            .await
            .expect("a named key");
        let mut client = app.client_with_key(&deployer.secret);

        let registered = client
            .register_server(with_request_id(
                proto::RegisterServerRequest {
                    server: Some(ssh_server("audited")),
                    ..Default::default()
                },
                "audit-register",
            ))
            .await
            .expect("RegisterServer")
            .into_inner();
        let id = registered.server_id.clone();
        let first_records = stored_records(&app.db).await;
        awaiting_firewall(&client, &id).await;
        client
            .confirm_firewall(with_request_id(
                proto::ConfirmFirewallRequest {
                    server_id: id.clone(),
                },
                "audit-confirm",
            ))
            .await
            .expect("ConfirmFirewall");
        let moved = proto::Server {
            server_id: id.clone(),
            port: 3307,
            labels: labels(&[("env", "prod")]),
            ..Default::default()
        };
        client
            .update_server(with_request_id(
                update_request(moved, &["port", "labels"]),
                "audit-update",
            ))
            .await
            .expect("UpdateServer");
        let password = proto::Server {
            server_id: id.clone(),
            mysql_password: "another-password".into(),
            ..Default::default()
        };
        client
            .update_server(with_request_id(
                update_request(password, &["mysql_password"]),
                "audit-password",
            ))
            .await
            .expect("UpdateServer of the password");
        for (method, request_id) in [("pause", "audit-pause"), ("resume", "audit-resume")] {
            let server_id = id.clone();
            let outcome = if method == "pause" {
                client
                    .pause_stream(with_request_id(
                        proto::PauseStreamRequest { server_id },
                        request_id,
                    ))
                    .await
            } else {
                client
                    .resume_stream(with_request_id(
                        proto::ResumeStreamRequest { server_id },
                        request_id,
                    ))
                    .await
            };
            outcome.unwrap_or_else(|status| panic!("{method}: {status:?}"));
        }
        let refused_retry = expect_err(
            client
                .retry_onboarding(with_request_id(
                    proto::RetryOnboardingRequest {
                        server_id: id.clone(),
                    },
                    "audit-retry",
                ))
                .await,
        );
        assert_error(
            &refused_retry,
            Code::FailedPrecondition,
            "ONBOARDING_NOT_FAILED",
        );
        let refused_restart = expect_err(
            client
                .restart_stream(with_request_id(
                    proto::RestartStreamRequest {
                        server_id: id.clone(),
                        current_position: true,
                        ..Default::default()
                    },
                    "audit-restart",
                ))
                .await,
        );
        assert_eq!(refused_restart.code(), Code::FailedPrecondition);
        client
            .decommission_server(with_request_id(
                proto::DecommissionServerRequest {
                    server_id: id.clone(),
                    ..Default::default()
                },
                "audit-decommission",
            ))
            .await
            .expect("DecommissionServer");

        let events = audit_events(&mut app.client(), "").await;
        let of_server: Vec<&Event> = events.iter().filter(|e| e.server_id == id).collect();
        assert_eq!(of_server.len(), 9, "one record per call: {of_server:#?}");
        let times: Vec<_> = events
            .iter()
            .map(|e| e.time.expect("a time"))
            .map(|t| (t.seconds, t.nanos))
            .collect();
        assert!(
            times.windows(2).all(|pair| pair[0] >= pair[1]),
            "newest first: {times:?}"
        );

        let register = the_event(&events, "audit-register");
        assert_call(register, &deployer, "RegisterServer");
        assert_eq!(register.key_name, "deployer");
        assert_eq!(
            (register.outcome.as_str(), register.reason.as_str()),
            ("OK", "")
        );
        assert_eq!(register.server_id, id);
        assert_eq!(register.resource, format!("servers/{id}"));
        assert_eq!(
            change(register, "name"),
            (Value::Null, json!("audited"), String::new())
        );
        assert_eq!(
            change(register, "connection_method"),
            (Value::Null, json!("ssh_tunnel"), String::new())
        );
        assert_eq!(
            change(register, "mysql_password"),
            (Value::Null, Value::Null, "set".into())
        );
        assert_eq!(
            change(register, "ssh_tunnel.private_key"),
            (Value::Null, Value::Null, "set".into())
        );

        let confirm = the_event(&events, "audit-confirm");
        assert_call(confirm, &deployer, "ConfirmFirewall");
        assert_eq!(
            change(confirm, "onboarding_step"),
            (
                json!("awaiting_firewall"),
                json!("waiting_for_agent"),
                String::new()
            )
        );

        let update = the_event(&events, "audit-update");
        assert_call(update, &deployer, "UpdateServer");
        assert_eq!(
            change(update, "port"),
            (json!(3306.0), json!(3307.0), String::new())
        );
        assert_eq!(
            change(update, "labels.env"),
            (Value::Null, json!("prod"), String::new())
        );
        assert!(
            !update.changes.iter().any(|c| c.field == "name"),
            "only what changed: {update:#?}"
        );

        let password = the_event(&events, "audit-password");
        assert_eq!(
            change(password, "mysql_password"),
            (Value::Null, Value::Null, "changed".into())
        );

        let pause = the_event(&events, "audit-pause");
        assert_call(pause, &deployer, "PauseStream");
        assert_eq!(
            change(pause, "stream_paused"),
            (json!(false), json!(true), String::new())
        );
        let resume = the_event(&events, "audit-resume");
        assert_eq!(
            change(resume, "stream_paused"),
            (json!(true), json!(false), String::new())
        );

        for (request_id, method, reason) in [
            ("audit-retry", "RetryOnboarding", "ONBOARDING_NOT_FAILED"),
            ("audit-restart", "RestartStream", "NOT_STREAMING"),
        ] {
            let refused = the_event(&events, request_id);
            assert_call(refused, &deployer, method);
            assert_eq!(refused.outcome, "FAILED_PRECONDITION", "{refused:#?}");
            assert_eq!(refused.reason, reason, "{refused:#?}");
            assert_eq!(refused.server_id, id);
            assert!(refused.changes.is_empty(), "{refused:#?}");
        }

        let decommission = the_event(&events, "audit-decommission");
        assert_call(decommission, &deployer, "DecommissionServer");
        assert_eq!(
            change(decommission, "status"),
            (json!("pending"), json!("decommissioned"), String::new())
        );

        // Nothing rewrote the first records while the others were written.
        let now = stored_records(&app.db).await;
        for record in &first_records {
            assert!(now.contains(record), "{record:?} changed or went");
        }
        app.shutdown().await;
    });
}

#[test]
fn no_secret_value_reaches_an_audit_record() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let first = "first-Pa55word-7f3c9";
        let second = "second-Pa55word-2b81d";
        let refused = "refused-Pa55word-c0a4e";
        let server = register(
            &mut client,
            proto::Server {
                mysql_password: first.into(),
                ..ssh_server("secretive")
            },
        )
        .await;
        let id = server.server_id.clone();
        update_server(
            &mut client,
            proto::Server {
                server_id: id.clone(),
                mysql_password: second.into(),
                ..Default::default()
            },
            &["mysql_password"],
        )
        .await;
        update_server(
            &mut client,
            proto::Server {
                server_id: id.clone(),
                ssh_tunnel: Some(proto::SshTunnel {
                    private_key: TEST_PRIVATE_KEY.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["ssh_tunnel.private_key"],
        )
        .await;
        // A refused call's secret is not recorded either.
        let status = register_error(
            &mut client,
            proto::Server {
                port: 70_000,
                mysql_password: refused.into(),
                ..direct_server("refused")
            },
        )
        .await;
        assert_eq!(status.code(), Code::InvalidArgument);

        let sql = app.db.connect().await;
        let stored: String = sql
            .query_one(
                "SELECT string_agg(audit_events::text, E'\\n') FROM audit_events",
                &[],
            )
            .await
            .expect("the audit log as text")
            .get(0);
        let row = sql
            .query_one(
                "SELECT encode(mysql_password_sealed, 'hex'), encode(mysql_password_sealed, \
                 'base64'), encode(ssh_private_key_sealed, 'hex') FROM servers \
                 WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .expect("the sealed secrets");
        let mut forbidden: Vec<String> = (0..3).map(|index| row.get(index)).collect();
        forbidden.extend([first, second, refused, TEST_PRIVATE_KEY_BODY_LINE].map(str::to_owned));
        forbidden.push("OPENSSH PRIVATE KEY".to_owned());
        for secret in &forbidden {
            let probe = &secret[..secret.len().min(40)];
            assert!(
                !stored.contains(probe),
                "a secret ({probe}) is in the audit log:\n{stored}"
            );
        }
        assert_eq!(
            // A row as text doubles the quotes of its JSON.
            stored.matches(r#"""secret"": ""changed"""#).count(),
            2,
            "the password's and the key's changes: {stored}"
        );

        let rest = Rest::new(&app).get("/audit-events?page_size=1000").await;
        assert_eq!(rest.status, 200, "{}", rest.body);
        for secret in &forbidden {
            assert!(!rest.body.contains(&secret[..secret.len().min(40)]));
        }
        app.shutdown().await;
    });
}

/// The count of one series of `dbtrail_grpc_calls_total` in /metrics (0 before its first call).
async fn calls_counted(app: &TestApp, method: &str, code: &str) -> f64 {
    let page = reqwest::get(format!("http://{}/metrics", app.http_addr))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics page");
    page.lines()
        .filter(|line| line.starts_with("dbtrail_grpc_calls_total{"))
        .filter(|line| {
            line.contains(&format!("method=\"{method}\""))
                && line.contains(&format!("code=\"{code}\""))
        })
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn refused_calls_are_recorded_and_unauthenticated_ones_only_counted() {
    block_on(async {
        let app = TestApp::start().await;
        let mut owner = app.client();
        let server = register(&mut owner, direct_server("guarded")).await;
        let id = server.server_id.clone();

        // A key without the permission.
        let reader = app
            .db
            .admin()
            .await
            .create_key(&app.tenant.name, &["servers:read"], Some("reader"), None)
            .await
            .expect("a read-only key");
        let status = expect_err(
            app.client_with_key(&reader.secret)
                .decommission_server(with_request_id(
                    proto::DecommissionServerRequest {
                        server_id: id.clone(),
                        ..Default::default()
                    },
                    "denied-decommission",
                ))
                .await,
        );
        assert_error(&status, Code::PermissionDenied, "MISSING_PERMISSION");

        // Bad input, and a server that does not exist.
        let status = expect_err(
            owner
                .update_server(with_request_id(
                    update_request(
                        proto::Server {
                            server_id: id.clone(),
                            port: 70_000,
                            ..Default::default()
                        },
                        &["port"],
                    ),
                    "invalid-update",
                ))
                .await,
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        let unknown = uuid::Uuid::now_v7().to_string();
        let status = expect_err(
            owner
                .confirm_firewall(with_request_id(
                    proto::ConfirmFirewallRequest {
                        server_id: unknown.clone(),
                    },
                    "missing-confirm",
                ))
                .await,
        );
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");
        // A REST body that is not JSON: refused before it becomes a call, recorded the same.
        let reply = Rest::new(&app)
            .exchange(
                Rest::new(&app)
                    .request(reqwest::Method::PATCH, &format!("/servers/{id}"))
                    .header("content-type", "application/json")
                    .header("x-request-id", "malformed-rest")
                    .body("{not json"),
            )
            .await;
        assert_eq!(reply.status, 400, "{}", reply.body);

        // Unauthenticated: counted, not recorded.
        let before_rows = stored_records(&app.db).await.len();
        let counted = calls_counted(&app, "DecommissionServer", "Unauthenticated").await;
        for authorization in [None, Some("Bearer dbt_not-a-key"), Some("Bearer nothing")] {
            let status = expect_err(
                app.client_with_authorization(authorization)
                    .decommission_server(proto::DecommissionServerRequest {
                        server_id: id.clone(),
                        ..Default::default()
                    })
                    .await,
            );
            assert_eq!(status.code(), Code::Unauthenticated);
        }
        assert_eq!(stored_records(&app.db).await.len(), before_rows);
        assert_eq!(
            calls_counted(&app, "DecommissionServer", "Unauthenticated").await,
            counted + 3.0
        );

        let events = audit_events(&mut owner, "outcome != OK").await;
        let denied = the_event(&events, "denied-decommission");
        assert_eq!(denied.key_id, reader.id.to_string());
        assert_eq!(denied.key_name, "reader");
        assert_eq!(denied.method, "DecommissionServer");
        assert_eq!(
            (denied.outcome.as_str(), denied.reason.as_str()),
            ("PERMISSION_DENIED", "MISSING_PERMISSION")
        );
        assert_eq!(denied.client_address, "127.0.0.1");
        let invalid = the_event(&events, "invalid-update");
        assert_eq!(
            (invalid.outcome.as_str(), invalid.reason.as_str()),
            ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
        );
        assert_eq!(invalid.server_id, id, "the server the refused call named");
        let missing = the_event(&events, "missing-confirm");
        assert_eq!(
            (missing.outcome.as_str(), missing.reason.as_str()),
            ("NOT_FOUND", "SERVER_NOT_FOUND")
        );
        assert_eq!(missing.server_id, unknown);
        let malformed = the_event(&events, "malformed-rest");
        assert_eq!(malformed.method, "UpdateServer");
        assert_eq!(
            (malformed.outcome.as_str(), malformed.reason.as_str()),
            ("INVALID_ARGUMENT", "MALFORMED_BODY")
        );
        assert_eq!(
            events.len(),
            4,
            "the refusals and nothing else: {events:#?}"
        );
        app.shutdown().await;
    });
}

#[test]
fn a_retry_and_a_stream_restart_are_recorded_with_what_they_moved() {
    block_on(async {
        let mariadb = onboardable_mariadb().await;
        let app = mysql_app().await;
        let mut client = app.client();

        // Nothing listens on this port: onboarding fails, and the retry puts it back to work.
        let mut unreachable = direct_server("unreachable");
        unreachable.port = i32::from(free_port());
        let failing = register(&mut client, unreachable).await.server_id;
        let status = wait_settled(&client, &failing).await;
        assert_eq!(status.server_status, proto::ServerStatus::Error as i32);
        client
            .retry_onboarding(with_request_id(
                proto::RetryOnboardingRequest {
                    server_id: failing.clone(),
                },
                "audit-retry",
            ))
            .await
            .expect("RetryOnboarding");

        // An active server's stream, restarted from the start of its binlog file.
        let id = register(&mut client, mariadb.server("streamed", USER, PASSWORD))
            .await
            .server_id;
        assert_active(&wait_settled(&client, &id).await);
        let running_server = wait_stream(&mut client, &id, "the stream to run", running).await;
        let checkpoint = running_server.stream.expect("a stream");
        let file = mariadb.master_status().await.expect("binlog on").file;
        client
            .restart_stream(with_request_id(restart_at(&id, &file, 4), "audit-restart"))
            .await
            .expect("RestartStream");

        let events = audit_events(&mut client, "outcome = OK").await;
        let retry = the_event(&events, "audit-retry");
        assert_eq!(retry.method, "RetryOnboarding");
        assert_eq!(retry.server_id, failing);
        assert_eq!(
            change(retry, "status"),
            (json!("error"), json!("pending"), String::new())
        );
        let restart = the_event(&events, "audit-restart");
        assert_eq!(restart.method, "RestartStream");
        assert_eq!(restart.server_id, id);
        assert_eq!(
            change(restart, "stream.state"),
            (json!("running"), json!("starting"), String::new())
        );
        let (old, new, _) = change(restart, "stream.binlog_position");
        assert_eq!(new, json!(4.0));
        assert!(
            old.as_f64().is_some_and(|position| position > 4.0),
            "the checkpoint it moved from ({checkpoint:?}): {old}"
        );
        app.shutdown().await;
    });
}
