//! One run of the archive: every partition closed for longer than the hot retention is claimed
//! (a lease, so each is archived by one replica), its servers' events written as Parquet, read
//! back and verified, recorded in the manifest, and only then dropped; the archive's files past
//! their retention are deleted. A crash anywhere leaves the partition or verified files in the
//! manifest, and reads never count a row twice (`cold`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::TryStreamExt;
use object_store::buffered::BufWriter;
use parquet::{
    arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder, async_reader::ParquetObjectReader},
    basic::{Compression, ZstdLevel},
    file::properties::WriterProperties,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    Archive, ArchivedFile, Partition, columns,
    manifest::{Claimed, Dropped},
    object_path, unavailable,
};
use crate::{
    config::Config,
    store::{Connection, StoreError, index::ChangeIndex, index::events::EventRow},
};

/// Rows per record batch and per Parquet row group: the unit a read prunes by statistics and
/// holds in memory at once.
pub(super) const ROWS_PER_GROUP: usize = 8192;
/// How long a claim on a partition lasts unless renewed (a third of it apart) before another
/// replica may take it over: what a replica that died while archiving holds a partition up for.
const LEASE: Duration = Duration::from_secs(60);
/// Files deleted past retention per run.
const EXPIRED_PER_RUN: i64 = 1000;

/// Where the archive stops on purpose, for the crash tests (`DBTRAIL_ARCHIVE_FAILPOINT`): it
/// logs the point and waits there until the process is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    AfterUpload,
    AfterManifest,
}

impl Failpoint {
    pub fn parse(value: &str) -> Result<Failpoint, String> {
        match value {
            "after-upload" => Ok(Failpoint::AfterUpload),
            "after-manifest" => Ok(Failpoint::AfterManifest),
            other => Err(format!(
                "unknown archive failpoint {other:?}: after-upload or after-manifest"
            )),
        }
    }
}

/// What the archive keeps hot and how long it keeps files.
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    /// A partition is archived once it ended this long ago.
    pub hot_retention: Duration,
    /// Files of partitions that ended this long ago are deleted.
    pub archive_retention: Duration,
    /// Who claims partitions (this replica).
    pub holder: String,
    pub failpoint: Option<Failpoint>,
}

impl ArchiveSettings {
    /// The settings of `serve`'s flags, checked together; this replica holds its claims under
    /// its host name and a fresh id.
    pub fn from_config(config: &Config) -> Result<ArchiveSettings, String> {
        if config.archive_retention < config.hot_retention {
            return Err(format!(
                "--archive-retention ({}) is shorter than --hot-retention ({}): events would be deleted as they are archived; make it at least as long",
                humantime::format_duration(config.archive_retention),
                humantime::format_duration(config.hot_retention)
            ));
        }
        let failpoint = config.archive_failpoint.as_deref().map(Failpoint::parse);
        Ok(ArchiveSettings {
            hot_retention: config.hot_retention,
            archive_retention: config.archive_retention,
            holder: format!(
                "{}:{}",
                gethostname::gethostname().to_string_lossy(),
                Uuid::new_v4()
            ),
            failpoint: failpoint.transpose()?,
        })
    }
}

/// What one run did.
#[derive(Debug, Default)]
pub struct ArchiveRun {
    pub partitions: Vec<String>,
    pub rows: i64,
    pub bytes: i64,
    pub expired_files: usize,
}

/// A partition counts as closed this long after its end, so that a write whose transaction
/// began just before the end has committed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

impl ChangeIndex {
    /// Archives every partition due, then deletes the files past retention.
    pub async fn archive_due(&self, settings: &ArchiveSettings) -> Result<ArchiveRun, StoreError> {
        let Some(archive) = self.archive.clone() else {
            return Ok(ArchiveRun::default());
        };
        let mut run = ArchiveRun::default();
        let cutoff = cutoff(settings.hot_retention + CLOSE_GRACE);
        for partition in self.closed_partitions(cutoff).await? {
            self.archive_partition(&archive, &partition, settings, &mut run)
                .await?;
        }
        run.expired_files = self
            .delete_expired(&archive, settings.archive_retention)
            .await?;
        Ok(run)
    }

    /// Claims `partition` (unless another replica holds it) and archives it while the claim
    /// holds; gives the claim back after, with the failure if there was one.
    async fn archive_partition(
        &self,
        archive: &Archive,
        partition: &Partition,
        settings: &ArchiveSettings,
        run: &mut ArchiveRun,
    ) -> Result<(), StoreError> {
        let Some(claimed) = self
            .claim_partition(partition, &settings.holder, LEASE)
            .await?
        else {
            return Ok(());
        };
        let outcome = tokio::select! {
            outcome = self.archive_claimed(archive, &claimed, settings, run) => outcome,
            lost = self.keep_claim(&claimed) => Err(lost),
        };
        let failure = outcome.as_ref().err().map(ToString::to_string);
        self.release_partition(&claimed, failure.as_deref()).await?;
        outcome
    }

    /// Renews the claim on a partition a third of its lease apart, for as long as it is held;
    /// the error when it is not.
    async fn keep_claim(&self, claimed: &Claimed) -> StoreError {
        loop {
            tokio::time::sleep(LEASE / 3).await;
            match self.renew_claim(claimed, LEASE).await {
                Ok(true) => {}
                Ok(false) => return StoreError::Fenced,
                Err(error) => return error,
            }
        }
    }

    /// Archives a claimed partition (unless a crash left it archived) and drops it.
    async fn archive_claimed(
        &self,
        archive: &Archive,
        claimed: &Claimed,
        settings: &ArchiveSettings,
        run: &mut ArchiveRun,
    ) -> Result<(), StoreError> {
        let partition = &claimed.partition;
        let mut recorded = false;
        if partition.archived_at.is_none() {
            let mut files = Vec::new();
            for server in self.servers_in(partition).await? {
                files.push(self.archive_server(archive, partition, server).await?);
            }
            if !files.is_empty() {
                stop_at(settings.failpoint, Failpoint::AfterUpload).await;
            }
            self.record_archive(claimed, &files).await?;
            recorded = !files.is_empty();
            run.rows += files.iter().map(|file| file.row_count).sum::<i64>();
            run.bytes += files.iter().map(|file| file.bytes).sum::<i64>();
            metrics::counter!("dbtrail_archive_rows_total")
                .increment(files.iter().map(|file| file.row_count as u64).sum());
            metrics::counter!("dbtrail_archive_bytes_total")
                .increment(files.iter().map(|file| file.bytes as u64).sum());
        }
        if recorded {
            stop_at(settings.failpoint, Failpoint::AfterManifest).await;
        }
        match self.drop_archived(claimed).await? {
            Dropped::Dropped => run.partitions.push(partition.name.clone()),
            Dropped::Recount(paths) => {
                tracing::warn!(
                    partition = partition.name,
                    "a partition held rows its archive did not; archiving it again"
                );
                archive.delete(&paths).await?;
            }
        }
        Ok(())
    }

    /// Writes `server`'s events of `partition` as one file, reads it back and checks it.
    async fn archive_server(
        &self,
        archive: &Archive,
        partition: &Partition,
        server: Uuid,
    ) -> Result<ArchivedFile, StoreError> {
        let extent = self.extent(partition, server).await?;
        let path = super::file_path(server, partition.starts_at, (extent.first, extent.last));
        let written = self.write_file(archive, partition, server, &path).await?;
        let read = archive.read_back(&path).await?;
        if written != read || written.rows != extent.rows {
            return Err(StoreError::Archive(format!(
                "{path} did not read back as written ({} rows of {} written, {} read)",
                extent.rows, written.rows, read.rows
            )));
        }
        Ok(ArchivedFile {
            server_id: server,
            path,
            first_sequence: extent.first,
            last_sequence: extent.last,
            row_count: extent.rows,
            bytes: read.bytes,
            checksum: hex::encode(read.digest),
            first_committed_at: extent.first_committed,
            last_committed_at: extent.last_committed,
        })
    }

    /// `server`'s sequences, count and commit times in `partition`.
    async fn extent(&self, partition: &Partition, server: Uuid) -> Result<Extent, StoreError> {
        let mut connection = self.connection().await?;
        let query = format!(
            "SELECT min(sequence) AS first, max(sequence) AS last, count(*) AS rows, \
                 min(committed_at) AS first_committed, max(committed_at) AS last_committed \
             FROM {} WHERE server_id = $1",
            partition.table()
        );
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                unbounded_statements(connection).await?;
                Ok(diesel::sql_query(query)
                    .bind::<SqlUuid, _>(server)
                    .get_result(connection)
                    .await?)
            })
            .await
    }

    /// Streams `server`'s rows of `partition` in sequence order into a Parquet file at `path`,
    /// in one transaction whose statements may take as long as the upload.
    async fn write_file(
        &self,
        archive: &Archive,
        partition: &Partition,
        server: Uuid,
        path: &str,
    ) -> Result<Written, StoreError> {
        let mut connection = self.connection().await?;
        let (table, sink) = (
            partition.table(),
            BufWriter::new(archive.store.clone(), object_path(path)?),
        );
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                unbounded_statements(connection).await?;
                let rows = diesel::sql_query(format!(
                    "SELECT sequence, binlog_file, binlog_position, row_index, gtid, committed_at, \
                         schema_name, table_name, operation, primary_key, row_before, row_after, \
                         indexed_at \
                     FROM {table} WHERE server_id = $1 ORDER BY sequence"
                ))
                .bind::<SqlUuid, _>(server)
                .load_stream::<EventRow>(connection)
                .await?;
                write_rows(rows, sink, server).await
            })
            .await
    }

    /// Deletes the files of partitions that ended more than `retention` ago.
    async fn delete_expired(
        &self,
        archive: &Archive,
        retention: Duration,
    ) -> Result<usize, StoreError> {
        let files = self
            .expired_files(cutoff(retention), EXPIRED_PER_RUN)
            .await?;
        let paths: Vec<String> = files.into_iter().map(|file| file.path).collect();
        archive.delete(&paths).await?;
        self.forget_expired(&paths).await?;
        Ok(paths.len())
    }
}

/// Writes `rows` (one server's, in sequence order) to `sink` as Parquet, a row group at a time.
async fn write_rows(
    rows: impl futures_util::Stream<Item = Result<EventRow, diesel::result::Error>>,
    sink: BufWriter,
    server: Uuid,
) -> Result<Written, StoreError> {
    let mut rows = std::pin::pin!(rows);
    let mut writer = AsyncArrowWriter::try_new(sink, columns::SCHEMA.clone(), Some(properties()))
        .map_err(unavailable)?;
    let mut batch = columns::BatchBuilder::new(server.to_string());
    let mut written = Written::default();
    while let Some(row) = rows.try_next().await? {
        batch.push(&row);
        if batch.len() == ROWS_PER_GROUP {
            written.add(&mut writer, &batch.finish()?).await?;
        }
    }
    if batch.len() > 0 {
        written.add(&mut writer, &batch.finish()?).await?;
    }
    writer.close().await.map_err(unavailable)?;
    Ok(written)
}

/// Lifts the pool's statement timeout for the rest of a transaction: the archive reads and
/// counts whole partitions.
pub(super) async fn unbounded_statements(connection: &mut Connection) -> Result<(), StoreError> {
    diesel::sql_query("SET LOCAL statement_timeout = '1h'")
        .execute(connection)
        .await?;
    Ok(())
}

fn cutoff(age: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)
}

/// Waits here for ever when the failpoint is `point` (the test then kills the process).
async fn stop_at(failpoint: Option<Failpoint>, point: Failpoint) {
    if failpoint == Some(point) {
        tracing::warn!(?point, "the archive stops at its failpoint");
        std::future::pending::<()>().await;
    }
}

fn properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level 3")))
        .set_max_row_group_size(ROWS_PER_GROUP)
        .set_created_by("dbtrail-servers".into())
        .build()
}

/// A server's events in one partition, as PostgreSQL counts them.
#[derive(diesel::QueryableByName)]
struct Extent {
    #[diesel(sql_type = BigInt)]
    first: i64,
    #[diesel(sql_type = BigInt)]
    last: i64,
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = Timestamptz)]
    first_committed: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    last_committed: DateTime<Utc>,
}

/// What a file holds, counted as it is written or read: rows and their digest (bytes only
/// when read).
#[derive(Debug, Default)]
struct Written {
    rows: i64,
    digest: [u8; 32],
    hasher: Sha256,
    bytes: i64,
}

impl PartialEq for Written {
    fn eq(&self, other: &Written) -> bool {
        self.rows == other.rows && self.digest == other.digest
    }
}

impl Written {
    async fn add(
        &mut self,
        writer: &mut AsyncArrowWriter<BufWriter>,
        batch: &arrow_array::RecordBatch,
    ) -> Result<(), StoreError> {
        self.count(batch)?;
        writer.write(batch).await.map_err(unavailable)?;
        self.digest = self.hasher.clone().finalize().into();
        Ok(())
    }

    fn count(&mut self, batch: &arrow_array::RecordBatch) -> Result<(), StoreError> {
        self.rows += batch.num_rows() as i64;
        columns::digest_batch(batch, &mut self.hasher)
    }
}

impl Archive {
    /// Reads the file at `path` whole, counting its rows and their digest.
    async fn read_back(&self, path: &str) -> Result<Written, StoreError> {
        let location = object_path(path)?;
        let meta = self.store.head(&location).await.map_err(unavailable)?;
        let reader =
            ParquetObjectReader::new(self.store.clone(), location).with_file_size(meta.size);
        let mut batches = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(unavailable)?
            .with_batch_size(ROWS_PER_GROUP)
            .build()
            .map_err(unavailable)?;
        let mut read = Written {
            bytes: meta.size as i64,
            ..Written::default()
        };
        while let Some(batch) = batches.try_next().await.map_err(unavailable)? {
            read.count(&batch)?;
        }
        read.digest = read.hasher.clone().finalize().into();
        Ok(read)
    }

    /// Deletes the objects at `paths` (one already gone is no error).
    async fn delete(&self, paths: &[String]) -> Result<(), StoreError> {
        for path in paths {
            match self.store.delete(&object_path(path)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(unavailable(error)),
            }
        }
        Ok(())
    }
}
