//! Captured row changes as ListChangeEvents returns them (streaming.md §4), and its filter: an
//! AIP-160 subset, comparisons over schema, table, type, committed_at and gtid joined by AND.

use chrono::{DateTime, Utc};

use super::comparisons::{self, Fields, Written};

pub use super::ChangeOperation;
pub use super::comparisons::{Comparison, MAX_LENGTH};

/// Most event ids one RevertChanges call may list: as many as the longest ids make a URL that
/// HTTP servers accept (under 64 KiB over REST: `event_ids=` and 286 characters each).
pub const MAX_EVENT_IDS: usize = 200;
/// An event id's form: a binlog file name as MySQL makes them, a position, a row index.
pub const EVENT_ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,255}:[0-9]{1,19}:[0-9]{1,10}$";
/// Longest GetRowHistory key (a JSON object), in characters.
pub const MAX_ROW_KEY_LENGTH: usize = 4096;

/// One captured row change: where it sits in the binlog, what it did, and the row images.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub binlog_file: String,
    pub binlog_position: i64,
    /// The row's place among the rows of its binlog event.
    pub row_index: i32,
    pub gtid: String,
    pub committed_at: DateTime<Utc>,
    pub schema: String,
    pub table: String,
    pub operation: ChangeOperation,
    pub primary_key: Option<serde_json::Value>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl RowChange {
    /// The change's stable id: the same binlog row always gets the same one.
    pub fn event_id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.binlog_file, self.binlog_position, self.row_index
        )
    }
}

/// A change's id as `RowChange::event_id` writes it: `binlog file:position:row index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    pub binlog_file: String,
    pub binlog_position: i64,
    pub row_index: i32,
}

impl EventId {
    /// Parses `mysql-bin.000003:4711:0`; the problem otherwise, said so the client can fix it.
    pub fn parse(text: &str) -> Result<EventId, String> {
        let malformed = || {
            format!(
                "{:?} is not an event id (binlog file:position:row index, as ListChangeEvents \
                 returns it, e.g. \"mysql-bin.000003:4711:0\")",
                text.chars().take(100).collect::<String>()
            )
        };
        let mut parts = text.splitn(3, ':');
        let (Some(file), Some(position), Some(row_index)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let number = |part: &str| {
            !part.is_empty() && part.len() <= 19 && part.bytes().all(|byte| byte.is_ascii_digit())
        };
        let valid_file = !file.is_empty()
            && file.len() <= super::stream::MAX_BINLOG_FILE_LENGTH
            && file
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
        if !(valid_file && number(position) && number(row_index)) {
            return Err(malformed());
        }
        Ok(EventId {
            binlog_file: file.to_owned(),
            binlog_position: position.parse().map_err(|_| malformed())?,
            row_index: row_index.parse().map_err(|_| malformed())?,
        })
    }
}

/// A stored row change and its place in the server's index (binlog order).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub sequence: i64,
    pub change: RowChange,
}

/// A filterable field of a change event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeField {
    Schema,
    Table,
    Type,
    Gtid,
}

/// One comparison of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeCondition {
    Text {
        field: ChangeField,
        comparison: Comparison,
        value: String,
    },
    CommittedAt {
        comparison: Comparison,
        value: DateTime<Utc>,
    },
}

/// A parsed ListChangeEvents filter: every condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeFilter {
    pub conditions: Vec<ChangeCondition>,
}

/// Which fields a filter of one call may compare: its text fields, and `committed_at` (None).
#[derive(Debug, Clone, Copy)]
pub struct FilterGrammar {
    fields: Fields<Option<ChangeField>>,
}

impl FilterGrammar {
    /// ListChangeEvents' filter.
    pub const CHANGE_EVENTS: FilterGrammar = FilterGrammar {
        fields: Fields {
            names: &[
                ("schema", Some(ChangeField::Schema)),
                ("table", Some(ChangeField::Table)),
                ("type", Some(ChangeField::Type)),
                ("committed_at", None),
                ("gtid", Some(ChangeField::Gtid)),
            ],
            listed: "schema, table, type, committed_at and gtid",
        },
    };
    /// ListSchemaChanges' filter.
    pub const SCHEMA_CHANGES: FilterGrammar = FilterGrammar {
        fields: Fields {
            names: &[
                ("schema", Some(ChangeField::Schema)),
                ("table", Some(ChangeField::Table)),
                ("committed_at", None),
            ],
            listed: "schema, table and committed_at",
        },
    };
}

/// Why a filter was rejected, said so that the client can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChangeFilterError(pub String);

impl ChangeFilter {
    /// Parses `table = "orders" AND committed_at >= "2026-12-01T10:00:00Z"`; empty is no filter.
    pub fn parse(input: &str) -> Result<ChangeFilter, ChangeFilterError> {
        ChangeFilter::parse_with(input, FilterGrammar::CHANGE_EVENTS)
    }

    /// Parses a filter over the fields of `grammar`.
    pub fn parse_with(
        input: &str,
        grammar: FilterGrammar,
    ) -> Result<ChangeFilter, ChangeFilterError> {
        let conditions = comparisons::parse(input, &grammar.fields)
            .map_err(ChangeFilterError)?
            .into_iter()
            .map(condition)
            .collect::<Result<_, _>>()?;
        Ok(ChangeFilter { conditions })
    }
}

/// What one written comparison means: a text field's value, or a commit time.
fn condition(written: Written<Option<ChangeField>>) -> Result<ChangeCondition, ChangeFilterError> {
    let Written {
        field,
        comparison,
        value,
        value_position,
    } = written;
    match field {
        Some(ChangeField::Type) if ChangeOperation::parse(&value).is_none() => {
            Err(ChangeFilterError(format!(
                "type {value:?} at character {value_position} is not one of insert, update, delete"
            )))
        }
        Some(field) => Ok(ChangeCondition::Text {
            field,
            comparison,
            value,
        }),
        None => {
            let value = DateTime::parse_from_rfc3339(&value)
                .map_err(|_| {
                    ChangeFilterError(format!(
                        "committed_at {value:?} at character {value_position} is not an RFC 3339 time such as \"2026-12-01T10:00:00Z\""
                    ))
                })?
                .with_timezone(&Utc);
            Ok(ChangeCondition::CommittedAt { comparison, value })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conjunctions_of_comparisons() {
        let filter = ChangeFilter::parse(
            r#"table = "orders" AND committed_at >= "2026-12-01T10:00:00Z" AND type!=delete"#,
        )
        .unwrap();
        assert_eq!(filter.conditions.len(), 3);
        assert_eq!(
            filter.conditions[0],
            ChangeCondition::Text {
                field: ChangeField::Table,
                comparison: Comparison::Equals,
                value: "orders".into()
            }
        );
        assert!(matches!(
            filter.conditions[1],
            ChangeCondition::CommittedAt {
                comparison: Comparison::GreaterOrEqual,
                ..
            }
        ));
        assert!(ChangeFilter::parse("  ").unwrap().conditions.is_empty());
    }

    #[test]
    fn event_ids_parse_as_they_are_written() {
        assert_eq!(
            EventId::parse("mysql-bin.000003:4711:2").unwrap(),
            EventId {
                binlog_file: "mysql-bin.000003".into(),
                binlog_position: 4711,
                row_index: 2
            }
        );
        for bad in [
            "",
            "a:1",
            "a:b:1",
            ":1:2",
            "f:1:-2",
            "f:99999999999999999999:0",
            "f\n:1:0",
            "a:b:1:2",
            "f x:1:0",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejections_name_the_problem() {
        let error = ChangeFilter::parse("colour = red").unwrap_err();
        assert!(error.0.contains("unknown field \"colour\""), "{error}");
        let error = ChangeFilter::parse("type = upsert").unwrap_err();
        assert!(error.0.contains("not one of insert"), "{error}");
        let error = ChangeFilter::parse("committed_at > yesterday").unwrap_err();
        assert!(error.0.contains("RFC 3339"), "{error}");
        let error = ChangeFilter::parse("table = a OR table = b").unwrap_err();
        assert!(error.0.contains("expected AND"), "{error}");
        let error = ChangeFilter::parse("table ~ a").unwrap_err();
        assert!(error.0.contains("expected a comparison"), "{error}");
        let error = ChangeFilter::parse(r#"table = "open"#).unwrap_err();
        assert!(error.0.contains("not closed"), "{error}");
        let error = ChangeFilter::parse("table = \"a\u{0}b\"").unwrap_err();
        assert_eq!(
            error.0,
            "control character U+0000 at character 11 is not allowed in a filter"
        );
    }
}
