//! The change index's bulk path: a batch written with `COPY change_events FROM STDIN (FORMAT
//! binary)`, in the same transaction as its checkpoint, fenced the same way (the checkpoint's
//! UPDATE, shared with the INSERT path, matches nothing for a stale epoch and nothing is
//! written). diesel does not speak COPY, so these connections are bare tokio-postgres clients
//! outside the pool: at most `COPY_CONNECTIONS` in a process, each held by one stream's writer
//! while it has bulk to write. A stream that finds none free writes through the pool.

use std::{error::Error as _, sync::Arc};

use futures_util::pin_mut;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{
    Client, Statement, Transaction, binary_copy::BinaryCopyInWriter, types::ToSql, types::Type,
};

use super::{ChangeIndex, StreamPosition};
use crate::{
    domain::{ServerId, change::RowChange},
    store::{StoreError, connect},
};

/// COPY connections a process holds at most (besides its pools).
pub const COPY_CONNECTIONS: usize = 4;
/// Batches smaller than this go through the pool's INSERT: a stream that keeps up writes small
/// batches and holds no connection of its own.
pub const COPY_MIN_ROWS: usize = 500;

/// Moves a stream's checkpoint past a batch of `$1` events, when the stream's lease still holds
/// its epoch (`$12`); returns the sequence of the batch's first event. The row's lock orders
/// concurrent writers.
pub(super) const CHECKPOINT_UPDATE: &str = "UPDATE stream_checkpoints SET \
     next_sequence = next_sequence + $1, binlog_file = $2, binlog_position = $3, skip_rows = $4, \
     gtid_set = $5, source_identity = $6, last_event_at = COALESCE($7, last_event_at), \
     statement_changes = statement_changes + $8, \
     statement_changes_since = COALESCE(statement_changes_since, $9), \
     last_statement_change = CASE WHEN $8 > 0 THEN $10 ELSE last_statement_change END, \
     recorded_at = now() \
     WHERE server_id = $11 AND epoch = $12 RETURNING next_sequence - $1 AS first";

const COPY_EVENTS: &str = "COPY change_events (server_id, sequence, binlog_file, \
     binlog_position, row_index, gtid, committed_at, schema_name, table_name, operation, \
     primary_key, row_before, row_after) FROM STDIN (FORMAT binary)";

const COPY_TYPES: [Type; 13] = [
    Type::UUID,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::INT4,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::JSONB,
    Type::JSONB,
];

/// The process's COPY connections that may still be opened.
pub(super) fn copy_permits() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(COPY_CONNECTIONS))
}

/// A COPY connection: one of the process's `COPY_CONNECTIONS`, until dropped.
pub struct CopyConnection {
    client: Client,
    checkpoint: Statement,
    _permit: OwnedSemaphorePermit,
}

/// A tokio-postgres error as the store's, with its causes.
fn unavailable(error: tokio_postgres::Error) -> StoreError {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    StoreError::Unavailable(message)
}

impl ChangeIndex {
    /// A COPY connection, when one of the process's is free (None when all are held).
    pub async fn copy_connection(&self) -> Result<Option<CopyConnection>, StoreError> {
        let Ok(permit) = self.copy_permits.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let client = connect::establish_client(self.store.database_url())
            .await
            .map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let timeout = self.store.statement_timeout.as_millis();
        client
            .batch_execute(&format!(
                "SET statement_timeout = {timeout}; \
                 SET idle_in_transaction_session_timeout = {}",
                timeout * 2
            ))
            .await
            .map_err(unavailable)?;
        let checkpoint = client
            .prepare(CHECKPOINT_UPDATE)
            .await
            .map_err(unavailable)?;
        Ok(Some(CopyConnection {
            client,
            checkpoint,
            _permit: permit,
        }))
    }

    /// `write_change_batch` through a COPY connection: the checkpoint moved and the events
    /// copied in one transaction, fenced by the stream lease's epoch. Returns the events stored
    /// so far in total. After an error other than `Fenced` the connection is to be dropped.
    pub async fn copy_change_batch(
        &self,
        connection: &mut CopyConnection,
        (server_id, epoch): (ServerId, i64),
        events: &[RowChange],
        position: &StreamPosition,
    ) -> Result<i64, StoreError> {
        let count = events.len() as i64;
        let transaction = connection.client.transaction().await.map_err(unavailable)?;
        let changes = &position.statement_changes;
        let first = transaction
            .query_opt(
                &connection.checkpoint,
                &[
                    &count,
                    &position.binlog_file,
                    &position.binlog_position,
                    &position.skip_rows,
                    &position.gtid_set,
                    &position.source_identity,
                    &position.last_event_at,
                    &changes.skipped,
                    &changes.since,
                    &changes.last_position,
                    &server_id.uuid(),
                    &epoch,
                ],
            )
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::Fenced)?
            .get::<_, i64>(0);
        copy_rows(&transaction, server_id, first, events).await?;
        transaction.commit().await.map_err(unavailable)?;
        Ok(first - 1 + count)
    }
}

/// COPYs `events` in, with sequences from `first`.
async fn copy_rows(
    transaction: &Transaction<'_>,
    server_id: ServerId,
    first: i64,
    events: &[RowChange],
) -> Result<(), StoreError> {
    let sink = transaction
        .copy_in(COPY_EVENTS)
        .await
        .map_err(unavailable)?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    let server = server_id.uuid();
    for (sequence, event) in (first..).zip(events) {
        let row: [&(dyn ToSql + Sync); 13] = [
            &server,
            &sequence,
            &event.binlog_file,
            &event.binlog_position,
            &event.row_index,
            &event.gtid,
            &event.committed_at,
            &event.schema,
            &event.table,
            &event.operation.as_str(),
            &event.primary_key,
            &event.before,
            &event.after,
        ];
        writer.as_mut().write(&row).await.map_err(unavailable)?;
    }
    writer.finish().await.map_err(unavailable)?;
    Ok(())
}
