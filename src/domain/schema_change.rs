//! The schema-change feed (ListSchemaChanges): each DDL statement the stream met, once for every
//! table it touched, with the schema snapshot version it produced; and the feed's filter, the
//! change events' AIP-160 subset over schema, table and committed_at.

use chrono::{DateTime, Utc};

use super::change::{ChangeFilter, ChangeFilterError, FilterGrammar};

/// The longest statement text kept, in characters; a longer one is cut and marked truncated.
pub const MAX_STATEMENT_CHARS: usize = 16_384;

/// A DDL statement's text as kept: at most `MAX_STATEMENT_CHARS` characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementText {
    pub text: String,
    pub truncated: bool,
}

impl StatementText {
    /// `statement`, cut to `MAX_STATEMENT_CHARS` characters when longer.
    pub fn capped(statement: &str) -> StatementText {
        match statement.char_indices().nth(MAX_STATEMENT_CHARS) {
            Some((cut, _)) => StatementText {
                text: statement[..cut].to_owned(),
                truncated: true,
            },
            None => StatementText {
                text: statement.to_owned(),
                truncated: false,
            },
        }
    }
}

/// A DDL statement the stream met, for one table it touched.
#[derive(Debug, Clone, PartialEq)]
pub struct Ddl {
    pub binlog_file: String,
    /// Where the statement's event starts.
    pub binlog_position: i64,
    /// Where it ends: the snapshot it produced holds from there on.
    pub ends_at: i64,
    pub gtid: String,
    pub committed_at: DateTime<Utc>,
    pub schema: String,
    pub table: String,
    pub statement: StatementText,
}

/// A stored schema change: the DDL, its place in the feed, and the snapshot version it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaChange {
    pub id: i64,
    pub ddl: Ddl,
    pub snapshot_version: i64,
}

/// The feed's filter: comparisons over schema, table and committed_at, joined by AND.
pub fn parse_filter(input: &str) -> Result<ChangeFilter, ChangeFilterError> {
    ChangeFilter::parse_with(input, FilterGrammar::SCHEMA_CHANGES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_statement_is_cut_at_a_character_and_marked() {
        let short = StatementText::capped("ALTER TABLE t ADD c int");
        assert_eq!(short.text, "ALTER TABLE t ADD c int");
        assert!(!short.truncated);
        let long = format!(
            "ALTER TABLE t COMMENT '{}'",
            "é".repeat(MAX_STATEMENT_CHARS)
        );
        let capped = StatementText::capped(&long);
        assert!(capped.truncated);
        assert_eq!(capped.text.chars().count(), MAX_STATEMENT_CHARS);
        assert!(long.starts_with(&capped.text));
    }

    #[test]
    fn the_filter_takes_schema_table_and_committed_at_only() {
        let filter =
            parse_filter(r#"schema = "shop" AND committed_at >= "2026-12-01T10:00:00Z""#).unwrap();
        assert_eq!(filter.conditions.len(), 2);
        let error = parse_filter("type = insert").unwrap_err();
        assert_eq!(
            error.0,
            "unknown field \"type\" at character 1; filterable fields are schema, table and committed_at"
        );
    }
}
