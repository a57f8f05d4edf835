//! Real onboarding against private MariaDB instances, through the gRPC API: the happy path watched
//! step by step, the schema snapshot and its stream filters, idempotent re-runs of initializing and
//! snapshotting, and 50 servers onboarded at once.
//!
//! Every server registered here points at 127.0.0.1 and a MariaDB this test started.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::mariadb::*;
use crate::common::*;
use dbtrail_servers::domain::onboarding::FIREWALL_AUTO_COMPLETED;
use dbtrail_servers::proto::{self, ListServersRequest, OnboardingStep, ServerStatus};
use futures_util::future::join_all;

/// Between two messages of a watch.
const NEXT: Duration = Duration::from_secs(20);

fn stream_options(schemas: &[&str], tables: &[&str]) -> proto::StreamOptions {
    proto::StreamOptions {
        schemas: schemas.iter().map(|schema| schema.to_string()).collect(),
        tables: tables.iter().map(|table| table.to_string()).collect(),
        ..Default::default()
    }
}

/// The (schema, table) pairs of a stored snapshot.
fn snapshot_tables(snapshot: &serde_json::Value) -> BTreeSet<(String, String)> {
    snapshot
        .as_array()
        .unwrap_or_else(|| panic!("a snapshot is a list of tables: {snapshot}"))
        .iter()
        .map(|table| {
            (
                table["schema"].as_str().expect("a schema").to_owned(),
                table["name"].as_str().expect("a name").to_owned(),
            )
        })
        .collect()
}

fn pairs(tables: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    tables
        .iter()
        .map(|(schema, name)| (schema.to_string(), name.to_string()))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// 1. Happy path
// ------------------------------------------------------------------------------------------------

#[test]
fn a_correctly_configured_server_goes_from_provisioning_to_active() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.orders (id INT PRIMARY KEY, total DECIMAL(10,2) NOT NULL, \
                 note VARCHAR(100) NULL) ENGINE=InnoDB",
            "CREATE TABLE shop.customers (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL)",
            "CREATE DATABASE crm",
            "CREATE TABLE crm.contacts (id INT PRIMARY KEY, email VARCHAR(200))",
            "INSERT INTO shop.orders VALUES (1, 9.99, 'first')",
        ])
        .await;
        // onboarding.md §7: MariaDB 10.11 prints REPLICATION CLIENT as BINLOG MONITOR.
        let grants = mariadb.grants(USER).await;
        assert!(
            grants[0].starts_with(
                "GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `bintrail`@`%`"
            ),
            "{grants:?}"
        );
        // Nothing writes this MariaDB's binlog from here on: the checkpoint must be exactly this.
        let master = mariadb.master_status().await.expect("the binlog is on");
        let gtid = mariadb.gtid_binlog_pos().await;
        assert!(!gtid.is_empty(), "the writes above have a GTID");

        let app = mysql_app().await;
        let mut client = app.client();
        let server = register(
            &mut client,
            mariadb.server("orders-primary", USER, PASSWORD),
        )
        .await;
        assert_eq!(server.status, ServerStatus::Pending as i32);
        let id = server.server_id.clone();

        // Opened right after registration; since_revision 0 replays what happened before it opened,
        // so it sees every revision from the registration on.
        let mut watch = open_watch(&mut client, &id, Some(0), false)
            .await
            .expect("WatchOnboarding");
        // And one without since_revision: the current status, then each change as it commits.
        let mut live = open_watch(&mut client, &id, None, false)
            .await
            .expect("WatchOnboarding");
        let (messages, last) = watch_until_settled(&mut watch, &mut client, &id, NEXT).await;
        assert!(
            matches!(watch.next(Duration::from_secs(5)).await, WatchEvent::Ended),
            "a watch without follow ends after the active message"
        );
        let revisions: Vec<Revision> = messages.iter().map(Revision::from_status).collect();
        assert_eq!(
            revisions,
            clean_onboarding(1),
            "every step starts and completes once, in order, one revision per transition: \
             {messages:#?}"
        );
        for message in &messages {
            assert_eq!(message.server_id, id);
            assert_six_steps_in_order(message);
            assert_outbound_ip_invariant(message);
            assert_eq!(message.error, None, "{message:#?}");
        }
        let live_messages = live
            .messages_until(NEXT, |message| {
                message.server_status != ServerStatus::Pending as i32
            })
            .await;
        assert!(
            messages.ends_with(&live_messages),
            "the live watch saw a gap-free tail of the same revisions: {live_messages:#?}"
        );
        // Each message's current step is the one in progress.
        for (index, message) in messages.iter().enumerate().take(7).skip(1) {
            assert_eq!(
                message.current_step,
                Some(STEPS[index - 1] as i32),
                "{message:#?}"
            );
        }

        assert_active(&last);
        assert_server_agrees(&client, &last).await;

        // What each step says.
        assert_eq!(
            step(&last, OnboardingStep::Provisioning).message,
            format!("assigned to an agent with outbound IP {AGENT_OUTBOUND_IP}")
        );
        assert_eq!(
            step(&last, OnboardingStep::AwaitingFirewall).message,
            FIREWALL_AUTO_COMPLETED
        );
        assert!(mariadb.version.contains("MariaDB"), "{}", mariadb.version);
        assert_eq!(
            step(&last, OnboardingStep::WaitingForAgent).message,
            format!(
                "logged in to MariaDB {} at 127.0.0.1:{} as {USER}",
                mariadb.version, mariadb.port
            )
        );
        assert_eq!(
            step(&last, OnboardingStep::Initializing).message,
            "log_bin ON, binlog_format ROW, binlog_row_image FULL, replication grants present; \
             index tables ready; binlog retention unlimited (no expiry set), sync_binlog 0, \
             binlog_row_metadata NO_LOG"
        );
        // MariaDB's default sync_binlog is 0 (tests/api/mysql_checks.rs has the warnings).
        assert_eq!(
            step(&last, OnboardingStep::Initializing).warnings.len(),
            1,
            "{last:#?}"
        );
        assert_eq!(
            step(&last, OnboardingStep::Snapshotting).message,
            "snapshot of 2 schemas and 3 tables"
        );

        // The index schema, the snapshot and the checkpoint in PostgreSQL.
        let state = index_state(&app.db, &id).await;
        assert_eq!(state.all_index_schemas, vec![state.schema.clone()]);
        assert_eq!(state.tables, ["schema_changes", "schema_snapshots"]);
        assert_eq!(state.snapshots.len(), 1, "{state:#?}");
        let snapshot = state.current_snapshot();
        assert_eq!((snapshot.schema_count, snapshot.table_count), (2, 3));
        assert_eq!(
            snapshot_tables(&snapshot.snapshot),
            pairs(&[
                ("crm", "contacts"),
                ("shop", "customers"),
                ("shop", "orders")
            ])
        );
        let orders = snapshot
            .snapshot
            .as_array()
            .unwrap()
            .iter()
            .find(|table| table["schema"] == "shop" && table["name"] == "orders")
            .expect("shop.orders in the snapshot");
        assert_eq!(orders["engine"], "InnoDB");
        assert_eq!(orders["primary_key"], serde_json::json!(["id"]));
        assert_eq!(
            orders["columns"],
            serde_json::json!([
                {"name": "id", "column_type": "int(11)", "nullable": false},
                {"name": "total", "column_type": "decimal(10,2)", "nullable": false},
                {"name": "note", "column_type": "varchar(100)", "nullable": true},
            ])
        );

        let replication_server_id = state
            .replication_server_id
            .expect("a replication server id is allocated");
        assert!(
            replication_server_id >= 3_000_000_001,
            "{replication_server_id}"
        );
        assert_eq!(
            state.checkpoints,
            vec![CheckpointRow {
                binlog_file: master.file.clone(),
                binlog_position: i64::try_from(master.position).unwrap(),
                gtid_set: Some(gtid.clone()),
                replication_server_id,
            }],
            "the checkpoint is where SHOW MASTER STATUS said the binlog was"
        );
        assert_eq!(
            mariadb.master_status().await,
            Some(master.clone()),
            "nothing wrote the binlog during onboarding"
        );
        assert_eq!(state.change_events, 0);
        assert_eq!(
            step(&last, OnboardingStep::Streaming).message,
            format!(
                "streaming from {}:{} (GTID {gtid}) as replica server id {replication_server_id}; \
                 first event received",
                master.file, master.position
            )
        );
        // Whether the service closed the stream after the checkpoint or keeps it open, decommission
        // leaves no binlog dump behind. A dump thread notices a closed connection only when a send
        // fails, so the binlog gets new events until it does.
        client
            .decommission_server(proto::DecommissionServerRequest {
                server_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer");
        let processlist = "SELECT ID, USER, COMMAND, STATE FROM information_schema.PROCESSLIST \
                           WHERE COMMAND LIKE 'Binlog Dump%'";
        let mut dumps: Vec<(u64, String, String, Option<String>)> = Vec::new();
        for row in 0..50 {
            mariadb
                .exec(&[&format!(
                    "INSERT INTO shop.orders VALUES ({}, 1.00, 'after decommission')",
                    100 + row
                )])
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            dumps = mariadb.query(processlist).await;
            if dumps.is_empty() {
                break;
            }
        }
        assert!(
            dumps.is_empty(),
            "a binlog dump for the decommissioned server is still open: {dumps:?}"
        );
    });
}

// ------------------------------------------------------------------------------------------------
// 5. Table filters
// ------------------------------------------------------------------------------------------------

/// shop: orders (InnoDB, key), legacy (MyISAM, key), audit_log (InnoDB, no key), events (MyISAM,
/// no key) and a view; crm: customers (InnoDB, key); bulk: t01..t12 (InnoDB, no key). With the
/// replication user.
async fn filter_fixture() -> MariaDb {
    let mut statements = vec![
        "CREATE DATABASE shop".to_owned(),
        "CREATE TABLE shop.orders (id INT PRIMARY KEY, total DECIMAL(10,2)) ENGINE=InnoDB"
            .to_owned(),
        "CREATE TABLE shop.legacy (id INT PRIMARY KEY, payload TEXT) ENGINE=MyISAM".to_owned(),
        "CREATE TABLE shop.audit_log (at DATETIME, line TEXT) ENGINE=InnoDB".to_owned(),
        "CREATE TABLE shop.events (at DATETIME, kind VARCHAR(20)) ENGINE=MyISAM".to_owned(),
        "CREATE VIEW shop.big_orders AS SELECT id, total FROM shop.orders WHERE total > 100"
            .to_owned(),
        "CREATE DATABASE crm".to_owned(),
        "CREATE TABLE crm.customers (id INT PRIMARY KEY, name VARCHAR(50)) ENGINE=InnoDB"
            .to_owned(),
        "CREATE DATABASE bulk".to_owned(),
    ];
    for index in 1..=12 {
        statements.push(format!(
            "CREATE TABLE bulk.t{index:02} (value INT) ENGINE=InnoDB"
        ));
    }
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    mariadb_with(&statements).await
}

#[test]
fn the_snapshot_counts_tables_warns_about_keys_and_engines_and_honours_filters() {
    block_on(async {
        let mariadb = filter_fixture().await;
        let app = mysql_app().await;
        let client = app.client();

        struct Case {
            name: &'static str,
            options: Option<proto::StreamOptions>,
            message: Option<&'static str>,
            tables: Vec<(&'static str, &'static str)>,
            schema_count: i32,
            error: Option<&'static str>,
        }
        let bulk: Vec<(&str, &str)> = [
            "t01", "t02", "t03", "t04", "t05", "t06", "t07", "t08", "t09", "t10", "t11", "t12",
        ]
        .iter()
        .map(|table| ("bulk", *table))
        .collect();
        let shop = vec![
            ("shop", "audit_log"),
            ("shop", "events"),
            ("shop", "legacy"),
            ("shop", "orders"),
        ];
        let everything_but: Vec<(&str, &str)> = bulk
            .iter()
            .copied()
            .chain([("crm", "customers")])
            .chain(shop.iter().copied())
            .filter(|table| !matches!(table, ("bulk", "t01") | ("shop", "legacy")))
            .collect();
        let everything: Vec<(&str, &str)> = bulk
            .iter()
            .copied()
            .chain([("crm", "customers")])
            .chain(shop.iter().copied())
            .collect();
        let cases = [
            Case {
                name: "everything",
                options: None,
                // 14 without a key: the first ten by schema and name, then the exact rest.
                message: Some(
                    "snapshot of 3 schemas and 17 tables; warning: 14 tables without a primary \
                     key: bulk.t01, bulk.t02, bulk.t03, bulk.t04, bulk.t05, bulk.t06, bulk.t07, \
                     bulk.t08, bulk.t09, bulk.t10 and 4 more; warning: 2 tables not InnoDB: \
                     shop.events (MyISAM), shop.legacy (MyISAM)",
                ),
                tables: everything,
                schema_count: 3,
                error: None,
            },
            Case {
                name: "shop-only",
                options: Some(stream_options(&["shop"], &[])),
                message: Some(
                    "snapshot of 1 schema and 4 tables; warning: 2 tables without a primary key: \
                     shop.audit_log, shop.events; warning: 2 tables not InnoDB: \
                     shop.events (MyISAM), shop.legacy (MyISAM)",
                ),
                tables: shop,
                schema_count: 1,
                error: None,
            },
            Case {
                name: "two-tables",
                options: Some(stream_options(&[], &["crm.customers", "shop.legacy"])),
                message: Some(
                    "snapshot of 2 schemas and 2 tables; warning: 1 table not InnoDB: \
                     shop.legacy (MyISAM)",
                ),
                tables: vec![("crm", "customers"), ("shop", "legacy")],
                schema_count: 2,
                error: None,
            },
            Case {
                // Both lists must admit a table: shop's unlisted tables stay out, and so does
                // crm.customers, listed but outside the listed schemas.
                name: "schema-and-table",
                options: Some(stream_options(&["shop"], &["shop.orders", "crm.customers"])),
                message: Some("snapshot of 1 schema and 1 table"),
                tables: vec![("shop", "orders")],
                schema_count: 1,
                error: None,
            },
            Case {
                // Exclusions compare names exactly, though MariaDB's information_schema does
                // not: excluding shop.ORDERS keeps shop.orders.
                name: "schema-but-excluded",
                options: Some(proto::StreamOptions {
                    exclude_tables: vec![
                        "shop.legacy".into(),
                        "shop.events".into(),
                        "shop.ORDERS".into(),
                    ],
                    ..stream_options(&["shop"], &[])
                }),
                message: Some(
                    "snapshot of 1 schema and 2 tables; warning: 1 table without a primary key: \
                     shop.audit_log",
                ),
                tables: vec![("shop", "audit_log"), ("shop", "orders")],
                schema_count: 1,
                error: None,
            },
            Case {
                name: "everything-but",
                options: Some(proto::StreamOptions {
                    exclude_tables: vec!["bulk.t01".into(), "shop.legacy".into()],
                    ..Default::default()
                }),
                message: Some(
                    "snapshot of 3 schemas and 15 tables; warning: 13 tables without a primary \
                     key: bulk.t02, bulk.t03, bulk.t04, bulk.t05, bulk.t06, bulk.t07, bulk.t08, \
                     bulk.t09, bulk.t10, bulk.t11 and 3 more; warning: 1 table not InnoDB: \
                     shop.events (MyISAM)",
                ),
                tables: everything_but,
                schema_count: 3,
                error: None,
            },
            Case {
                // A view is not a table: a filter naming only the view matches nothing.
                name: "nothing-matches",
                options: Some(stream_options(
                    &["nope"],
                    &["shop.missing", "shop.big_orders"],
                )),
                message: None,
                tables: vec![],
                schema_count: 0,
                error: Some(
                    "nothing matches the stream filters (schemas [nope], tables [shop.missing, \
                     shop.big_orders], exclude_tables []) among the tables the user can see: a \
                     table is captured when its schema and the table itself are both listed (an \
                     empty list lists all) and it is not excluded",
                ),
            },
        ];

        // Registered at once, all against the same MariaDB.
        let registered = join_all(cases.iter().map(|case| {
            let mut client = client.clone();
            let mut server = mariadb.server(case.name, USER, PASSWORD);
            server.stream_options = case.options.clone();
            async move { register(&mut client, server).await }
        }))
        .await;

        for (case, server) in cases.iter().zip(&registered) {
            let status = wait_settled(&client, &server.server_id).await;
            let state = index_state(&app.db, &server.server_id).await;
            match case.error {
                None => {
                    assert_active(&status);
                    assert_eq!(
                        step(&status, OnboardingStep::Snapshotting).message,
                        case.message.unwrap(),
                        "case {}",
                        case.name
                    );
                    let snapshot = state.current_snapshot();
                    assert_eq!(state.snapshots.len(), 1, "case {}", case.name);
                    assert_eq!(
                        (snapshot.schema_count, snapshot.table_count),
                        (case.schema_count, case.tables.len() as i32),
                        "case {}",
                        case.name
                    );
                    assert_eq!(
                        snapshot_tables(&snapshot.snapshot),
                        pairs(&case.tables),
                        "case {}",
                        case.name
                    );
                }
                Some(expected) => {
                    let error = assert_failed_at(&status, OnboardingStep::Snapshotting);
                    assert_eq!(error, expected, "case {}", case.name);
                    assert_server_agrees(&client, &status).await;
                    assert!(
                        state.snapshots.is_empty(),
                        "no snapshot is stored: {state:#?}"
                    );
                }
            }
        }
        let schemas: BTreeSet<String> = registered
            .iter()
            .map(|server| index_schema(&server.server_id))
            .collect();
        let state = index_state(&app.db, &registered[0].server_id).await;
        assert_eq!(
            state.all_index_schemas.into_iter().collect::<BTreeSet<_>>(),
            schemas,
            "one index schema per server"
        );
    });
}

#[test]
fn the_snapshot_reads_only_the_filtered_tables_and_refuses_more_than_its_limit() {
    block_on(async {
        let mariadb = filter_fixture().await;
        let mut options = mysql_replica_options();
        options
            .extra_args
            .extend(["--snapshot-max-tables".to_owned(), "5".to_owned()]);
        let app = TestApp::start_with(options).await;
        let mut client = app.client();

        // 17 user tables, 5 of them in shop and crm: MySQL sends only those five, within the limit.
        let mut filtered = mariadb.server("filtered", USER, PASSWORD);
        filtered.stream_options = Some(stream_options(&["shop", "crm"], &[]));
        let filtered = register(&mut client, filtered).await.server_id;
        let status = wait_settled(&client, &filtered).await;
        assert_active(&status);
        assert!(
            step(&status, OnboardingStep::Snapshotting)
                .message
                .starts_with("snapshot of 2 schemas and 5 tables"),
            "{status:#?}"
        );

        // Unfiltered, the sixth table fails the step at once, saying how to stay under the limit.
        let everything = register(&mut client, mariadb.server("everything", USER, PASSWORD))
            .await
            .server_id;
        let status = wait_settled(&client, &everything).await;
        let error = assert_failed_at(&status, OnboardingStep::Snapshotting);
        assert_eq!(
            error,
            format!(
                "the schema of 127.0.0.1:{} is too large to snapshot: more than 5 tables match the \
                 stream filters; list the schemas or tables to stream in stream_options.schemas \
                 and stream_options.tables, or leave tables out with \
                 stream_options.exclude_tables",
                mariadb.port
            )
        );
        assert_eq!(step(&status, OnboardingStep::Snapshotting).attempts, 1);
        app.shutdown().await;
    });
}

// ------------------------------------------------------------------------------------------------
// 6. Idempotent steps
// ------------------------------------------------------------------------------------------------

#[test]
fn running_initializing_and_snapshotting_again_leaves_one_schema_and_one_current_snapshot() {
    block_on(async {
        let mariadb = filter_fixture().await;
        let app = mysql_app().await;
        let mut client = app.client();
        let server = register(&mut client, mariadb.server("idempotent", USER, PASSWORD)).await;
        let id = server.server_id.clone();

        let first = wait_settled(&client, &id).await;
        assert_active(&first);
        let state = index_state(&app.db, &id).await;
        assert_eq!(state.snapshots.len(), 1);
        assert_eq!(state.current_snapshot().table_count, 17);

        // stream_options changed: onboarding re-runs from snapshotting, not earlier.
        let updated = update_server(
            &mut client,
            proto::Server {
                server_id: id.clone(),
                stream_options: Some(stream_options(&["shop"], &[])),
                ..Default::default()
            },
            &["stream_options"],
        )
        .await;
        assert_eq!(updated.status, ServerStatus::Pending as i32);
        assert_eq!(
            updated.onboarding_step,
            Some(OnboardingStep::Snapshotting as i32)
        );
        let second = wait_settled(&client, &id).await;
        assert_active(&second);
        for earlier in [
            OnboardingStep::Provisioning,
            OnboardingStep::AwaitingFirewall,
            OnboardingStep::WaitingForAgent,
            OnboardingStep::Initializing,
        ] {
            assert_eq!(
                step(&second, earlier),
                step(&first, earlier),
                "{earlier:?} did not run again"
            );
        }
        for again in [OnboardingStep::Snapshotting, OnboardingStep::Streaming] {
            assert_eq!(step(&second, again).attempts, 1, "{second:#?}");
            assert_ne!(
                step(&second, again).completed_at,
                step(&first, again).completed_at,
                "{again:?} ran again"
            );
        }
        assert_eq!(
            step(&second, OnboardingStep::Snapshotting).message,
            "snapshot of 1 schema and 4 tables; warning: 2 tables without a primary key: \
                     shop.audit_log, shop.events; warning: 2 tables not InnoDB: \
                     shop.events (MyISAM), shop.legacy (MyISAM)"
        );
        let state = index_state(&app.db, &id).await;
        assert_eq!(state.all_index_schemas, vec![state.schema.clone()]);
        assert_eq!(state.snapshots.len(), 2, "{state:#?}");
        assert!(!state.snapshots[0].is_current && state.snapshots[1].is_current);
        assert_eq!(state.current_snapshot().table_count, 4);
        assert_eq!(state.checkpoints.len(), 1);
        let replication_server_id = state.replication_server_id;

        // Connection settings changed (the same password sent again) while the server cannot pass
        // initializing: it fails there, after an earlier successful run created the index schema.
        mariadb
            .exec(&["SET GLOBAL binlog_format = 'STATEMENT'"])
            .await;
        update_server(
            &mut client,
            proto::Server {
                server_id: id.clone(),
                mysql_password: PASSWORD.to_owned(),
                ..Default::default()
            },
            &["mysql_password"],
        )
        .await;
        let failed = wait_settled(&client, &id).await;
        let error = assert_failed_at(&failed, OnboardingStep::Initializing);
        assert_eq!(
            error,
            "binlog_format is STATEMENT; dbtrail needs ROW: SET GLOBAL binlog_format = 'ROW' and \
             persist it in my.cnf"
        );
        // Fixed, then retried: initializing runs (and creates the index tables) a second time.
        mariadb.exec(&["SET GLOBAL binlog_format = 'ROW'"]).await;
        let retried = retry_onboarding(&mut client, &id).await;
        assert_eq!(retried.server_status, ServerStatus::Pending as i32);
        let third = wait_settled(&client, &id).await;
        assert_active(&third);
        assert_eq!(step(&third, OnboardingStep::Initializing).attempts, 1);

        let state = index_state(&app.db, &id).await;
        assert_eq!(
            state.all_index_schemas,
            vec![state.schema.clone()],
            "exactly one index schema"
        );
        assert_eq!(state.tables, ["schema_changes", "schema_snapshots"]);
        assert_eq!(state.snapshots.len(), 3, "{state:#?}");
        assert_eq!(
            state.snapshots.iter().filter(|row| row.is_current).count(),
            1,
            "exactly one current snapshot: {state:#?}"
        );
        assert!(state.snapshots[2].is_current);
        assert_eq!(state.current_snapshot().table_count, 4);
        assert_eq!(state.checkpoints.len(), 1, "{state:#?}");
        assert_eq!(
            state.replication_server_id, replication_server_id,
            "the replication server id is allocated once"
        );
        assert_eq!(
            Some(state.checkpoints[0].replication_server_id),
            replication_server_id
        );
    });
}

// ------------------------------------------------------------------------------------------------
// 7. Concurrent onboarding
// ------------------------------------------------------------------------------------------------

const CONCURRENT_SERVERS: usize = 50;

#[test]
fn fifty_servers_registered_at_once_all_reach_active() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.orders (id INT PRIMARY KEY, total DECIMAL(10,2))",
        ])
        .await;
        let master = mariadb.master_status().await.expect("the binlog is on");
        let gtid = mariadb.gtid_binlog_pos().await;
        let app = mysql_app().await;
        let client = app.client();

        let started = Instant::now();
        let servers = join_all((0..CONCURRENT_SERVERS).map(|index| {
            let mut client = client.clone();
            let server = mariadb.server(&format!("replica-{index:02}"), USER, PASSWORD);
            async move { register(&mut client, server).await }
        }))
        .await;
        let ids: BTreeSet<String> = servers
            .iter()
            .map(|server| server.server_id.clone())
            .collect();
        assert_eq!(ids.len(), CONCURRENT_SERVERS);

        let settled = wait_for("all 50 servers to settle", Duration::from_secs(60), || {
            let mut client = client.clone();
            async move {
                let servers = client
                    .list_servers(ListServersRequest {
                        page_size: 500,
                        ..Default::default()
                    })
                    .await
                    .expect("ListServers")
                    .into_inner()
                    .servers;
                servers
                    .iter()
                    .all(|server| server.status != ServerStatus::Pending as i32)
                    .then_some(servers)
            }
        })
        .await;
        let elapsed = started.elapsed();
        eprintln!("{CONCURRENT_SERVERS} servers onboarded in {elapsed:?}");
        assert_eq!(settled.len(), CONCURRENT_SERVERS);
        let not_active: Vec<_> = settled
            .iter()
            .filter(|server| server.status != ServerStatus::Active as i32)
            .map(|server| (&server.name, server.status, &server.error))
            .collect();
        assert!(not_active.is_empty(), "not active: {not_active:#?}");

        let mut replication_ids: BTreeMap<i64, String> = BTreeMap::new();
        let mut all_schemas = None;
        for id in &ids {
            let status = onboarding_status(&mut client.clone(), id).await;
            assert_active(&status);
            let state = index_state(&app.db, id).await;
            let replication_id = state
                .replication_server_id
                .unwrap_or_else(|| panic!("server {id} has no replication server id"));
            if let Some(other) = replication_ids.insert(replication_id, id.clone()) {
                panic!("servers {other} and {id} share replication server id {replication_id}");
            }
            assert_eq!(
                state.checkpoints,
                vec![CheckpointRow {
                    binlog_file: master.file.clone(),
                    binlog_position: i64::try_from(master.position).unwrap(),
                    gtid_set: Some(gtid.clone()),
                    replication_server_id: replication_id,
                }],
                "server {id}"
            );
            assert_eq!(state.snapshots.len(), 1, "server {id}: {state:#?}");
            assert_eq!(state.current_snapshot().table_count, 1);
            all_schemas.get_or_insert(state.all_index_schemas);

            // No step ran twice, at the same time or otherwise: the stored history is exactly one
            // start and one completion of each step, one attempt each, in order.
            let history = onboarding_then_stream(stored_history(&app.db, id).await);
            assert_eq!(
                history,
                clean_onboarding(1),
                "server {id}: its onboarding history is not one clean pass"
            );
        }
        assert_eq!(replication_ids.len(), CONCURRENT_SERVERS, "50 distinct ids");
        let expected: Vec<String> = ids
            .iter()
            .map(|id| index_schema(id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            all_schemas.unwrap(),
            expected,
            "one index schema per server"
        );
        assert!(
            elapsed < Duration::from_secs(60),
            "50 onboardings took {elapsed:?}"
        );
    });
}
