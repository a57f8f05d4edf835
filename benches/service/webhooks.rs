//! B14: webhook deliveries in a burst. 1,000 servers change state in one transaction while 10
//! webhooks subscribe to it: 10,000 deliveries to a receiver in this process. The time from the
//! change's commit to the last delivery, and GetServer's p99 while they go out beside its p99
//! before the burst, measured in the same run on the same replica.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use dbtrail_servers::proto;

use crate::{
    client::{self, Client, parked_server},
    load::{histogram, ms},
    replica::{Replica, pg_connect},
    report::Row,
    unary::seed_copies,
};

const SERVERS: i64 = 1_000;
const WEBHOOKS: usize = 10;
/// GetServer calls of the baseline, one in flight.
const BASELINE_CALLS: usize = 2_000;
/// How long the last delivery may take before the benchmark gives up.
const DEADLINE: Duration = Duration::from_secs(600);

/// A receiver in this process: counts what arrives and when the last one did.
struct Receiver {
    addr: std::net::SocketAddr,
    received: Arc<AtomicUsize>,
    last: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let received = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(std::sync::Mutex::new(None));
        let (count, at) = (received.clone(), last.clone());
        let router = axum::Router::new().fallback(axum::routing::post(move || {
            let (count, at) = (count.clone(), at.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                *at.lock().unwrap() = Some(Instant::now());
                "ok"
            }
        }));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver {
            addr,
            received,
            last,
        }
    }
}

/// B14.
pub async fn webhooks(database_url: &str, rows: &mut Vec<Row>) {
    let replica = Replica::start("bench-webhooks", database_url, &["--allow-http-webhooks"]).await;
    let key = replica
        .bootstrap_key
        .clone()
        .expect("the first start prints its API key");
    let mut client = client::client(replica.channel().await, &key);
    let template = client::register(&mut client, parked_server("bench-hooks")).await;
    client::wait_parked(&mut client, &template.server_id).await;
    seed_copies(&replica, &template.server_id, SERVERS - 1).await;
    let receiver = Receiver::start().await;
    for index in 0..WEBHOOKS {
        client
            .create_webhook(proto::CreateWebhookRequest {
                webhook: Some(proto::Webhook {
                    url: format!("http://{}/hook-{index}", receiver.addr),
                    events: vec![proto::WebhookEvent::ServerStatusChanged as i32],
                    ..Default::default()
                }),
            })
            .await
            .expect("CreateWebhook");
    }
    let get = |client: Client| {
        let id = template.server_id.clone();
        async move {
            let mut client = client;
            let started = Instant::now();
            client
                .get_server(proto::GetServerRequest { server_id: id })
                .await
                .expect("GetServer");
            started.elapsed().as_micros() as u64
        }
    };
    let mut baseline = histogram();
    for _ in 0..BASELINE_CALLS {
        baseline.saturating_record(get(client.clone()).await);
    }

    let sql = pg_connect(&replica.database_url).await;
    let changed = sql
        .execute(
            "UPDATE servers SET status = 'decommissioned', decommissioned_at = now(), \
                 updated_at = now(), runnable = false, version = version + 1 \
             WHERE status = 'pending'",
            &[],
        )
        .await
        .expect("the burst");
    let committed = Instant::now();
    assert_eq!(changed, SERVERS as u64);
    let expected = SERVERS as usize * WEBHOOKS;
    let mut during = histogram();
    while receiver.received.load(Ordering::SeqCst) < expected {
        during.saturating_record(get(client.clone()).await);
        assert!(
            committed.elapsed() < DEADLINE,
            "{} of {expected} deliveries after {DEADLINE:?}",
            receiver.received.load(Ordering::SeqCst)
        );
    }
    let last = receiver.last.lock().unwrap().unwrap_or_else(Instant::now);
    let elapsed = last.saturating_duration_since(committed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let extra = receiver.received.load(Ordering::SeqCst) - expected;
    replica.stop().await;
    rows.push(row(elapsed, &during, &baseline, extra));
}

fn row(elapsed: Duration, during: &Histogram<u64>, baseline: &Histogram<u64>, extra: usize) -> Row {
    let expected = SERVERS as usize * WEBHOOKS;
    let (p99, base_p99) = (
        during.value_at_quantile(0.99),
        baseline.value_at_quantile(0.99),
    );
    let ratio = p99 as f64 / base_p99.max(1) as f64;
    Row {
        id: "B14",
        measurement: format!(
            "webhooks: {SERVERS} servers change status in one transaction, {WEBHOOKS} webhooks ({expected} deliveries to a local receiver): time to the last delivery; GetServer p50 / p99 meanwhile (one in flight)"
        ),
        value: format!(
            "{:.1} s ({:.0} deliveries/s); {} / {}",
            elapsed.as_secs_f64(),
            expected as f64 / elapsed.as_secs_f64().max(0.001),
            ms(during.value_at_quantile(0.5)),
            ms(p99)
        ),
        baseline: format!(
            "GetServer without deliveries: {} / {}",
            ms(baseline.value_at_quantile(0.5)),
            ms(base_p99)
        ),
        ratio: format!("p99 {ratio:.2}"),
        target: "last delivery ≤ 30 s; p99 ≤ 2× baseline".to_owned(),
        met: elapsed <= Duration::from_secs(30) && ratio <= 2.0 && extra == 0,
        detail: Some(format!(
            "B14: {} GetServer calls during the burst; {extra} deliveries arrived twice",
            during.len()
        )),
    }
}
