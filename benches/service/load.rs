//! Load shapes: sequential calls into an HDR histogram, and closed-loop throughput, each
//! interleaved with its baseline in alternating rounds so that both see the same machine.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// One call of a worker (its index is the argument); an error ends the benchmark.
pub type Call = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Wraps an async closure as a [`Call`].
pub fn call<F, Fut>(function: F) -> Call
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |worker| Box::pin(function(worker)))
}

/// A latency histogram in microseconds, 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

/// Records the latency of `calls` sequential calls.
pub async fn record(call: &Call, calls: usize, into: &mut Histogram<u64>) {
    for _ in 0..calls {
        let started = Instant::now();
        call(0).await;
        into.saturating_record(started.elapsed().as_micros() as u64);
    }
}

/// Latency of `measured` and `baseline`, `rounds` alternating rounds of `calls` each, after a
/// warm-up of each.
pub async fn compare_latency(
    measured: &Call,
    baseline: &Call,
    rounds: usize,
    calls: usize,
) -> (Histogram<u64>, Histogram<u64>) {
    let (mut warm, mut measured_histogram, mut baseline_histogram) =
        (histogram(), histogram(), histogram());
    record(measured, calls / 4, &mut warm).await;
    record(baseline, calls / 4, &mut warm).await;
    for _ in 0..rounds {
        record(measured, calls, &mut measured_histogram).await;
        record(baseline, calls, &mut baseline_histogram).await;
    }
    (measured_histogram, baseline_histogram)
}

/// Calls per second of `concurrency` workers each calling in a loop for `duration`.
pub async fn closed_loop(call: &Call, concurrency: usize, duration: Duration) -> f64 {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    call(worker).await;
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("a load worker panicked");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Throughput of `measured` against `baseline` over alternating rounds.
pub struct Throughput {
    pub measured: Vec<f64>,
    pub baseline: Vec<f64>,
}

impl Throughput {
    /// Each round's ratio, measured over baseline, sorted.
    pub fn ratios(&self) -> Vec<f64> {
        let mut ratios: Vec<f64> = self
            .measured
            .iter()
            .zip(&self.baseline)
            .map(|(measured, baseline)| measured / baseline)
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios
    }

    /// The median ratio with the smallest and largest.
    pub fn ratio_summary(&self) -> (f64, f64, f64) {
        let ratios = self.ratios();
        (
            median(&ratios),
            ratios[0],
            ratios[ratios.len() - 1],
        )
    }
}

/// The middle of sorted or unsorted values.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// `rounds` alternating rounds of `measured` and `baseline`, after a short warm-up of each.
pub async fn compare_throughput(
    measured: &Call,
    baseline: &Call,
    concurrency: usize,
    rounds: usize,
    round: Duration,
) -> Throughput {
    closed_loop(measured, concurrency, round / 4).await;
    closed_loop(baseline, concurrency, round / 4).await;
    let mut result = Throughput {
        measured: Vec::new(),
        baseline: Vec::new(),
    };
    for _ in 0..rounds {
        result
            .measured
            .push(closed_loop(measured, concurrency, round).await);
        result
            .baseline
            .push(closed_loop(baseline, concurrency, round).await);
    }
    result
}
