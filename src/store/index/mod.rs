//! The change index (streaming.md §2, §4): every row change a stream captured, in a table
//! partitioned by day of indexing (retention drops whole partitions), each stream's checkpoint
//! beside it, and the gaps a lost position left; and each server's schema snapshots, in the
//! per-server tables of one versioned template. It may live in its own PostgreSQL
//! (`--index-database-url`), so the stream's fence is carried here too: a checkpoint row records
//! the epoch of the stream lease that last took it, and a write with an older epoch is refused.

pub mod archive;
mod cascade;
mod checkpoints;
mod copy;
mod events;
mod migrations;
mod partitions;
mod selection;
mod shards;
mod snapshots;
mod template;

pub use cascade::{Holding, MAX_EXAMINED_ROWS};
pub use checkpoints::{StreamCheckpoint, StreamGap, StreamPosition};
pub use copy::{COPY_CONNECTIONS, COPY_MIN_ROWS, CopyConnection};
pub use events::ChangePage;
pub use partitions::PartitionWidth;
pub use selection::{ChangeSelection, SelectionSummary};
pub use shards::IndexShards;
pub use snapshots::{SnapshotVersion, index_schema_name};
pub use template::{TEMPLATE, template_version};

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{Connection, Store, StoreError};
use crate::config::DatabaseConfig;

/// The handle to the change index: its own type, so a function that needs the index says so,
/// and the compiler tells it apart from the control plane's store.
#[derive(Clone)]
pub struct ChangeIndex {
    store: Store,
    /// The COPY connections (`copy`) that may still be opened.
    copy_permits: Arc<Semaphore>,
    /// Where closed partitions go (`archive`); none in tests that never archive.
    archive: Option<archive::Archive>,
}

impl ChangeIndex {
    /// Builds the index's own pool; connections are made lazily.
    pub fn connect(config: &DatabaseConfig) -> Result<ChangeIndex, StoreError> {
        Ok(ChangeIndex {
            store: Store::connect(config)?,
            copy_permits: copy::copy_permits(),
            archive: None,
        })
    }

    /// The index in the control plane's database, through one of its pools.
    pub fn sharing(store: Store) -> ChangeIndex {
        ChangeIndex {
            store,
            copy_permits: copy::copy_permits(),
            archive: None,
        }
    }

    /// The same index, its closed partitions archived to (and read from) `archive`.
    pub fn with_archive(self, archive: archive::Archive) -> ChangeIndex {
        ChangeIndex {
            archive: Some(archive),
            ..self
        }
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        self.store.connection().await
    }

    /// Applies the index's migrations and creates the partitions ahead (safe to run again, by
    /// several replicas at once).
    pub async fn prepare_change_index(&self, width: PartitionWidth) -> Result<(), StoreError> {
        self.migrate().await?;
        self.maintain_change_index(width).await
    }
}
