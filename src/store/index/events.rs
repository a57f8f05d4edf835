//! The captured row changes: written in batches with the checkpoint after them, read in pages in
//! binlog order.

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use diesel::{
    pg::Pg,
    prelude::*,
    sql_types::{
        Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
    },
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{
    ChangeIndex, StreamPosition,
    archive::{ColdFilter, ColdRead, Order, Range, archive_cannot_add, merge_hot_and_cold},
    copy::CHECKPOINT_UPDATE,
};
use crate::{
    domain::{
        ServerId,
        change::{
            ChangeCondition, ChangeEvent, ChangeField, ChangeFilter, ChangeOperation, Comparison,
            RowChange,
        },
    },
    store::{
        Connection, StoreError,
        pages::{PageBound, collect_page},
    },
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

// The manifest's columns a hot read looks at (`archived_within`); the archive's statements
// (`archive::manifest`) read the rest.
diesel::table! {
    change_archive_files (server_id, first_sequence) {
        server_id -> Uuid,
        first_sequence -> Int8,
        last_sequence -> Int8,
    }
}

diesel::allow_tables_to_appear_in_same_query!(change_events, change_archive_files);

/// Whether the manifest names a file of `server_id` that may hold events after `after` and
/// before `before`. A hot read selects it beside its rows, in its snapshot: a partition dropped
/// before that snapshot had its files in the manifest first, so a read that finds none has
/// every event of its range in its rows and reads no manifest (B13).
#[diesel::dsl::auto_type]
pub(super) fn archived_within(server_id: uuid::Uuid, after: i64, before: i64) -> _ {
    diesel::dsl::exists(
        change_archive_files::table
            .filter(change_archive_files::server_id.eq(server_id))
            .filter(change_archive_files::last_sequence.gt(after))
            .filter(change_archive_files::first_sequence.lt(before)),
    )
}

/// A stored event (the archive writes it to its files as it is).
#[derive(Queryable, QueryableByName, Selectable)]
#[diesel(table_name = change_events, check_for_backend(Pg))]
pub(super) struct EventRow {
    pub sequence: i64,
    pub binlog_file: String,
    pub binlog_position: i64,
    pub row_index: i32,
    pub gtid: String,
    pub committed_at: DateTime<Utc>,
    pub schema_name: String,
    pub table_name: String,
    pub operation: String,
    pub primary_key: Option<serde_json::Value>,
    pub row_before: Option<serde_json::Value>,
    pub row_after: Option<serde_json::Value>,
    pub indexed_at: DateTime<Utc>,
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

/// The first `limit` of `rows` (read with one more) as events, and whether more follow.
pub(super) fn at_most(
    mut rows: Vec<EventRow>,
    limit: usize,
) -> Result<(Vec<ChangeEvent>, bool), StoreError> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let events = rows
        .into_iter()
        .map(ChangeEvent::try_from)
        .collect::<Result<_, _>>()?;
    Ok((events, more))
}

/// A page of events and whether more follow.
#[derive(Debug)]
pub struct ChangePage {
    pub events: Vec<ChangeEvent>,
    pub more: bool,
}

type EventQuery<'a> =
    change_events::BoxedQuery<'a, Pg, diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<EventRow, Pg>>>;
/// Events, each beside whether the manifest may add to the read (`archived_within`).
pub(super) type EventsAndManifestQuery<'a> = change_events::BoxedQuery<
    'a,
    Pg,
    (
        diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<EventRow, Pg>>,
        Bool,
    ),
>;
pub(super) type EventCondition =
    Box<dyn BoxableExpression<change_events::table, Pg, SqlType = Bool>>;

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

pub(super) fn event_condition(condition: &ChangeCondition) -> EventCondition {
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

/// The changes of one row, oldest first, one more than `limit`: the index by table narrows them
/// to the table's, in sequence order, and the key is compared on those.
fn row_history_query<'a>(
    server_id: ServerId,
    (schema, table): (&str, &str),
    key: &serde_json::Value,
    limit: usize,
) -> EventQuery<'a> {
    change_events::table
        .filter(change_events::server_id.eq(server_id.uuid()))
        .filter(change_events::schema_name.eq(schema.to_owned()))
        .filter(change_events::table_name.eq(table.to_owned()))
        .filter(change_events::primary_key.eq(key.clone()))
        .select(EventRow::as_select())
        .order(change_events::sequence.asc())
        .limit(limit as i64 + 1)
        .into_boxed()
}

/// The rows of one table whose latest change before the sequence `before` (and after `after`)
/// left them holding `values` (a JSON object of some of their columns): the latest change of
/// each, oldest first, one more than `limit`. Walks the table's events before `before` by `change_events_by_table`:
/// once for the keys of rows an image of which held `values`, once for their latest changes.
fn rows_holding_query(
    server_id: ServerId,
    (schema, table): (&str, &str),
    values: &serde_json::Value,
    (after, before): (i64, i64),
    limit: usize,
) -> diesel::query_builder::BoxedSqlQuery<'static, Pg, diesel::query_builder::SqlQuery> {
    diesel::sql_query(
        "SELECT sequence, binlog_file, binlog_position, row_index, gtid, committed_at, \
             schema_name, table_name, operation, primary_key, row_before, row_after, indexed_at \
         FROM (SELECT DISTINCT ON (primary_key) * FROM change_events \
             WHERE server_id = $1 AND schema_name = $2 AND table_name = $3 AND sequence < $4 \
             AND primary_key IN (SELECT primary_key FROM change_events \
                 WHERE server_id = $1 AND schema_name = $2 AND table_name = $3 \
                 AND sequence < $4 AND row_after @> $5) \
             ORDER BY primary_key, sequence DESC) AS latest \
         WHERE operation <> 'delete' AND row_after @> $5 AND sequence > $7 \
         ORDER BY sequence LIMIT $6",
    )
    .into_boxed()
    .bind::<SqlUuid, _>(server_id.uuid())
    .bind::<Text, _>(schema.to_owned())
    .bind::<Text, _>(table.to_owned())
    .bind::<BigInt, _>(before)
    .bind::<Jsonb, _>(values.clone())
    .bind::<BigInt, _>(limit as i64 + 1)
    .bind::<BigInt, _>(after)
}

/// A page of a server's events after `after` (a sequence), oldest first, one more than asked to
/// tell whether more follow.
fn events_query<'a>(
    server_id: ServerId,
    filter: &ChangeFilter,
    after: i64,
    page_size: usize,
) -> EventsAndManifestQuery<'a> {
    let archived = archived_within(server_id.uuid(), after, i64::MAX);
    let mut query = change_events::table
        .filter(change_events::server_id.eq(server_id.uuid()))
        .filter(change_events::sequence.gt(after))
        .select((EventRow::as_select(), archived))
        .order(change_events::sequence.asc())
        .limit(page_size as i64 + 1)
        .into_boxed();
    for condition in &filter.conditions {
        query = query.filter(event_condition(condition));
    }
    query
}

impl ChangeIndex {
    /// The changes of one row of `schema.table` (its primary key `key`, as events carry it),
    /// oldest first: at most `limit`, and whether more follow.
    pub async fn row_history(
        &self,
        server_id: ServerId,
        (schema, table): (&str, &str),
        key: &serde_json::Value,
        limit: usize,
    ) -> Result<(Vec<ChangeEvent>, bool), StoreError> {
        let mut connection = self.connection().await?;
        let rows: Vec<EventRow> = row_history_query(server_id, (schema, table), key, limit)
            .load(&mut connection)
            .await?;
        let hot = at_most(rows, limit)?;
        let filter = ColdFilter {
            table: Some((schema.to_owned(), table.to_owned())),
            key: Some(key.clone()),
            ..ColdFilter::default()
        };
        let bound = PageBound {
            rows: limit,
            bytes: usize::MAX,
            size: |_: &ChangeEvent| 0,
        };
        let read = ColdRead {
            filter: &filter,
            range: Range::ALL,
            order: Order::Oldest,
        };
        self.with_archived(&mut connection, server_id, hot, true, read, &bound)
            .await
    }

    /// A page read from the hot rows, merged with the server's archived events that `read`
    /// takes (`archive::cold`); the manifest is read after the hot rows, unless the hot read
    /// found it holds nothing of the range (`archived` false) or the page leaves it no room.
    pub(super) async fn with_archived(
        &self,
        connection: &mut Connection,
        server_id: ServerId,
        hot: (Vec<ChangeEvent>, bool),
        archived: bool,
        read: ColdRead<'_>,
        bound: &PageBound<ChangeEvent>,
    ) -> Result<(Vec<ChangeEvent>, bool), StoreError> {
        if !archived || archive_cannot_add((&hot.0, hot.1), read) {
            return Ok(hot);
        }
        let files =
            ChangeIndex::archived_files(connection, server_id.uuid(), read.range, read.order)
                .await?;
        merge_hot_and_cold(self.archive.as_ref(), hot, files, read, bound).await
    }

    /// `rows_holding` (`cascade`) over the rows still in PostgreSQL, in one statement.
    pub(super) async fn hot_rows_holding(
        &self,
        server_id: ServerId,
        (schema, table): (&str, &str),
        values: &serde_json::Value,
        (after, before): (i64, i64),
        limit: usize,
    ) -> Result<(Vec<ChangeEvent>, bool), StoreError> {
        let mut connection = self.connection().await?;
        let rows: Vec<EventRow> =
            rows_holding_query(server_id, (schema, table), values, (after, before), limit)
                .load(&mut connection)
                .await?;
        at_most(rows, limit)
    }

    /// The sequence of the latest delete of the row `key` of `schema.table` before the sequence
    /// `before`, if one was captured (hot, or archived after the hot one).
    pub async fn last_delete_before(
        &self,
        server_id: ServerId,
        (schema, table): (&str, &str),
        key: &serde_json::Value,
        before: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut connection = self.connection().await?;
        let hot: Option<i64> = change_events::table
            .filter(change_events::server_id.eq(server_id.uuid()))
            .filter(change_events::schema_name.eq(schema.to_owned()))
            .filter(change_events::table_name.eq(table.to_owned()))
            .filter(change_events::sequence.lt(before))
            .filter(change_events::primary_key.eq(key.clone()))
            .filter(change_events::operation.eq("delete"))
            .select(diesel::dsl::max(change_events::sequence))
            .get_result(&mut connection)
            .await?;
        let filter = ColdFilter {
            table: Some((schema.to_owned(), table.to_owned())),
            key: Some(key.clone()),
            operation: Some(ChangeOperation::Delete),
            ..ColdFilter::default()
        };
        let read = ColdRead {
            filter: &filter,
            range: Range {
                after: hot.unwrap_or(0),
                before,
            },
            order: Order::Newest,
        };
        let bound = PageBound {
            rows: 1,
            bytes: usize::MAX,
            size: |_: &ChangeEvent| 0,
        };
        let (latest, _) = self
            .with_archived(
                &mut connection,
                server_id,
                (Vec::new(), false),
                true,
                read,
                &bound,
            )
            .await?;
        Ok(latest.iter().map(|event| event.sequence).next().or(hot))
    }

    /// PostgreSQL's plan for the query of `rows_holding`.
    pub async fn explain_rows_holding(
        &self,
        server_id: ServerId,
        (schema, table): (&str, &str),
        values: &serde_json::Value,
        before: i64,
    ) -> Result<String, StoreError> {
        let mut connection = self.connection().await?;
        let query = rows_holding_query(server_id, (schema, table), values, (0, before), 100);
        let lines: Vec<String> = crate::store::explain::Explain(query)
            .load(&mut connection)
            .await?;
        Ok(lines.join("\n"))
    }

    /// PostgreSQL's plan for the query of `row_history`.
    pub async fn explain_row_history(
        &self,
        server_id: ServerId,
        (schema, table): (&str, &str),
        key: &serde_json::Value,
    ) -> Result<String, StoreError> {
        let mut connection = self.connection().await?;
        let query = row_history_query(server_id, (schema, table), key, 100);
        let lines: Vec<String> = crate::store::explain::Explain(query)
            .load(&mut connection)
            .await?;
        Ok(lines.join("\n"))
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
                let first: Option<First> = diesel::sql_query(CHECKPOINT_UPDATE)
                    .bind::<BigInt, _>(count)
                    .bind::<Text, _>(&checkpoint.binlog_file)
                    .bind::<BigInt, _>(checkpoint.binlog_position)
                    .bind::<BigInt, _>(checkpoint.skip_rows)
                    .bind::<Nullable<Text>, _>(checkpoint.gtid_set.as_deref())
                    .bind::<Nullable<Text>, _>(checkpoint.source_identity.as_deref())
                    .bind::<Nullable<Timestamptz>, _>(checkpoint.last_event_at)
                    .bind::<BigInt, _>(checkpoint.statement_changes.skipped)
                    .bind::<Nullable<Timestamptz>, _>(checkpoint.statement_changes.since)
                    .bind::<Text, _>(&checkpoint.statement_changes.last_position)
                    .bind::<SqlUuid, _>(server_id.uuid())
                    .bind::<BigInt, _>(epoch)
                    .get_result(connection)
                    .await
                    .optional()?;
                let first = first.map(|row| row.first);
                let first = first.ok_or(StoreError::Fenced)?;
                if count > 0 {
                    columns.insert(connection, server_id, first).await?;
                }
                Ok(first - 1 + count)
            })
            .await
    }

    /// A page of a server's events after the sequence `after`, oldest first, within `bound`,
    /// from the hot rows and the archive together.
    pub async fn list_change_events(
        &self,
        server_id: ServerId,
        filter: &ChangeFilter,
        after: i64,
        bound: &PageBound<ChangeEvent>,
    ) -> Result<ChangePage, StoreError> {
        let mut connection = self.connection().await?;
        let rows = events_query(server_id, filter, after, bound.rows)
            .load_stream::<(EventRow, bool)>(&mut connection)
            .await?;
        // Unknown (and so looked for) when the page is empty.
        let archived = AtomicBool::new(true);
        let hot = collect_page(rows, bound, |(row, any)| {
            archived.store(any, Ordering::Relaxed);
            ChangeEvent::try_from(row)
        })
        .await?;
        let cold = ColdFilter {
            conditions: filter.conditions.clone(),
            ..ColdFilter::default()
        };
        let read = ColdRead {
            filter: &cold,
            range: Range {
                after,
                before: i64::MAX,
            },
            order: Order::Oldest,
        };
        let (events, more) = self
            .with_archived(
                &mut connection,
                server_id,
                hot,
                archived.into_inner(),
                read,
                bound,
            )
            .await?;
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
        let lines: Vec<String> = crate::store::explain::Explain(query)
            .load(&mut connection)
            .await?;
        Ok(lines.join("\n"))
    }
}

/// The first sequence of a batch, as the checkpoint's UPDATE returns it.
#[derive(QueryableByName)]
struct First {
    #[diesel(sql_type = BigInt)]
    first: i64,
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
        connection: &mut Connection,
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
        .bind::<SqlUuid, _>(server_id.uuid())
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
