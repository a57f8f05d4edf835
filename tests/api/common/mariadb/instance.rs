//! A private MariaDB per test, started from the installed binaries (onboarding.md §7).
//!
//! `mariadb-install-db` runs once per test run: its pristine data directory becomes a shared
//! template under the system temp directory (built under another name and renamed when complete,
//! so concurrent test processes never see half of one). Each `MariaDb` copies the template into a
//! temporary directory of its own and starts `mariadbd --no-defaults` on it: a free port on
//! 127.0.0.1 only, its socket in the temp dir, `--log-bin --binlog-format=ROW
//! --binlog-row-image=FULL` unless the test asks for a misconfigured variant. Root logs in over
//! the socket without a password. Drop kills the server (SIGKILL) and deletes the directory, on
//! panic too; if the test process itself dies, the kernel kills the server (PR_SET_PDEATHSIG).
//!
//! Nothing here skips: without the MariaDB binaries the tests fail and say so (scripts/test
//! installs them).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use dbtrail_servers::proto::{self, ConnectionMethod};
use mysql_async::prelude::{FromRow, Queryable};
use mysql_async::{Conn, OptsBuilder};

/// The server binary (Debian's mariadb-server package).
pub const MARIADBD: &str = "/usr/sbin/mariadbd";
/// The data-directory initialiser of the same package.
pub const INSTALL_DB: &str = "mariadb-install-db";
/// How long a fresh server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Start attempts when another process took the chosen port first.
const PORT_ATTEMPTS: usize = 5;
/// The redo log size of the template and of every server started from it (the default, 96 MiB,
/// would make every copy 100 MiB).
const INNODB_LOG_FILE_SIZE: &str = "8M";
/// Instance directories left behind by a killed test process are removed once this old.
const STALE_AGE: Duration = Duration::from_secs(2 * 60 * 60);
/// The prefix of every instance directory, so stale ones can be recognised.
const INSTANCE_PREFIX: &str = "dbtrail-mariadb-";

/// How the server is configured; the default is what dbtrail needs.
#[derive(Clone, Debug)]
pub struct MariaDbOptions {
    /// `--log-bin=DIR/mysql-bin`, or no binary log at all.
    pub log_bin: bool,
    /// `--binlog-format`.
    pub binlog_format: String,
    /// `--binlog-row-image`.
    pub binlog_row_image: String,
    /// The binary log's base name in the data directory (`mysql-bin`, so files are
    /// `mysql-bin.000001`, ...).
    pub log_bin_basename: String,
    /// More `mariadbd` flags.
    pub extra_args: Vec<String>,
}

impl Default for MariaDbOptions {
    fn default() -> Self {
        MariaDbOptions {
            log_bin: true,
            binlog_format: "ROW".to_owned(),
            binlog_row_image: "FULL".to_owned(),
            log_bin_basename: "mysql-bin".to_owned(),
            extra_args: Vec::new(),
        }
    }
}

impl MariaDbOptions {
    /// Without a binary log.
    pub fn without_binlog(mut self) -> Self {
        self.log_bin = false;
        self
    }

    /// With another binlog_format (STATEMENT, MIXED).
    pub fn binlog_format(mut self, format: &str) -> Self {
        self.binlog_format = format.to_owned();
        self
    }

    /// With another binlog_row_image (MINIMAL, NOBLOB).
    pub fn binlog_row_image(mut self, image: &str) -> Self {
        self.binlog_row_image = image.to_owned();
        self
    }

    /// With another binary log base name (`master-bin` gives `master-bin.000001`, ...).
    pub fn log_bin_basename(mut self, basename: &str) -> Self {
        self.log_bin_basename = basename.to_owned();
        self
    }

    /// With one more `mariadbd` flag (the benchmark's B8 raises max_connections).
    #[allow(dead_code)]
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// Starts a server with these options.
    pub async fn start(self) -> MariaDb {
        MariaDb::start_with(self).await
    }
}

/// Binary log coordinates, as `SHOW MASTER STATUS` gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterStatus {
    pub file: String,
    pub position: u64,
}

/// A running private MariaDB; killed and deleted on drop.
pub struct MariaDb {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// `SELECT VERSION()`, e.g. "10.11.19-MariaDB-0+deb12u1-log".
    pub version: String,
    socket: PathBuf,
    error_log: PathBuf,
    /// The data directory, which holds the binary log too.
    datadir: PathBuf,
    child: Option<Child>,
    /// The command line, for a restart on the same data directory.
    args: Vec<String>,
    /// Declared last: deleted after the server is dead.
    dir: Option<tempfile::TempDir>,
}

/// The uid and gid of the `mysql` account, when running as root (mariadbd refuses to run as root
/// without `--user`, and the data directory must belong to the account it runs as).
fn mysql_account() -> Option<(libc::uid_t, libc::gid_t)> {
    static ACCOUNT: std::sync::OnceLock<Option<(libc::uid_t, libc::gid_t)>> =
        std::sync::OnceLock::new();
    *ACCOUNT.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = std::ffi::CString::new("mysql").expect("no NUL");
        // SAFETY: getpwnam with a valid C string; the entry is copied out at once, and only this
        // initialiser (which runs once) calls it.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(
            !entry.is_null(),
            "running as root, but there is no `mysql` account to run mariadbd as: install the \
             mariadb-server package (scripts/test does)"
        );
        // SAFETY: a non-null pointer returned by getpwnam.
        let entry = unsafe { &*entry };
        Some((entry.pw_uid, entry.pw_gid))
    })
}

/// Gives `path` to the mysql account (when running as root).
fn chown_to_mysql(path: &Path) {
    if let Some((uid, gid)) = mysql_account() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|error| panic!("chown mysql {}: {error}", path.display()));
    }
}

/// Runs `command` to completion, panicking with its output unless it succeeds.
fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {what} ({command:?}): {error}"));
    assert!(
        output.status.success(),
        "{what} failed with {}: {command:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `mariadbd --version`, which names the template (a new package gets a new template).
fn server_version() -> String {
    let output = Command::new(MARIADBD)
        .arg("--version")
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {MARIADBD} --version: {error}. The MySQL tests need the MariaDB server \
                 binaries: install the mariadb-server package (scripts/test does)"
            )
        });
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn short_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

/// Removes instance directories that a killed test process left behind.
fn remove_stale_instances(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(INSTANCE_PREFIX)
            || name.starts_with(&format!("{INSTANCE_PREFIX}template"))
        {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .is_some_and(|age| age > STALE_AGE);
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The pristine data directory every server is copied from, installed once per package version.
fn template() -> PathBuf {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let temp = std::env::temp_dir();
            let key = short_hash(&format!(
                "{} innodb_log_file_size={INNODB_LOG_FILE_SIZE} v1",
                server_version()
            ));
            let template = temp.join(format!("{INSTANCE_PREFIX}template-{key}"));
            if template.join("mysql").is_dir() {
                return template;
            }
            remove_stale_instances(&temp);
            // Installed beside the template under a unique name, then renamed into place: the
            // rename is atomic, and a process that loses the race uses the winner's template.
            let building = tempfile::Builder::new()
                .prefix(&format!("{INSTANCE_PREFIX}building-{key}-"))
                .tempdir_in(&temp)
                .expect("a directory to install the MariaDB template in");
            chown_to_mysql(building.path());
            let datadir = building.path().join("data");
            let mut command = Command::new(INSTALL_DB);
            command
                .arg("--no-defaults")
                .arg(format!("--datadir={}", datadir.display()))
                .arg("--auth-root-authentication-method=normal")
                .arg("--skip-test-db")
                .arg(format!("--innodb-log-file-size={INNODB_LOG_FILE_SIZE}"))
                .stdin(Stdio::null());
            if mysql_account().is_some() {
                command.arg("--user=mysql");
            }
            run(&mut command, "mariadb-install-db");
            match std::fs::rename(&datadir, &template) {
                Ok(()) => {}
                Err(_) if template.join("mysql").is_dir() => {}
                Err(error) => panic!(
                    "cannot move the MariaDB template {} to {}: {error}",
                    datadir.display(),
                    template.display()
                ),
            }
            template
        })
        .clone()
}

/// Root over the unix socket, no password.
fn root_options(socket: &Path) -> OptsBuilder {
    OptsBuilder::default()
        .socket(Some(socket.to_string_lossy().into_owned()))
        .user(Some("root"))
        .stmt_cache_size(0)
}

/// Quotes a MariaDB string literal.
pub fn quote_string(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl MariaDb {
    /// A correctly configured server: binary log on, ROW format, FULL row images.
    pub async fn start() -> MariaDb {
        Self::start_with(MariaDbOptions::default()).await
    }

    /// Options to start a variant from.
    pub fn options() -> MariaDbOptions {
        MariaDbOptions::default()
    }

    /// A server with `options`.
    pub async fn start_with(options: MariaDbOptions) -> MariaDb {
        let template = tokio::task::spawn_blocking(template)
            .await
            .expect("the MariaDB template is installed");
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::try_start(&template, &options).await {
                Ok(server) => return server,
                // Another process bound the port between our check and the server's bind.
                Err(log) if log.contains("Address already in use") => last_log = log,
                Err(log) => panic!("mariadbd exited before accepting connections:\n{log}"),
            }
        }
        panic!("mariadbd found no free port in {PORT_ATTEMPTS} attempts:\n{last_log}")
    }

    /// One start on a fresh copy of the template; the server's log when it exits early.
    async fn try_start(template: &Path, options: &MariaDbOptions) -> Result<MariaDb, String> {
        let dir = tempfile::Builder::new()
            .prefix(INSTANCE_PREFIX)
            .tempdir()
            .expect("a temporary directory for MariaDB");
        chown_to_mysql(dir.path());
        let datadir = dir.path().join("data");
        run(
            Command::new("cp").arg("-a").arg(template).arg(&datadir),
            "copy the MariaDB template",
        );
        let socket = dir.path().join("sock");
        let error_log = dir.path().join("mariadbd.log");
        let port = free_port();

        let mut args = vec![
            "--no-defaults".to_owned(),
            format!("--datadir={}", datadir.display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", dir.path().join("mariadbd.pid").display()),
            // Its own temporary directory: a shared /tmp's cleanup must not delete the files
            // behind an information_schema query.
            format!("--tmpdir={}", dir.path().display()),
            "--server-id=1".to_owned(),
            // Accounts match by IP: no DNS lookups, and `'u'@'%'` is what a 127.0.0.1 login uses.
            "--skip-name-resolve".to_owned(),
            format!("--innodb-log-file-size={INNODB_LOG_FILE_SIZE}"),
            "--innodb-buffer-pool-size=32M".to_owned(),
            format!("--binlog-format={}", options.binlog_format),
            format!("--binlog-row-image={}", options.binlog_row_image),
        ];
        if options.log_bin {
            args.push(format!(
                "--log-bin={}",
                datadir.join(&options.log_bin_basename).display()
            ));
        }
        args.extend(options.extra_args.iter().cloned());

        let child = spawn(&args, &error_log);
        let mut server = MariaDb {
            port,
            version: String::new(),
            socket,
            error_log,
            datadir,
            child: Some(child),
            args,
            dir: Some(dir),
        };
        server.wait_accepting().await.map(|()| server)
    }

    /// Stops the server (killed, as a crash would) and starts it again on the same data and
    /// port after `down`.
    pub async fn restart(&mut self, down: Duration) {
        self.kill();
        tokio::time::sleep(down).await;
        self.child = Some(spawn(&self.args, &self.error_log));
        if let Err(log) = self.wait_accepting().await {
            panic!("mariadbd did not come back:\n{log}");
        }
    }

    /// Restarts the server, as [`MariaDb::restart`] does, as another server: `--server-id` changed.
    pub async fn restart_with_server_id(&mut self, server_id: u32, down: Duration) {
        self.set_server_id(server_id);
        self.restart(down).await;
    }

    /// The `--server-id` of the next start.
    fn set_server_id(&mut self, server_id: u32) {
        for arg in &mut self.args {
            if arg.starts_with("--server-id=") {
                *arg = format!("--server-id={server_id}");
            }
        }
    }

    /// Shuts the server down cleanly (SIGTERM, as `mariadb-admin shutdown` does: the binary log
    /// is closed and its GTID state saved) and waits until it has exited.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on the server this harness spawned and has not reaped yet.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "SIGTERM mariadbd"
        );
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if started.elapsed() < START_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mariadbd did not shut down within {START_TIMEOUT:?}:\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    /// Replaces the binary log file `name` (e.g. `mysql-bin.000001`) with `bytes`, as MariaDB's
    /// own rpl_from_mysql80 test does with a binlog MySQL wrote. Only while stopped
    /// ([`MariaDb::stop`]); the file stays listed in the binlog index.
    pub fn replace_binlog_file(&self, name: &str, bytes: &[u8]) {
        assert!(
            self.child.is_none(),
            "replace a binlog file only while the server is stopped"
        );
        let path = self.datadir.join(name);
        assert!(
            path.is_file(),
            "{} is not a binlog file of this server",
            path.display()
        );
        std::fs::write(&path, bytes)
            .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
        chown_to_mysql(&path);
    }

    /// Starts the stopped server again on the same data and port, as `server_id` when given.
    pub async fn start_again(&mut self, server_id: Option<u32>) {
        assert!(self.child.is_none(), "the server is running");
        if let Some(server_id) = server_id {
            self.set_server_id(server_id);
        }
        self.child = Some(spawn(&self.args, &self.error_log));
        if let Err(log) = self.wait_accepting().await {
            panic!("mariadbd did not start again:\n{log}");
        }
    }

    async fn wait_accepting(&mut self) -> Result<(), String> {
        let server = self;
        let started = Instant::now();
        loop {
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                server.child = None;
                return Err(format!("[{status}]\n{}", server.log()));
            }
            if let Ok(mut connection) = Conn::new(root_options(&server.socket)).await {
                let version: Option<String> = connection
                    .query_first("SELECT VERSION()")
                    .await
                    .unwrap_or_else(|error| panic!("SELECT VERSION() as root: {error}"));
                let _ = connection.disconnect().await;
                server.version = version.unwrap_or_default();
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                panic!(
                    "mariadbd did not accept connections on {} within {START_TIMEOUT:?}:\n{}",
                    server.socket.display(),
                    server.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    /// A new root connection over the socket.
    pub async fn root(&self) -> Conn {
        Conn::new(root_options(&self.socket))
            .await
            .unwrap_or_else(|error| panic!("root login over {}: {error}", self.socket.display()))
    }

    /// Runs each statement as root, in order, on one connection.
    pub async fn exec(&self, statements: &[&str]) {
        let mut connection = self.root().await;
        for statement in statements {
            connection
                .query_drop(*statement)
                .await
                .unwrap_or_else(|error| panic!("{statement}: {error}"));
        }
        let _ = connection.disconnect().await;
    }

    /// Runs `script` through the `mariadb` command-line client as root (`mariadb < script`, in
    /// batch mode), as a person applying a file would; its exit status and output.
    pub async fn apply_sql(&self, script: &[u8]) -> std::process::Output {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["--user=root", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the mariadb client (Debian's mariadb-client) runs");
        let mut stdin = child.stdin.take().expect("the client's standard input");
        // A client that stopped at an error stops reading: its output says why.
        let _ = stdin.write_all(script).await;
        drop(stdin);
        child.wait_with_output().await.expect("the client's output")
    }

    /// The rows of one query, as root.
    pub async fn query<T: FromRow + Send + 'static>(&self, sql: &str) -> Vec<T> {
        let mut connection = self.root().await;
        let rows = connection
            .query(sql)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
        let _ = connection.disconnect().await;
        rows
    }

    /// The first row of one query, as root.
    pub async fn query_first<T: FromRow + Send + 'static>(&self, sql: &str) -> Option<T> {
        self.query(sql).await.into_iter().next()
    }

    /// `CREATE USER 'user'@'%' IDENTIFIED BY 'password'` and, unless `privileges` is empty,
    /// `GRANT <privileges> ON *.* TO 'user'@'%'`: exactly those grants and no others.
    pub async fn create_user(&self, user: &str, password: &str, privileges: &[&str]) {
        let account = format!("{}@'%'", quote_string(user));
        let mut statements = vec![format!(
            "CREATE USER {account} IDENTIFIED BY {}",
            quote_string(password)
        )];
        if !privileges.is_empty() {
            statements.push(format!(
                "GRANT {} ON *.* TO {account}",
                privileges.join(", ")
            ));
        }
        let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
        self.exec(&statements).await;
    }

    /// What `SHOW GRANTS FOR 'user'@'%'` prints.
    pub async fn grants(&self, user: &str) -> Vec<String> {
        self.query(&format!("SHOW GRANTS FOR {}@'%'", quote_string(user)))
            .await
    }

    /// `SHOW MASTER STATUS`; None when the binary log is off.
    pub async fn master_status(&self) -> Option<MasterStatus> {
        let row: Option<mysql_async::Row> = self.query_first("SHOW MASTER STATUS").await;
        row.map(|row| MasterStatus {
            file: row.get("File").expect("SHOW MASTER STATUS has File"),
            position: row
                .get("Position")
                .expect("SHOW MASTER STATUS has Position"),
        })
    }

    /// `@@GLOBAL.gtid_binlog_pos`: the GTID of the last event binlogged ("" before any).
    pub async fn gtid_binlog_pos(&self) -> String {
        self.query_first("SELECT @@GLOBAL.gtid_binlog_pos")
            .await
            .unwrap_or_default()
    }

    /// A global variable's value, as root.
    pub async fn global(&self, variable: &str) -> String {
        self.query_first::<Option<String>>(&format!("SELECT CAST(@@GLOBAL.{variable} AS CHAR)"))
            .await
            .flatten()
            .unwrap_or_default()
    }

    /// A direct server at 127.0.0.1 and this server's port, logging in as `user`.
    pub fn server(&self, name: &str, user: &str, password: &str) -> proto::Server {
        proto::Server {
            name: name.to_owned(),
            host: "127.0.0.1".to_owned(),
            port: i32::from(self.port),
            mysql_user: user.to_owned(),
            mysql_password: password.to_owned(),
            connection_method: ConnectionMethod::Direct as i32,
            ..Default::default()
        }
    }

    /// Kills the server now (the directory goes on drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("DBTRAIL_TEST_KEEP_MARIADB").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping the MariaDB directory {}", dir.keep().display());
            }
        } else if std::thread::panicking() {
            eprintln!("MariaDB on port {} logged:\n{}", self.port, self.log());
        }
    }
}

/// Starts mariadbd with `args`, logging to `error_log`, as the mysql account when root, killed
/// when the test's thread dies.
fn spawn(args: &[String], error_log: &Path) -> Child {
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(error_log)
        .expect("the MariaDB log file");
    chown_to_mysql(error_log);
    let mut command = Command::new(MARIADBD);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("clone the log file"))
        .stderr(log_file);
    let account = mysql_account();
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls. It drops root for the mysql account first (mariadbd's
    // own --user would clear the parent-death signal, which a credential change resets), then
    // asks the kernel to kill the server when the test's thread dies.
    unsafe {
        let parent = libc::getpid();
        command.pre_exec(move || {
            if let Some((uid, gid)) = account
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The test died before the signal was armed.
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command.spawn().unwrap_or_else(|error| {
        panic!("cannot start {MARIADBD} {args:?}: {error}. Install mariadb-server")
    })
}

/// A port free at the time of asking (bound to 127.0.0.1:0 and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
