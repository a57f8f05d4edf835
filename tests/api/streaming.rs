//! The live binlog stream (streaming.md) against a private MariaDB, through the public API:
//! capture of inserts, updates and deletes with names and typed values, schema changes, a killed
//! dump thread, decommission, ListChangeEvents paging, filters and permissions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::mariadb::*;
use crate::common::stream::*;
use crate::common::*;
use dbtrail_servers::proto::{
    self, DecommissionServerRequest, ListChangeEventsRequest, ServerStatus, StreamState,
};
use tonic::Code;

/// The source most tests stream from: one table, `shop.t`.
const SHOP_T: [&str; 2] = [
    "CREATE DATABASE shop",
    "CREATE TABLE shop.t (id INT PRIMARY KEY)",
];

fn stream_options(schemas: &[&str]) -> proto::StreamOptions {
    proto::StreamOptions {
        schemas: schemas.iter().map(|schema| schema.to_string()).collect(),
        ..Default::default()
    }
}

async fn wait_for_events(
    client: &mut Client,
    server_id: &str,
    filter: &str,
    count: usize,
) -> Vec<proto::ChangeEvent> {
    let started = Instant::now();
    loop {
        let events = all_events(client, server_id, filter).await;
        if events.len() >= count || started.elapsed() > CAPTURE {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn field<'a>(
    image: &'a Option<prost_types::Struct>,
    name: &str,
) -> Option<&'a prost_types::value::Kind> {
    image.as_ref()?.fields.get(name)?.kind.as_ref()
}

fn number(image: &Option<prost_types::Struct>, name: &str) -> f64 {
    match field(image, name) {
        Some(prost_types::value::Kind::NumberValue(value)) => *value,
        other => panic!("{name} is not a number: {other:?}"),
    }
}

fn text<'a>(image: &'a Option<prost_types::Struct>, name: &str) -> &'a str {
    match field(image, name) {
        Some(prost_types::value::Kind::StringValue(value)) => value,
        other => panic!("{name} is not a string: {other:?}"),
    }
}

/// The source's Binlog Dump threads.
async fn dump_threads(mariadb: &MariaDb) -> Vec<u64> {
    mariadb
        .query::<(u64, String)>("SELECT ID, COMMAND FROM information_schema.PROCESSLIST")
        .await
        .into_iter()
        .filter(|(_, command)| command.starts_with("Binlog Dump"))
        .map(|(id, _)| id)
        .collect()
}

async fn stream_of(client: &mut Client, server_id: &str) -> proto::StreamStatus {
    get_server(client, server_id)
        .await
        .stream
        .expect("an active server has a stream")
}

/// Registers `input`, waits until onboarding is active and its stream runs; returns its id.
async fn register_streaming(client: &mut Client, input: proto::Server) -> String {
    let id = register(client, input).await.server_id;
    assert_active(&wait_settled(client, &id).await);
    wait_stream(client, &id, "the stream to run", running).await;
    id
}

#[test]
fn row_changes_after_active_are_captured_once_in_order_with_names_and_values() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.items (id BIGINT UNSIGNED PRIMARY KEY, price DECIMAL(12,2), \
                 made DATETIME(6), note VARCHAR(40) NULL, blob_data BLOB, doc JSON, \
                 big BIGINT UNSIGNED) ENGINE=InnoDB",
            "CREATE DATABASE audit",
            "CREATE TABLE audit.log (id INT PRIMARY KEY, line TEXT)",
        ])
        .await;
        let app = mysql_app().await;
        let mut client = app.client();
        let mut input = mariadb.server("items", USER, PASSWORD);
        input.stream_options = Some(stream_options(&["shop"]));
        let id = register_streaming(&mut client, input).await;

        // 1,000 inserts in ten transactions, 10 updates, 5 deletes, and a filtered-out table.
        let beyond = (1u64 << 60) + 3;
        for batch in 0..10 {
            let values: Vec<String> = (0..100)
                .map(|row| {
                    let id = batch * 100 + row + 1;
                    format!(
                        "({id}, {id}.25, '2026-12-02 10:00:00.000250', NULL, x'00ff', \
                         '{{\"n\": {id}}}', {beyond})"
                    )
                })
                .collect();
            mariadb
                .exec(&[&format!(
                    "INSERT INTO shop.items VALUES {}",
                    values.join(", ")
                )])
                .await;
        }
        mariadb
            .exec(&["INSERT INTO audit.log VALUES (1, 'not tracked')"])
            .await;
        for id in 1..=10 {
            mariadb
                .exec(&[&format!(
                    "UPDATE shop.items SET note = 'updated {id}' WHERE id = {id}"
                )])
                .await;
        }
        mariadb
            .exec(&["DELETE FROM shop.items WHERE id BETWEEN 996 AND 1000"])
            .await;

        let events = wait_for_events(&mut client, &id, "", 1015).await;
        assert_eq!(events.len(), 1015, "every change once, nothing else");
        // The recent series the console draws: oldest first, 10 s apart or more, at most 30,
        // counts that only grow, the newest no ahead of the stream's own.
        let stream = stream_of(&mut client, &id).await;
        let samples = &stream.samples;
        assert!(!samples.is_empty() && samples.len() <= 30, "{samples:?}");
        assert!(samples.windows(2).all(|pair| {
            let (Some(older), Some(newer)) = (&pair[0].at, &pair[1].at) else {
                return false;
            };
            newer.seconds - older.seconds >= 10 && pair[0].events_indexed <= pair[1].events_indexed
        }));
        let newest = samples.last().expect("a sample");
        assert!(newest.at.is_some() && newest.lag_millis >= 0);
        assert!(
            newest.events_indexed <= stream.events_indexed,
            "{samples:?}"
        );
        let ids: std::collections::HashSet<&str> =
            events.iter().map(|event| event.event_id.as_str()).collect();
        assert_eq!(ids.len(), 1015, "event ids are unique");
        assert!(
            events
                .iter()
                .all(|event| event.schema == "shop" && event.table == "items")
        );
        let kinds: Vec<&str> = events.iter().map(|event| event.r#type.as_str()).collect();
        assert!(kinds[..1000].iter().all(|kind| *kind == "insert"));
        assert!(kinds[1000..1010].iter().all(|kind| *kind == "update"));
        assert!(kinds[1010..].iter().all(|kind| *kind == "delete"));
        // Binlog order: the inserts arrive by id.
        for (index, event) in events[..1000].iter().enumerate() {
            assert_eq!(number(&event.after, "id"), (index + 1) as f64);
        }
        let first = &events[0];
        assert_eq!(text(&first.after, "price"), "1.25");
        assert_eq!(text(&first.after, "made"), "2026-12-02T10:00:00.000250");
        assert!(matches!(
            field(&first.after, "note"),
            Some(prost_types::value::Kind::NullValue(_))
        ));
        assert_eq!(text(&first.after, "blob_data"), "AP8=");
        assert_eq!(text(&first.after, "big"), beyond.to_string());
        match field(&first.after, "doc") {
            Some(prost_types::value::Kind::StructValue(doc)) => {
                assert!(doc.fields.contains_key("n"), "{doc:?}")
            }
            other => panic!("a JSON column is JSON: {other:?}"),
        }
        assert!(first.before.is_none());
        assert_eq!(number(&first.primary_key, "id"), 1.0);
        assert!(!first.gtid.is_empty(), "MariaDB GTIDs are on");
        let update = &events[1000];
        assert!(matches!(
            field(&update.before, "note"),
            Some(prost_types::value::Kind::NullValue(_))
        ));
        assert_eq!(text(&update.after, "note"), "updated 1");
        let delete = &events[1014];
        assert!(delete.after.is_none());
        assert_eq!(number(&delete.before, "id"), 1000.0);

        // Filters: type, and a time after everything.
        let deletes = all_events(&mut client, &id, "type = delete AND table = \"items\"").await;
        assert_eq!(deletes.len(), 5);
        let none = all_events(&mut client, &id, "committed_at > \"2100-01-01T00:00:00Z\"").await;
        assert!(none.is_empty());
        let status = expect_err(
            client
                .list_change_events(ListChangeEventsRequest {
                    server_id: id.clone(),
                    filter: "colour = red".into(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_bad_request(&status, &["filter"]);

        // The stream's health (progress is written at most once a second).
        let server = wait_stream(
            &mut client,
            &id,
            "the progress to show every event",
            |server| {
                server
                    .stream
                    .as_ref()
                    .is_some_and(|stream| stream.events_indexed == 1015)
            },
        )
        .await;
        let stream = server.stream.expect("stream");
        assert!(!stream.binlog_file.is_empty());
        assert!(stream.gtid_set.contains('-'), "{stream:?}");
        assert!(stream.last_event_at.is_some() && stream.last_checkpoint_at.is_some());
        assert!(!stream.holder_agent_id.is_empty());

        // Metrics: events and states counted, no series per server.
        let metrics_url = format!("http://{}/metrics", app.http_addr);
        let started = Instant::now();
        let metrics = loop {
            let text = reqwest::get(&metrics_url)
                .await
                .expect("GET /metrics")
                .text()
                .await
                .expect("metrics text");
            if text.contains("dbtrail_streams{state=\"running\"} 1") || started.elapsed() > CAPTURE
            {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            metrics.contains("dbtrail_streams{state=\"running\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("dbtrail_streams{state=\"lost_position\"} 0"),
            "{metrics}"
        );
        assert!(
            metrics.contains("dbtrail_stream_events_indexed_total 1015"),
            "{metrics}"
        );
        assert!(
            metrics.contains("dbtrail_stream_oldest_checkpoint_seconds"),
            "{metrics}"
        );
        assert!(metrics.contains("dbtrail_stream_lag_seconds"), "{metrics}");
        assert!(!metrics.contains(&id), "no metric names a server");

        // A column added mid-stream is decoded by its name.
        mariadb
            .exec(&[
                "ALTER TABLE shop.items ADD COLUMN colour VARCHAR(10)",
                "INSERT INTO shop.items (id, colour) VALUES (5000, 'teal')",
            ])
            .await;
        let events = wait_for_events(&mut client, &id, "", 1016).await;
        assert_eq!(events.len(), 1016);
        assert_eq!(text(&events[1015].after, "colour"), "teal");
        // ... and the stored snapshot of that table was refreshed with it.
        let state = index_state(&app.db, &id).await;
        let snapshot = &state.current_snapshot().snapshot;
        let items = snapshot
            .as_array()
            .expect("a snapshot is a list of tables")
            .iter()
            .find(|table| table["schema"] == "shop" && table["name"] == "items")
            .expect("shop.items in the snapshot");
        let names: Vec<&str> = items["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|column| column["name"].as_str())
            .collect();
        assert_eq!(names.last(), Some(&"colour"), "{names:?}");
        assert_eq!(
            items["columns"][5]["json"],
            serde_json::json!(true),
            "MariaDB's JSON column is marked: {items}"
        );

        // A killed dump thread: the stream reconnects from its checkpoint, losing and doubling
        // nothing.
        let threads = dump_threads(&mariadb).await;
        assert_eq!(threads.len(), 1, "one binlog connection: {threads:?}");
        mariadb.exec(&[&format!("KILL {}", threads[0])]).await;
        mariadb
            .exec(&["INSERT INTO shop.items (id) VALUES (5001)"])
            .await;
        let events = wait_for_events(&mut client, &id, "", 1017).await;
        assert_eq!(
            events.len(),
            1017,
            "the insert after the kill is captured once"
        );
        let server = wait_stream(&mut client, &id, "the stream to run again", running).await;
        assert!(server.stream.unwrap().reconnects >= 1);

        // Decommission closes the binlog connection within a second.
        client
            .decommission_server(DecommissionServerRequest {
                server_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer");
        let started = Instant::now();
        while !dump_threads(&mariadb).await.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the dump thread outlived the decommission by a second"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stream = stream_of(&mut client, &id).await;
        assert_eq!(stream.state, StreamState::Stopped as i32);
        app.shutdown().await;
    });
}

#[test]
fn a_stopped_source_is_disconnected_and_its_writes_are_captured_after_it_returns() {
    block_on(async {
        let mut mariadb = mariadb_with(&SHOP_T).await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(&mut client, mariadb.server("t", USER, PASSWORD)).await;
        first_row_captured(&mariadb, &mut client, &id).await;

        // A follow watch sees each change of the stream's state as a revision.
        let mut follow = open_watch(&mut client, &id, None, true)
            .await
            .expect("WatchOnboarding");
        // Down for 12 s: the stream says disconnected at once, the server after 10 s.
        let restart = mariadb.restart(Duration::from_secs(12));
        let watch = async {
            wait_stream(
                &mut client,
                &id,
                "the server to say disconnected",
                |server| {
                    server.status == ServerStatus::Disconnected as i32
                        && server
                            .stream
                            .as_ref()
                            .is_some_and(|stream| stream.state == StreamState::Disconnected as i32)
                },
            )
            .await
        };
        let ((), server) = tokio::join!(restart, watch);
        let stream = server.stream.expect("stream");
        assert!(stream.error.is_some(), "{stream:?}");
        let seen = follow
            .messages_until(CAPTURE, |message| {
                message.server_status == ServerStatus::Disconnected as i32
            })
            .await;
        let states: Vec<Option<i32>> = seen.iter().map(|message| message.stream_state).collect();
        assert!(
            states.contains(&Some(StreamState::Disconnected as i32)),
            "the watch saw the stream disconnect: {states:?}"
        );
        assert_consecutive_revisions(&seen);
        mariadb.exec(&["INSERT INTO shop.t VALUES (2)"]).await;
        let events = wait_for_events(&mut client, &id, "", 2).await;
        assert_eq!(
            events.len(),
            2,
            "the write after the restart is captured once: {:#?}",
            get_server(&mut client, &id).await.stream
        );
        wait_stream(&mut client, &id, "the stream to run again", running).await;
        app.shutdown().await;
    });
}

/// ListChangeEvents of `server_id` with `key`, which must fail.
async fn list_refused(app: &TestApp, key: &str, server_id: &str) -> tonic::Status {
    expect_err(
        app.client_with_key(key)
            .list_change_events(ListChangeEventsRequest {
                server_id: server_id.to_owned(),
                ..Default::default()
            })
            .await,
    )
}

/// The source's count of KILL statements.
async fn kills(mariadb: &MariaDb) -> u64 {
    let rows: Vec<(String, u64)> = mariadb
        .query("SHOW GLOBAL STATUS WHERE Variable_name = 'Com_kill'")
        .await;
    rows.first().map_or(0, |(_, count)| *count)
}

#[test]
fn onboarding_to_a_running_stream_kills_no_thread_and_leaves_one_dump() {
    block_on(async {
        // A KILL wakes every dump thread waiting on the binlog, and MariaDB then starts each one's
        // heartbeat period over: the onboarding probe must end its dump without one.
        let mariadb = onboardable_mariadb().await;
        let app = mysql_app().await;
        let mut client = app.client();
        let before = kills(&mariadb).await;
        register_streaming(&mut client, mariadb.server("no-kill", USER, PASSWORD)).await;
        assert_eq!(kills(&mariadb).await, before, "onboarding killed a thread");
        let threads = dump_threads(&mariadb).await;
        assert_eq!(
            threads.len(),
            1,
            "the stream's dump and nothing else: {threads:?}"
        );
        app.shutdown().await;
    });
}

#[test]
fn change_events_need_changes_read_and_stay_within_the_tenant() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("reads")).await;
        let id = server.server_id.clone();
        // The bootstrap-like test key has every permission: an empty page.
        let page = client
            .list_change_events(ListChangeEventsRequest {
                server_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("ListChangeEvents")
            .into_inner();
        assert!(page.events.is_empty() && page.next_page_token.is_empty());

        let reader = app.key_with(&["servers:read"]).await;
        let status = list_refused(&app, &reader.secret, &id).await;
        assert_error(&status, Code::PermissionDenied, "MISSING_PERMISSION");

        let other = app.other_tenant("other").await;
        let status = list_refused(&app, &other.key, &id).await;
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");

        // REST: the same call, the same permission.
        let http = reqwest::Client::new();
        let url = format!("http://{}/servers/{id}/change-events", app.http_addr);
        let response = http
            .get(&url)
            .bearer_auth(&reader.secret)
            .send()
            .await
            .expect("GET change-events");
        assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
        app.shutdown().await;
    });
}

#[test]
fn the_change_index_query_walks_its_index() {
    block_on(async {
        let app = TestApp::start().await;
        let store = change_index(&app.db.url);
        let server = dbtrail_servers::domain::ServerId::generate();
        let filter = dbtrail_servers::domain::change::ChangeFilter::default();
        let plan = store
            .explain_list_change_events(server, &filter, 10, 100)
            .await
            .expect("EXPLAIN");
        assert!(plan.contains("Index"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        let partitions = store.change_partitions().await.expect("partitions");
        assert!(partitions.len() >= 4, "{partitions:?}");
        app.shutdown().await;
    });
}

/// A MariaDB with a table, the replication user, and a server registered through a TCP proxy
/// in front of it, streaming.
async fn streaming_through_proxy(app: &TestApp, name: &str) -> (MariaDb, TcpProxy, String) {
    let mariadb = mariadb_with(&SHOP_T).await;
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", mariadb.port)).await;
    let mut input = mariadb.server(name, USER, PASSWORD);
    input.port = i32::from(proxy.addr.port());
    let id = register_streaming(&mut app.client(), input).await;
    (mariadb, proxy, id)
}

/// Inserts row 1 into shop.t and asserts that the stream of `server_id` stores its event, and
/// nothing else.
async fn first_row_captured(mariadb: &MariaDb, client: &mut Client, server_id: &str) {
    mariadb.exec(&["INSERT INTO shop.t VALUES (1)"]).await;
    assert_eq!(wait_for_events(client, server_id, "", 1).await.len(), 1);
}

#[test]
fn a_black_holed_path_is_disconnected_within_three_heartbeats() {
    block_on(async {
        let app = mysql_app().await;
        let mut client = app.client();
        let (mariadb, proxy, id) = streaming_through_proxy(&app, "silent").await;
        first_row_captured(&mariadb, &mut client, &id).await;

        // Nothing closes: only the missing heartbeats tell (1 s period, so 3 s plus margin).
        proxy.black_hole();
        let started = Instant::now();
        let server = wait_stream(
            &mut client,
            &id,
            "the stream to notice the silence",
            |server| stream_state(server) == Some(StreamState::Disconnected),
        )
        .await;
        let noticed = started.elapsed();
        assert!(
            noticed < Duration::from_secs(6),
            "a dead path was noticed after {noticed:?}, more than 3 heartbeat periods and margin"
        );
        let error = server
            .stream
            .and_then(|stream| stream.error)
            .unwrap_or_default();
        assert!(error.contains("heartbeat"), "{error}");
        mariadb.exec(&["INSERT INTO shop.t VALUES (2)"]).await;

        proxy.restore();
        wait_stream(&mut client, &id, "the stream to run again", running).await;
        let events = wait_for_events(&mut client, &id, "", 2).await;
        assert_eq!(
            events.len(),
            2,
            "the write made while the path was dead is captured once"
        );
        app.shutdown().await;
    });
}

#[test]
fn a_binlog_purged_past_the_checkpoint_is_lost_position_until_retried() {
    block_on(async {
        let app = mysql_app().await;
        let mut client = app.client();
        let (mariadb, proxy, id) = streaming_through_proxy(&app, "purged").await;
        first_row_captured(&mariadb, &mut client, &id).await;
        let checkpoint_file = stream_of(&mut client, &id).await.binlog_file;

        // While the stream cannot reach the source, the binlog it needs is purged.
        proxy.cut();
        wait_stream(&mut client, &id, "the stream to disconnect", |server| {
            stream_state(server) == Some(StreamState::Disconnected)
        })
        .await;
        mariadb
            .exec(&[
                "INSERT INTO shop.t VALUES (2)",
                "FLUSH BINARY LOGS",
                "INSERT INTO shop.t VALUES (3)",
            ])
            .await;
        let current = mariadb.master_status().await.expect("binlog on").file;
        mariadb
            .exec(&[&format!("PURGE BINARY LOGS TO '{current}'")])
            .await;
        proxy.restore();

        let server = wait_stream(&mut client, &id, "the lost position", |server| {
            stream_state(server) == Some(StreamState::LostPosition)
        })
        .await;
        assert_eq!(server.status, ServerStatus::Error as i32);
        let error = server.error.unwrap_or_default();
        assert!(
            error.contains(&checkpoint_file) && error.contains("RetryOnboarding"),
            "the error names the purged file and the fix: {error}"
        );
        // Nothing was skipped silently: the rows of the purged file are not there.
        assert_eq!(all_events(&mut client, &id, "").await.len(), 1);

        retry_onboarding(&mut client, &id).await;
        wait_stream(
            &mut client,
            &id,
            "the stream to run from the current position",
            running,
        )
        .await;
        mariadb.exec(&["INSERT INTO shop.t VALUES (4)"]).await;
        let events = wait_for_events(&mut client, &id, "", 2).await;
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_eq!(number(&events[1].after, "id"), 4.0);
        // The gap is on record: from the checkpoint's file to where the stream restarted.
        let gaps = app
            .db
            .connect()
            .await
            .query(
                "SELECT from_file, to_file FROM stream_gaps WHERE server_id::text = $1",
                &[&id],
            )
            .await
            .expect("read stream_gaps");
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].get::<_, String>(0), checkpoint_file);
        assert_eq!(gaps[0].get::<_, String>(1), current);
        app.shutdown().await;
    });
}

#[test]
fn two_replicas_share_forty_streams_fairly() {
    block_on(async {
        let app = mysql_app().await;
        let second = app.replica(mysql_replica_options()).await;
        let mariadb = mariadb_with(&SHOP_T).await;
        let mut client = app.client();
        let mut ids = Vec::new();
        for index in 0..40 {
            let server = register(
                &mut client,
                mariadb.server(&format!("s{index}"), USER, PASSWORD),
            )
            .await;
            ids.push(server.server_id);
        }
        for id in &ids {
            wait_stream(&mut client, id, "every stream to run", running).await;
        }
        // Two sweeps (500 ms each here) and then some: the spread has settled.
        let database = app.db.connect().await;
        let started = Instant::now();
        let holders = loop {
            let rows = database
                .query(
                    "SELECT stream_owner::text, count(*) FROM servers \
                     WHERE stream_owner IS NOT NULL GROUP BY 1",
                    &[],
                )
                .await
                .expect("count stream holders");
            let counts: Vec<i64> = rows.iter().map(|row| row.get(1)).collect();
            let settled = counts.len() == 2 && counts.iter().sum::<i64>() == 40;
            if settled && counts.iter().all(|count| *count <= 21) {
                break counts;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the streams did not spread: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(holders.iter().sum::<i64>(), 40, "{holders:?}");
        // Never more binlog connections than streams: one dump thread each, once moves settle.
        let started = Instant::now();
        loop {
            let threads = dump_threads(&mariadb).await.len();
            assert!(threads <= 40, "{threads} dump threads for 40 streams");
            if threads == 40 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{threads} dump threads"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        second.shutdown().await;
        app.shutdown().await;
    });
}

#[test]
fn a_killed_replica_s_stream_resumes_elsewhere_with_every_event_once() {
    block_on(async {
        let mariadb = Arc::new(mariadb_with(&SHOP_T).await);
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let options = |agent: &str| ReplicaOptions {
            agent_name: agent.to_owned(),
            ..mysql_replica_options()
        };
        let mut replica_a = ServiceProcess::serve("replica-a", &db.url, &options("agent-a")).await;
        let mut client_a = replica_a.client(&tenant.key).await;
        let id = register(&mut client_a, mariadb.server("killed", USER, PASSWORD))
            .await
            .server_id;
        wait_stream(
            &mut client_a,
            &id,
            "the stream to run on replica A",
            running,
        )
        .await;
        let replica_b = ServiceProcess::serve("replica-b", &db.url, &options("agent-b")).await;
        let mut client_b = replica_b.client(&tenant.key).await;

        // Sample the source's dump threads throughout: never two for the one stream.
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (mariadb, sampling) = (mariadb.clone(), sampling.clone());
            tokio::spawn(async move {
                let mut most = 0;
                while sampling.load(Ordering::Relaxed) {
                    most = most.max(dump_threads(&mariadb).await.len());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                most
            })
        };
        // A burst of writes, and the holder killed in its middle.
        const ROWS: i32 = 600;
        let writer = {
            let mariadb = mariadb.clone();
            tokio::spawn(async move {
                for id in 1..=ROWS {
                    mariadb
                        .exec(&[&format!("INSERT INTO shop.t VALUES ({id})")])
                        .await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(800)).await;
        replica_a.kill().await;
        writer.await.expect("the writer");

        let server = wait_stream(
            &mut client_b,
            &id,
            "replica B to resume the stream",
            |server| {
                running(server)
                    && server
                        .stream
                        .as_ref()
                        .is_some_and(|stream| !stream.holder_agent_id.is_empty())
            },
        )
        .await;
        let events = wait_for_events(&mut client_b, &id, "", ROWS as usize).await;
        sampling.store(false, Ordering::Relaxed);
        let most = sampler.await.expect("the sampler");
        let ids: Vec<f64> = events
            .iter()
            .map(|event| number(&event.after, "id"))
            .collect();
        let expected: Vec<f64> = (1..=ROWS).map(f64::from).collect();
        assert_eq!(
            ids, expected,
            "every row once, in order, across the takeover"
        );
        assert!(
            most <= 1,
            "{most} binlog connections for one server at once"
        );
        assert!(server.stream.is_some());
        let holder: String = db
            .connect()
            .await
            .query_one(
                "SELECT a.name FROM servers s JOIN agents a ON a.id = s.agent_id WHERE s.id::text \
                 = $1",
                &[&id],
            )
            .await
            .expect("read the assigned agent")
            .get(0);
        assert_eq!(
            holder, "agent-b",
            "the new holder became the assigned agent"
        );
    });
}

#[test]
fn the_change_index_can_live_in_its_own_database() {
    block_on(async {
        let index = TestDatabase::reserve();
        let mut options = mysql_replica_options();
        options
            .extra_args
            .extend(["--index-database-url".to_owned(), index.url.clone()]);
        let app = TestApp::start_with(options).await;
        let mut client = app.client();
        let (mariadb, _proxy, id) = streaming_through_proxy(&app, "elsewhere").await;
        first_row_captured(&mariadb, &mut client, &id).await;

        assert!(
            index.exists().await,
            "the service created the index database"
        );
        let stored: i64 = index
            .connect()
            .await
            .query_one(
                "SELECT count(*) FROM change_events WHERE server_id::text = $1",
                &[&id],
            )
            .await
            .expect("count events in the index database")
            .get(0);
        assert_eq!(stored, 1);
        let in_control_plane: bool = app
            .db
            .connect()
            .await
            .query_one(
                "SELECT to_regclass('public.change_events') IS NOT NULL",
                &[],
            )
            .await
            .expect("look for change_events")
            .get(0);
        assert!(
            !in_control_plane,
            "no change index in the control plane's database"
        );
        app.shutdown().await;
    });
}

#[test]
fn sigterm_hands_a_stream_over_at_once() {
    block_on(async {
        let mariadb = mariadb_with(&SHOP_T).await;
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        // A lease TTL far above the handover time: only the release can explain a fast handover.
        let options = |agent: &str| ReplicaOptions {
            agent_name: agent.to_owned(),
            lease_ttl: "10s".to_owned(),
            ..mysql_replica_options()
        };
        let mut replica_a = ServiceProcess::serve("replica-a", &db.url, &options("agent-a")).await;
        let mut client_a = replica_a.client(&tenant.key).await;
        let id = register(&mut client_a, mariadb.server("handed-over", USER, PASSWORD))
            .await
            .server_id;
        wait_stream(
            &mut client_a,
            &id,
            "the stream to run on replica A",
            running,
        )
        .await;
        first_row_captured(&mariadb, &mut client_a, &id).await;
        let replica_b = ServiceProcess::serve("replica-b", &db.url, &options("agent-b")).await;
        let mut client_b = replica_b.client(&tenant.key).await;

        replica_a.signal(libc::SIGTERM);
        let status = replica_a.wait_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "replica A exits cleanly: {status:?}");
        let exited = Instant::now();
        mariadb.exec(&["INSERT INTO shop.t VALUES (2)"]).await;
        let events = wait_for_events(&mut client_b, &id, "", 2).await;
        let handed_over = exited.elapsed();
        assert_eq!(events.len(), 2, "every row once across the handover");
        assert!(
            handed_over < Duration::from_secs(5),
            "replica B took the stream {handed_over:?} after A exited; the lease TTL is 10 s"
        );
    });
}

#[test]
fn updates_resume_the_stream_from_its_checkpoint_through_the_new_settings() {
    block_on(async {
        let app = mysql_app().await;
        let mut client = app.client();
        let (mariadb, proxy, id) = streaming_through_proxy(&app, "moving").await;
        mariadb
            .exec(&[
                "CREATE TABLE shop.u (id INT PRIMARY KEY)",
                "INSERT INTO shop.t VALUES (1)",
            ])
            .await;
        assert_eq!(wait_for_events(&mut client, &id, "", 1).await.len(), 1);

        // A new port (the source itself instead of the proxy): onboarding re-runs, and the stream
        // resumes from its checkpoint, so a write made meanwhile is not skipped.
        let moved = update_server(
            &mut client,
            proto::Server {
                server_id: id.clone(),
                port: i32::from(mariadb.port),
                ..Default::default()
            },
            &["port"],
        )
        .await;
        assert_eq!(moved.status, ServerStatus::Pending as i32);
        mariadb.exec(&["INSERT INTO shop.t VALUES (2)"]).await;
        wait_stream(
            &mut client,
            &id,
            "the stream to run on the new port",
            running,
        )
        .await;
        proxy.cut();
        mariadb.exec(&["INSERT INTO shop.t VALUES (3)"]).await;
        let events = wait_for_events(&mut client, &id, "", 3).await;
        let ids: Vec<f64> = events
            .iter()
            .map(|event| number(&event.after, "id"))
            .collect();
        assert_eq!(
            ids,
            [1.0, 2.0, 3.0],
            "nothing skipped, nothing twice, through the new path"
        );

        // Narrower stream options: a new snapshot, the stream goes on from its checkpoint, and the
        // table left out is no longer captured.
        let mut narrowed = proto::Server {
            server_id: id.clone(),
            ..Default::default()
        };
        narrowed.stream_options = Some(proto::StreamOptions {
            tables: vec!["shop.t".into()],
            ..Default::default()
        });
        update_server(&mut client, narrowed, &["stream_options.tables"]).await;
        // Written while the stream stops and re-snapshots: captured once, by one stream or the
        // next.
        mariadb.exec(&["INSERT INTO shop.t VALUES (4)"]).await;
        wait_stream(
            &mut client,
            &id,
            "the stream to run with the new options",
            running,
        )
        .await;
        mariadb
            .exec(&[
                "INSERT INTO shop.u VALUES (1)",
                "INSERT INTO shop.t VALUES (5)",
            ])
            .await;
        let events = wait_for_events(&mut client, &id, "", 5).await;
        let tables: Vec<&str> = events.iter().map(|event| event.table.as_str()).collect();
        assert_eq!(tables, ["t", "t", "t", "t", "t"], "shop.u is left out");
        let ids: Vec<f64> = events
            .iter()
            .map(|event| number(&event.after, "id"))
            .collect();
        assert_eq!(ids, [1.0, 2.0, 3.0, 4.0, 5.0]);
        app.shutdown().await;
    });
}

#[test]
fn a_different_source_under_the_checkpoint_is_lost_position() {
    block_on(async {
        let app = mysql_app().await;
        let mut client = app.client();
        let (mut mariadb, _proxy, id) = streaming_through_proxy(&app, "replaced").await;
        first_row_captured(&mariadb, &mut client, &id).await;

        // The same address, another server: its binlog positions do not continue the checkpoint's.
        mariadb
            .restart_with_server_id(2, Duration::from_millis(200))
            .await;
        let server = wait_stream(&mut client, &id, "the lost position", |server| {
            stream_state(server) == Some(StreamState::LostPosition)
        })
        .await;
        assert_eq!(server.status, ServerStatus::Error as i32);
        let error = server.error.unwrap_or_default();
        assert!(
            error.contains("different server") && error.contains("server_id 2"),
            "{error}"
        );
        app.shutdown().await;
    });
}

#[test]
fn revoked_replication_grants_fail_the_stream_until_retried() {
    block_on(async {
        let app = mysql_app().await;
        let mut client = app.client();
        let (mariadb, _proxy, id) = streaming_through_proxy(&app, "revoked").await;
        mariadb
            .exec(&[&format!(
                "REVOKE REPLICATION SLAVE ON *.* FROM '{USER}'@'%'"
            )])
            .await;
        // The next connection is refused the binlog: a permanent refusal, not a retry loop.
        let threads = dump_threads(&mariadb).await;
        mariadb.exec(&[&format!("KILL {}", threads[0])]).await;
        let server = wait_stream(&mut client, &id, "the failed stream", |server| {
            stream_state(server) == Some(StreamState::Failed)
        })
        .await;
        assert_eq!(server.status, ServerStatus::Error as i32);
        let error = server.error.unwrap_or_default();
        assert!(
            error.contains("GRANT REPLICATION SLAVE"),
            "the fix is named: {error}"
        );

        // Granted again, RetryOnboarding resumes at streaming, from the checkpoint.
        mariadb
            .exec(&[&format!("GRANT REPLICATION SLAVE ON *.* TO '{USER}'@'%'")])
            .await;
        mariadb.exec(&["INSERT INTO shop.t VALUES (1)"]).await;
        let status = retry_onboarding(&mut client, &id).await;
        assert_eq!(
            status.current_step,
            Some(proto::OnboardingStep::Streaming as i32),
            "{status:#?}"
        );
        wait_stream(&mut client, &id, "the stream to run again", running).await;
        let events = wait_for_events(&mut client, &id, "", 1).await;
        assert_eq!(
            events.len(),
            1,
            "the write made while it was failed is captured"
        );
        app.shutdown().await;
    });
}

#[test]
fn a_replay_across_a_ddl_statement_decodes_each_row_with_the_columns_of_its_time() {
    block_on(async {
        let app = mysql_app().await;
        let mut client = app.client();
        let (mariadb, proxy, id) = streaming_through_proxy(&app, "history").await;
        mariadb
            .exec(&["CREATE TABLE shop.w (id INT PRIMARY KEY, a INT, b VARCHAR(10), c INT)"])
            .await;
        mariadb
            .exec(&["INSERT INTO shop.w VALUES (1, 10, 'x', 30)"])
            .await;
        assert_eq!(wait_for_events(&mut client, &id, "", 1).await.len(), 1);

        // While the stream cannot read, a row, a column dropped from the middle, another row: the
        // reconnected stream replays all three from its checkpoint.
        proxy.cut();
        wait_stream(&mut client, &id, "the stream to disconnect", |server| {
            stream_state(server) == Some(StreamState::Disconnected)
        })
        .await;
        mariadb
            .exec(&[
                "INSERT INTO shop.w VALUES (2, 20, 'y', 40)",
                "ALTER TABLE shop.w DROP COLUMN b",
                "INSERT INTO shop.w VALUES (3, 30, 50)",
            ])
            .await;
        proxy.restore();
        let events = wait_for_events(&mut client, &id, "", 3).await;
        assert_eq!(events.len(), 3);
        let row = |index: usize| {
            let after = events[index]
                .after
                .clone()
                .expect("an insert's after image");
            let mut names: Vec<String> = after.fields.keys().cloned().collect();
            names.sort();
            names
        };
        assert_eq!(
            row(1),
            ["a", "b", "c", "id"],
            "the row written before the DROP"
        );
        assert_eq!(text(&events[1].after, "b"), "y");
        assert_eq!(number(&events[1].after, "c"), 40.0);
        assert_eq!(row(2), ["a", "c", "id"], "the row written after it");
        assert_eq!(number(&events[2].after, "c"), 50.0);
        app.shutdown().await;
    });
}

/// Every metric that `deploy/prometheus/alerts.yml` and `deploy/grafana/dbtrail-servers.json`
/// name is exported by a replica that onboarded a server whose stream runs.
#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    block_on(async {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut named = std::collections::BTreeSet::new();
        for file in [
            "deploy/prometheus/alerts.yml",
            "deploy/grafana/dbtrail-servers.json",
        ] {
            let text = std::fs::read_to_string(root.join(file)).expect("the deploy files");
            for (start, _) in text.match_indices("dbtrail_") {
                let name: String = text[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name)
                    .to_owned();
                // The dashboard's uid and title, the alerts' names.
                if name != "dbtrail_servers" {
                    named.insert(name);
                }
            }
        }
        assert!(named.len() >= 15, "{named:?}");

        let mariadb = onboardable_mariadb().await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(&mut client, mariadb.server("observed", USER, PASSWORD)).await;
        mariadb.exec(&["INSERT INTO shop.items VALUES (1)"]).await;
        assert_eq!(wait_for_events(&mut client, &id, "", 1).await.len(), 1);
        let _watch = open_watch(&mut client, &id, None, true)
            .await
            .expect("a watch");
        let (status, _) = http_get(app.http_addr, "/servers").await;
        assert_eq!(status, 401);

        let mut missing = Vec::new();
        for _ in 0..100 {
            let (_, exported) = http_get(app.http_addr, "/metrics").await;
            missing = named
                .iter()
                .filter(|name| !exported.contains(&format!("# TYPE {name} ")))
                .cloned()
                .collect();
            if missing.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(missing.is_empty(), "named but not exported: {missing:?}");
        app.shutdown().await;
    });
}

/// The `schema.table` names of the server's current snapshot.
async fn snapshot_names(app: &TestApp, server_id: &str) -> Vec<String> {
    let state = index_state(&app.db, server_id).await;
    let snapshot = &state.current_snapshot().snapshot;
    snapshot
        .as_array()
        .unwrap_or_else(|| panic!("a snapshot is a list of tables: {snapshot}"))
        .iter()
        .map(|table| format!("{}.{}", table["schema"], table["name"]).replace('"', ""))
        .collect()
}

/// Waits until `events_indexed` reaches `count`, then checks that it is exactly that.
async fn assert_events_indexed(client: &mut Client, server_id: &str, count: i64) {
    wait_stream(
        client,
        server_id,
        "events_indexed to count the events",
        |server| {
            server
                .stream
                .as_ref()
                .is_some_and(|stream| stream.events_indexed >= count)
        },
    )
    .await;
    assert_eq!(stream_of(client, server_id).await.events_indexed, count);
}

/// The tables and `after.id` of the stored change events, in binlog order.
fn tables_and_ids(events: &[proto::ChangeEvent]) -> Vec<(String, f64)> {
    events
        .iter()
        .map(|event| {
            (
                format!("{}.{}", event.schema, event.table),
                number(&event.after, "id"),
            )
        })
        .collect()
}

/// streaming.md §6: `schemas` and `tables` both filter, so a table of a listed schema that
/// `tables` does not list is in neither the snapshot nor the stream, and events_indexed counts
/// only what is stored.
#[test]
fn a_listed_schema_s_unlisted_table_is_neither_snapshotted_nor_captured() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.orders (id INT PRIMARY KEY)",
            "CREATE TABLE shop.ignored (id INT PRIMARY KEY)",
        ])
        .await;
        let app = mysql_app().await;
        let mut client = app.client();
        let mut input = mariadb.server("narrow", USER, PASSWORD);
        input.stream_options = Some(proto::StreamOptions {
            schemas: vec!["shop".into()],
            tables: vec!["shop.orders".into()],
            ..Default::default()
        });
        let id = register_streaming(&mut client, input).await;
        assert_eq!(snapshot_names(&app, &id).await, ["shop.orders"]);

        // Rows of the unlisted table alone, in a transaction with a listed one, and just before
        // the last listed row: the listed rows arrive in order, the others never.
        mariadb
            .exec(&[
                "INSERT INTO shop.ignored VALUES (1), (2), (3)",
                "INSERT INTO shop.orders VALUES (1)",
                "START TRANSACTION",
                "INSERT INTO shop.ignored VALUES (4)",
                "INSERT INTO shop.orders VALUES (2)",
                "UPDATE shop.ignored SET id = 40 WHERE id = 4",
                "COMMIT",
                "INSERT INTO shop.ignored VALUES (5)",
                "INSERT INTO shop.orders VALUES (3)",
            ])
            .await;
        let events = wait_for_events(&mut client, &id, "", 3).await;
        let orders = |id: f64| ("shop.orders".to_owned(), id);
        assert_eq!(
            tables_and_ids(&events),
            [orders(1.0), orders(2.0), orders(3.0)]
        );
        assert_events_indexed(&mut client, &id, 3).await;
        assert_eq!(index_state(&app.db, &id).await.change_events, 3);
        app.shutdown().await;
    });
}

/// streaming.md §6: `exclude_tables` keeps one table of a whole schema out of the snapshot and
/// the stream; a DDL statement on it does not bring it in, and neither does a stored snapshot
/// that still holds it (one taken under the old rule, where a listed schema let every table in).
#[test]
fn an_excluded_table_stays_out_of_the_snapshot_and_the_stream() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.t (id INT PRIMARY KEY)",
            "CREATE TABLE shop.sessions (id INT PRIMARY KEY)",
        ])
        .await;
        let proxy = TcpProxy::start(format!("127.0.0.1:{}", mariadb.port)).await;
        let app = mysql_app().await;
        let mut client = app.client();
        let mut input = mariadb.server("excluding", USER, PASSWORD);
        input.port = i32::from(proxy.addr.port());
        input.stream_options = Some(proto::StreamOptions {
            schemas: vec!["shop".into()],
            exclude_tables: vec!["shop.sessions".into()],
            ..Default::default()
        });
        let id = register_streaming(&mut client, input).await;
        assert_eq!(snapshot_names(&app, &id).await, ["shop.t"]);

        mariadb
            .exec(&[
                "INSERT INTO shop.sessions VALUES (1)",
                "INSERT INTO shop.t VALUES (1)",
                "ALTER TABLE shop.sessions ADD COLUMN note TEXT",
                "INSERT INTO shop.sessions VALUES (2, 'after the DDL')",
                "INSERT INTO shop.t VALUES (2)",
            ])
            .await;
        let events = wait_for_events(&mut client, &id, "", 2).await;
        let t = |id: f64| ("shop.t".to_owned(), id);
        assert_eq!(tables_and_ids(&events), [t(1.0), t(2.0)]);
        assert_eq!(snapshot_names(&app, &id).await, ["shop.t"]);

        // A snapshot holding shop.sessions, as one taken before the rule was would: the stream
        // reads it when it reconnects, and still leaves the excluded table out.
        let state = index_state(&app.db, &id).await;
        let mut tables = state.current_snapshot().snapshot.clone();
        let sessions = serde_json::json!({
            "schema": "shop", "name": "sessions", "engine": "InnoDB", "primary_key": ["id"],
            "columns": [
                {"name": "id", "column_type": "int(11)", "nullable": false},
                {"name": "note", "column_type": "text", "nullable": true},
            ],
        });
        tables
            .as_array_mut()
            .expect("a list of tables")
            .push(sessions);
        app.db
            .connect()
            .await
            .execute(
                &format!(
                    "UPDATE {}.schema_snapshots SET snapshot = $1::text::jsonb WHERE is_current",
                    state.schema
                ),
                &[&tables.to_string()],
            )
            .await
            .expect("plant an old-rule snapshot");
        assert_eq!(snapshot_names(&app, &id).await, ["shop.t", "shop.sessions"]);
        proxy.cut();
        wait_stream(&mut client, &id, "the stream to disconnect", |server| {
            stream_state(server) == Some(StreamState::Disconnected)
        })
        .await;
        mariadb
            .exec(&[
                "INSERT INTO shop.sessions VALUES (3, 'while away')",
                "INSERT INTO shop.t VALUES (3)",
            ])
            .await;
        proxy.restore();
        wait_stream(&mut client, &id, "the stream to run again", running).await;
        mariadb
            .exec(&[
                "INSERT INTO shop.sessions VALUES (4, 'after')",
                "INSERT INTO shop.t VALUES (4)",
            ])
            .await;
        let events = wait_for_events(&mut client, &id, "", 4).await;
        assert_eq!(tables_and_ids(&events), [t(1.0), t(2.0), t(3.0), t(4.0)]);
        assert_events_indexed(&mut client, &id, 4).await;
        app.shutdown().await;
    });
}

/// Where the events of the source's binlog file start (SHOW BINLOG EVENTS), with their types.
async fn binlog_events(mariadb: &MariaDb, file: &str) -> Vec<(u64, String)> {
    mariadb
        .query::<(String, u64, String, u32, u64, String)>(&format!(
            "SHOW BINLOG EVENTS IN '{file}'"
        ))
        .await
        .into_iter()
        .map(|(_, position, kind, _, _, _)| (position, kind))
        .collect()
}

#[test]
fn restart_stream_refuses_what_the_source_cannot_serve() {
    block_on(async {
        let mariadb = mariadb_with(&SHOP_T).await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(
            &mut client,
            mariadb.server("restart-refused", USER, PASSWORD),
        )
        .await;
        mariadb.exec(&["INSERT INTO shop.t VALUES (1)"]).await;
        wait_for_events(&mut client, &id, "", 1).await;
        let status = mariadb.master_status().await.expect("binlog on");
        let events = binlog_events(&mariadb, &status.file).await;
        let table_map = events
            .iter()
            .find(|(_, kind)| kind == "Table_map")
            .expect("the insert's table map")
            .0;

        let refused = |request: proto::RestartStreamRequest| {
            let mut client = app.client();
            async move { expect_err(client.restart_stream(request).await) }
        };
        let cases = [
            (
                restart_at(&id, "mysql-bin.999999", 4),
                "BINLOG_FILE_NOT_ON_SOURCE",
            ),
            (
                restart_at(&id, &status.file, status.position as i64 + 1000),
                "POSITION_PAST_END",
            ),
            (restart_at(&id, &status.file, 5), "POSITION_INSIDE_EVENT"),
            (
                restart_at(&id, &status.file, table_map as i64),
                "POSITION_INSIDE_TRANSACTION",
            ),
        ];
        let unknown_gtid = proto::RestartStreamRequest {
            gtid_set: "0-1-999999".into(),
            ..restart_at(&id, "", 0)
        };
        let error = refused(unknown_gtid).await;
        assert_error(&error, Code::FailedPrecondition, "GTID_NOT_ON_SOURCE");
        assert!(
            error.message().contains("0-1-999999"),
            "{}",
            error.message()
        );
        for (request, reason) in cases {
            let error = refused(request.clone()).await;
            assert_error(&error, Code::FailedPrecondition, reason);
            assert!(
                error.message().contains(&request.binlog_file),
                "the refusal names the file: {}",
                error.message()
            );
        }
        // Bad requests never reach the source.
        let invalid = [
            (restart_at(&id, "", 0), "binlog_file"),
            (restart_at(&id, "../../etc/passwd", 4), "binlog_file"),
            (restart_at(&id, &status.file, 3), "binlog_position"),
            (
                proto::RestartStreamRequest {
                    current_position: true,
                    ..restart_at(&id, &status.file, 4)
                },
                "current_position",
            ),
            (
                proto::RestartStreamRequest {
                    gtid_set: "0-1".into(),
                    ..restart_at(&id, "", 0)
                },
                "gtid_set",
            ),
        ];
        for (request, field) in invalid {
            let error = refused(request).await;
            assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
            assert_eq!(bad_request_fields(&error), [field.to_owned()], "{error:?}");
        }
        // A server whose onboarding never reached streaming has no stream to restart.
        let pending = register(&mut client, direct_server("restart-pending")).await;
        let error = refused(proto::RestartStreamRequest {
            current_position: true,
            ..restart_at(&pending.server_id, "", 0)
        })
        .await;
        assert_error(&error, Code::FailedPrecondition, "NOT_STREAMING");
        // The stream runs on, as before.
        mariadb.exec(&["INSERT INTO shop.t VALUES (2)"]).await;
        assert_eq!(wait_for_events(&mut client, &id, "", 2).await.len(), 2);
        app.shutdown().await;
    });
}

#[test]
fn restart_stream_reads_again_without_storing_twice_and_records_gaps() {
    block_on(async {
        let mariadb = mariadb_with(&SHOP_T).await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(
            &mut client,
            mariadb.server("restart-overlap", USER, PASSWORD),
        )
        .await;
        let file = mariadb.master_status().await.expect("binlog on").file;
        mariadb
            .exec(&[
                "INSERT INTO shop.t VALUES (1)",
                "INSERT INTO shop.t VALUES (2), (3)",
            ])
            .await;
        let before = wait_for_events(&mut client, &id, "", 3).await;
        assert_eq!(before.len(), 3);

        // An overlap: the whole file again. What is stored keeps its ids and is not stored twice.
        let restarted = client
            .restart_stream(restart_at(&id, &file, 4))
            .await
            .expect("RestartStream")
            .into_inner();
        assert_eq!(
            restarted.stream.as_ref().map(|s| s.state),
            Some(StreamState::Starting as i32)
        );
        wait_stream(&mut client, &id, "the restarted stream to run", running).await;
        mariadb.exec(&["INSERT INTO shop.t VALUES (4)"]).await;
        let after = wait_for_events(&mut client, &id, "", 4).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after_settled = all_events(&mut client, &id, "").await;
        assert_eq!(after_settled.len(), 4, "{after_settled:#?}");
        assert_eq!(
            after[..3],
            before[..],
            "stored events are neither repeated nor changed"
        );
        assert_eq!(number(&after[3].after, "id"), 4.0);
        let server = get_server(&mut client, &id).await;
        assert_eq!(server.stream.expect("stream").events_indexed, 4);

        // The history says so: a revision whose streaming step names the overlap, which
        // WatchOnboarding replays.
        let revisions = app
            .db
            .connect()
            .await
            .query(
                "SELECT revision FROM onboarding_history WHERE server_id::text = $1 \
                 AND status::text LIKE '%overlap%'",
                &[&id],
            )
            .await
            .expect("read onboarding_history");
        assert!(!revisions.is_empty(), "a revision tells of the overlap");

        // The end of a GTID set: just after the transaction of the first insert, so the rest is
        // read again and nothing is stored twice.
        let first_gtid = after[0].gtid.clone();
        let restarted = client
            .restart_stream(proto::RestartStreamRequest {
                gtid_set: first_gtid.clone(),
                ..restart_at(&id, "", 0)
            })
            .await
            .expect("RestartStream after a GTID")
            .into_inner();
        assert_eq!(restarted.status, ServerStatus::Active as i32);
        let events = binlog_events(&mariadb, &file).await;
        let after_first = events
            .iter()
            .filter(|(_, kind)| kind == "Gtid")
            .map(|(position, _)| *position)
            .find(|position| *position > after[0].binlog_position as u64)
            .expect("the second transaction's GTID event");
        wait_stream(
            &mut client,
            &id,
            "the stream to run after the GTID",
            running,
        )
        .await;
        mariadb.exec(&["INSERT INTO shop.t VALUES (5)"]).await;
        let settled = wait_for_events(&mut client, &id, "", 5).await;
        assert_eq!(settled.len(), 5, "{settled:#?}");
        assert_eq!(settled[..4], after_settled[..]);
        let revisions = app
            .db
            .connect()
            .await
            .query(
                "SELECT revision FROM onboarding_history WHERE server_id::text = $1 \
                 AND status::text LIKE $2",
                &[&id, &format!("%restarted at {file}:{after_first}%")],
            )
            .await
            .expect("read onboarding_history");
        assert!(
            !revisions.is_empty(),
            "the restart after {first_gtid} starts at the next transaction, {file}:{after_first}"
        );
        app.shutdown().await;
    });
}

#[test]
fn restart_stream_after_a_lost_position_records_the_gap_and_streams_again() {
    block_on(async {
        let app = mysql_app().await;
        let mut client = app.client();
        let (mariadb, proxy, id) = streaming_through_proxy(&app, "restart-gap").await;
        first_row_captured(&mariadb, &mut client, &id).await;
        let checkpoint = stream_of(&mut client, &id).await;
        proxy.cut();
        wait_stream(&mut client, &id, "the stream to disconnect", |server| {
            stream_state(server) == Some(StreamState::Disconnected)
        })
        .await;
        mariadb
            .exec(&["INSERT INTO shop.t VALUES (2)", "FLUSH BINARY LOGS"])
            .await;
        let current = mariadb.master_status().await.expect("binlog on");
        // The cut path leaves the source's dump thread reading the old file, which MariaDB
        // would not purge.
        let started = Instant::now();
        loop {
            for thread in dump_threads(&mariadb).await {
                mariadb.exec(&[&format!("KILL {thread}")]).await;
            }
            mariadb
                .exec(&[&format!("PURGE BINARY LOGS TO '{}'", current.file)])
                .await;
            let files: Vec<(String, u64)> = mariadb.query("SHOW BINARY LOGS").await;
            if files.len() == 1 {
                break;
            }
            assert!(
                started.elapsed() < CAPTURE,
                "the old file could not be purged: {files:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // MariaDB marks the purge in the binlog: the current position is read after it.
        let current = mariadb.master_status().await.expect("binlog on");
        proxy.restore();
        wait_stream(&mut client, &id, "the lost position", |server| {
            stream_state(server) == Some(StreamState::LostPosition)
        })
        .await;

        // The purged file cannot be restarted from; the current position can, with the gap
        // recorded.
        let error = expect_err(
            client
                .restart_stream(restart_at(&id, &checkpoint.binlog_file, 4))
                .await,
        );
        assert_error(
            &error,
            Code::FailedPrecondition,
            "BINLOG_FILE_NOT_ON_SOURCE",
        );
        let server = client
            .restart_stream(proto::RestartStreamRequest {
                current_position: true,
                ..restart_at(&id, "", 0)
            })
            .await
            .expect("RestartStream to the current position")
            .into_inner();
        assert_eq!(server.status, ServerStatus::Active as i32);
        assert_eq!(server.error, None);
        wait_stream(&mut client, &id, "the stream to run again", running).await;
        let gaps = app
            .db
            .connect()
            .await
            .query(
                "SELECT from_file, from_position, to_file, to_position, reason FROM stream_gaps \
                 WHERE server_id::text = $1",
                &[&id],
            )
            .await
            .expect("read stream_gaps");
        assert_eq!(gaps.len(), 1, "the gap is recorded once");
        assert_eq!(gaps[0].get::<_, String>(0), checkpoint.binlog_file);
        // The checkpoint may have moved past what the progress showed (written once a second).
        assert!(gaps[0].get::<_, i64>(1) >= checkpoint.binlog_position);
        assert_eq!(gaps[0].get::<_, String>(2), current.file);
        assert_eq!(gaps[0].get::<_, i64>(3), current.position as i64);
        assert!(gaps[0].get::<_, String>(4).contains("gap"));
        mariadb.exec(&["INSERT INTO shop.t VALUES (3)"]).await;
        let events = wait_for_events(&mut client, &id, "", 2).await;
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_eq!(number(&events[1].after, "id"), 3.0);
        app.shutdown().await;
    });
}

#[test]
fn a_transaction_s_rows_carry_the_time_of_its_commit() {
    block_on(async {
        let mariadb = mariadb_with(&SHOP_T).await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id =
            register_streaming(&mut client, mariadb.server("commit-time", USER, PASSWORD)).await;
        // Each rows event carries its statement's start: 1.5 s apart, always another second.
        mariadb
            .exec(&[
                "BEGIN",
                "INSERT INTO shop.t VALUES (1)",
                "DO SLEEP(1.5)",
                "INSERT INTO shop.t VALUES (2)",
                "COMMIT",
            ])
            .await;
        let events = wait_for_events(&mut client, &id, "", 2).await;
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_eq!(
            events[0].committed_at, events[1].committed_at,
            "{events:#?}"
        );
        app.shutdown().await;
    });
}
