//! Reads across the tiers: a page read from PostgreSQL (the hot rows) merged, in sequence order,
//! with the manifest's files of the server (the cold rows), each event once (a partition whose
//! files are recorded but which is not dropped yet is in both). The hot page is read first and
//! the manifest after it: a partition dropped before the hot read had its files recorded before
//! the drop, so every event is in one of the two. Files are pruned by the manifest's bounds and
//! by their row groups' statistics, and read one row group at a time.

use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use parquet::{
    arrow::{ParquetRecordBatchStreamBuilder, async_reader::ParquetObjectReader},
    file::{metadata::RowGroupMetaData, statistics::Statistics},
};

use super::{Archive, ArchivedFile, columns, object_path, unavailable};
use crate::{
    domain::change::{ChangeCondition, ChangeEvent, ChangeField, Comparison},
    store::{PageBound, StoreError, pages::collect_page},
};

/// Which archived events a read takes: the filter's conditions, and for a row's history its
/// table and key.
#[derive(Debug, Clone, Default)]
pub struct ColdFilter {
    pub conditions: Vec<ChangeCondition>,
    pub table: Option<(String, String)>,
    pub key: Option<serde_json::Value>,
}

impl ColdFilter {
    fn holds(&self, event: &ChangeEvent) -> bool {
        let change = &event.change;
        self.table
            .as_ref()
            .is_none_or(|(schema, table)| &change.schema == schema && &change.table == table)
            && self
                .key
                .as_ref()
                .is_none_or(|key| change.primary_key.as_ref() == Some(key))
            && self
                .conditions
                .iter()
                .all(|condition| condition_holds(condition, event))
    }

    /// Whether a file's manifest bounds may hold an event of the filter.
    fn may_hold_file(&self, file: &ArchivedFile) -> bool {
        self.conditions.iter().all(|condition| match condition {
            ChangeCondition::CommittedAt { comparison, value } => range_may_hold(
                *comparison,
                value,
                (&file.first_committed_at, &file.last_committed_at),
            ),
            ChangeCondition::Text { .. } => true,
        })
    }

    /// Whether a row group's statistics may hold an event of the filter after `after`.
    fn may_hold_group(&self, group: &RowGroupMetaData, after: i64) -> bool {
        let sequences = int_range(group, columns::COLUMN_SEQUENCE);
        if sequences.is_some_and(|(_, max)| max <= after) {
            return false;
        }
        let committed = int_range(group, columns::COLUMN_COMMITTED_AT);
        let texts = |column| text_range(group, column);
        let table_holds = self.table.as_ref().is_none_or(|(schema, table)| {
            equal_may_hold(texts(columns::COLUMN_SCHEMA), schema)
                && equal_may_hold(texts(columns::COLUMN_TABLE), table)
        });
        // Keys are stored as the JSON text `serde_json` writes, which is also the key's here.
        let key_holds = self
            .key
            .as_ref()
            .is_none_or(|key| equal_may_hold(texts(columns::COLUMN_PRIMARY_KEY), &key.to_string()));
        table_holds
            && key_holds
            && self.conditions.iter().all(|condition| match condition {
                ChangeCondition::CommittedAt { comparison, value } => {
                    committed.is_none_or(|(min, max)| {
                        let value = value.timestamp_micros();
                        range_may_hold(*comparison, &value, (&min, &max))
                    })
                }
                ChangeCondition::Text {
                    field,
                    comparison: Comparison::Equals,
                    value,
                } => match field {
                    ChangeField::Schema => equal_may_hold(texts(columns::COLUMN_SCHEMA), value),
                    ChangeField::Table => equal_may_hold(texts(columns::COLUMN_TABLE), value),
                    ChangeField::Type => equal_may_hold(texts(columns::COLUMN_OPERATION), value),
                    ChangeField::Gtid => true,
                },
                ChangeCondition::Text { .. } => true,
            })
    }
}

fn condition_holds(condition: &ChangeCondition, event: &ChangeEvent) -> bool {
    match condition {
        ChangeCondition::Text {
            field,
            comparison,
            value,
        } => {
            let change = &event.change;
            let field = match field {
                ChangeField::Schema => change.schema.as_str(),
                ChangeField::Table => change.table.as_str(),
                ChangeField::Type => change.operation.as_str(),
                ChangeField::Gtid => change.gtid.as_str(),
            };
            comparison.holds(field.cmp(value.as_str()))
        }
        ChangeCondition::CommittedAt { comparison, value } => {
            comparison.holds(event.change.committed_at.cmp(value))
        }
    }
}

/// Whether values in `min..=max` may compare to `value` as asked.
fn range_may_hold<T: Ord>(comparison: Comparison, value: &T, (min, max): (&T, &T)) -> bool {
    match comparison {
        Comparison::Equals => min <= value && value <= max,
        Comparison::NotEquals => !(min == value && max == value),
        Comparison::Less => min < value,
        Comparison::LessOrEqual => min <= value,
        Comparison::Greater => max > value,
        Comparison::GreaterOrEqual => max >= value,
    }
}

fn equal_may_hold(range: Option<(Vec<u8>, Vec<u8>)>, value: &str) -> bool {
    range.is_none_or(|(min, max)| {
        min.as_slice() <= value.as_bytes() && value.as_bytes() <= max.as_slice()
    })
}

fn int_range(group: &RowGroupMetaData, column: usize) -> Option<(i64, i64)> {
    match group.column(column).statistics()? {
        Statistics::Int64(values) => Some((*values.min_opt()?, *values.max_opt()?)),
        _ => None,
    }
}

fn text_range(group: &RowGroupMetaData, column: usize) -> Option<(Vec<u8>, Vec<u8>)> {
    let statistics = group.column(column).statistics()?;
    Some((
        statistics.min_bytes_opt()?.to_vec(),
        statistics.max_bytes_opt()?.to_vec(),
    ))
}

type Events<'a> =
    std::pin::Pin<Box<dyn Stream<Item = Result<ChangeEvent, StoreError>> + Send + 'a>>;

/// A page of the server's events after `after`: the hot page (read with the same bound, and
/// whether more hot rows follow) merged with the archived events of `files` that `filter`
/// takes. When more hot rows follow, the page ends at the last hot row read.
pub async fn merge_hot_and_cold(
    archive: Option<&Archive>,
    (hot, hot_more): (Vec<ChangeEvent>, bool),
    files: Vec<ArchivedFile>,
    (filter, after): (&ColdFilter, i64),
    bound: &PageBound<ChangeEvent>,
) -> Result<(Vec<ChangeEvent>, bool), StoreError> {
    if files.is_empty() {
        return Ok((hot, hot_more));
    }
    let archive = archive.ok_or_else(|| {
        StoreError::Archive("events of this server are archived, but no archive is open".into())
    })?;
    let last_hot = hot.last().map(|event| event.sequence);
    let cold = cold_events(archive, files, filter, after).try_take_while(move |event| {
        let before_end = !hot_more || last_hot.is_none_or(|last| event.sequence <= last);
        std::future::ready(Ok(before_end))
    });
    let hot: Events = Box::pin(stream::iter(hot.into_iter().map(Ok)));
    let (events, more) = collect_page(merge(hot, Box::pin(cold)), bound, Ok).await?;
    Ok((events, more || hot_more))
}

/// The archived events of `files` (in sequence order, disjoint) after `after` that `filter` takes.
fn cold_events<'a>(
    archive: &'a Archive,
    files: Vec<ArchivedFile>,
    filter: &'a ColdFilter,
    after: i64,
) -> impl Stream<Item = Result<ChangeEvent, StoreError>> + Send + 'a {
    stream::iter(files.into_iter().filter(|file| filter.may_hold_file(file)))
        .then(move |file| file_events(archive, file, filter, after))
        .try_flatten()
}

/// The events of one file that `filter` takes, its row groups pruned by their statistics.
async fn file_events<'a>(
    archive: &'a Archive,
    file: ArchivedFile,
    filter: &'a ColdFilter,
    after: i64,
) -> Result<Events<'a>, StoreError> {
    let reader = ParquetObjectReader::new(archive.store.clone(), object_path(&file.path)?)
        .with_file_size(file.bytes as u64);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(unavailable)?;
    let groups = builder
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, group)| filter.may_hold_group(group, after))
        .map(|(index, _)| index)
        .collect();
    let batches = builder
        .with_row_groups(groups)
        .with_batch_size(1024)
        .build()
        .map_err(unavailable)?;
    let events = batches
        .map_err(unavailable)
        .map_ok(move |batch| {
            let rows: Vec<Result<ChangeEvent, StoreError>> = (0..batch.num_rows())
                .filter(|row| columns::sequences(&batch).value(*row) > after)
                .map(|row| columns::event_at(&batch, row))
                .filter(|event| {
                    event.as_ref().is_err() || event.as_ref().is_ok_and(|event| filter.holds(event))
                })
                .collect();
            stream::iter(rows)
        })
        .try_flatten();
    Ok(Box::pin(events))
}

/// Two streams in sequence order merged into one, an event in both taken once.
fn merge<'a>(
    hot: Events<'a>,
    cold: Events<'a>,
) -> impl Stream<Item = Result<ChangeEvent, StoreError>> + 'a {
    let heads: (Option<ChangeEvent>, Option<ChangeEvent>) = (None, None);
    stream::try_unfold(
        (hot, cold, heads),
        |(mut hot, mut cold, (mut hot_head, mut cold_head))| async move {
            if hot_head.is_none() {
                hot_head = hot.try_next().await?;
            }
            if cold_head.is_none() {
                cold_head = cold.try_next().await?;
            }
            let next = match (hot_head.take(), cold_head.take()) {
                (Some(h), Some(c)) if h.sequence < c.sequence => {
                    cold_head = Some(c);
                    Some(h)
                }
                (Some(h), Some(c)) if c.sequence < h.sequence => {
                    hot_head = Some(h);
                    Some(c)
                }
                (Some(h), _) => Some(h),
                (None, c) => c,
            };
            Ok(next.map(|event| (event, (hot, cold, (hot_head, cold_head)))))
        },
    )
}
