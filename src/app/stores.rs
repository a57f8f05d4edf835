//! The replica's connection pools: the control plane's database (created and migrated first),
//! and the change index's shards, each with a pool for the streams' writes and one for reads.

use crate::{
    config::{Config, DatabaseConfig},
    store::{self, ChangeIndex, IndexShards, Store, index::archive::Archive},
};

use super::{AppError, ENGINE_POOL_TIMEOUT};

/// The replica's connection pools, each sized for its work.
pub(super) struct Stores {
    /// Client calls: fail fast when the pool is exhausted.
    pub api: Store,
    /// The onboarding engine and the streams' leases: background work waits for a connection.
    pub engine: Store,
    /// The watch hubs' reads.
    pub watch: Store,
    /// The webhook deliveries' claims and outcomes, apart from the engine's lease renewals.
    pub webhooks: Store,
    /// The streams' writes to the change index: its own pools, so event volume never starves
    /// the engine's lease renewals.
    pub index: IndexShards,
    /// ListChangeEvents' reads of the change index.
    pub index_reader: IndexShards,
}

impl Stores {
    /// Migrates the database (creating it when missing) and the change index, and opens the
    /// pools.
    pub async fn open(config: &Config) -> Result<Stores, AppError> {
        let url = config.database.url();
        store::create_database_and_migrate(url)
            .await
            .map_err(|source| AppError::Database {
                url: store::connect::redacted(url),
                source,
            })?;
        let api = Store::connect(&config.database)?;
        let background = DatabaseConfig {
            pool_size: config.engine_pool_size,
            pool_timeout: config.database.pool_timeout.max(ENGINE_POOL_TIMEOUT),
            ..config.database.clone()
        };
        let engine = Store::connect(&background)?;
        let watch = Store::connect(&DatabaseConfig {
            pool_size: config.watch_pool_size,
            ..config.database.clone()
        })?;
        let webhooks = Store::connect(&DatabaseConfig {
            pool_size: crate::webhooks::POOL_SIZE,
            ..background.clone()
        })?;
        let (index, index_reader) = open_index(config, &api, &background).await?;
        // The audit log's partitions, before the first call or bootstrap writes into them.
        api.prepare_audit_log().await?;
        Ok(Stores {
            api,
            engine,
            watch,
            webhooks,
            index,
            index_reader,
        })
    }
}

/// The change index's shards: each `--index-database-url` (created when missing), or the
/// control plane's database; migrated, their partitions made, and their ids read.
async fn open_index(
    config: &Config,
    api: &Store,
    background: &DatabaseConfig,
) -> Result<(IndexShards, IndexShards), AppError> {
    let archive = Archive::from_config(config).map_err(AppError::Archive)?;
    let own = config.index_database_url.is_empty();
    let urls = match own {
        true => vec![config.database.url().to_owned()],
        false => config.index_database_url.clone(),
    };
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for url in urls {
        if url.trim().is_empty() {
            return Err(AppError::Index(
                "an --index-database-url value is empty; give each index database's URL once, \
                 separated by commas"
                    .into(),
            ));
        }
        if !own {
            store::create_database(&url).await?;
        }
        let pool = |config: &DatabaseConfig| DatabaseConfig {
            database_url: Some(url.clone()),
            ..config.clone()
        };
        let writer = ChangeIndex::connect(&pool(background))?.with_archive(archive.clone());
        writer
            .prepare_change_index(config.change_partition_width)
            .await?;
        let reader = match own {
            true => ChangeIndex::sharing(api.clone()),
            false => ChangeIndex::connect(&pool(&config.database))?,
        };
        writers.push(writer);
        readers.push(reader.with_archive(archive.clone()));
    }
    let index = IndexShards::open(writers, api.clone()).await;
    let reader = IndexShards::open(readers, api.clone()).await;
    Ok((
        index.map_err(AppError::Index)?,
        reader.map_err(AppError::Index)?,
    ))
}
