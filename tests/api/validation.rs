//! Validation: every rule of api.md §3 is rejected with INVALID_ARGUMENT and one BadRequest listing
//! every bad field; duplicate names; the server limit.

use crate::common::*;
use dbtrail_servers::proto::{
    self, ConnectionMethod, DecommissionServerRequest, ListServersRequest, RegisterServerRequest,
    ServerStatus, UpdateServerRequest,
};
use futures_util::future::join_all;
use tonic::Code;
use tonic_types::StatusExt;

fn tunnel() -> proto::SshTunnel {
    proto::SshTunnel {
        host: "localhost".to_owned(),
        port: 22,
        user: "ec2-user".to_owned(),
        private_key: TEST_PRIVATE_KEY.to_owned(),
        ..Default::default()
    }
}

#[test]
fn every_bad_field_is_listed_in_one_bad_request() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let bad = proto::Server {
            name: String::new(),
            host: "not a host!".to_owned(),
            port: 70000,
            mysql_user: String::new(),
            mysql_password: "pw".to_owned(),
            connection_method: ConnectionMethod::Unspecified as i32,
            ..Default::default()
        };
        let status = register_error(&mut client, bad).await;
        assert_bad_request(
            &status,
            &[
                "server.name",
                "server.host",
                "server.port",
                "server.mysql_user",
                "server.connection_method",
            ],
        );
        assert_eq!(
            bad_request_fields(&status).len(),
            5,
            "one violation per bad field"
        );
        app.shutdown().await;
    });
}

#[test]
fn each_rule_of_the_server_resource_is_enforced() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();

        type Mutation = fn(&mut proto::Server);
        let cases: Vec<(&str, Mutation, &[&str])> = vec![
            ("name missing", |s| s.name = String::new(), &["server.name"]),
            (
                "name of 101 characters",
                |s| s.name = "n".repeat(101),
                &["server.name"],
            ),
            (
                "name with a control character",
                |s| s.name = "bad\nname".to_owned(),
                &["server.name"],
            ),
            (
                "name with a bell",
                |s| s.name = "bad\u{7}".to_owned(),
                &["server.name"],
            ),
            ("host missing", |s| s.host = String::new(), &["server.host"]),
            (
                "host neither DNS nor IP",
                |s| s.host = "exa mple.com".to_owned(),
                &["server.host"],
            ),
            (
                "host label starting with a dash",
                |s| s.host = "-db.example.com".to_owned(),
                &["server.host"],
            ),
            ("port negative", |s| s.port = -1, &["server.port"]),
            ("port above 65535", |s| s.port = 65536, &["server.port"]),
            (
                "mysql_user missing",
                |s| s.mysql_user = String::new(),
                &["server.mysql_user"],
            ),
            (
                "connection_method missing",
                |s| s.connection_method = ConnectionMethod::Unspecified as i32,
                &["server.connection_method"],
            ),
            (
                "connection_method unknown",
                |s| s.connection_method = 99,
                &["server.connection_method"],
            ),
            (
                "ssh_tunnel missing for ssh_tunnel",
                |s| {
                    s.connection_method = ConnectionMethod::SshTunnel as i32;
                    s.ssh_tunnel = None;
                },
                &["server.ssh_tunnel"],
            ),
            (
                "ssh_tunnel set for direct",
                |s| s.ssh_tunnel = Some(tunnel()),
                &["server.ssh_tunnel"],
            ),
            (
                "ssh_tunnel set for vpn",
                |s| {
                    s.connection_method = ConnectionMethod::Vpn as i32;
                    s.ssh_tunnel = Some(tunnel());
                },
                &["server.ssh_tunnel"],
            ),
            (
                "every bad ssh_tunnel field",
                |s| {
                    s.connection_method = ConnectionMethod::SshTunnel as i32;
                    s.ssh_tunnel = Some(proto::SshTunnel {
                        host: String::new(),
                        port: 70000,
                        user: String::new(),
                        private_key: "not a key".to_owned(),
                        host_key_fingerprint: "MD5:aa:bb".to_owned(),
                        ..Default::default()
                    });
                },
                &[
                    "server.ssh_tunnel.host",
                    "server.ssh_tunnel.port",
                    "server.ssh_tunnel.user",
                    "server.ssh_tunnel.private_key",
                    "server.ssh_tunnel.host_key_fingerprint",
                ],
            ),
            (
                "ssh_tunnel without a private key",
                |s| {
                    s.connection_method = ConnectionMethod::SshTunnel as i32;
                    s.ssh_tunnel = Some(proto::SshTunnel {
                        private_key: String::new(),
                        ..tunnel()
                    });
                },
                &["server.ssh_tunnel.private_key"],
            ),
            (
                "stream_options.tables not schema.table",
                |s| {
                    s.stream_options = Some(proto::StreamOptions {
                        tables: vec!["shop.orders".to_owned(), "nodot".to_owned()],
                        ..Default::default()
                    });
                },
                &["server.stream_options.tables"],
            ),
            (
                "stream_options.ssl_mode unknown",
                |s| {
                    s.stream_options = Some(proto::StreamOptions {
                        ssl_mode: 42,
                        ..Default::default()
                    });
                },
                &["server.stream_options.ssl_mode"],
            ),
        ];

        for (case, mutate, expected) in cases {
            let mut server = direct_server("valid-name");
            mutate(&mut server);
            let status = register_error(&mut client, server).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
            assert_bad_request(&status, expected);
        }

        // The boundaries are valid: 100 characters, ports 1 and 65535, an IPv6 literal, unicode.
        let valid: Vec<(&str, Mutation)> = vec![
            ("name of 100 characters", |s| s.name = "n".repeat(100)),
            ("printable unicode name", |s| {
                s.name = "commandes — entrepôt ✓".to_owned()
            }),
            ("port 1", |s| s.port = 1),
            ("port 65535", |s| s.port = 65535),
            ("IPv6 host", |s| s.host = "::1".to_owned()),
            ("DNS host", |s| s.host = "localhost".to_owned()),
            ("pinned fingerprint", |s| {
                s.connection_method = ConnectionMethod::SshTunnel as i32;
                s.ssh_tunnel = Some(proto::SshTunnel {
                    host_key_fingerprint: "SHA256:ngCYWQSEFMegyZZ/k6vAwSx3ionhBUMxw0lm0Buq7d0"
                        .to_owned(),
                    ..tunnel()
                });
            }),
        ];
        for (index, (case, mutate)) in valid.into_iter().enumerate() {
            let mut server = direct_server(&format!("boundary-{index}"));
            mutate(&mut server);
            client
                .register_server(RegisterServerRequest {
                    server: Some(server),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|status| panic!("{case} is valid: {status:?}"));
        }
        app.shutdown().await;
    });
}

/// Each violation of `status`'s BadRequest as (field, description), in order.
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|violation| (violation.field, violation.description))
        .collect()
}

#[test]
fn exclude_tables_are_validated_like_tables_on_register_and_update() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let long = format!("shop.{}", "t".repeat(65));
        let mut bad = direct_server("excluding");
        bad.stream_options = Some(proto::StreamOptions {
            tables: vec!["orders".to_owned()],
            exclude_tables: vec![
                "shop.sessions".to_owned(),
                "sessions".to_owned(),
                long.clone(),
            ],
            ..Default::default()
        });
        let status = register_error(&mut client, bad).await;
        assert_bad_request(
            &status,
            &[
                "server.stream_options.tables",
                "server.stream_options.exclude_tables",
            ],
        );
        assert_eq!(
            violations(&status),
            [
                (
                    "server.stream_options.tables[0]".to_owned(),
                    "\"orders\" must be schema.table".to_owned()
                ),
                (
                    "server.stream_options.exclude_tables[1]".to_owned(),
                    "\"sessions\" must be schema.table".to_owned()
                ),
                (
                    "server.stream_options.exclude_tables[2]".to_owned(),
                    format!(
                        "\"{}\" must be a MySQL identifier of 1 to 64 characters",
                        "t".repeat(65)
                    )
                ),
            ]
        );

        let mut good = direct_server("excluding");
        good.stream_options = Some(proto::StreamOptions {
            schemas: vec!["shop".to_owned()],
            exclude_tables: vec!["shop.sessions".to_owned()],
            ..Default::default()
        });
        let registered = register(&mut client, good).await;
        let options = registered.stream_options.clone().expect("stream options");
        assert_eq!(options.exclude_tables, ["shop.sessions"]);
        let id = registered.server_id;

        // UpdateServer naming stream_options.exclude_tables: checked the same way, nothing
        // changes on a bad name; a good list replaces that field only.
        let change = |exclude_tables: &[&str]| proto::Server {
            server_id: id.clone(),
            stream_options: Some(proto::StreamOptions {
                schemas: vec!["not-this".to_owned()],
                exclude_tables: exclude_tables.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = expect_err(
            client
                .update_server(update_request(
                    change(&["shop.ok", "shop."]),
                    &["stream_options.exclude_tables"],
                ))
                .await,
        );
        assert_bad_request(&status, &["server.stream_options.exclude_tables"]);
        assert_eq!(
            violations(&status),
            [(
                "server.stream_options.exclude_tables[1]".to_owned(),
                "\"\" must be a MySQL identifier of 1 to 64 characters".to_owned()
            )]
        );
        let stored = get_server(&mut client, &id).await;
        assert_eq!(
            stored.stream_options.unwrap().exclude_tables,
            ["shop.sessions"]
        );

        let updated = update_server(
            &mut client,
            change(&["shop.sessions", "shop.cache"]),
            &["stream_options.exclude_tables"],
        )
        .await;
        let options = updated.stream_options.expect("stream options");
        assert_eq!(options.schemas, ["shop"]);
        assert_eq!(options.exclude_tables, ["shop.sessions", "shop.cache"]);
        let stored = get_server(&mut client, &id).await.stream_options.unwrap();
        assert_eq!(stored, options, "stored as answered");
        app.shutdown().await;
    });
}

#[test]
fn list_arguments_are_validated() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let list = |page_size: i32, page_token: &str, filter: &str| ListServersRequest {
            page_size,
            page_token: page_token.to_owned(),
            filter: filter.to_owned(),
            show_decommissioned: false,
        };

        let status = expect_err(client.list_servers(list(-1, "", "")).await);
        assert_bad_request(&status, &["page_size"]);

        for filter in [
            "color = \"red\"",
            "status = \"pending\" AND colour = \"red\"",
            "status = \"sleeping\"",
            "connection_method = \"carrier_pigeon\"",
            "status = ",
            "(status = \"pending\"",
            "name = \"a\" OR",
        ] {
            let status = expect_err(client.list_servers(list(0, "", filter)).await);
            assert_bad_request(&status, &["filter"]);
            assert!(
                !status.message().is_empty(),
                "{filter}: the message says what is wrong"
            );
        }

        let status = expect_err(client.list_servers(list(0, "not-a-token", "")).await);
        assert_bad_request(&status, &["page_token"]);

        // Both at once.
        let status = expect_err(client.list_servers(list(-5, "", "color = \"red\"")).await);
        assert_bad_request(&status, &["page_size", "filter"]);
        app.shutdown().await;
    });
}

#[test]
fn update_arguments_are_validated() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("updatable")).await;
        // Once onboarding waits, the etag stays put (it follows onboarding_step too).
        wait_for_onboarding(
            &client,
            &server.server_id,
            "waiting_for_agent",
            std::time::Duration::from_secs(15),
            is_waiting_for_agent,
        )
        .await;
        let server = get_server(&mut client, &server.server_id).await;
        let base = proto::Server {
            server_id: server.server_id.clone(),
            ..Default::default()
        };

        for (paths, why) in [
            (&["status"][..], "output only"),
            (&["created_at"][..], "output only"),
            (&["has_mysql_password"][..], "output only"),
            (&["server_id"][..], "output only"),
            (&["colour"][..], "unknown"),
            (&["name", "bogus.path"][..], "unknown"),
        ] {
            let mut change = base.clone();
            change.name = "renamed".to_owned();
            let status = expect_err(client.update_server(update_request(change, paths)).await);
            assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
            assert!(
                !status.message().is_empty(),
                "{paths:?} ({why}): the message says what is wrong"
            );
        }

        let mut change = base.clone();
        change.port = 70000;
        change.name = String::new();
        let status = expect_err(
            client
                .update_server(update_request(change, &["port", "name"]))
                .await,
        );
        assert_bad_request(&status, &["server.port", "server.name"]);

        let mut change = base.clone();
        change.ssh_tunnel = Some(tunnel());
        let status = expect_err(
            client
                .update_server(update_request(change, &["ssh_tunnel"]))
                .await,
        );
        assert_bad_request(&status, &["server.ssh_tunnel"]);

        // Nothing changed.
        let after = get_server(&mut client, &server.server_id).await;
        assert_eq!(after.name, "updatable");
        assert_eq!(after.port, 3306);
        assert_eq!(after.etag, server.etag);
        app.shutdown().await;
    });
}

#[test]
fn validation_errors_never_echo_a_secret() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let password = "hunter2-never-echo-5f1c";
        let bad_key = "-----BEGIN OPENSSH PRIVATE KEY----- ENCRYPTED secret-material-9d2e -----END \
                       OPENSSH PRIVATE KEY-----";
        let mut server = direct_server("");
        server.mysql_password = format!("{password}\u{0}");
        server.connection_method = ConnectionMethod::SshTunnel as i32;
        server.ssh_tunnel = Some(proto::SshTunnel {
            private_key: bad_key.to_owned(),
            ..tunnel()
        });
        let status = register_error(&mut client, server).await;
        assert_eq!(status.code(), Code::InvalidArgument);
        let everything = format!(
            "{} {:?} {:?}",
            status.message(),
            String::from_utf8_lossy(status.details()),
            status.metadata()
        );
        for secret in [password, "secret-material-9d2e"] {
            assert!(
                !everything.contains(secret),
                "the error echoes a secret: {everything}"
            );
        }
        app.shutdown().await;
    });
}

#[test]
fn a_duplicate_name_already_exists_until_decommissioned() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let first = register(&mut client, direct_server("unique")).await;

        let status = register_error(&mut client, direct_server("unique")).await;
        assert_error(&status, Code::AlreadyExists, "SERVER_NAME_TAKEN");

        client
            .decommission_server(DecommissionServerRequest {
                server_id: first.server_id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer");
        let again = register(&mut client, direct_server("unique")).await;
        assert_ne!(
            again.server_id, first.server_id,
            "a new server, not the old one"
        );
        assert_eq!(again.status, ServerStatus::Pending as i32);
        assert_eq!(
            get_server(&mut client, &first.server_id).await.status,
            ServerStatus::Decommissioned as i32
        );
        app.shutdown().await;
    });
}

#[test]
fn concurrent_registrations_of_one_name_register_it_once() {
    block_on(async {
        let app = TestApp::start().await;
        let results = join_all((0..10).map(|_| {
            let mut client = app.client();
            async move {
                client
                    .register_server(RegisterServerRequest {
                        server: Some(direct_server("contested")),
                        ..Default::default()
                    })
                    .await
            }
        }))
        .await;
        let successes = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(successes, 1, "exactly one registration of the name wins");
        for result in results {
            if let Err(status) = result {
                assert_error(&status, Code::AlreadyExists, "SERVER_NAME_TAKEN");
            }
        }
        app.shutdown().await;
    });
}

#[test]
fn the_server_limit_gives_resource_exhausted() {
    block_on(async {
        let app = TestApp::start_with_limit(ReplicaOptions::default(), Some(2)).await;
        let mut client = app.client();

        // Concurrent registrations do not slip past the limit.
        let results = join_all((0..6).map(|index| {
            let mut client = app.client();
            async move {
                client
                    .register_server(RegisterServerRequest {
                        server: Some(direct_server(&format!("burst-{index}"))),
                        ..Default::default()
                    })
                    .await
            }
        }))
        .await;
        let mut registered = Vec::new();
        for result in results {
            match result {
                Ok(server) => registered.push(server.into_inner()),
                Err(status) => {
                    assert_error(&status, Code::ResourceExhausted, "SERVER_LIMIT_REACHED")
                }
            }
        }
        assert_eq!(
            registered.len(),
            2,
            "exactly the limit's worth of servers registered"
        );

        let status = register_error(&mut client, direct_server("three")).await;
        assert_error(&status, Code::ResourceExhausted, "SERVER_LIMIT_REACHED");
        assert!(
            status.message().contains("Server limit reached (2 of 2)"),
            "{:?}",
            status.message()
        );

        // Decommissioned servers do not count.
        client
            .decommission_server(DecommissionServerRequest {
                server_id: registered[0].server_id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer");
        register(&mut client, direct_server("three")).await;
        let status = register_error(&mut client, direct_server("four")).await;
        assert_error(&status, Code::ResourceExhausted, "SERVER_LIMIT_REACHED");

        // The limit is the tenant's: another tenant has none.
        let other = app.other_tenant("tenant-b").await;
        let mut other_client = app.client_with_key(&other.key);
        for index in 0..3 {
            register(&mut other_client, direct_server(&format!("b-{index}"))).await;
        }
        app.shutdown().await;
    });
}

#[test]
fn a_rename_onto_a_taken_name_already_exists() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        register(&mut client, direct_server("unique")).await;
        let second = register(&mut client, direct_server("other")).await;
        let status = expect_err(
            client
                .update_server(UpdateServerRequest {
                    server: Some(proto::Server {
                        server_id: second.server_id.clone(),
                        name: "unique".to_owned(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["name".to_owned()],
                    }),
                    request_id: String::new(),
                })
                .await,
        );
        assert_error(&status, Code::AlreadyExists, "SERVER_NAME_TAKEN");
        assert_eq!(
            get_server(&mut client, &second.server_id).await.name,
            "other"
        );
        app.shutdown().await;
    });
}
