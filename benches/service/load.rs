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

/// Throughput of `measured` against `baseline` over alternating rounds, with the CPU each
/// call cost every process involved (summed over the rounds).
pub struct Throughput {
    pub measured: Vec<f64>,
    pub baseline: Vec<f64>,
    pub measured_cpu: Cpu,
    pub baseline_cpu: Cpu,
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

    /// Where each call's CPU went, for the measured calls and their baseline.
    pub fn detail(&self, measured: &str, baseline: &str) -> String {
        format!(
            "{measured}: {}; {baseline}: {}",
            self.measured_cpu.describe(),
            self.baseline_cpu.describe()
        )
    }

    /// The median ratio with the smallest and largest.
    pub fn ratio_summary(&self) -> (f64, f64, f64) {
        let ratios = self.ratios();
        (median(&ratios), ratios[0], ratios[ratios.len() - 1])
    }
}

/// The middle of sorted or unsorted values.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
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
    service_pid: Option<u32>,
) -> Throughput {
    closed_loop(measured, concurrency, round / 4).await;
    closed_loop(baseline, concurrency, round / 4).await;
    let mut result = Throughput {
        measured: Vec::new(),
        baseline: Vec::new(),
        measured_cpu: Cpu::default(),
        baseline_cpu: Cpu::default(),
    };
    for _ in 0..rounds {
        let (rate, cpu) = cpu_of(service_pid, closed_loop(measured, concurrency, round)).await;
        result.measured.push(rate);
        result.measured_cpu = result.measured_cpu.add(&cpu, 1.0 / rounds as f64);
        let (rate, cpu) = cpu_of(service_pid, closed_loop(baseline, concurrency, round)).await;
        result.baseline.push(rate);
        result.baseline_cpu = result.baseline_cpu.add(&cpu, 1.0 / rounds as f64);
    }
    result
}

/// Runs a closed loop and says the CPU per call it cost.
async fn cpu_of(service_pid: Option<u32>, run: impl Future<Output = f64>) -> (f64, Cpu) {
    let before = Cpu::now(service_pid);
    let started = Instant::now();
    let rate = run.await;
    let calls = rate * started.elapsed().as_secs_f64();
    (rate, before.per_call(&Cpu::now(service_pid), calls))
}

/// CPU time (user + system) of the processes in a measurement, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub service: f64,
    /// The part of `service` spent in the kernel.
    pub service_system: f64,
    pub postgres: f64,
    pub client: f64,
}

impl Cpu {
    /// The CPU used so far by the service `service_pid`, every PostgreSQL process, and this
    /// process (the load's client).
    pub fn now(service_pid: Option<u32>) -> Cpu {
        let postgres = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(process_cpu)
            .filter(|usage| usage.command == "postgres")
            .map(|usage| usage.user + usage.system)
            .sum();
        let of = |pid: Option<u32>| pid.and_then(process_cpu).unwrap_or_default();
        let service = of(service_pid);
        Cpu {
            service: service.user + service.system,
            service_system: service.system,
            postgres,
            client: {
                let client = of(Some(std::process::id()));
                client.user + client.system
            },
        }
    }

    /// `self` plus `weight` times `other`.
    fn add(&self, other: &Cpu, weight: f64) -> Cpu {
        Cpu {
            service: self.service + other.service * weight,
            service_system: self.service_system + other.service_system * weight,
            postgres: self.postgres + other.postgres * weight,
            client: self.client + other.client * weight,
        }
    }

    /// "service 12 µs, PostgreSQL 8 µs, client 20 µs" for per-call figures.
    pub fn describe(&self) -> String {
        format!(
            "CPU per call: service {:.0} µs ({:.0} µs of it in the kernel), PostgreSQL {:.0} µs, \
             client {:.0} µs",
            self.service, self.service_system, self.postgres, self.client
        )
    }

    /// CPU microseconds per call between `self` (earlier) and `later`.
    pub fn per_call(&self, later: &Cpu, calls: f64) -> Cpu {
        let micros = |before: f64, after: f64| (after - before) * 1e6 / calls;
        Cpu {
            service: micros(self.service, later.service),
            service_system: micros(self.service_system, later.service_system),
            postgres: micros(self.postgres, later.postgres),
            client: micros(self.client, later.client),
        }
    }
}

/// A process's command name and CPU seconds, from /proc/PID/stat.
#[derive(Debug, Default)]
struct Usage {
    command: String,
    user: f64,
    system: f64,
}

fn process_cpu(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(") ")?;
    let command = head.split_once(" (")?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let seconds = |index: usize| Some(fields.get(index)?.parse::<u64>().ok()? as f64 / per_second);
    Some(Usage {
        command,
        user: seconds(11)?,
        system: seconds(12)?,
    })
}
