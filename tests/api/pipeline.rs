//! The stream's pipeline (src/stream/sink.rs): the reader hands batches to a writer through a
//! bounded channel. A stalled index holds the reader back (it stops reading the binlog, and the
//! service's memory stays bounded) instead of buffering the burst; a replica killed in the
//! middle of a burst loses and doubles nothing.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::common::mariadb::*;
use crate::common::stream::*;
use crate::common::*;

/// The table of the bursts: rows of about 300 bytes.
const TABLE: [&str; 2] = [
    "CREATE DATABASE shop",
    "CREATE TABLE shop.bulk (id INT PRIMARY KEY, note VARCHAR(400)) ENGINE=InnoDB",
];
const ROWS_PER_INSERT: u32 = 1_000;

/// Inserts rows `from..from + count` of `shop.bulk`, `ROWS_PER_INSERT` to a statement.
async fn burst(mariadb: &MariaDb, from: u32, count: u32) {
    let note = "x".repeat(300);
    let mut connection = mariadb.root().await;
    let mut id = from;
    while id < from + count {
        let values: Vec<String> = (id..id + ROWS_PER_INSERT)
            .map(|id| format!("({id}, '{note}')"))
            .collect();
        mysql_async::prelude::Queryable::query_drop(
            &mut connection,
            format!("INSERT INTO shop.bulk VALUES {}", values.join(",")),
        )
        .await
        .expect("INSERT");
        id += ROWS_PER_INSERT;
    }
}

/// A replica streaming a fresh server of `mariadb`: the replica, a client and the server's id.
async fn streaming(
    db: &TestDatabase,
    mariadb: &MariaDb,
    key: &str,
) -> (ServiceProcess, Client, String) {
    let options = ReplicaOptions {
        agent_name: "agent-a".to_owned(),
        ..mysql_replica_options()
    };
    let replica = ServiceProcess::serve("pipeline", &db.url, &options).await;
    let mut client = replica.client(key).await;
    let id = register(&mut client, mariadb.server("bulk", USER, PASSWORD))
        .await
        .server_id;
    wait_stream(&mut client, &id, "the stream to run", running).await;
    (replica, client, id)
}

/// Events stored for the server (its checkpoint's count).
async fn indexed(postgres: &tokio_postgres::Client, server_id: &str) -> i64 {
    postgres
        .query_one(
            "SELECT next_sequence - 1 FROM stream_checkpoints WHERE server_id::text = $1",
            &[&server_id],
        )
        .await
        .expect("read the checkpoint")
        .get(0)
}

/// Waits until `count` events are stored.
async fn wait_indexed(postgres: &tokio_postgres::Client, server_id: &str, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while indexed(postgres, server_id).await < count {
        assert!(Instant::now() < deadline, "{count} events were not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that the server's index holds rows 1..=count of the burst, each once, with
/// sequences 1..=count.
async fn assert_each_row_once(postgres: &tokio_postgres::Client, server_id: &str, count: i64) {
    let row = postgres
        .query_one(
            "SELECT count(*), count(DISTINCT (row_after->>'id')::int), \
                 min((row_after->>'id')::int), max((row_after->>'id')::int), \
                 count(DISTINCT sequence), min(sequence), max(sequence) \
             FROM change_events WHERE server_id::text = $1",
            &[&server_id],
        )
        .await
        .expect("count the events");
    let (events, ids, sequences): (i64, i64, i64) = (row.get(0), row.get(1), row.get(4));
    let (first_id, last_id): (i32, i32) = (row.get(2), row.get(3));
    let (first_sequence, last_sequence): (i64, i64) = (row.get(5), row.get(6));
    assert_eq!(events, count, "every row stored, none twice");
    assert_eq!(ids, count, "each row of the burst once");
    assert_eq!((first_id, last_id), (1, count as i32));
    assert_eq!(sequences, count);
    assert_eq!((first_sequence, last_sequence), (1, count));
}

/// The value of an unlabelled counter in a replica's /metrics page (0 before it counts).
async fn counter(http: SocketAddr, name: &str) -> f64 {
    let body = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics page");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmRSS")
        * 1024
}

#[test]
fn a_stalled_index_holds_the_reader_back_and_memory_stays_bounded() {
    block_on(async {
        const ROWS: u32 = 200_000;
        let mariadb = mariadb_with(&TABLE).await;
        let db = TestDatabase::create().await;
        let tenant = db.create_tenant("tenant-a", None).await;
        let (replica, _client, id) = streaming(&db, &mariadb, &tenant.key).await;
        let postgres = db.connect().await;

        // Stall the index: the checkpoint row locked, every batch's transaction waits on it.
        let mut locker = db.connect().await;
        let lock = locker.transaction().await.expect("BEGIN");
        lock.execute(
            "SELECT 1 FROM stream_checkpoints WHERE server_id::text = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .expect("lock the checkpoint");
        let read_before = counter(replica.http_addr, "dbtrail_stream_bytes_read_total").await;
        let rss_before = rss(replica.pid());
        let binlog_before = mariadb.master_status().await.expect("binlog on");
        burst(&mariadb, 1, ROWS).await;
        let binlog_after = mariadb.master_status().await.expect("binlog on");
        assert_eq!(binlog_before.file, binlog_after.file, "one binlog file");
        let burst_bytes = (binlog_after.position - binlog_before.position) as f64;

        // Five seconds stalled: the reader stops once the channel is full.
        let mut peak = rss_before;
        let stalled = Instant::now();
        while stalled.elapsed() < Duration::from_secs(5) {
            peak = peak.max(rss(replica.pid()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let read = counter(replica.http_addr, "dbtrail_stream_bytes_read_total").await;
        let read_while_stalled = read - read_before;
        assert_eq!(
            indexed(&postgres, &id).await,
            0,
            "nothing stored while stalled"
        );
        assert!(
            read_while_stalled < burst_bytes / 4.0,
            "the reader read {read_while_stalled} of the burst's {burst_bytes} binlog bytes while \
             the index was stalled: it buffered instead of waiting"
        );
        // At most four batches of 10,000 rows are held (two queued, one written, one being
        // read): well under what buffering the burst (200,000 rows) would take.
        let grown = peak.saturating_sub(rss_before);
        assert!(
            grown < 64 * 1024 * 1024,
            "the service's RSS grew by {grown} bytes while stalled (the burst is {burst_bytes} \
             binlog bytes)"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let still = counter(replica.http_addr, "dbtrail_stream_bytes_read_total").await;
        assert_eq!(still, read, "the reader waits: no more bytes read");

        // Unstalled: the burst is stored, each row once.
        lock.rollback().await.expect("unlock");
        wait_indexed(&postgres, &id, i64::from(ROWS)).await;
        assert_each_row_once(&postgres, &id, i64::from(ROWS)).await;
    });
}

#[test]
fn a_replica_killed_mid_burst_stores_each_row_once() {
    block_on(async {
        const ROWS: u32 = 200_000;
        let mariadb = Arc::new(mariadb_with(&TABLE).await);
        let db = TestDatabase::create().await;
        let tenant = db.create_tenant("tenant-a", None).await;
        let (mut replica, _client, id) = streaming(&db, &mariadb, &tenant.key).await;
        let postgres = db.connect().await;

        let writer = {
            let mariadb = mariadb.clone();
            tokio::spawn(async move { burst(&mariadb, 1, ROWS).await })
        };
        // SIGKILL once the pipeline is busy: some batches stored, more in flight.
        let deadline = Instant::now() + Duration::from_secs(60);
        while indexed(&postgres, &id).await < 20_000 {
            assert!(Instant::now() < deadline, "the burst was not being stored");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        replica.kill().await;
        let at_kill = indexed(&postgres, &id).await;
        writer.await.expect("the burst");
        assert!(
            at_kill < i64::from(ROWS),
            "the kill landed after the whole burst was stored ({at_kill})"
        );

        // The same agent again: the stream resumes from the checkpoint.
        let options = ReplicaOptions {
            agent_name: "agent-a".to_owned(),
            ..mysql_replica_options()
        };
        let _again = ServiceProcess::serve("pipeline-again", &db.url, &options).await;
        wait_indexed(&postgres, &id, i64::from(ROWS)).await;
        assert_each_row_once(&postgres, &id, i64::from(ROWS)).await;
        assert_eq!(indexed(&postgres, &id).await, i64::from(ROWS));
    });
}
