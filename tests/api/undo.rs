//! RevertChanges and GetRowHistory (issue 27) against a private MariaDB streamed to the index:
//! the undo script of a bad batch, applied with the `mariadb` client, restores the tables
//! exactly (CHECKSUM TABLE); a row changed since stops a strict script and is skipped by a
//! forced one; generated columns are never written and a table without a primary key is
//! refused; hostile names and values stay inside their literals; a row's captured versions and
//! its state at a time; bad requests name their field.

use std::time::{Duration, Instant};

use crate::common::mariadb::*;
use crate::common::stream::*;
use crate::common::*;
use crate::rest_common::Rest;
use dbtrail_servers::proto::{self, RevertMode};
use mysql_async::prelude::Queryable;
use proptest::strategy::{Strategy, ValueTree};
use tonic::Code;

/// Registers `input`, waits until it is active with its stream running; returns its id.
async fn register_streaming(client: &mut Client, input: proto::Server) -> String {
    let id = register(client, input).await.server_id;
    assert_active(&wait_settled(client, &id).await);
    wait_stream(client, &id, "the stream to run", running).await;
    id
}

/// Every event `filter` selects, once there are at least `count`.
async fn wait_for_events(
    client: &mut Client,
    server_id: &str,
    filter: &str,
    count: usize,
) -> Vec<proto::ChangeEvent> {
    let started = Instant::now();
    loop {
        let events = all_events(client, server_id, filter).await;
        if events.len() >= count {
            return events;
        }
        assert!(
            started.elapsed() < CAPTURE * 2,
            "{} of {count} events captured for {filter:?}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `CHECKSUM TABLE` of each table, and its row count.
async fn checksums(mariadb: &MariaDb, tables: &[&str]) -> Vec<(String, Option<u64>, u64)> {
    let mut sums = Vec::new();
    for table in tables {
        let (name, sum): (String, Option<u64>) = mariadb
            .query_first(&format!("CHECKSUM TABLE {table}"))
            .await
            .expect("a checksum");
        let count: u64 = mariadb
            .query_first(&format!("SELECT COUNT(*) FROM {table}"))
            .await
            .expect("a count");
        sums.push((name, sum, count));
    }
    sums
}

/// The script RevertChanges streams over gRPC, concatenated, or the stream's status.
async fn script_over_grpc(
    client: &mut Client,
    request: proto::RevertChangesRequest,
) -> Result<String, tonic::Status> {
    let mut stream = client.revert_changes(request).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert_eq!(chunk.content_type, "text/plain; charset=utf-8");
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(String::from_utf8(bytes).expect("the script is UTF-8 (ASCII)"))
}

/// The script over REST, checked to be the text/plain download api.md names.
async fn script_over_rest(rest: &Rest, server_id: &str, query: &[(&str, &str)]) -> String {
    let reply = rest
        .exchange(
            rest.request(
                reqwest::Method::GET,
                &format!("/servers/{server_id}/revert-sql"),
            )
            .query(query),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(
        reply.header("content-disposition"),
        format!("attachment; filename=\"revert-{server_id}.sql\"")
    );
    reply.body
}

/// Asserts that a script is plain ASCII with no backslash and no control character but newlines:
/// nothing in it can leave a literal.
fn assert_inert(script: &str) {
    assert!(
        script
            .bytes()
            .all(|byte| byte == b'\n' || ((0x20..0x7f).contains(&byte) && byte != b'\\')),
        "the script holds a byte outside printable ASCII or a backslash"
    );
}

/// A row of the round-trip table, as an INSERT's values.
fn item_values(id: u64) -> String {
    let all_bytes: String = (0..=255u8).map(|byte| format!("{byte:02X}")).collect();
    let data = if id.is_multiple_of(3) {
        "NULL".to_owned()
    } else {
        format!("X'{all_bytes}'")
    };
    let note = match id % 4 {
        0 => "NULL".to_owned(),
        1 => "'it''s a \\\\ \"quote\" -- /* not a comment */'".to_owned(),
        2 => "_utf8mb4 X'C3BC6EC3AF63C3B664C3A920F09F8E89'".to_owned(),
        _ => format!("'plain {id}'"),
    };
    let kind = ["'a'", "'b'", "'it''s'"][(id % 3) as usize];
    let tags = ["''", "'x'", "'x,z'", "'x,y,z'"][(id % 4) as usize];
    let ts = if id.is_multiple_of(5) {
        "NULL".to_owned()
    } else {
        format!(
            "'2026-12-0{} 10:00:0{}.{:06}'",
            1 + id % 8,
            id % 10,
            id * 7 % 1_000_000
        )
    };
    format!(
        "({id}, {id}.{:06}, '2026-12-02 10:05:{:02}.{:06}', '{{\"a\":[1,2],\"b\":\"x{id}\"}}', \
         {data}, {note}, {}, {kind}, {tags}, b'{:010b}', {}, {ts}, {}, {})",
        id % 1_000_000,
        id % 60,
        id % 1_000_000,
        u64::MAX - id,
        id % 1024,
        if id.is_multiple_of(2) {
            "NULL".to_owned()
        } else {
            (id as i64 - 500).to_string()
        },
        0.1 + id as f64,
        1.5e300 / (id as f64),
    )
}

const ITEMS: &str = "CREATE TABLE shop.items (id BIGINT UNSIGNED PRIMARY KEY, \
     price DECIMAL(20,6) NOT NULL, made DATETIME(6), doc JSON, data BLOB, \
     note VARCHAR(200) CHARACTER SET utf8mb4, big BIGINT UNSIGNED, \
     kind ENUM('a','b','it''s'), tags SET('x','y','z'), flags BIT(10), maybe INT NULL, \
     ts TIMESTAMP(6) NULL DEFAULT NULL, f DOUBLE, d DOUBLE, \
     twice BIGINT UNSIGNED AS (id * 2) VIRTUAL, label VARCHAR(40) AS (CONCAT('item ', id)) STORED) \
     ENGINE=InnoDB";

#[test]
fn the_undo_script_of_a_bad_batch_restores_the_tables_exactly() {
    block_on(async {
        let mariadb = mariadb_with(&["CREATE DATABASE shop", ITEMS]).await;
        // 2,000 rows before onboarding: their images come from the bad batch's own events.
        for batch in 0..4u64 {
            let values: Vec<String> = (1..=500)
                .map(|row| item_values(batch * 500 + row))
                .collect();
            mariadb
                .exec(&[&format!(
                    "INSERT INTO shop.items (id, price, made, doc, data, note, big, kind, tags, \
                     flags, maybe, ts, f, d) VALUES {}",
                    values.join(", ")
                )])
                .await;
        }
        let tables = ["shop.items"];
        let before = checksums(&mariadb, &tables).await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(&mut client, mariadb.server("undo", USER, PASSWORD)).await;

        // The bad batch: DELETE 1,000 rows, UPDATE 500, INSERT 200, each its own transaction.
        let started = chrono::Utc::now() - chrono::Duration::seconds(1);
        let inserted: Vec<String> = (5001..=5200).map(item_values).collect();
        mariadb
            .exec(&[
                "DELETE FROM shop.items WHERE id <= 1000",
                "UPDATE shop.items SET price = price + 1, made = NULL, doc = '{\"z\":true}', \
                 data = X'00', note = 'changed', big = 1, kind = 'b', tags = 'y', flags = b'1', \
                 maybe = 7, ts = '2030-01-01 00:00:00', f = 2.5, d = 0 \
                 WHERE id BETWEEN 1001 AND 1500",
                &format!(
                    "INSERT INTO shop.items (id, price, made, doc, data, note, big, kind, tags, \
                     flags, maybe, ts, f, d) VALUES {}",
                    inserted.join(", ")
                ),
            ])
            .await;
        let filter = format!(
            "schema = \"shop\" AND table = \"items\" AND committed_at >= \"{}\"",
            started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let events = wait_for_events(&mut client, &id, &filter, 1700).await;
        assert_eq!(events.len(), 1700);

        let rest = Rest::new(&app);
        let script = script_over_rest(&rest, &id, &[("filter", &filter)]).await;
        assert_inert(&script);
        assert!(
            script.contains("-- Events: 1700 changes, from "),
            "{}",
            &script[..2000]
        );
        assert!(script.contains(&format!("-- Server: {id} (undo)")));
        assert!(script.contains("Expects to change 1700 rows"));
        // Generated columns are never written.
        assert!(!script.contains("`twice`") && !script.contains("`label`"));
        assert_eq!(script.matches("\nDELETE FROM `shop`.`items`").count(), 200);
        assert_eq!(script.matches("\nUPDATE `shop`.`items`").count(), 500);
        assert_eq!(script.matches("\nINSERT INTO `shop`.`items`").count(), 1000);
        // Newest first: the batch's inserts are undone before its deletes.
        let first_delete = script.find("\nDELETE FROM").expect("a DELETE");
        let first_insert = script.find("\nINSERT INTO").expect("an INSERT");
        assert!(first_delete < first_insert);
        assert!(script.ends_with("-- End of the dbtrail revert script: 1700 changes undone.\n"));

        let output = mariadb.apply_sql(script.as_bytes()).await;
        let first_statement = script
            .lines()
            .find(|line| line.starts_with("DELETE"))
            .unwrap_or("");
        assert!(
            output.status.success(),
            "mariadb refused the script: {}\nits first statement: {first_statement}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(checksums(&mariadb, &tables).await, before);

        // The oldest changes by event ids (at most 200 a call), over gRPC.
        let ids: Vec<String> = events
            .iter()
            .take(200)
            .map(|event| event.event_id.clone())
            .collect();
        let by_ids = script_over_grpc(
            &mut client,
            proto::RevertChangesRequest {
                server_id: id.clone(),
                event_ids: ids,
                ..Default::default()
            },
        )
        .await
        .expect("RevertChanges by ids");
        assert!(by_ids.contains("-- Event ids: 200 listed"));
        assert!(by_ids.contains("Expects to change 200 rows"));
        app.shutdown().await;
    });
}

#[test]
fn a_row_changed_since_stops_a_strict_script_and_is_skipped_by_a_forced_one() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT NOT NULL, \
                 twice INT AS (v * 2) PERSISTENT)",
            "CREATE TABLE shop.nokey (a INT)",
            "INSERT INTO shop.t (id, v) VALUES (4, 40)",
        ])
        .await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(&mut client, mariadb.server("strict", USER, PASSWORD)).await;
        // A whole second after the capture began (commit times are whole seconds), and a whole
        // second before the first change.
        let onboarded = chrono::Utc::now() + chrono::Duration::seconds(1);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        mariadb
            .exec(&["INSERT INTO shop.t (id, v) VALUES (1, 10), (2, 20), (3, 30)"])
            .await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        mariadb.exec(&["UPDATE shop.t SET v = v + 1"]).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        mariadb
            .exec(&["UPDATE shop.t SET v = 99 WHERE id = 2"])
            .await;
        let events = wait_for_events(&mut client, &id, "table = \"t\"", 8).await;
        // The bad change: the UPDATE of every row (v + 1).
        let bad: Vec<String> = events
            .iter()
            .filter(|event| event.r#type == "update" && event.gtid == events[3].gtid)
            .map(|event| event.event_id.clone())
            .collect();
        assert_eq!(bad.len(), 4, "{events:#?}");
        let request = |mode: RevertMode| proto::RevertChangesRequest {
            server_id: id.clone(),
            event_ids: bad.clone(),
            mode: mode as i32,
            ..Default::default()
        };
        let values = || async {
            mariadb
                .query::<(i32, i32)>("SELECT id, v FROM shop.t ORDER BY id")
                .await
        };

        // Strict (the default): stops at row 2, naming it, and commits nothing.
        let strict = script_over_grpc(&mut client, request(RevertMode::Unspecified))
            .await
            .expect("a strict script");
        assert!(strict.contains("-- Mode: strict"));
        assert!(!strict.contains("`twice`"));
        let output = mariadb.apply_sql(strict.as_bytes()).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains(
                "Variable 'sql_mode' can't be set to the value of 'dbtrail revert stopped: row \
                 shop.t id=2 was changed since its update (event "
            ),
            "{stderr}"
        );
        assert_eq!(values().await, [(1, 11), (2, 99), (3, 31), (4, 41)]);

        // Force: skips row 2 and says so; the others are reverted.
        let rest = Rest::new(&app);
        let ids: Vec<(&str, &str)> = bad.iter().map(|id| ("event_ids", id.as_str())).collect();
        let mut query = ids.clone();
        query.push(("mode", "force"));
        let force = script_over_rest(&rest, &id, &query).await;
        assert!(force.contains("-- Mode: force"));
        let output = mariadb.apply_sql(force.as_bytes()).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("skipped\n")
                && stdout.contains("row shop.t id=2 was changed since its update; not reverted"),
            "{stdout}"
        );
        assert_eq!(stdout.matches("not reverted").count(), 1, "{stdout}");
        assert_eq!(values().await, [(1, 10), (2, 99), (3, 30), (4, 40)]);

        // A table without a primary key is refused, named, before any byte of a script.
        mariadb.exec(&["INSERT INTO shop.nokey VALUES (1)"]).await;
        wait_for_events(&mut client, &id, "table = \"nokey\"", 1).await;
        let status = script_over_grpc(
            &mut client,
            proto::RevertChangesRequest {
                server_id: id.clone(),
                filter: "schema = \"shop\"".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("a table without a primary key is refused");
        assert_error(
            &status,
            Code::FailedPrecondition,
            "TABLE_WITHOUT_PRIMARY_KEY",
        );
        assert!(
            status.message().contains("shop.nokey"),
            "{}",
            status.message()
        );
        let reply = rest
            .exchange(
                rest.request(reqwest::Method::GET, &format!("/servers/{id}/revert-sql"))
                    .query(&[("filter", "table = \"nokey\"")]),
            )
            .await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert!(
            reply.json["details"]
                .as_array()
                .is_some_and(|details| details
                    .iter()
                    .any(|detail| detail["reason"] == "TABLE_WITHOUT_PRIMARY_KEY")),
            "{}",
            reply.body
        );

        // GetRowHistory: row 2's captured versions, oldest first, and its state at times.
        let history =
            |as_of: Option<chrono::DateTime<chrono::Utc>>, key: &str| proto::GetRowHistoryRequest {
                server_id: id.clone(),
                schema: "shop".into(),
                table: "t".into(),
                key: key.into(),
                as_of: as_of.map(|time| prost_types::Timestamp {
                    seconds: time.timestamp(),
                    nanos: 0,
                }),
            };
        let answer = client
            .get_row_history(history(None, r#"{"id":2}"#))
            .await
            .expect("GetRowHistory")
            .into_inner();
        let v = |row: &Option<prost_types::Struct>| match row
            .as_ref()
            .and_then(|row| row.fields.get("v"))
            .and_then(|value| value.kind.clone())
        {
            Some(prost_types::value::Kind::NumberValue(v)) => v,
            other => panic!("v is {other:?}"),
        };
        let kinds: Vec<(&str, f64)> = answer
            .versions
            .iter()
            .map(|version| {
                let event = version.event.as_ref().expect("its event");
                (event.r#type.as_str(), v(&version.row))
            })
            .collect();
        assert_eq!(
            kinds,
            [("insert", 20.0), ("update", 21.0), ("update", 99.0)]
        );
        assert!(answer.state.is_none() && !answer.truncated);
        let versions = &answer.versions;
        let time_of = |index: usize| {
            let at = versions[index]
                .event
                .as_ref()
                .unwrap()
                .committed_at
                .unwrap();
            chrono::DateTime::from_timestamp(at.seconds, 0).unwrap()
        };
        let state = client
            .get_row_history(history(Some(time_of(1)), r#"{"id":2}"#))
            .await
            .expect("as of the bad change")
            .into_inner()
            .state
            .expect("a state");
        assert!(state.captured && state.exists, "{state:?}");
        assert_eq!(v(&state.row), 21.0);
        assert_eq!(state.event_id, versions[1].event.as_ref().unwrap().event_id);
        // Between onboarding and its insert, the row did not exist yet.
        let state = client
            .get_row_history(history(Some(onboarded), r#"{"id":2}"#))
            .await
            .expect("as of onboarding")
            .into_inner()
            .state
            .expect("a state");
        assert!(state.captured && !state.exists, "{state:?}");
        // Row 4, unchanged since onboarding but by the bad change: its before image.
        let state = client
            .get_row_history(history(Some(onboarded), r#"{"id":4}"#))
            .await
            .expect("row 4")
            .into_inner()
            .state
            .expect("a state");
        assert!(state.captured && state.exists, "{state:?}");
        assert_eq!(v(&state.row), 40.0);
        // Before onboarding: not captured.
        let long_ago = onboarded - chrono::Duration::days(1);
        let state = client
            .get_row_history(history(Some(long_ago), r#"{"id":2}"#))
            .await
            .expect("long ago")
            .into_inner()
            .state
            .expect("a state");
        assert!(
            !state.captured && state.message.starts_with("not captured"),
            "{state:?}"
        );
        // Over REST, the same versions.
        let reply = rest
            .exchange(
                rest.request(
                    reqwest::Method::GET,
                    &format!("/servers/{id}/rows/shop/t/history"),
                )
                .query(&[("key", r#"{"id":2}"#)]),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json["versions"].as_array().map(Vec::len), Some(3));
        assert_eq!(reply.json["versions"][2]["row"]["v"], 99);
        app.shutdown().await;
    });
}

#[test]
fn hostile_names_and_values_stay_inside_their_literals() {
    block_on(async {
        let schema = "we`ird*/--";
        let table = "t'; DROP TABLE x; --";
        let quoted = |name: &str| format!("`{}`", name.replace('`', "``"));
        let qualified = format!("{}.{}", quoted(schema), quoted(table));
        let mariadb = mariadb_with(&[
            &format!("CREATE DATABASE {}", quoted(schema)),
            &format!(
                "CREATE TABLE {qualified} (`i``d` INT PRIMARY KEY, `--c` TEXT CHARACTER SET \
                 utf8mb4, `/*b*/` BLOB)"
            ),
        ])
        .await;
        // Property-generated text (no NUL: PostgreSQL's jsonb cannot hold one in a string) and
        // bytes (NUL included), with the classic escapes first.
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let texts = proptest::string::string_regex("[^\u{0}]{0,40}").expect("a regex");
        let blobs = proptest::collection::vec(proptest::num::u8::ANY, 0..40);
        let mut rows: Vec<(i32, String, Vec<u8>)> = vec![
            (
                1,
                "it's \\' \\\\ \"x\" */ -- ; \n\r\t`".into(),
                b"\0\\'\"\n".to_vec(),
            ),
            (2, "'); DROP TABLE x; -- ".into(), b"*/--".to_vec()),
        ];
        for id in 3..=60 {
            let text = texts.new_tree(&mut runner).expect("a text").current();
            let blob = blobs.new_tree(&mut runner).expect("bytes").current();
            rows.push((id, text, blob));
        }
        let mut connection = mariadb.root().await;
        for (id, text, blob) in &rows {
            connection
                .exec_drop(
                    format!("INSERT INTO {qualified} VALUES (?, ?, ?)"),
                    (*id, text.clone(), blob.clone()),
                )
                .await
                .expect("a hostile row");
        }
        let _ = connection.disconnect().await;
        let tables = [qualified.as_str()];
        let before = checksums(&mariadb, &tables).await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(&mut client, mariadb.server("hostile", USER, PASSWORD)).await;
        mariadb
            .exec(&[
                &format!("DELETE FROM {qualified} WHERE `i``d` % 3 = 0"),
                &format!("UPDATE {qualified} SET `--c` = REVERSE(`--c`), `/*b*/` = X'2A2F' WHERE `i``d` % 3 = 1"),
                &format!("INSERT INTO {qualified} VALUES (100, '*/ --', X'00')"),
            ])
            .await;
        let events = wait_for_events(&mut client, &id, "", 41).await;
        assert_eq!(events.len(), 41);
        let script = script_over_grpc(
            &mut client,
            proto::RevertChangesRequest {
                server_id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("the script");
        assert_inert(&script);
        // Only the script's own statements: one per change, and the frame.
        let statements = script
            .lines()
            .filter(|line| !line.starts_with("-- "))
            .count();
        assert_eq!(statements, 8 + 41 * 2 + 4, "{script}");
        let output = mariadb.apply_sql(script.as_bytes()).await;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(checksums(&mariadb, &tables).await, before);
        let databases: Vec<String> = mariadb.query("SHOW DATABASES").await;
        assert!(databases.contains(&schema.to_owned()));
        app.shutdown().await;
    });
}

#[test]
fn bad_requests_name_their_field() {
    block_on(async {
        let app = TestApp::start().await;
        let mut client = app.client();
        let id = register(&mut client, direct_server("undo-bad"))
            .await
            .server_id;
        let revert =
            |filter: &str, event_ids: Vec<String>, mode: i32| proto::RevertChangesRequest {
                server_id: id.clone(),
                filter: filter.into(),
                event_ids,
                mode,
            };
        for (request, field) in [
            (revert("colour = red", vec![], 0), "filter"),
            (revert("", vec!["not-an-id".into()], 0), "event_ids[0]"),
            (
                revert(
                    "",
                    (0..201)
                        .map(|i| format!("mysql-bin.000001:{i}:0"))
                        .collect(),
                    0,
                ),
                "event_ids",
            ),
            (revert("", vec![], 9), "mode"),
        ] {
            let status = script_over_grpc(&mut client, request)
                .await
                .expect_err("a bad request");
            assert_bad_request(&status, &[field]);
        }
        // A server without changes: a script that changes nothing.
        let empty = script_over_grpc(&mut client, revert("", vec![], 0))
            .await
            .expect("an empty script");
        assert!(empty.contains("-- Events: 0 changes, from none to none"));
        assert!(empty.contains("START TRANSACTION;\nCOMMIT;\n"));

        let history = |key: &str| proto::GetRowHistoryRequest {
            server_id: id.clone(),
            schema: "shop".into(),
            table: "t".into(),
            key: key.into(),
            as_of: None,
        };
        for (request, field) in [
            (history(""), "key"),
            (history("[1]"), "key"),
            (history("{\"id\":"), "key"),
            (
                proto::GetRowHistoryRequest {
                    schema: String::new(),
                    ..history("{\"id\":1}")
                },
                "schema",
            ),
            (
                proto::GetRowHistoryRequest {
                    as_of: Some(prost_types::Timestamp {
                        seconds: 0,
                        nanos: -1,
                    }),
                    ..history("{\"id\":1}")
                },
                "as_of",
            ),
        ] {
            let status = client
                .get_row_history(request)
                .await
                .expect_err("a bad request");
            assert_bad_request(&status, &[field]);
        }
        let versions = client
            .get_row_history(history("{\"id\":1}"))
            .await
            .expect("no versions")
            .into_inner();
        assert!(versions.versions.is_empty());
        // Another tenant's server does not exist.
        let stranger = app.other_tenant("undo-stranger").await;
        let mut other = app.client_with_key(&stranger.key);
        let status = script_over_grpc(&mut other, revert("", vec![], 0))
            .await
            .expect_err("not found");
        assert_error(&status, Code::NotFound, "SERVER_NOT_FOUND");
        app.shutdown().await;
    });
}

#[test]
fn the_row_history_query_walks_an_index() {
    block_on(async {
        let app = TestApp::start().await;
        let index = change_index(&app.db.url);
        let server = dbtrail_servers::domain::ServerId::generate();
        let plan = index
            .explain_row_history(server, ("shop", "t"), &serde_json::json!({"id": 5}))
            .await
            .expect("EXPLAIN");
        // change_events_by_table (server, schema, table, sequence), in every partition.
        assert!(
            plan.contains("Index Cond") && plan.contains("table_name = 't'"),
            "{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "{plan}");
        app.shutdown().await;
    });
}

#[test]
fn a_failure_after_the_script_began_ends_it_without_its_commit() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.t (id INT PRIMARY KEY, v INT NOT NULL)",
            "INSERT INTO shop.t VALUES (1, 1)",
        ])
        .await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(&mut client, mariadb.server("partial", USER, PASSWORD)).await;
        // A session that logs partial row images: its delete cannot be undone. Then 250 changes
        // that can: the newest page (200) is written before the older one fails.
        mariadb
            .exec(&[
                "SET SESSION binlog_row_image = 'MINIMAL'",
                "DELETE FROM shop.t WHERE id = 1",
            ])
            .await;
        let values: Vec<String> = (2..=251).map(|row| format!("({row}, {row})")).collect();
        mariadb
            .exec(&[&format!("INSERT INTO shop.t VALUES {}", values.join(", "))])
            .await;
        wait_for_events(&mut client, &id, "", 251).await;

        let rest = Rest::new(&app);
        let reply = rest.get(&format!("/servers/{id}/revert-sql")).await;
        assert_eq!(reply.status, 200);
        let last_line = reply.body.trim_end().lines().last().unwrap_or_default();
        assert!(
            last_line.starts_with("-- ERROR: event mysql-bin.")
                && last_line.contains("lacks column v in its before image"),
            "{last_line}"
        );
        assert!(!reply.body.contains("COMMIT;"));
        assert_eq!(reply.body.matches("\nDELETE FROM `shop`.`t`").count(), 200);
        // Applied anyway, it changes nothing: the transaction is never committed.
        let output = mariadb.apply_sql(reply.body.as_bytes()).await;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let count: u64 = mariadb
            .query_first("SELECT COUNT(*) FROM shop.t")
            .await
            .expect("a count");
        assert_eq!(count, 250);

        // Over gRPC, the stream's status after the first chunks.
        let mut stream = client
            .revert_changes(proto::RevertChangesRequest {
                server_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("the stream opens")
            .into_inner();
        let mut chunks = 0;
        let status = loop {
            match stream.message().await {
                Ok(Some(_)) => chunks += 1,
                Ok(None) => panic!("the stream ended without its error"),
                Err(status) => break status,
            }
        };
        assert!(chunks >= 2);
        assert_error(&status, Code::FailedPrecondition, "PARTIAL_ROW_IMAGE");
        app.shutdown().await;
    });
}

/// The rows of the cascade test's tables, ordered: (table, id, reference, note).
async fn cascade_dump(mariadb: &MariaDb) -> Vec<(String, i32, Option<i32>, Option<String>)> {
    mariadb
        .query(
            "SELECT 'parent', id, NULL, name FROM shop.parent \
             UNION ALL SELECT 'child', id, parent_id, note FROM shop.child \
             UNION ALL SELECT 'grandchild', id, child_id, note FROM shop.grandchild \
             ORDER BY 1, 2",
        )
        .await
}

#[test]
fn a_parent_deleted_with_on_delete_cascade_comes_back_with_its_captured_children() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.parent (id INT PRIMARY KEY, name VARCHAR(20)) ENGINE=InnoDB",
            "CREATE TABLE shop.child (id INT PRIMARY KEY, parent_id INT, note VARCHAR(20), \
                 CONSTRAINT child_parent FOREIGN KEY (parent_id) REFERENCES shop.parent (id) \
                 ON DELETE CASCADE) ENGINE=InnoDB",
            "CREATE TABLE shop.grandchild (id INT PRIMARY KEY, child_id INT, note VARCHAR(20), \
                 FOREIGN KEY (child_id) REFERENCES shop.child (id) ON DELETE CASCADE) \
                 ENGINE=InnoDB",
            "INSERT INTO shop.parent VALUES (1, 'one'), (2, 'two')",
            // Before onboarding: 100 is captured by its later update; 200 (of parent 2) never.
            "INSERT INTO shop.child VALUES (100, 1, 'old'), (200, 2, 'never captured')",
        ])
        .await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(&mut client, mariadb.server("cascade", USER, PASSWORD)).await;
        mariadb
            .exec(&[
                "INSERT INTO shop.child VALUES (101, 1, 'a'), (102, 1, NULL), (103, 1, 'moves')",
                "UPDATE shop.child SET parent_id = 2 WHERE id = 103",
                "UPDATE shop.child SET note = 'changed' WHERE id = 100",
                "INSERT INTO shop.grandchild VALUES (1001, 101, 'g'), (1002, 100, 'h'), \
                     (1003, 103, 'stays')",
            ])
            .await;
        // Parent 3's child 300 went with its first life's delete: not a child of its second.
        mariadb
            .exec(&[
                "INSERT INTO shop.parent VALUES (3, 'three')",
                "INSERT INTO shop.child VALUES (300, 3, 'gone before')",
                "DELETE FROM shop.parent WHERE id = 3",
                "INSERT INTO shop.parent VALUES (3, 'again')",
            ])
            .await;
        let before = cascade_dump(&mariadb).await;
        mariadb
            .exec(&["DELETE FROM shop.parent WHERE id IN (1, 3)"])
            .await;
        let after_delete = cascade_dump(&mariadb).await;
        assert_eq!(after_delete.len(), before.len() - 7, "{after_delete:?}");
        let deletes = wait_for_events(
            &mut client,
            &id,
            "table = \"parent\" AND type = \"delete\"",
            3,
        )
        .await;
        // The last DELETE's events (its transaction's GTID).
        let last = deletes.last().expect("a delete").gtid.clone();
        let ids: Vec<String> = deletes
            .iter()
            .filter(|event| event.gtid == last)
            .map(|event| event.event_id.clone())
            .collect();
        assert_eq!(ids.len(), 2, "{deletes:#?}");
        let mut query: Vec<(&str, &str)> =
            ids.iter().map(|id| ("event_ids", id.as_str())).collect();

        let rest = Rest::new(&app);
        let script = script_over_rest(&rest, &id, &query).await;
        assert_inert(&script);
        assert!(
            script.contains(
                "-- re-inserted: deleted by ON DELETE CASCADE with shop.parent id=1 (its image \
                 from event "
            ),
            "{script}"
        );
        assert_eq!(script.matches("\nINSERT INTO `shop`.`parent`").count(), 2);
        assert!(!script.contains("(300, "), "{script}");
        assert_eq!(
            script.matches("\nINSERT INTO `shop`.`child`").count(),
            3,
            "{script}"
        );
        assert_eq!(
            script.matches("\nINSERT INTO `shop`.`grandchild`").count(),
            2
        );
        assert!(
            script.contains("with shop.child id=101 (its image"),
            "{script}"
        );
        assert!(
            script.contains(
                "-- not restored: rows of shop.child deleted by ON DELETE CASCADE with \
                 shop.parent id=1 that were never captured"
            ),
            "{script}"
        );
        assert!(script.contains("children never captured cannot be restored"));
        // Child 100 existed before the capture began: its children may never have been
        // captured. Children 101 and 102 were inserted since: all of theirs were.
        assert!(script.contains("with shop.child id=100 that were never captured"));
        assert_eq!(
            script.matches("that were never captured").count(),
            2,
            "{script}"
        );
        let output = mariadb.apply_sql(script.as_bytes()).await;
        assert!(
            output.status.success(),
            "mariadb refused the script: {}\n{script}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(cascade_dump(&mariadb).await, before);

        // Applied again, a strict script stops at the parent; a forced one skips every row.
        let output = mariadb.apply_sql(script.as_bytes()).await;
        assert!(!output.status.success());
        query.push(("mode", "force"));
        let forced = script_over_rest(&rest, &id, &query).await;
        assert_eq!(
            forced
                .matches("\nINSERT IGNORE INTO `shop`.`child`")
                .count(),
            3
        );
        let output = mariadb.apply_sql(forced.as_bytes()).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            stdout
                .matches("deleted by cascade could not be re-inserted")
                .count(),
            5,
            "{stdout}"
        );
        assert_eq!(cascade_dump(&mariadb).await, before);
        app.shutdown().await;
    });
}

#[test]
fn the_cascade_query_walks_an_index() {
    block_on(async {
        let app = TestApp::start().await;
        let index = change_index(&app.db.url);
        let server = dbtrail_servers::domain::ServerId::generate();
        let plan = index
            .explain_rows_holding(
                server,
                ("shop", "child"),
                &serde_json::json!({"parent_id": 5}),
                1000,
            )
            .await
            .expect("EXPLAIN");
        assert!(plan.contains("Index Cond"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        app.shutdown().await;
    });
}
