//! B12: WatchServers fan-out. 1,000 watchers of a tenant of 10,000 servers while its servers
//! change one after another: the memory per watcher and each change's time to every watcher,
//! beside WatchOnboarding's (1,000 streams of one server, one change) measured in the same run.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::sync::{Mutex, watch};

use dbtrail_servers::proto;

use crate::{
    client::{self, Client, parked_server},
    load::{histogram, ms},
    replica::Replica,
    report::Row,
    unary::seed_copies,
    watch::fan_out,
};

const SERVERS: i64 = 10_000;
const WATCHERS: usize = 1_000;
const CHANGES: i64 = 300;
/// Streams per HTTP/2 connection (the server allows 200 at once on one connection).
const STREAMS_PER_CONNECTION: usize = 200;

/// When each change (by the revision it makes) was sent.
type Sent = Arc<std::sync::Mutex<HashMap<i64, Instant>>>;

/// B12 and its baseline.
pub async fn fleet_rows(database_url: &str, key: &str, rows: &mut Vec<Row>) {
    let (per_watcher, latencies, list_time, feed_bytes) = fleet_fan_out(database_url).await;
    let (base_per_stream, base_latencies, _) = fan_out(database_url, key, WATCHERS).await;
    let p99 = latencies.value_at_quantile(0.99);
    let base_p99 = base_latencies.value_at_quantile(0.99);
    rows.push(Row {
        id: "B12",
        measurement: format!(
            "WatchServers, {WATCHERS} watchers of a tenant of {SERVERS} servers, {CHANGES} changes one after another: memory per watcher; a change to every watcher, p50 / p99"
        ),
        value: format!(
            "{:.1} KB; {} / {}",
            per_watcher / 1024.0,
            ms(latencies.value_at_quantile(0.5)),
            ms(p99)
        ),
        baseline: format!(
            "WatchOnboarding, {WATCHERS} streams of one server, one change: {:.1} KB; {} / {}",
            base_per_stream / 1024.0,
            ms(base_latencies.value_at_quantile(0.5)),
            ms(base_p99)
        ),
        ratio: format!(
            "memory {:.2}, p99 {:.2}",
            per_watcher / base_per_stream.max(1.0),
            p99 as f64 / base_p99.max(1) as f64
        ),
        target: "≤ 12 KB per watcher; p99 ≤ 100 ms".to_owned(),
        met: per_watcher <= 12.0 * 1024.0 && p99 <= 100_000,
        detail: Some(format!(
            "B12: the first watch of the tenant loads its servers once for the replica ({:.1} MB for {SERVERS} servers) and lists them in {}; the watchers after it share that copy",
            feed_bytes as f64 / (1024.0 * 1024.0),
            ms(list_time.as_micros() as u64)
        )),
    });
}

/// A fresh replica and tenant of `SERVERS` servers; the RSS per watcher, the fan-out latencies,
/// how long the first list of the whole tenant took, and the RSS its feed took.
async fn fleet_fan_out(database_url: &str) -> (f64, Histogram<u64>, Duration, u64) {
    let replica = Replica::start("bench-fleet", database_url, &[]).await;
    replica.cli(&["tenants", "create", "bench-fleet"]).await;
    let key = replica
        .cli(&[
            "keys",
            "create",
            "--tenant",
            "bench-fleet",
            "--permissions",
            "servers:read,servers:write",
        ])
        .await;
    let mut client = client::client(replica.channel().await, &key);
    let template = client::register(&mut client, parked_server("bench-fleet")).await;
    client::wait_parked(&mut client, &template.server_id).await;
    seed_copies(&replica, &template.server_id, SERVERS - 1).await;

    // The first watch loads the tenant's feed; it stays open, so the watchers after it are
    // measured at what each one adds.
    let before_feed = replica.rss_bytes();
    let started = Instant::now();
    let (ids, revision, _first) = list(&mut client).await;
    let list_time = started.elapsed();
    assert_eq!(ids.len() as i64, SERVERS);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = replica.rss_bytes();
    let feed_bytes = before.saturating_sub(before_feed);
    let watchers = FleetWatchers::open(&replica, &key, revision).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_watcher = replica.rss_bytes().saturating_sub(before) as f64 / WATCHERS as f64;

    for change in 0..CHANGES {
        let id = &ids[(change as usize * 7_919) % ids.len()];
        watchers
            .sent
            .lock()
            .unwrap()
            .insert(revision + change + 1, Instant::now());
        relabel(&mut client, id, change).await;
    }
    let latencies = watchers.wait(revision + CHANGES).await;
    replica.stop().await;
    (per_watcher, latencies, list_time, feed_bytes)
}

/// The tenant's servers and the revision of the list, from one watch, which stays open.
async fn list(
    client: &mut Client,
) -> (
    Vec<String>,
    i64,
    tonic::Streaming<proto::WatchServersResponse>,
) {
    let mut stream = client
        .watch_servers(proto::WatchServersRequest::default())
        .await
        .expect("WatchServers")
        .into_inner();
    let mut ids = Vec::new();
    loop {
        let page = stream
            .message()
            .await
            .expect("a list page")
            .expect("a page");
        ids.extend(page.servers.into_iter().map(|server| server.server_id));
        if !page.more {
            return (ids, page.revision, stream);
        }
    }
}

async fn relabel(client: &mut Client, server_id: &str, change: i64) {
    let server = proto::Server {
        server_id: server_id.to_owned(),
        labels: [("change".to_owned(), change.to_string())].into(),
        ..Default::default()
    };
    client
        .update_server(proto::UpdateServerRequest {
            server: Some(server),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels".to_owned()],
            }),
            request_id: String::new(),
        })
        .await
        .expect("UpdateServer");
}

/// `WATCHERS` open WatchServers streams resumed at one revision, each timing every change.
struct FleetWatchers {
    opened: Arc<AtomicUsize>,
    sent: Sent,
    latencies: Arc<Mutex<Histogram<u64>>>,
    /// Per watcher, the last revision it received.
    reached: watch::Sender<Vec<i64>>,
    close: watch::Sender<bool>,
}

impl FleetWatchers {
    async fn open(replica: &Replica, key: &str, revision: i64) -> FleetWatchers {
        let watchers = FleetWatchers {
            opened: Arc::new(AtomicUsize::new(0)),
            sent: Arc::default(),
            latencies: Arc::new(Mutex::new(histogram())),
            reached: watch::channel(vec![revision; WATCHERS]).0,
            close: watch::channel(false).0,
        };
        let mut index = 0;
        while index < WATCHERS {
            let client = client::client(replica.channel().await, key);
            for _ in 0..STREAMS_PER_CONNECTION.min(WATCHERS - index) {
                watchers.spawn_one(client.clone(), index, revision);
                index += 1;
            }
        }
        let started = Instant::now();
        while watchers.opened.load(Ordering::Acquire) < WATCHERS {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "only {} of {WATCHERS} WatchServers streams opened within 300 s",
                watchers.opened.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        watchers
    }

    fn spawn_one(&self, mut client: Client, index: usize, revision: i64) {
        let opened = self.opened.clone();
        let sent = self.sent.clone();
        let latencies = self.latencies.clone();
        let reached = self.reached.clone();
        let mut close = self.close.subscribe();
        tokio::spawn(async move {
            let request = proto::WatchServersRequest {
                since_revision: Some(revision),
                ..Default::default()
            };
            let mut stream = client
                .watch_servers(request)
                .await
                .expect("WatchServers")
                .into_inner();
            opened.fetch_add(1, Ordering::AcqRel);
            loop {
                let event = tokio::select! {
                    event = stream.message() => event.expect("an event").expect("open"),
                    _ = close.changed() => return,
                };
                let arrived = Instant::now();
                let at = sent.lock().unwrap().get(&event.revision).copied();
                if let Some(at) = at {
                    latencies
                        .lock()
                        .await
                        .saturating_record(arrived.duration_since(at).as_micros() as u64);
                }
                reached.send_modify(|reached| reached[index] = event.revision);
            }
        });
    }

    /// Waits until every watcher has reached `revision`, then closes them.
    async fn wait(&self, revision: i64) -> Histogram<u64> {
        let mut reached = self.reached.subscribe();
        tokio::time::timeout(
            Duration::from_secs(300),
            reached.wait_for(|all| all.iter().all(|at| *at >= revision)),
        )
        .await
        .expect("every watcher saw every change within 300 s")
        .expect("the watchers");
        self.close.send_replace(true);
        self.latencies.lock().await.clone()
    }
}
