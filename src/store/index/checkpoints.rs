//! Each stream's checkpoint (where its next connection starts, fenced by the stream lease's
//! epoch) and the gaps a lost position left.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::ChangeIndex;
use crate::{
    domain::{
        ServerId,
        stream::{BinlogPoint, StatementChanges},
    },
    store::{Connection, StoreError},
};

/// Where a stream's next connection starts: what each checkpoint write records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub binlog_file: String,
    /// The start of the first transaction not wholly stored.
    pub binlog_position: i64,
    /// Rows of that transaction already stored (a large transaction is stored in parts).
    pub skip_rows: i64,
    pub gtid_set: Option<String>,
    /// `server_uuid` (MySQL) or `server_id`/GTID domain (MariaDB) of the source.
    pub source_identity: Option<String>,
    /// Source commit time of the newest stored event.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Statement-format DML met since the previous checkpoint (when writing), or in all (when
    /// read).
    pub statement_changes: StatementChanges,
    /// After a restart that reads part of the binlog again: the old checkpoint, before which
    /// every row is stored already (so none is stored twice). Kept by writes.
    pub replay_until: Option<BinlogPoint>,
}

/// A stream's checkpoint as stored: its position, the replica id it reads as, and how many
/// events the index holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCheckpoint {
    pub position: StreamPosition,
    pub replication_server_id: i64,
    /// Events stored so far; the next one gets this plus one as its sequence.
    pub events_indexed: i64,
}

#[derive(QueryableByName)]
struct CheckpointRow {
    #[diesel(sql_type = Text)]
    binlog_file: String,
    #[diesel(sql_type = BigInt)]
    binlog_position: i64,
    #[diesel(sql_type = BigInt)]
    skip_rows: i64,
    #[diesel(sql_type = Nullable<Text>)]
    gtid_set: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    source_identity: Option<String>,
    #[diesel(sql_type = BigInt)]
    replication_server_id: i64,
    #[diesel(sql_type = BigInt)]
    next_sequence: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_event_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    statement_changes: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    statement_changes_since: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    last_statement_change: String,
    #[diesel(sql_type = Nullable<Text>)]
    replay_until_file: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    replay_until_position: Option<i64>,
}

impl From<CheckpointRow> for StreamCheckpoint {
    fn from(row: CheckpointRow) -> StreamCheckpoint {
        StreamCheckpoint {
            position: StreamPosition {
                binlog_file: row.binlog_file,
                binlog_position: row.binlog_position,
                skip_rows: row.skip_rows,
                gtid_set: row.gtid_set,
                source_identity: row.source_identity,
                last_event_at: row.last_event_at,
                statement_changes: StatementChanges {
                    skipped: row.statement_changes,
                    since: row.statement_changes_since,
                    last_position: row.last_statement_change,
                },
                replay_until: row.replay_until_file.zip(row.replay_until_position).map(
                    |(file, position)| BinlogPoint {
                        file,
                        position: u64::try_from(position).unwrap_or_default(),
                    },
                ),
            },
            replication_server_id: row.replication_server_id,
            events_indexed: row.next_sequence - 1,
        }
    }
}

const CHECKPOINT_COLUMNS: &str = "binlog_file, binlog_position, skip_rows, gtid_set, \
     source_identity, replication_server_id, next_sequence, last_event_at, statement_changes, \
     statement_changes_since, last_statement_change, replay_until_file, replay_until_position";

/// A gap a lost position left: the binlog between the two positions was never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamGap {
    pub from_file: String,
    pub from_position: i64,
    pub to_file: String,
    pub to_position: i64,
    pub reason: String,
}

/// Records positions a stream skipped.
async fn record_gap(
    connection: &mut Connection,
    server_id: ServerId,
    gap: &StreamGap,
) -> Result<(), StoreError> {
    diesel::sql_query(
        "INSERT INTO stream_gaps (server_id, from_file, from_position, to_file, to_position, \
             reason) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind::<SqlUuid, _>(server_id.uuid())
    .bind::<Text, _>(&gap.from_file)
    .bind::<BigInt, _>(gap.from_position)
    .bind::<Text, _>(&gap.to_file)
    .bind::<BigInt, _>(gap.to_position)
    .bind::<Text, _>(&gap.reason)
    .execute(connection)
    .await?;
    Ok(())
}

impl ChangeIndex {
    /// Records where a new stream starts, unless the server already has a checkpoint (a
    /// re-onboarding keeps the stream's place). True when this one was recorded.
    pub async fn start_stream_at(
        &self,
        server_id: ServerId,
        checkpoint: &StreamCheckpoint,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let inserted = diesel::sql_query(
            "INSERT INTO stream_checkpoints (server_id, binlog_file, binlog_position, gtid_set, \
                 source_identity, replication_server_id) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (server_id) DO NOTHING",
        )
        .bind::<SqlUuid, _>(server_id.uuid())
        .bind::<Text, _>(&checkpoint.position.binlog_file)
        .bind::<BigInt, _>(checkpoint.position.binlog_position)
        .bind::<Nullable<Text>, _>(checkpoint.position.gtid_set.as_deref())
        .bind::<Nullable<Text>, _>(checkpoint.position.source_identity.as_deref())
        .bind::<BigInt, _>(checkpoint.replication_server_id)
        .execute(&mut connection)
        .await?;
        Ok(inserted == 1)
    }

    /// Fences the stream's holder off the checkpoint for RestartStream: writes with an epoch
    /// below `epoch` are refused from now on. The checkpoint as it stands then; None when the
    /// server has none.
    pub async fn fence_stream_checkpoint(
        &self,
        server_id: ServerId,
        epoch: i64,
    ) -> Result<Option<StreamCheckpoint>, StoreError> {
        let mut connection = self.connection().await?;
        let row: Option<CheckpointRow> = diesel::sql_query(format!(
            "UPDATE stream_checkpoints SET epoch = GREATEST(epoch, $2) WHERE server_id = $1 \
             RETURNING {CHECKPOINT_COLUMNS}"
        ))
        .bind::<SqlUuid, _>(server_id.uuid())
        .bind::<BigInt, _>(epoch)
        .get_result(&mut connection)
        .await
        .optional()?;
        Ok(row.map(StreamCheckpoint::from))
    }

    /// RestartStream moves a fenced checkpoint to `position` (keeping its epoch, so only a
    /// newer holder writes after it) and records a gap in the stream's gaps, in one transaction.
    /// Fenced when a newer holder took the checkpoint meanwhile.
    pub async fn restart_stream_at(
        &self,
        server_id: ServerId,
        epoch: i64,
        position: &StreamPosition,
        gap: Option<&StreamGap>,
    ) -> Result<(), StoreError> {
        self.move_checkpoint(server_id, Some(epoch), position, gap)
            .await
    }

    /// Moves a stream whose position was lost to `position` and records the gap, in one
    /// transaction.
    pub async fn restart_stream_after_gap(
        &self,
        server_id: ServerId,
        position: &StreamPosition,
        gap: &StreamGap,
    ) -> Result<(), StoreError> {
        self.move_checkpoint(server_id, None, position, Some(gap))
            .await
    }

    /// Moves the checkpoint to `position` (only under `epoch`, when one is given) and records
    /// `gap`, in one transaction; Fenced when the epoch does not match.
    async fn move_checkpoint(
        &self,
        server_id: ServerId,
        epoch: Option<i64>,
        position: &StreamPosition,
        gap: Option<&StreamGap>,
    ) -> Result<(), StoreError> {
        let position = position.clone();
        let gap = gap.cloned();
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                let replay = position.replay_until.as_ref();
                let moved = diesel::sql_query(
                    "UPDATE stream_checkpoints SET binlog_file = $3, binlog_position = $4, \
                         skip_rows = 0, gtid_set = $5, source_identity = $6, \
                         replay_until_file = $7, replay_until_position = $8, recorded_at = now() \
                     WHERE server_id = $1 AND ($2::bigint IS NULL OR epoch = $2)",
                )
                .bind::<SqlUuid, _>(server_id.uuid())
                .bind::<Nullable<BigInt>, _>(epoch)
                .bind::<Text, _>(&position.binlog_file)
                .bind::<BigInt, _>(position.binlog_position)
                .bind::<Nullable<Text>, _>(position.gtid_set.as_deref())
                .bind::<Nullable<Text>, _>(position.source_identity.as_deref())
                .bind::<Nullable<Text>, _>(replay.map(|point| point.file.as_str()))
                .bind::<Nullable<BigInt>, _>(
                    replay.map(|point| i64::try_from(point.position).unwrap_or(i64::MAX)),
                )
                .execute(connection)
                .await?;
                if moved == 0 && epoch.is_some() {
                    return Err(StoreError::Fenced);
                }
                if let Some(gap) = gap {
                    record_gap(connection, server_id, &gap).await?;
                }
                Ok(())
            })
            .await
    }

    /// The gaps recorded for a server, oldest first.
    pub async fn stream_gaps(&self, server_id: ServerId) -> Result<Vec<StreamGap>, StoreError> {
        #[derive(QueryableByName)]
        struct GapRow {
            #[diesel(sql_type = Text)]
            from_file: String,
            #[diesel(sql_type = BigInt)]
            from_position: i64,
            #[diesel(sql_type = Text)]
            to_file: String,
            #[diesel(sql_type = BigInt)]
            to_position: i64,
            #[diesel(sql_type = Text)]
            reason: String,
        }
        let mut connection = self.connection().await?;
        let rows: Vec<GapRow> = diesel::sql_query(
            "SELECT from_file, from_position, to_file, to_position, reason FROM stream_gaps \
             WHERE server_id = $1 ORDER BY id",
        )
        .bind::<SqlUuid, _>(server_id.uuid())
        .load(&mut connection)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| StreamGap {
                from_file: row.from_file,
                from_position: row.from_position,
                to_file: row.to_file,
                to_position: row.to_position,
                reason: row.reason,
            })
            .collect())
    }

    /// The stream's checkpoint, if it has one.
    pub async fn stream_checkpoint(
        &self,
        server_id: ServerId,
    ) -> Result<Option<StreamCheckpoint>, StoreError> {
        let mut connection = self.connection().await?;
        let row: Option<CheckpointRow> = diesel::sql_query(format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM stream_checkpoints WHERE server_id = $1"
        ))
        .bind::<SqlUuid, _>(server_id.uuid())
        .get_result(&mut connection)
        .await
        .optional()?;
        Ok(row.map(StreamCheckpoint::from))
    }

    /// A new holder of the stream lease (epoch) takes the checkpoint: from now on writes with
    /// an older epoch are refused. Fenced when a newer holder took it already; None when the
    /// server has no checkpoint.
    pub async fn take_stream_checkpoint(
        &self,
        server_id: ServerId,
        epoch: i64,
    ) -> Result<Option<StreamCheckpoint>, StoreError> {
        let mut connection = self.connection().await?;
        let taken: Option<CheckpointRow> = diesel::sql_query(format!(
            "UPDATE stream_checkpoints SET epoch = $2 WHERE server_id = $1 AND epoch <= $2 \
             RETURNING {CHECKPOINT_COLUMNS}"
        ))
        .bind::<SqlUuid, _>(server_id.uuid())
        .bind::<BigInt, _>(epoch)
        .get_result(&mut connection)
        .await
        .optional()?;
        if let Some(row) = taken {
            return Ok(Some(row.into()));
        }
        let exists: Option<i64> =
            diesel::dsl::sql::<BigInt>("SELECT epoch FROM stream_checkpoints WHERE server_id = ")
                .bind::<SqlUuid, _>(server_id.uuid())
                .get_result(&mut connection)
                .await
                .optional()?;
        match exists {
            Some(_) => Err(StoreError::Fenced),
            None => Ok(None),
        }
    }
}
