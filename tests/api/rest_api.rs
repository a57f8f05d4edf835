//! The REST translation through a real HTTP client on a real port: the exact JSON of every route
//! compared with what gRPC says, the error mapping for every code the service returns and for the
//! translation's own failures, PATCH semantics, the OpenAPI document validated as OpenAPI 3.1, and
//! real `curl` driving a server's life.
//!
//! Every server registered here points at 127.0.0.1 or localhost.

use std::sync::Arc;
use std::time::Duration;

use crate::common::mariadb;
use crate::common::*;
use crate::rest_common::*;
use dbtrail_servers::proto;
use reqwest::Method;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(15);

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}

/// Waits until a server of the core-steps app rests at waiting_for_agent, so that nothing
/// changes it behind the test's back.
async fn settled(rest: &Rest, server_id: &str) -> Value {
    rest.wait_for_onboarding(server_id, "onboarding to rest", SETTLE, |status| {
        status["current_step"] == "waiting_for_agent"
            && status["steps"][2]["status"] == "in_progress"
            && status["steps"][2]["message"]
                .as_str()
                .is_some_and(|message| message.contains("no agent can run"))
    })
    .await
}

async fn grpc_server(app: &TestApp, server_id: &str) -> Value {
    server_json(&get_server(&mut app.client(), server_id).await)
}

async fn grpc_onboarding(app: &TestApp, server_id: &str) -> Value {
    onboarding_json(&onboarding_status(&mut app.client(), server_id).await)
}

#[track_caller]
fn assert_timestamp(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("expected a timestamp, got {value}"));
    assert!(
        text.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "not an RFC 3339 UTC timestamp: {text}"
    );
}

#[track_caller]
fn assert_server_shape(server: &Value) {
    assert_eq!(keys(server), SERVER_KEYS, "{server:#}");
    assert_timestamp(&server["created_at"]);
    assert_timestamp(&server["updated_at"]);
    assert_eq!(
        keys(&server["stream_options"]),
        ["exclude_tables", "schemas", "ssl_mode", "tables"]
    );
    if !server["ssh_tunnel"].is_null() {
        assert_eq!(
            keys(&server["ssh_tunnel"]),
            [
                "has_private_key",
                "host",
                "host_key_fingerprint",
                "port",
                "user"
            ]
        );
    }
    assert_no_secret(&server.to_string());
}

#[track_caller]
fn assert_onboarding_shape(status: &Value) {
    assert_eq!(keys(status), ONBOARDING_KEYS, "{status:#}");
    let steps = status["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps
        .iter()
        .map(|step| step["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, STEP_NAMES, "six steps in order: {status:#}");
    for step in steps {
        assert_eq!(keys(step), STEP_KEYS, "{step:#}");
        match step["status"].as_str() {
            Some("pending") => {
                assert!(
                    step["started_at"].is_null() && step["completed_at"].is_null(),
                    "{step}"
                );
            }
            Some("in_progress") => {
                assert_timestamp(&step["started_at"]);
                assert!(step["completed_at"].is_null(), "{step}");
            }
            Some("completed") => {
                assert_timestamp(&step["started_at"]);
                assert_timestamp(&step["completed_at"]);
                assert!(step["error"].is_null(), "{step}");
            }
            Some("failed") => assert!(step["error"].is_string(), "{step}"),
            other => panic!("unknown step status {other:?}"),
        }
    }
    // agent_outbound_ip is a string exactly while the firewall is awaited.
    assert_eq!(
        status["agent_outbound_ip"].is_string(),
        status["current_step"] == "awaiting_firewall",
        "{status:#}"
    );
    assert_no_secret(&status.to_string());
}

#[test]
fn every_route_answers_the_exact_json_of_api_md() {
    block_on(async {
        let mysql = mariadb::mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.orders (id BIGINT PRIMARY KEY, total DECIMAL(10, 2)) ENGINE=InnoDB",
        ])
        .await;
        let app = mariadb::mysql_app().await;
        let rest = Rest::new(&app);

        // RegisterServer: 201, Location, every field, the secrets only as has_*.
        let mut body = ssh_server_json("orders-primary");
        body["labels"] = json!({"team": "payments"});
        let registered = rest.register(&body).await;
        assert_server_shape(&registered);
        let id = registered["server_id"].as_str().unwrap().to_owned();
        assert_eq!(registered["name"], "orders-primary");
        assert_eq!(registered["connection_method"], "ssh_tunnel");
        assert_eq!(registered["status"], "pending");
        assert_eq!(registered["has_mysql_password"], true);
        assert_eq!(registered["error"], Value::Null);
        assert_eq!(registered["decommissioned_at"], Value::Null);
        assert_eq!(registered["labels"], json!({"team": "payments"}));
        assert_eq!(
            registered["ssh_tunnel"],
            json!({"host": "localhost", "port": 22, "user": "ec2-user", "has_private_key": true,
                       "host_key_fingerprint": ""})
        );
        assert_eq!(
            registered["stream_options"],
            json!({"schemas": [], "tables": [], "exclude_tables": [], "ssl_mode": "preferred"})
        );

        // GetOnboardingStatus while the firewall is awaited: agent_outbound_ip set, error null.
        let awaiting = rest
            .wait_for_onboarding(&id, "awaiting_firewall", SETTLE, |status| {
                status["current_step"] == "awaiting_firewall" && status["steps"][1]["message"] != ""
            })
            .await;
        assert_onboarding_shape(&awaiting);
        assert_eq!(awaiting["agent_outbound_ip"], AGENT_OUTBOUND_IP);
        assert_eq!(awaiting["error"], Value::Null);
        assert_eq!(awaiting["server_status"], "pending");
        assert_eq!(awaiting["steps"][0]["status"], "completed");
        assert_eq!(awaiting["steps"][1]["status"], "in_progress");
        assert_eq!(awaiting, grpc_onboarding(&app, &id).await);

        // GetServer and ListServers say what gRPC says, field for field.
        let got = rest.get(&format!("/servers/{id}")).await;
        assert_eq!(got.status, 200, "{}", got.body);
        assert_server_shape(&got.json);
        assert_eq!(got.json["onboarding_step"], "awaiting_firewall");
        assert_eq!(got.json, grpc_server(&app, &id).await);
        let listed = rest.get("/servers").await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        assert_eq!(keys(&listed.json), ["next_page_token", "servers"]);
        assert_eq!(listed.json["next_page_token"], "");
        assert_eq!(listed.json["servers"], json!([got.json]));

        // UpdateServer: only the labels sent change.
        let updated = rest
            .patch(
                &format!("/servers/{id}"),
                &json!({"labels": {"team": "billing"}}),
            )
            .await;
        assert_eq!(updated.status, 200, "{}", updated.body);
        assert_server_shape(&updated.json);
        assert_eq!(updated.json["labels"], json!({"team": "billing"}));
        assert_eq!(
            at_stored_precision(&updated.json),
            grpc_server(&app, &id).await
        );

        // ConfirmFirewall: exactly {"status": "confirmed"}; then agent_outbound_ip goes back to
        // null.
        let confirmed = rest
            .post(&format!("/servers/{id}/confirm-firewall"), &json!({}))
            .await;
        assert_eq!(confirmed.status, 200, "{}", confirmed.body);
        assert_eq!(confirmed.json, json!({"status": "confirmed"}));
        let moved_on = rest
            .wait_for_onboarding(&id, "awaiting_firewall to complete", SETTLE, |status| {
                status["steps"][1]["status"] == "completed"
            })
            .await;
        assert_onboarding_shape(&moved_on);
        assert_eq!(moved_on["agent_outbound_ip"], Value::Null);

        // DecommissionServer: status decommissioned, onboarding_step null, decommissioned_at set.
        let decommissioned = rest.delete(&format!("/servers/{id}")).await;
        assert_eq!(decommissioned.status, 200, "{}", decommissioned.body);
        assert_server_shape(&decommissioned.json);
        assert_eq!(decommissioned.json["status"], "decommissioned");
        assert_eq!(decommissioned.json["onboarding_step"], Value::Null);
        assert_timestamp(&decommissioned.json["decommissioned_at"]);
        assert_eq!(
            at_stored_precision(&decommissioned.json),
            grpc_server(&app, &id).await
        );
        let final_status = rest
            .get(&format!("/servers/{id}/onboarding-status"))
            .await
            .json;
        assert_onboarding_shape(&final_status);
        assert_eq!(final_status["current_step"], Value::Null);
        assert_eq!(final_status["server_status"], "decommissioned");

        // WatchOnboarding of a decommissioned server: its status, once, then the end.
        let watched = rest
            .get(&format!("/servers/{id}/onboarding-status/watch"))
            .await;
        assert_eq!(watched.status, 200, "{}", watched.body);
        assert_eq!(watched.header("content-type"), "application/x-ndjson");
        let lines: Vec<Value> = watched
            .body
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(lines, [json!({ "result": final_status })]);

        // A server that onboards completely: current_step, error and agent_outbound_ip all null.
        let mut good = direct_server_json("orders-replica");
        good["port"] = json!(mysql.port);
        good["mysql_user"] = json!(mariadb::USER);
        good["mysql_password"] = json!(mariadb::PASSWORD);
        let good_id = rest.register(&good).await["server_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let active = rest
            .wait_for_onboarding(&good_id, "active", mariadb::ONBOARDING_TIMEOUT, |status| {
                status["server_status"] != "pending"
            })
            .await;
        assert_onboarding_shape(&active);
        assert_eq!(active["server_status"], "active", "{active:#}");
        assert_eq!(active["current_step"], Value::Null);
        assert_eq!(active["error"], Value::Null);
        assert_eq!(active["agent_outbound_ip"], Value::Null);
        assert_eq!(
            active["steps"][1]["message"],
            "auto-completed: only SSH tunnels need a firewall rule"
        );
        let active_server = rest.get(&format!("/servers/{good_id}")).await.json;
        assert_eq!(active_server["status"], "active");
        assert_eq!(active_server["onboarding_step"], Value::Null);
        // The stream's progress is live, so two reads may differ there: compare its shape only.
        let mut active_server = active_server;
        let mut grpc_active = grpc_server(&app, &good_id).await;
        let (rest_stream, grpc_stream) =
            (active_server["stream"].take(), grpc_active["stream"].take());
        assert_eq!(keys(&rest_stream), keys(&grpc_stream), "{rest_stream:#}");
        assert_eq!(active_server, grpc_active);

        // A server whose login fails: error set, on the server and on its failed step.
        let mut bad = direct_server_json("orders-broken");
        bad["port"] = json!(mysql.port);
        bad["mysql_user"] = json!(mariadb::USER);
        bad["mysql_password"] = json!("not-the-password");
        let bad_id = rest.register(&bad).await["server_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let failed = rest
            .wait_for_onboarding(
                &bad_id,
                "a failed login",
                mariadb::ONBOARDING_TIMEOUT,
                |status| status["server_status"] == "error",
            )
            .await;
        assert_onboarding_shape(&failed);
        assert_eq!(failed["current_step"], "waiting_for_agent");
        assert!(failed["error"].is_string(), "{failed:#}");
        assert_eq!(failed["steps"][2]["status"], "failed");
        assert_eq!(failed["steps"][2]["error"], failed["error"]);
        let failed_server = rest.get(&format!("/servers/{bad_id}")).await.json;
        assert_eq!(failed_server["status"], "error");
        assert_eq!(failed_server["error"], failed["error"]);

        // RetryOnboarding: the status again, pending, the failed step back in the running.
        let retried = rest
            .post(&format!("/servers/{bad_id}/retry-onboarding"), &json!({}))
            .await;
        assert_eq!(retried.status, 200, "{}", retried.body);
        assert_onboarding_shape(&retried.json);
        assert_eq!(retried.json["server_id"], bad_id.as_str());
        assert_eq!(retried.json["server_status"], "pending");
        assert_eq!(retried.json["error"], Value::Null);
        assert_eq!(retried.json["current_step"], "waiting_for_agent");

        app.shutdown().await;
    });
}

#[test]
fn every_error_code_maps_to_its_http_status_and_status_body() {
    block_on(async {
        let app = TestApp::start_with_limit(ReplicaOptions::default(), Some(2)).await;
        let rest = Rest::new(&app);
        let direct = rest.register(&direct_server_json("alpha")).await;
        let direct_id = direct["server_id"].as_str().unwrap().to_owned();

        // INVALID_ARGUMENT: 400 with every bad field in one BadRequest.
        let reply = rest
            .post(
                "/servers",
                &json!({"name": "", "port": 70000, "connection_method": "direct"}),
            )
            .await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        let fields = violation_fields(&reply.json);
        for field in [
            "server.host",
            "server.mysql_user",
            "server.name",
            "server.port",
        ] {
            assert!(
                fields.iter().any(|bad| bad == field),
                "{field} missing: {fields:?}"
            );
        }
        assert_eq!(
            sorted(detail_types(&reply.json)),
            [
                "type.googleapis.com/google.rpc.BadRequest",
                "type.googleapis.com/google.rpc.ErrorInfo"
            ]
        );
        let reply = rest.get("/servers/not-a-uuid").await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        assert_eq!(violation_fields(&reply.json), ["server_id"]);
        let reply = rest.get("/servers?page_size=-1").await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        assert_eq!(violation_fields(&reply.json), ["page_size"]);

        // ALREADY_EXISTS: 409.
        let reply = rest.post("/servers", &direct_server_json("alpha")).await;
        assert_status(&reply, 409, 6, "SERVER_NAME_TAKEN");
        assert_eq!(
            detail_types(&reply.json),
            ["type.googleapis.com/google.rpc.ErrorInfo"]
        );

        // RESOURCE_EXHAUSTED: 429, the limit in the ErrorInfo's metadata.
        rest.register(&ssh_server_json("beta")).await;
        let reply = rest.post("/servers", &direct_server_json("gamma")).await;
        assert_status(&reply, 429, 8, "SERVER_LIMIT_REACHED");
        assert_eq!(reply.json["message"], "Server limit reached (2 of 2)");
        assert_eq!(
            detail(&reply.json, "ErrorInfo")["metadata"],
            json!({"limit": "2", "count": "2"})
        );

        // FAILED_PRECONDITION: 400 with a PreconditionFailure saying which.
        let reply = rest
            .post(
                &format!("/servers/{direct_id}/confirm-firewall"),
                &json!({}),
            )
            .await;
        assert_status(&reply, 400, 9, "NOT_SSH_TUNNEL");
        let violation = &detail(&reply.json, "PreconditionFailure")["violations"][0];
        assert_eq!(violation["type"], "NOT_SSH_TUNNEL");
        assert_eq!(violation["subject"], "connection_method");
        let reply = rest
            .post(
                &format!("/servers/{direct_id}/retry-onboarding"),
                &json!({}),
            )
            .await;
        assert_status(&reply, 400, 9, "ONBOARDING_NOT_FAILED");
        assert_eq!(
            sorted(detail_types(&reply.json)),
            [
                "type.googleapis.com/google.rpc.ErrorInfo",
                "type.googleapis.com/google.rpc.PreconditionFailure"
            ]
        );

        // NOT_FOUND: 404, for a server that does not exist and for another tenant's alike.
        let reply = rest
            .get(&format!("/servers/{}", uuid::Uuid::new_v4()))
            .await;
        assert_status(&reply, 404, 5, "SERVER_NOT_FOUND");
        let other = app.other_tenant("tenant-b").await;
        let reply = rest
            .with_key(&other.key)
            .get(&format!("/servers/{direct_id}"))
            .await;
        assert_status(&reply, 404, 5, "SERVER_NOT_FOUND");

        // ABORTED: 409 for a stale etag.
        let reply = rest
            .patch(
                &format!("/servers/{direct_id}"),
                &json!({"etag": "stale", "name": "renamed"}),
            )
            .await;
        assert_status(&reply, 409, 10, "ETAG_MISMATCH");

        // UNAUTHENTICATED: 401 with WWW-Authenticate: Bearer, whatever is wrong with the key.
        for (authorization, reason) in [
            (None, "MISSING_CREDENTIALS"),
            (Some("Bearer dbt_not-a-real-key"), "INVALID_API_KEY"),
            (Some("Basic dXNlcjpwYXNz"), "INVALID_API_KEY"),
        ] {
            let reply = rest.with_authorization(authorization).get("/servers").await;
            assert_status(&reply, 401, 16, reason);
            assert_eq!(
                reply.header("www-authenticate"),
                "Bearer",
                "{:?}",
                reply.headers
            );
        }
        let revoked = app.key_with(&ALL_PERMISSIONS).await;
        app.db.revoke_key(revoked.id).await;
        let reply = rest.with_key(&revoked.secret).get("/servers").await;
        assert_status(&reply, 401, 16, "API_KEY_REVOKED");

        // PERMISSION_DENIED: 403 naming the permission.
        let reader = app.key_with(&["servers:read"]).await;
        let reply = rest
            .with_key(&reader.secret)
            .delete(&format!("/servers/{direct_id}"))
            .await;
        assert_status(&reply, 403, 7, "MISSING_PERMISSION");
        assert_eq!(
            detail(&reply.json, "ErrorInfo")["metadata"],
            json!({"permission": "servers:delete"})
        );
        assert!(
            reply.json["message"]
                .as_str()
                .unwrap()
                .contains("servers:delete")
        );

        app.shutdown().await;
    });
}

#[test]
fn the_translation_refuses_bad_requests_with_a_status_body() {
    block_on(async {
        let app = TestApp::start().await;
        let rest = Rest::new(&app);

        // An unknown route: 404.
        let reply = rest.get("/nothing/here").await;
        assert_status(&reply, 404, 5, "ROUTE_NOT_FOUND");
        let reply = rest.get("/servers/").await;
        assert_status(&reply, 404, 5, "ROUTE_NOT_FOUND");

        // A wrong method: 405 with Allow, on the REST routes and the fixed ones alike.
        let reply = rest.send(Method::PUT, "/servers", Some(&json!({}))).await;
        assert_status(&reply, 405, 12, "METHOD_NOT_ALLOWED");
        assert_eq!(reply.header("allow"), "GET, POST");
        let reply = rest.send(Method::POST, "/openapi.json", None).await;
        assert_status(&reply, 405, 12, "METHOD_NOT_ALLOWED");
        assert!(reply.header("allow").contains("GET"));
        let reply = rest.send(Method::DELETE, "/healthz", None).await;
        assert_status(&reply, 405, 12, "METHOD_NOT_ALLOWED");

        // A body that is not JSON: 415 for another content type, 400 for broken JSON or a
        // non-object.
        let reply = rest
            .exchange(
                rest.request(Method::POST, "/servers")
                    .header("content-type", "text/xml")
                    .body("<server/>"),
            )
            .await;
        assert_status(&reply, 415, 3, "UNSUPPORTED_MEDIA_TYPE");
        let reply = rest
            .exchange(
                rest.request(Method::POST, "/servers")
                    .header("content-type", "application/json")
                    .body("{\"name\": "),
            )
            .await;
        assert_status(&reply, 400, 3, "MALFORMED_BODY");
        let reply = rest.post("/servers", &json!(["a", "list"])).await;
        assert_status(&reply, 400, 3, "MALFORMED_BODY");
        let reply = rest.get("/servers").await;
        assert_eq!(reply.status, 200);

        // Over 1 MiB: 413, whether the length is declared or the body is streamed.
        let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
        let reply = rest
            .exchange(
                rest.request(Method::POST, "/servers")
                    .header("content-type", "application/json")
                    .body(huge.clone()),
            )
            .await;
        assert_status(&reply, 413, 3, "REQUEST_BODY_TOO_LARGE");
        let chunks: Vec<Result<String, std::io::Error>> = huge
            .as_bytes()
            .chunks(64 * 1024)
            .map(|chunk| Ok(String::from_utf8_lossy(chunk).into_owned()))
            .collect();
        let reply = rest
            .exchange(
                rest.request(Method::POST, "/servers")
                    .header("content-type", "application/json")
                    .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                        chunks,
                    ))),
            )
            .await;
        assert_status(&reply, 413, 3, "REQUEST_BODY_TOO_LARGE");

        // Unknown or ill-typed fields and parameters: 400 naming each.
        let mut body = direct_server_json("typed");
        body["colour"] = json!("red");
        body["port"] = json!("3306");
        body["connection_method"] = json!("CONNECTION_METHOD_DIRECT");
        body["ssh_tunnel"] = json!({"hostname": "x"});
        let reply = rest.post("/servers", &body).await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        assert_eq!(
            violation_fields(&reply.json),
            [
                "server.colour",
                "server.connection_method",
                "server.port",
                "server.ssh_tunnel.hostname"
            ]
        );
        let reply = rest.get("/servers?colour=red&page_size=ten").await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        assert_eq!(violation_fields(&reply.json), ["colour", "page_size"]);
        let reply = rest.get("/servers?show_decommissioned=yes").await;
        assert_eq!(violation_fields(&reply.json), ["show_decommissioned"]);
        let reply = rest
            .send(Method::GET, "/servers", Some(&json!({"page_size": 1})))
            .await;
        assert_status(&reply, 400, 3, "MALFORMED_BODY");

        // Authentication still comes first, as over gRPC: a caller without a key or without the
        // permission hears that, not what is wrong with the request.
        let reply = rest
            .with_authorization(None)
            .post("/servers", &json!({"colour": "red"}))
            .await;
        assert_status(&reply, 401, 16, "MISSING_CREDENTIALS");
        let reader = app.key_with(&["servers:read"]).await;
        let reply = rest
            .with_key(&reader.secret)
            .exchange(
                rest.with_key(&reader.secret)
                    .request(Method::POST, "/servers")
                    .header("content-type", "text/xml")
                    .body("<server/>"),
            )
            .await;
        assert_status(&reply, 403, 7, "MISSING_PERMISSION");

        // curl's default content type with a JSON body is read as JSON (api.md's own examples).
        let reply = rest
            .exchange(
                rest.request(Method::POST, "/servers")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(direct_server_json("from-curl").to_string()),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.body);

        // The request id is echoed, the client's own or a fresh one, on errors too.
        let reply = rest
            .exchange(
                rest.request(Method::GET, "/servers")
                    .header("x-request-id", "rest-test-42"),
            )
            .await;
        assert_eq!(reply.header("x-request-id"), "rest-test-42");
        let reply = rest.get("/nothing").await;
        assert!(
            uuid::Uuid::parse_str(reply.header("x-request-id")).is_ok(),
            "{:?}",
            reply.headers
        );

        app.shutdown().await;
    });
}

#[test]
fn a_database_outage_is_503_store_unavailable() {
    block_on(async {
        let proxy = TcpProxy::to_postgres().await;
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let app = TestApp::start_on(
            db.clone(),
            tenant,
            ReplicaOptions {
                database_url: Some(with_host_port(&db.url, proxy.addr)),
                statement_timeout: "1s".into(),
                pool_timeout: "500ms".into(),
                ..Default::default()
            },
        )
        .await;
        let rest = Rest::new(&app);
        assert_eq!(rest.get("/servers").await.status, 200);
        proxy.cut();
        let reply = rest.get("/servers").await;
        assert_status(&reply, 503, 14, "STORE_UNAVAILABLE");
        proxy.restore();
        app.shutdown().await;
    });
}

#[test]
fn patch_changes_only_what_it_names() {
    block_on(async {
        let app = TestApp::start().await;
        let rest = Rest::new(&app);
        let mut body = direct_server_json("patched");
        body["labels"] = json!({"team": "payments", "tier": "1"});
        body["stream_options"] = json!({"schemas": ["shop"], "ssl_mode": "required"});
        let created = rest.register(&body).await;
        let id = created["server_id"].as_str().unwrap().to_owned();
        let path = format!("/servers/{id}");

        // A top-level key: that field only.
        settled(&rest, &id).await;
        let before = rest.get(&path).await.json;
        let renamed = rest.patch(&path, &json!({"name": "patched-2"})).await;
        assert_eq!(renamed.status, 200, "{}", renamed.body);
        let after = rest.get(&path).await.json;
        assert_eq!(at_stored_precision(&renamed.json), after);
        let mut expected = before.clone();
        expected["name"] = json!("patched-2");
        for changing in ["updated_at", "etag"] {
            expected[changing] = after[changing].clone();
        }
        assert_eq!(after, expected);
        assert_ne!(after["etag"], before["etag"]);

        // A nested key: that nested field only, its siblings kept.
        let narrowed = rest
            .patch(
                &path,
                &json!({"stream_options": {"tables": ["shop.orders"]}}),
            )
            .await;
        assert_eq!(narrowed.status, 200, "{}", narrowed.body);
        assert_eq!(
            narrowed.json["stream_options"],
            json!({"schemas": ["shop"], "tables": ["shop.orders"], "exclude_tables": [],
                   "ssl_mode": "required"})
        );
        let excluding = rest
            .patch(
                &path,
                &json!({"stream_options": {"exclude_tables": ["shop.sessions"]}}),
            )
            .await;
        assert_eq!(excluding.status, 200, "{}", excluding.body);
        assert_eq!(
            excluding.json["stream_options"],
            json!({"schemas": ["shop"], "tables": ["shop.orders"],
                   "exclude_tables": ["shop.sessions"], "ssl_mode": "required"})
        );
        let bad = rest
            .patch(
                &path,
                &json!({"stream_options": {"exclude_tables": ["sessions"]}}),
            )
            .await;
        assert_status(&bad, 400, 3, "INVALID_ARGUMENT");
        let violations = &detail(&bad.json, "BadRequest")["field_violations"];
        assert_eq!(violations.as_array().map(Vec::len), Some(1), "{violations}");
        assert_eq!(
            violations[0]["field"],
            "server.stream_options.exclude_tables[0]"
        );
        assert_eq!(
            violations[0]["description"],
            "\"sessions\" must be schema.table"
        );
        assert_eq!(narrowed.json["labels"], body["labels"]);
        assert_eq!(narrowed.json["name"], "patched-2");

        // A key sent empty clears that field.
        let cleared = rest.patch(&path, &json!({"labels": {}})).await;
        assert_eq!(cleared.status, 200, "{}", cleared.body);
        assert_eq!(cleared.json["labels"], json!({}));
        assert_eq!(cleared.json["host"], "127.0.0.1");

        // An explicit update_mask wins over the body's keys.
        let masked = rest
            .patch(
                &format!("{path}?update_mask=host"),
                &json!({"host": "localhost", "name": "not-this"}),
            )
            .await;
        assert_eq!(masked.status, 200, "{}", masked.body);
        assert_eq!(masked.json["host"], "localhost");
        assert_eq!(masked.json["name"], "patched-2");

        // The current etag is accepted; a stale one is 409. The host change re-ran onboarding,
        // whose writes change the etag too: read it once the server waits again.
        settled(&rest, &id).await;
        let current = rest.get(&path).await.json["etag"].clone();
        let with_etag = rest
            .patch(&path, &json!({"etag": current, "port": 3307}))
            .await;
        assert_eq!(with_etag.status, 200, "{}", with_etag.body);
        assert_eq!(with_etag.json["port"], 3307);
        let stale = rest
            .patch(&path, &json!({"etag": current, "port": 3308}))
            .await;
        assert_status(&stale, 409, 10, "ETAG_MISMATCH");

        // An output-only field: 400 with a field violation naming it; nothing changes.
        settled(&rest, &id).await;
        let before = rest.get(&path).await.json;
        let reply = rest.patch(&path, &json!({"status": "active"})).await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        let violations = detail(&reply.json, "BadRequest")["field_violations"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(violations.len(), 1, "{violations:?}");
        let description = violations[0]["description"].as_str().unwrap();
        assert!(
            description.contains("status") && description.contains("output only"),
            "{violations:?}"
        );
        let reply = rest
            .patch(
                &path,
                &json!({"created_at": "2020-01-01T00:00:00Z", "name": "x"}),
            )
            .await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        assert_eq!(rest.get(&path).await.json, before);

        // The id comes from the path; a different one in the body is refused.
        let reply = rest
            .patch(
                &path,
                &json!({"server_id": uuid::Uuid::new_v4().to_string(), "port": 1}),
            )
            .await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        assert_eq!(violation_fields(&reply.json), ["server.server_id"]);

        // Secrets can be replaced and never come back.
        let rotated = rest
            .patch(&path, &json!({"mysql_password": "s3cret-rotated"}))
            .await;
        assert_eq!(rotated.status, 200, "{}", rotated.body);
        assert_eq!(rotated.json["has_mysql_password"], true);
        assert_no_secret(&rotated.body);

        app.shutdown().await;
    });
}

#[test]
fn rest_calls_take_the_grpc_stack_and_its_metrics() {
    block_on(async {
        let app = TestApp::start().await;
        let rest = Rest::new(&app);
        for _ in 0..3 {
            assert_eq!(rest.get("/servers").await.status, 200);
        }
        assert_eq!(
            rest.with_authorization(None).get("/servers").await.status,
            401
        );
        let (status, metrics) = http_get(app.http_addr, "/metrics").await;
        assert_eq!(status, 200);
        let line = |method: &str, code: &str| {
            metrics
                .lines()
                .find(|line| {
                    line.starts_with("dbtrail_grpc_calls_total")
                        && line.contains(&format!("method=\"{method}\""))
                        && line.contains(&format!("code=\"{code}\""))
                })
                .map(str::to_owned)
        };
        let ok =
            line("ListServers", "Ok").unwrap_or_else(|| panic!("no ListServers count: {metrics}"));
        assert!(ok.ends_with(" 3"), "{ok}");
        let rejected = line("ListServers", "Unauthenticated")
            .unwrap_or_else(|| panic!("no rejection: {metrics}"));
        assert!(rejected.ends_with(" 1"), "{rejected}");
        app.shutdown().await;
    });
}

#[test]
fn openapi_json_describes_every_route_and_validates_as_openapi_3_1() {
    block_on(async {
        let app = TestApp::start().await;
        let rest = Rest::new(&app).with_authorization(None);
        let reply = rest.get("/openapi.json").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), "application/json");
        let document = &reply.json;
        assert_eq!(document["openapi"], "3.1.0");
        let mut operations: Vec<(String, String, String)> = Vec::new();
        for (path, methods) in document["paths"].as_object().unwrap() {
            for (method, operation) in methods.as_object().unwrap() {
                operations.push((
                    method.clone(),
                    path.clone(),
                    operation["operationId"].as_str().unwrap().to_owned(),
                ));
            }
        }
        operations.sort();
        let mut expected: Vec<(String, String, String)> = [
            ("delete", "/servers/{server_id}", "DecommissionServer"),
            ("get", "/audit-events", "ListAuditEvents"),
            ("get", "/servers", "ListServers"),
            ("get", "/servers/{server_id}", "GetServer"),
            (
                "get",
                "/servers/{server_id}/change-events",
                "ListChangeEvents",
            ),
            (
                "get",
                "/servers/{server_id}/onboarding-status",
                "GetOnboardingStatus",
            ),
            (
                "get",
                "/servers/{server_id}/onboarding-status/watch",
                "WatchOnboarding",
            ),
            ("get", "/servers/{server_id}/revert-sql", "RevertChanges"),
            (
                "get",
                "/servers/{server_id}/rows/{schema}/{table}/history",
                "GetRowHistory",
            ),
            (
                "get",
                "/servers/{server_id}/schema-changes",
                "ListSchemaChanges",
            ),
            ("get", "/servers:watch", "WatchServers"),
            ("delete", "/webhooks/{webhook_id}", "DeleteWebhook"),
            ("get", "/webhooks", "ListWebhooks"),
            ("get", "/webhooks/{webhook_id}", "GetWebhook"),
            (
                "get",
                "/webhooks/{webhook_id}/deliveries",
                "ListWebhookDeliveries",
            ),
            ("patch", "/servers/{server_id}", "UpdateServer"),
            ("post", "/servers", "RegisterServer"),
            (
                "post",
                "/servers/{server_id}/confirm-firewall",
                "ConfirmFirewall",
            ),
            (
                "post",
                "/servers/{server_id}/retry-onboarding",
                "RetryOnboarding",
            ),
            ("post", "/servers/{server_id}:pause-stream", "PauseStream"),
            (
                "post",
                "/servers/{server_id}:restart-stream",
                "RestartStream",
            ),
            ("post", "/servers/{server_id}:resume-stream", "ResumeStream"),
            ("post", "/servers:check", "CheckServer"),
            ("post", "/webhooks", "CreateWebhook"),
            (
                "post",
                "/webhooks/{webhook_id}/deliveries/{delivery_id}:redeliver",
                "RedeliverWebhook",
            ),
        ]
        .iter()
        .map(|(method, path, id)| (method.to_string(), path.to_string(), id.to_string()))
        .collect();
        expected.sort();
        assert_eq!(operations, expected);
        let schemas = &document["components"]["schemas"];
        let status = &schemas["dbtrail.servers.v1.OnboardingStatus"];
        assert_eq!(
            status["properties"]["current_step"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(
            status["properties"]["agent_outbound_ip"]["type"],
            json!(["string", "null"])
        );
        let server = &schemas["dbtrail.servers.v1.Server"];
        assert!(server["properties"].get("mysql_password").is_none());
        assert_eq!(
            schemas["dbtrail.servers.v1.StepProgress"]["properties"]["status"]["enum"],
            json!([
                "unspecified",
                "pending",
                "in_progress",
                "completed",
                "failed"
            ])
        );
        assert_eq!(
            document["components"]["securitySchemes"]["bearer"],
            json!({"type": "http", "scheme": "bearer",
                       "description": "An API key (dbt_...), from `dbtrail-servers keys create`."})
        );
        let list = &document["paths"]["/servers"]["get"];
        let parameters: Vec<&str> = list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|parameter| parameter["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            parameters,
            ["page_size", "page_token", "filter", "show_decommissioned"]
        );
        assert_eq!(
            list["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/google.rpc.Status"
        );

        // openapi-spec-validator (PyPI; scripts/test installs it) must accept it as OpenAPI 3.1.
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("openapi.json");
        std::fs::write(&file, &reply.body).unwrap();
        let output = tokio::process::Command::new("openapi-spec-validator")
            .arg("--schema")
            .arg("3.1.0")
            .arg(&file)
            .output()
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run openapi-spec-validator ({error}); install it: pip install \
                     openapi-spec-validator"
                )
            });
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "openapi-spec-validator refused the document:\n{printed}"
        );
        assert!(printed.contains("OK"), "{printed}");
        app.shutdown().await;
    });
}

/// Runs `curl` with `args` and parses what it printed as JSON.
async fn curl(args: &[&str]) -> Value {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .unwrap_or_else(|error| panic!("cannot run curl: {error}"));
    assert!(output.status.success(), "curl {args:?}: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_no_secret(&text);
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("curl {args:?} printed {text}: {error}"))
}

#[test]
fn curl_drives_a_server_through_its_life_and_agrees_with_grpc() {
    block_on(async {
        let app = TestApp::start().await;
        let base = format!("http://{}", app.http_addr);
        let authorization = format!("authorization: Bearer {}", app.tenant.key);
        let mut client = app.client();

        // Exactly api.md §7's call: curl -d without a content type.
        let body = ssh_server_json("orders-primary").to_string();
        let created = curl(&[
            "-X",
            "POST",
            &format!("{base}/servers"),
            "-H",
            &authorization,
            "-d",
            &body,
        ])
        .await;
        let id = created["server_id"]
            .as_str()
            .expect("a server_id")
            .to_owned();
        let grpc_created = server_json(&get_server(&mut client, &id).await);
        // Onboarding moves on between the two reads; what it does not touch must agree.
        for field in SERVER_KEYS {
            if !["onboarding_step", "updated_at", "etag"].contains(&field) {
                assert_eq!(
                    at_stored_precision(&created[field]),
                    grpc_created[field],
                    "{field}"
                );
            }
        }

        let status_url = format!("{base}/servers/{id}/onboarding-status");
        let started = std::time::Instant::now();
        // The firewall is awaited once the step says what to allow; that status stays put.
        let awaiting = loop {
            let status = curl(&[&status_url, "-H", &authorization]).await;
            if status["current_step"] == "awaiting_firewall" && status["steps"][1]["message"] != ""
            {
                break status;
            }
            assert!(
                started.elapsed() < SETTLE,
                "never awaited the firewall: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            awaiting,
            onboarding_json(&onboarding_status(&mut client, &id).await)
        );
        assert_eq!(awaiting["agent_outbound_ip"], AGENT_OUTBOUND_IP);

        let confirmed = curl(&[
            "-X",
            "POST",
            &format!("{base}/servers/{id}/confirm-firewall"),
            "-H",
            &authorization,
        ])
        .await;
        assert_eq!(confirmed, json!({"status": "confirmed"}));
        let after = onboarding_status(&mut client, &id).await;
        assert_eq!(
            step_status(&after, proto::OnboardingStep::AwaitingFirewall),
            proto::StepStatus::Completed
        );

        let gone = curl(&[
            "-X",
            "DELETE",
            &format!("{base}/servers/{id}"),
            "-H",
            &authorization,
        ])
        .await;
        assert_eq!(gone["status"], "decommissioned");
        let grpc_gone = server_json(&get_server(&mut client, &id).await);
        assert_eq!(at_stored_precision(&gone), grpc_gone);
        let fetched = curl(&[&format!("{base}/servers/{id}"), "-H", &authorization]).await;
        assert_eq!(fetched, grpc_gone);
        app.shutdown().await;
    });
}

/// A body that trickles in holds the connection for at most the body read timeout (10 s), then
/// the request is answered 408 with the usual Status body.
#[test]
fn a_body_that_never_arrives_in_full_is_408_after_the_read_timeout() {
    block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app = TestApp::start().await;
        let mut socket = tokio::net::TcpStream::connect(app.http_addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /servers HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
            app.tenant.key
        );
        socket.write_all(head.as_bytes()).await.expect("write");
        let started = std::time::Instant::now();
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut answer))
            .await
            .expect("an answer within 20 s")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer[..read]).to_string();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("REQUEST_BODY_TIMEOUT"), "{answer}");
        assert!(
            started.elapsed() >= Duration::from_secs(9),
            "{:?}",
            started.elapsed()
        );
        app.shutdown().await;
    });
}

/// A client that trickles its request head (slowloris) is let go after the header read timeout,
/// while a client that sends its head in time is served on its own connection meanwhile.
#[test]
fn a_request_head_that_never_ends_is_dropped_after_the_header_read_timeout() {
    block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let options = ReplicaOptions {
            extra_args: vec!["--header-read-timeout".into(), "2s".into()],
            ..Default::default()
        };
        let app = TestApp::start_with(options).await;
        // Taken before connecting: the service's clock starts when it accepts, which may be
        // before connect() returns here.
        let started = std::time::Instant::now();
        let slow = tokio::net::TcpStream::connect(app.http_addr)
            .await
            .expect("connect");
        let (mut reader, mut writer) = slow.into_split();
        // A header line every half second, never the blank line that ends the head.
        let trickle = tokio::spawn(async move {
            writer.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
            for index in 0..40 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                writer
                    .write_all(format!("x-slow-{index}: 1\r\n").as_bytes())
                    .await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let (status, _) = http_get(app.http_addr, "/healthz").await;
        assert_eq!(status, 200, "another client is served meanwhile");
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer))
            .await
            .expect("the service closes the connection within 10 s");
        let held = started.elapsed();
        assert!(
            held >= Duration::from_secs(2) && held < Duration::from_secs(8),
            "held for {held:?} ({closed:?})"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
        trickle.abort();
        app.shutdown().await;
    });
}

/// CORS: a configured origin's preflight is answered and its calls carry the headers a page needs;
/// any other origin, and every origin of a replica without the flag, gets no CORS header.
#[test]
fn configured_origins_may_call_from_a_browser_and_no_other() {
    block_on(async {
        let allowed = "https://console.example.com";
        let options = ReplicaOptions {
            extra_args: vec!["--cors-allowed-origins".into(), allowed.into()],
            ..Default::default()
        };
        let app = TestApp::start_with(options).await;
        let http = reqwest::Client::new();
        let preflight = |origin: &str, addr: std::net::SocketAddr| {
            http.request(Method::OPTIONS, format!("http://{addr}/servers"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .send()
        };
        let answer = preflight(allowed, app.http_addr).await.expect("preflight");
        assert!(answer.status().is_success(), "{answer:?}");
        let headers = answer.headers();
        assert_eq!(headers["access-control-allow-origin"], allowed);
        let methods = headers["access-control-allow-methods"]
            .to_str()
            .expect("text");
        assert!(
            methods.contains("POST") && methods.contains("PATCH"),
            "{methods}"
        );
        let allowed_headers = headers["access-control-allow-headers"]
            .to_str()
            .expect("text");
        assert!(
            allowed_headers.contains("authorization"),
            "{allowed_headers}"
        );

        let listed = http
            .get(format!("http://{}/servers", app.http_addr))
            .header("origin", allowed)
            .bearer_auth(&app.tenant.key)
            .send()
            .await
            .expect("GET /servers");
        assert_eq!(listed.status(), 200);
        assert_eq!(listed.headers()["access-control-allow-origin"], allowed);
        let exposed = listed.headers()["access-control-expose-headers"]
            .to_str()
            .expect("text");
        assert!(exposed.contains("x-request-id"), "{exposed}");

        let foreign = preflight("https://evil.example.com", app.http_addr)
            .await
            .expect("preflight");
        assert!(
            foreign
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{foreign:?}"
        );
        app.shutdown().await;

        let closed = TestApp::start().await;
        let answer = preflight(allowed, closed.http_addr)
            .await
            .expect("preflight");
        assert!(
            answer
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{answer:?}"
        );
        closed.shutdown().await;
    });
}
