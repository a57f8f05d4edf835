//! The command line: `serve`, `migrate`, `tenants`, `keys`, `binlog`.

use std::{future::Future, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use dbtrail_servers::{
    app::{self, AppError},
    auth::admin::{Admin, AdminError},
    config::{Config, LogFormat},
    gateway::MessageJson,
    grpc::convert::change_event_to_proto,
    log_format,
    source::file::{self, FileError, Found},
    store::{self, StoreError, local},
    telemetry::{self, TelemetryError},
};
use uuid::Uuid;

/// mimalloc instead of glibc's allocator: 9% fewer instructions per GetServer (`scripts/bench
/// callgrind`). Built without transparent huge pages (Cargo.toml), which had taken the idle RSS
/// from 24 MB to 39 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Why a command failed: printed as `error: ...`, and the exit code is 1.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Database(#[from] local::LocalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// A binlog file that cannot be read: exit code 2.
    #[error(transparent)]
    BadBinlog(#[from] FileError),
    #[error("{0}")]
    Output(String),
    #[error(
        "database {0:?} does not exist: check --database-url (DATABASE_URL) for a typo, \
         or create and migrate it with `dbtrail-servers migrate`"
    )]
    NoDatabase(String),
}

#[derive(Parser)]
#[command(
    name = "dbtrail-servers",
    version,
    about = "Control plane for the MySQL/MariaDB servers dbtrail monitors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the administrative commands find the database.
#[derive(clap::Args)]
struct DatabaseArgs {
    /// PostgreSQL URL, or `local` for the private PostgreSQL under --data-dir. Unset: as `serve`
    /// finds it (postgres://postgres@127.0.0.1:5432/dbtrail when something answers there, else
    /// `local`).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,

    /// The data directory of `serve`, where its private PostgreSQL lives when it runs one.
    #[arg(long, env = "DBTRAIL_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

impl DatabaseArgs {
    /// Runs `work` on the database URL these arguments name or find; a private PostgreSQL started
    /// for it is stopped afterwards.
    async fn with_url<T, F, Fut>(&self, work: F) -> Result<T, CliError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<T, CliError>>,
    {
        let (url, local) = local::resolve(self.database_url.as_deref(), &self.data_dir).await?;
        let result = work(url).await;
        if let Some(local) = local {
            local.stop().await;
        }
        result
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (creates and migrates the database first).
    Serve(Box<Config>),
    /// Create the database if missing and apply pending migrations.
    Migrate(DatabaseArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read binlog files without their server.
    #[command(subcommand)]
    Binlog(BinlogCommand),
}

#[derive(Subcommand)]
enum BinlogCommand {
    /// Decodes binlog files into NDJSON change events on standard output, in the JSON form of
    /// ListChangeEvents, through the stream's own decoder. Statement-format DML, which carries no
    /// rows, is reported on standard error with its position. A file that cannot be read: one
    /// line naming it and the offset, exit code 2.
    Events {
        /// Binlog files, read in the order given.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only changes of these schemas (repeatable).
        #[arg(long = "schema")]
        schemas: Vec<String>,
        /// Only changes of these tables, as schema.table or table (repeatable).
        #[arg(long = "table")]
        tables: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Create a tenant.
    Create {
        name: String,
        /// Most servers the tenant may have (decommissioned ones do not count).
        #[arg(long)]
        server_limit: Option<i32>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints the key alone on standard output.
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: servers:read,servers:write,servers:delete,changes:read,audit:read,
        /// webhooks:read,webhooks:write.
        #[arg(long, value_delimiter = ',', required = true)]
        permissions: Vec<String>,
        /// A label for the key.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 30d or 12h.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List a tenant's keys (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke a key on every replica.
    Revoke {
        key_id: Uuid,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// Logs go to standard error through a writer thread, so a call does not wait for a write, and
/// the lines of a busy moment leave in one write. None is dropped: when the writer falls 128,000
/// lines behind, logging waits for it. With an OTLP endpoint, spans are exported too. Keep what
/// it returns: `Logging::finish` flushes what is left.
fn init_logging(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Logging, CliError> {
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("dbtrail-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    // Colour only for a person at a terminal: a file or a pipe gets plain text (and NO_COLOR
    // turns it off everywhere).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let fmt = match format {
        // One object a line, with the current span (it carries the request id).
        LogFormat::Json => fmt
            .fmt_fields(log_format::JsonMembers)
            .event_format(log_format::JsonLines)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let (telemetry, traces) = match otlp_endpoint {
        Some(endpoint) => {
            let instance = gethostname::gethostname().to_string_lossy().into_owned();
            let (telemetry, layer) = telemetry::export_to(endpoint, &instance)?;
            (Some(telemetry), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(traces)
        .init();
    Ok(Logging {
        _writer: guard,
        telemetry,
    })
}

/// The log writer and the span exporter, flushed when the command ends.
struct Logging {
    _writer: tracing_appender::non_blocking::WorkerGuard,
    telemetry: Option<telemetry::Telemetry>,
}

impl Logging {
    async fn finish(self) {
        if let Some(telemetry) = self.telemetry {
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
    }
}

/// The admin API on the database `database` names or finds, migrated first. A database that
/// does not exist is not created: a mistyped URL must not get a fresh, empty deployment.
async fn with_admin<T, F, Fut>(database: &DatabaseArgs, work: F) -> Result<T, CliError>
where
    F: FnOnce(Admin) -> Fut,
    Fut: Future<Output = Result<T, AdminError>>,
{
    database
        .with_url(|url| async move {
            let (exists, name) = store::database_exists(&url).await?;
            if !exists {
                return Err(CliError::NoDatabase(name));
            }
            store::migrate(&url).await?;
            let admin = Admin::connect(&url).await?;
            Ok(work(admin).await?)
        })
        .await
}

/// Serves until SIGTERM or Ctrl-C, on a private PostgreSQL when no database is configured and
/// none answers at the default address.
async fn serve(mut config: Config) -> Result<(), CliError> {
    raise_descriptor_limit();
    let (url, local) =
        local::resolve(config.database.database_url.as_deref(), &config.data_dir).await?;
    config.database.database_url = Some(url);
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let served = async {
        let running = app::start(config).await?;
        println!("Console: {}", console_url(scheme, running.http_addr));
        wait_for_signal().await;
        running.shutdown().await;
        Ok(())
    }
    .await;
    if let Some(local) = local {
        local.stop().await;
    }
    served
}

/// Where a browser on this host opens the console: a wildcard listen address is reached at
/// localhost.
fn console_url(scheme: &str, http_addr: std::net::SocketAddr) -> String {
    let host = if http_addr.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        match http_addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    format!("{scheme}://{host}:{}/console", http_addr.port())
}

/// Raises the open-file soft limit to the hard limit: every connection, binlog stream and
/// database connection holds a descriptor, and a low default (often 1,024) would refuse clients
/// long before memory runs short.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct they are given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur >= limit.rlim_max
    {
        return;
    }
    let before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        tracing::info!(
            from = before,
            to = limit.rlim_max,
            "raised the open-file limit to its hard limit"
        );
    } else {
        tracing::warn!(
            limit = before,
            "the open-file limit could not be raised to its hard limit"
        );
    }
}

async fn wait_for_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Serve(config) => {
            let logging = init_logging(config.log_format, config.otlp_endpoint.as_deref())?;
            let served = serve(*config).await;
            logging.finish().await;
            served
        }
        Command::Migrate(database) => {
            let _logging = init_logging(LogFormat::Text, None)?;
            database
                .with_url(|url| async move { Ok(store::create_database_and_migrate(&url).await?) })
                .await?;
            eprintln!("database is migrated");
            Ok(())
        }
        Command::Tenants(command) => tenants(command).await,
        Command::Keys(command) => keys(command).await,
        Command::Binlog(BinlogCommand::Events {
            files,
            schemas,
            tables,
        }) => {
            // A decoder panic is reported as the file's one error line (source::file), not as
            // a panic message.
            std::panic::set_hook(Box::new(|_| {}));
            binlog_events(&files, &schemas, &tables)
        }
    }
}

/// Whether `--schema`/`--table` want a table's changes (all when both are empty).
fn wanted(schemas: &[String], tables: &[String], schema: &str, table: &str) -> bool {
    let schema_listed = schemas.is_empty() || schemas.iter().any(|listed| listed == schema);
    let table_listed = tables.is_empty()
        || tables.iter().any(|listed| match listed.split_once('.') {
            Some((listed_schema, listed_table)) => listed_schema == schema && listed_table == table,
            None => listed == table,
        });
    schema_listed && table_listed
}

/// `binlog events`: every file in turn, each change a line as ListChangeEvents writes it.
fn binlog_events(files: &[PathBuf], schemas: &[String], tables: &[String]) -> Result<(), CliError> {
    use std::io::Write;
    let writer = MessageJson::new(
        dbtrail_servers::proto::FILE_DESCRIPTOR_SET,
        "dbtrail.servers.v1.ChangeEvent",
    )
    .map_err(CliError::Output)?;
    let wanted = |schema: &str, table: &str| wanted(schemas, tables, schema, table);
    let stdout = std::io::stdout();
    let mut output = std::io::BufWriter::new(stdout.lock());
    let mut failure = None;
    for path in files {
        // Events are named by the file's name, as the server that wrote it names it.
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        let input = std::fs::File::open(path).map_err(|error| FileError {
            file: path.display().to_string(),
            offset: 0,
            message: format!("cannot be opened: {error}"),
        })?;
        let mut found = |found: Found| {
            if failure.is_some() {
                return;
            }
            if let Err(error) = write_found(&writer, &mut output, found) {
                failure = Some(error);
            }
        };
        let read = file::read(&name, std::io::BufReader::new(input), &wanted, &mut found).map_err(
            |error| FileError {
                file: path.display().to_string(),
                ..error
            },
        );
        if let Some(error) = failure.take() {
            return Err(error);
        }
        output
            .flush()
            .map_err(|error| CliError::Output(format!("standard output: {error}")))?;
        read?;
    }
    Ok(())
}

/// One change as a line of JSON; a statement-format DML statement as a line on standard error.
fn write_found(
    writer: &MessageJson,
    output: &mut impl std::io::Write,
    found: Found,
) -> Result<(), CliError> {
    let change = match found {
        Found::Change(change) => change,
        Found::StatementDml { at, statement } => {
            let statement: String = statement.chars().take(200).collect();
            eprintln!(
                "{at}: statement-format DML, not captured as rows (binlog_format=STATEMENT or MIXED): {statement}"
            );
            return Ok(());
        }
    };
    let event = change_event_to_proto(&dbtrail_servers::domain::change::ChangeEvent {
        sequence: 0,
        change,
    });
    let json = writer.write(&event).map_err(CliError::Output)?;
    writeln!(output, "{json}")
        .map_err(|error| CliError::Output(format!("standard output: {error}")))
}

async fn tenants(command: TenantsCommand) -> Result<(), CliError> {
    match command {
        TenantsCommand::Create {
            name,
            server_limit,
            database,
        } => {
            let id = with_admin(&database, |admin| async move {
                admin.create_tenant(&name, server_limit).await
            })
            .await?;
            println!("{id}");
        }
        TenantsCommand::List { database } => {
            let tenants =
                with_admin(&database, |admin| async move { admin.list_tenants().await }).await?;
            for tenant in tenants {
                let limit = tenant
                    .server_limit
                    .map_or_else(|| "unlimited".to_owned(), |limit| limit.to_string());
                println!(
                    "{}\t{}\tserver limit {limit}\tcreated {}",
                    tenant.id,
                    tenant.name,
                    tenant.created_at.to_rfc3339()
                );
            }
        }
    }
    Ok(())
}

async fn keys(command: KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Create {
            tenant,
            permissions,
            name,
            expires_in,
            database,
        } => {
            let key = with_admin(&database, |admin| async move {
                let permissions: Vec<&str> = permissions.iter().map(String::as_str).collect();
                admin
                    .create_key(&tenant, &permissions, name.as_deref(), expires_in)
                    .await
                    .map(|key| (key, tenant))
            })
            .await?;
            let (key, tenant) = key;
            eprintln!("created key {} for tenant {tenant}", key.id);
            println!("{}", key.secret);
        }
        KeysCommand::List { tenant, database } => {
            let keys = with_admin(
                &database,
                |admin| async move { admin.list_keys(&tenant).await },
            )
            .await?;
            for key in keys {
                let state = match (key.revoked_at, key.expires_at) {
                    (Some(at), _) => format!("revoked {}", at.to_rfc3339()),
                    (None, Some(at)) => format!("expires {}", at.to_rfc3339()),
                    (None, None) => "active".to_owned(),
                };
                println!(
                    "{}\t{}…\t{}\t{}\t{state}",
                    key.id,
                    key.prefix,
                    key.name,
                    key.permissions.join(",")
                );
            }
        }
        KeysCommand::Revoke { key_id, database } => {
            with_admin(
                &database,
                |admin| async move { admin.revoke_key(key_id).await },
            )
            .await?;
            eprintln!("revoked key {key_id}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::BadBinlog(error)) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
