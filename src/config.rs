//! The one typed configuration of `serve`, parsed once from flags with environment fallbacks.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, ValueEnum};

use crate::{
    domain::{partition::PartitionWidth, target::IpRange},
    tls::TlsFiles,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Settings of the database connection pool.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL (`sslmode` as libpq reads it); the database is created if missing and
    /// migrated on start. `local`: a private PostgreSQL under --data-dir, started and stopped
    /// with the service. Unset: postgres://postgres@127.0.0.1:5432/dbtrail when something
    /// answers there, else `local`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Maximum connections in the pool.
    #[arg(long, env = "DBTRAIL_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,

    /// How long a call waits for a pooled connection (or a new one) before failing UNAVAILABLE.
    #[arg(long, env = "DBTRAIL_POOL_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub pool_timeout: Duration,

    /// statement_timeout set on every connection.
    #[arg(long, env = "DBTRAIL_STATEMENT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub statement_timeout: Duration,
}

impl DatabaseConfig {
    /// The URL to connect to: the configured one, else the default address's.
    pub fn url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL)
    }
}

/// The URL used when none is configured and its login works (see `store::local`).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/dbtrail";

/// Everything `serve` needs.
#[derive(Debug, Clone, Parser)]
#[command(no_binary_name = true)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// gRPC listen address.
    #[arg(long, env = "DBTRAIL_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// HTTP listen address (REST, health, metrics).
    #[arg(long, env = "DBTRAIL_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Base64 of a 32-byte key that encrypts secrets at rest; generated into the data directory when absent.
    #[arg(long, env = "DBTRAIL_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,

    /// Older secrets keys (base64, comma-separated), still accepted for decryption during rotation.
    #[arg(
        long,
        env = "DBTRAIL_SECRETS_OLD_KEYS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub secrets_old_keys: Vec<String>,

    /// Directory for local state: the generated secrets key.
    #[arg(long, env = "DBTRAIL_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// The IP customers allow on their SSH jumphost; defaults to this replica's primary address.
    #[arg(long, env = "DBTRAIL_AGENT_OUTBOUND_IP")]
    pub agent_outbound_ip: Option<String>,

    /// The local address this replica's connections to SSH jumphosts leave from, for a host with
    /// several addresses of which customers allow one (--agent-outbound-ip).
    #[arg(long, env = "DBTRAIL_AGENT_SOURCE_ADDRESS")]
    pub agent_source_address: Option<std::net::IpAddr>,

    /// How long an agent may be silent before the active SSH-tunnel servers it streamed move to
    /// a live agent: they show that agent's outbound IP and wait for the firewall again, since
    /// their jumphosts allow the silent agent's IP only. Pending servers move after three missed
    /// heartbeats (three sweeps); a restart shorter than this keeps active servers where they are.
    #[arg(long, env = "DBTRAIL_AGENT_REPLACED_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub agent_replaced_after: Duration,

    /// Name of this replica's embedded agent; replicas with the same name share one agent row.
    #[arg(long, env = "DBTRAIL_AGENT_NAME")]
    pub agent_name: Option<String>,

    /// How many servers the embedded agent takes on.
    #[arg(long, env = "DBTRAIL_AGENT_CAPACITY", default_value_t = 1000)]
    pub agent_capacity: i32,

    /// Lifetime of an onboarding lease; a dead replica's servers are taken over after it.
    #[arg(long, env = "DBTRAIL_LEASE_TTL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,

    /// How often expired leases are swept up.
    #[arg(long, env = "DBTRAIL_SWEEP_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,

    /// Connections set apart for the onboarding engine, so onboarding load never starves API
    /// calls and watchers never starve the engine's lease renewals.
    #[arg(long, env = "DBTRAIL_ENGINE_POOL_SIZE", default_value_t = 8)]
    pub engine_pool_size: usize,

    /// Connections set apart for the watches (WatchOnboarding, WatchServers): opening streams,
    /// reading each change once for all its watchers, replaying history. Opens of one server
    /// (or one tenant's fleet) share their reads.
    #[arg(long, env = "DBTRAIL_WATCH_POOL_SIZE", default_value_t = 4)]
    pub watch_pool_size: usize,

    /// How many servers one replica onboards at once.
    #[arg(long, env = "DBTRAIL_MAX_RUNNERS", default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub max_runners: usize,

    /// A tenant's share of those (default: a quarter of --max-runners): beyond it, a tenant takes
    /// a free runner only while a share's worth stays free for the others.
    #[arg(long, env = "DBTRAIL_MAX_RUNNERS_PER_TENANT", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub max_runners_per_tenant: Option<usize>,

    /// Time limit of one connection attempt to a customer's MySQL.
    #[arg(long, env = "DBTRAIL_MYSQL_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub mysql_connect_timeout: Duration,

    /// How long one request to a customer's MySQL (a query, the binlog request) may go
    /// unanswered before the step or stream counts it as a transient fault naming the request.
    #[arg(long, env = "DBTRAIL_MYSQL_QUERY_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub mysql_query_timeout: Duration,

    /// The deadline of one run of an onboarding step, whatever it waits for (a login, a query,
    /// the jumphost); a step past it is a transient fault, retried within the attempts below.
    #[arg(long, env = "DBTRAIL_STEP_TIMEOUT", default_value = "2m", value_parser = positive_duration)]
    pub step_timeout: Duration,

    /// The most tables one schema snapshot reads; a server with more that match its stream
    /// filters fails snapshotting with a message asking to list the schemas or tables to stream.
    #[arg(long, env = "DBTRAIL_SNAPSHOT_MAX_TABLES", default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub snapshot_max_tables: usize,

    /// The most columns one schema snapshot reads (see --snapshot-max-tables).
    #[arg(long, env = "DBTRAIL_SNAPSHOT_MAX_COLUMNS", default_value_t = 250_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub snapshot_max_columns: usize,

    /// Attempts an onboarding step makes through transient faults (unreachable, timeouts) before it fails.
    #[arg(long, env = "DBTRAIL_MYSQL_CONNECT_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub mysql_connect_attempts: i32,

    /// Let the agent connect anywhere, loopback and link-local included (local development and
    /// tests). Off, a tenant cannot point the agent at this host, its networks, instance
    /// metadata, or (for direct servers) a private range.
    #[arg(long, env = "DBTRAIL_ALLOW_LOOPBACK_TARGETS")]
    pub allow_loopback_targets: bool,

    /// More address ranges the agent never connects to (comma-separated CIDRs, e.g. the
    /// deployment's own VPCs), beside loopback, link-local, cloud metadata and this host's networks.
    #[arg(long, env = "DBTRAIL_DENY_TARGET_RANGES", value_delimiter = ',')]
    pub deny_target_ranges: Vec<IpRange>,

    /// Let direct servers be at private addresses (10/8, 172.16/12, 192.168/16, 100.64/10,
    /// fc00::/7); without it only vpn and ssh_tunnel servers may be.
    #[arg(long, env = "DBTRAIL_ALLOW_PRIVATE_DIRECT_TARGETS")]
    pub allow_private_direct_targets: bool,

    /// Calls running at once on this replica (watch streams count only while they open).
    #[arg(long, env = "DBTRAIL_MAX_CALLS_IN_FLIGHT", default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub max_calls_in_flight: usize,

    /// Calls that may wait for a slot; beyond, calls are shed with RESOURCE_EXHAUSTED / OVERLOADED.
    #[arg(long, env = "DBTRAIL_MAX_QUEUED_CALLS", default_value_t = 1024)]
    pub max_queued_calls: usize,

    /// Calls per second a tenant may make, with bursts of twice that (0: unlimited).
    #[arg(long, env = "DBTRAIL_TENANT_RATE_LIMIT", default_value_t = 2000)]
    pub tenant_rate_limit: u32,

    /// Calls per second one API key may make, with bursts of twice that (0: unlimited).
    #[arg(long, env = "DBTRAIL_KEY_RATE_LIMIT", default_value_t = 1000)]
    pub key_rate_limit: u32,

    /// Preflight checks (CheckServer, RegisterServer with validate_only) a tenant may start per
    /// minute on this replica, with bursts of ten seconds' worth (0: unlimited); each connects
    /// to the customer's server.
    #[arg(long, env = "DBTRAIL_CHECK_RATE_LIMIT", default_value_t = 60)]
    pub check_rate_limit: u32,

    /// The longest one run of the preflight checks may take (less when the call's deadline is
    /// shorter): what did not finish by then is reported failed or skipped.
    #[arg(long, env = "DBTRAIL_CHECK_TIMEOUT", default_value = "15s", value_parser = positive_duration)]
    pub check_timeout: Duration,

    /// Open watch streams (WatchOnboarding and WatchServers together) on this replica.
    #[arg(long, env = "DBTRAIL_MAX_WATCHES", default_value_t = 200_000)]
    pub max_watches: usize,

    /// Open watch streams (WatchOnboarding and WatchServers together) of one API key.
    #[arg(long, env = "DBTRAIL_MAX_WATCHES_PER_KEY", default_value_t = 10_000)]
    pub max_watches_per_key: usize,

    /// PEM certificate chain (leaf first) served on both listeners; with --tls-key, the
    /// listeners speak TLS only. Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "DBTRAIL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "DBTRAIL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates; when set, every client must present a certificate one of them signed
    /// (mTLS).
    #[arg(long, env = "DBTRAIL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// How long a new connection (on either listener) may take to finish its TLS handshake and
    /// send a request head (HTTP/1.1) or the preface and SETTINGS (HTTP/2) before it is closed.
    #[arg(long, alias = "http-header-read-timeout", env = "DBTRAIL_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_read_timeout: Duration,

    /// How long a connection may go without a request before it is ended (GOAWAY on HTTP/2).
    #[arg(long, env = "DBTRAIL_IDLE_TIMEOUT", default_value = "5m", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// Open connections per listener at most; more are closed at once.
    #[arg(long, env = "DBTRAIL_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,

    /// Open connections per listener from one client address at most; more are closed at once.
    #[arg(long, env = "DBTRAIL_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 1_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections_per_address: usize,

    /// Origins (comma-separated, like https://console.example.com, or *) whose pages may call
    /// the HTTP API from a browser (CORS); none by default.
    #[arg(long, env = "DBTRAIL_CORS_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_allowed_origins: Vec<String>,

    /// The deadline of a unary call that sends no shorter grpc-timeout.
    #[arg(long, env = "DBTRAIL_CALL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,

    /// Log format.
    #[arg(long, env = "DBTRAIL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// An OpenTelemetry collector's OTLP/gRPC address (e.g. http://127.0.0.1:4317) to send a
    /// span of every call, onboarding step and stream connection to. Unset: no traces.
    #[arg(long, env = "DBTRAIL_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// The heartbeat period each binlog stream asks of its source; a stream that hears nothing
    /// for three periods is presumed dead and reconnects.
    #[arg(long, env = "DBTRAIL_STREAM_HEARTBEAT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub stream_heartbeat: Duration,

    /// A stream writes its checkpoint at least this often (and after every batch).
    #[arg(long, env = "DBTRAIL_STREAM_CHECKPOINT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stream_checkpoint_interval: Duration,

    /// Onboarding history older than this is forgotten (each server's newest revision stays); a
    /// watch resuming from before it gets OUT_OF_RANGE / REVISION_COMPACTED.
    #[arg(long, env = "DBTRAIL_HISTORY_RETENTION", default_value = "7days", value_parser = positive_duration)]
    pub history_retention: Duration,

    /// The width of the change index's time partitions: the unit the archive takes (a whole
    /// number of minutes, 1m to 1day).
    #[arg(long, env = "DBTRAIL_CHANGE_PARTITION_WIDTH", default_value = "1h", value_parser = parse_partition_width)]
    pub change_partition_width: PartitionWidth,

    /// A partition of change events is archived (Parquet, --archive-url) and dropped from
    /// PostgreSQL once it ended this long ago; 0s archives each as soon as it closes.
    #[arg(long, env = "DBTRAIL_HOT_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub hot_retention: Duration,

    /// Where archived change events go: s3://bucket/prefix (AWS_* environment, AWS_ENDPOINT for
    /// S3-compatible stores), gs://bucket/prefix, az://container/prefix, or a directory.
    /// Default: the directory `archive` under --data-dir.
    #[arg(long, env = "DBTRAIL_ARCHIVE_URL")]
    pub archive_url: Option<String>,

    /// Archived change events older than this are deleted, a partition's files at a time (the
    /// whole life of a captured change: hot, then archived). At least --hot-retention.
    #[arg(long, alias = "change-retention", env = "DBTRAIL_ARCHIVE_RETENTION", default_value = "14days", value_parser = humantime::parse_duration)]
    pub archive_retention: Duration,

    /// Test only: the archive stops at this point (after-upload, after-manifest) until the
    /// process is killed.
    #[arg(long, env = "DBTRAIL_ARCHIVE_FAILPOINT", hide = true)]
    pub archive_failpoint: Option<String>,

    /// Audit events older than this are dropped, a month's partition at a time once all of it
    /// is older (so an event is kept at least this long). At least a day.
    #[arg(long, env = "DBTRAIL_AUDIT_RETENTION", default_value = "400days", value_parser = at_least_a_day)]
    pub audit_retention: Duration,

    /// The proxies in front of the service (comma-separated CIDRs or addresses, e.g. the load
    /// balancers' 10.0.0.0/8): from a peer in one of them, a call's client is the right-most
    /// X-Forwarded-For address that is not (for the audit log and the unknown-key limit). None
    /// by default: the connection's peer is the client.
    #[arg(long, env = "DBTRAIL_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_trusted_proxy)]
    pub trusted_proxies: Vec<IpRange>,

    /// The PostgreSQL databases of the change-event index (shards; comma-separated or the flag
    /// repeated); the control plane's database when unset. Each server's events live in one.
    #[arg(
        long,
        env = "DBTRAIL_INDEX_DATABASE_URL",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub index_database_url: Vec<String>,

    /// Most binlog streams one replica holds (beyond its fair share it holds none anyway).
    #[arg(long, env = "DBTRAIL_MAX_STREAMS", default_value_t = 1000)]
    pub max_streams: usize,

    /// Let webhook URLs be http:// (local development and tests); off, deliveries go over
    /// https only.
    #[arg(long, env = "DBTRAIL_ALLOW_HTTP_WEBHOOKS")]
    pub allow_http_webhooks: bool,

    /// The deadline of one webhook delivery attempt (resolve, connect, TLS, send, answer); an
    /// attempt past it is retried.
    #[arg(long, env = "DBTRAIL_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// The delay before a failed delivery's first retry, doubled per attempt (up to an hour),
    /// each a random share of it ("full jitter").
    #[arg(long, env = "DBTRAIL_WEBHOOK_RETRY_BASE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_retry_base: Duration,

    /// How long after its event (or a RedeliverWebhook) a delivery is retried; then it is dead.
    #[arg(long, env = "DBTRAIL_WEBHOOK_RETRY_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub webhook_retry_window: Duration,

    /// Webhook deliveries in flight at once on this replica, each to another webhook.
    #[arg(long, env = "DBTRAIL_MAX_WEBHOOK_DELIVERIES", default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub max_webhook_deliveries: usize,

    /// Delivered and dead webhook deliveries older than this are forgotten.
    #[arg(long, env = "DBTRAIL_WEBHOOK_RETENTION", default_value = "30days", value_parser = positive_duration)]
    pub webhook_retention: Duration,

    /// PEM CA certificates trusted for https webhook receivers besides the web PKI's roots (an
    /// internal CA).
    #[arg(long, env = "DBTRAIL_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,

    /// How long SIGTERM waits for calls and streams to finish.
    #[arg(long, env = "DBTRAIL_SHUTDOWN_GRACE", default_value = "8s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl Config {
    /// Parses the flags of `serve` (without the program or command name), with env fallbacks.
    pub fn parse_serve_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Config::try_parse_from(args)
    }

    /// The agent name: the flag, else the host name.
    pub fn agent_name(&self) -> String {
        self.agent_name
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    /// The listeners' TLS files, when TLS is configured.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            certificate: self.tls_cert.clone()?,
            private_key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

/// An OTLP/gRPC endpoint: an http or https URL with a host.
fn parse_otlp_endpoint(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("expected http://host:port or https://host:port".to_owned());
    }
    Ok(value.to_owned())
}

/// A duration of at least a second ("90s", "2m", "7days").
fn positive_duration(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|error| error.to_string())?;
    if duration < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(duration)
}

/// `--change-partition-width`: whole minutes from 1m to 1day.
fn parse_partition_width(value: &str) -> Result<PartitionWidth, String> {
    PartitionWidth::new(humantime::parse_duration(value).map_err(|error| error.to_string())?)
}

/// A duration of at least a day ("400days", "90d").
fn at_least_a_day(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|error| error.to_string())?;
    if duration < Duration::from_secs(24 * 3600) {
        return Err("must be at least 1day: the audit log answers who changed what".to_owned());
    }
    Ok(duration)
}

/// Reads one `--trusted-proxies` range: a CIDR (or a single address) of a proxy in front of the
/// service. A range of every address is refused: every client could then name its own address.
fn parse_trusted_proxy(text: &str) -> Result<IpRange, String> {
    let range: IpRange = text.parse()?;
    if range.prefix() == 0 {
        return Err(format!(
            "{text:?} trusts every address, so any client could choose the address recorded for \
             it; name the proxies' own ranges, like 10.0.0.0/8"
        ));
    }
    Ok(range)
}

/// Reads one origin as browsers send it (`https://console.example.com`, a port when not the
/// scheme's), or `*` for any origin.
fn parse_origin(text: &str) -> Result<String, String> {
    if text == "*" {
        return Ok(text.to_owned());
    }
    let url =
        url::Url::parse(text).map_err(|error| format!("{text:?} is not an origin: {error}"))?;
    let origin = url.origin().ascii_serialization();
    let is_web = matches!(url.scheme(), "http" | "https");
    if !is_web || origin != text.trim_end_matches('/') {
        return Err(format!(
            "{text:?} is not an origin: give scheme, host and port only, like https://console.example.com"
        ));
    }
    Ok(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_are_ranges_or_addresses_but_not_everything() {
        assert!(parse_trusted_proxy("10.0.0.0/8").is_ok());
        assert!(parse_trusted_proxy("192.0.2.10").is_ok());
        assert!(
            parse_trusted_proxy("::/0")
                .unwrap_err()
                .contains("trusts every address")
        );
        assert!(parse_trusted_proxy("0.0.0.0/0").is_err());
        assert!(parse_trusted_proxy("10.0.0.0/33").is_err());
        assert!(parse_trusted_proxy("proxy.local").is_err());
        assert!(at_least_a_day("12h").is_err());
        assert_eq!(
            at_least_a_day("400days"),
            Ok(Duration::from_secs(400 * 24 * 3600))
        );
    }

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert_eq!(
            parse_origin("https://console.example.com"),
            Ok("https://console.example.com".to_owned())
        );
        assert_eq!(
            parse_origin("http://localhost:3000/"),
            Ok("http://localhost:3000".to_owned())
        );
        assert_eq!(parse_origin("*"), Ok("*".to_owned()));
        for bad in [
            "console.example.com",
            "https://console.example.com/app",
            "ftp://example.com",
            "https://user@example.com",
            "https://example.com:443",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad} was taken");
        }
    }
}
