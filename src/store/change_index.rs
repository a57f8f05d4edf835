//! The change-event index (streaming.md §2, §4): every row change a stream captured, in a table
//! partitioned by day of indexing (retention drops whole partitions), each stream's checkpoint
//! beside it, and the gaps a lost position left. It may live in its own PostgreSQL
//! (`--index-database-url`), so the stream's fence is carried here too: a checkpoint row records
//! the epoch of the stream lease that last took it, and a write with an older epoch is refused.

use chrono::{DateTime, Days, NaiveDate, Utc};
use diesel::{
    pg::Pg,
    prelude::*,
    sql_types::{
        Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
    },
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{Store, StoreError};
use crate::domain::{
    ServerId,
    change::{
        ChangeCondition, ChangeEvent, ChangeField, ChangeFilter, ChangeOperation, Comparison,
        RowChange,
    },
    stream::{BinlogPoint, StatementChanges},
};

diesel::table! {
    change_events (server_id, sequence, indexed_at) {
        server_id -> Uuid,
        sequence -> Int8,
        binlog_file -> Text,
        binlog_position -> Int8,
        row_index -> Int4,
        gtid -> Text,
        committed_at -> Timestamptz,
        schema_name -> Text,
        table_name -> Text,
        operation -> Text,
        primary_key -> Nullable<Jsonb>,
        row_before -> Nullable<Jsonb>,
        row_after -> Nullable<Jsonb>,
        indexed_at -> Timestamptz,
    }
}

/// The tables of the index; safe to run again.
const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS stream_checkpoints (\
         server_id uuid PRIMARY KEY, \
         epoch bigint NOT NULL DEFAULT 0, \
         binlog_file text NOT NULL, \
         binlog_position bigint NOT NULL, \
         skip_rows bigint NOT NULL DEFAULT 0, \
         gtid_set text, \
         source_identity text, \
         replication_server_id bigint NOT NULL, \
         next_sequence bigint NOT NULL DEFAULT 1, \
         last_event_at timestamptz, \
         recorded_at timestamptz NOT NULL DEFAULT now())",
    // Statement-format DML met up to the checkpoint (streaming.md §6).
    "ALTER TABLE stream_checkpoints \
         ADD COLUMN IF NOT EXISTS statement_changes bigint NOT NULL DEFAULT 0, \
         ADD COLUMN IF NOT EXISTS statement_changes_since timestamptz, \
         ADD COLUMN IF NOT EXISTS last_statement_change text NOT NULL DEFAULT '', \
         ADD COLUMN IF NOT EXISTS replay_until_file text, \
         ADD COLUMN IF NOT EXISTS replay_until_position bigint",
    "CREATE TABLE IF NOT EXISTS stream_gaps (\
         id bigserial PRIMARY KEY, \
         server_id uuid NOT NULL, \
         from_file text NOT NULL, \
         from_position bigint NOT NULL, \
         to_file text NOT NULL, \
         to_position bigint NOT NULL, \
         reason text NOT NULL, \
         recorded_at timestamptz NOT NULL DEFAULT now())",
    "CREATE INDEX IF NOT EXISTS stream_gaps_server ON stream_gaps (server_id, id)",
    "CREATE TABLE IF NOT EXISTS change_events (\
         server_id uuid NOT NULL, \
         sequence bigint NOT NULL, \
         binlog_file text NOT NULL, \
         binlog_position bigint NOT NULL, \
         row_index integer NOT NULL, \
         gtid text NOT NULL DEFAULT '', \
         committed_at timestamptz NOT NULL, \
         schema_name text NOT NULL, \
         table_name text NOT NULL, \
         operation text NOT NULL CHECK (operation IN ('insert', 'update', 'delete')), \
         primary_key jsonb, \
         row_before jsonb, \
         row_after jsonb, \
         indexed_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (server_id, sequence, indexed_at)) PARTITION BY RANGE (indexed_at)",
    // ListChangeEvents filtered by table walks this index in binlog order.
    "CREATE INDEX IF NOT EXISTS change_events_by_table \
         ON change_events (server_id, schema_name, table_name, sequence)",
];

/// Days of partitions kept ready ahead of today, so a write never meets a missing one.
const PARTITIONS_AHEAD: u64 = 3;

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

/// A stored event.
#[derive(Queryable, Selectable)]
#[diesel(table_name = change_events, check_for_backend(Pg))]
struct EventRow {
    sequence: i64,
    binlog_file: String,
    binlog_position: i64,
    row_index: i32,
    gtid: String,
    committed_at: DateTime<Utc>,
    schema_name: String,
    table_name: String,
    operation: String,
    primary_key: Option<serde_json::Value>,
    row_before: Option<serde_json::Value>,
    row_after: Option<serde_json::Value>,
}

impl TryFrom<EventRow> for ChangeEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<ChangeEvent, StoreError> {
        let operation = ChangeOperation::parse(&row.operation)
            .ok_or_else(|| StoreError::Corrupt(format!("operation {:?}", row.operation)))?;
        Ok(ChangeEvent {
            sequence: row.sequence,
            change: RowChange {
                binlog_file: row.binlog_file,
                binlog_position: row.binlog_position,
                row_index: row.row_index,
                gtid: row.gtid,
                committed_at: row.committed_at,
                schema: row.schema_name,
                table: row.table_name,
                operation,
                primary_key: row.primary_key,
                before: row.row_before,
                after: row.row_after,
            },
        })
    }
}

/// A page of events and whether more follow.
#[derive(Debug)]
pub struct ChangePage {
    pub events: Vec<ChangeEvent>,
    pub more: bool,
}

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
    connection: &mut super::Connection,
    server_id: ServerId,
    gap: &StreamGap,
) -> Result<(), StoreError> {
    diesel::sql_query(
        "INSERT INTO stream_gaps (server_id, from_file, from_position, to_file, to_position, \
             reason) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind::<SqlUuid, _>(server_id.0)
    .bind::<Text, _>(&gap.from_file)
    .bind::<BigInt, _>(gap.from_position)
    .bind::<Text, _>(&gap.to_file)
    .bind::<BigInt, _>(gap.to_position)
    .bind::<Text, _>(&gap.reason)
    .execute(connection)
    .await?;
    Ok(())
}

fn partition_name(day: NaiveDate) -> String {
    format!("change_events_{}", day.format("%Y%m%d"))
}

/// The day a partition holds, from its name.
fn partition_day(name: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(name.strip_prefix("change_events_")?, "%Y%m%d").ok()
}

/// The partitions of change_events, oldest first.
async fn partitions(connection: &mut super::Connection) -> Result<Vec<String>, StoreError> {
    Ok(diesel::dsl::sql::<Text>(
        "SELECT c.relname::text FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
         WHERE p.relname = 'change_events' AND c.relnamespace = p.relnamespace ORDER BY 1",
    )
    .load(connection)
    .await?)
}

type EventQuery<'a> =
    change_events::BoxedQuery<'a, Pg, diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<EventRow, Pg>>>;
type EventCondition = Box<dyn BoxableExpression<change_events::table, Pg, SqlType = Bool>>;

/// `column <comparison> value` as a boxed condition.
macro_rules! compare {
    ($column:expr, $comparison:expr, $value:expr) => {{
        let (column, value) = ($column, $value);
        let condition: EventCondition = match $comparison {
            Comparison::Equals => Box::new(column.eq(value)),
            Comparison::NotEquals => Box::new(column.ne(value)),
            Comparison::Less => Box::new(column.lt(value)),
            Comparison::LessOrEqual => Box::new(column.le(value)),
            Comparison::Greater => Box::new(column.gt(value)),
            Comparison::GreaterOrEqual => Box::new(column.ge(value)),
        };
        condition
    }};
}

fn event_condition(condition: &ChangeCondition) -> EventCondition {
    match condition {
        ChangeCondition::Text {
            field,
            comparison,
            value,
        } => {
            let value = value.clone();
            match field {
                ChangeField::Schema => compare!(change_events::schema_name, comparison, value),
                ChangeField::Table => compare!(change_events::table_name, comparison, value),
                ChangeField::Type => compare!(change_events::operation, comparison, value),
                ChangeField::Gtid => compare!(change_events::gtid, comparison, value),
            }
        }
        ChangeCondition::CommittedAt { comparison, value } => {
            compare!(change_events::committed_at, comparison, *value)
        }
    }
}

/// A page of a server's events after `after` (a sequence), oldest first, one more than asked to
/// tell whether more follow.
fn events_query<'a>(
    server_id: ServerId,
    filter: &ChangeFilter,
    after: i64,
    page_size: usize,
) -> EventQuery<'a> {
    let mut query = change_events::table
        .filter(change_events::server_id.eq(server_id.0))
        .filter(change_events::sequence.gt(after))
        .select(EventRow::as_select())
        .order(change_events::sequence.asc())
        .limit(page_size as i64 + 1)
        .into_boxed();
    for condition in &filter.conditions {
        query = query.filter(event_condition(condition));
    }
    query
}

impl Store {
    /// Creates the index's tables and the partitions of the next days (safe to run again, by
    /// several replicas at once).
    pub async fn prepare_change_index(&self) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('dbtrail_change_index'))")
                    .execute(connection)
                    .await?;
                for statement in TABLES {
                    diesel::sql_query(*statement).execute(connection).await?;
                }
                Ok(())
            })
            .await?;
        self.maintain_change_index(None).await.map(drop)
    }

    /// Creates the partitions from yesterday to a few days ahead and, with a retention, drops
    /// the partitions wholly older than it. Returns the dropped partitions' names.
    pub async fn maintain_change_index(
        &self,
        retention: Option<std::time::Duration>,
    ) -> Result<Vec<String>, StoreError> {
        let today = Utc::now().date_naive();
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('dbtrail_change_index'))")
                    .execute(connection)
                    .await?;
                let first = today - Days::new(1);
                for offset in 0..=PARTITIONS_AHEAD + 1 {
                    let day = first + Days::new(offset);
                    let next = day + Days::new(1);
                    diesel::sql_query(format!(
                        "CREATE TABLE IF NOT EXISTS {} PARTITION OF change_events \
                         FOR VALUES FROM ('{day}') TO ('{next}')",
                        partition_name(day)
                    ))
                    .execute(connection)
                    .await?;
                }
                let Some(retention) = retention else {
                    return Ok(Vec::new());
                };
                let cutoff = Utc::now() - retention;
                let partitions = partitions(connection).await?;
                let mut dropped = Vec::new();
                for name in partitions {
                    let expired = partition_day(&name).is_some_and(|day| {
                        (day + Days::new(1))
                            .and_hms_opt(0, 0, 0)
                            .is_some_and(|end| end.and_utc() <= cutoff)
                    });
                    if expired {
                        diesel::sql_query(format!("DROP TABLE IF EXISTS {name}"))
                            .execute(connection)
                            .await?;
                        dropped.push(name);
                    }
                }
                Ok(dropped)
            })
            .await
    }

    /// The day partitions of the index, oldest first (for tests and operators).
    pub async fn change_partitions(&self) -> Result<Vec<String>, StoreError> {
        let mut connection = self.connection().await?;
        partitions(&mut connection).await
    }

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
        .bind::<SqlUuid, _>(server_id.0)
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
        .bind::<SqlUuid, _>(server_id.0)
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
                .bind::<SqlUuid, _>(server_id.0)
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
        .bind::<SqlUuid, _>(server_id.0)
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
        .bind::<SqlUuid, _>(server_id.0)
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
        .bind::<SqlUuid, _>(server_id.0)
        .bind::<BigInt, _>(epoch)
        .get_result(&mut connection)
        .await
        .optional()?;
        if let Some(row) = taken {
            return Ok(Some(row.into()));
        }
        let exists: Option<i64> =
            diesel::dsl::sql::<BigInt>("SELECT epoch FROM stream_checkpoints WHERE server_id = ")
                .bind::<SqlUuid, _>(server_id.0)
                .get_result(&mut connection)
                .await
                .optional()?;
        match exists {
            Some(_) => Err(StoreError::Fenced),
            None => Ok(None),
        }
    }

    /// Stores a batch of events, in order, and the checkpoint after them, in one transaction
    /// fenced by the stream lease's epoch. Returns the events stored so far in total.
    pub async fn write_change_batch(
        &self,
        server_id: ServerId,
        epoch: i64,
        events: &[RowChange],
        position: &StreamPosition,
    ) -> Result<i64, StoreError> {
        let checkpoint = position.clone();
        let count = events.len() as i64;
        let columns = EventColumns::from(events);
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                // The checkpoint row's lock orders concurrent writers; a stale epoch matches
                // nothing and writes nothing.
                let first: Option<i64> = diesel::dsl::sql::<BigInt>(
                    "UPDATE stream_checkpoints SET next_sequence = next_sequence + ",
                )
                .bind::<BigInt, _>(count)
                .sql(", binlog_file = ")
                .bind::<Text, _>(checkpoint.binlog_file.clone())
                .sql(", binlog_position = ")
                .bind::<BigInt, _>(checkpoint.binlog_position)
                .sql(", skip_rows = ")
                .bind::<BigInt, _>(checkpoint.skip_rows)
                .sql(", gtid_set = ")
                .bind::<Nullable<Text>, _>(checkpoint.gtid_set.clone())
                .sql(", source_identity = ")
                .bind::<Nullable<Text>, _>(checkpoint.source_identity.clone())
                .sql(", last_event_at = COALESCE(")
                .bind::<Nullable<Timestamptz>, _>(checkpoint.last_event_at)
                .sql(", last_event_at), statement_changes = statement_changes + ")
                .bind::<BigInt, _>(checkpoint.statement_changes.skipped)
                .sql(", statement_changes_since = COALESCE(statement_changes_since, ")
                .bind::<Nullable<Timestamptz>, _>(checkpoint.statement_changes.since)
                .sql("), last_statement_change = CASE WHEN ")
                .bind::<BigInt, _>(checkpoint.statement_changes.skipped)
                .sql(" > 0 THEN ")
                .bind::<Text, _>(checkpoint.statement_changes.last_position.clone())
                .sql(" ELSE last_statement_change END, recorded_at = now() WHERE server_id = ")
                .bind::<SqlUuid, _>(server_id.0)
                .sql(" AND epoch = ")
                .bind::<BigInt, _>(epoch)
                .sql(" RETURNING next_sequence - ")
                .bind::<BigInt, _>(count)
                .get_result(connection)
                .await
                .optional()?;
                let first = first.ok_or(StoreError::Fenced)?;
                if count > 0 {
                    columns.insert(connection, server_id, first).await?;
                }
                Ok(first - 1 + count)
            })
            .await
    }

    /// A page of a server's events after the sequence `after`, oldest first.
    pub async fn list_change_events(
        &self,
        server_id: ServerId,
        filter: &ChangeFilter,
        after: i64,
        page_size: usize,
    ) -> Result<ChangePage, StoreError> {
        let mut connection = self.connection().await?;
        let mut rows: Vec<EventRow> = events_query(server_id, filter, after, page_size)
            .load(&mut connection)
            .await?;
        let more = rows.len() > page_size;
        rows.truncate(page_size);
        let events = rows
            .into_iter()
            .map(ChangeEvent::try_from)
            .collect::<Result<_, _>>()?;
        Ok(ChangePage { events, more })
    }

    /// PostgreSQL's plan for the query of `list_change_events`.
    pub async fn explain_list_change_events(
        &self,
        server_id: ServerId,
        filter: &ChangeFilter,
        after: i64,
        page_size: usize,
    ) -> Result<String, StoreError> {
        let mut connection = self.connection().await?;
        let query = events_query(server_id, filter, after, page_size);
        let lines: Vec<String> = super::explain::Explain(query).load(&mut connection).await?;
        Ok(lines.join("\n"))
    }
}

/// A batch as column arrays, inserted with one `INSERT ... SELECT FROM unnest(...)`: one
/// statement and thirteen parameters however many rows.
struct EventColumns {
    files: Vec<String>,
    positions: Vec<i64>,
    row_indexes: Vec<i32>,
    gtids: Vec<String>,
    committed: Vec<DateTime<Utc>>,
    schemas: Vec<String>,
    tables: Vec<String>,
    operations: Vec<String>,
    keys: Vec<Option<serde_json::Value>>,
    befores: Vec<Option<serde_json::Value>>,
    afters: Vec<Option<serde_json::Value>>,
}

impl From<&[RowChange]> for EventColumns {
    fn from(events: &[RowChange]) -> EventColumns {
        EventColumns {
            files: events
                .iter()
                .map(|event| event.binlog_file.clone())
                .collect(),
            positions: events.iter().map(|event| event.binlog_position).collect(),
            row_indexes: events.iter().map(|event| event.row_index).collect(),
            gtids: events.iter().map(|event| event.gtid.clone()).collect(),
            committed: events.iter().map(|event| event.committed_at).collect(),
            schemas: events.iter().map(|event| event.schema.clone()).collect(),
            tables: events.iter().map(|event| event.table.clone()).collect(),
            operations: events
                .iter()
                .map(|event| event.operation.as_str().to_owned())
                .collect(),
            keys: events
                .iter()
                .map(|event| event.primary_key.clone())
                .collect(),
            befores: events.iter().map(|event| event.before.clone()).collect(),
            afters: events.iter().map(|event| event.after.clone()).collect(),
        }
    }
}

impl EventColumns {
    async fn insert(
        self,
        connection: &mut super::Connection,
        server_id: ServerId,
        first_sequence: i64,
    ) -> Result<(), StoreError> {
        diesel::sql_query(
            "INSERT INTO change_events (server_id, sequence, binlog_file, binlog_position, \
                 row_index, gtid, committed_at, schema_name, table_name, operation, primary_key, \
                 row_before, row_after) \
             SELECT $1, $2 + ordinality - 1, file, position, row_index, gtid, committed_at, \
                 schema_name, table_name, operation, primary_key, row_before, row_after \
             FROM unnest($3::text[], $4::bigint[], $5::integer[], $6::text[], \
                 $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::jsonb[], \
                 $12::jsonb[], $13::jsonb[]) WITH ORDINALITY AS batch(file, position, row_index, \
                 gtid, committed_at, schema_name, table_name, operation, primary_key, row_before, \
                 row_after, ordinality)",
        )
        .bind::<SqlUuid, _>(server_id.0)
        .bind::<BigInt, _>(first_sequence)
        .bind::<Array<Text>, _>(self.files)
        .bind::<Array<BigInt>, _>(self.positions)
        .bind::<Array<Integer>, _>(self.row_indexes)
        .bind::<Array<Text>, _>(self.gtids)
        .bind::<Array<Timestamptz>, _>(self.committed)
        .bind::<Array<Text>, _>(self.schemas)
        .bind::<Array<Text>, _>(self.tables)
        .bind::<Array<Text>, _>(self.operations)
        .bind::<Array<Nullable<Jsonb>>, _>(self.keys)
        .bind::<Array<Nullable<Jsonb>>, _>(self.befores)
        .bind::<Array<Nullable<Jsonb>>, _>(self.afters)
        .execute(connection)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        assert_eq!(partition_name(day), "change_events_20261202");
        assert_eq!(partition_day("change_events_20261202"), Some(day));
        assert_eq!(partition_day("change_events_default"), None);
    }
}
