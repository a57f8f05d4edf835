//! The archive tier (docs/archive.md): closed time partitions of `change_events` written as
//! zstd Parquet through `object_store`, one file per server and partition under a Hive layout,
//! read back and verified against a manifest before the partition is dropped; and reads that
//! take the hot rows and the archived files together, in sequence order, each event once.

mod cold;
mod columns;
mod job;
mod manifest;
mod storage;

pub use cold::{
    ColdFilter, ColdRead, Order, Range, archive_cannot_add, cold_events, merge_hot_and_cold,
};
pub use job::{ArchiveRun, ArchiveSettings, Failpoint};
pub use manifest::{ArchivedFile, Partition};
pub use storage::ArchiveLocation;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::{ObjectStore, path::Path};
use uuid::Uuid;

use crate::{config::Config, store::StoreError};

/// The archive's store and where it is.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    location: ArchiveLocation,
}

impl Archive {
    /// Opens the archive at `location`.
    pub fn open(location: ArchiveLocation) -> Result<Archive, String> {
        Ok(Archive {
            store: location.open()?,
            location,
        })
    }

    /// The archive `--archive-url` names, or the directory `archive` under `--data-dir`.
    pub fn from_config(config: &Config) -> Result<Archive, String> {
        let location = match &config.archive_url {
            Some(url) => ArchiveLocation::parse(url)?,
            None => ArchiveLocation::Directory(config.data_dir.join("archive")),
        };
        Archive::open(location)
    }

    pub fn location(&self) -> &ArchiveLocation {
        &self.location
    }
}

/// Where the file of `server_id`'s events `first..=last` of the partition starting at `starts`
/// goes: `server_id=…/date=YYYY-MM-DD/hour=HH/events-<first>-<last>.parquet`.
pub fn file_path(server_id: Uuid, starts: DateTime<Utc>, (first, last): (i64, i64)) -> String {
    format!(
        "server_id={server_id}/date={}/hour={}/events-{first:020}-{last:020}.parquet",
        starts.format("%Y-%m-%d"),
        starts.format("%H"),
    )
}

fn object_path(path: &str) -> Result<Path, StoreError> {
    Path::parse(path).map_err(|error| StoreError::Archive(format!("path {path:?}: {error}")))
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Archive(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_go_under_a_hive_layout_by_server_date_and_hour() {
        let server = Uuid::nil();
        let starts = DateTime::parse_from_rfc3339("2026-12-05T14:30:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            file_path(server, starts, (1, 42)),
            "server_id=00000000-0000-0000-0000-000000000000/date=2026-12-05/hour=14/\
             events-00000000000000000001-00000000000000000042.parquet"
        );
    }
}
