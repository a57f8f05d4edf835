//! `scripts/demo` (README "Quick start"), run as a newcomer runs it, twice on the same data
//! directory: it installs what is missing (nothing is skipped), starts its MariaDB, writer and
//! service, registers the MariaDB and prints its first captured change; what it printed works
//! against the REST API, captured changes keep coming, and Ctrl-C stops every process it started.
//! The second run reuses the server the first registered.
//!
//! The script runs the binary these tests were built with (DBTRAIL_BIN), in a temporary
//! directory (DEMO_DATA_DIR) on free ports (DEMO_MARIADB_PORT, DEMO_HTTP_ADDR, DEMO_GRPC_ADDR).

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::rest_common::Rest;

/// From start to the first captured change: a fresh data directory (mariadb-install-db, initdb,
/// migrations) takes about ten seconds on two cores; installing packages takes longer.
const FIRST_CHANGE_TIMEOUT: Duration = Duration::from_secs(180);
/// From Ctrl-C to the script's exit, everything it started stopped.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// What the script prints once it has shown a captured change.
const FIRST_CHANGE_LINE: &str = "==> first captured change:";

/// The ports one demo listens on.
#[derive(Clone, Copy)]
struct Ports {
    mariadb: u16,
    http: u16,
    grpc: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            mariadb: free_port(),
            http: free_port(),
            grpc: free_port(),
        }
    }

    fn all(self) -> [u16; 3] {
        [self.mariadb, self.http, self.grpc]
    }
}

/// What a run printed for the newcomer to use.
struct Printed {
    key: String,
    server_id: String,
    first_change: Value,
}

/// One run of `scripts/demo`, its standard output and error in one file. Dropped while it still
/// runs (a failed assertion), it is stopped as Ctrl-C stops it, so that nothing outlives the test.
struct Demo {
    child: Option<Child>,
    output: PathBuf,
}

impl Demo {
    fn start(dir: &Path, ports: Ports, run: usize) -> Demo {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo");
        let output = dir.join(format!("demo-{run}.out"));
        let file = File::create(&output).expect("the demo's output file");
        let child = Command::new(&script)
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env("DEMO_DATA_DIR", data_dir(dir))
            .env("DEMO_MARIADB_PORT", ports.mariadb.to_string())
            .env("DEMO_HTTP_ADDR", format!("127.0.0.1:{}", ports.http))
            .env("DEMO_GRPC_ADDR", format!("127.0.0.1:{}", ports.grpc))
            .env("DBTRAIL_BIN", BINARY)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the output file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| panic!("run {}: {error}", script.display()));
        Demo {
            child: Some(child),
            output,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the demo runs")
    }

    /// Waits until the script has printed its first captured change, and reads what it printed.
    async fn wait_first_change(&mut self) -> Printed {
        let started = Instant::now();
        loop {
            let output = self.output();
            if output.contains(FIRST_CHANGE_LINE) && output.contains("press Ctrl-C") {
                eprintln!(
                    "scripts/demo printed its first captured change after {:?}:\n{output}",
                    started.elapsed()
                );
                return printed(&output);
            }
            if let Some(status) = self.child().try_wait().expect("poll the demo") {
                panic!(
                    "scripts/demo exited with {status} before a first captured change:\n{output}"
                );
            }
            assert!(
                started.elapsed() < FIRST_CHANGE_TIMEOUT,
                "scripts/demo printed no first captured change within {FIRST_CHANGE_TIMEOUT:?}:\n{output}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends `signal` to the script (not to its children: it stops them).
    fn signal(&mut self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child().id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on the script this test spawned and has not reaped yet.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// Ctrl-C, then waits for the script to exit.
    async fn interrupt(&mut self) -> ExitStatus {
        self.signal(libc::SIGINT);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child().try_wait().expect("poll the demo") {
                eprintln!(
                    "scripts/demo exited with {status} {:?} after Ctrl-C",
                    started.elapsed()
                );
                self.child = None;
                return status;
            }
            assert!(
                started.elapsed() < STOP_TIMEOUT,
                "scripts/demo did not exit within {STOP_TIMEOUT:?} of Ctrl-C:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        eprintln!("stopping scripts/demo; it printed:\n{}", self.output());
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the script this test spawned and has not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// The key, the server id and the change that a run printed.
fn printed(output: &str) -> Printed {
    let field = |label: &str| {
        output
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .map(|value| value.trim().to_owned())
            .unwrap_or_else(|| panic!("scripts/demo printed no `{}` line:\n{output}", label.trim()))
    };
    let first_change = output
        .split_once(FIRST_CHANGE_LINE)
        .and_then(|(_, rest)| rest.split_once("\n==> "))
        .map(|(change, _)| change.trim())
        .unwrap_or_else(|| panic!("no first change printed:\n{output}"));
    Printed {
        key: field("  API key "),
        server_id: field("  server id "),
        first_change: serde_json::from_str(first_change).unwrap_or_else(|error| {
            panic!("the first change is not JSON ({error}):\n{first_change}")
        }),
    }
}

/// The processes whose command line names `dir`: the MariaDB, the writer, the service and its
/// PostgreSQL all do.
fn processes_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let own = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.bytes().all(|byte| byte.is_ascii_digit()) && name != own
        })
        .filter_map(|entry| {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.split(' ').next()?.to_owned();
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // A zombie has exited; only its parent's wait is missing.
            (state != "Z" && cmdline.contains(&dir))
                .then(|| format!("{} {cmdline}", entry.file_name().to_string_lossy()))
        })
        .collect()
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// The captured change events of the server, oldest first (one page: fewer than 1000 here).
async fn change_events(rest: &Rest, server_id: &str) -> Vec<Value> {
    let reply = rest
        .get(&format!(
            "/servers/{server_id}/change-events?page_size=1000"
        ))
        .await;
    assert_eq!(reply.status, 200, "ListChangeEvents: {}", reply.body);
    reply.json["events"]
        .as_array()
        .expect("events is a list")
        .clone()
}

/// Checks a running demo through the REST API with what it printed: the server is active, its
/// first change is one of the writer's, and captured changes keep growing.
async fn assert_capturing(printed: &Printed, ports: Ports) {
    let rest = Rest {
        base: format!("http://127.0.0.1:{}", ports.http),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client"),
        authorization: Some(format!("Bearer {}", printed.key)),
    };
    let server = rest.get(&format!("/servers/{}", printed.server_id)).await;
    assert_eq!(server.status, 200, "GetServer: {}", server.body);
    assert_eq!(server.json["status"], "active", "{}", server.body);
    assert_eq!(server.json["name"], "demo-mariadb", "{}", server.body);
    assert_eq!(
        server.json["connection_method"], "direct",
        "{}",
        server.body
    );
    assert_eq!(server.json["port"], ports.mariadb, "{}", server.body);

    assert_eq!(
        printed.first_change["schema"], "shop",
        "{}",
        printed.first_change
    );
    assert_eq!(
        printed.first_change["table"], "orders",
        "{}",
        printed.first_change
    );

    // The writer inserts, updates, inserts and deletes in turn, a change a second: within a
    // few seconds more changes are captured, inserts and updates among them.
    let before = change_events(&rest, &printed.server_id).await.len();
    assert!(before > 0, "no change events listed");
    wait_until(
        "more of the writer's changes, an insert and an update among them, to be captured",
        Duration::from_secs(20),
        || {
            let rest = rest.clone();
            let server_id = printed.server_id.clone();
            async move {
                let events = change_events(&rest, &server_id).await;
                let captured = |kind: &str| events.iter().any(|event| event["type"] == kind);
                events.len() >= before + 2 && captured("insert") && captured("update")
            }
        },
    )
    .await;
}

/// Ctrl-C: the script exits, and within its bound nothing it started listens or runs.
async fn assert_stops_everything(demo: &mut Demo, dir: &Path, ports: Ports) {
    let running = processes_under(dir);
    assert!(
        running.len() >= 4,
        "expected MariaDB, the writer, the service and its PostgreSQL to run: {running:#?}"
    );
    let status = demo.interrupt().await;
    let output = demo.output();
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after Ctrl-C:\n{output}"
    );
    for line in [
        "==> the writer stopped",
        "==> dbtrail-servers stopped",
        "==> MariaDB stopped",
    ] {
        assert!(output.contains(line), "`{line}` missing:\n{output}");
    }
    // The script waited for each: nothing is left, at once.
    let left = processes_under(dir);
    assert!(
        left.is_empty(),
        "still running after the demo exited: {left:#?}"
    );
    for port in ports.all() {
        assert!(!accepts(port), "port {port} still accepts connections");
    }
}

#[test]
fn the_demo_captures_a_first_change_stops_on_ctrl_c_and_runs_again() {
    block_on(async {
        // The MariaDB and PostgreSQL accounts (when root) must reach the data directory, and
        // PostgreSQL's socket path must stay short: a directory of /tmp open to others.
        let dir = tempfile::Builder::new()
            .prefix("dbtrail-demo-")
            .tempdir_in("/tmp")
            .expect("a temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temporary directory");
        let ports = Ports::free();

        let mut first = Demo::start(dir.path(), ports, 1);
        let printed_first = first.wait_first_change().await;
        assert_capturing(&printed_first, ports).await;
        assert_stops_everything(&mut first, dir.path(), ports).await;

        // Again on the same data: the MariaDB, the database and the registered server are reused,
        // with a new key.
        let mut second = Demo::start(dir.path(), ports, 2);
        let printed_second = second.wait_first_change().await;
        let output = second.output();
        assert!(
            output.contains("reusing the server demo-mariadb"),
            "the second run did not reuse the server:\n{output}"
        );
        assert!(
            !output.contains("mariadb-install-db"),
            "the second run made a new MariaDB:\n{output}"
        );
        assert_eq!(printed_second.server_id, printed_first.server_id);
        assert_ne!(printed_second.key, printed_first.key);
        assert_capturing(&printed_second, ports).await;
        assert_stops_everything(&mut second, dir.path(), ports).await;
    });
}
