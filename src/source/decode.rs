//! Row images to JSON (streaming.md §4): each binlog value by its column's declared type, named
//! from the table's columns. Integers beyond 2^53 become strings, DECIMAL a string, temporal
//! types ISO or RFC 3339 strings, binary base64, JSON columns JSON (MySQL's binary JSON and its
//! partial updates included), ENUM and SET their members, NULL null.

use base64::Engine;
use chrono::{DateTime, Utc};
use mysql_common::{
    binlog::{
        events::{OptionalMetaExtractor, RowsEventData, TableMapEvent},
        row::BinlogRow,
        value::BinlogValue,
    },
    constants::ColumnType,
    value::Value,
};
use serde_json::{Map, Value as Json};

use super::jsondiff;
use crate::domain::{ChangeOperation, change::RowChange};

/// Largest integer a JSON number carries exactly.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// How a column's values are written, from its declared type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    Signed,
    /// Unsigned integer of this many bits: the binlog carries it as a signed one.
    Unsigned(u32),
    /// YEAR: a number, 0 for the year 0000.
    Year,
    Decimal,
    Float,
    Date,
    DateTime,
    Timestamp,
    Time,
    Text,
    Binary,
    /// BIT(n): carried as its bytes, big-endian (base64 in JSON, like binary).
    Bit,
    Json,
    Enum(Vec<String>),
    Set(Vec<String>),
}

/// A column of a tracked table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: ColumnKind,
    /// A generated column (virtual or stored): computed by the server, never written.
    pub generated: bool,
}

/// A tracked table's columns, in ordinal order, and its primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumns {
    pub columns: Vec<ColumnInfo>,
    pub primary_key: Vec<String>,
    /// Its foreign keys that cascade on delete (from the snapshot; none from a table map).
    pub cascades: Vec<crate::source::schema::CascadeKey>,
}

/// The quoted members of `enum('a','b')` or `set(...)`.
fn members(column_type: &str) -> Vec<String> {
    let inner = column_type
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map_or("", |(inner, _)| inner);
    let mut members = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('\'', false) => quoted = true,
            ('\'', true) if chars.peek() == Some(&'\'') => {
                current.push('\'');
                chars.next();
            }
            ('\'', true) => {
                quoted = false;
                members.push(std::mem::take(&mut current));
            }
            (c, true) => current.push(c),
            _ => {}
        }
    }
    members
}

impl ColumnKind {
    /// The kind of a column from information_schema's COLUMN_TYPE (e.g. `bigint(20) unsigned`);
    /// `json` says that MariaDB's JSON alias (a checked LONGTEXT) is meant.
    pub fn of(column_type: &str, json: bool) -> ColumnKind {
        let lower = column_type.to_ascii_lowercase();
        let base = lower.split(['(', ' ']).next().unwrap_or_default();
        let unsigned = lower.contains("unsigned");
        match base {
            _ if json => ColumnKind::Json,
            "json" => ColumnKind::Json,
            "tinyint" if unsigned => ColumnKind::Unsigned(8),
            "smallint" if unsigned => ColumnKind::Unsigned(16),
            "mediumint" if unsigned => ColumnKind::Unsigned(24),
            "int" | "integer" if unsigned => ColumnKind::Unsigned(32),
            "bigint" if unsigned => ColumnKind::Unsigned(64),
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => {
                ColumnKind::Signed
            }
            "year" => ColumnKind::Year,
            "decimal" | "numeric" => ColumnKind::Decimal,
            "float" | "double" | "real" => ColumnKind::Float,
            "date" => ColumnKind::Date,
            "datetime" => ColumnKind::DateTime,
            "timestamp" => ColumnKind::Timestamp,
            "time" => ColumnKind::Time,
            "bit" => ColumnKind::Bit,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
            | "geometry" | "point" | "linestring" | "polygon" => ColumnKind::Binary,
            "enum" => ColumnKind::Enum(members(column_type)),
            "set" => ColumnKind::Set(members(column_type)),
            _ => ColumnKind::Text,
        }
    }
}

fn integer(value: u64, negative: bool) -> Json {
    match (negative, value <= MAX_SAFE_INTEGER) {
        (false, true) => Json::from(value),
        (true, true) => Json::from(-(value as i128) as i64),
        (false, false) => Json::String(value.to_string()),
        (true, false) => Json::String(format!("-{value}")),
    }
}

fn fraction(micros: u32) -> String {
    if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    }
}

fn from_int(value: i64, kind: &ColumnKind) -> Json {
    match kind {
        ColumnKind::Unsigned(bits) => {
            let mask = if *bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            integer(value as u64 & mask, false)
        }
        // Without the members (a binlog without full metadata, read offline), the index.
        ColumnKind::Enum(members) if members.is_empty() => Json::from(value),
        ColumnKind::Enum(members) => usize::try_from(value)
            .ok()
            .and_then(|index| members.get(index.checked_sub(1)?))
            .map_or(Json::String(String::new()), |member| {
                Json::String(member.clone())
            }),
        ColumnKind::Set(members) => set_members(value as u64, members),
        _ => integer(value.unsigned_abs(), value < 0),
    }
}

/// A SET's bitmap as its members joined by commas (the bitmap itself without the members).
fn set_members(bits: u64, members: &[String]) -> Json {
    if members.is_empty() {
        return Json::from(bits);
    }
    Json::String(
        members
            .iter()
            .enumerate()
            .filter(|(bit, _)| *bit < 64 && bits & (1 << bit) != 0)
            .map(|(_, member)| member.as_str())
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn from_bytes(bytes: Vec<u8>, kind: &ColumnKind) -> Json {
    match kind {
        // The binlog carries a SET as its bitmap, little-endian, 1 to 8 bytes.
        ColumnKind::Set(members) => {
            let bits = bytes
                .iter()
                .take(8)
                .rev()
                .fold(0u64, |bits, byte| bits << 8 | u64::from(*byte));
            set_members(bits, members)
        }
        // mysql_common reads YEAR as 1900 + the stored byte, whose 0 means the year 0000.
        ColumnKind::Year => match String::from_utf8_lossy(&bytes).parse::<u64>() {
            Ok(1900) => Json::from(0),
            Ok(year) => Json::from(year),
            Err(_) => Json::String(String::from_utf8_lossy(&bytes).into_owned()),
        },
        ColumnKind::Binary | ColumnKind::Bit => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        ColumnKind::Json => serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&bytes).into_owned())),
        ColumnKind::Timestamp => {
            let text = String::from_utf8_lossy(&bytes);
            let (seconds, micros) = text.split_once('.').unwrap_or((&text, "0"));
            let seconds: i64 = seconds.parse().unwrap_or_default();
            let micros: u32 = micros.parse().unwrap_or_default();
            match chrono::DateTime::from_timestamp(seconds, micros * 1000) {
                Some(time) if seconds > 0 || micros > 0 => Json::String(time.to_rfc3339_opts(
                    if micros == 0 {
                        chrono::SecondsFormat::Secs
                    } else {
                        chrono::SecondsFormat::Micros
                    },
                    true,
                )),
                _ => Json::String("0000-00-00T00:00:00Z".into()),
            }
        }
        _ => Json::String(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

/// One binlog value as JSON.
pub fn value_json(value: Value, kind: &ColumnKind) -> Json {
    match value {
        Value::NULL => Json::Null,
        Value::Int(value) => from_int(value, kind),
        Value::UInt(value) => integer(value, false),
        Value::Float(value) => {
            serde_json::Number::from_f64(f64::from(value)).map_or(Json::Null, Json::Number)
        }
        Value::Double(value) => {
            serde_json::Number::from_f64(value).map_or(Json::Null, Json::Number)
        }
        Value::Bytes(bytes) => from_bytes(bytes, kind),
        Value::Date(year, month, day, hour, minute, second, micros) => Json::String(match kind {
            ColumnKind::Date => format!("{year:04}-{month:02}-{day:02}"),
            ColumnKind::Timestamp => format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{}Z",
                fraction(micros)
            ),
            _ => format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{}",
                fraction(micros)
            ),
        }),
        Value::Time(negative, days, hours, minutes, seconds, micros) => Json::String(format!(
            "{}{:02}:{minutes:02}:{seconds:02}{}",
            if negative { "-" } else { "" },
            days * 24 + u32::from(hours),
            fraction(micros)
        )),
    }
}

/// The column index a binlog column stands for: `@3` names the fourth column when the binlog
/// carries no names (mysql_common counts from 0).
fn column_index(name: &str) -> Option<usize> {
    name.strip_prefix('@')?.parse().ok()
}

/// A row image as a JSON object keyed by column name. A JSON column's partial update is applied
/// to the same column of `before`, the image already decoded.
pub fn row_json(
    row: BinlogRow,
    table: &TableColumns,
    before: Option<&Map<String, Json>>,
) -> Result<Map<String, Json>, String> {
    let columns = row.columns();
    let values = row.unwrap();
    let mut object = Map::new();
    for (position, (column, value)) in columns.iter().zip(values).enumerate() {
        let binlog_name = column.name_str();
        // A positional name stands for its column; a real one (full row metadata) is looked up.
        let info = match column_index(&binlog_name) {
            Some(index) => table.columns.get(index),
            None => table
                .columns
                .iter()
                .find(|info| info.name == binlog_name)
                .or_else(|| table.columns.get(position)),
        };
        let (name, kind) = match info {
            Some(info) => (info.name.clone(), &info.kind),
            None => (binlog_name.into_owned(), &ColumnKind::Text),
        };
        let json = match value {
            BinlogValue::Value(value) => value_json(value, kind),
            BinlogValue::Jsonb(value) => jsondiff::jsonb_to_json(&value)?,
            BinlogValue::JsonDiff(diffs) => {
                let Some(previous) = before.and_then(|image| image.get(&name)) else {
                    return Err(format!(
                        "a partial JSON update of column {name} came without its before image"
                    ));
                };
                jsondiff::apply(previous, &diffs)?
            }
        };
        object.insert(name, json);
    }
    Ok(object)
}

/// The primary-key columns of a row image (empty when the table has none).
pub fn primary_key(row: &Map<String, Json>, table: &TableColumns) -> Option<Json> {
    if table.primary_key.is_empty() {
        return None;
    }
    let key: Map<String, Json> = table
        .primary_key
        .iter()
        .map(|name| (name.clone(), row.get(name).cloned().unwrap_or(Json::Null)))
        .collect();
    Some(Json::Object(key))
}

/// A binlog event's timestamp (whole seconds) as a time.
pub fn event_time(timestamp: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(timestamp), 0).unwrap_or_default()
}

/// A transaction's rows take the time of its commit event: a rows event carries its statement's
/// start, which can be seconds before the commit.
pub fn stamp_commit(changes: &mut [RowChange], at: DateTime<Utc>) {
    for change in changes {
        change.committed_at = at;
    }
}

/// Where a row change sits and what it did.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRow<'a> {
    pub file: &'a str,
    /// The rows event's place; for the events of a compressed transaction, the payload's.
    pub position: u64,
    /// The row's place among the rows of that event (or payload).
    pub row_index: usize,
    pub gtid: &'a str,
    pub committed_at: DateTime<Utc>,
    pub schema: &'a str,
    pub table: &'a str,
    pub operation: ChangeOperation,
}

/// One row change with its images decoded.
pub fn change(
    columns: &TableColumns,
    row: ChangeRow<'_>,
    before: Option<BinlogRow>,
    after: Option<BinlogRow>,
) -> Result<RowChange, String> {
    let before = before
        .map(|image| row_json(image, columns, None))
        .transpose()?;
    let after = after
        .map(|image| row_json(image, columns, before.as_ref()))
        .transpose()?;
    let key_image = after.as_ref().or(before.as_ref());
    let primary_key = key_image.and_then(|image| primary_key(image, columns));
    Ok(RowChange {
        binlog_file: row.file.to_owned(),
        binlog_position: i64::try_from(row.position).unwrap_or(i64::MAX),
        row_index: i32::try_from(row.row_index).unwrap_or(i32::MAX),
        gtid: row.gtid.to_owned(),
        committed_at: row.committed_at,
        schema: row.schema.to_owned(),
        table: row.table.to_owned(),
        operation: row.operation,
        primary_key,
        before: before.map(Json::Object),
        after: after.map(Json::Object),
    })
}

/// How many rows a rows event holds, read to the end (a row that cannot be read is an error,
/// not the end of the count).
pub fn row_count(rows: &RowsEventData<'_>, table_map: &TableMapEvent<'_>) -> Result<usize, String> {
    let mut count = 0;
    for row in rows.rows(table_map) {
        row.map_err(|error| format!("a row cannot be read: {error}"))?;
        count += 1;
    }
    Ok(count)
}

/// The binary character set: a string column of it holds bytes.
const BINARY_CHARSET: u16 = 63;

/// A table's columns as its table map describes them, for reading a binlog without the source:
/// names from the full row metadata (`binlog_row_metadata=FULL`), else `@1`, `@2`... as
/// mysqlbinlog prints them; kinds from the column types and the metadata that is there.
pub fn table_map_columns(table_map: &TableMapEvent<'_>) -> TableColumns {
    let count = usize::try_from(table_map.columns_count()).unwrap_or_default();
    let meta = OptionalMetaExtractor::new(table_map.iter_optional_meta()).ok();
    let names: Vec<String> = meta
        .as_ref()
        .map(|meta| {
            meta.iter_column_name()
                .filter_map(|name| Some(name.ok()?.name().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut unsigned = meta
        .as_ref()
        .map(|meta| meta.iter_signedness().take(count).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter();
    let mut charsets = meta
        .as_ref()
        // The default charset repeats for ever: at most one a column.
        .map(|meta| {
            meta.iter_charset()
                .take(count)
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter();
    let columns = (0..count)
        .map(|index| {
            let column_type = table_map.get_column_type(index).ok().flatten();
            let numeric = column_type.is_some_and(|kind| kind.is_numeric_type());
            let is_unsigned = numeric && unsigned.next().unwrap_or(false);
            let character = column_type.is_some_and(|kind| kind.is_character_type());
            let binary = character && charsets.next() == Some(BINARY_CHARSET);
            ColumnInfo {
                name: names
                    .get(index)
                    .cloned()
                    .unwrap_or_else(|| format!("@{}", index + 1)),
                kind: binlog_kind(column_type, is_unsigned, binary),
                generated: false,
            }
        })
        .collect::<Vec<_>>();
    let primary_key = meta
        .as_ref()
        .map(|meta| {
            meta.iter_primary_key()
                .filter_map(|index| columns.get(usize::try_from(index.ok()?).ok()?))
                .map(|column| column.name.clone())
                .collect()
        })
        .unwrap_or_default();
    TableColumns {
        columns,
        primary_key,
        cascades: Vec::new(),
    }
}

/// A column's kind from its binlog type.
fn binlog_kind(column_type: Option<ColumnType>, unsigned: bool, binary: bool) -> ColumnKind {
    use ColumnType::*;
    let Some(column_type) = column_type else {
        return ColumnKind::Text;
    };
    match column_type {
        MYSQL_TYPE_TINY if unsigned => ColumnKind::Unsigned(8),
        MYSQL_TYPE_SHORT if unsigned => ColumnKind::Unsigned(16),
        MYSQL_TYPE_INT24 if unsigned => ColumnKind::Unsigned(24),
        MYSQL_TYPE_LONG if unsigned => ColumnKind::Unsigned(32),
        MYSQL_TYPE_LONGLONG if unsigned => ColumnKind::Unsigned(64),
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
        | MYSQL_TYPE_LONGLONG => ColumnKind::Signed,
        MYSQL_TYPE_YEAR => ColumnKind::Year,
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => ColumnKind::Decimal,
        MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => ColumnKind::Float,
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => ColumnKind::Date,
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => ColumnKind::DateTime,
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => ColumnKind::Timestamp,
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => ColumnKind::Time,
        MYSQL_TYPE_JSON => ColumnKind::Json,
        MYSQL_TYPE_ENUM => ColumnKind::Enum(Vec::new()),
        MYSQL_TYPE_SET => ColumnKind::Set(Vec::new()),
        MYSQL_TYPE_BIT => ColumnKind::Bit,
        MYSQL_TYPE_GEOMETRY => ColumnKind::Binary,
        _ if binary => ColumnKind::Binary,
        _ => ColumnKind::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_column_types() {
        assert_eq!(
            ColumnKind::of("bigint(20) unsigned", false),
            ColumnKind::Unsigned(64)
        );
        assert_eq!(ColumnKind::of("int(11)", false), ColumnKind::Signed);
        assert_eq!(ColumnKind::of("decimal(12,2)", false), ColumnKind::Decimal);
        assert_eq!(ColumnKind::of("longtext", true), ColumnKind::Json);
        assert_eq!(ColumnKind::of("datetime(6)", false), ColumnKind::DateTime);
        assert_eq!(
            ColumnKind::of("enum('a','it''s')", false),
            ColumnKind::Enum(vec!["a".into(), "it's".into()])
        );
        assert_eq!(ColumnKind::of("varbinary(16)", false), ColumnKind::Binary);
        assert_eq!(ColumnKind::of("year(4)", false), ColumnKind::Year);
    }

    #[test]
    fn sets_years_and_bare_enums_map_as_the_binlog_carries_them() {
        let set = ColumnKind::Set(vec!["a".into(), "b".into(), "c".into()]);
        assert_eq!(
            value_json(Value::Bytes(vec![0b101]), &set),
            Json::String("a,c".into())
        );
        assert_eq!(
            value_json(Value::Bytes(vec![0, 1]), &ColumnKind::Set(Vec::new())),
            Json::from(256)
        );
        assert_eq!(
            value_json(Value::Bytes(b"2024".to_vec()), &ColumnKind::Year),
            Json::from(2024)
        );
        assert_eq!(
            value_json(Value::Bytes(b"1900".to_vec()), &ColumnKind::Year),
            Json::from(0)
        );
        assert_eq!(
            value_json(Value::Int(2), &ColumnKind::Enum(Vec::new())),
            Json::from(2)
        );
    }

    #[test]
    fn values_map_to_json_as_the_contract_says() {
        let beyond = (1u64 << 60) + 7;
        assert_eq!(
            value_json(Value::Int(beyond as i64), &ColumnKind::Unsigned(64)),
            Json::String(beyond.to_string())
        );
        assert_eq!(
            value_json(Value::Int(-1), &ColumnKind::Unsigned(64)),
            Json::String(u64::MAX.to_string())
        );
        assert_eq!(
            value_json(Value::Int(-1), &ColumnKind::Unsigned(8)),
            Json::from(255)
        );
        assert_eq!(
            value_json(Value::Int(-5), &ColumnKind::Signed),
            Json::from(-5)
        );
        assert_eq!(
            value_json(Value::Bytes(b"12.50".to_vec()), &ColumnKind::Decimal),
            Json::String("12.50".into())
        );
        assert_eq!(
            value_json(Value::Bytes(vec![0, 255]), &ColumnKind::Binary),
            Json::String("AP8=".into())
        );
        assert_eq!(
            value_json(Value::Bytes(br#"{"a":[1,2]}"#.to_vec()), &ColumnKind::Json),
            serde_json::json!({"a": [1, 2]})
        );
        assert_eq!(
            value_json(
                Value::Date(2026, 12, 2, 10, 5, 1, 250),
                &ColumnKind::DateTime
            ),
            Json::String("2026-12-02T10:05:01.000250".into())
        );
        assert_eq!(
            value_json(Value::Date(2026, 12, 2, 0, 0, 0, 0), &ColumnKind::Date),
            Json::String("2026-12-02".into())
        );
        assert_eq!(
            value_json(Value::Bytes(b"1764669600".to_vec()), &ColumnKind::Timestamp),
            Json::String("2025-12-02T10:00:00Z".into())
        );
        assert_eq!(
            value_json(Value::Time(true, 1, 2, 3, 4, 0), &ColumnKind::Time),
            Json::String("-26:03:04".into())
        );
        assert_eq!(value_json(Value::NULL, &ColumnKind::Text), Json::Null);
        assert_eq!(
            value_json(
                Value::Int(2),
                &ColumnKind::Enum(vec!["a".into(), "b".into()])
            ),
            Json::String("b".into())
        );
    }
}
