//! The schema-change feed (ListSchemaChanges) against a private MariaDB, through gRPC and REST:
//! CREATE, ALTER and DROP TABLE on the source appear in binlog order, each with the snapshot
//! version it produced, once; pages, the filter, permissions, tenants and bad input.

use std::time::{Duration, Instant};

use crate::common::mariadb::*;
use crate::common::stream::*;
use crate::common::*;
use dbtrail_servers::proto::{self, ListSchemaChangesRequest};
use tonic::Code;

/// Registers `input`, waits until onboarding is active and its stream runs; returns its id.
async fn register_streaming(client: &mut Client, input: proto::Server) -> String {
    let id = register(client, input).await.server_id;
    assert_active(&wait_settled(client, &id).await);
    wait_stream(client, &id, "the stream to run", running).await;
    id
}

/// Every schema change of the server matching `filter`, page by page (`page_size` each).
async fn all_schema_changes(
    client: &mut Client,
    server_id: &str,
    filter: &str,
    page_size: i32,
) -> Vec<proto::SchemaChange> {
    let mut changes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_schema_changes(ListSchemaChangesRequest {
                server_id: server_id.to_owned(),
                page_size,
                page_token: page_token.clone(),
                filter: filter.to_owned(),
            })
            .await
            .expect("ListSchemaChanges")
            .into_inner();
        changes.extend(page.schema_changes);
        if page.next_page_token.is_empty() {
            return changes;
        }
        page_token = page.next_page_token;
    }
}

/// Waits until the server's feed holds at least `count` changes (or `CAPTURE` passes).
async fn wait_for_schema_changes(
    client: &mut Client,
    server_id: &str,
    count: usize,
) -> Vec<proto::SchemaChange> {
    let started = Instant::now();
    loop {
        let changes = all_schema_changes(client, server_id, "", 100).await;
        if changes.len() >= count || started.elapsed() > CAPTURE {
            return changes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn create_alter_and_drop_table_appear_in_order_with_their_snapshot_versions() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.t (id INT PRIMARY KEY)",
        ])
        .await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(&mut client, mariadb.server("ddl", USER, PASSWORD)).await;
        assert!(
            all_schema_changes(&mut client, &id, "", 0).await.is_empty(),
            "the snapshotting step's snapshot is no schema change"
        );
        // Over 16,384 characters.
        let many_columns: Vec<String> = (0..450)
            .map(|column| format!("ADD COLUMN a_rather_long_column_name_{column:03} INT"))
            .collect();
        let long_alter = format!("ALTER TABLE shop.t {}", many_columns.join(", "));
        assert!(long_alter.len() > 17_000);
        mariadb
            .exec(&[
                "CREATE TABLE shop.orders (id INT PRIMARY KEY, total INT)",
                "ALTER TABLE shop.orders ADD COLUMN note VARCHAR(20)",
                "INSERT INTO shop.orders VALUES (1, 10, 'a')",
                &long_alter,
                "DROP TABLE shop.orders",
            ])
            .await;
        let changes = wait_for_schema_changes(&mut client, &id, 4).await;
        let seen: Vec<(&str, &str, &str)> = changes
            .iter()
            .map(|change| {
                let verb = change.statement.split_whitespace().next().unwrap_or("");
                (verb, change.schema.as_str(), change.table.as_str())
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("CREATE", "shop", "orders"),
                ("ALTER", "shop", "orders"),
                ("ALTER", "shop", "t"),
                ("DROP", "shop", "orders"),
            ],
            "{changes:#?}"
        );
        assert_eq!(
            changes[1].statement,
            "ALTER TABLE shop.orders ADD COLUMN note VARCHAR(20)"
        );
        assert!(!changes[1].statement_truncated);
        // Cut at 16,384 characters, and said so.
        assert!(changes[2].statement_truncated);
        assert_eq!(changes[2].statement.chars().count(), 16_384);
        assert!(long_alter.starts_with(&changes[2].statement));
        // In binlog order; each produced a snapshot version of its own, later than the last.
        for pair in changes.windows(2) {
            assert!(
                (&pair[0].binlog_file, pair[0].binlog_position)
                    < (&pair[1].binlog_file, pair[1].binlog_position),
                "{pair:#?}"
            );
            assert!(pair[0].change_id < pair[1].change_id);
            assert!(pair[0].snapshot_version < pair[1].snapshot_version);
        }
        assert!(changes.iter().all(|change| change.committed_at.is_some()));
        // The snapshot versions are the server's snapshots: the DDL's table as it was after it.
        let state = index_state(&app.db, &id).await;
        assert!(
            state
                .current_snapshot()
                .snapshot
                .to_string()
                .contains("\"t\""),
            "the current snapshot still holds shop.t"
        );

        // Pages of one: the same changes, none twice; the filter narrows them.
        let paged = all_schema_changes(&mut client, &id, "", 1).await;
        assert_eq!(paged, changes);
        let orders = all_schema_changes(&mut client, &id, r#"table = "orders""#, 0).await;
        assert_eq!(orders.len(), 3);
        let after = changes[2].committed_at.expect("a commit time");
        let since = chrono::DateTime::from_timestamp(after.seconds, 0)
            .expect("a time")
            .to_rfc3339();
        let later = all_schema_changes(
            &mut client,
            &id,
            &format!(r#"schema = "shop" AND committed_at >= "{since}""#),
            0,
        )
        .await;
        let expected: Vec<_> = changes
            .iter()
            .filter(|change| {
                change
                    .committed_at
                    .is_some_and(|at| at.seconds >= after.seconds)
            })
            .cloned()
            .collect();
        assert_eq!(later, expected);
        assert!(later.contains(&changes[3]));
        let none = all_schema_changes(&mut client, &id, r#"schema = "crm""#, 0).await;
        assert!(none.is_empty(), "{none:#?}");

        // A restart from the file's start replays every statement: none is recorded twice.
        client
            .restart_stream(restart_at(&id, &changes[0].binlog_file, 4))
            .await
            .expect("RestartStream");
        wait_stream(&mut client, &id, "the restarted stream to run", running).await;
        mariadb
            .exec(&["CREATE TABLE shop.after_restart (id INT PRIMARY KEY)"])
            .await;
        let started = Instant::now();
        let again = loop {
            let again = all_schema_changes(&mut client, &id, "", 0).await;
            if again.iter().any(|change| change.table == "after_restart")
                || started.elapsed() > CAPTURE
            {
                break again;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for change in &changes {
            let copies = again
                .iter()
                .filter(|other| {
                    (&other.binlog_file, other.binlog_position, &other.table)
                        == (&change.binlog_file, change.binlog_position, &change.table)
                })
                .count();
            assert_eq!(copies, 1, "{change:#?} in {again:#?}");
            assert!(again.contains(change), "kept as it was: {change:#?}");
        }
        assert_eq!(
            again.last().map(|change| change.table.as_str()),
            Some("after_restart")
        );

        // REST: the same feed, as JSON.
        let url = format!(
            "http://{}/servers/{id}/schema-changes?page_size=2",
            app.http_addr
        );
        let response = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&app.tenant.key)
            .send()
            .await
            .expect("GET schema-changes");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let body: serde_json::Value = response.json().await.expect("JSON");
        let listed = body["schema_changes"].as_array().expect("schema_changes");
        assert_eq!(listed.len(), 2, "{body}");
        assert_eq!(listed[0]["table"], "orders");
        assert_eq!(listed[0]["statement_truncated"], false);
        assert_eq!(
            listed[0]["snapshot_version"], changes[0].snapshot_version,
            "{body}"
        );
        assert!(!body["next_page_token"].as_str().unwrap_or("").is_empty());
        app.shutdown().await;
    });
}

#[test]
fn schema_changes_need_changes_read_stay_within_the_tenant_and_name_bad_input() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let id = register(&mut client, direct_server("feed")).await.server_id;
        // A server whose index tables do not exist yet: an empty feed.
        assert!(all_schema_changes(&mut client, &id, "", 0).await.is_empty());

        let refused = |key: String, server_id: String| {
            let mut client = app.client_with_key(&key);
            async move {
                expect_err(
                    client
                        .list_schema_changes(ListSchemaChangesRequest {
                            server_id,
                            ..Default::default()
                        })
                        .await,
                )
            }
        };
        let reader = app.key_with(&["servers:read"]).await;
        let status = refused(reader.secret.clone(), id.clone()).await;
        assert_error(&status, Code::PermissionDenied, "MISSING_PERMISSION");
        let changes_reader = app.key_with(&["changes:read"]).await;
        app.client_with_key(&changes_reader.secret)
            .list_schema_changes(ListSchemaChangesRequest {
                server_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("changes:read is enough");
        let other = app.other_tenant("other").await;
        let status = refused(other.key.clone(), id.clone()).await;
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");
        let status = refused(app.tenant.key.clone(), "not-a-uuid".into()).await;
        assert_bad_request(&status, &["server_id"]);

        for (request, fields) in [
            (
                ListSchemaChangesRequest {
                    filter: "type = insert".into(),
                    ..Default::default()
                },
                &["filter"][..],
            ),
            (
                ListSchemaChangesRequest {
                    page_size: -1,
                    ..Default::default()
                },
                &["page_size"][..],
            ),
        ] {
            let status = expect_err(
                client
                    .list_schema_changes(ListSchemaChangesRequest {
                        server_id: id.clone(),
                        ..request
                    })
                    .await,
            );
            assert_bad_request(&status, fields);
            assert!(
                status.message().contains("schema, table and committed_at")
                    || fields == ["page_size"],
                "{status:?}"
            );
        }
        let status = expect_err(
            client
                .list_schema_changes(ListSchemaChangesRequest {
                    server_id: id.clone(),
                    page_token: "forged".into(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        // REST: the same permission.
        let url = format!("http://{}/servers/{id}/schema-changes", app.http_addr);
        let response = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&reader.secret)
            .send()
            .await
            .expect("GET schema-changes");
        assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
        app.shutdown().await;
    });
}
