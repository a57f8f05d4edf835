//! B15, issue 29's "streams per replica": N servers (1,000 by default) streaming idle from a few
//! private MariaDB instances (the same MariaDB registered under many names, as in the chaos
//! suite), held by one replica. Measured over an idle window beside the same measurements of the
//! replica before it held any stream (same run, same database): RSS per stream, CPU per stream per
//! minute, PostgreSQL transactions per second; and the time until every stream runs again after
//! the replica restarts.
//!
//! `B15_SERVERS` (default 1,000), `B15_INSTANCES` (MariaDB instances, default 10) and
//! `B15_WINDOW_SECS` (the idle window, default 60) change the shape.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};

use crate::{
    client,
    mariadb::MariaDb,
    replica::{Replica, admin_url, pg_connect},
    report::Row,
    source::{ORDERS, PASSWORD, USER, prepared},
};

/// Registrations in flight at once.
const REGISTERING: usize = 64;
/// How long every stream may take to run (after registering, and after the restart).
const ALL_RUNNING: Duration = Duration::from_secs(900);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// What one idle window cost the replica.
#[derive(Debug, Clone, Copy)]
struct Idle {
    /// RSS at the end of the window, in bytes.
    rss: u64,
    /// CPU seconds (user + system) of the replica's process during the window.
    cpu: f64,
    /// CPU seconds of the PostgreSQL backends of the replica's database during the window.
    pg_cpu: f64,
    /// Transactions committed or rolled back in the replica's database, per second.
    xacts: f64,
    /// Rows updated per second in the replica's database (all tables).
    updates: f64,
    window: Duration,
}

/// User + system CPU seconds of a process, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks as f64 / per_second)
}

/// The database's counters: transactions, rows updated, and the CPU of each backend on it.
async fn database_counters(
    admin: &tokio_postgres::Client,
    name: &str,
) -> (i64, i64, Vec<(u32, f64)>) {
    let row = admin
        .query_one(
            "SELECT xact_commit + xact_rollback, tup_updated FROM pg_stat_database \
             WHERE datname = $1",
            &[&name],
        )
        .await
        .expect("pg_stat_database");
    let backends = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .await
        .expect("pg_stat_activity")
        .into_iter()
        .filter_map(|row| {
            let pid = u32::try_from(row.get::<_, i32>(0)).ok()?;
            Some((pid, cpu_seconds(pid)?))
        })
        .collect();
    (row.get(0), row.get(1), backends)
}

/// Measures `replica` idle for `window`; the statistics come through the admin database, so the
/// measuring itself adds nothing to the replica's database.
async fn measure(replica: &Replica, database: &str, window: Duration) -> Idle {
    let admin = pg_connect(&admin_url()).await;
    let pid = replica.pid().expect("the service is running");
    // The cumulative statistics are flushed by each backend at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (xacts_before, updates_before, backends_before) = database_counters(&admin, database).await;
    let cpu_before = cpu_seconds(pid).expect("the service's CPU");
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = cpu_seconds(pid).expect("the service's CPU") - cpu_before;
    let window = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (xacts_after, updates_after, backends_after) = database_counters(&admin, database).await;
    let pg_cpu = backends_after
        .iter()
        .map(|(pid, after)| {
            let before = backends_before.iter().find(|(was, _)| was == pid);
            after - before.map_or(0.0, |(_, before)| *before)
        })
        .sum();
    let seconds = window.as_secs_f64();
    Idle {
        rss: replica.rss_bytes(),
        cpu,
        pg_cpu,
        xacts: (xacts_after - xacts_before) as f64 / seconds,
        updates: (updates_after - updates_before) as f64 / seconds,
        window,
    }
}

/// `instances` MariaDB servers with the stream's account and a table, each allowing `streams`
/// dump threads and the onboarding's connections beside them.
async fn sources(instances: usize, streams: usize) -> Vec<MariaDb> {
    let mut started = Vec::new();
    for _ in 0..instances {
        let mariadb = MariaDb::options()
            .arg(&format!("--max-connections={}", streams * 2 + 100))
            .start()
            .await;
        started.push(prepared(mariadb, ORDERS).await);
    }
    started
}

/// Registers `servers` servers spread over `sources`, REGISTERING at a time.
async fn register_all(replica: &Replica, key: &str, sources: &[MariaDb], servers: usize) {
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(replica.channel().await);
    }
    stream::iter(0..servers)
        .map(|index| {
            let mut client = client::client(channels[index % channels.len()].clone(), key);
            let source = &sources[index % sources.len()];
            let server = source.server(&format!("bench-idle-{index}"), USER, PASSWORD);
            async move { client::register(&mut client, server).await }
        })
        .buffer_unordered(REGISTERING)
        .for_each(|_| async {})
        .await;
}

/// Servers whose stream runs, with a checkpoint of its connection written after `since` (the
/// database's clock) when given.
async fn running(postgres: &tokio_postgres::Client, since: Option<std::time::SystemTime>) -> i64 {
    postgres
        .query_one(
            "SELECT count(*) FROM servers WHERE stream_state = 'running' AND ($1::timestamptz \
             IS NULL OR (stream_progress->>'last_checkpoint_at')::timestamptz > $1)",
            &[&since],
        )
        .await
        .expect("count the running streams")
        .get(0)
}

/// Waits until `servers` streams run (see `running`); how long that took.
async fn wait_running(
    postgres: &tokio_postgres::Client,
    servers: usize,
    since: Option<std::time::SystemTime>,
) -> Duration {
    let started = Instant::now();
    loop {
        let count = running(postgres, since).await;
        if count >= servers as i64 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < ALL_RUNNING,
            "only {count} of {servers} streams ran within {ALL_RUNNING:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The most binlog dump threads one of `sources` holds.
async fn dump_threads(sources: &[MariaDb]) -> u64 {
    let mut most = 0;
    for source in sources {
        let count: Option<u64> = source
            .query_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Binlog Dump'",
            )
            .await;
        most = most.max(count.unwrap_or(0));
    }
    most
}

/// What B15 found, for its rows.
struct Found {
    servers: usize,
    instances: usize,
    baseline: Idle,
    idle: Idle,
    /// RSS of the replica that onboarded the servers, once they all ran.
    onboarded_rss: u64,
    /// From the first registration until every stream ran.
    onboarding: Duration,
    /// From SIGTERM to the old replica until every stream ran on the new one, and the new
    /// one's start to ready.
    restart: Duration,
    start_to_ready: Duration,
    dump_threads: u64,
}

/// B15 on a database of its own.
pub async fn idle_streams(database: &str, rows: &mut Vec<Row>) {
    let servers = setting("B15_SERVERS", 1_000) as usize;
    let instances = setting("B15_INSTANCES", 10).max(1) as usize;
    let window = Duration::from_secs(setting("B15_WINDOW_SECS", 60));
    let sources = sources(instances, servers.div_ceil(instances)).await;
    let url = crate::replica::database_url(database);
    let max_streams = servers.to_string();
    let flags = ["--max-streams", max_streams.as_str()];
    let replica = Replica::start("bench-idle", &url, &flags).await;
    let key = replica
        .bootstrap_key
        .clone()
        .expect("the first start prints its key");
    let postgres = pg_connect(&url).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let baseline = measure(&replica, database, window).await;

    let started = Instant::now();
    register_all(&replica, &key, &sources, servers).await;
    wait_running(&postgres, servers, None).await;
    let onboarding = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let onboarded_rss = replica.rss_bytes();

    let stopped = Instant::now();
    replica.stop().await;
    // After the old replica's last write: a checkpoint newer than this is the new one's.
    let since: std::time::SystemTime = postgres
        .query_one("SELECT now()", &[])
        .await
        .expect("the database's clock")
        .get(0);
    let replica = Replica::start("bench-idle", &url, &flags).await;
    let start_to_ready = replica.start_to_ready;
    wait_running(&postgres, servers, Some(since)).await;
    let restart = stopped.elapsed();
    let dump_threads = dump_threads(&sources).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = measure(&replica, database, window).await;
    replica.stop().await;
    let found = Found {
        servers,
        instances,
        baseline,
        idle,
        onboarded_rss,
        onboarding,
        restart,
        start_to_ready,
        dump_threads,
    };
    push_rows(&found, rows);
}

/// Per stream, then the whole at 5,000 streams: the baseline plus 5,000 times the per-stream
/// part.
fn per_stream(measured: f64, baseline: f64, servers: usize) -> (f64, f64) {
    let each = (measured - baseline) / servers as f64;
    (each, baseline + each * 5_000.0)
}

const MB: f64 = 1024.0 * 1024.0;

fn push_rows(found: &Found, rows: &mut Vec<Row>) {
    let Found {
        servers: n,
        baseline: base,
        idle,
        ..
    } = *found;
    let label = format!("issue 29's streams per replica: {n} idle streams");
    let rss_each = (idle.rss as f64 - base.rss as f64) / n as f64;
    rows.push(Row {
        id: "B15",
        measurement: format!("{label}, RSS per stream (after a restart: streams only)"),
        value: format!(
            "{:.1} KB ({:.1} MB in all)",
            rss_each / 1024.0,
            idle.rss as f64 / MB
        ),
        baseline: format!(
            "{:.1} MB, the same replica with 0 streams",
            base.rss as f64 / MB
        ),
        ratio: "—".to_owned(),
        target: "≤ 64 KB per stream".to_owned(),
        met: rss_each <= 64.0 * 1024.0,
        detail: Some(details(found)),
    });
    let minutes = |idle: Idle| idle.window.as_secs_f64() / 60.0;
    let (cpu_each, cpu_at_5000) = per_stream(idle.cpu / minutes(idle), base.cpu / minutes(base), n);
    rows.push(Row {
        id: "B15",
        measurement: format!("{label}, CPU per stream per minute; the whole at 5,000 streams"),
        value: format!(
            "{:.2} ms; {:.1}% of a core (at {n}: {:.1}%)",
            cpu_each * 1000.0,
            cpu_at_5000 / 60.0 * 100.0,
            idle.cpu / idle.window.as_secs_f64() * 100.0
        ),
        baseline: format!(
            "{:.2}% of a core with 0 streams",
            base.cpu / base.window.as_secs_f64() * 100.0
        ),
        ratio: "—".to_owned(),
        target: "5,000 streams ≤ 10% of one core".to_owned(),
        met: cpu_at_5000 / 60.0 <= 0.10,
        detail: None,
    });
    push_database_rows(found, &label, rows);
}

/// The rows of PostgreSQL's load and of the restart.
fn push_database_rows(found: &Found, label: &str, rows: &mut Vec<Row>) {
    let (n, base, idle) = (found.servers, found.baseline, found.idle);
    let (xacts_each, xacts_at_5000) = per_stream(idle.xacts, base.xacts, n);
    rows.push(Row {
        id: "B15",
        measurement: format!(
            "{label}, PostgreSQL transactions/s of its database (pg_stat_database); at 5,000 streams"
        ),
        value: format!("{:.1}/s; {xacts_at_5000:.1}/s (per stream {xacts_each:.3}/s)", idle.xacts),
        baseline: format!("{:.1}/s with 0 streams", base.xacts),
        ratio: "—".to_owned(),
        target: "5,000 streams ≤ 20 statements/s".to_owned(),
        met: xacts_at_5000 <= 20.0,
        detail: None,
    });
    rows.push(Row {
        id: "B15",
        measurement: format!(
            "{label}: the replica restarted (SIGTERM, started again) until every stream runs again"
        ),
        value: format!("{:.1} s", found.restart.as_secs_f64()),
        baseline: format!(
            "{:.0} ms start to ready",
            found.start_to_ready.as_secs_f64() * 1000.0
        ),
        ratio: "—".to_owned(),
        target: "≤ 30 s".to_owned(),
        met: found.restart <= Duration::from_secs(30),
        detail: None,
    });
}

fn details(found: &Found) -> String {
    let (base, idle) = (found.baseline, found.idle);
    format!(
        "{} servers on {} MariaDB instances (at most {} binlog dump threads on one); registered \
         until all ran in {:.1} s, after which the replica's RSS was {:.1} MB; idle windows of \
         {:.0} s. The PostgreSQL backends of the database used {:.2}% of a core ({:.2}% with 0 \
         streams); rows updated {:.1}/s ({:.1}/s)",
        found.servers,
        found.instances,
        found.dump_threads,
        found.onboarding.as_secs_f64(),
        found.onboarded_rss as f64 / MB,
        idle.window.as_secs_f64(),
        idle.pg_cpu / idle.window.as_secs_f64() * 100.0,
        base.pg_cpu / base.window.as_secs_f64() * 100.0,
        idle.updates,
        base.updates,
    )
}
