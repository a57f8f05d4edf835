//! B10's baseline: the physical limit of reader plus sink on this machine. A minimal pipeline
//! reads and decodes the burst with mysql_async on one task and writes the same rows (as JSON
//! images, with the change index's columns) with `COPY ... FROM STDIN (FORMAT binary)` into the
//! same `change_events` table on another, a bounded channel between them, and nothing else: no
//! checkpoint, no fence, no column names from a snapshot (the bench table's are known).

use std::{fmt::Write as _, time::Instant};

use futures_util::{StreamExt, pin_mut};
use mysql_async::{
    BinlogStreamRequest, Conn, Value,
    binlog::{events::EventData, value::BinlogValue},
};
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    types::{IsNull, ToSql, Type, to_sql_checked},
};

use crate::mariadb::MasterStatus;

/// Rows per COPY (the service's batch).
const BATCH: usize = 5_000;
/// Batches the channel holds.
const CHANNEL: usize = 4;
/// The bench table's columns, in order.
const COLUMNS: [&str; 4] = ["id", "a", "note", "amount"];

/// One decoded row: its key and its image as JSON text.
struct Decoded {
    position: i64,
    row_index: i32,
    key: String,
    after: String,
}

/// A value as JSON, written straight into `out`.
fn json_value(out: &mut String, value: &BinlogValue<'_>) {
    match value {
        BinlogValue::Value(Value::NULL) => out.push_str("null"),
        BinlogValue::Value(Value::Int(number)) => write!(out, "{number}").expect("a String"),
        BinlogValue::Value(Value::UInt(number)) => write!(out, "{number}").expect("a String"),
        BinlogValue::Value(Value::Bytes(bytes)) => {
            let text = String::from_utf8_lossy(bytes);
            out.push_str(&serde_json::to_string(&text).expect("a string as JSON"));
        }
        other => out.push_str(&serde_json::to_string(&format!("{other:?}")).expect("JSON")),
    }
}

/// The row's image as a JSON object, and its key (`{"id": ...}`).
fn json_row(values: &[BinlogValue<'_>]) -> (String, String) {
    let mut after = String::with_capacity(96);
    after.push('{');
    for (index, (name, value)) in COLUMNS.iter().zip(values).enumerate() {
        if index > 0 {
            after.push(',');
        }
        write!(after, "\"{name}\":").expect("a String");
        json_value(&mut after, value);
    }
    after.push('}');
    let mut key = String::from("{\"id\":");
    json_value(&mut key, &values[0]);
    key.push('}');
    (key, after)
}

/// Reads `rows` rows of the binlog from `from`, decoding them, and hands them on in batches.
async fn read(
    connection: Conn,
    from: &MasterStatus,
    rows: u64,
    batches: tokio::sync::mpsc::Sender<Vec<Decoded>>,
) {
    let request = BinlogStreamRequest::new(4_000_000_002)
        .with_filename(from.file.as_bytes())
        .with_pos(from.position);
    let mut stream = connection
        .get_binlog_stream(request)
        .await
        .expect("a binlog stream");
    let (mut read, mut batch) = (0u64, Vec::with_capacity(BATCH));
    while read < rows {
        let event = stream
            .next()
            .await
            .expect("the stream goes on")
            .expect("an event");
        let position = i64::from(event.header().log_pos());
        let Ok(Some(EventData::RowsEvent(data))) = event.read_data() else {
            continue;
        };
        let Some(table) = stream.get_tme(data.table_id()) else {
            continue;
        };
        for (index, row) in data.rows(table).enumerate() {
            let (_, after) = row.expect("a decodable row");
            let values = after.expect("an inserted row").unwrap();
            let (key, after) = json_row(&values);
            batch.push(Decoded {
                position,
                row_index: index as i32,
                key,
                after,
            });
            read += 1;
        }
        if batch.len() >= BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            batches.send(full).await.expect("the writer runs");
        }
    }
    if !batch.is_empty() {
        batches.send(batch).await.expect("the writer runs");
    }
    let _ = stream.close().await;
}

/// COPYs each batch into `change_events` (in binary), in a transaction of its own.
async fn write(
    mut postgres: tokio_postgres::Client,
    mut batches: tokio::sync::mpsc::Receiver<Vec<Decoded>>,
) {
    let server_id = uuid::Uuid::new_v4();
    let now = chrono::Utc::now();
    let types = [
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
    let mut sequence = 0i64;
    while let Some(batch) = batches.recv().await {
        let transaction = postgres.transaction().await.expect("BEGIN");
        let sink = transaction
            .copy_in(
                "COPY change_events (server_id, sequence, binlog_file, binlog_position, \
                 row_index, gtid, committed_at, schema_name, table_name, operation, \
                 primary_key, row_before, row_after) FROM STDIN (FORMAT binary)",
            )
            .await
            .expect("COPY");
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for row in &batch {
            sequence += 1;
            let key = RawJsonb(&row.key);
            let after = RawJsonb(&row.after);
            let none: Option<RawJsonb<'_>> = None;
            writer
                .as_mut()
                .write(&[
                    &server_id,
                    &sequence,
                    &"mariadb-bin.000001",
                    &row.position,
                    &row.row_index,
                    &"",
                    &now,
                    &"shop",
                    &"events",
                    &"insert",
                    &Some(key),
                    &none,
                    &Some(after),
                ])
                .await
                .expect("a COPY row");
        }
        writer.finish().await.expect("the COPY ends");
        transaction.commit().await.expect("COMMIT");
    }
    drop(postgres);
}

/// JSON text sent as a jsonb value as it is: jsonb's binary form is a version byte and the text.
#[derive(Debug)]
struct RawJsonb<'a>(&'a str);

impl ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// The baseline's rate: rows per second from the first read to the last COPY's commit.
pub async fn reader_and_copy(
    connection: Conn,
    postgres: tokio_postgres::Client,
    from: &MasterStatus,
    rows: u64,
) -> f64 {
    let started = Instant::now();
    let (sender, receiver) = tokio::sync::mpsc::channel(CHANNEL);
    let writer = tokio::spawn(write(postgres, receiver));
    read(connection, from, rows, sender).await;
    writer.await.expect("the writer finished");
    rows as f64 / started.elapsed().as_secs_f64()
}
