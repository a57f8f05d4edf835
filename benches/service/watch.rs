//! B6 and B7: WatchOnboarding fan-out on one replica, and across replicas.

use std::{
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
    load::{Cpu, histogram, ms},
    replica::Replica,
    report::Row,
};

/// Streams per HTTP/2 connection (the server allows 200 at once on one connection).
const STREAMS_PER_CONNECTION: usize = 200;

/// Open streams of one server, each timing the first change after `changed_at` is set.
struct Watchers {
    opened: Arc<AtomicUsize>,
    latencies: Arc<Mutex<Histogram<u64>>>,
    received: Arc<AtomicUsize>,
    changed_at: watch::Sender<Option<Instant>>,
    close: watch::Sender<bool>,
}

impl Watchers {
    /// Opens `count` follow-watches of `server_id` spread over enough connections.
    async fn open(replica: &Replica, key: &str, server_id: &str, count: usize) -> Watchers {
        let watchers = Watchers {
            opened: Arc::new(AtomicUsize::new(0)),
            latencies: Arc::new(Mutex::new(histogram())),
            received: Arc::new(AtomicUsize::new(0)),
            changed_at: watch::channel(None).0,
            close: watch::channel(false).0,
        };
        let mut remaining = count;
        while remaining > 0 {
            let client = client::client(replica.channel().await, key);
            let streams = remaining.min(STREAMS_PER_CONNECTION);
            remaining -= streams;
            for _ in 0..streams {
                watchers.spawn_one(client.clone(), server_id.to_owned());
            }
        }
        let started = Instant::now();
        while watchers.opened.load(Ordering::Acquire) < count {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "only {} of {count} watch streams opened within 300 s",
                watchers.opened.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        watchers
    }

    fn spawn_one(&self, mut client: Client, server_id: String) {
        let opened = self.opened.clone();
        let latencies = self.latencies.clone();
        let received = self.received.clone();
        let mut changed_at = self.changed_at.subscribe();
        let mut close = self.close.subscribe();
        tokio::spawn(async move {
            let request = proto::WatchOnboardingRequest {
                server_id,
                follow: true,
                ..Default::default()
            };
            let mut stream = client
                .watch_onboarding(request)
                .await
                .expect("WatchOnboarding")
                .into_inner();
            let first = stream
                .message()
                .await
                .expect("the current status")
                .expect("a status");
            opened.fetch_add(1, Ordering::AcqRel);
            let next = tokio::select! {
                next = stream.message() => next.expect("the next status").expect("a status"),
                _ = close.changed() => return,
            };
            assert!(next.revision > first.revision);
            let arrived = Instant::now();
            let sent = changed_at
                .wait_for(Option::is_some)
                .await
                .map(|sent| sent.expect("set"))
                .expect("the change time");
            latencies
                .lock()
                .await
                .saturating_record(arrived.duration_since(sent).as_micros() as u64);
            received.fetch_add(1, Ordering::AcqRel);
            let _ = close.changed().await;
        });
    }

    /// Makes a change and waits until every watcher has seen it (or `timeout` passes).
    async fn time_change(&self, change: impl Future<Output = ()>, count: usize) -> Histogram<u64> {
        let started = Instant::now();
        self.changed_at.send_replace(Some(started));
        change.await;
        while self.received.load(Ordering::Acquire) < count {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "only {} of {count} watchers saw the change within 120 s",
                self.received.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.latencies.lock().await.clone()
    }

    fn close(&self) {
        self.close.send_replace(true);
    }
}

/// ConfirmFirewall: awaiting_firewall -> waiting_for_agent, one new revision.
async fn confirm(client: &mut Client, server_id: &str) {
    client
        .confirm_firewall(proto::ConfirmFirewallRequest {
            server_id: server_id.to_owned(),
        })
        .await
        .expect("ConfirmFirewall");
}

/// B6 at one scale: a fresh replica, `count` streams of one server, one change; the RSS per
/// stream, the latencies, and the CPU per stream the fan-out cost the service and the client.
pub async fn fan_out(database_url: &str, key: &str, count: usize) -> (f64, Histogram<u64>, Cpu) {
    let replica = Replica::start(&format!("bench-watch-{count}"), database_url, &[]).await;
    let mut client = client::client(replica.channel().await, key);
    let server =
        client::register(&mut client, parked_server(&format!("bench-watch-{count}"))).await;
    client::wait_parked(&mut client, &server.server_id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = replica.rss_bytes();
    let watchers = Watchers::open(&replica, key, &server.server_id, count).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_stream = replica.rss_bytes().saturating_sub(before) as f64 / count as f64;
    let cpu_before = Cpu::now(replica.pid());
    let latencies = watchers
        .time_change(confirm(&mut client, &server.server_id), count)
        .await;
    let cpu = cpu_before.per_call(&Cpu::now(replica.pid()), count as f64);
    watchers.close();
    replica.stop().await;
    (per_stream, latencies, cpu)
}

/// B6 at 10,000 and 100,000 streams.
pub async fn fan_out_rows(database_url: &str, key: &str, rows: &mut Vec<Row>) {
    const ETCD_BYTES_PER_WATCH: f64 = 18.0 * 1024.0;
    for (count, p99_target_ms) in [(10_000usize, 50u64), (100_000, 1_000)] {
        let (per_stream, latencies, cpu) = fan_out(database_url, key, count).await;
        let p99 = latencies.value_at_quantile(0.99);
        rows.push(Row {
            id: "B6",
            measurement: format!(
                "WatchOnboarding, {count} open streams of one server: RSS per stream; one change fanned out, p50 / p99"
            ),
            value: format!(
                "{:.1} KB; {} / {}",
                per_stream / 1024.0,
                ms(latencies.value_at_quantile(0.5)),
                ms(p99)
            ),
            baseline: "18 KB per watch stream (etcd)".to_owned(),
            ratio: format!("{:.2}", per_stream / ETCD_BYTES_PER_WATCH),
            target: format!("≤ 12 KB per stream; p99 ≤ {p99_target_ms} ms"),
            met: per_stream <= 12.0 * 1024.0 && p99 <= p99_target_ms * 1000,
            detail: Some(format!(
                "the change to {count} streams: CPU per stream: service {:.1} µs ({:.1} µs in the kernel), client {:.1} µs",
                cpu.service, cpu.service_system, cpu.client
            )),
        });
    }
}

/// B7: a change made through replica B, seen by a watcher on A and by one on B.
pub async fn cross_replica(a: &Replica, database_url: &str, key: &str, rows: &mut Vec<Row>) {
    const SAMPLES: usize = 100;
    let b = Replica::start("bench-replica-b", database_url, &[]).await;
    let mut client_a = client::client(a.channel().await, key);
    let mut client_b = client::client(b.channel().await, key);
    let mut servers = Vec::new();
    for index in 0..SAMPLES {
        let server = client::register(
            &mut client_b,
            parked_server(&format!("bench-cross-{index}")),
        )
        .await;
        servers.push(server.server_id);
    }
    for server_id in &servers {
        client::wait_parked(&mut client_a, server_id).await;
    }
    let (mut on_a, mut on_b) = (histogram(), histogram());
    for server_id in &servers {
        let mut watch_a = open_watch(&mut client_a, server_id).await;
        let mut watch_b = open_watch(&mut client_b, server_id).await;
        let started = Instant::now();
        confirm(&mut client_b, server_id).await;
        let (seen_a, seen_b) = tokio::join!(
            next_after(&mut watch_a, started),
            next_after(&mut watch_b, started)
        );
        on_a.saturating_record(seen_a.as_micros() as u64);
        on_b.saturating_record(seen_b.as_micros() as u64);
    }
    let (p99, base_p99) = (on_a.value_at_quantile(0.99), on_b.value_at_quantile(0.99));
    rows.push(Row {
        id: "B7",
        measurement: format!(
            "change through replica B seen by a watcher on A, {SAMPLES} changes, p50 / p99"
        ),
        value: format!("{} / {}", ms(on_a.value_at_quantile(0.5)), ms(p99)),
        baseline: format!(
            "{} / {} (watcher on B)",
            ms(on_b.value_at_quantile(0.5)),
            ms(base_p99)
        ),
        ratio: format!("p99 +{}", ms(p99.saturating_sub(base_p99))),
        target: "p99 ≤ baseline + 10 ms".to_owned(),
        met: p99 <= base_p99 + 10_000,
        detail: None,
    });
    b.stop().await;
}

async fn open_watch(
    client: &mut Client,
    server_id: &str,
) -> tonic::Streaming<proto::OnboardingStatus> {
    let mut stream = client
        .watch_onboarding(proto::WatchOnboardingRequest {
            server_id: server_id.to_owned(),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("WatchOnboarding")
        .into_inner();
    stream
        .message()
        .await
        .expect("the current status")
        .expect("a status");
    stream
}

async fn next_after(
    stream: &mut tonic::Streaming<proto::OnboardingStatus>,
    started: Instant,
) -> Duration {
    stream
        .message()
        .await
        .expect("the next status")
        .expect("a status");
    started.elapsed()
}
