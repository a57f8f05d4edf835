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

use std::collections::HashSet;

use arrow_array::RecordBatch;

use super::{Archive, ArchivedFile, columns, job::ROWS_PER_GROUP, object_path, unavailable};
use crate::{
    domain::change::{ChangeCondition, ChangeEvent, ChangeField, ChangeOperation, Comparison},
    store::{PageBound, StoreError, pages::collect_page},
};

/// Which archived events a read takes: the filter's conditions, and for a row's history its
/// table and key.
#[derive(Debug, Clone, Default)]
pub struct ColdFilter {
    pub conditions: Vec<ChangeCondition>,
    pub table: Option<(String, String)>,
    pub key: Option<serde_json::Value>,
    /// Only these events (`RowChange::event_id`), when given.
    pub ids: Option<HashSet<String>>,
    /// Only changes of this kind, when given.
    pub operation: Option<ChangeOperation>,
}

impl ColdFilter {
    /// Whether the filter takes every event.
    fn takes_all(&self) -> bool {
        self.conditions.is_empty()
            && self.table.is_none()
            && self.key.is_none()
            && self.ids.is_none()
            && self.operation.is_none()
    }

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

    /// Whether a row group's statistics may hold an event of the filter within `range`.
    fn may_hold_group(&self, group: &RowGroupMetaData, range: Range) -> bool {
        let sequences = int_range(group, columns::COLUMN_SEQUENCE);
        if sequences.is_some_and(|(min, max)| max <= range.after || min >= range.before) {
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

/// The sequences a read takes: after `after` and before `before`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub after: i64,
    pub before: i64,
}

impl Range {
    pub const ALL: Range = Range {
        after: 0,
        before: i64::MAX,
    };

    fn holds(self, sequence: i64) -> bool {
        self.after < sequence && sequence < self.before
    }
}

/// The order a read goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Oldest,
    Newest,
}

impl Order {
    /// Whether `a` comes before `b` in this order.
    fn first(self, a: i64, b: i64) -> bool {
        match self {
            Order::Oldest => a < b,
            Order::Newest => a > b,
        }
    }
}

/// What a read of the archive takes: the filter, the sequences, the order.
#[derive(Debug, Clone, Copy)]
pub struct ColdRead<'a> {
    pub filter: &'a ColdFilter,
    pub range: Range,
    pub order: Order,
}

/// A page of the server's events: the hot page (read in `read`'s order with the same bound,
/// and whether more hot rows follow) merged with the archived events of `files` that `read`
/// takes. When more hot rows follow, the page ends at the last hot row read.
pub async fn merge_hot_and_cold(
    archive: Option<&Archive>,
    (hot, hot_more): (Vec<ChangeEvent>, bool),
    files: Vec<ArchivedFile>,
    read: ColdRead<'_>,
    bound: &PageBound<ChangeEvent>,
) -> Result<(Vec<ChangeEvent>, bool), StoreError> {
    if files.is_empty() {
        return Ok((hot, hot_more));
    }
    let archive = opened(archive)?;
    let last_hot = hot.last().map(|event| event.sequence);
    let order = read.order;
    let cold = cold_events(archive, files, read).try_take_while(move |event| {
        let within = !hot_more || last_hot.is_none_or(|last| !order.first(last, event.sequence));
        std::future::ready(Ok(within))
    });
    let hot: Events = Box::pin(stream::iter(hot.into_iter().map(Ok)));
    let (events, more) = collect_page(merge(hot, Box::pin(cold), order), bound, Ok).await?;
    Ok((events, more || hot_more))
}

/// Whether the archive cannot add to a hot page of `read`, so the manifest need not be read: a
/// full page, of every event, whose sequences run without a gap from where `read` starts. A
/// server's sequences are consecutive and archived partitions are older, so every event in the
/// page's range is in it, and the page ends before anything past it.
pub fn archive_cannot_add((hot, more): (&[ChangeEvent], bool), read: ColdRead<'_>) -> bool {
    let (Some(first), Some(last)) = (hot.first(), hot.last()) else {
        return false;
    };
    let count = hot.len() as i64;
    let gapless = match read.order {
        Order::Oldest => {
            first.sequence == read.range.after + 1 && last.sequence == read.range.after + count
        }
        Order::Newest => {
            first.sequence == read.range.before - 1 && last.sequence == read.range.before - count
        }
    };
    more && read.filter.takes_all() && gapless
}

fn opened(archive: Option<&Archive>) -> Result<&Archive, StoreError> {
    archive.ok_or_else(|| {
        StoreError::Archive("events of this server are archived, but no archive is open".into())
    })
}

/// The archived events of `files` (disjoint, in `read`'s order) that `read` takes.
pub fn cold_events<'a>(
    archive: &'a Archive,
    files: Vec<ArchivedFile>,
    read: ColdRead<'a>,
) -> impl Stream<Item = Result<ChangeEvent, StoreError>> + Send + 'a {
    stream::iter(files.into_iter().filter(move |file| {
        read.filter.may_hold_file(file)
            && file.last_sequence > read.range.after
            && file.first_sequence < read.range.before
    }))
    .then(move |file| file_events(archive, file, read))
    .try_flatten()
}

/// The events of one file that `read` takes, its row groups pruned by their statistics; newest
/// first, a row group is read whole (one batch) and turned around.
async fn file_events<'a>(
    archive: &'a Archive,
    file: ArchivedFile,
    read: ColdRead<'a>,
) -> Result<Events<'a>, StoreError> {
    let reader = ParquetObjectReader::new(archive.store.clone(), object_path(&file.path)?)
        .with_file_size(file.bytes as u64);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(unavailable)?;
    let mut groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, group)| read.filter.may_hold_group(group, read.range))
        .map(|(index, _)| index)
        .collect();
    if read.order == Order::Newest {
        groups.reverse();
    }
    let batches = builder
        .with_row_groups(groups)
        .with_batch_size(ROWS_PER_GROUP)
        .build()
        .map_err(unavailable)?;
    let events = batches
        .map_err(unavailable)
        .map_ok(move |batch| stream::iter(batch_events(&batch, read)))
        .try_flatten();
    Ok(Box::pin(events))
}

/// The events of a batch that `read` takes, in its order.
fn batch_events(batch: &RecordBatch, read: ColdRead<'_>) -> Vec<Result<ChangeEvent, StoreError>> {
    let sequences = columns::sequences(batch);
    let mut rows: Vec<usize> = (0..batch.num_rows())
        .filter(|row| read.range.holds(sequences.value(*row)))
        .collect();
    if read.order == Order::Newest {
        rows.reverse();
    }
    rows.into_iter()
        .map(|row| columns::event_at(batch, row))
        .filter(|event| {
            event.as_ref().is_err() || event.as_ref().is_ok_and(|event| read.filter.holds(event))
        })
        .collect()
}

/// Two streams in `order` merged into one, an event in both taken once.
fn merge<'a>(
    hot: Events<'a>,
    cold: Events<'a>,
    order: Order,
) -> impl Stream<Item = Result<ChangeEvent, StoreError>> + 'a {
    let heads: (Option<ChangeEvent>, Option<ChangeEvent>) = (None, None);
    stream::try_unfold(
        (hot, cold, heads),
        move |(mut hot, mut cold, (mut hot_head, mut cold_head))| async move {
            if hot_head.is_none() {
                hot_head = hot.try_next().await?;
            }
            if cold_head.is_none() {
                cold_head = cold.try_next().await?;
            }
            let next = match (hot_head.take(), cold_head.take()) {
                (Some(h), Some(c)) if order.first(h.sequence, c.sequence) => {
                    cold_head = Some(c);
                    Some(h)
                }
                (Some(h), Some(c)) if order.first(c.sequence, h.sequence) => {
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
