//! The integration-test harness, shared by every module of the test binary (`crate::common`).
//!
//! It owns: a fresh PostgreSQL database per test (copied from a template migrated once per
//! migrations version, coordinated across nextest's processes with an advisory lock), the service
//! started in process on port 0 (`TestApp`), the real binary started as a child process
//! (`ServiceProcess`, `run_cli`), a TCP proxy that can cut the service's path to PostgreSQL
//! (`TcpProxy`), polling helpers and assertions on `google.rpc` error details.
//!
//! Nothing here skips: when PostgreSQL is missing the tests fail and say so.

pub mod mariadb;
pub mod sshd;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use dbtrail_servers::auth::admin::Admin;
use dbtrail_servers::config::Config;
pub use dbtrail_servers::domain::target::DENIED;
pub use dbtrail_servers::onboarding::mysql::UNREACHABLE;
use dbtrail_servers::proto::servers_service_client::ServersServiceClient;
use dbtrail_servers::proto::{
    self, ConnectionMethod, OnboardingStatus, OnboardingStep, StepProgress, StepStatus,
    WatchOnboardingRequest,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;
use uuid::Uuid;

/// The PostgreSQL server the tests use, as a URL to its maintenance database.
pub const DEFAULT_ADMIN_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The agent outbound IP the test replicas are configured with (TEST-NET-3, never routed).
pub const AGENT_OUTBOUND_IP: &str = "203.0.113.7";
/// The ErrorInfo domain of every error the service returns.
pub const ERROR_DOMAIN: &str = "servers.dbtrail";
/// The gRPC health service name of ServersService.
pub const SERVERS_SERVICE: &str = "dbtrail.servers.v1.ServersService";
/// Every permission a key can carry.
pub const ALL_PERMISSIONS: [&str; 4] = [
    "servers:read",
    "servers:write",
    "servers:delete",
    "changes:read",
];

/// A real, throwaway Ed25519 key made for these tests only; it opens nothing anywhere.
pub const TEST_PRIVATE_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACAe4CMZtml0ab/DDY/jPpVMxEU2ElQnokYpfNU2kuL0xwAAAJgLHBg4CxwY
OAAAAAtzc2gtZWQyNTUxOQAAACAe4CMZtml0ab/DDY/jPpVMxEU2ElQnokYpfNU2kuL0xw
AAAEC0Tf6C0H5DBwWXznTL23nhXnzVFBbxIlHa5nSr20PlwB7gIxm2aXRpv8MNj+M+lUzE
RTYSVCeiRil81TaS4vTHAAAAFGRidHJhaWwtdGVzdC1maXh0dXJlAQ==
-----END OPENSSH PRIVATE KEY-----
";
/// A distinctive line of the private key's body, to look for in stored bytes and output.
pub const TEST_PRIVATE_KEY_BODY_LINE: &str =
    "AAAEC0Tf6C0H5DBwWXznTL23nhXnzVFBbxIlHa5nSr20PlwB7gIxm2aXRpv8MNj+M+lUzE";

// ------------------------------------------------------------------------------------------------
// Databases
// ------------------------------------------------------------------------------------------------

/// The advisory lock that serialises template creation across test processes ("dbtrail\0").
const TEMPLATE_LOCK_KEY: i64 = 0x6462_7472_6169_6c00;
/// Test databases left behind by a killed run are dropped once they are this old.
const STALE_TEST_DATABASE_AGE: Duration = Duration::from_secs(2 * 60 * 60);

/// The URL of the PostgreSQL maintenance database the harness administers test databases from.
pub fn admin_database_url() -> String {
    std::env::var("DBTRAIL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_ADMIN_DATABASE_URL.to_owned())
}

/// The URL of database `name` on the test PostgreSQL server.
pub fn database_url(name: &str) -> String {
    let admin = admin_database_url();
    let (server, query) = match admin.split_once('?') {
        Some((server, query)) => (server.to_owned(), format!("?{query}")),
        None => (admin.clone(), String::new()),
    };
    let prefix = server
        .rsplit_once('/')
        .map(|(prefix, _)| prefix.to_owned())
        .unwrap_or(server);
    format!("{prefix}/{name}{query}")
}

/// The same URL as `url` but with another host and port (to route through a `TcpProxy`).
pub fn with_host_port(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a database URL has a scheme");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let user_info = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{user_info}{}:{}/{path}", addr.ip(), addr.port())
}

/// Connects to database `url` with tokio_postgres, driving the connection on the current runtime.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot connect to PostgreSQL at {url}: {error}. The tests need a running \
                 PostgreSQL (scripts/test starts it)"
            )
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A hash of everything under `migrations/`, so that the template follows the migrations.
fn migrations_hash() -> String {
    fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                collect(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        let relative = file.strip_prefix(&root).expect("a file under migrations/");
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(&file).expect("a readable migration file"));
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

fn is_object_in_use(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
}

/// Runs `sql`, retrying while PostgreSQL says a database is still in use (a connection that
/// closed a moment ago may not have left yet).
async fn execute_retrying_in_use(client: &tokio_postgres::Client, sql: &str) {
    let mut attempt = 0;
    loop {
        match client.batch_execute(sql).await {
            Ok(()) => return,
            Err(error) if is_object_in_use(&error) && attempt < 100 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{sql}: {error:?}"),
        }
    }
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// The name of the migrated template database for the current migrations, created when missing.
async fn template_database() -> String {
    TEMPLATE
        .get_or_init(|| async {
            let template = format!("dbtrail_template_{}", migrations_hash());
            let client = pg_connect(&admin_database_url()).await;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK_KEY])
                .await
                .expect("pg_advisory_lock");
            drop_stale_test_databases(&client).await;
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
                .await
                .expect("look up the template database")
                .is_some();
            if !exists {
                // Built under another name and renamed when complete, so a run killed halfway
                // never leaves a half-migrated template behind.
                let building = format!("{template}_building");
                client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_identifier(&building)
                    ))
                    .await
                    .expect("drop a half-built template");
                dbtrail_servers::store::create_database_and_migrate(&database_url(&building))
                    .await
                    .unwrap_or_else(|error| {
                        panic!("create_database_and_migrate({building}): {error:?}")
                    });
                execute_retrying_in_use(
                    &client,
                    &format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        quote_identifier(&building),
                        quote_identifier(&template)
                    ),
                )
                .await;
            }
            client
                .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK_KEY])
                .await
                .expect("pg_advisory_unlock");
            template
        })
        .await
        .clone()
}

/// Drops the test databases that runs killed before their guards ran left behind.
async fn drop_stale_test_databases(client: &tokio_postgres::Client) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%\\_%'",
            &[],
        )
        .await
        .expect("list test databases");
    for row in rows {
        let name: String = row.get(0);
        let created = name
            .split('_')
            .nth(1)
            .and_then(|seconds| seconds.parse::<u64>().ok());
        if let Some(created) = created
            && now.saturating_sub(created) > STALE_TEST_DATABASE_AGE.as_secs()
        {
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_identifier(&name)
                ))
                .await;
        }
    }
}

/// A database of this test's own; dropped (connections and all) when the guard drops, on
/// failure too. Set `DBTRAIL_TEST_KEEP_DATABASES=1` to keep them for a post-mortem.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    fn unique_name() -> String {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs();
        format!("test_{seconds}_{}", Uuid::new_v4().simple())
    }

    /// A fresh, migrated database copied from the template.
    pub async fn create() -> TestDatabase {
        let template = template_database().await;
        let name = Self::unique_name();
        let client = pg_connect(&admin_database_url()).await;
        execute_retrying_in_use(
            &client,
            &format!(
                "CREATE DATABASE {} TEMPLATE {}",
                quote_identifier(&name),
                quote_identifier(&template)
            ),
        )
        .await;
        let url = database_url(&name);
        TestDatabase { name, url }
    }

    /// A name (and URL) for a database that does not exist yet, dropped like any other at the
    /// end: for tests of the service creating its own database.
    pub fn reserve() -> TestDatabase {
        let name = Self::unique_name();
        let url = database_url(&name);
        TestDatabase { name, url }
    }

    /// Whether the database exists.
    pub async fn exists(&self) -> bool {
        pg_connect(&admin_database_url())
            .await
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&self.name],
            )
            .await
            .expect("look up a database")
            .is_some()
    }

    /// A direct connection to this database, for assertions on what is stored.
    pub async fn connect(&self) -> tokio_postgres::Client {
        pg_connect(&self.url).await
    }

    /// The library's admin API on this database.
    pub async fn admin(&self) -> Admin {
        Admin::connect(&self.url)
            .await
            .unwrap_or_else(|error| panic!("Admin::connect({}): {error:?}", self.url))
    }

    /// Creates a tenant with a key carrying every permission.
    pub async fn create_tenant(&self, name: &str, server_limit: Option<i32>) -> Tenant {
        let admin = self.admin().await;
        let id = admin
            .create_tenant(name, server_limit)
            .await
            .unwrap_or_else(|error| panic!("create_tenant({name}): {error:?}"));
        let key = admin
            .create_key(name, &ALL_PERMISSIONS, Some("test"), None)
            .await
            .unwrap_or_else(|error| panic!("create_key({name}): {error:?}"));
        Tenant {
            name: name.to_owned(),
            id,
            key: key.secret,
        }
    }

    /// Creates a key of `tenant` with `permissions` and an optional lifetime.
    pub async fn create_key(
        &self,
        tenant: &str,
        permissions: &[&str],
        expires_in: Option<Duration>,
    ) -> dbtrail_servers::auth::admin::CreatedKey {
        self.admin()
            .await
            .create_key(tenant, permissions, Some("test"), expires_in)
            .await
            .unwrap_or_else(|error| panic!("create_key({tenant}, {permissions:?}): {error:?}"))
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, key_id: Uuid) {
        self.admin()
            .await
            .revoke_key(key_id)
            .await
            .unwrap_or_else(|error| panic!("revoke_key({key_id}): {error:?}"));
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("DBTRAIL_TEST_KEEP_DATABASES").is_some() {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let name = self.name.clone();
        // A fresh runtime on a fresh thread: Drop may run inside the test's runtime, or while it
        // unwinds from a panic.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime.block_on(async move {
                let (client, connection) =
                    tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls)
                        .await
                        .map_err(|error| error.to_string())?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_identifier(&name)
                    ))
                    .await
                    .map_err(|error| error.to_string())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop test database {}: {error}", self.name),
            Err(_) => eprintln!(
                "could not drop test database {}: thread panicked",
                self.name
            ),
        }
    }
}

/// A tenant and a key of it with every permission.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    pub id: Uuid,
    pub key: String,
}

// ------------------------------------------------------------------------------------------------
// Configuration shared by the in-process app and the binary
// ------------------------------------------------------------------------------------------------

/// How a replica under test is configured. The defaults keep the engine's timers short.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    pub agent_name: String,
    pub agent_capacity: u32,
    pub agent_outbound_ip: String,
    pub lease_ttl: String,
    pub sweep_interval: String,
    pub statement_timeout: String,
    pub pool_timeout: String,
    pub secrets_key: String,
    /// The database URL the service is given, when not the test database's own (a proxy's).
    pub database_url: Option<String>,
    pub extra_args: Vec<String>,
    /// Run every onboarding step. Off by default: the core steps (provisioning and
    /// awaiting_firewall) never open a connection, so tests of the API and the engine reach no
    /// host, and servers wait at waiting_for_agent.
    pub mysql_steps: bool,
    /// Let the agent connect to loopback targets (every fixture listens on 127.0.0.1).
    pub allow_loopback_targets: bool,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            agent_name: format!("agent-{}", &Uuid::new_v4().simple().to_string()[..8]),
            agent_capacity: 100,
            agent_outbound_ip: AGENT_OUTBOUND_IP.to_owned(),
            lease_ttl: "2s".to_owned(),
            sweep_interval: "500ms".to_owned(),
            statement_timeout: "2s".to_owned(),
            pool_timeout: "1s".to_owned(),
            secrets_key: TEST_SECRETS_KEY.clone(),
            database_url: None,
            extra_args: Vec::new(),
            mysql_steps: false,
            allow_loopback_targets: true,
        }
    }
}

impl ReplicaOptions {
    /// The `serve` flags for these options.
    pub fn serve_args(
        &self,
        database_url: &str,
        grpc_addr: &str,
        http_addr: &str,
        data_dir: &Path,
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "--database-url",
            self.database_url.as_deref().unwrap_or(database_url),
            "--grpc-addr",
            grpc_addr,
            "--http-addr",
            http_addr,
            "--secrets-key",
            &self.secrets_key,
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--agent-outbound-ip",
            &self.agent_outbound_ip,
            "--agent-name",
            &self.agent_name,
            "--agent-capacity",
            &self.agent_capacity.to_string(),
            "--lease-ttl",
            &self.lease_ttl,
            "--sweep-interval",
            &self.sweep_interval,
            "--statement-timeout",
            &self.statement_timeout,
            "--pool-timeout",
            &self.pool_timeout,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        if self.allow_loopback_targets {
            args.push("--allow-loopback-targets".to_owned());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A base64 secrets key of 32 random bytes.
pub fn random_secrets_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

// ------------------------------------------------------------------------------------------------
// gRPC clients
// ------------------------------------------------------------------------------------------------

/// Adds an `authorization` header, or none, to every call.
#[derive(Clone)]
pub struct Authorization(Option<MetadataValue<Ascii>>);

impl Interceptor for Authorization {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A ServersService client that sends a fixed authorization header.
pub type Client = ServersServiceClient<InterceptedService<Channel, Authorization>>;

/// A channel to a gRPC address.
pub async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connect to gRPC at {addr}: {error:?}"))
}

/// A client on `channel` sending `authorization` verbatim (or no header at all).
pub fn client_with_authorization(channel: Channel, authorization: Option<&str>) -> Client {
    let value = authorization.map(|value| {
        value
            .parse::<MetadataValue<Ascii>>()
            .expect("an ASCII authorization header")
    });
    ServersServiceClient::with_interceptor(channel, Authorization(value))
}

/// A client on `channel` authenticating with API key `key`.
pub fn client_with_key(channel: Channel, key: &str) -> Client {
    client_with_authorization(channel, Some(&format!("Bearer {key}")))
}

/// The gRPC health status of `service` ("" for the whole server).
pub async fn health(addr: SocketAddr, service: &str) -> Result<ServingStatus, Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

// ------------------------------------------------------------------------------------------------
// The service in process
// ------------------------------------------------------------------------------------------------

/// The service started in this process on port 0, on a database of its own (or shared with other
/// replicas), with a tenant and a key with every permission.
pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub tenant: Tenant,
    channel: Channel,
    running: Option<dbtrail_servers::app::RunningApp>,
    _data_dir: tempfile::TempDir,
    /// Declared last so that it drops after the service.
    pub db: Arc<TestDatabase>,
}

impl TestApp {
    /// A replica with default options on a fresh database, with tenant `tenant-a`.
    pub async fn start() -> TestApp {
        Self::start_with(ReplicaOptions::default()).await
    }

    /// A replica with `options` on a fresh database, with tenant `tenant-a`.
    pub async fn start_with(options: ReplicaOptions) -> TestApp {
        Self::start_with_limit(options, None).await
    }

    /// A replica with `options` on a fresh database, with tenant `tenant-a` limited to
    /// `server_limit` servers.
    pub async fn start_with_limit(options: ReplicaOptions, server_limit: Option<i32>) -> TestApp {
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", server_limit).await;
        Self::start_on(db, tenant, options).await
    }

    /// Another replica on this one's database, with another agent, for the same tenant.
    pub async fn replica(&self, options: ReplicaOptions) -> TestApp {
        Self::start_on(self.db.clone(), self.tenant.clone(), options).await
    }

    /// A replica on `db` whose default client authenticates as `tenant`.
    pub async fn start_on(
        db: Arc<TestDatabase>,
        tenant: Tenant,
        options: ReplicaOptions,
    ) -> TestApp {
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        let args = options.serve_args(&db.url, "127.0.0.1:0", "127.0.0.1:0", data_dir.path());
        let config = Config::parse_serve_args(args.clone())
            .unwrap_or_else(|error| panic!("Config::parse_serve_args({args:?}): {error}"));
        let steps = if options.mysql_steps {
            dbtrail_servers::onboarding::default_steps()
        } else {
            dbtrail_servers::onboarding::core_steps()
        };
        let running = dbtrail_servers::app::start_with_steps(config, steps)
            .await
            .unwrap_or_else(|error| panic!("app::start: {error:?}"));
        let grpc_addr = running.grpc_addr;
        let http_addr = running.http_addr;
        let channel = channel(grpc_addr).await;
        TestApp {
            grpc_addr,
            http_addr,
            tenant,
            channel,
            running: Some(running),
            _data_dir: data_dir,
            db,
        }
    }

    /// A client authenticating with the tenant's key (every permission).
    pub fn client(&self) -> Client {
        client_with_key(self.channel.clone(), &self.tenant.key)
    }

    /// A client authenticating with `key`.
    pub fn client_with_key(&self, key: &str) -> Client {
        client_with_key(self.channel.clone(), key)
    }

    /// A client sending `authorization` verbatim, or no authorization header.
    pub fn client_with_authorization(&self, authorization: Option<&str>) -> Client {
        client_with_authorization(self.channel.clone(), authorization)
    }

    /// Another tenant on the same database, with a key carrying every permission.
    pub async fn other_tenant(&self, name: &str) -> Tenant {
        self.db.create_tenant(name, None).await
    }

    /// A key of this app's tenant with exactly `permissions`.
    pub async fn key_with(&self, permissions: &[&str]) -> dbtrail_servers::auth::admin::CreatedKey {
        self.db
            .create_key(&self.tenant.name, permissions, None)
            .await
    }

    /// Stops the service and waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(15), running.shutdown())
                .await
                .expect("RunningApp::shutdown finishes within 15 s");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The real binary
// ------------------------------------------------------------------------------------------------

/// The secrets key of every replica this test process starts, so that replicas sharing a
/// database open each other's secrets.
static TEST_SECRETS_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(random_secrets_key);

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

// ------------------------------------------------------------------------------------------------
// A TCP proxy in front of PostgreSQL that a test can cut
// ------------------------------------------------------------------------------------------------

/// Forwards 127.0.0.1:port to an upstream address until `cut()`, which closes every open
/// connection and turns new ones away at once, or `black_hole()`, which keeps every connection
/// open and forwards nothing (a silent network death), until `restore()`.
pub struct TcpProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept_task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    cut: bool,
    /// Cancelled by `cut()`; every forwarded connection ends with it.
    connections: CancellationToken,
    /// Cancelled by `black_hole()`; forwarding stops, connections stay open.
    forwarding: CancellationToken,
}

impl TcpProxy {
    /// A proxy to the test PostgreSQL server.
    pub async fn to_postgres() -> TcpProxy {
        let admin = admin_database_url();
        let rest = admin
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(&admin);
        let authority = rest.split('/').next().unwrap_or(rest);
        let host_port = authority
            .rsplit_once('@')
            .map(|(_, hp)| hp)
            .unwrap_or(authority);
        let upstream = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        Self::start(upstream).await
    }

    /// A proxy to `upstream` ("host:port").
    pub async fn start(upstream: String) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(Mutex::new(ProxyState {
            cut: false,
            connections: CancellationToken::new(),
            forwarding: CancellationToken::new(),
        }));
        let accept_state = state.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let (token, stalled) = {
                    let state = accept_state.lock().expect("proxy lock");
                    if state.cut {
                        // Turned away: the connection closes at once.
                        drop(inbound);
                        continue;
                    }
                    (state.connections.clone(), state.forwarding.clone())
                };
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let mut inbound = inbound;
                    if stalled.is_cancelled() {
                        // Black-holed: accepted, and then nothing ever arrives.
                        token.cancelled().await;
                        return;
                    }
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = stalled.cancelled() => token.cancelled().await,
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                    drop(outbound);
                });
            }
        });
        TcpProxy {
            addr,
            state,
            accept_task,
        }
    }

    /// Closes every open connection and turns new ones away.
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy lock");
        state.cut = true;
        state.connections.cancel();
    }

    /// Stops forwarding without closing anything: open connections hang, new ones are accepted
    /// and hang too.
    pub fn black_hole(&self) {
        self.state.lock().expect("proxy lock").forwarding.cancel();
    }

    /// Forwards new connections again (black-holed ones are closed).
    pub fn restore(&self) {
        let mut state = self.state.lock().expect("proxy lock");
        state.cut = false;
        state.connections.cancel();
        state.connections = CancellationToken::new();
        state.forwarding = CancellationToken::new();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept_task.abort();
    }
}

// ------------------------------------------------------------------------------------------------
// Waiting
// ------------------------------------------------------------------------------------------------

/// Polls `probe` every 50 ms until it returns `Some`, and returns that; panics naming `what` and
/// the last value seen (from `describe`) when `timeout` passes first.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `condition` every 50 ms until it holds; panics naming `what` when `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = condition();
        async move { fut.await.then_some(()) }
    })
    .await
}

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// Asserts that `status` has `code` and an ErrorInfo with `reason` in the service's domain.
#[track_caller]
pub fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(
        status.code(),
        code,
        "expected {code:?}/{reason}, got {:?}: {:?} ({:?})",
        status.code(),
        status.message(),
        status.get_details_error_info()
    );
    let info = status.get_details_error_info().unwrap_or_else(|| {
        panic!(
            "expected an ErrorInfo with reason {reason}, got none: {:?} {:?}",
            status.code(),
            status.message()
        )
    });
    assert_eq!(
        info.reason,
        reason,
        "wrong ErrorInfo reason for {:?}: {:?}",
        status.code(),
        status.message()
    );
    assert_eq!(info.domain, ERROR_DOMAIN, "wrong ErrorInfo domain");
    assert!(
        !status.message().is_empty(),
        "the error has no message a person could act on"
    );
}

/// Unwraps the error of `result`, panicking with the success value if it succeeded.
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(result: Result<T, Status>) -> Status {
    match result {
        Ok(value) => panic!("expected an error, got success: {value:?}"),
        Err(status) => status,
    }
}

/// The field paths of the BadRequest detail of `status`, sorted.
#[track_caller]
pub fn bad_request_fields(status: &Status) -> Vec<String> {
    let bad_request = status.get_details_bad_request().unwrap_or_else(|| {
        panic!(
            "expected a BadRequest detail: {:?} {:?}",
            status.code(),
            status.message()
        )
    });
    let mut fields: Vec<String> = bad_request
        .field_violations
        .iter()
        .map(|violation| {
            assert!(
                !violation.description.is_empty(),
                "field violation of {} has no description",
                violation.field
            );
            violation.field.clone()
        })
        .collect();
    fields.sort();
    fields
}

/// Asserts INVALID_ARGUMENT / INVALID_ARGUMENT with a BadRequest naming exactly `expected`
/// (each expected path matches a violation of that field or of a field inside it, such as
/// `server.stream_options.tables[0]` for `server.stream_options.tables`).
#[track_caller]
pub fn assert_bad_request(status: &Status, expected: &[&str]) {
    assert_error(status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let fields = bad_request_fields(status);
    let matches = |field: &str, path: &str| {
        field == path
            || field.starts_with(&format!("{path}."))
            || field.starts_with(&format!("{path}["))
    };
    for path in expected {
        assert!(
            fields.iter().any(|field| matches(field, path)),
            "BadRequest lacks a violation of {path}: it lists {fields:?} ({:?})",
            status.message()
        );
    }
    for field in &fields {
        assert!(
            expected.iter().any(|path| matches(field, path)),
            "BadRequest lists {field}, which is not bad; expected only {expected:?}: {fields:?}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Servers and onboarding
// ------------------------------------------------------------------------------------------------

/// A valid direct server named `name`. Every host a test registers is on loopback (or
/// `localhost`, resolved from /etc/hosts): once the agent connects to servers, no test may send
/// traffic, DNS included, anywhere else.
pub fn direct_server(name: &str) -> proto::Server {
    proto::Server {
        name: name.to_owned(),
        host: "127.0.0.1".to_owned(),
        port: 3306,
        mysql_user: "bintrail".to_owned(),
        mysql_password: "s3cret-password".to_owned(),
        connection_method: ConnectionMethod::Direct as i32,
        ..Default::default()
    }
}

/// A valid ssh_tunnel server named `name`.
pub fn ssh_server(name: &str) -> proto::Server {
    proto::Server {
        connection_method: ConnectionMethod::SshTunnel as i32,
        ssh_tunnel: Some(proto::SshTunnel {
            host: "localhost".to_owned(),
            port: 22,
            user: "ec2-user".to_owned(),
            private_key: TEST_PRIVATE_KEY.to_owned(),
            ..Default::default()
        }),
        ..direct_server(name)
    }
}

/// Registers `server`, panicking on failure.
/// The Status a registration that must fail fails with.
pub async fn register_error(client: &mut Client, server: proto::Server) -> Status {
    expect_err(
        client
            .register_server(proto::RegisterServerRequest {
                server: Some(server),
                ..Default::default()
            })
            .await,
    )
}

pub async fn register(client: &mut Client, server: proto::Server) -> proto::Server {
    let name = server.name.clone();
    client
        .register_server(proto::RegisterServerRequest {
            server: Some(server),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("RegisterServer {name}: {status:?}"))
        .into_inner()
}

/// The onboarding status of `server_id`, panicking on failure.
pub async fn onboarding_status(client: &mut Client, server_id: &str) -> OnboardingStatus {
    client
        .get_onboarding_status(proto::GetOnboardingStatusRequest {
            server_id: server_id.to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("GetOnboardingStatus {server_id}: {status:?}"))
        .into_inner()
}

/// GetServer, panicking on failure.
pub async fn get_server(client: &mut Client, server_id: &str) -> proto::Server {
    client
        .get_server(proto::GetServerRequest {
            server_id: server_id.to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("GetServer {server_id}: {status:?}"))
        .into_inner()
}

/// The progress of `step` in `status`.
#[track_caller]
pub fn step(status: &OnboardingStatus, step: OnboardingStep) -> &StepProgress {
    status
        .steps
        .iter()
        .find(|progress| progress.name == step as i32)
        .unwrap_or_else(|| panic!("no {step:?} in {status:#?}"))
}

/// The six steps, in order.
pub const STEPS: [OnboardingStep; 6] = [
    OnboardingStep::Provisioning,
    OnboardingStep::AwaitingFirewall,
    OnboardingStep::WaitingForAgent,
    OnboardingStep::Initializing,
    OnboardingStep::Snapshotting,
    OnboardingStep::Streaming,
];

/// Asserts the status lists the six steps, in order.
#[track_caller]
pub fn assert_six_steps_in_order(status: &OnboardingStatus) {
    let names: Vec<i32> = status.steps.iter().map(|progress| progress.name).collect();
    let expected: Vec<i32> = STEPS.iter().map(|step| *step as i32).collect();
    assert_eq!(
        names, expected,
        "the steps are not the six in order: {status:#?}"
    );
}

/// The status of `step` in `status`.
#[track_caller]
pub fn step_status(status: &OnboardingStatus, which: OnboardingStep) -> StepStatus {
    StepStatus::try_from(step(status, which).status).expect("a known step status")
}

/// Whether onboarding waits at waiting_for_agent because no agent can run the MySQL steps yet.
/// Waits until the server waits at waiting_for_agent (where the core steps leave it).
pub async fn waiting_for_agent(client: &Client, server_id: &str) -> OnboardingStatus {
    wait_for_onboarding(
        client,
        server_id,
        "waiting_for_agent",
        Duration::from_secs(15),
        is_waiting_for_agent,
    )
    .await
}

pub fn is_waiting_for_agent(status: &OnboardingStatus) -> bool {
    status.current_step == Some(OnboardingStep::WaitingForAgent as i32)
        && status.steps.len() == 6
        && step_status(status, OnboardingStep::WaitingForAgent) == StepStatus::InProgress
        && step(status, OnboardingStep::WaitingForAgent)
            .message
            .contains("no agent can run")
}

/// Waits until an ssh_tunnel server waits at awaiting_firewall.
pub async fn awaiting_firewall(client: &Client, server_id: &str) -> OnboardingStatus {
    wait_for_onboarding(
        client,
        server_id,
        "awaiting_firewall",
        Duration::from_secs(15),
        is_awaiting_firewall,
    )
    .await
}

pub fn is_awaiting_firewall(status: &OnboardingStatus) -> bool {
    status.current_step == Some(OnboardingStep::AwaitingFirewall as i32)
        && status.steps.len() == 6
        && step_status(status, OnboardingStep::AwaitingFirewall) == StepStatus::InProgress
        && !step(status, OnboardingStep::AwaitingFirewall)
            .message
            .is_empty()
}

/// Whether provisioning and awaiting_firewall are behind the server (whatever the later steps
/// make of it).
pub fn is_past_firewall(status: &OnboardingStatus) -> bool {
    status.steps.len() == 6
        && step_status(status, OnboardingStep::Provisioning) == StepStatus::Completed
        && step_status(status, OnboardingStep::AwaitingFirewall) == StepStatus::Completed
}

/// Every revision of a server's onboarding status so far, replayed from revision 0.
pub async fn history(client: &Client, server_id: &str) -> Vec<OnboardingStatus> {
    let mut client = client.clone();
    let current = onboarding_status(&mut client, server_id).await.revision;
    let mut watch = open_watch(&mut client, server_id, Some(0), true)
        .await
        .expect("replay the history");
    watch
        .messages_until(Duration::from_secs(5), |message| {
            message.revision >= current
        })
        .await
}

/// One line per revision: the current step, and each step's status and message.
pub fn describe_history(history: &[OnboardingStatus]) -> String {
    let mut text = String::new();
    for status in history {
        text.push_str(&format!(
            "rev {} current {:?} ip {:?} status {:?}\n",
            status.revision,
            status
                .current_step
                .and_then(|step| OnboardingStep::try_from(step).ok()),
            status.agent_outbound_ip,
            proto::ServerStatus::try_from(status.server_status).ok()
        ));
        for progress in &status.steps {
            text.push_str(&format!(
                "    {:?} {:?} {:?} error {:?}\n",
                OnboardingStep::try_from(progress.name).ok(),
                StepStatus::try_from(progress.status).ok(),
                progress.message,
                progress.error
            ));
        }
    }
    text
}

/// Polls the onboarding status of `server_id` until `condition` holds, and returns it; on
/// timeout, panics naming `what` with the last status seen.
pub async fn wait_for_onboarding(
    client: &Client,
    server_id: &str,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&OnboardingStatus) -> bool,
) -> OnboardingStatus {
    let mut client = client.clone();
    let started = Instant::now();
    loop {
        let status = onboarding_status(&mut client, server_id).await;
        if condition(&status) {
            return status;
        }
        if started.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what} on server {server_id}; last status: {status:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens WatchOnboarding; the error of a refused watch may come from the call or as the first
/// message, and is returned either way.
pub async fn open_watch(
    client: &mut Client,
    server_id: &str,
    since_revision: Option<i64>,
    follow: bool,
) -> Result<Watch, Status> {
    let stream = client
        .watch_onboarding(WatchOnboardingRequest {
            server_id: server_id.to_owned(),
            since_revision,
            follow,
        })
        .await?
        .into_inner();
    Ok(Watch { stream })
}

/// The error a watch fails with, from the call or from its first message.
pub async fn watch_error(client: &mut Client, server_id: &str) -> Status {
    match open_watch(client, server_id, None, false).await {
        Err(status) => status,
        Ok(mut watch) => match watch.next(Duration::from_secs(5)).await {
            WatchEvent::Error(status) => status,
            other => panic!("expected the watch of {server_id} to fail, got {other:?}"),
        },
    }
}

/// An open WatchOnboarding stream.
pub struct Watch {
    pub stream: tonic::Streaming<OnboardingStatus>,
}

/// What a watch did next.
#[derive(Debug)]
pub enum WatchEvent {
    Message(OnboardingStatus),
    Error(Status),
    Ended,
    TimedOut,
}

impl Watch {
    /// The next event within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> WatchEvent {
        match tokio::time::timeout(timeout, self.stream.message()).await {
            Err(_) => WatchEvent::TimedOut,
            Ok(Ok(Some(message))) => WatchEvent::Message(message),
            Ok(Ok(None)) => WatchEvent::Ended,
            Ok(Err(status)) => WatchEvent::Error(status),
        }
    }

    /// The next message within `timeout`; panics on anything else.
    pub async fn message(&mut self, timeout: Duration) -> OnboardingStatus {
        match self.next(timeout).await {
            WatchEvent::Message(message) => message,
            other => panic!("expected a watch message within {timeout:?}, got {other:?}"),
        }
    }

    /// Messages until one satisfies `condition` (included), each within `timeout` of the previous.
    pub async fn messages_until(
        &mut self,
        timeout: Duration,
        condition: impl Fn(&OnboardingStatus) -> bool,
    ) -> Vec<OnboardingStatus> {
        let mut messages = Vec::new();
        loop {
            match self.next(timeout).await {
                WatchEvent::Message(message) => {
                    let done = condition(&message);
                    messages.push(message);
                    if done {
                        return messages;
                    }
                }
                other => panic!(
                    "the watch stopped before the awaited message ({other:?}); got so far: {messages:#?}"
                ),
            }
        }
    }
}

/// Asserts that the revisions of `messages` increase by exactly one each.
#[track_caller]
pub fn assert_consecutive_revisions(messages: &[OnboardingStatus]) {
    let revisions: Vec<i64> = messages.iter().map(|message| message.revision).collect();
    for pair in revisions.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "revisions are not consecutive (a gap or a duplicate): {revisions:?}"
        );
    }
}

/// Asserts that agent_outbound_ip is set exactly while current_step is awaiting_firewall.
#[track_caller]
pub fn assert_outbound_ip_invariant(status: &OnboardingStatus) {
    let awaiting = status.current_step == Some(OnboardingStep::AwaitingFirewall as i32);
    assert_eq!(
        status.agent_outbound_ip.is_some(),
        awaiting,
        "agent_outbound_ip must be set exactly while current_step is awaiting_firewall: {status:#?}"
    );
}

/// Asserts that a write's response and a later read give one timestamp the same value, to the
/// nanosecond (a client comparing them must not see the resource change).
#[track_caller]
pub fn assert_same_timestamp(
    what: &str,
    written: &Option<prost_types::Timestamp>,
    read: &Option<prost_types::Timestamp>,
) {
    assert_eq!(
        written, read,
        "{what}: the write's response and a later read disagree"
    );
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// Every row of every table of the test database, as text (bytea as hex), by table.
pub async fn dump_all_rows(db: &TestDatabase) -> BTreeMap<String, Vec<String>> {
    let client = db.connect().await;
    let tables = client
        .query(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
             FROM information_schema.tables
             WHERE table_type = 'BASE TABLE'
               AND table_schema NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .expect("list tables");
    let mut dump = BTreeMap::new();
    for table in tables {
        let table: String = table.get(0);
        let rows = client
            .query(&format!("SELECT t::text FROM {table} AS t"), &[])
            .await
            .unwrap_or_else(|error| panic!("read {table}: {error}"));
        dump.insert(
            table,
            rows.iter().map(|row| row.get::<_, String>(0)).collect(),
        );
    }
    dump
}

/// Records panics anywhere in this process (spawned tasks included) from now on.
pub fn record_panics() -> Arc<Mutex<Vec<String>>> {
    let panics = Arc::new(Mutex::new(Vec::new()));
    let sink = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        sink.lock()
            .map(|mut panics| panics.push(info.to_string()))
            .ok();
        previous(info);
    }));
    panics
}

// ------------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------------

/// A plain HTTP/1.1 GET: the status code and the raw body (possibly chunked).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on {addr} took over 10 s"))
        .unwrap_or_else(|error| panic!("GET {path} on {addr}: {error}"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
