//! A private OpenSSH server per test: the SSH jumphost of the ssh_tunnel tests.
//!
//! Each `Sshd` lives in a temporary directory of its own: a host key made with `ssh-keygen`, a
//! client key pair of the requested type, an `authorized_keys` file (with the client's public key
//! unless the test wants it refused) and an `sshd_config` that listens on a free port of
//! 127.0.0.1 only, allows public-key logins as `root` (the tests run as root) and TCP forwarding,
//! and nothing else. Debian's `/usr/sbin/sshd -D -e` runs in the foreground and logs to a file in
//! the directory. Drop kills the server and every session process it forked (SIGKILL) and deletes
//! the directory, on panic too (printing the log); if the test process itself dies, the kernel
//! kills the listener (PR_SET_PDEATHSIG).
//!
//! Nothing here skips: without `/usr/sbin/sshd` the tests fail and say so (scripts/test installs
//! openssh-server).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dbtrail_servers::proto;
use tokio::io::AsyncReadExt;

/// Debian's OpenSSH server (openssh-server). sshd re-executes itself, so the path is absolute.
pub const SSHD: &str = "/usr/sbin/sshd";
/// The key generator of openssh-client.
pub const SSH_KEYGEN: &str = "ssh-keygen";
/// The privilege separation directory sshd insists on.
const PRIVSEP_DIR: &str = "/run/sshd";
/// The SSH user of every test: the tests run as root, and only root may log in.
pub const SSH_USER: &str = "root";
/// How long a fresh sshd may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Start attempts when another process took the chosen port first.
const PORT_ATTEMPTS: usize = 5;

/// The type (and file format) of a key `ssh-keygen` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// Ed25519, OpenSSH format.
    Ed25519,
    /// RSA 2048, OpenSSH format.
    RsaOpenSsh,
    /// RSA 2048, PEM (PKCS#1, `-----BEGIN RSA PRIVATE KEY-----`).
    RsaPem,
    /// ECDSA P-256, OpenSSH format.
    Ecdsa,
    /// ECDSA P-256, PEM (SEC1, `-----BEGIN EC PRIVATE KEY-----`).
    EcdsaPem,
}

impl KeyType {
    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            KeyType::Ed25519 => &["-t", "ed25519"],
            KeyType::RsaOpenSsh => &["-t", "rsa", "-b", "2048"],
            KeyType::RsaPem => &["-t", "rsa", "-b", "2048", "-m", "PEM"],
            KeyType::Ecdsa => &["-t", "ecdsa", "-b", "256"],
            KeyType::EcdsaPem => &["-t", "ecdsa", "-b", "256", "-m", "PEM"],
        }
    }
}

/// A key pair `ssh-keygen` made, read back from its files.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The private key file's text (OpenSSH or PEM).
    pub private_key: String,
    /// The `authorized_keys` line.
    pub public_key: String,
    /// `SHA256:...`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
}

/// Runs `command` to completion, panicking with its output unless it succeeds; returns stdout.
fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {what} ({command:?}): {error}. The SSH tunnel tests need OpenSSH: \
                 install openssh-server and openssh-client (scripts/test does)"
            )
        });
    assert!(
        output.status.success(),
        "{what} failed with {}: {command:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `SHA256:` fingerprint of a public (or private) key file, from `ssh-keygen -lf` (its
/// second field).
pub fn fingerprint_of(path: &Path) -> String {
    let printed = run(
        Command::new(SSH_KEYGEN)
            .arg("-l")
            .arg("-E")
            .arg("sha256")
            .arg("-f")
            .arg(path),
        "ssh-keygen -lf",
    );
    let fingerprint = printed
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("ssh-keygen -lf {} printed {printed:?}", path.display()))
        .to_owned();
    assert!(
        fingerprint.starts_with("SHA256:"),
        "ssh-keygen -lf {} printed {printed:?}",
        path.display()
    );
    fingerprint
}

/// Makes a key pair of `key_type` at `path` (and `path.pub`), encrypted with `passphrase` when
/// it is not empty.
pub fn generate_key(path: &Path, key_type: KeyType, passphrase: &str) -> KeyPair {
    let _ = std::fs::remove_file(path);
    let public = path.with_extension("pub");
    let _ = std::fs::remove_file(&public);
    run(
        Command::new(SSH_KEYGEN)
            .args(key_type.keygen_args())
            .arg("-q")
            .arg("-N")
            .arg(passphrase)
            .arg("-C")
            .arg("dbtrail-test")
            .arg("-f")
            .arg(path),
        "ssh-keygen",
    );
    let private_key = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let public_key = std::fs::read_to_string(&public)
        .unwrap_or_else(|error| panic!("read {}: {error}", public.display()));
    KeyPair {
        private_key,
        public_key: public_key.trim().to_owned(),
        fingerprint: fingerprint_of(&public),
    }
}

/// A key pair made in a temporary directory that lives as long as the value.
pub struct TempKey {
    pub key: KeyPair,
    _dir: tempfile::TempDir,
}

impl TempKey {
    /// A fresh key pair of `key_type`, encrypted with `passphrase` unless it is empty.
    pub fn generate(key_type: KeyType, passphrase: &str) -> TempKey {
        let dir = tempfile::Builder::new()
            .prefix("dbtrail-key-")
            .tempdir()
            .expect("a temporary directory for a key");
        let key = generate_key(&dir.path().join("key"), key_type, passphrase);
        TempKey { key, _dir: dir }
    }
}

/// How the jumphost is set up.
#[derive(Clone, Debug)]
pub struct SshdOptions {
    /// The type of the client key the test logs in with.
    pub client_key: KeyType,
    /// The type of the host key the server presents.
    pub host_key: KeyType,
    /// Whether `authorized_keys` holds the client's public key (otherwise it holds another key's,
    /// so the client's is refused).
    pub authorize_client: bool,
}

impl Default for SshdOptions {
    fn default() -> Self {
        SshdOptions {
            client_key: KeyType::Ed25519,
            host_key: KeyType::Ed25519,
            authorize_client: true,
        }
    }
}

impl SshdOptions {
    /// With a client key of `key_type`.
    pub fn client_key(mut self, key_type: KeyType) -> Self {
        self.client_key = key_type;
        self
    }

    /// With a host key of `key_type`.
    pub fn host_key(mut self, key_type: KeyType) -> Self {
        self.host_key = key_type;
        self
    }

    /// With the client's public key left out of `authorized_keys`.
    pub fn refusing_the_client(mut self) -> Self {
        self.authorize_client = false;
        self
    }

    /// Starts a server with these options.
    pub async fn start(self) -> Sshd {
        Sshd::start_with(self).await
    }
}

/// A running private sshd on 127.0.0.1; killed and deleted on drop.
pub struct Sshd {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    pub options: SshdOptions,
    /// The key pair the test logs in with.
    pub client: KeyPair,
    /// The key pair whose public key `authorized_keys` holds: the client's, unless the server was
    /// started `refusing_the_client`.
    pub authorized: KeyPair,
    /// The host key the server presents now.
    pub host: KeyPair,
    child: Option<Child>,
    /// Declared last: deleted after the server is dead.
    dir: Option<tempfile::TempDir>,
}

impl Sshd {
    /// A jumphost accepting an Ed25519 client key, with an Ed25519 host key.
    pub async fn start() -> Sshd {
        Self::start_with(SshdOptions::default()).await
    }

    /// Options to start a variant from.
    pub fn options() -> SshdOptions {
        SshdOptions::default()
    }

    /// A jumphost with `options`.
    pub async fn start_with(options: SshdOptions) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("dbtrail-sshd-")
            .tempdir()
            .expect("a temporary directory for sshd");
        let host = generate_key(&dir.path().join("host_key"), options.host_key, "");
        let client = generate_key(&dir.path().join("client_key"), options.client_key, "");
        let authorized = if options.authorize_client {
            client.clone()
        } else {
            generate_key(&dir.path().join("other_key"), KeyType::Ed25519, "")
        };
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{}\n", authorized.public_key),
        )
        .expect("write authorized_keys");
        let mut sshd = Sshd {
            port: 0,
            options,
            client,
            authorized,
            host,
            child: None,
            dir: Some(dir),
        };
        sshd.launch().await;
        sshd
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the sshd directory").path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("sshd.log")
    }

    /// Everything the server logged so far (`-e`: the listener and every session).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The host key's `SHA256:` fingerprint, as `ssh-keygen -lf host_key.pub` prints it.
    pub fn host_key_fingerprint(&self) -> String {
        self.host.fingerprint.clone()
    }

    /// The jumphost settings a server registered through this sshd uses: 127.0.0.1, this port,
    /// user root, the client's private key, no pinned fingerprint.
    pub fn tunnel(&self) -> proto::SshTunnel {
        proto::SshTunnel {
            host: "127.0.0.1".to_owned(),
            port: i32::from(self.port),
            user: SSH_USER.to_owned(),
            private_key: self.client.private_key.clone(),
            ..Default::default()
        }
    }

    fn write_config(&self, port: u16) -> PathBuf {
        let dir = self.dir();
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {host_key}\n\
             AuthorizedKeysFile {authorized_keys}\n\
             PidFile {pid}\n\
             PermitRootLogin prohibit-password\n\
             AllowUsers {SSH_USER}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             AllowTcpForwarding yes\n\
             AllowAgentForwarding no\n\
             X11Forwarding no\n\
             PermitTTY no\n\
             PrintMotd no\n\
             UseDNS no\n\
             LogLevel VERBOSE\n",
            host_key = dir.join("host_key").display(),
            authorized_keys = dir.join("authorized_keys").display(),
            pid = dir.join("sshd.pid").display(),
        );
        let path = dir.join("sshd_config");
        std::fs::write(&path, config).expect("write sshd_config");
        path
    }

    /// Starts sshd on a free port (another one when the port was taken meanwhile) and waits until
    /// it answers with its banner.
    async fn launch(&mut self) {
        std::fs::create_dir_all(PRIVSEP_DIR)
            .unwrap_or_else(|error| panic!("create {PRIVSEP_DIR} for sshd: {error}"));
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = if self.port == 0 {
                super::free_port()
            } else {
                self.port
            };
            match self.try_launch(port).await {
                Ok(()) => return,
                Err(log) if log.contains("Address already in use") => {
                    last_log = log;
                    // A restart keeps its port unless someone else took it.
                    self.port = 0;
                }
                Err(log) => panic!("sshd exited before accepting connections:\n{log}"),
            }
        }
        panic!("sshd found no free port in {PORT_ATTEMPTS} attempts:\n{last_log}")
    }

    async fn try_launch(&mut self, port: u16) -> Result<(), String> {
        let config = self.write_config(port);
        // Validate the configuration first: a mistake here should say so, not time out.
        run(
            Command::new(SSHD).arg("-t").arg("-f").arg(&config),
            "sshd -t (configuration test)",
        );
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the sshd log file");
        let mut command = Command::new(SSHD);
        command
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log);
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // async-signal-safe system calls: the kernel kills sshd when the test's thread dies.
        unsafe {
            let parent = libc::getpid();
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot start {SSHD}: {error}. Install openssh-server (scripts/test does)")
        });
        self.child = Some(child);
        self.port = port;

        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("[{status}]\n{}", self.log()));
            }
            if banner(port)
                .await
                .is_some_and(|banner| banner.starts_with("SSH-2.0-OpenSSH"))
            {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                panic!(
                    "sshd did not accept connections on 127.0.0.1:{port} within \
                     {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The listener's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the listener and every session process it forked (SIGKILL); the port is free after.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            for pid in descendants(child.id()) {
                // SAFETY: kill(2) on a process sshd forked for this test.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every session process (SIGKILL), as a jumphost dropping its connections would; the
    /// listener stays up and accepts new ones.
    pub fn kill_sessions(&self) -> usize {
        let Some(listener) = self.pid() else {
            return 0;
        };
        let sessions = descendants(listener);
        for pid in &sessions {
            // SAFETY: kill(2) on a process sshd forked for this test.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
        sessions.len()
    }

    /// Restarts the server on the same port with a newly generated host key (of the same type);
    /// returns the new fingerprint.
    pub async fn restart_with_new_host_key(&mut self) -> String {
        self.kill();
        let key_type = self.options.host_key;
        self.host = generate_key(&self.dir().join("host_key"), key_type, "");
        self.launch().await;
        self.host_key_fingerprint()
    }

    /// How many TCP connections to this server are established, counted on the server's side
    /// (local port = the sshd port) in /proc/net/tcp, as `ss -tn state established '( sport = :P
    /// )'` would.
    pub fn established_connections(&self) -> usize {
        established_on(self.port)
    }

    /// How many session processes the listener has forked and not yet reaped (one per open
    /// connection, plus a short-lived one per refused or finished connection).
    pub fn session_processes(&self) -> usize {
        self.pid().map_or(0, |pid| children(pid).len())
    }

    /// How many times the log says a client logged in with a public key.
    pub fn accepted_logins(&self) -> usize {
        self.log().matches("Accepted publickey for").count()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("DBTRAIL_TEST_KEEP_SSHD").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping the sshd directory {}", dir.keep().display());
            }
        } else if std::thread::panicking() {
            eprintln!("sshd on port {} logged:\n{}", self.port, self.log());
        }
    }
}

/// The first line a server on 127.0.0.1:`port` sends within a second, if any.
async fn banner(port: u16) -> Option<String> {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    let mut stream = tokio::time::timeout(Duration::from_secs(1), connect)
        .await
        .ok()?
        .ok()?;
    let mut buffer = vec![0u8; 256];
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while !buffer[..read].contains(&b'\n') && read < buffer.len() {
        let left = deadline.checked_duration_since(Instant::now())?;
        let n = tokio::time::timeout(left, stream.read(&mut buffer[read..]))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        read += n;
    }
    Some(String::from_utf8_lossy(&buffer[..read]).trim().to_owned())
}

/// The server-side TCP connections established on 127.0.0.1:`port` (IPv4; the servers here listen
/// on 127.0.0.1 only).
pub fn established_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; st 01 is ESTABLISHED.
            fields.len() > 3 && fields[1] == local && fields[3] == "01"
        })
        .count()
}

/// The parent pid of every process, from /proc/PID/stat.
fn parents() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after
            // the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// The live (not zombie) children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    parents()
        .into_iter()
        .filter(|(child, ppid)| *ppid == pid && !is_zombie(*child))
        .map(|(child, _)| child)
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat[stat.rfind(')')? + 1..].to_owned();
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(true)
}

/// Every descendant of `pid`, children before grandchildren.
fn descendants(pid: u32) -> Vec<u32> {
    let all = parents();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (child, ppid) in &all {
            if *ppid == parent && !found.contains(child) {
                found.push(*child);
                frontier.push(*child);
            }
        }
    }
    found
}
