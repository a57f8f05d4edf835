//! B10: the live binlog stream against a private MariaDB. A bulk burst already in the binlog is
//! read (a) by a bare mysql_async binlog reader, decoding rows and nothing else, (b) by the
//! baseline pipeline (`stream_baseline`: the reader plus a binary COPY of the same rows into the
//! change index's table), and (c) by the service, which decodes, converts and indexes it in
//! PostgreSQL with its checkpoints; then (d) several writers insert flat out while the lag of the
//! index behind the source is sampled every 10 ms.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use mysql_async::{
    BinlogStreamRequest, Conn, OptsBuilder, binlog::events::EventData, prelude::Queryable,
};

use crate::{
    client,
    load::histogram,
    mariadb::{MariaDb, MasterStatus},
    replica::Replica,
    report::Row,
    source::{PASSWORD, USER, prepared},
    stream_baseline::reader_and_copy,
};

/// Rows of the bulk burst.
const BURST_ROWS: u64 = 1_000_000;
/// Rows per INSERT statement of the burst.
const ROWS_PER_INSERT: u64 = 1_000;
const WRITERS: usize = 4;
const SUSTAINED: Duration = Duration::from_secs(20);

async fn user_connection(mariadb: &MariaDb) -> Conn {
    let options = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(mariadb.port)
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .prefer_socket(false);
    Conn::new(options)
        .await
        .expect("log in to the bench MariaDB")
}

/// Writes the burst: BURST_ROWS rows in multi-row INSERTs, one transaction each.
async fn burst(mariadb: &MariaDb, first_id: u64) {
    insert_rows(&mut mariadb.root().await, first_id, BURST_ROWS).await;
}

/// Inserts `count` rows of `shop.events` from id `first_id`, ROWS_PER_INSERT to a statement.
async fn insert_rows(connection: &mut Conn, first_id: u64, count: u64) {
    let mut id = first_id;
    while id < first_id + count {
        let values: Vec<String> = (id..id + ROWS_PER_INSERT)
            .map(|id| format!("({id}, {}, 'note {id}', {id}.25)", id % 1000))
            .collect();
        connection
            .query_drop(format!(
                "INSERT INTO shop.events (id, a, note, amount) VALUES {}",
                values.join(",")
            ))
            .await
            .expect("INSERT");
        id += ROWS_PER_INSERT;
    }
}

async fn bare_reader(mariadb: &MariaDb, from: &MasterStatus, rows: u64) -> f64 {
    let connection = user_connection(mariadb).await;
    let started = Instant::now();
    let request = BinlogStreamRequest::new(4_000_000_001)
        .with_filename(from.file.as_bytes())
        .with_pos(from.position);
    let mut stream = connection
        .get_binlog_stream(request)
        .await
        .expect("a binlog stream");
    let mut read = 0u64;
    while read < rows {
        let event = stream
            .next()
            .await
            .expect("the stream goes on")
            .expect("a binlog event");
        if let Ok(Some(EventData::RowsEvent(data))) = event.read_data()
            && let Some(table) = stream.get_tme(data.table_id())
        {
            read += data.rows(table).filter(Result::is_ok).count() as u64;
        }
    }
    let rate = read as f64 / started.elapsed().as_secs_f64();
    let _ = stream.close().await;
    rate
}

/// Events the service has indexed for the server, from its checkpoint row.
async fn indexed(postgres: &tokio_postgres::Client, server_id: &str) -> u64 {
    let row = postgres
        .query_one(
            "SELECT next_sequence - 1 FROM stream_checkpoints WHERE server_id::text = $1",
            &[&server_id],
        )
        .await
        .expect("read the stream checkpoint");
    row.get::<_, i64>(0).max(0) as u64
}

async fn wait_indexed(postgres: &tokio_postgres::Client, server_id: &str, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while indexed(postgres, server_id).await < count {
        assert!(
            Instant::now() < deadline,
            "the service did not index {count} events"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `wait_indexed`, sampling the service's RSS every 20 ms: its peak.
async fn wait_indexed_sampling(
    postgres: &tokio_postgres::Client,
    server_id: &str,
    count: u64,
    replica: &Replica,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut peak = replica.rss_bytes();
    let mut checked = Instant::now();
    loop {
        peak = peak.max(replica.rss_bytes());
        if checked.elapsed() >= Duration::from_millis(20) {
            if indexed(postgres, server_id).await >= count {
                return peak;
            }
            checked = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the service did not index {count} events"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn postgres(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the service's PostgreSQL");
    tokio::spawn(connection);
    client
}

/// (c): WRITERS single-row transactions flat out for SUSTAINED, with the index's lag sampled
/// every 10 ms: how long until the index holds what the source had committed at the sample.
/// Returns (rows per second written, lag p50, lag p99), lags in milliseconds.
async fn sustained(
    mariadb: &MariaDb,
    postgres: &tokio_postgres::Client,
    server_id: &str,
    first_id: u64,
    already: u64,
) -> (f64, u64, u64) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(first_id));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let mut connection = mariadb.root().await;
        let (next, stop, written) = (next.clone(), stop.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed);
                connection
                    .query_drop(format!(
                        "INSERT INTO shop.events (id, a, note, amount) \
                         VALUES ({id}, {}, 'note {id}', 1.50)",
                        id % 1000
                    ))
                    .await
                    .expect("sustained INSERT");
                written.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut lags = histogram();
    while started.elapsed() < SUSTAINED {
        tokio::time::sleep(Duration::from_millis(10)).await;
        samples.push((Instant::now(), already + written.load(Ordering::Relaxed)));
        let now_indexed = indexed(postgres, server_id).await;
        samples.retain(|(at, committed)| {
            if now_indexed >= *committed {
                lags.saturating_record(at.elapsed().as_millis() as u64);
                false
            } else {
                true
            }
        });
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
    let rate = written.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    // The samples still waiting are lag too: wait them out.
    while !samples.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now_indexed = indexed(postgres, server_id).await;
        samples.retain(|(at, committed)| {
            if now_indexed >= *committed {
                lags.saturating_record(at.elapsed().as_millis() as u64);
                false
            } else {
                true
            }
        });
    }
    (
        rate,
        lags.value_at_quantile(0.5),
        lags.value_at_quantile(0.99),
    )
}

/// A private MariaDB with `shop.events`, onboarded by a fresh replica until its stream runs:
/// the MariaDB, the replica, its key and the server's id.
pub async fn onboarded(database_url: &str, label: &str) -> (MariaDb, Replica, String, String) {
    onboarded_with(database_url, label, &[]).await
}

/// `onboarded`, the replica started with `extra` arguments.
pub async fn onboarded_with(
    database_url: &str,
    label: &str,
    extra: &[&str],
) -> (MariaDb, Replica, String, String) {
    let table = "CREATE TABLE shop.events (id BIGINT PRIMARY KEY, a INT, note VARCHAR(64), \
                 amount DECIMAL(10,2)) ENGINE=InnoDB";
    let mariadb = prepared(MariaDb::start().await, table).await;
    let replica = Replica::start(label, database_url, extra).await;
    let key = replica
        .bootstrap_key
        .clone()
        .expect("the first start prints its key");
    let mut api = client::client(replica.channel().await, &key);
    let server_id = client::register(&mut api, mariadb.server(label, USER, PASSWORD))
        .await
        .server_id;
    loop {
        let server = api
            .get_server(dbtrail_servers::proto::GetServerRequest {
                server_id: server_id.clone(),
            })
            .await
            .expect("GetServer")
            .into_inner();
        let running = server.stream.as_ref().is_some_and(|stream| {
            stream.state == dbtrail_servers::proto::StreamState::Running as i32
        });
        if running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (mariadb, replica, key, server_id)
}

/// Writes `count` rows (ids from `first_id`) in multi-row INSERTs and waits until the service
/// has indexed `total` events of the server.
pub async fn write_and_index(
    mariadb: &MariaDb,
    database_url: &str,
    server_id: &str,
    (first_id, count, total): (u64, u64, u64),
) {
    insert_rows(&mut mariadb.root().await, first_id, count).await;
    wait_indexed(&postgres(database_url).await, server_id, total).await;
}

/// B10 on a database of its own.
pub async fn stream(database_url: &str, rows: &mut Vec<Row>) {
    // Onboard the server, then stop the replica so the burst waits in the binlog.
    let (mariadb, replica, _key, server_id) = onboarded(database_url, "bench-stream").await;
    let postgres = postgres(database_url).await;
    replica.stop().await;
    let before = mariadb.master_status().await.expect("the binlog is on");
    let written = Instant::now();
    burst(&mariadb, 1).await;
    let write_rate = BURST_ROWS as f64 / written.elapsed().as_secs_f64();

    let bare = bare_reader(&mariadb, &before, BURST_ROWS).await;
    let baseline = reader_and_copy(
        user_connection(&mariadb).await,
        self::postgres(database_url).await,
        &before,
        BURST_ROWS,
    )
    .await;
    let replica = Replica::start("bench-stream", database_url, &[]).await;
    let started = Instant::now();
    let peak_rss = wait_indexed_sampling(&postgres, &server_id, BURST_ROWS, &replica).await;
    let service = BURST_ROWS as f64 / started.elapsed().as_secs_f64();
    rows.push(Row {
        id: "B10",
        measurement: format!(
            "stream: {BURST_ROWS} rows of a bulk burst already in the binlog, indexed by the service (from its start)"
        ),
        value: format!("{service:.0} rows/s"),
        baseline: format!(
            "{baseline:.0} rows/s (mysql_async reader + binary COPY pipeline; the bare reader alone: {bare:.0})"
        ),
        ratio: format!("{:.2}", service / baseline),
        target: "≥ 0.7 and ≥ 150,000 rows/s".to_owned(),
        met: service >= 150_000.0 && service >= 0.7 * baseline,
        detail: Some(format!(
            "the burst was written at {write_rate:.0} rows/s ({ROWS_PER_INSERT}-row INSERTs); \
             the service's peak RSS during it {:.1} MB; ratio to the bare reader {:.2}",
            peak_rss as f64 / (1024.0 * 1024.0),
            service / bare
        )),
    });

    let (rate, p50, p99) =
        sustained(&mariadb, &postgres, &server_id, BURST_ROWS + 1, BURST_ROWS).await;
    rows.push(Row {
        id: "B10",
        measurement: format!(
            "stream lag while {WRITERS} writers insert flat out for {}s, p50 / p99",
            SUSTAINED.as_secs()
        ),
        value: format!("{p50} ms / {p99} ms"),
        baseline: format!("{rate:.0} rows/s written (single-row transactions)"),
        ratio: "—".to_owned(),
        target: "p99 ≤ 100 ms".to_owned(),
        met: p99 <= 100,
        detail: None,
    });
    replica.stop().await;
}
