//! The audit log (issue 28 part 1): every call that changes something is in ListAuditEvents
//! once, with the calling key, the fields it changed and its outcome; no secret is ever in a
//! record; refused calls are recorded (unauthenticated ones only counted); a tenant sees only
//! its own records; the database refuses to update or delete one; retention drops whole old
//! partitions only; the command line's key and tenant changes are recorded; `--trusted-proxies`
//! decides the recorded client address.

use std::time::Duration;

use chrono::Datelike;

use crate::common::mariadb::*;
use crate::common::stream::{restart_at, running, wait_stream};
use crate::common::*;
use crate::rest_common::Rest;
use dbtrail_servers::{
    config::DatabaseConfig,
    domain::{
        TenantId,
        audit::{Actor, AuditEvent, Outcome},
    },
    proto::{self, AuditEvent as Event, ListAuditEventsRequest},
    store::Store,
};
use serde_json::{Value, json};
use tonic::Code;

/// Every audit event of the client's tenant matching `filter`, newest first, page after page.
async fn audit_events(client: &mut Client, filter: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_audit_events(ListAuditEventsRequest {
                page_size: 3,
                page_token,
                filter: filter.to_owned(),
            })
            .await
            .expect("ListAuditEvents")
            .into_inner();
        events.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

/// `message` sent with the request id `id`.
fn with_request_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("an ASCII request id"));
    request
}

/// The one event of the call with request id `id` (a call is recorded exactly once).
fn the_event<'a>(events: &'a [Event], id: &str) -> &'a Event {
    let found: Vec<&Event> = events.iter().filter(|e| e.request_id == id).collect();
    assert_eq!(found.len(), 1, "the events of request {id}: {found:#?}");
    found[0]
}

/// A protobuf Value as JSON (null for none).
fn json_of(value: &Option<prost_types::Value>) -> Value {
    use prost_types::value::Kind;
    match value.as_ref().and_then(|value| value.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(value)) => json!(value),
        Some(Kind::NumberValue(value)) => json!(value),
        Some(Kind::StringValue(value)) => json!(value),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .iter()
                .map(|value| json_of(&Some(value.clone())))
                .collect(),
        ),
        Some(Kind::StructValue(_)) => panic!("no field change is an object"),
    }
}

/// The change of `field` an event lists: (old, new, secret).
fn change(event: &Event, field: &str) -> (Value, Value, String) {
    let change = event
        .changes
        .iter()
        .find(|change| change.field == field)
        .unwrap_or_else(|| panic!("{} has no change of {field}: {event:#?}", event.method));
    (
        json_of(&change.old_value),
        json_of(&change.new_value),
        change.secret.clone(),
    )
}

/// Asserts who made the call and how it ended.
#[track_caller]
fn assert_call(event: &Event, key: &dbtrail_servers::auth::admin::CreatedKey, method: &str) {
    assert_eq!(event.key_id, key.id.to_string(), "{event:#?}");
    assert_eq!(event.method, method, "{event:#?}");
    assert!(event.time.is_some(), "{event:#?}");
    assert_eq!(event.client_address, "127.0.0.1", "{event:#?}");
}

/// Every record as PostgreSQL writes it, one line each, by id.
async fn stored_records(db: &TestDatabase) -> Vec<(String, String)> {
    db.connect()
        .await
        .query(
            "SELECT id::text, audit_events::text FROM audit_events ORDER BY id",
            &[],
        )
        .await
        .expect("the audit records")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

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
            .map(|e| e.time.clone().expect("a time"))
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
fn another_tenants_records_are_invisible() {
    block_on(async {
        let app = TestApp::start().await;
        let mut owner = app.client();
        let server = register(&mut owner, direct_server("mine")).await;
        update_server(
            &mut owner,
            proto::Server {
                server_id: server.server_id.clone(),
                labels: labels(&[("team", "a")]),
                ..Default::default()
            },
            &["labels"],
        )
        .await;
        let stranger = app.other_tenant("tenant-b").await;
        let mut theirs = app.client_with_key(&stranger.key);
        // B sees its own records only: its creation (the command line's) and its call.
        let own = register(&mut theirs, direct_server("theirs")).await;
        let seen = audit_events(&mut theirs, "").await;
        let methods: Vec<&str> = seen.iter().map(|e| e.method.as_str()).collect();
        assert_eq!(
            methods,
            ["RegisterServer", "CreateApiKey", "CreateTenant"],
            "{seen:#?}"
        );
        assert_eq!(seen[0].server_id, own.server_id);
        assert!(seen.iter().all(|e| e.server_id != server.server_id));
        let filtered =
            audit_events(&mut theirs, &format!("server_id = {}", server.server_id)).await;
        assert!(filtered.is_empty(), "{filtered:#?}");

        // B's attempt at A's server is B's record (NOT_FOUND, as for any unknown id), not A's.
        let status = expect_err(
            theirs
                .decommission_server(with_request_id(
                    proto::DecommissionServerRequest {
                        server_id: server.server_id.clone(),
                        ..Default::default()
                    },
                    "probe-a",
                ))
                .await,
        );
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");
        let probe = audit_events(&mut theirs, "outcome = NOT_FOUND").await;
        assert_eq!(the_event(&probe, "probe-a").key_id, {
            let key = &audit_events(&mut theirs, "method = RegisterServer").await[0];
            key.key_id.clone()
        });
        let owners = audit_events(&mut owner, "").await;
        assert!(
            owners.iter().all(|e| e.request_id != "probe-a"),
            "{owners:#?}"
        );

        // A's page token is no token of B's.
        let page = owner
            .list_audit_events(ListAuditEventsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("a page")
            .into_inner();
        assert!(!page.next_page_token.is_empty());
        let status = expect_err(
            theirs
                .list_audit_events(ListAuditEventsRequest {
                    page_size: 1,
                    page_token: page.next_page_token,
                    ..Default::default()
                })
                .await,
        );
        assert_bad_request(&status, &["page_token"]);
        let mine = audit_events(
            &mut owner,
            "method != CreateTenant AND method != CreateApiKey",
        )
        .await;
        let methods: Vec<&str> = mine.iter().map(|e| e.method.as_str()).collect();
        assert_eq!(methods, ["UpdateServer", "RegisterServer"]);
        app.shutdown().await;
    });
}

#[test]
fn rest_lists_audit_events_with_a_filter_and_pages() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("paged")).await;
        for value in ["1", "2", "3"] {
            update_server(
                &mut client,
                proto::Server {
                    server_id: server.server_id.clone(),
                    labels: labels(&[("n", value)]),
                    ..Default::default()
                },
                &["labels"],
            )
            .await;
        }
        let rest = Rest::new(&app);
        let filter = url_encode("method = UpdateServer AND time >= \"2020-01-01T00:00:00Z\"");
        let mut seen = Vec::new();
        let mut path = format!("/audit-events?page_size=2&filter={filter}");
        loop {
            let reply = rest.get(&path).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            let events = reply.json["audit_events"]
                .as_array()
                .expect("a list")
                .clone();
            assert!(events.len() <= 2);
            seen.extend(events);
            match reply.json["next_page_token"].as_str() {
                Some("") | None => break,
                Some(token) => {
                    path = format!(
                        "/audit-events?page_size=2&filter={filter}&page_token={}",
                        url_encode(token)
                    )
                }
            }
        }
        assert_eq!(seen.len(), 3, "{seen:#?}");
        let values: Vec<&Value> = seen
            .iter()
            .map(|event| &event["changes"][0]["new_value"])
            .collect();
        assert_eq!(
            values,
            [&json!("3"), &json!("2"), &json!("1")],
            "newest first"
        );
        let event = &seen[0];
        for key in [
            "event_id",
            "time",
            "key_id",
            "key_name",
            "request_id",
            "method",
            "server_id",
            "changes",
            "outcome",
            "reason",
            "client_address",
            "resource",
        ] {
            assert!(event.get(key).is_some(), "{key} is missing: {event}");
        }
        assert_eq!(event["changes"][0]["field"], "labels.n");
        assert_eq!(event["changes"][0]["old_value"], "2");
        assert_eq!(event["outcome"], "OK");
        assert!(
            event["time"].as_str().expect("a time").ends_with('Z'),
            "{event}"
        );

        // A bad filter names where and what.
        let reply = rest
            .get(&format!(
                "/audit-events?filter={}",
                url_encode("method > UpdateServer")
            ))
            .await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert!(
            reply.body.contains("method compares with = or != only")
                && reply.body.contains("character 10"),
            "{}",
            reply.body
        );
        let reply = rest
            .get(&format!(
                "/audit-events?filter={}",
                url_encode("colour = red")
            ))
            .await;
        assert_eq!(reply.status, 400);
        assert!(
            reply
                .body
                .contains("unknown field \\\"colour\\\" at character 1"),
            "{}",
            reply.body
        );

        // audit:read is needed.
        let writer = app.key_with(&["servers:read", "servers:write"]).await;
        let reply = rest.with_key(&writer.secret).get("/audit-events").await;
        assert_eq!(reply.status, 403, "{}", reply.body);
        app.shutdown().await;
    });
}

/// The text of `value` percent-encoded for a query string.
fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[test]
fn the_database_refuses_to_update_or_delete_a_record() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        register(&mut client, direct_server("kept")).await;
        let before = stored_records(&app.db).await;
        assert!(!before.is_empty());
        let sql = app.db.connect().await;
        let partition = format!("audit_events_{}", chrono::Utc::now().format("%Y%m"));
        for statement in [
            "UPDATE audit_events SET outcome = 'OK', changes = '[]'".to_owned(),
            "DELETE FROM audit_events".to_owned(),
            "TRUNCATE audit_events".to_owned(),
            format!("UPDATE {partition} SET key_name = 'someone else'"),
            format!("DELETE FROM {partition}"),
            format!("TRUNCATE {partition}"),
        ] {
            let error = sql
                .batch_execute(&statement)
                .await
                .expect_err(&format!("{statement} was allowed"));
            let message = error
                .as_db_error()
                .map(|error| error.message().to_owned())
                .unwrap_or_default();
            assert!(message.contains("append-only"), "{statement}: {error:?}");
        }
        assert_eq!(stored_records(&app.db).await, before);
        app.shutdown().await;
    });
}

#[test]
fn retention_drops_only_partitions_wholly_older_than_it() {
    block_on(async {
        let db = std::sync::Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let store = Store::connect(&DatabaseConfig {
            database_url: Some(db.url.clone()),
            pool_size: 2,
            pool_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        })
        .expect("Store::connect");
        let now = chrono::Utc::now();
        let retention = chrono::Duration::days(60);
        let cutoff = now - retention;
        // Recorded as the store records: 100 days ago (its month ended before the cutoff), at
        // the first instant of the cutoff's month (older than the retention, but its month is
        // not wholly so), and 10 days ago.
        let cutoff_month = cutoff
            .date_naive()
            .with_day(1)
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .expect("a month's start")
            .and_utc();
        let times = [
            now - chrono::Duration::days(100),
            cutoff_month,
            now - chrono::Duration::days(10),
        ];
        for (index, time) in times.iter().enumerate() {
            store
                .prepare_audit_partitions(*time, *time)
                .await
                .expect("the month's partition");
            let actor = Actor {
                tenant_id: TenantId::from_uuid(tenant.id),
                key_id: None,
                key_name: "import".into(),
                request_id: format!("old-{index}"),
                method: "UpdateServer".into(),
                client_address: None,
            };
            let mut event = AuditEvent::new(actor, None, Vec::new(), Outcome::ok());
            event.time = *time;
            store
                .record_audit_event(&event)
                .await
                .expect("an old record");
        }
        let month =
            |time: chrono::DateTime<chrono::Utc>| format!("audit_events_{}", time.format("%Y%m"));
        let partitions = store.audit_partitions().await.expect("partitions");
        for time in times {
            assert!(partitions.contains(&month(time)), "{partitions:?}");
        }

        // The replica's housekeeping runs at its start.
        let app = TestApp::start_on(
            db.clone(),
            tenant.clone(),
            ReplicaOptions {
                extra_args: vec!["--audit-retention".into(), "60days".into()],
                ..ReplicaOptions::default()
            },
        )
        .await;
        let expired = month(times[0]);
        wait_until(
            "the expired partition to go",
            Duration::from_secs(10),
            || async {
                !store
                    .audit_partitions()
                    .await
                    .expect("partitions")
                    .contains(&expired)
            },
        )
        .await;
        let partitions = store.audit_partitions().await.expect("partitions");
        for kept in [month(times[1]), month(times[2]), month(now)] {
            assert!(
                partitions.contains(&kept),
                "{kept} was dropped: {partitions:?}"
            );
        }
        let kept = audit_events(&mut app.client(), "method = UpdateServer").await;
        let ids: Vec<&str> = kept.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(ids, ["old-2", "old-1"], "{kept:#?}");
        app.shutdown().await;
    });
}

#[test]
fn the_command_lines_key_and_tenant_changes_are_recorded() {
    block_on(async {
        let db = std::sync::Arc::new(TestDatabase::create().await);
        let env = [("DATABASE_URL", db.url.as_str())];
        run_cli(&["tenants", "create", "acme"], &env)
            .await
            .assert_success();
        let created = run_cli(
            &[
                "keys",
                "create",
                "--tenant",
                "acme",
                "--permissions",
                "servers:read,audit:read",
                "--name",
                "ci-key",
            ],
            &env,
        )
        .await;
        created.assert_success();
        let secret = created.stdout.trim().to_owned();
        let key_id = created
            .stderr
            .split_whitespace()
            .find_map(|word| uuid::Uuid::parse_str(word).ok())
            .expect("the new key's id");
        run_cli(&["keys", "revoke", &key_id.to_string()], &env)
            .await
            .assert_success();

        let tenant = db.admin().await;
        let reader = tenant
            .create_key("acme", &["audit:read"], Some("auditor"), None)
            .await
            .expect("a key to read with");
        let app = TestApp::start_on(
            db.clone(),
            Tenant {
                name: "acme".into(),
                id: uuid::Uuid::nil(),
                key: reader.secret.clone(),
            },
            ReplicaOptions::default(),
        )
        .await;
        let events = audit_events(&mut app.client(), "").await;
        let methods: Vec<&str> = events.iter().map(|e| e.method.as_str()).collect();
        assert_eq!(
            methods,
            [
                "CreateApiKey",
                "RevokeApiKey",
                "CreateApiKey",
                "CreateTenant"
            ],
            "{events:#?}"
        );
        let (created_by_cli, revoked) = (&events[2], &events[1]);
        for event in [created_by_cli, revoked, &events[3]] {
            assert!(event.key_id.is_empty(), "no key made the call: {event:#?}");
            assert!(
                event.key_name.starts_with("cli:"),
                "the command line and its OS user: {event:#?}"
            );
            assert!(event.client_address.is_empty());
            assert_eq!(event.outcome, "OK");
        }
        assert_eq!(created_by_cli.resource, format!("apiKeys/{key_id}"));
        assert_eq!(
            change(created_by_cli, "name"),
            (Value::Null, json!("ci-key"), String::new())
        );
        assert_eq!(
            change(created_by_cli, "permissions"),
            (
                Value::Null,
                json!(["servers:read", "audit:read"]),
                String::new()
            )
        );
        assert_eq!(revoked.resource, format!("apiKeys/{key_id}"));
        let (old, new, _) = change(revoked, "revoked_at");
        assert_eq!(old, Value::Null);
        assert!(
            new.as_str().is_some_and(|time| time.starts_with("20")),
            "{new}"
        );
        assert!(events[3].resource.starts_with("tenants/"));

        let stored = stored_records(&db).await;
        let body = &secret[4..];
        assert!(
            !stored.iter().any(|(_, text)| text.contains(body)),
            "the key is in the audit log"
        );
        app.shutdown().await;
    });
}

#[test]
fn trusted_proxies_decide_the_recorded_client_address() {
    block_on(async {
        // Behind a proxy on loopback: the right-most address it did not add is the client's.
        let app = TestApp::start_with(ReplicaOptions {
            extra_args: vec!["--trusted-proxies".into(), "127.0.0.0/8,10.0.0.0/8".into()],
            ..ReplicaOptions::default()
        })
        .await;
        let rest = Rest::new(&app);
        let reply = rest
            .exchange(
                rest.request(reqwest::Method::POST, "/servers")
                    .header("x-forwarded-for", "192.0.2.66, 198.51.100.7, 10.1.2.3")
                    .header("x-request-id", "via-proxy")
                    .json(&json!({
                        "name": "proxied", "host": "127.0.0.1", "mysql_user": "u",
                        "connection_method": "direct"
                    })),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        let mut grpc = with_request_id(
            proto::RegisterServerRequest {
                server: Some(direct_server("proxied-grpc")),
                ..Default::default()
            },
            "via-proxy-grpc",
        );
        grpc.metadata_mut()
            .insert("x-forwarded-for", "203.0.113.50".parse().expect("ASCII"));
        app.client()
            .register_server(grpc)
            .await
            .expect("RegisterServer");
        let events = audit_events(&mut app.client(), "").await;
        assert_eq!(
            the_event(&events, "via-proxy").client_address,
            "198.51.100.7"
        );
        assert_eq!(
            the_event(&events, "via-proxy-grpc").client_address,
            "203.0.113.50"
        );
        app.shutdown().await;

        // Without the flag the header is the client's own word: the peer is recorded.
        let app = TestApp::start().await;
        let rest = Rest::new(&app);
        let reply = rest
            .exchange(
                rest.request(reqwest::Method::POST, "/servers")
                    .header("x-forwarded-for", "198.51.100.7")
                    .header("x-request-id", "spoofed")
                    .json(&json!({
                        "name": "direct", "host": "127.0.0.1", "mysql_user": "u",
                        "connection_method": "direct"
                    })),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        let events = audit_events(&mut app.client(), "").await;
        assert_eq!(the_event(&events, "spoofed").client_address, "127.0.0.1");
        app.shutdown().await;

        // The flag is checked: a range of everything, or no range, does not start.
        for bad in ["0.0.0.0/0", "10.0.0.0/40", "proxy.internal"] {
            let output = run_cli(&["serve", "--trusted-proxies", bad], &[]).await;
            assert!(!output.status.success(), "--trusted-proxies {bad} started");
            assert!(
                output.stderr.contains("--trusted-proxies") && output.stderr.contains(bad),
                "{bad}: {}",
                output.stderr
            );
        }
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
