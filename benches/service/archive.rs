//! B16: the archive tier (docs/archive.md). 200,000 captured events in one-minute partitions are
//! archived by the library's own run (`ChangeIndex::archive_due`) beside a plain read of the same
//! rows out of PostgreSQL; the files' size against the partitions' (the compression ratio);
//! ListChangeEvents over the same events cold against hot; PostgreSQL's size before and after.

use std::time::{Duration, Instant};

use dbtrail_servers::{
    config::DatabaseConfig,
    store::{
        ChangeIndex,
        index::archive::{Archive, ArchiveLocation, ArchiveRun, ArchiveSettings},
    },
};
use futures_util::{StreamExt, pin_mut};

use crate::{client, report::Row, stream, undo};

/// Captured inserts archived.
const EVENTS: u64 = 200_000;
const MB: f64 = 1024.0 * 1024.0;

/// B16 on a database of its own.
pub async fn archive(database_url: &str, rows: &mut Vec<Row>) {
    // The replica reads the files this process's archive run writes: the same directory.
    let directory = tempfile::tempdir().expect("an archive directory");
    let url = directory.path().to_str().expect("a UTF-8 path");
    let flags = ["--change-partition-width", "1m", "--archive-url", url];
    let (mariadb, replica, key, server_id) =
        stream::onboarded_with(database_url, "bench-archive", &flags).await;
    stream::write_and_index(&mariadb, database_url, &server_id, (1, EVENTS, EVENTS)).await;
    let postgres = stream::postgres(database_url).await;
    let mut api = client::client(replica.channel().await, &key);
    let hot_list = list_rate(&mut api, &server_id).await;
    wait_closed(&postgres).await;
    let hot_bytes = closed_bytes(&postgres).await;
    let read = read_rate(&postgres, &server_id).await;

    let (archive_rate, run) = archive_all(database_url, directory.path()).await;
    let cold_list = list_rate(&mut api, &server_id).await;
    let after_bytes = closed_bytes(&postgres).await;
    replica.stop().await;
    push_rows(
        rows,
        (archive_rate, read),
        (hot_bytes, after_bytes, run.bytes),
        (cold_list, hot_list),
    );
}

/// The library's archive run over every closed partition, into `directory`: rows/s, and what
/// it did.
async fn archive_all(database_url: &str, directory: &std::path::Path) -> (f64, ArchiveRun) {
    let index = ChangeIndex::connect(&DatabaseConfig {
        database_url: Some(database_url.to_owned()),
        pool_size: 4,
        pool_timeout: Duration::from_secs(30),
        statement_timeout: Duration::from_secs(600),
    })
    .expect("the index")
    .with_archive(
        Archive::open(ArchiveLocation::Directory(directory.to_owned())).expect("the archive"),
    );
    let settings = ArchiveSettings {
        hot_retention: Duration::ZERO,
        archive_retention: Duration::from_secs(365 * 24 * 3600),
        holder: "bench".into(),
        failpoint: None,
    };
    let started = Instant::now();
    let run = index
        .archive_due(&settings)
        .await
        .expect("the archive's run");
    let archive_rate = run.rows as f64 / started.elapsed().as_secs_f64();
    assert_eq!(run.rows as u64, EVENTS, "every event was archived");
    (archive_rate, run)
}

/// B16's three rows: the archive's rate and the files' size, ListChangeEvents cold against hot,
/// and PostgreSQL's size before and after.
fn push_rows(
    rows: &mut Vec<Row>,
    (archive_rate, read): (f64, f64),
    (hot_bytes, after_bytes, archived_bytes): (i64, i64, i64),
    (cold_list, hot_list): (f64, f64),
) {
    rows.push(Row {
        id: "B16",
        measurement: format!("archive: {EVENTS} events in one-minute partitions written as zstd Parquet, read back and verified, then dropped: rows/s; the files against the partitions' size"),
        value: format!("{archive_rate:.0} rows/s; {:.1} MB of files for {:.1} MB of partitions ({:.1}× smaller)", archived_bytes as f64 / MB, hot_bytes as f64 / MB, hot_bytes as f64 / archived_bytes as f64),
        baseline: format!("{read:.0} rows/s (SELECT of the same rows from PostgreSQL, nothing else)"),
        ratio: format!("{:.2}", archive_rate / read),
        target: "≥ 0.5 of the read rate; ≥ 5× smaller".to_owned(),
        met: archive_rate >= 0.5 * read && hot_bytes >= 5 * archived_bytes,
        detail: None,
    });
    rows.push(Row {
        id: "B16",
        measurement: format!("ListChangeEvents over the same {EVENTS} events cold (Parquet) against hot (PostgreSQL), pages of 1,000"),
        value: format!("{cold_list:.0} events/s cold"),
        baseline: format!("{hot_list:.0} events/s hot"),
        ratio: format!("{:.2}", cold_list / hot_list),
        target: "≥ 0.5 of hot".to_owned(),
        met: cold_list >= 0.5 * hot_list,
        detail: None,
    });
    rows.push(Row {
        id: "B16",
        measurement: "PostgreSQL's size of the closed partitions, before and after the archive"
            .to_owned(),
        value: format!("{:.1} MB after", after_bytes as f64 / MB),
        baseline: format!("{:.1} MB before", hot_bytes as f64 / MB),
        ratio: "—".to_owned(),
        target: "0 after".to_owned(),
        met: after_bytes == 0,
        detail: None,
    });
}

/// Every event of the server, read with ListChangeEvents a page of 1,000 at a time: events/s.
async fn list_rate(api: &mut client::Client, server_id: &str) -> f64 {
    let started = Instant::now();
    let read = undo::list_all(api, server_id, "").await;
    assert_eq!(read as u64, EVENTS, "ListChangeEvents read every event");
    read as f64 / started.elapsed().as_secs_f64()
}

/// Waits until the partition of the newest event is closed for the archive (its end and 5 s).
async fn wait_closed(postgres: &tokio_postgres::Client) {
    let row = postgres
        .query_one(
            "SELECT EXTRACT(epoch FROM (SELECT ends_at FROM change_partitions \
                 WHERE starts_at <= (SELECT max(indexed_at) FROM change_events) \
                 ORDER BY starts_at DESC LIMIT 1) - now())::float8",
            &[],
        )
        .await
        .expect("the newest event's partition");
    let wait: f64 = row.get(0);
    tokio::time::sleep(Duration::from_secs_f64(wait.max(0.0) + 6.0)).await;
}

/// The bytes of the closed partitions still in PostgreSQL (tables, indexes, TOAST).
async fn closed_bytes(postgres: &tokio_postgres::Client) -> i64 {
    postgres
        .query_one(
            "SELECT COALESCE(sum(pg_total_relation_size(name::regclass)), 0)::bigint \
             FROM change_partitions WHERE dropped_at IS NULL AND ends_at <= now()",
            &[],
        )
        .await
        .expect("the partitions' size")
        .get(0)
}

/// The server's events read out of PostgreSQL in sequence order, every column: rows/s.
async fn read_rate(postgres: &tokio_postgres::Client, server_id: &str) -> f64 {
    let started = Instant::now();
    let rows = postgres
        .query_raw(
            "SELECT * FROM change_events WHERE server_id = $1::text::uuid ORDER BY sequence",
            [server_id],
        )
        .await
        .expect("read the events");
    pin_mut!(rows);
    let mut read = 0u64;
    while let Some(row) = rows.next().await {
        row.expect("a row");
        read += 1;
    }
    assert_eq!(read, EVENTS);
    read as f64 / started.elapsed().as_secs_f64()
}
