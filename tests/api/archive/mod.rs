//! The archive tier end to end (docs/archive.md): a replica started from the binary with
//! one-minute partitions and no hot retention captures changes from a private MariaDB, archives
//! each closed partition (to a directory, or to a real S3-compatible server), and answers
//! ListChangeEvents and GetRowHistory the same before and after; a replica killed between the
//! archive's steps loses and doubles nothing; two replicas archive each partition once; and
//! pyarrow, an independent Parquet reader, reads the files to the rows PostgreSQL held.

mod cascade;
mod crashes;
mod keeping;
mod shards;
mod tiers;

use std::time::{Duration, Instant};

use dbtrail_servers::proto;
use serde_json::Value as Json;

use crate::common::mariadb::*;
use crate::common::stream::*;
use crate::common::*;

const TABLE: [&str; 2] = [
    "CREATE DATABASE shop",
    "CREATE TABLE shop.items (id INT PRIMARY KEY, note VARCHAR(100), price DECIMAL(8,2))",
];

/// How long a captured change may take to leave PostgreSQL: its one-minute partition closes,
/// the close's grace passes, and the archive's next run (every 15 s) takes it.
const ARCHIVED_WITHIN: Duration = Duration::from_secs(150);

/// A replica archiving to `archive_url`: one-minute partitions, archived as soon as they close.
fn archiving(agent: &str, archive_url: &str, extra: &[&str]) -> ReplicaOptions {
    let mut options = ReplicaOptions {
        agent_name: agent.to_owned(),
        ..mysql_replica_options()
    };
    options.extra_args.extend(
        [
            "--change-partition-width",
            "1m",
            "--hot-retention",
            "0s",
            "--archive-url",
            archive_url,
        ]
        .iter()
        .chain(extra)
        .map(|arg| (*arg).to_owned()),
    );
    options
}

/// Inserts, updates and deletes rows `from..from + 40` of shop.items: 56 changes.
async fn change_rows(mariadb: &MariaDb, from: u32) {
    let mut statements = Vec::new();
    for chunk in 0..4 {
        let values: Vec<String> = (0..10)
            .map(|row| {
                let id = from + chunk * 10 + row;
                format!("({id}, 'note {id}', {id}.25)")
            })
            .collect();
        statements.push(format!(
            "INSERT INTO shop.items VALUES {}",
            values.join(", ")
        ));
    }
    statements.push(format!(
        "UPDATE shop.items SET price = price + 1 WHERE id >= {from} AND id < {}",
        from + 10
    ));
    statements.push(format!(
        "DELETE FROM shop.items WHERE id >= {} AND id < {}",
        from + 35,
        from + 40
    ));
    statements.push(format!(
        "UPDATE shop.items SET note = 'changed' WHERE id = {}",
        from + 5
    ));
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    mariadb.exec(&statements).await;
}

/// Registers a server of `mariadb` on `replica`, captures 56 changes and returns the server's
/// id and what the reads gave while all was hot.
async fn captured(replica: &ServiceProcess, key: &str, mariadb: &MariaDb) -> (String, Reads) {
    let mut client = replica.client(key).await;
    let id = register(&mut client, mariadb.server("archived", USER, PASSWORD))
        .await
        .server_id;
    wait_stream(&mut client, &id, "the stream to run", running).await;
    change_rows(mariadb, 1).await;
    wait_captured(&mut client, &id, 56).await;
    let hot = reads(&mut client, &id, 6).await;
    (id, hot)
}

/// Every page of the server's events at `page_size`, each with the token it gave.
async fn pages(
    client: &mut Client,
    server_id: &str,
    filter: &str,
    page_size: i32,
) -> Vec<proto::ListChangeEventsResponse> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_change_events(proto::ListChangeEventsRequest {
                server_id: server_id.to_owned(),
                page_size,
                page_token: page_token.clone(),
                filter: filter.to_owned(),
            })
            .await
            .expect("ListChangeEvents")
            .into_inner();
        page_token = page.next_page_token.clone();
        pages.push(page);
        if page_token.is_empty() {
            return pages;
        }
    }
}

/// What the tests compare before and after archiving: every page at 7 a page, the updates of
/// shop.items, row `id`'s history, and the undo script of every change.
#[derive(Debug, PartialEq)]
struct Reads {
    pages: Vec<proto::ListChangeEventsResponse>,
    updates: Vec<proto::ChangeEvent>,
    history: proto::GetRowHistoryResponse,
    script: String,
}

/// Asserts that two reads are the same, part by part; for the scripts, their first different line.
#[track_caller]
fn assert_same(read: &Reads, expected: &Reads, what: &str) {
    assert_eq!(read.pages, expected.pages, "{what}: the pages");
    assert_eq!(read.updates, expected.updates, "{what}: the filtered list");
    assert_eq!(read.history, expected.history, "{what}: the row's history");
    // Every line but the one that says when the script was written.
    let lines = |script: &str| -> Vec<String> {
        script
            .lines()
            .filter(|line| !line.starts_with("-- Generated: "))
            .map(str::to_owned)
            .collect()
    };
    let (lines, wanted) = (lines(&read.script), lines(&expected.script));
    let mut pairs = lines.iter().zip(&wanted).enumerate();
    if let Some((number, (line, wanted))) = pairs.find(|(_, (a, b))| a != b) {
        panic!("{what}: the undo script's line {number} is {line:?}, not {wanted:?}");
    }
    assert_eq!(lines.len(), wanted.len(), "{what}: the undo script's lines");
}

/// The undo SQL of every captured change of shop.items.
async fn undo_script(client: &mut Client, server_id: &str) -> String {
    undo_script_of(client, server_id, r#"schema = "shop" AND table = "items""#).await
}

/// The undo SQL of the captured changes `filter` selects.
async fn undo_script_of(client: &mut Client, server_id: &str, filter: &str) -> String {
    let request = proto::RevertChangesRequest {
        server_id: server_id.to_owned(),
        filter: filter.to_owned(),
        ..Default::default()
    };
    let mut stream = client
        .revert_changes(request)
        .await
        .expect("RevertChanges")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.expect("the script's next part") {
        bytes.extend_from_slice(&chunk.data);
    }
    let script = String::from_utf8(bytes).expect("an ASCII script");
    assert!(script.contains("COMMIT;"), "{script}");
    script
}

async fn reads(client: &mut Client, server_id: &str, id: u32) -> Reads {
    let history = client
        .get_row_history(proto::GetRowHistoryRequest {
            server_id: server_id.to_owned(),
            schema: "shop".into(),
            table: "items".into(),
            key: format!(r#"{{"id":{id}}}"#),
            as_of: None,
        })
        .await
        .expect("GetRowHistory")
        .into_inner();
    Reads {
        script: undo_script(client, server_id).await,
        pages: pages(client, server_id, "", 7).await,
        updates: all_events(client, server_id, r#"table = "items" AND type = "update""#).await,
        history,
    }
}

/// Waits until the server's `count` events are all stored.
async fn wait_captured(client: &mut Client, server_id: &str, count: usize) {
    let deadline = Instant::now() + CAPTURE;
    loop {
        let events = all_events(client, server_id, "").await;
        if events.len() >= count {
            assert_eq!(events.len(), count, "no more events than changes");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} events were not captured: {}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Hot rows of the server in PostgreSQL, and archived rows in the manifest.
async fn tiers(postgres: &tokio_postgres::Client, server_id: &str) -> (i64, i64) {
    let row = postgres
        .query_one(
            "SELECT (SELECT count(*) FROM change_events WHERE server_id::text = $1), \
                 (SELECT COALESCE(sum(row_count), 0)::bigint FROM change_archive_files \
                  WHERE server_id::text = $1)",
            &[&server_id],
        )
        .await
        .expect("count the tiers");
    (row.get(0), row.get(1))
}

/// Waits until `archived` of the server's events are in the archive and none of them hot.
async fn wait_archived(
    postgres: &tokio_postgres::Client,
    server_id: &str,
    archived: i64,
    hot: i64,
) {
    let deadline = Instant::now() + ARCHIVED_WITHIN;
    loop {
        let now = tiers(postgres, server_id).await;
        if now == (hot, archived) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archive did not take the events: (hot, archived) = {now:?}, expected ({hot}, {archived})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One stored event as PostgreSQL holds it or a Parquet reader reads it: its columns, JSON
/// parsed, times in microseconds.
#[derive(Debug, PartialEq)]
struct StoredRow {
    sequence: i64,
    binlog_file: String,
    binlog_position: i64,
    row_index: i32,
    gtid: String,
    committed_at: i64,
    schema: String,
    table: String,
    operation: String,
    primary_key: Option<Json>,
    before: Option<Json>,
    after: Option<Json>,
}

fn parse_json(text: Option<&str>) -> Option<Json> {
    text.map(|text| serde_json::from_str(text).expect("JSON"))
}

/// The server's hot rows, as PostgreSQL holds them.
async fn hot_rows(postgres: &tokio_postgres::Client, server_id: &str) -> Vec<StoredRow> {
    postgres
        .query(
            "SELECT sequence, binlog_file, binlog_position, row_index, gtid, \
                 (extract(epoch FROM committed_at) * 1000000)::bigint, schema_name, table_name, \
                 operation, primary_key::text, row_before::text, row_after::text \
             FROM change_events WHERE server_id::text = $1 ORDER BY sequence",
            &[&server_id],
        )
        .await
        .expect("read the hot rows")
        .iter()
        .map(|row| StoredRow {
            sequence: row.get(0),
            binlog_file: row.get(1),
            binlog_position: row.get(2),
            row_index: row.get(3),
            gtid: row.get(4),
            committed_at: row.get(5),
            schema: row.get(6),
            table: row.get(7),
            operation: row.get(8),
            primary_key: parse_json(row.get(9)),
            before: parse_json(row.get(10)),
            after: parse_json(row.get(11)),
        })
        .collect()
}

/// The server's archived rows under `root` (the archive's directory, or the S3 server's bucket
/// on disk) as pyarrow reads them, in file and row order.
fn pyarrow_rows(root: &std::path::Path, server_id: &str) -> Vec<StoredRow> {
    let output = std::process::Command::new("python3")
        .args(["-c", PYARROW_READER])
        .arg(root)
        .arg(server_id)
        .output()
        .expect("run python3");
    assert!(output.status.success(), "pyarrow: {}", echo_output(&output));
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| {
            let row: Json = serde_json::from_str(line).expect("a JSON row");
            let text = |name: &str| row[name].as_str().expect(name).to_owned();
            StoredRow {
                sequence: row["sequence"].as_i64().expect("sequence"),
                binlog_file: text("binlog_file"),
                binlog_position: row["binlog_position"].as_i64().expect("position"),
                row_index: row["row_index"].as_i64().expect("row_index") as i32,
                gtid: text("gtid"),
                committed_at: row["committed_at"].as_i64().expect("committed_at"),
                schema: text("schema_name"),
                table: text("table_name"),
                operation: text("operation"),
                primary_key: parse_json(row["primary_key"].as_str()),
                before: parse_json(row["row_before"].as_str()),
                after: parse_json(row["row_after"].as_str()),
            }
        })
        .collect()
}

/// Reads every file of a server with pyarrow; prints one JSON object per row, times as
/// microseconds since the epoch.
const PYARROW_READER: &str = r#"
import glob, json, sys
import pyarrow as pa, pyarrow.parquet as pq
root, server = sys.argv[1], sys.argv[2]
files = sorted(glob.glob(f"{root}/server_id={server}/date=*/hour=*/events-*.parquet"))
assert files, f"no files under {root}/server_id={server}"
for path in files:
    table = pq.read_table(path)
    for name in ("committed_at", "indexed_at"):
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, table.column(name).cast(pa.int64()))
    for row in table.to_pylist():
        print(json.dumps(row))
"#;
