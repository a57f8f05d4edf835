//! The live stream on bytes MySQL wrote (issue 24, "Proof on bytes MySQL wrote", items 2 to 4).
//!
//! MariaDB 10.11.11 and later serves a binlog file that MySQL 8.0 wrote when the file is copied
//! into its binlog directory in place of an old one while it is stopped (MariaDB's own
//! rpl_from_mysql80 test works this way). Here a private MariaDB carries
//! `mdev35643_mysql_80_binlog.000001` (MySQL 8.0.40, from Debian's mariadb-test-data; fetched at
//! test time by scripts/test into `$DBTRAIL_CORPUS_DIR`, never committed) as its first binlog
//! file, and a registered server is restarted from its position 4 with RestartStream.
//!
//! The file came from a MySQL server, not from this MariaDB: it is started again with another
//! server id, so the stream sees another source under its checkpoint (lost position) and
//! RestartStream moves it onto the new source's binlog.
//!
//! The binlog is named `master-bin` here, as in rpl_from_mysql80: the file ends with MySQL's
//! Rotate naming `master-bin.000002`, which is then the file that really follows it.
//!
//! Expected rows come from the SQL that wrote the file (the comment at the top of
//! rpl_from_mysql80.test) and from its bytes read by hand: the compressed transaction's rows
//! were checked in the zstd-decompressed payload (`c` is `--<i>--`, a hundred `/`, `--`: the
//! test's `"\\/"` reached MySQL as `\/`, which MySQL reads as `/`). Event positions are the
//! file's own (`mariadb-binlog` lists them up to the compressed transaction, a walk of the
//! event headers gives the rest). Never the service's own output.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::corpus;
use crate::common::mariadb::*;
use crate::common::stream::*;
use crate::common::*;
use dbtrail_servers::proto::{self, ServerStatus, StreamState};
use serde_json::{Value as Json, json};

/// The binlog file of the private MariaDB that the MySQL file replaces.
const FILE: &str = "master-bin.000001";
/// The source's commit time of every event in the file (SET TIMESTAMP=1734117024 in it).
const COMMITTED_AT: i64 = 1_734_117_024;
/// The tables of the SQL that wrote the file, so that the snapshot knows their columns.
const TABLES: [&str; 3] = [
    "CREATE DATABASE test",
    "CREATE TABLE test.t1 (a INT PRIMARY KEY, b INT, c VARCHAR(1024)) CHARACTER SET latin1",
    "CREATE TABLE test.t2 (a INT PRIMARY KEY, b JSON)",
];

/// The MySQL 8.0.40 file's bytes, checked against their sha256 (common::corpus).
fn mysql_80_binlog() -> Vec<u8> {
    let path = corpus::corpus(corpus::MYSQL_80_40);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

// ------------------------------------------------------------------------------------------------
// The file's events, by hand
// ------------------------------------------------------------------------------------------------

/// One event of a binlog file: where it starts, its type code and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventHeader {
    start: usize,
    kind: u8,
    size: usize,
}

/// Walks the 19-byte v4 headers of a binlog file from position 4.
fn event_headers(bytes: &[u8]) -> Vec<EventHeader> {
    assert_eq!(
        &bytes[..4],
        b"\xfebin",
        "a binlog file starts with its magic"
    );
    let mut events = Vec::new();
    let mut start = 4;
    while start < bytes.len() {
        let header = &bytes[start..start + 19];
        let size = u32::from_le_bytes(header[9..13].try_into().expect("4 bytes")) as usize;
        let next = u32::from_le_bytes(header[13..17].try_into().expect("4 bytes")) as usize;
        assert_eq!(next, start + size, "event at {start}: next position");
        events.push(EventHeader {
            start,
            kind: header[4],
            size,
        });
        start += size;
    }
    events
}

/// CRC-32 (IEEE, reflected), the binlog's event checksum.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn mysql_bytes_the_file_is_walked_by_hand_as_expected() {
    // What the other tests rely on, from the bytes alone: where the events are, and that the
    // CRC32 here is MySQL's (every event's footer checks).
    let bytes = mysql_80_binlog();
    let events = event_headers(&bytes);
    for event in &events {
        let body = &bytes[event.start..event.start + event.size - 4];
        let footer = &bytes[event.start + event.size - 4..event.start + event.size];
        assert_eq!(
            crc32(body).to_le_bytes(),
            footer,
            "the CRC32 of the event at {}",
            event.start
        );
    }
    let places: Vec<(usize, u8)> = events
        .iter()
        .map(|event| (event.start, event.kind))
        .collect();
    assert_eq!(
        places,
        [
            (4, 15),    // FORMAT_DESCRIPTION
            (126, 35),  // PREVIOUS_GTIDS
            (157, 34),  // ANONYMOUS_GTID
            (236, 2),   // CREATE TABLE t1
            (418, 34),  //
            (497, 2),   // BEGIN
            (572, 19),  // TABLE_MAP
            (627, 30),  // WRITE_ROWS (1, 0, '')
            (673, 16),  // XID
            (704, 34),  //
            (783, 2),   // BEGIN
            (858, 19),  //
            (913, 30),  // (2, 0, 'hulu')
            (963, 19),  //
            (1018, 30), // (3, 0, 'bulu')
            (1068, 16), //
            (1099, 34), //
            (1178, 2),  // BEGIN
            (1253, 19), //
            (1308, 30), // (4, 0, 'skip')
            (1358, 16), //
            (1389, 34), //
            (1468, 40), // TRANSACTION_PAYLOAD: the 100 rows
            (2297, 34), //
            (2376, 2),  // BEGIN
            (2451, 19), //
            (2506, 30), // (5, 0, 'after compressed')
            (2568, 16), //
            (2599, 34), //
            (2676, 2),  // CREATE TABLE t2
            (2821, 34), //
            (2900, 2),  // BEGIN
            (2982, 2),  // INSERT INTO t2 ... (statement format)
            (3159, 16), //
            (3190, 34), //
            (3269, 2),  // BEGIN
            (3353, 19), //
            (3403, 39), // PARTIAL_UPDATE_ROWS
            (4359, 16), //
            (4390, 4),  // ROTATE to master-bin.000002
        ]
    );
    assert_eq!(bytes.len(), 4438);
}

// ------------------------------------------------------------------------------------------------
// The expected rows
// ------------------------------------------------------------------------------------------------

/// One expected change event.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    event_id: String,
    binlog_file: String,
    binlog_position: i64,
    gtid: String,
    committed_at: i64,
    table: String,
    kind: String,
    primary_key: Json,
    before: Option<Json>,
    after: Option<Json>,
}

fn insert(position: i64, row_index: i64, a: i64, b: i64, c: &str) -> Change {
    Change {
        event_id: format!("{FILE}:{position}:{row_index}"),
        binlog_file: FILE.to_owned(),
        binlog_position: position,
        gtid: String::new(),
        committed_at: COMMITTED_AT,
        table: "test.t1".to_owned(),
        kind: "insert".to_owned(),
        primary_key: json!({"a": a}),
        before: None,
        after: Some(json!({"a": a, "b": b, "c": c})),
    }
}

/// Every row change of the file, in binlog order, from the SQL that wrote it.
fn expected_changes() -> Vec<Change> {
    let mut changes = vec![
        insert(627, 0, 1, 0, ""),
        insert(913, 0, 2, 0, "hulu"),
        insert(1018, 0, 3, 0, "bulu"),
        insert(1308, 0, 4, 0, "skip"),
    ];
    // The compressed transaction: placed at the payload's start, numbered across it.
    for i in 0..100 {
        let c = format!("--{i}--{}--", "/".repeat(100));
        changes.push(insert(1468, i, 1000 + i, i, &c));
    }
    changes.push(insert(2506, 0, 5, 0, "after compressed"));
    // The partial JSON update: the after image is the whole document.
    let document = |b: String| json!({"a": "hulu", "b": b, "c": "bulu"});
    changes.push(Change {
        event_id: format!("{FILE}:3403:0"),
        binlog_file: FILE.to_owned(),
        binlog_position: 3403,
        gtid: String::new(),
        committed_at: COMMITTED_AT,
        table: "test.t2".to_owned(),
        kind: "update".to_owned(),
        primary_key: json!({"a": 1}),
        before: Some(json!({"a": 1, "b": document("[zyzzy]".repeat(100))})),
        after: Some(json!({"a": 1, "b": document("oOo".repeat(50))})),
    });
    changes
}

/// A protobuf value as JSON; whole numbers as integers.
fn value_json(value: &prost_types::Value) -> Json {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(value)) => Json::Bool(*value),
        Some(Kind::NumberValue(number)) if number.fract() == 0.0 && number.abs() < 9.0e15 => {
            json!(*number as i64)
        }
        Some(Kind::NumberValue(number)) => json!(number),
        Some(Kind::StringValue(text)) => Json::String(text.clone()),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(value_json).collect()),
        Some(Kind::StructValue(object)) => struct_json(object),
    }
}

fn struct_json(object: &prost_types::Struct) -> Json {
    Json::Object(
        object
            .fields
            .iter()
            .map(|(name, value)| (name.clone(), value_json(value)))
            .collect(),
    )
}

fn change_of(event: &proto::ChangeEvent) -> Change {
    Change {
        event_id: event.event_id.clone(),
        binlog_file: event.binlog_file.clone(),
        binlog_position: event.binlog_position,
        gtid: event.gtid.clone(),
        committed_at: event.committed_at.as_ref().map_or(0, |at| at.seconds),
        table: format!("{}.{}", event.schema, event.table),
        kind: event.r#type.clone(),
        primary_key: event.primary_key.as_ref().map_or(Json::Null, struct_json),
        before: event.before.as_ref().map(struct_json),
        after: event.after.as_ref().map(struct_json),
    }
}

/// Asserts that the stored events are exactly the expected ones, in order, each once.
#[track_caller]
fn assert_exactly_the_file(events: &[proto::ChangeEvent]) {
    let ids: std::collections::BTreeSet<&str> =
        events.iter().map(|event| event.event_id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "an event_id is stored twice");
    let stored: Vec<Change> = events.iter().map(change_of).collect();
    let expected = expected_changes();
    assert_eq!(
        stored.len(),
        expected.len(),
        "how many row changes are stored"
    );
    for (index, (stored, expected)) in stored.iter().zip(&expected).enumerate() {
        assert_eq!(stored, expected, "change event {index}");
    }
    // The compressed transaction's rows share one place, with distinct ids.
    let compressed: Vec<&proto::ChangeEvent> = events
        .iter()
        .filter(|event| event.binlog_position == 1468)
        .collect();
    assert_eq!(compressed.len(), 100);
    let distinct: std::collections::BTreeSet<&str> = compressed
        .iter()
        .map(|event| event.event_id.as_str())
        .collect();
    assert_eq!(distinct.len(), 100);
    assert_eq!(
        events.iter().filter(|event| event.table == "t1").count(),
        105
    );
    assert_eq!(events.iter().filter(|event| event.table == "t2").count(), 1);
}

// ------------------------------------------------------------------------------------------------
// The service and the source
// ------------------------------------------------------------------------------------------------

/// Waits until at least `count` events are stored, then a little longer, and returns them all.
async fn settled_events(
    client: &mut Client,
    server_id: &str,
    count: usize,
) -> Vec<proto::ChangeEvent> {
    let started = Instant::now();
    loop {
        let events = all_events(client, server_id, "").await;
        if events.len() >= count {
            break;
        }
        assert!(
            started.elapsed() < CAPTURE,
            "{} of {count} events stored after {CAPTURE:?}: {:#?}",
            events.len(),
            get_server(client, server_id).await.stream
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything stored twice would arrive after the count is reached.
    tokio::time::sleep(Duration::from_secs(2)).await;
    all_events(client, server_id, "").await
}

fn lost_position(server: &proto::Server) -> bool {
    stream_state(server) == Some(StreamState::LostPosition)
}

/// A private MariaDB with the tables of the SQL that wrote the file, the replication user, and
/// its binlog named as in rpl_from_mysql80.
async fn source() -> MariaDb {
    let mariadb = MariaDb::options()
        .log_bin_basename("master-bin")
        .start()
        .await;
    mariadb.exec(&TABLES).await;
    mariadb
        .create_user(USER, PASSWORD, &REPLICATION_GRANTS)
        .await;
    mariadb
}

/// Stops the source, puts `bytes` in place of its first binlog file, and starts it again as
/// server 2 (another server: the file's history is not the one the stream read). Asserts that
/// MariaDB lists the file with its size.
async fn serve_file(mariadb: &mut MariaDb, bytes: &[u8]) {
    let current = mariadb.master_status().await.expect("binlog on");
    assert_eq!(current.file, FILE, "the stream read the first file only");
    mariadb.stop().await;
    mariadb.replace_binlog_file(FILE, bytes);
    mariadb.start_again(Some(2)).await;
    let files: Vec<(String, u64)> = mariadb.query("SHOW BINARY LOGS").await;
    assert_eq!(
        files,
        [
            (FILE.to_owned(), bytes.len() as u64),
            (
                "master-bin.000002".to_owned(),
                files.get(1).map_or(0, |file| file.1)
            ),
        ],
        "MariaDB keeps the replaced file in its index and opens a new one"
    );
}

/// Registers the source, and waits until onboarding is active and the stream runs.
async fn register_streaming(client: &mut Client, mariadb: &MariaDb, name: &str) -> String {
    let id = register(client, mariadb.server(name, USER, PASSWORD))
        .await
        .server_id;
    assert_active(&wait_settled(client, &id).await);
    wait_stream(client, &id, "the stream to run", running).await;
    id
}

/// RestartStream from the MySQL file's position 4, once the stream lost its position on the
/// replaced source.
async fn restart_on_the_file(client: &mut Client, server_id: &str) {
    let lost = wait_stream(
        client,
        server_id,
        "the stream to see another source",
        lost_position,
    )
    .await;
    let error = lost.error.unwrap_or_default();
    assert!(
        error.contains("different server") && error.contains("server_id 2"),
        "{error}"
    );
    let restarted = client
        .restart_stream(restart_at(server_id, FILE, 4))
        .await
        .unwrap_or_else(|status| panic!("RestartStream from {FILE}:4: {status:?}"))
        .into_inner();
    assert_eq!(
        restarted.status,
        ServerStatus::Active as i32,
        "{restarted:#?}"
    );
}

/// Waits until `events_indexed` reaches `count`, then checks that it is exactly that.
async fn assert_events_indexed(client: &mut Client, server_id: &str, count: i64) {
    let server = wait_stream(client, server_id, "events_indexed to count", |server| {
        server
            .stream
            .as_ref()
            .is_some_and(|stream| stream.events_indexed >= count)
    })
    .await;
    assert_eq!(server.stream.expect("stream").events_indexed, count);
}

/// What the stream says of the statement-format INSERT into t2 at 2982.
#[track_caller]
fn assert_statement_counted(stream: &proto::StreamStatus) {
    assert_eq!(stream.statement_changes_skipped, 1, "{stream:#?}");
    assert_eq!(
        stream.last_statement_change_position,
        format!("{FILE}:2982"),
        "{stream:#?}"
    );
    assert!(stream.statement_changes_since.is_some(), "{stream:#?}");
}

// ------------------------------------------------------------------------------------------------
// 2. The live path
// ------------------------------------------------------------------------------------------------

#[test]
fn mysql_bytes_served_by_mariadb_are_captured_exactly_after_restart_stream() {
    block_on(async {
        let bytes = mysql_80_binlog();
        let mut mariadb = source().await;
        let app = mysql_app().await;
        let mut client = app.client();
        let id = register_streaming(&mut client, &mariadb, "mysql-80-bytes").await;
        assert!(all_events(&mut client, &id, "").await.is_empty());

        serve_file(&mut mariadb, &bytes).await;
        restart_on_the_file(&mut client, &id).await;

        let events = settled_events(&mut client, &id, 106).await;
        assert_exactly_the_file(&events);
        assert_events_indexed(&mut client, &id, 106).await;
        assert_eq!(index_state(&app.db, &id).await.change_events, 106);
        let server = wait_stream(&mut client, &id, "the stream to run", running).await;
        assert_statement_counted(server.stream.as_ref().expect("stream"));

        // And the source's own writes after the file, through its next files.
        mariadb
            .exec(&["INSERT INTO test.t1 VALUES (6, 0, 'mariadb')"])
            .await;
        let events = settled_events(&mut client, &id, 107).await;
        assert_eq!(events.len(), 107);
        let last = change_of(&events[106]);
        assert_eq!(last.after, Some(json!({"a": 6, "b": 0, "c": "mariadb"})));
        assert_eq!(last.binlog_file, "master-bin.000002");
        app.shutdown().await;
    });
}

// ------------------------------------------------------------------------------------------------
// 4. An unknown event type
// ------------------------------------------------------------------------------------------------

/// The MySQL file with the type of the event at `start` changed to `kind`, its CRC32 recomputed
/// so that the source serves it.
fn with_event_type(bytes: &[u8], start: usize, kind: u8) -> Vec<u8> {
    let event = event_headers(bytes)
        .into_iter()
        .find(|event| event.start == start)
        .unwrap_or_else(|| panic!("no event starts at {start}"));
    let mut edited = bytes.to_vec();
    edited[start + 4] = kind;
    let end = start + event.size;
    let crc = crc32(&edited[start..end - 4]);
    edited[end - 4..end].copy_from_slice(&crc.to_le_bytes());
    edited
}

/// Serves the file with its `nth` ANONYMOUS_GTID (at `start`) turned into type 0x7e, which no
/// MySQL or MariaDB assigns, restarts a stream on it and waits for the stream to fail there:
/// the error names the type and the place. Returns the stream and the events stored.
async fn failed_on_an_unknown_event(
    nth: usize,
    start: usize,
) -> (proto::StreamStatus, Vec<proto::ChangeEvent>) {
    let bytes = mysql_80_binlog();
    let events = event_headers(&bytes);
    let edited_event = events
        .iter()
        .filter(|event| event.kind == 34)
        .nth(nth)
        .expect("an ANONYMOUS_GTID");
    assert_eq!(edited_event.start, start);
    let edited = with_event_type(&bytes, start, 0x7e);

    let mut mariadb = source().await;
    let app = mysql_app().await;
    let mut client = app.client();
    let id = register_streaming(&mut client, &mariadb, &format!("mysql-80-unknown-{nth}")).await;
    serve_file(&mut mariadb, &edited).await;
    restart_on_the_file(&mut client, &id).await;

    let server = wait_stream(&mut client, &id, "the stream to fail", |server| {
        stream_state(server) == Some(StreamState::Failed)
    })
    .await;
    assert_eq!(server.status, ServerStatus::Error as i32, "{server:#?}");
    let error = server.error.clone().unwrap_or_default();
    assert!(
        error.contains("type 126") && error.contains(&format!("{FILE}:{start}")),
        "the error names the type and the place: {error}"
    );
    let stream = server.stream.expect("stream");
    assert_eq!(stream.error.as_deref(), Some(error.as_str()), "{stream:#?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = all_events(&mut client, &id, "").await;
    assert_eq!(
        index_state(&app.db, &id).await.change_events,
        stored.len() as i64
    );
    let stream = get_server(&mut client, &id).await.stream.expect("stream");
    app.shutdown().await;
    (stream, stored)
}

#[test]
fn mysql_bytes_with_an_unknown_event_type_fail_the_stream_naming_type_and_place() {
    block_on(async {
        // The first ANONYMOUS_GTID (157, before any row): nothing is stored, and the checkpoint
        // does not pass it.
        let (stream, stored) = failed_on_an_unknown_event(0, 157).await;
        assert!(stored.is_empty(), "{stored:#?}");
        assert_eq!(stream.binlog_file, FILE, "{stream:#?}");
        assert!(stream.binlog_position <= 157, "{stream:#?}");
    });
}

#[test]
fn mysql_bytes_an_unknown_event_after_a_commit_stores_what_came_before_it() {
    block_on(async {
        // The third ANONYMOUS_GTID (704), right after the commit of (1, 0, ''): that row is
        // stored and the checkpoint stands exactly before the event that stopped the stream.
        let (stream, stored) = failed_on_an_unknown_event(2, 704).await;
        let expected = expected_changes();
        assert_eq!(
            stored.iter().map(change_of).collect::<Vec<_>>(),
            expected[..1],
            "{stored:#?}"
        );
        assert_eq!(
            (stream.binlog_file.as_str(), stream.binlog_position),
            (FILE, 704)
        );
    });
}

// ------------------------------------------------------------------------------------------------
// 3. Crashes inside the compressed transaction
// ------------------------------------------------------------------------------------------------

/// The name of the agent whose replica holds the stream's lease now, when one does: the
/// server's assigned agent (a replica adopting the stream of a dead agent's server takes the
/// assignment).
async fn holder(sql: &tokio_postgres::Client, id: &str) -> Option<String> {
    sql.query_opt(
        "SELECT a.name FROM servers s JOIN agents a ON a.id = s.agent_id \
         WHERE s.id::text = $1 AND s.stream_owner IS NOT NULL AND s.stream_expires_at > now()",
        &[&id],
    )
    .await
    .expect("read the stream's holder")
    .map(|row| row.get(0))
}

#[test]
fn mysql_bytes_replicas_killed_while_reading_the_file_store_every_row_once() {
    block_on(async {
        let bytes = mysql_80_binlog();
        let mut mariadb = source().await;
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let sql = db.connect().await;
        let options = |agent: &str| ReplicaOptions {
            agent_name: agent.to_owned(),
            ..mysql_replica_options()
        };
        // Two replicas at all times; a killed one comes back as another agent, so the stream
        // moves to whichever replica adopts the dead agent's server.
        let mut replicas = Vec::new();
        for name in ["agent-1", "agent-2"] {
            replicas.push(ServiceProcess::serve(name, &db.url, &options(name)).await);
        }
        let mut client = replicas[0].client(&tenant.key).await;
        let id = register_streaming(&mut client, &mariadb, "mysql-80-killed").await;
        serve_file(&mut mariadb, &bytes).await;
        restart_on_the_file(&mut client, &id).await;

        // The holder is killed right after the restart, and each next holder at another point
        // of its reading (it reads and stores the file within a few hundred ms).
        let delays_ms = [0, 150, 400, 50, 250, 0];
        let mut previous: Option<String> = None;
        for (round, delay) in delays_ms.into_iter().enumerate() {
            let holding = wait_for("another replica to hold the stream", CAPTURE, || {
                let previous = previous.clone();
                let (sql, id) = (&sql, id.as_str());
                async move {
                    holder(sql, id)
                        .await
                        .filter(|name| Some(name) != previous.as_ref())
                }
            })
            .await;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let index = replicas
                .iter()
                .position(|replica| replica.label == holding)
                .unwrap_or_else(|| panic!("{holding} is not a replica of this test"));
            replicas[index].kill().await;
            eprintln!("killed {holding} {delay} ms after it held the stream");
            let name = format!("agent-{}", round + 3);
            replicas[index] = ServiceProcess::serve(&name, &db.url, &options(&name)).await;
            client = replicas[1 - index].client(&tenant.key).await;
            previous = Some(holding);
        }
        wait_for("another replica to hold the stream", CAPTURE, || {
            let previous = previous.clone();
            let (sql, id) = (&sql, id.as_str());
            async move {
                holder(sql, id)
                    .await
                    .filter(|name| Some(name) != previous.as_ref())
            }
        })
        .await;

        let events = settled_events(&mut client, &id, 106).await;
        assert_exactly_the_file(&events);
        assert_events_indexed(&mut client, &id, 106).await;
        let server = wait_stream(&mut client, &id, "the stream to run", running).await;
        assert_statement_counted(server.stream.as_ref().expect("stream"));

        // An overlap: the whole file again, from the same source, and its readers killed too.
        // Nothing is stored or counted twice.
        client
            .restart_stream(restart_at(&id, FILE, 4))
            .await
            .expect("RestartStream over what is stored");
        for (round, delay) in [0, 100].into_iter().enumerate() {
            let holding = wait_for("a replica to hold the stream", CAPTURE, || {
                let (sql, id) = (&sql, id.as_str());
                async move { holder(sql, id).await }
            })
            .await;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let index = replicas
                .iter()
                .position(|replica| replica.label == holding)
                .unwrap_or_else(|| panic!("{holding} is not a replica of this test"));
            replicas[index].kill().await;
            eprintln!("killed {holding} {delay} ms after it held the replayed stream");
            let name = format!("agent-{}", round + 3 + delays_ms.len());
            replicas[index] = ServiceProcess::serve(&name, &db.url, &options(&name)).await;
            client = replicas[1 - index].client(&tenant.key).await;
            // The next holder is another agent (the killed one is dead).
            wait_for("another replica to hold the stream", CAPTURE, || {
                let (sql, id, killed) = (&sql, id.as_str(), holding.clone());
                async move { holder(sql, id).await.filter(|name| *name != killed) }
            })
            .await;
        }
        wait_stream(&mut client, &id, "the restarted stream to run", running).await;
        mariadb
            .exec(&["INSERT INTO test.t1 VALUES (6, 0, 'mariadb')"])
            .await;
        let events = settled_events(&mut client, &id, 107).await;
        assert_eq!(events.len(), 107, "nothing of the file is stored twice");
        assert_exactly_the_file(&events[..106]);
        assert_eq!(
            change_of(&events[106]).after,
            Some(json!({"a": 6, "b": 0, "c": "mariadb"}))
        );
        assert_events_indexed(&mut client, &id, 107).await;
        // Nor is the statement-format INSERT counted twice.
        let server = get_server(&mut client, &id).await;
        assert_statement_counted(server.stream.as_ref().expect("stream"));
    });
}
