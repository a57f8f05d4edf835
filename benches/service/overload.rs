//! B11: admission control under overload. GetServer at 20× the concurrency a replica sustains,
//! against a replica that admits 16 calls at once and queues 16 more: the p99 of the calls it
//! admits, beside the p99 at the sustainable concurrency, in alternating rounds of one run.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::Code;

use crate::{
    client::{self, parked_server},
    load::{histogram, ms},
    replica::Replica,
    report::Row,
};

/// The in-flight limit of the replica under test: B2 saturates at 16 calls in flight.
const SUSTAINABLE: usize = 16;
const OVERLOAD: usize = SUSTAINABLE * 20;
/// Calls in flight per HTTP/2 connection, at both concurrencies.
const PER_CONNECTION: usize = 4;
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;
/// How long an impatient client waits after a refusal, whatever the hint says.
const IMPATIENT_PAUSE: Duration = Duration::from_millis(20);

/// What a refused client does before it calls again.
#[derive(Clone, Copy)]
enum Backoff {
    /// Waits what the refusal's `retry-after` says (1 s when it says nothing readable).
    Honoured,
    /// Waits [`IMPATIENT_PAUSE`].
    Impatient,
}

impl Backoff {
    fn pause(self, status: &tonic::Status) -> Duration {
        match self {
            Backoff::Impatient => IMPATIENT_PAUSE,
            Backoff::Honoured => status
                .metadata()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()?.parse().ok())
                .map_or(Duration::from_secs(1), Duration::from_secs),
        }
    }
}

/// What one round of `concurrency` workers saw.
struct Outcome {
    admitted: Histogram<u64>,
    refused: u64,
    failed: u64,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            admitted: histogram(),
            refused: 0,
            failed: 0,
        }
    }

    fn add(&mut self, other: Outcome) {
        self.admitted
            .add(&other.admitted)
            .expect("histograms of the same bounds");
        self.refused += other.refused;
        self.failed += other.failed;
    }
}

/// `concurrency` workers calling GetServer in a loop for one round, refused ones backing off.
async fn round(
    replica: &Replica,
    key: &str,
    server_id: &str,
    concurrency: usize,
    backoff: Backoff,
) -> Outcome {
    let mut channels = Vec::new();
    for _ in 0..concurrency.div_ceil(PER_CONNECTION) {
        channels.push(replica.channel().await);
    }
    let deadline = Instant::now() + ROUND;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let mut client = client::client(channels[worker / PER_CONNECTION].clone(), key);
            let server_id = server_id.to_owned();
            tokio::spawn(async move {
                let mut outcome = Outcome::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let request = dbtrail_servers::proto::GetServerRequest {
                        server_id: server_id.clone(),
                    };
                    match client.get_server(request).await {
                        Ok(_) => outcome
                            .admitted
                            .saturating_record(started.elapsed().as_micros() as u64),
                        Err(status) if status.code() == Code::ResourceExhausted => {
                            outcome.refused += 1;
                            let left = deadline.saturating_duration_since(Instant::now());
                            let pause = backoff.pause(&status).min(left);
                            tokio::time::sleep(pause).await;
                        }
                        Err(status) => {
                            eprintln!("B11: GetServer failed: {status:?}");
                            outcome.failed += 1;
                        }
                    }
                }
                outcome
            })
        })
        .collect();
    let mut total = Outcome::new();
    for worker in workers {
        total.add(worker.await.expect("a worker"));
    }
    total
}

/// B11 on a replica of its own (on `url`, where `key` is valid): clients that honour the
/// refusals' retry-after, and clients that retry after 20 ms.
pub async fn overload(url: &str, key: &str, rows: &mut Vec<Row>) {
    let limits = ["--max-calls-in-flight", "16", "--max-queued-calls", "16"];
    let replica = Replica::start("bench-overload", url, &limits).await;
    let mut client = client::client(replica.channel().await, key);
    let server = client::register(&mut client, parked_server("bench-overload")).await;
    client::wait_parked(&mut client, &server.server_id).await;
    let id = server.server_id;
    round(&replica, key, &id, SUSTAINABLE, Backoff::Honoured).await;
    for (backoff, clients) in [
        (Backoff::Honoured, "clients honouring retry-after"),
        (Backoff::Impatient, "clients retrying after 20 ms"),
    ] {
        let (mut steady, mut overloaded) = (Outcome::new(), Outcome::new());
        for _ in 0..ROUNDS {
            steady.add(round(&replica, key, &id, SUSTAINABLE, backoff).await);
            overloaded.add(round(&replica, key, &id, OVERLOAD, backoff).await);
        }
        rows.push(row(&steady, &overloaded, clients));
    }
    replica.stop().await;
}

/// The B11 row of one kind of client.
fn row(steady: &Outcome, overloaded: &Outcome, clients: &str) -> Row {
    let seconds = (ROUND * ROUNDS as u32).as_secs_f64();
    let (p99, base_p99) = (
        overloaded.admitted.value_at_quantile(0.99),
        steady.admitted.value_at_quantile(0.99),
    );
    let ratio = p99 as f64 / base_p99.max(1) as f64;
    Row {
        id: "B11",
        measurement: format!(
            "GetServer at 20× the sustainable concurrency ({OVERLOAD} in flight against 16 admitted + 16 queued; {clients}), admitted calls' p99"
        ),
        value: format!(
            "{} ({:.0}/s admitted, {:.0}/s refused RESOURCE_EXHAUSTED, {} other errors)",
            ms(p99),
            overloaded.admitted.len() as f64 / seconds,
            overloaded.refused as f64 / seconds,
            overloaded.failed
        ),
        baseline: format!(
            "{} ({:.0}/s at {SUSTAINABLE} in flight)",
            ms(base_p99),
            steady.admitted.len() as f64 / seconds
        ),
        ratio: format!("{ratio:.2}×"),
        target: "≤ 3×, no other errors".to_owned(),
        met: ratio <= 3.0 && overloaded.failed == 0 && steady.failed == 0,
        detail: None,
    }
}
