//! PostgreSQL: the connection pool, migrations, and every SQL statement of the service. Nothing
//! outside this module talks to the database.

pub mod audit;
mod auth;
mod by_id;
pub mod connect;
mod engine;
mod explain;
pub mod index;
mod jsonb;
pub mod listener;
pub mod local;
mod packed_steps;
mod pages;
mod prepared;
mod rows;
pub mod schema;
mod servers;
mod streams;
mod webhooks;

use std::time::Duration;

use diesel::{ConnectionError, result::DatabaseErrorKind};
use diesel_async::{
    AsyncPgConnection, RunQueryDsl,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
        deadpool::{Object, Pool, PoolError},
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;

pub use crate::domain::stream::StatementChanges;
pub use audit::AuditCursor;
pub use auth::{ApiKeyRecord, KeySummary, NewApiKey, TenantSummary};
pub use engine::{Affinity, Claim, Fence, Lease};
pub use index::{
    ChangeIndex, ChangePage, ChangeSelection, IndexShards, SelectionSummary, SnapshotVersion,
    StreamCheckpoint, StreamGap, StreamPosition, TEMPLATE, index_schema_name, template_version,
};
pub use pages::PageBound;
pub use servers::{IdempotencyKey, ListPage, PageCursor, Scope};
pub use streams::{StreamCensus, StreamSpread};
pub use webhooks::{Attempt, DeliveryClaim, Finished, OutboxCensus, WebhookCursor};

use crate::{config::DatabaseConfig, domain::Refused};

/// The migrations in `migrations/`, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// NOTIFY channel: a server's onboarding status changed (payload `server_id:revision`).
pub const ONBOARDING_CHANNEL: &str = "dbtrail_onboarding";
/// NOTIFY channel: a server became runnable (payload `server_id`).
pub const RUNNABLE_CHANNEL: &str = "dbtrail_runnable";
/// NOTIFY channel: a tenant's servers changed (payload `tenant_id:revision`); sent by the
/// database's trigger on `servers` (migration 000011), which names it too.
pub const SERVERS_CHANNEL: &str = "dbtrail_servers";
/// NOTIFY channel: an API key was revoked (payload `key_id`).
pub const API_KEYS_CHANNEL: &str = "dbtrail_api_keys";
/// NOTIFY channel: webhook deliveries became due (no payload); sent by the database's trigger on
/// `servers` (migration 000013), which names it too, and by RedeliverWebhook.
pub const WEBHOOKS_CHANNEL: &str = "dbtrail_webhooks";

/// Why a store call failed: the store's faults only. What a business rule refuses is a
/// [`Refused`], which writes return beside these ([`WriteError`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("server not found")]
    NotFound,
    #[error("webhook not found")]
    WebhookNotFound,
    #[error("webhook delivery not found")]
    DeliveryNotFound,
    #[error("the runner's lease was taken over")]
    Fenced,
    #[error("{0} not found")]
    Missing(String),
    /// The history a watch asked for was compacted; it can resume after this revision.
    #[error("revisions up to {0} were compacted")]
    Compacted(i64),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(diesel::result::Error),
    /// The archive's object store failed, or a file in it is not what the manifest says.
    #[error("the change archive failed: {0}")]
    Archive(String),
    /// The server's events are in an index database (shard) this replica was not given: the
    /// one recorded, or, for a server that streamed before shards were recorded, the one that
    /// holds its checkpoint.
    #[error("{0}")]
    IndexShardMissing(String),
}

/// Why a write that a business rule may refuse did not happen: refused, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<diesel::result::Error> for WriteError {
    fn from(error: diesel::result::Error) -> WriteError {
        WriteError::Store(error.into())
    }
}

impl From<diesel::result::Error> for StoreError {
    fn from(error: diesel::result::Error) -> StoreError {
        use diesel::result::Error;
        match &error {
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
                StoreError::Unavailable(error.to_string())
            }
            Error::DatabaseError(_, info) if is_unavailable_message(info.message()) => {
                StoreError::Unavailable(error.to_string())
            }
            Error::NotFound => StoreError::NotFound,
            _ => StoreError::Database(error),
        }
    }
}

/// Errors that mean "the database cannot serve now", as opposed to a bad statement.
fn is_unavailable_message(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "statement timeout",
        "connection",
        "terminating",
        "shutting down",
        "the database system is",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> StoreError {
        StoreError::Unavailable(error.to_string())
    }
}

impl From<ConnectionError> for StoreError {
    fn from(error: ConnectionError) -> StoreError {
        StoreError::Unavailable(error.to_string())
    }
}

/// The shared handle to PostgreSQL.
#[derive(Clone)]
pub struct Store {
    pool: Pool<AsyncPgConnection>,
    database_url: String,
    /// statement_timeout of every connection (the pool's, and the change index's COPY ones).
    statement_timeout: Duration,
}

type Connection = Object<AsyncPgConnection>;

impl Store {
    /// Builds the pool; connections are made lazily, each with the statement timeout set.
    pub fn connect(config: &DatabaseConfig) -> Result<Store, StoreError> {
        let statement_timeout_ms = config.statement_timeout.as_millis();
        let connect_timeout = config.pool_timeout;
        let mut manager_config = ManagerConfig::default();
        manager_config.recycling_method = RecyclingMethod::Fast;
        manager_config.custom_setup = Box::new(move |url| {
            let url = url.to_owned();
            async move {
                let mut connection =
                    tokio::time::timeout(connect_timeout, connect::establish(&url))
                        .await
                        .map_err(|_| {
                            ConnectionError::BadConnection("connecting timed out".into())
                        })??;
                for setting in [
                    format!("SET statement_timeout = {statement_timeout_ms}"),
                    format!(
                        "SET idle_in_transaction_session_timeout = {}",
                        statement_timeout_ms * 2
                    ),
                ] {
                    diesel::sql_query(setting)
                        .execute(&mut connection)
                        .await
                        .map_err(ConnectionError::CouldntSetupConfiguration)?;
                }
                Ok(connection)
            }
            .boxed()
        });
        let manager = AsyncDieselConnectionManager::new_with_config(config.url(), manager_config);
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(config.pool_timeout))
            .create_timeout(Some(config.pool_timeout))
            .recycle_timeout(Some(config.pool_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        Ok(Store {
            pool,
            database_url: config.url().to_owned(),
            statement_timeout: config.statement_timeout,
        })
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// The URL the pool connects to (for the dedicated LISTEN connection).
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// A cheap round trip, for health checks: how full PostgreSQL's NOTIFY queue is (0 to 1;
    /// at 1 every transaction that notifies fails).
    pub async fn ping(&self) -> Result<f64, StoreError> {
        #[derive(diesel::QueryableByName)]
        struct Usage {
            #[diesel(sql_type = diesel::sql_types::Double)]
            usage: f64,
        }
        let mut connection = self.connection().await?;
        let usage: Usage = diesel::sql_query("SELECT pg_notification_queue_usage() AS usage")
            .get_result(&mut connection)
            .await?;
        Ok(usage.usage)
    }

    /// Pool usage: (connections open, connections idle, max size).
    pub fn pool_usage(&self) -> (usize, usize, usize) {
        let status = self.pool.status();
        (status.size, status.available, status.max_size)
    }
}

/// Splits `postgres://.../NAME?query` into the URL of the maintenance database (the same server,
/// user and parameters, database `postgres`) and NAME.
fn maintenance_url(database_url: &str) -> Result<(String, String), StoreError> {
    let invalid = || StoreError::Unavailable("invalid database URL (no database name)".into());
    let mut url = url::Url::parse(database_url).map_err(|_| invalid())?;
    let name = url.path().trim_start_matches('/').to_owned();
    if name.is_empty() || name.contains('/') {
        return Err(invalid());
    }
    url.set_path("/postgres");
    Ok((url.into(), name))
}

/// Creates the database when it does not exist, then applies pending migrations.
pub async fn create_database_and_migrate(database_url: &str) -> Result<(), StoreError> {
    create_database(database_url).await?;
    migrate(database_url).await
}

/// Whether the database `database_url` names exists (asked of the server's `postgres`
/// database), and its name.
pub async fn database_exists(database_url: &str) -> Result<(bool, String), StoreError> {
    let (maintenance, name) = maintenance_url(database_url)?;
    let mut connection = connect::establish(&maintenance).await?;
    #[derive(diesel::QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let exists: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<diesel::sql_types::Text, _>(&name)
            .get_result(&mut connection)
            .await?;
    Ok((exists.exists, name))
}

/// Creates the database when it does not exist (the change index's needs no migrations).
pub async fn create_database(database_url: &str) -> Result<(), StoreError> {
    let (exists, name) = database_exists(database_url).await?;
    let (maintenance, _) = maintenance_url(database_url)?;
    let mut connection = connect::establish(&maintenance).await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match diesel::sql_query(format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut connection)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another replica created it at the same moment.
            Err(diesel::result::Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {}
            Err(error) if error.to_string().contains("already exists") => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Applies pending migrations, serialised across replicas by an advisory lock.
pub async fn migrate(database_url: &str) -> Result<(), StoreError> {
    let connection = connect::establish(database_url).await?;
    tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        let mut connection: AsyncConnectionWrapper<AsyncPgConnection> =
            AsyncConnectionWrapper::from(connection);
        let advisory = |connection: &mut AsyncConnectionWrapper<AsyncPgConnection>, sql: &str| {
            diesel::RunQueryDsl::execute(diesel::sql_query(sql), connection)
        };
        advisory(&mut connection, "SELECT pg_advisory_lock(7310452)")?;
        let result = connection
            .run_pending_migrations(MIGRATIONS)
            .map(|applied| {
                for version in applied {
                    tracing::info!(%version, "applied migration");
                }
            })
            .map_err(|error| StoreError::Unavailable(format!("migration failed: {error}")));
        advisory(&mut connection, "SELECT pg_advisory_unlock(7310452)")?;
        result
    })
    .await
    .map_err(|error| StoreError::Unavailable(format!("migration task failed: {error}")))?
}

/// A duration as a PostgreSQL interval, for `now() + $1`.
fn interval(duration: Duration) -> diesel::pg::data_types::PgInterval {
    diesel::pg::data_types::PgInterval::from_microseconds(
        i64::try_from(duration.as_micros()).unwrap_or(i64::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_url_swaps_the_database_name() {
        assert_eq!(
            maintenance_url("postgres://postgres@127.0.0.1:5432/dbtrail").unwrap(),
            (
                "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
                "dbtrail".to_owned()
            )
        );
        assert_eq!(
            maintenance_url("postgres://u:p@h/db?sslmode=disable").unwrap(),
            (
                "postgres://u:p@h/postgres?sslmode=disable".to_owned(),
                "db".to_owned()
            )
        );
        assert_eq!(
            maintenance_url("postgres:///dbtrail?user=postgres&host=%2Fsrv%2Fpg").unwrap(),
            (
                "postgres:///postgres?user=postgres&host=%2Fsrv%2Fpg".to_owned(),
                "dbtrail".to_owned()
            )
        );
        assert!(maintenance_url("postgres://h").is_err());
        assert!(maintenance_url("not a url").is_err());
    }
}
