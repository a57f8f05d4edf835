//! Row images to JSON (streaming.md §4): each binlog value by its column's declared type, named
//! from the table's columns. Integers beyond 2^53 become strings, DECIMAL a string, temporal
//! types ISO or RFC 3339 strings, binary base64, JSON columns JSON, NULL null.

use base64::Engine;
use mysql_async::{
    Value,
    binlog::{row::BinlogRow, value::BinlogValue},
};
use serde_json::{Map, Value as Json};

/// Largest integer a JSON number carries exactly.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// How a column's values are written, from its declared type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    Signed,
    /// Unsigned integer of this many bits: the binlog carries it as a signed one.
    Unsigned(u32),
    Decimal,
    Float,
    Date,
    DateTime,
    Timestamp,
    Time,
    Text,
    Binary,
    Json,
    Enum(Vec<String>),
    Set(Vec<String>),
}

/// A column of a tracked table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: ColumnKind,
}

/// A tracked table's columns, in ordinal order, and its primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumns {
    pub columns: Vec<ColumnInfo>,
    pub primary_key: Vec<String>,
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
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
                ColumnKind::Signed
            }
            "decimal" | "numeric" => ColumnKind::Decimal,
            "float" | "double" | "real" => ColumnKind::Float,
            "date" => ColumnKind::Date,
            "datetime" => ColumnKind::DateTime,
            "timestamp" => ColumnKind::Timestamp,
            "time" => ColumnKind::Time,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "bit"
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
        ColumnKind::Enum(members) => usize::try_from(value)
            .ok()
            .and_then(|index| members.get(index.checked_sub(1)?))
            .map_or(Json::String(String::new()), |member| {
                Json::String(member.clone())
            }),
        ColumnKind::Set(members) => Json::String(
            members
                .iter()
                .enumerate()
                .filter(|(bit, _)| *bit < 64 && value as u64 & (1 << bit) != 0)
                .map(|(_, member)| member.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => integer(value.unsigned_abs(), value < 0),
    }
}

fn from_bytes(bytes: Vec<u8>, kind: &ColumnKind) -> Json {
    match kind {
        ColumnKind::Binary => Json::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
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
/// carries no names.
fn column_index(name: &str) -> Option<usize> {
    name.strip_prefix('@')?.parse().ok()
}

/// A row image as a JSON object keyed by column name.
pub fn row_json(row: BinlogRow, table: &TableColumns) -> Map<String, Json> {
    let columns = row.columns();
    let values = row.unwrap();
    let mut object = Map::new();
    for (position, (column, value)) in columns.iter().zip(values).enumerate() {
        let binlog_name = column.name_str();
        let index = column_index(&binlog_name).unwrap_or(position);
        let info = table
            .columns
            .iter()
            .find(|info| info.name == binlog_name)
            .or_else(|| table.columns.get(index));
        let (name, kind) = match info {
            Some(info) => (info.name.clone(), &info.kind),
            None => (binlog_name.into_owned(), &ColumnKind::Text),
        };
        let json = match value {
            BinlogValue::Value(value) => value_json(value, kind),
            other => Value::try_from(other)
                .map_or(Json::Null, |value| value_json(value, &ColumnKind::Json)),
        };
        object.insert(name, json);
    }
    object
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
