//! The service under measurement: the release binary started as a child process on a fresh
//! database, and the plain PostgreSQL connections of the baselines.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::{Channel, Endpoint};

/// The binary cargo built for this benchmark (the bench profile inherits `release`).
pub const BINARY: &str = env!("CARGO_BIN_EXE_dbtrail-servers");

/// The PostgreSQL server the benchmark creates its databases on.
pub fn admin_url() -> String {
    std::env::var("DBTRAIL_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `admin_url` with another database name.
pub fn database_url(name: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).expect("DBTRAIL_BENCH_DATABASE_URL is a URL");
    url.set_path(name);
    url.to_string()
}

/// A database name no run has used: the service creates it on start.
pub fn fresh_database_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "dbtrail_bench_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A plain tokio-postgres connection, the baselines' client.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("connect to PostgreSQL at {url}: {error}"));
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("baseline connection ended: {error}");
        }
    });
    client
}

/// Drops the benchmark's databases, this run's and any a killed run left behind.
pub async fn drop_bench_databases() {
    let admin = pg_connect(&admin_url()).await;
    let names = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'dbtrail\\_bench\\_%'",
            &[],
        )
        .await
        .expect("list benchmark databases");
    for row in names {
        let name: String = row.get(0);
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// One `serve` process.
pub struct Replica {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database_url: String,
    /// The API key the first start printed (None on a database that had one already).
    pub bootstrap_key: Option<String>,
    /// From spawn to the first 200 of /readyz.
    pub start_to_ready: Duration,
    child: Child,
    log: PathBuf,
    _data_dir: tempfile::TempDir,
}

impl Replica {
    /// Starts `serve` on `database_url` with `extra` flags; waits for /readyz.
    pub async fn start(label: &str, database_url: &str, extra: &[&str]) -> Replica {
        Self::launch(label, database_url, extra, &[]).await
    }

    /// Starts `serve` under `valgrind --tool=callgrind` with instrumentation off until
    /// [`Replica::callgrind`] turns it on; the profile goes to `out_file`.
    pub async fn start_under_callgrind(label: &str, database_url: &str, out_file: &str) -> Replica {
        let out = format!("--callgrind-out-file={out_file}");
        let wrapper = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            out.as_str(),
        ];
        Self::launch(label, database_url, &[], &wrapper).await
    }

    /// `callgrind_control` on the process: `--instr=on`, `--instr=off`, `--dump`.
    pub async fn callgrind(&self, option: &str) {
        let pid = self.child.id().expect("the service is running").to_string();
        let status = Command::new("callgrind_control")
            .args([option, pid.as_str()])
            .stdout(Stdio::null())
            .status()
            .await
            .expect("run callgrind_control");
        assert!(status.success(), "callgrind_control {option} failed");
    }

    async fn launch(label: &str, database_url: &str, extra: &[&str], wrapper: &[&str]) -> Replica {
        let data_dir = tempfile::tempdir().expect("a data directory");
        let grpc_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = data_dir.path().join("service.log");
        let secrets_key = "bXlfc2VjcmV0c19rZXlfZm9yX3RoZV9iZW5jaG1hcms=";
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(BINARY);
                command
            }
            None => Command::new(BINARY),
        };
        command
            .arg("serve")
            .args(["--database-url", database_url])
            .args(["--grpc-addr", &grpc_addr.to_string()])
            .args(["--http-addr", &http_addr.to_string()])
            .args(["--secrets-key", secrets_key])
            .args(["--data-dir", &data_dir.path().to_string_lossy()])
            .args(["--agent-name", label, "--agent-outbound-ip", "127.0.0.1"])
            .args(["--agent-capacity", "1000000"])
            .arg("--allow-loopback-targets")
            // The benchmark measures what a replica can do, not its limits per tenant and key.
            .args(["--tenant-rate-limit", "0", "--key-rate-limit", "0"])
            .args([
                "--max-watches",
                "1000000",
                "--max-watches-per-key",
                "1000000",
            ])
            .args(extra)
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("the service log file"))
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {BINARY}: {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (key_sender, key_receiver) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut key_sender = Some(key_sender);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("dbt_")
                    && let Some(sender) = key_sender.take()
                {
                    let _ = sender.send(line);
                }
            }
        });
        let mut replica = Replica {
            grpc_addr,
            http_addr,
            database_url: database_url.to_owned(),
            bootstrap_key: None,
            start_to_ready: Duration::ZERO,
            child,
            log,
            _data_dir: data_dir,
        };
        replica.wait_ready(started).await;
        replica.start_to_ready = started.elapsed();
        // The key line comes before the service listens; on a used database there is none.
        replica.bootstrap_key = tokio::time::timeout(Duration::from_millis(200), key_receiver)
            .await
            .ok()
            .and_then(Result::ok);
        replica
    }

    async fn wait_ready(&mut self, started: Instant) {
        let url = format!("http://{}/readyz", self.http_addr);
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the service exited with {status}; its log: {}",
                    self.log_text()
                );
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return;
            }
            if started.elapsed() > Duration::from_secs(180) {
                panic!(
                    "the service was not ready within 180 s; its log: {}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The resident set size of the process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.id().expect("the service is running");
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
            .map(|kilobytes| kilobytes * 1024)
            .expect("VmRSS in /proc/PID/status")
    }

    /// A new HTTP/2 connection to the gRPC port.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc_addr))
            .expect("an endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.grpc_addr))
    }

    /// Runs the binary's command line against this replica's database; its standard output.
    pub async fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(BINARY)
            .args(args)
            .args(["--database-url", &self.database_url])
            .output()
            .await
            .expect("run the command line");
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// SIGTERM, and wait for the exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }
}
