//! The archive's statements: the registry of partitions (which are closed, who archives one, its
//! lease), the manifest of archived files, and the drop of an archived partition, checked
//! against the manifest under a lock that keeps writers and readers out.

use chrono::{DateTime, Utc};
use diesel::{
    OptionalExtension, QueryableByName,
    sql_types::{BigInt, Interval, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{Order, Range};
use crate::store::{Connection, StoreError, index::ChangeIndex};

/// A partition of `change_events` as the registry holds it.
#[derive(Debug, Clone, QueryableByName)]
pub struct Partition {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Timestamptz)]
    pub starts_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub ends_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub archived_at: Option<DateTime<Utc>>,
}

impl Partition {
    /// The partition's table, quoted (its name comes from the registry, which only
    /// `change_events_partition_range` and the day partitions' migration write).
    pub fn table(&self) -> String {
        format!("\"{}\"", self.name.replace('"', "\"\""))
    }
}

/// A partition claimed for archiving: the lease's epoch fences what the claim writes.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub partition: Partition,
    pub epoch: i64,
}

/// One archived file as the manifest records it.
#[derive(Debug, Clone, QueryableByName)]
pub struct ArchivedFile {
    #[diesel(sql_type = SqlUuid)]
    pub server_id: Uuid,
    #[diesel(sql_type = Text)]
    pub path: String,
    #[diesel(sql_type = BigInt)]
    pub first_sequence: i64,
    #[diesel(sql_type = BigInt)]
    pub last_sequence: i64,
    #[diesel(sql_type = BigInt)]
    pub row_count: i64,
    #[diesel(sql_type = BigInt)]
    pub bytes: i64,
    #[diesel(sql_type = Text)]
    pub checksum: String,
    #[diesel(sql_type = Timestamptz)]
    pub first_committed_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub last_committed_at: DateTime<Utc>,
}

/// What the drop of an archived partition found.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The partition held what the manifest says, and is gone.
    Dropped,
    /// It held other rows than the manifest counts (a write that came after the archive read
    /// it): its manifest rows were removed, so it is archived again; the files' paths.
    Recount(Vec<String>),
}

#[derive(QueryableByName)]
struct Epoch {
    #[diesel(sql_type = BigInt)]
    lease_epoch: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct Server {
    #[diesel(sql_type = SqlUuid)]
    server_id: Uuid,
}

#[derive(QueryableByName)]
struct Path {
    #[diesel(sql_type = Text)]
    path: String,
}

#[derive(QueryableByName)]
struct Through {
    #[diesel(sql_type = Nullable<BigInt>)]
    sequence: Option<i64>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    committed_at: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct Oldest {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest: Option<DateTime<Utc>>,
}

const FILE_COLUMNS: &str = "server_id, path, first_sequence, last_sequence, row_count, bytes, \
     checksum, first_committed_at, last_committed_at";

impl ChangeIndex {
    /// The partitions that ended by `cutoff` and are not dropped yet, oldest first.
    pub async fn closed_partitions(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<Partition>, StoreError> {
        let mut connection = self.connection().await?;
        Ok(diesel::sql_query(
            "SELECT name, starts_at, ends_at, archived_at FROM change_partitions \
             WHERE dropped_at IS NULL AND ends_at <= $1 ORDER BY starts_at",
        )
        .bind::<Timestamptz, _>(cutoff)
        .load(&mut connection)
        .await?)
    }

    /// When the oldest partition that ended by `cutoff` and is still in PostgreSQL ended.
    pub async fn oldest_closed_partition(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut connection = self.connection().await?;
        let row: Oldest = diesel::sql_query(
            "SELECT min(ends_at) AS oldest FROM change_partitions \
             WHERE dropped_at IS NULL AND ends_at <= $1",
        )
        .bind::<Timestamptz, _>(cutoff)
        .get_result(&mut connection)
        .await?;
        Ok(row.oldest)
    }

    /// Takes the archive's lease on `partition` for `lease` unless another holder's lease on it
    /// runs; a new epoch fences the holder before.
    pub async fn claim_partition(
        &self,
        partition: &Partition,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        let mut connection = self.connection().await?;
        let claimed: Option<Epoch> = diesel::sql_query(
            "UPDATE change_partitions SET lease_epoch = lease_epoch + 1, lease_holder = $2, \
                 lease_until = now() + $3 \
             WHERE name = $1 AND dropped_at IS NULL \
                 AND (lease_until IS NULL OR lease_until < now() OR lease_holder = $2) \
             RETURNING lease_epoch",
        )
        .bind::<Text, _>(&partition.name)
        .bind::<Text, _>(holder)
        .bind::<Interval, _>(pg_interval(lease))
        .get_result(&mut connection)
        .await
        .optional()?;
        Ok(claimed.map(|row| Claimed {
            partition: partition.clone(),
            epoch: row.lease_epoch,
        }))
    }

    /// Extends a claim by `lease`; false when another holder took the partition since.
    pub async fn renew_claim(
        &self,
        claimed: &Claimed,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let renewed = diesel::sql_query(
            "UPDATE change_partitions SET lease_until = now() + $3 \
             WHERE name = $1 AND lease_epoch = $2",
        )
        .bind::<Text, _>(&claimed.partition.name)
        .bind::<BigInt, _>(claimed.epoch)
        .bind::<Interval, _>(pg_interval(lease))
        .execute(&mut connection)
        .await?;
        Ok(renewed == 1)
    }

    /// Gives a claimed partition's lease back (after its work, or a failure recorded with it).
    pub async fn release_partition(
        &self,
        claimed: &Claimed,
        failure: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        diesel::sql_query(
            "UPDATE change_partitions SET lease_holder = NULL, lease_until = NULL, \
                 failures = failures + CASE WHEN $3::text IS NULL THEN 0 ELSE 1 END, \
                 last_failure = COALESCE($3, last_failure) \
             WHERE name = $1 AND lease_epoch = $2",
        )
        .bind::<Text, _>(&claimed.partition.name)
        .bind::<BigInt, _>(claimed.epoch)
        .bind::<Nullable<Text>, _>(failure)
        .execute(&mut connection)
        .await?;
        Ok(())
    }

    /// The servers with events in `partition`.
    pub async fn servers_in(&self, partition: &Partition) -> Result<Vec<Uuid>, StoreError> {
        let mut connection = self.connection().await?;
        let query = format!(
            "SELECT DISTINCT server_id FROM {} ORDER BY server_id",
            partition.table()
        );
        let rows: Vec<Server> = connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                super::job::unbounded_statements(connection).await?;
                Ok(diesel::sql_query(query).load(connection).await?)
            })
            .await?;
        Ok(rows.into_iter().map(|row| row.server_id).collect())
    }

    /// Records a claimed partition's verified files in the manifest, and the partition as
    /// archived, in one transaction; `Fenced` when another holder took the lease since.
    pub async fn record_archive(
        &self,
        claimed: &Claimed,
        files: &[ArchivedFile],
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let (name, epoch) = (claimed.partition.name.clone(), claimed.epoch);
        let files = files.to_vec();
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                let updated = diesel::sql_query(
                    "UPDATE change_partitions SET archived_at = now() \
                     WHERE name = $1 AND lease_epoch = $2 AND dropped_at IS NULL",
                )
                .bind::<Text, _>(&name)
                .bind::<BigInt, _>(epoch)
                .execute(connection)
                .await?;
                if updated == 0 {
                    return Err(StoreError::Fenced);
                }
                for file in &files {
                    insert_file(connection, &name, file).await?;
                }
                Ok(())
            })
            .await
    }

    /// Drops an archived partition when it holds exactly the rows its files hold, under an
    /// exclusive lock (no write into it and no read of it meanwhile); otherwise forgets its
    /// files, so that it is archived again.
    pub async fn drop_archived(&self, claimed: &Claimed) -> Result<Dropped, StoreError> {
        let mut connection = self.connection().await?;
        let (partition, epoch) = (claimed.partition.clone(), claimed.epoch);
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                diesel::sql_query("SET LOCAL lock_timeout = '5s'")
                    .execute(connection)
                    .await?;
                super::job::unbounded_statements(connection).await?;
                fence(connection, &partition.name, epoch).await?;
                diesel::sql_query(format!(
                    "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                    partition.table()
                ))
                .execute(connection)
                .await?;
                let held = count(
                    connection,
                    &format!("SELECT count(*) AS count FROM {}", partition.table()),
                    None,
                )
                .await?;
                let archived = count(
                    connection,
                    "SELECT COALESCE(sum(row_count), 0)::bigint AS count FROM change_archive_files \
                     WHERE partition = $1",
                    Some(&partition.name),
                )
                .await?;
                if held != archived {
                    return forget_files(connection, &partition.name)
                        .await
                        .map(Dropped::Recount);
                }
                diesel::sql_query(format!("DROP TABLE {}", partition.table()))
                    .execute(connection)
                    .await?;
                diesel::sql_query(
                    "UPDATE change_partitions SET dropped_at = now(), lease_holder = NULL, \
                         lease_until = NULL WHERE name = $1",
                )
                .bind::<Text, _>(&partition.name)
                .execute(connection)
                .await?;
                Ok(Dropped::Dropped)
            })
            .await
    }

    /// The manifest's files of `server_id` that may hold events within `range`, in `order`.
    pub async fn archived_files(
        connection: &mut Connection,
        server_id: Uuid,
        range: Range,
        order: Order,
    ) -> Result<Vec<ArchivedFile>, StoreError> {
        let direction = match order {
            Order::Oldest => "ASC",
            Order::Newest => "DESC",
        };
        Ok(diesel::sql_query(format!(
            "SELECT {FILE_COLUMNS} FROM change_archive_files \
             WHERE server_id = $1 AND last_sequence > $2 AND first_sequence < $3 \
             ORDER BY first_sequence {direction}"
        ))
        .bind::<SqlUuid, _>(server_id)
        .bind::<BigInt, _>(range.after)
        .bind::<BigInt, _>(range.before)
        .load(connection)
        .await?)
    }

    /// The newest archived sequence of `server_id` and the latest commit time archived, when
    /// any of its events are archived.
    pub async fn archived_through(
        &self,
        server_id: Uuid,
    ) -> Result<Option<(i64, DateTime<Utc>)>, StoreError> {
        let mut connection = self.connection().await?;
        let row: Through = diesel::sql_query(
            "SELECT max(last_sequence) AS sequence, max(last_committed_at) AS committed_at \
             FROM change_archive_files WHERE server_id = $1",
        )
        .bind::<SqlUuid, _>(server_id)
        .get_result(&mut connection)
        .await?;
        Ok(row.sequence.zip(row.committed_at))
    }

    /// The files of partitions that ended before `cutoff`, oldest first, at most `limit`.
    pub async fn expired_files(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ArchivedFile>, StoreError> {
        let mut connection = self.connection().await?;
        Ok(diesel::sql_query(format!(
            "SELECT {FILE_COLUMNS} FROM change_archive_files f \
             JOIN change_partitions p ON p.name = f.partition \
             WHERE p.ends_at < $1 AND p.dropped_at IS NOT NULL \
             ORDER BY p.ends_at LIMIT $2"
        ))
        .bind::<Timestamptz, _>(cutoff)
        .bind::<BigInt, _>(limit)
        .load(&mut connection)
        .await?)
    }

    /// Forgets files whose objects were deleted, and the dropped partitions left with none.
    pub async fn forget_expired(&self, paths: &[String]) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        diesel::sql_query("DELETE FROM change_archive_files WHERE path = ANY($1)")
            .bind::<diesel::sql_types::Array<Text>, _>(paths)
            .execute(&mut connection)
            .await?;
        diesel::sql_query(
            "DELETE FROM change_partitions p WHERE dropped_at IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM change_archive_files f WHERE f.partition = p.name)",
        )
        .execute(&mut connection)
        .await?;
        Ok(())
    }
}

async fn insert_file(
    connection: &mut Connection,
    partition: &str,
    file: &ArchivedFile,
) -> Result<(), StoreError> {
    diesel::sql_query(
        "INSERT INTO change_archive_files (server_id, partition, path, first_sequence, \
             last_sequence, row_count, bytes, checksum, first_committed_at, last_committed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind::<SqlUuid, _>(file.server_id)
    .bind::<Text, _>(partition)
    .bind::<Text, _>(&file.path)
    .bind::<BigInt, _>(file.first_sequence)
    .bind::<BigInt, _>(file.last_sequence)
    .bind::<BigInt, _>(file.row_count)
    .bind::<BigInt, _>(file.bytes)
    .bind::<Text, _>(&file.checksum)
    .bind::<Timestamptz, _>(file.first_committed_at)
    .bind::<Timestamptz, _>(file.last_committed_at)
    .execute(connection)
    .await?;
    Ok(())
}

/// Locks the partition's registry row, `Fenced` unless the lease still holds `epoch`.
async fn fence(connection: &mut Connection, name: &str, epoch: i64) -> Result<(), StoreError> {
    let held: Option<Epoch> = diesel::sql_query(
        "SELECT lease_epoch FROM change_partitions WHERE name = $1 AND lease_epoch = $2 \
         AND dropped_at IS NULL AND archived_at IS NOT NULL FOR UPDATE",
    )
    .bind::<Text, _>(name)
    .bind::<BigInt, _>(epoch)
    .get_result(connection)
    .await
    .optional()?;
    held.map(drop).ok_or(StoreError::Fenced)
}

async fn count(
    connection: &mut Connection,
    query: &str,
    name: Option<&str>,
) -> Result<i64, StoreError> {
    let query = diesel::sql_query(query).into_boxed();
    let query = match name {
        Some(name) => query.bind::<Text, _>(name.to_owned()),
        None => query,
    };
    let row: Count = query.get_result(connection).await?;
    Ok(row.count)
}

/// Removes a partition's files from the manifest and marks it unarchived; their paths.
async fn forget_files(connection: &mut Connection, name: &str) -> Result<Vec<String>, StoreError> {
    let paths: Vec<Path> =
        diesel::sql_query("DELETE FROM change_archive_files WHERE partition = $1 RETURNING path")
            .bind::<Text, _>(name)
            .load(connection)
            .await?;
    diesel::sql_query("UPDATE change_partitions SET archived_at = NULL WHERE name = $1")
        .bind::<Text, _>(name)
        .execute(connection)
        .await?;
    Ok(paths.into_iter().map(|row| row.path).collect())
}

/// A duration as PostgreSQL's interval.
fn pg_interval(duration: std::time::Duration) -> diesel::data_types::PgInterval {
    diesel::data_types::PgInterval::from_microseconds(duration.as_micros() as i64)
}
