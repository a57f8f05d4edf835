//! CheckServer (`POST /servers:check`) and RegisterServer's validate_only: the onboarding checks
//! run against private MariaDB instances and the test sshd, through gRPC and REST. Each broken
//! setting is its named check failing with its remedy; nothing is ever written (row counts and
//! history unchanged, no host key pinned); a target the policy refuses is INVALID_ARGUMENT with no
//! connection attempted; a flood past the tenant's rate is RESOURCE_EXHAUSTED; the deadline holds.

use std::time::{Duration, Instant};

use crate::common::mariadb::*;
use crate::common::sshd::Sshd;
use crate::common::*;
use crate::rest_common::{Rest, assert_status, detail};
use dbtrail_servers::proto::{
    self, CheckResult, CheckServerRequest, CheckServerResponse, RegisterServerRequest,
    check_server_request::Target,
};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

/// Every check of a direct server, in order.
const DIRECT_CHECKS: &str = "target reachable login tls version log_bin binlog_format \
    binlog_row_image replication_slave_grant replication_client_grant retention sync_binlog \
    source_role binlog_options select_grant tables primary_keys storage_engines";

/// A MariaDB onboarding would pass without a warning, but for TLS (the test servers offer none).
async fn good_mariadb() -> MariaDb {
    crate::mysql_checks::mariadb_started_with(&["--sync-binlog=1"]).await
}

/// The service, its checks limited to `per_minute` per tenant.
async fn check_app(per_minute: u32) -> TestApp {
    TestApp::start_with(ReplicaOptions {
        extra_args: vec![
            "--check-rate-limit".into(),
            per_minute.to_string(),
            "--mysql-connect-timeout".into(),
            "2s".into(),
        ],
        ..Default::default()
    })
    .await
}

async fn check(client: &mut Client, target: Target) -> CheckServerResponse {
    client
        .check_server(CheckServerRequest {
            target: Some(target),
        })
        .await
        .expect("CheckServer")
        .into_inner()
}

async fn check_body(client: &mut Client, server: proto::Server) -> CheckServerResponse {
    check(client, Target::Server(Box::new(server))).await
}

/// CheckServer's refusal of `target`, or of no target at all.
async fn check_refused(client: &mut Client, target: Option<Target>) -> tonic::Status {
    expect_err(client.check_server(CheckServerRequest { target }).await)
}

/// RegisterServer with validate_only.
async fn dry_run(
    client: &mut Client,
    server: proto::Server,
) -> Result<proto::Server, tonic::Status> {
    let request = RegisterServerRequest {
        server: Some(server),
        validate_only: true,
        ..Default::default()
    };
    Ok(client.register_server(request).await?.into_inner())
}

/// A listener on a free loopback port, and the port.
async fn loopback_listener() -> (tokio::net::TcpListener, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener");
    let port = listener.local_addr().expect("its address").port();
    (listener, port)
}

/// `POST /servers:check` of `server` (request JSON): the answer's JSON, once it is a 200.
async fn rest_check(app: &TestApp, server: Value) -> Value {
    let reply = Rest::new(app)
        .post("/servers:check", &json!({ "server": server }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        !reply.body.contains(PASSWORD),
        "the password is never echoed"
    );
    reply.json
}

/// Asserts the result of each named check.
#[track_caller]
fn assert_results(response: &CheckServerResponse, expected: &[(&str, CheckResult)]) {
    for (name, result) in expected {
        assert_eq!(
            named(response, name).result(),
            *result,
            "{name}: {response:#?}"
        );
    }
}

/// The names of the checks, in order.
fn names(response: &CheckServerResponse) -> Vec<&str> {
    response
        .checks
        .iter()
        .map(|check| check.name.as_str())
        .collect()
}

/// The check named `name`.
#[track_caller]
fn named<'a>(response: &'a CheckServerResponse, name: &str) -> &'a proto::Check {
    response
        .checks
        .iter()
        .find(|check| check.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {response:#?}"))
}

/// (name, result) of every check, in order.
fn results(response: &CheckServerResponse) -> Vec<(String, CheckResult)> {
    response
        .checks
        .iter()
        .map(|check| (check.name.clone(), check.result()))
        .collect()
}

/// Asserts that `name` failed, its message containing `message` and its remedy `remedy`; that
/// every check before it passed or warned, and every one after it that is not a check of the same
/// kind was skipped or ran; and that the answer is not ok.
#[track_caller]
fn assert_failed(response: &CheckServerResponse, name: &str, message: &str, remedy: &str) {
    let check = named(response, name);
    assert_eq!(check.result(), CheckResult::Fail, "{response:#?}");
    assert!(check.message.contains(message), "{name}: {check:#?}");
    assert!(check.remedy.contains(remedy), "{name}: {check:#?}");
    assert!(!response.ok, "{response:#?}");
}

/// The rows of the tables a check must never write.
async fn row_counts(app: &TestApp) -> Vec<i64> {
    let db = app.db.connect().await;
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM servers), (SELECT count(*) FROM onboarding_history), \
             (SELECT count(*) FROM idempotency_keys)",
            &[],
        )
        .await
        .expect("the row counts");
    (0..3).map(|index| row.get::<_, i64>(index)).collect()
}

/// A RegisterServer body as REST JSON for `server` (direct).
fn direct_json(name: &str, mariadb: &MariaDb, user: &str, password: &str) -> Value {
    json!({
        "name": name,
        "host": "127.0.0.1",
        "port": mariadb.port,
        "mysql_user": user,
        "mysql_password": password,
        "connection_method": "direct",
    })
}

#[test]
fn a_good_server_passes_every_check_over_grpc_and_rest_and_nothing_is_written() {
    block_on(async {
        let mariadb = good_mariadb().await;
        let app = check_app(600).await;
        let mut client = app.client();
        // Registered, and settled where the core steps leave it (they never connect).
        let (registered_id, _) =
            register_and_settle(&mut client, mariadb.server("registered", USER, PASSWORD)).await;
        let registered = get_server(&mut client, &registered_id).await;
        let before = row_counts(&app).await;
        let history_before = history(&client, &registered.server_id).await;

        let body = check_body(&mut client, mariadb.server("good", USER, PASSWORD)).await;
        assert_eq!(
            names(&body),
            DIRECT_CHECKS.split_whitespace().collect::<Vec<_>>()
        );
        for check in &body.checks {
            let expected = if check.name == "tls" {
                CheckResult::Warn
            } else {
                CheckResult::Pass
            };
            assert_eq!(check.result(), expected, "{check:#?}");
            assert!(!check.message.is_empty(), "{check:#?}");
            assert_eq!(
                check.remedy.is_empty(),
                expected == CheckResult::Pass,
                "{check:#?}"
            );
        }
        assert!(body.ok, "a warning does not block: {body:#?}");
        assert_eq!(body.host_key_fingerprint, "");
        assert_eq!(
            named(&body, "tls").message,
            format!(
                "MySQL at 127.0.0.1:{} offers no TLS, so the connection is not encrypted",
                mariadb.port
            )
        );
        assert_eq!(
            named(&body, "version").message,
            format!("MariaDB {}", mariadb.version)
        );
        assert_eq!(
            named(&body, "login").message,
            format!("logged in to MySQL at 127.0.0.1:{} as {USER}", mariadb.port)
        );
        assert_eq!(
            named(&body, "tables").message,
            "1 schema and 1 table to snapshot"
        );

        // A registered server's stored settings give the same answer.
        let stored = check(&mut client, Target::ServerId(registered.server_id.clone())).await;
        assert_eq!(results(&stored), results(&body));

        // REST: the same checks, enum values as lower-case strings.
        let json = rest_check(&app, direct_json("good", &mariadb, USER, PASSWORD)).await;
        assert_eq!(json["ok"], true);
        assert_eq!(json["host_key_fingerprint"], "");
        let checks = json["checks"].as_array().expect("checks");
        assert_eq!(checks.len(), body.checks.len());
        for (item, grpc) in checks.iter().zip(&body.checks) {
            assert_eq!(item["name"], grpc.name.as_str());
            assert_eq!(
                item["result"],
                grpc.result().as_str_name()["CHECK_RESULT_".len()..].to_lowercase()
            );
            assert_eq!(item["message"], grpc.message.as_str());
            assert_eq!(item["remedy"], grpc.remedy.as_str());
        }
        let by_id = Rest::new(&app)
            .post(
                "/servers:check",
                &json!({"server_id": registered.server_id}),
            )
            .await;
        assert_eq!(by_id.status, 200, "{}", by_id.body);
        assert_eq!(
            by_id.json["checks"].as_array().map(Vec::len),
            Some(body.checks.len())
        );

        // Nothing was written: no server, no revision, no request id.
        assert_eq!(row_counts(&app).await, before);
        assert_eq!(
            history(&client, &registered.server_id).await,
            history_before
        );
        assert_eq!(get_server(&mut client, &registered_id).await, registered);
        app.shutdown().await;
    });
}

#[test]
fn each_broken_setting_is_its_named_failure_with_its_remedy() {
    block_on(async {
        let mariadb = crate::mysql_checks::mariadb_started_with(&[
            "--sync-binlog=1",
            "--binlog-format=MIXED",
        ])
        .await;
        mariadb.exec(&["CREATE TABLE shop.log (line TEXT)"]).await;
        mariadb.create_user("reader", PASSWORD, &["SELECT"]).await;
        let app = check_app(600).await;
        let mut client = app.client();
        let before = row_counts(&app).await;

        // binlog_format MIXED fails; the table without a primary key warns.
        let mixed = check_body(&mut client, mariadb.server("mixed", USER, PASSWORD)).await;
        assert_failed(
            &mixed,
            "binlog_format",
            "binlog_format is MIXED; dbtrail needs ROW",
            "SET GLOBAL binlog_format = 'ROW' and persist it in my.cnf",
        );
        let keys = named(&mixed, "primary_keys");
        assert_eq!(keys.result(), CheckResult::Warn, "{keys:#?}");
        assert_eq!(keys.message, "1 table without a primary key: shop.log");
        assert_eq!(
            keys.remedy,
            "give each a primary key, e.g. ALTER TABLE `shop`.`log` ADD PRIMARY KEY (column, ...)"
        );
        // The other checks ran: a failure does not hide the rest.
        assert_eq!(named(&mixed, "log_bin").result(), CheckResult::Pass);
        assert_eq!(
            named(&mixed, "replication_slave_grant").result(),
            CheckResult::Pass
        );

        // Without the REPLICATION grants.
        let reader = check_body(&mut client, mariadb.server("reader", "reader", PASSWORD)).await;
        for (name, grant) in [
            ("replication_slave_grant", "REPLICATION SLAVE"),
            ("replication_client_grant", "REPLICATION CLIENT"),
        ] {
            assert_failed(
                &reader,
                name,
                &format!("the user lacks {grant} (SHOW GRANTS shows none on *.*)"),
                &format!("GRANT {grant} ON *.* TO 'reader'@'"),
            );
        }

        // A wrong password: login fails, what needs a login is skipped.
        let wrong = check_body(
            &mut client,
            mariadb.server("wrong", USER, "not-the-password"),
        )
        .await;
        assert_failed(
            &wrong,
            "login",
            "Access denied for user",
            "check mysql_user and mysql_password",
        );
        assert_eq!(named(&wrong, "reachable").result(), CheckResult::Pass);
        let skipped = named(&wrong, "log_bin");
        assert_eq!(skipped.result(), CheckResult::Skipped);
        assert_eq!(skipped.message, "not checked: login failed");
        assert!(!format!("{wrong:?}").contains("not-the-password"));

        // Nobody listens: reachable fails, naming the address to allow.
        let closed = free_port();
        let mut nowhere = mariadb.server("nowhere", USER, PASSWORD);
        nowhere.port = i32::from(closed);
        let unreachable = check_body(&mut client, nowhere).await;
        assert_failed(
            &unreachable,
            "reachable",
            &format!("cannot reach MySQL at 127.0.0.1:{closed}: {UNREACHABLE}"),
            &format!("allow {AGENT_OUTBOUND_IP} to connect to 127.0.0.1:{closed}"),
        );
        let expected = [
            ("target", CheckResult::Pass),
            ("login", CheckResult::Skipped),
        ];
        assert_results(&unreachable, &expected);

        // log_bin off.
        let without_binlog = MariaDb::options().without_binlog().start().await;
        without_binlog
            .exec(&[
                "CREATE DATABASE shop",
                "CREATE TABLE shop.items (id INT PRIMARY KEY)",
            ])
            .await;
        without_binlog
            .create_user(USER, PASSWORD, &REPLICATION_GRANTS)
            .await;
        let off = check_body(&mut client, without_binlog.server("off", USER, PASSWORD)).await;
        assert_failed(
            &off,
            "log_bin",
            "log_bin is OFF; dbtrail needs the binary log",
            "start the server with --log-bin (log_bin in my.cnf) and restart it",
        );

        // REST names the same failure.
        let json = rest_check(&app, direct_json("mixed", &mariadb, USER, PASSWORD)).await;
        assert_eq!(json["ok"], false);
        let format = json["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|check| check["name"] == "binlog_format"))
            .expect("binlog_format");
        assert_eq!(format["result"], "fail");
        assert_eq!(
            format["remedy"],
            "SET GLOBAL binlog_format = 'ROW' and persist it in my.cnf"
        );

        assert_eq!(row_counts(&app).await, before, "a check wrote nothing");
        app.shutdown().await;
    });
}

#[test]
fn a_jumphost_is_checked_its_host_key_reported_never_pinned_and_a_wrong_one_fails() {
    block_on(async {
        let mariadb = good_mariadb().await;
        let sshd = Sshd::start().await;
        let app = check_app(600).await;
        let mut client = app.client();
        let tunneled = proto::Server {
            host: "127.0.0.1".to_owned(),
            port: i32::from(mariadb.port),
            mysql_user: USER.to_owned(),
            mysql_password: PASSWORD.to_owned(),
            ssh_tunnel: Some(sshd.tunnel()),
            ..ssh_server("tunneled")
        };
        let actual = sshd.host_key_fingerprint();

        let good = check_body(&mut client, tunneled.clone()).await;
        assert_eq!(
            names(&good)[..7],
            [
                "target",
                "reachable",
                "ssh_host_key",
                "ssh_login",
                "ssh_forwarding",
                "login",
                "tls"
            ]
        );
        assert!(good.ok, "{good:#?}");
        assert_eq!(good.host_key_fingerprint, actual);
        assert!(named(&good, "ssh_host_key").message.contains(&actual));
        assert!(
            named(&good, "ssh_host_key")
                .message
                .contains("not pinned yet")
        );

        // Registered, awaiting the firewall (the core steps never connect): checking it pins
        // nothing.
        let (registered_id, _) = register_and_settle(&mut client, tunneled.clone()).await;
        let registered = get_server(&mut client, &registered_id).await;
        let before = row_counts(&app).await;
        let stored = check(&mut client, Target::ServerId(registered.server_id.clone())).await;
        assert!(stored.ok, "{stored:#?}");
        assert_eq!(stored.host_key_fingerprint, actual);
        let after = get_server(&mut client, &registered.server_id).await;
        assert_eq!(
            after.ssh_tunnel.expect("the tunnel").host_key_fingerprint,
            ""
        );
        assert_eq!(after.etag, registered.etag);
        assert_eq!(row_counts(&app).await, before);

        // A pinned fingerprint the jumphost does not present.
        let wrong = sshd.client.fingerprint.clone();
        let mut pinned = tunneled;
        pinned
            .ssh_tunnel
            .as_mut()
            .expect("tunnel")
            .host_key_fingerprint = wrong.clone();
        let refused = check_body(&mut client, pinned).await;
        let expected = [
            ("reachable", CheckResult::Pass),
            ("ssh_login", CheckResult::Skipped),
        ];
        assert_results(&refused, &expected);
        assert_failed(
            &refused,
            "ssh_host_key",
            &format!("presented host key {actual}, but {wrong} is expected"),
            &format!("set ssh_tunnel.host_key_fingerprint to {actual}"),
        );
        assert_eq!(refused.host_key_fingerprint, actual);
        assert!(!format!("{refused:?}").contains(TEST_PRIVATE_KEY_BODY_LINE));
        app.shutdown().await;
    });
}

#[test]
fn a_target_the_policy_refuses_is_invalid_argument_and_nothing_is_attempted() {
    block_on(async {
        let (listener, port) = loopback_listener().await;
        let app = TestApp::start_with(ReplicaOptions {
            allow_loopback_targets: false,
            ..Default::default()
        })
        .await;
        let mut client = app.client();
        let mut server = direct_server("loopback");
        server.port = i32::from(port);
        let target = Target::Server(Box::new(server.clone()));
        let status = check_refused(&mut client, Some(target)).await;
        assert_bad_request(&status, &["server.host"]);
        let refused = expect_err(dry_run(&mut client, server.clone()).await);
        assert_bad_request(&refused, &["server.host"]);
        let reply = Rest::new(&app)
            .post(
                "/servers:check",
                &json!({"server": {"name": "loopback", "host": "127.0.0.1", "port": port,
                        "mysql_user": USER, "connection_method": "direct"}}),
            )
            .await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        // A name that resolves to a refused address is refused the same way, naming it.
        let mut named = server.clone();
        named.host = "localhost".to_owned();
        let status = check_refused(&mut client, Some(Target::Server(Box::new(named)))).await;
        assert_bad_request(&status, &["server.host"]);
        assert!(
            status.message().contains("localhost resolves to "),
            "{status:?}"
        );
        // No connection was attempted.
        let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        app.shutdown().await;
        assert!(accepted.is_err(), "connected to a refused target");
    });
}

#[test]
fn a_flood_past_the_tenants_rate_is_resource_exhausted_with_a_retry_hint() {
    block_on(async {
        // 6 a minute: a burst of one, then one every ten seconds.
        let app = check_app(6).await;
        let mut client = app.client();
        let nowhere = proto::Server {
            port: i32::from(free_port()),
            ..direct_server("nowhere")
        };
        let first = check_body(&mut client, nowhere.clone()).await;
        assert!(!first.ok);
        let target = Target::Server(Box::new(nowhere.clone()));
        let status = check_refused(&mut client, Some(target)).await;
        assert_error(&status, Code::ResourceExhausted, "RATE_LIMITED");
        let retry = status.get_details_retry_info().expect("a RetryInfo");
        assert!(
            retry
                .retry_delay
                .is_some_and(|delay| delay > Duration::from_secs(5))
        );
        // RegisterServer's dry run draws on the same rate.
        let limited = expect_err(dry_run(&mut client, nowhere).await);
        assert_error(&limited, Code::ResourceExhausted, "RATE_LIMITED");
        // REST: 429 with Retry-After.
        let reply = Rest::new(&app)
            .post(
                "/servers:check",
                &json!({"server_id": uuid::Uuid::new_v4().to_string()}),
            )
            .await;
        // An unknown id is answered before any connection, so it is not limited.
        assert_status(&reply, 404, 5, "SERVER_NOT_FOUND");
        let reply = Rest::new(&app)
            .post(
                "/servers:check",
                &json!({"server": {"name": "n", "host": "127.0.0.1", "port": 1,
                        "mysql_user": USER, "connection_method": "direct"}}),
            )
            .await;
        assert_status(&reply, 429, 8, "RATE_LIMITED");
        assert!(
            reply
                .header("retry-after")
                .parse::<u64>()
                .is_ok_and(|seconds| seconds >= 1)
        );
        // Another tenant has a rate of its own.
        let stranger = app.other_tenant("tenant-b").await;
        let mut other = app.client_with_key(&stranger.key);
        let theirs = check_body(&mut other, direct_server("theirs")).await;
        assert!(!theirs.checks.is_empty());
        app.shutdown().await;
    });
}

#[test]
fn a_silent_host_fails_reachable_within_the_callers_deadline() {
    block_on(async {
        // Accepts connections and never says a word: no MySQL greeting ever comes.
        let (silent, port) = loopback_listener().await;
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let app = TestApp::start_with(ReplicaOptions {
            extra_args: vec!["--mysql-connect-timeout".into(), "30s".into()],
            ..Default::default()
        })
        .await;
        let mut request = tonic::Request::new(CheckServerRequest {
            target: Some(Target::Server(Box::new(proto::Server {
                port: i32::from(port),
                ..direct_server("silent")
            }))),
        });
        request.set_timeout(Duration::from_secs(2));
        let started = Instant::now();
        let response = app
            .client()
            .check_server(request)
            .await
            .expect("an answer within the deadline")
            .into_inner();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_failed(
            &response,
            "reachable",
            "the checks did not finish within their deadline of 1s 800ms",
            &format!("allow {AGENT_OUTBOUND_IP} to connect to 127.0.0.1:{port}"),
        );
        assert_eq!(named(&response, "target").result(), CheckResult::Pass);
        assert_eq!(named(&response, "login").result(), CheckResult::Skipped);
        held.abort();
        app.shutdown().await;
    });
}

#[test]
fn validate_only_runs_the_checks_and_a_failure_is_failed_precondition_listing_each() {
    block_on(async {
        let app = check_app(600).await;
        let mariadb = good_mariadb().await;
        let mut client = app.client();
        let before = row_counts(&app).await;
        let valid = dry_run(&mut client, mariadb.server("dry-run", USER, PASSWORD))
            .await
            .expect("a dry run of a good server");
        assert_eq!(valid.name, "dry-run");
        let status = expect_err(
            client
                .register_server(RegisterServerRequest {
                    server: Some(mariadb.server("dry-run", USER, "not-the-password")),
                    validate_only: true,
                    request_id: uuid::Uuid::new_v4().to_string(),
                })
                .await,
        );
        assert_error(&status, Code::FailedPrecondition, "CHECKS_FAILED");
        let failure = status
            .get_details_precondition_failure()
            .expect("a PreconditionFailure");
        let types: Vec<&str> = failure
            .violations
            .iter()
            .map(|violation| violation.r#type.as_str())
            .collect();
        assert_eq!(types, ["login"]);
        assert!(
            failure.violations[0]
                .description
                .contains("check mysql_user and mysql_password"),
            "{failure:?}"
        );
        assert!(!status.message().contains("not-the-password"));
        // REST: 400 with the same detail.
        let reply = Rest::new(&app)
            .post(
                "/servers?validate_only=true",
                &direct_json("dry-run", &mariadb, USER, "not-the-password"),
            )
            .await;
        assert_status(&reply, 400, 9, "CHECKS_FAILED");
        assert_eq!(
            detail(&reply.json, "PreconditionFailure")["violations"][0]["type"],
            "login"
        );
        let after = row_counts(&app).await;
        app.shutdown().await;
        assert!(!reply.body.contains("not-the-password"));
        assert_eq!(after, before, "a dry run wrote nothing");
    });
}

#[test]
fn check_server_needs_servers_write_and_sees_only_the_callers_servers_and_refuses_bad_input() {
    block_on(async {
        let app = check_app(600).await;
        let mut owner = app.client();
        let registered = register(&mut owner, direct_server("mine")).await;
        let by_id = Target::ServerId(registered.server_id.clone());

        let reader = app
            .key_with(&["servers:read", "servers:delete", "changes:read"])
            .await;
        let mut client = app.client_with_key(&reader.secret);
        let status = check_refused(&mut client, Some(by_id.clone())).await;
        assert_error(&status, Code::PermissionDenied, "MISSING_PERMISSION");
        assert!(status.message().contains("servers:write"), "{status:?}");
        let mut client = app.client_with_authorization(None);
        let status = check_refused(&mut client, Some(by_id.clone())).await;
        assert_error(&status, Code::Unauthenticated, "MISSING_CREDENTIALS");

        let stranger = app.other_tenant("tenant-b").await;
        let mut client = app.client_with_key(&stranger.key);
        let status = check_refused(&mut client, Some(by_id)).await;
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");
        // REST: the same refusals.
        let body = json!({"server_id": registered.server_id});
        for (key, http, code, reason) in [
            (&stranger.key, 404, 5, "SERVER_NOT_FOUND"),
            (&reader.secret, 403, 7, "MISSING_PERMISSION"),
        ] {
            let reply = Rest::new(&app)
                .with_key(key)
                .post("/servers:check", &body)
                .await;
            assert_status(&reply, http, code, reason);
        }

        // Bad input.
        let status = check_refused(&mut owner, None).await;
        assert_bad_request(&status, &["server"]);
        let not_an_id = Target::ServerId("not-a-uuid".into());
        let status = check_refused(&mut owner, Some(not_an_id)).await;
        assert_bad_request(&status, &["server_id"]);
        let mut bad = direct_server("");
        bad.port = 70000;
        bad.server_id = uuid::Uuid::new_v4().to_string();
        let status = check_refused(&mut owner, Some(Target::Server(Box::new(bad)))).await;
        assert_bad_request(&status, &["server.name", "server.port", "server.server_id"]);
        let rest = Rest::new(&app);
        let reply = rest
            .post(
                "/servers:check",
                &json!({"server": {"name": "x"}, "bogus": 1}),
            )
            .await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        let reply = rest.post("/servers:check", &json!({})).await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        let reply = rest
            .post(
                "/servers:check",
                &json!({"server": {"name": "x", "host": "127.0.0.1", "mysql_user": "u",
                        "mysql_password": "hunter2-secret", "connection_method": "direct",
                        "port": 0, "labels": {"-bad-": "x"}}}),
            )
            .await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        assert!(!reply.body.contains("hunter2-secret"), "{}", reply.body);

        // A decommissioned server is not checked.
        owner
            .decommission_server(proto::DecommissionServerRequest {
                server_id: registered.server_id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer");
        let gone = Target::ServerId(registered.server_id);
        let status = check_refused(&mut owner, Some(gone)).await;
        assert_error(&status, Code::FailedPrecondition, "SERVER_DECOMMISSIONED");
        app.shutdown().await;
    });
}
