//! The service's benchmark: the release binary on a fresh database, each measurement beside a
//! baseline measured in the same run, printed as one table (docs/performance.md).
//!
//! `cargo bench --bench service` runs all of it; `cargo bench --bench service -- B1 B6` runs
//! only the named measurements; `-- callgrind` counts the instructions of GetServer and UpdateServer calls. PostgreSQL comes from DBTRAIL_BENCH_DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres); B8, B10, B13 and B15 start private MariaDBs from the
//! installed binaries. `scripts/bench` starts and installs what is missing, then runs this.

mod archive;
mod client;
mod fleet;
mod idle;
mod load;
#[path = "../../tests/api/common/mariadb/instance.rs"]
#[allow(dead_code)]
mod mariadb;
mod onboarding;
mod overload;
mod profile;
mod replica;
mod report;
mod source;
mod stream;
mod stream_baseline;
mod unary;
mod undo;
mod watch;
mod webhooks;

use std::time::Duration;

use replica::{Replica, database_url, drop_bench_databases, fresh_database_name};
use report::Row;

/// Whether the command line asked for measurement `id` (all when it named none); says so.
fn wanted(id: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg.starts_with('B'))
        .collect();
    let wanted = named.is_empty() || named.iter().any(|name| name == id);
    if wanted {
        eprintln!("measuring {id}");
    }
    wanted
}

/// B9: cold start to ready on a fresh database, and idle RSS, over three starts.
async fn cold_start(rows: &mut Vec<Row>) {
    let mut starts = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let url = database_url(&fresh_database_name());
        let replica = Replica::start("bench-cold", &url, &[]).await;
        starts.push(replica.start_to_ready);
        tokio::time::sleep(Duration::from_secs(2)).await;
        idle.push(replica.rss_bytes());
        replica.stop().await;
    }
    starts.sort();
    idle.sort();
    let (start, rss) = (starts[1], idle[1]);
    rows.push(Row {
        id: "B9",
        measurement: "idle RSS after start (median of 3)".to_owned(),
        value: format!("{:.1} MB", rss as f64 / (1024.0 * 1024.0)),
        baseline: "—".to_owned(),
        ratio: "—".to_owned(),
        target: "≤ 30 MB".to_owned(),
        met: rss <= 30 * 1024 * 1024,
        detail: None,
    });
    rows.push(Row {
        id: "B9",
        measurement:
            "cold start to ready on a fresh database (create, migrate, bootstrap; median of 3)"
                .to_owned(),
        value: format!("{:.0} ms", start.as_secs_f64() * 1000.0),
        baseline: "—".to_owned(),
        ratio: "—".to_owned(),
        target: "≤ 500 ms".to_owned(),
        met: start <= Duration::from_millis(500),
        detail: None,
    });
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; a test run (`cargo test --benches`) passes nothing else.
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    drop_bench_databases().await;
    if std::env::args().any(|arg| arg == "callgrind") {
        profile::unary_calls().await;
        drop_bench_databases().await;
        return;
    }
    let mut rows = Vec::new();
    if wanted("B9") {
        cold_start(&mut rows).await;
    }
    let url = database_url(&fresh_database_name());
    let replica = Replica::start("bench-a", &url, &[]).await;
    let key = replica
        .bootstrap_key
        .clone()
        .expect("the first start prints its API key");
    if ["B1", "B2", "B5"].map(wanted).contains(&true) {
        unary::get_server(&replica, &key, &mut rows).await;
    }
    if wanted("B4") {
        unary::mutations(&replica, &key, &mut rows).await;
    }
    if wanted("B3") {
        unary::list_servers(&replica, &mut rows).await;
    }
    if wanted("B7") {
        watch::cross_replica(&replica, &url, &key, &mut rows).await;
    }
    replica.stop().await;
    if wanted("B11") {
        overload::overload(&url, &key, &mut rows).await;
    }
    if wanted("B8") {
        // A database of its own: the servers of B7 retry their jumphost and would hold runner
        // slots of any replica on the same database.
        let onboarding_url = database_url(&fresh_database_name());
        let onboarding_replica = Replica::start("bench-onboarding", &onboarding_url, &[]).await;
        let onboarding_key = onboarding_replica
            .bootstrap_key
            .clone()
            .expect("the first start prints its API key");
        onboarding::onboarding(&onboarding_replica, &onboarding_key, &mut rows).await;
        onboarding_replica.stop().await;
    }
    if wanted("B6") {
        watch::fan_out_rows(&url, &key, &mut rows).await;
    }
    if wanted("B12") {
        fleet::fleet_rows(&url, &key, &mut rows).await;
    }
    if wanted("B10") {
        stream::stream(&database_url(&fresh_database_name()), &mut rows).await;
    }
    if wanted("B13") {
        undo::undo(&database_url(&fresh_database_name()), &mut rows).await;
    }
    if wanted("B16") {
        archive::archive(&database_url(&fresh_database_name()), &mut rows).await;
    }
    if wanted("B14") {
        webhooks::webhooks(&database_url(&fresh_database_name()), &mut rows).await;
    }
    if wanted("B15") {
        idle::idle_streams(&fresh_database_name(), &mut rows).await;
    }
    report::print(&rows);
    drop_bench_databases().await;
}
