//! The archive's file format: one Arrow schema (the columns of `change_events`, JSON as text,
//! times in UTC microseconds), stored events to record batches and back, and the digest a file
//! is verified by when it is read back.

use std::sync::{Arc, LazyLock};

use arrow_array::{
    Array, ArrayRef, RecordBatch, StringArray,
    builder::{Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder},
    cast::AsArray,
    types::{Int32Type, Int64Type, TimestampMicrosecondType},
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::super::events::EventRow;
use crate::{
    domain::change::{ChangeEvent, ChangeOperation, RowChange},
    store::StoreError,
};

/// The columns, in file order (`COLUMN_*` name their places).
pub static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let time = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("server_id", DataType::Utf8, false),
        Field::new("sequence", DataType::Int64, false),
        Field::new("binlog_file", DataType::Utf8, false),
        Field::new("binlog_position", DataType::Int64, false),
        Field::new("row_index", DataType::Int32, false),
        Field::new("gtid", DataType::Utf8, false),
        Field::new("committed_at", time(), false),
        Field::new("schema_name", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("operation", DataType::Utf8, false),
        Field::new("primary_key", DataType::Utf8, true),
        Field::new("row_before", DataType::Utf8, true),
        Field::new("row_after", DataType::Utf8, true),
        Field::new("indexed_at", time(), false),
    ]))
});

pub const COLUMN_SEQUENCE: usize = 1;
pub const COLUMN_COMMITTED_AT: usize = 6;
pub const COLUMN_SCHEMA: usize = 7;
pub const COLUMN_TABLE: usize = 8;
pub const COLUMN_OPERATION: usize = 9;
pub const COLUMN_PRIMARY_KEY: usize = 10;

/// Stored events of one server, gathered into a record batch.
pub struct BatchBuilder {
    server_id: String,
    server: StringBuilder,
    sequence: Int64Builder,
    binlog_file: StringBuilder,
    binlog_position: Int64Builder,
    row_index: Int32Builder,
    gtid: StringBuilder,
    committed_at: TimestampMicrosecondBuilder,
    schema: StringBuilder,
    table: StringBuilder,
    operation: StringBuilder,
    primary_key: StringBuilder,
    before: StringBuilder,
    after: StringBuilder,
    indexed_at: TimestampMicrosecondBuilder,
    rows: usize,
}

fn json_text(value: Option<&serde_json::Value>) -> Option<String> {
    value.map(serde_json::Value::to_string)
}

impl BatchBuilder {
    pub fn new(server_id: String) -> BatchBuilder {
        let time = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
        BatchBuilder {
            server_id,
            server: StringBuilder::new(),
            sequence: Int64Builder::new(),
            binlog_file: StringBuilder::new(),
            binlog_position: Int64Builder::new(),
            row_index: Int32Builder::new(),
            gtid: StringBuilder::new(),
            committed_at: time(),
            schema: StringBuilder::new(),
            table: StringBuilder::new(),
            operation: StringBuilder::new(),
            primary_key: StringBuilder::new(),
            before: StringBuilder::new(),
            after: StringBuilder::new(),
            indexed_at: time(),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn push(&mut self, row: &EventRow) {
        self.server.append_value(&self.server_id);
        self.sequence.append_value(row.sequence);
        self.binlog_file.append_value(&row.binlog_file);
        self.binlog_position.append_value(row.binlog_position);
        self.row_index.append_value(row.row_index);
        self.gtid.append_value(&row.gtid);
        self.committed_at
            .append_value(row.committed_at.timestamp_micros());
        self.schema.append_value(&row.schema_name);
        self.table.append_value(&row.table_name);
        self.operation.append_value(&row.operation);
        self.primary_key
            .append_option(json_text(row.primary_key.as_ref()));
        self.before
            .append_option(json_text(row.row_before.as_ref()));
        self.after.append_option(json_text(row.row_after.as_ref()));
        self.indexed_at
            .append_value(row.indexed_at.timestamp_micros());
        self.rows += 1;
    }

    /// The rows pushed since the last batch, as one batch.
    pub fn finish(&mut self) -> Result<RecordBatch, StoreError> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.server.finish()),
            Arc::new(self.sequence.finish()),
            Arc::new(self.binlog_file.finish()),
            Arc::new(self.binlog_position.finish()),
            Arc::new(self.row_index.finish()),
            Arc::new(self.gtid.finish()),
            Arc::new(self.committed_at.finish()),
            Arc::new(self.schema.finish()),
            Arc::new(self.table.finish()),
            Arc::new(self.operation.finish()),
            Arc::new(self.primary_key.finish()),
            Arc::new(self.before.finish()),
            Arc::new(self.after.finish()),
            Arc::new(self.indexed_at.finish()),
        ];
        RecordBatch::try_new(SCHEMA.clone(), columns).map_err(corrupt)
    }
}

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("archive file: {error}"))
}

/// Adds every row of `batch` to `digest`, row by row, each value length-prefixed (a null is
/// a length of all ones): the same rows give the same digest, written or read back.
pub fn digest_batch(batch: &RecordBatch, digest: &mut Sha256) -> Result<(), StoreError> {
    if batch.schema().fields() != SCHEMA.fields() {
        return Err(corrupt("its columns are not the archive's"));
    }
    for row in 0..batch.num_rows() {
        for column in batch.columns() {
            digest_value(column, row, digest);
        }
    }
    Ok(())
}

fn digest_value(column: &ArrayRef, row: usize, digest: &mut Sha256) {
    if column.is_null(row) {
        digest.update(u64::MAX.to_le_bytes());
        return;
    }
    match column.data_type() {
        DataType::Utf8 => {
            let text = column.as_string::<i32>().value(row);
            digest.update((text.len() as u64).to_le_bytes());
            digest.update(text.as_bytes());
        }
        DataType::Int64 => {
            digest.update(column.as_primitive::<Int64Type>().value(row).to_le_bytes())
        }
        DataType::Int32 => {
            digest.update(column.as_primitive::<Int32Type>().value(row).to_le_bytes())
        }
        _ => digest.update(
            column
                .as_primitive::<TimestampMicrosecondType>()
                .value(row)
                .to_le_bytes(),
        ),
    }
}

fn text(batch: &RecordBatch, column: usize) -> &StringArray {
    batch.column(column).as_string::<i32>()
}

fn time(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt(format!("time {micros}")))
}

fn json(array: &StringArray, row: usize) -> Result<Option<serde_json::Value>, StoreError> {
    if array.is_null(row) {
        return Ok(None);
    }
    serde_json::from_str(array.value(row))
        .map(Some)
        .map_err(corrupt)
}

/// The sequence of each row of a batch.
pub fn sequences(batch: &RecordBatch) -> &arrow_array::Int64Array {
    batch.column(COLUMN_SEQUENCE).as_primitive::<Int64Type>()
}

/// Row `row` of a batch as the event it stores.
pub fn event_at(batch: &RecordBatch, row: usize) -> Result<ChangeEvent, StoreError> {
    let operation = text(batch, COLUMN_OPERATION).value(row);
    let operation = ChangeOperation::parse(operation)
        .ok_or_else(|| corrupt(format!("operation {operation:?}")))?;
    let committed = batch
        .column(COLUMN_COMMITTED_AT)
        .as_primitive::<TimestampMicrosecondType>();
    Ok(ChangeEvent {
        sequence: sequences(batch).value(row),
        change: RowChange {
            binlog_file: text(batch, 2).value(row).to_owned(),
            binlog_position: batch.column(3).as_primitive::<Int64Type>().value(row),
            row_index: batch.column(4).as_primitive::<Int32Type>().value(row),
            gtid: text(batch, 5).value(row).to_owned(),
            committed_at: time(committed.value(row))?,
            schema: text(batch, COLUMN_SCHEMA).value(row).to_owned(),
            table: text(batch, COLUMN_TABLE).value(row).to_owned(),
            operation,
            primary_key: json(text(batch, COLUMN_PRIMARY_KEY), row)?,
            before: json(text(batch, 11), row)?,
            after: json(text(batch, 12), row)?,
        },
    })
}
