//! The changes a RevertChanges call selects (a filter, event ids, and the newest sequence taken),
//! read from both tiers: what the selection holds, summarised before the script is written, and
//! its events newest first a page at a time.

use diesel::{
    pg::Pg,
    prelude::*,
    sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::TryStreamExt;

use super::{
    ChangeIndex,
    archive::{ColdFilter, ColdRead, Order, Range, cold_events},
    events::{EventCondition, EventRow, archived_within, change_events, event_condition},
};
use crate::{
    domain::{
        ServerId,
        change::{ChangeEvent, ChangeFilter, EventId},
    },
    store::{Connection, PageBound, StoreError},
};

/// The changes a RevertChanges call selects: a filter, a list of ids (when given, both hold),
/// and the newest sequence taken (so that changes captured while the script is written are not
/// part of it).
#[derive(Debug, Clone)]
pub struct ChangeSelection {
    pub filter: ChangeFilter,
    pub event_ids: Option<Vec<EventId>>,
    pub through: i64,
}

/// What a selection holds, read before its script is written.
#[derive(Debug, Default)]
pub struct SelectionSummary {
    pub count: i64,
    /// The newest sequence selected, the bound of the pages that follow.
    pub through: Option<i64>,
    /// The oldest change selected.
    pub oldest: Option<ChangeEvent>,
    /// Tables of the selection whose changes carry no primary key (the table had none then).
    pub keyless_tables: Vec<(String, String)>,
}

/// The selected events of `server_id` on a boxed query of any selection.
fn selected<'a, ST: 'a>(
    query: change_events::BoxedQuery<'a, Pg, ST>,
    server_id: ServerId,
    selection: &ChangeSelection,
) -> change_events::BoxedQuery<'a, Pg, ST> {
    let mut query = query
        .filter(change_events::server_id.eq(server_id.uuid()))
        .filter(change_events::sequence.le(selection.through));
    for condition in &selection.filter.conditions {
        query = query.filter(event_condition(condition));
    }
    if let Some(ids) = &selection.event_ids {
        query = query.filter(ids_condition(ids));
    }
    query
}

/// `(binlog_file, binlog_position, row_index)` is one of `ids`: three array parameters however
/// many ids.
fn ids_condition(ids: &[EventId]) -> EventCondition {
    let files: Vec<String> = ids.iter().map(|id| id.binlog_file.clone()).collect();
    let positions: Vec<i64> = ids.iter().map(|id| id.binlog_position).collect();
    let rows: Vec<i32> = ids.iter().map(|id| id.row_index).collect();
    Box::new(
        diesel::dsl::sql::<Bool>(
            "(binlog_file, binlog_position, row_index) IN (SELECT * FROM unnest(",
        )
        .bind::<Array<Text>, _>(files)
        .sql("::text[], ")
        .bind::<Array<BigInt>, _>(positions)
        .sql("::bigint[], ")
        .bind::<Array<Integer>, _>(rows)
        .sql("::integer[]))"),
    )
}

/// What the hot rows of `selection` hold.
async fn hot_summary(
    connection: &mut Connection,
    server_id: ServerId,
    selection: &ChangeSelection,
) -> Result<SelectionSummary, StoreError> {
    let (count, through): (i64, Option<i64>) = selected(
        change_events::table
            .select((
                diesel::dsl::count_star(),
                diesel::dsl::max(change_events::sequence),
            ))
            .into_boxed(),
        server_id,
        selection,
    )
    .get_result(connection)
    .await?;
    let Some(through) = through else {
        return Ok(SelectionSummary::default());
    };
    let bounded = ChangeSelection {
        through,
        ..selection.clone()
    };
    let oldest: Option<EventRow> = selected(
        change_events::table
            .select(EventRow::as_select())
            .order(change_events::sequence.asc())
            .limit(1)
            .into_boxed(),
        server_id,
        &bounded,
    )
    .get_result(connection)
    .await
    .optional()?;
    let keyless_tables: Vec<(String, String)> = selected(
        change_events::table
            .select((change_events::schema_name, change_events::table_name))
            .distinct()
            .limit(10)
            .into_boxed(),
        server_id,
        &bounded,
    )
    .filter(change_events::primary_key.is_null())
    .load(connection)
    .await?;
    Ok(SelectionSummary {
        count,
        through: Some(through),
        oldest: oldest.map(ChangeEvent::try_from).transpose()?,
        keyless_tables,
    })
}

/// The archive's side of a selection: its conditions and ids.
fn cold_filter(selection: &ChangeSelection) -> ColdFilter {
    ColdFilter {
        conditions: selection.filter.conditions.clone(),
        ids: selection.event_ids.as_ref().map(|ids| {
            ids.iter()
                .map(|id| format!("{}:{}:{}", id.binlog_file, id.binlog_position, id.row_index))
                .collect()
        }),
        ..ColdFilter::default()
    }
}

#[derive(QueryableByName)]
struct Oldest {
    #[diesel(sql_type = Nullable<BigInt>)]
    sequence: Option<i64>,
}

impl SelectionSummary {
    /// This summary (of hot rows) with `event`, an older selected event from the archive.
    fn add_older(&mut self, event: ChangeEvent) {
        self.count += 1;
        self.through = Some(self.through.unwrap_or(event.sequence).max(event.sequence));
        let change = &event.change;
        let table = (change.schema.clone(), change.table.clone());
        if change.primary_key.is_none()
            && self.keyless_tables.len() < 10
            && !self.keyless_tables.contains(&table)
        {
            self.keyless_tables.push(table);
        }
        if self
            .oldest
            .as_ref()
            .is_none_or(|oldest| event.sequence < oldest.sequence)
        {
            self.oldest = Some(event);
        }
    }
}

impl ChangeIndex {
    /// What `selection` holds: how many changes, the newest sequence, the oldest change, and
    /// the tables whose changes carry no primary key. The hot rows are summarised under a lock
    /// that keeps partitions from being dropped meanwhile, with the oldest hot sequence: the
    /// archive's events before it are the rest.
    pub async fn summarize_selection(
        &self,
        server_id: ServerId,
        selection: &ChangeSelection,
    ) -> Result<SelectionSummary, StoreError> {
        let mut connection = self.connection().await?;
        let owned = selection.clone();
        let (mut summary, range, files) = connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                diesel::sql_query("LOCK TABLE change_events IN ACCESS SHARE MODE")
                    .execute(connection)
                    .await?;
                let summary = hot_summary(connection, server_id, &owned).await?;
                let oldest: Oldest = diesel::sql_query(
                    "SELECT min(sequence) AS sequence FROM change_events WHERE server_id = $1",
                )
                .bind::<SqlUuid, _>(server_id.uuid())
                .get_result(connection)
                .await?;
                let range = Range {
                    after: 0,
                    before: oldest
                        .sequence
                        .unwrap_or(i64::MAX)
                        .min(owned.through.saturating_add(1)),
                };
                let files =
                    ChangeIndex::archived_files(connection, server_id.uuid(), range, Order::Oldest)
                        .await?;
                Ok((summary, range, files))
            })
            .await?;
        if files.is_empty() {
            return Ok(summary);
        }
        let archive = self.archive.as_ref().ok_or_else(|| {
            StoreError::Archive("events of this server are archived, but no archive is open".into())
        })?;
        let filter = cold_filter(selection);
        let read = ColdRead {
            filter: &filter,
            range,
            order: Order::Oldest,
        };
        let mut cold = std::pin::pin!(cold_events(archive, files, read));
        while let Some(event) = cold.try_next().await? {
            summary.add_older(event);
        }
        Ok(summary)
    }

    /// Up to `page_size` selected events before the sequence `before`, newest first.
    pub async fn selected_events_descending(
        &self,
        server_id: ServerId,
        selection: &ChangeSelection,
        before: i64,
        page_size: usize,
    ) -> Result<Vec<ChangeEvent>, StoreError> {
        let mut connection = self.connection().await?;
        let before = before.min(selection.through.saturating_add(1));
        let archived = archived_within(server_id.uuid(), 0, before);
        let rows: Vec<(EventRow, bool)> = selected(
            change_events::table
                .select((EventRow::as_select(), archived))
                .order(change_events::sequence.desc())
                .limit(page_size as i64)
                .into_boxed(),
            server_id,
            selection,
        )
        .filter(change_events::sequence.lt(before))
        .load(&mut connection)
        .await?;
        // Unknown (and so looked for) when the page is empty.
        let archived = <[_]>::first(&rows).is_none_or(|(_, any)| *any);
        let hot: Vec<ChangeEvent> = rows
            .into_iter()
            .map(|(row, _)| ChangeEvent::try_from(row))
            .collect::<Result<_, _>>()?;
        let more = hot.len() == page_size;
        let filter = cold_filter(selection);
        let read = ColdRead {
            filter: &filter,
            range: Range { after: 0, before },
            order: Order::Newest,
        };
        let bound = PageBound {
            rows: page_size,
            bytes: usize::MAX,
            size: |_: &ChangeEvent| 0,
        };
        let (events, _) = self
            .with_archived(
                &mut connection,
                server_id,
                (hot, more),
                archived,
                read,
                &bound,
            )
            .await?;
        Ok(events)
    }
}
