//! The real binary as a child process (`ServiceProcess`, `run_cli`).

use super::*;

// ------------------------------------------------------------------------------------------------
// The real binary
// ------------------------------------------------------------------------------------------------

/// The secrets key of every replica this test process starts, so that replicas sharing a
/// database open each other's secrets.
pub(super) static TEST_SECRETS_KEY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(random_secrets_key);

/// The path of the service's binary, built by cargo for the integration tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_dbtrail-servers");

/// A port free at the time of asking (bound to 127.0.0.1:0 and released).
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// What a command of the binary printed, and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics with everything printed unless the command exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "command failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// What a child process printed (standard output, then standard error), echoed to the test's
/// own output too.
pub fn echo_output(output: &std::process::Output) -> String {
    let printed = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{printed}");
    printed
}

/// Runs the binary with `args` and extra environment `env`, within one minute.
pub async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut command = tokio::process::Command::new(BINARY);
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("dbtrail-servers {args:?} did not finish within 60 s"))
        .unwrap_or_else(|error| panic!("run dbtrail-servers {args:?}: {error}"));
    let output = CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "$ dbtrail-servers {}\n[exit {}]\n[stdout]\n{}[stderr]\n{}",
        args.join(" "),
        output.status,
        output.stdout,
        output.stderr
    );
    output
}

/// The binary running `serve` as a child process. Killed (SIGKILL) when dropped.
pub struct ServiceProcess {
    pub label: String,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    _data_dir: Option<tempfile::TempDir>,
}

impl ServiceProcess {
    /// `serve` with `options` on `database_url`, on free ports; waits until it is SERVING.
    pub async fn serve(
        label: &str,
        database_url: &str,
        options: &ReplicaOptions,
    ) -> ServiceProcess {
        Self::serve_with_env(label, database_url, options, &[]).await
    }

    /// `serve` like [`ServiceProcess::serve`], with extra environment variables.
    pub async fn serve_with_env(
        label: &str,
        database_url: &str,
        options: &ReplicaOptions,
        env: &[(&str, &str)],
    ) -> ServiceProcess {
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        let grpc_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut args = vec!["serve".to_owned()];
        args.extend(options.serve_args(
            database_url,
            &grpc_addr.to_string(),
            &http_addr.to_string(),
            data_dir.path(),
        ));
        let mut process = Self::spawn(label, &args, env, grpc_addr, http_addr);
        process._data_dir = Some(data_dir);
        process.wait_serving(Duration::from_secs(60)).await;
        process
    }

    /// Spawns the binary with `args` and extra environment `env`; the caller says which
    /// addresses it was told to listen on. Does not wait.
    pub fn spawn(
        label: &str,
        args: &[String],
        env: &[(&str, &str)],
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> ServiceProcess {
        let mut command = tokio::process::Command::new(BINARY);
        command
            .args(args)
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {BINARY} {args:?}: {error}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        Self::capture(
            format!("{label} stdout"),
            child.stdout.take().expect("piped stdout"),
            stdout.clone(),
        );
        Self::capture(
            format!("{label} stderr"),
            child.stderr.take().expect("piped stderr"),
            stderr.clone(),
        );
        ServiceProcess {
            label: label.to_owned(),
            grpc_addr,
            http_addr,
            child,
            stdout,
            stderr,
            _data_dir: None,
        }
    }

    fn capture(
        label: String,
        stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        sink: Arc<Mutex<String>>,
    ) {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{label}] {line}");
                let mut sink = sink.lock().expect("output lock");
                sink.push_str(&line);
                sink.push('\n');
            }
        });
    }

    /// Everything the process printed on standard output so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("output lock").clone()
    }

    /// Everything the process printed on standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("output lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("a running child has an id")
    }

    /// Waits until gRPC health says ServersService is SERVING; panics with the process's output
    /// if it exits or the timeout passes first.
    pub async fn wait_serving(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "{} exited with {status} before serving\nstdout:\n{}\nstderr:\n{}",
                    self.label,
                    self.stdout(),
                    self.stderr()
                );
            }
            if let Ok(ServingStatus::Serving) = health(self.grpc_addr, SERVERS_SERVICE).await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} was not SERVING on {} within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.label,
                    self.grpc_addr,
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A channel to the process's gRPC address.
    pub async fn channel(&self) -> Channel {
        channel(self.grpc_addr).await
    }

    /// A client authenticating with `key`.
    pub async fn client(&self, key: &str) -> Client {
        client_with_key(self.channel().await, key)
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL the service");
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`, `libc::SIGSTOP`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid fits pid_t");
        // SAFETY: kill(2) with a pid this test spawned and still owns (not yet reaped).
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for the service"),
            Err(_) => panic!(
                "{} did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.label,
                self.stdout(),
                self.stderr()
            ),
        }
    }
}
