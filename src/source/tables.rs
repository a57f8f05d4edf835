//! The columns of the tables a stream decodes, by binlog place: the snapshot history (the
//! snapshotting step's snapshot, then one version per DDL statement the stream met, each holding
//! from that statement on), so a row is decoded with the columns its table had when it was
//! written, a replay after a reconnect included. A DDL statement met for the first time is followed
//! by a read of the table from the source's information_schema.

use std::collections::HashMap;

use mysql_async::Conn;

use super::{
    connection::{MysqlFailure, mysql::Endpoint},
    decode::{ColumnInfo, ColumnKind, TableColumns},
    schema::{CascadeKey, SnapshotLimits, Table, read_tables},
};
use crate::{
    domain::{server::StreamOptions, stream::BinlogPoint},
    store::SnapshotVersion,
};

/// A table's columns from a binlog place on (from the start when `since` is none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    since: Option<BinlogPoint>,
    columns: Option<TableColumns>,
}

/// The tracked tables' column versions by (schema, table), and the stream options that decide,
/// row by row, which of them are captured.
#[derive(Debug, Default)]
pub struct Tables {
    versions: HashMap<(String, String), Vec<Version>>,
    /// The server's stream options as the connection began: a snapshot taken under other
    /// options (or an older rule) may hold tables that they no longer include.
    options: StreamOptions,
}

impl From<Table> for TableColumns {
    fn from(table: Table) -> TableColumns {
        TableColumns {
            columns: table
                .columns
                .into_iter()
                .map(|column| ColumnInfo {
                    kind: ColumnKind::of(&column.column_type, column.json),
                    name: column.name,
                    generated: column.generated,
                })
                .collect(),
            primary_key: table.primary_key,
            cascades: table.cascades,
        }
    }
}

fn key(schema: &str, table: &str) -> (String, String) {
    (schema.to_owned(), table.to_owned())
}

impl Tables {
    /// The versions of the stored snapshots, captured as `options` include them. A snapshot of
    /// the snapshotting step (no place) starts the history afresh; a later one adds a version of
    /// each table that it changes.
    pub fn from_history(
        history: Vec<SnapshotVersion>,
        options: &StreamOptions,
    ) -> Result<Tables, serde_json::Error> {
        let mut tables = Tables {
            options: options.clone(),
            ..Tables::default()
        };
        for version in history {
            let since = version.since.map(|(file, position)| BinlogPoint {
                file,
                position: u64::try_from(position).unwrap_or_default(),
            });
            let snapshot: Vec<Table> = serde_json::from_value(version.snapshot)?;
            let mut present: HashMap<(String, String), TableColumns> = snapshot
                .into_iter()
                .map(|table| (key(&table.schema, &table.name), table.into()))
                .collect();
            if since.is_none() {
                tables.versions.clear();
            }
            let known: Vec<(String, String)> = tables.versions.keys().cloned().collect();
            for table in known {
                let columns = present.remove(&table);
                tables.add(table, since.clone(), columns);
            }
            for (table, columns) in present {
                tables.add(table, since.clone(), Some(columns));
            }
        }
        Ok(tables)
    }

    /// Adds a version unless it changes nothing.
    fn add(
        &mut self,
        table: (String, String),
        since: Option<BinlogPoint>,
        columns: Option<TableColumns>,
    ) {
        let versions = self.versions.entry(table).or_default();
        if versions.last().map(|last| &last.columns) != Some(&columns) {
            versions.push(Version { since, columns });
        }
    }

    /// The columns a row of `schema.table` written at `at` is decoded with, if it is tracked and
    /// the stream options include it.
    pub fn get(&self, schema: &str, table: &str, at: &BinlogPoint) -> Option<&TableColumns> {
        if !self.options.includes(schema, table) {
            return None;
        }
        self.versions
            .get(&key(schema, table))?
            .iter()
            .rev()
            .find(|version| version.since.as_ref().is_none_or(|since| since <= at))?
            .columns
            .as_ref()
    }

    /// The tables whose foreign keys cascade from deletes of `parent` (schema, table) at `at`:
    /// each child (schema, table), its columns then and the key, ordered by name.
    pub fn cascading_children(
        &self,
        (parent_schema, parent_table): (&str, &str),
        at: &BinlogPoint,
    ) -> Vec<(&str, &str, &TableColumns, &CascadeKey)> {
        let mut children = Vec::new();
        for (schema, table) in self.versions.keys() {
            let Some(columns) = self.get(schema, table, at) else {
                continue;
            };
            for key in &columns.cascades {
                if key.parent_schema == parent_schema && key.parent_table == parent_table {
                    children.push((schema.as_str(), table.as_str(), columns, key));
                }
            }
        }
        children.sort_by(|a, b| (a.0, a.1, &a.3.name).cmp(&(b.0, b.1, &b.3.name)));
        children
    }

    /// Whether a DDL statement at `at` already has its version of `schema.table` (a replay).
    pub fn has_version_at(&self, schema: &str, table: &str, at: &BinlogPoint) -> bool {
        self.versions
            .get(&key(schema, table))
            .is_some_and(|versions| {
                versions
                    .iter()
                    .any(|version| version.since.as_ref() == Some(at))
            })
    }

    /// Reads one table's columns from the source (after a DDL at `at` touched it) as its version
    /// from `at` on; a table that is gone has none. Returns what was read, for the snapshot.
    pub async fn reload(
        &mut self,
        connection: &mut Conn,
        address: &Endpoint,
        (options, limits): (&StreamOptions, SnapshotLimits),
        mariadb: bool,
        (schema, table): (&str, &str),
        at: &BinlogPoint,
    ) -> Result<Option<Table>, MysqlFailure> {
        let fresh = read_tables(
            connection,
            address,
            options,
            limits,
            mariadb,
            Some((schema, table)),
        )
        .await?
        .into_iter()
        // MySQL may match the names without regard to case: keep the very table.
        .find(|read| (read.schema.as_str(), read.name.as_str()) == (schema, table));
        let columns = fresh.clone().map(TableColumns::from);
        self.versions
            .entry(key(schema, table))
            .or_default()
            .push(Version {
                since: Some(at.clone()),
                columns,
            });
        Ok(fresh)
    }
}

/// The tables a DDL statement names, as (schema, table), `default_schema` filling in unqualified
/// names. Recognises ALTER, CREATE, DROP, RENAME and TRUNCATE TABLE; anything else touches none.
/// Comments are no names (MariaDB logs `DROP TABLE t /* generated by server */`).
pub fn ddl_tables(statement: &str, default_schema: &str) -> Vec<(String, String)> {
    let words: Vec<String> = without_comments(statement)
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '(')
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect();
    let upper: Vec<String> = words.iter().map(|word| word.to_ascii_uppercase()).collect();
    let Some(verb) = upper.first() else {
        return Vec::new();
    };
    if !matches!(
        verb.as_str(),
        "ALTER" | "CREATE" | "DROP" | "RENAME" | "TRUNCATE"
    ) {
        return Vec::new();
    }
    let Some(table_at) = upper
        .iter()
        .position(|word| word == "TABLE" || word == "TABLES")
    else {
        return Vec::new();
    };
    let skip = ["IF", "NOT", "EXISTS", "TEMPORARY", "TO", "ONLINE", "IGNORE"];
    let mut names = Vec::new();
    let mut index = table_at + 1;
    while index < words.len() {
        let upper_word = &upper[index];
        if skip.contains(&upper_word.as_str()) {
            index += 1;
            continue;
        }
        // DROP TABLE t RESTRICT, DROP TABLE t CASCADE, DROP TABLE t WAIT 5: no more names.
        if matches!(
            upper_word.as_str(),
            "RESTRICT" | "CASCADE" | "WAIT" | "NOWAIT"
        ) {
            break;
        }
        names.push(qualified(&words[index], default_schema));
        // RENAME TABLE a TO b, c TO d and DROP TABLE a, b name several; ALTER names one.
        if verb != "RENAME" && verb != "DROP" {
            break;
        }
        index += 1;
    }
    names
}

/// `statement` with its comments (`/* */`, `-- `, `#`) turned into spaces; quoted strings and
/// names are kept as they are.
fn without_comments(statement: &str) -> String {
    let mut kept = String::with_capacity(statement.len());
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                kept.push(c);
                for inner in chars.by_ref() {
                    kept.push(inner);
                    if inner == c {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for inner in chars.by_ref() {
                    if last == '*' && inner == '/' {
                        break;
                    }
                    last = inner;
                }
                kept.push(' ');
            }
            '#' => {
                chars.by_ref().find(|inner| *inner == '\n');
                kept.push(' ');
            }
            '-' if chars.peek() == Some(&'-') => {
                chars.next();
                // `-- ` starts a comment only before a space or the end (`a--1` is arithmetic).
                if chars.peek().is_none_or(|next| next.is_whitespace()) {
                    chars.by_ref().find(|inner| *inner == '\n');
                    kept.push(' ');
                } else {
                    kept.push_str("--");
                }
            }
            other => kept.push(other),
        }
    }
    kept
}

fn qualified(name: &str, default_schema: &str) -> (String, String) {
    let unquote = |part: &str| part.trim_matches('`').to_owned();
    match name.split_once('.') {
        Some((schema, table)) => (unquote(schema), unquote(table)),
        None => (default_schema.to_owned(), unquote(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fields::{Identifier, QualifiedTable};

    fn snapshot(columns: &[&str]) -> serde_json::Value {
        let columns: Vec<serde_json::Value> = columns
            .iter()
            .map(|name| serde_json::json!({"name": name, "column_type": "int(11)", "nullable": true}))
            .collect();
        serde_json::json!([{
            "schema": "shop", "name": "w", "engine": "InnoDB",
            "primary_key": ["id"], "columns": columns,
        }])
    }

    fn names(tables: &Tables, position: u64) -> Vec<String> {
        let at = BinlogPoint {
            file: "mysql-bin.000001".into(),
            position,
        };
        tables
            .get("shop", "w", &at)
            .map(|table| {
                table
                    .columns
                    .iter()
                    .map(|column| column.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn rows_are_decoded_with_the_columns_of_their_time() {
        let version = |since: Option<u64>, columns: &[&str]| SnapshotVersion {
            since: since.map(|position| ("mysql-bin.000001".to_owned(), position as i64)),
            snapshot: snapshot(columns),
        };
        let tables = Tables::from_history(
            vec![
                version(None, &["id", "a", "b"]),
                version(Some(500), &["id", "a"]),
                version(Some(900), &["id", "a", "c"]),
            ],
            &StreamOptions::default(),
        )
        .unwrap();
        assert_eq!(names(&tables, 100), ["id", "a", "b"]);
        assert_eq!(names(&tables, 600), ["id", "a"]);
        assert_eq!(names(&tables, 900), ["id", "a", "c"]);
        let at = |position| BinlogPoint {
            file: "mysql-bin.000001".into(),
            position,
        };
        assert!(tables.has_version_at("shop", "w", &at(500)));
        assert!(!tables.has_version_at("shop", "w", &at(501)));
        // A new snapshot of the snapshotting step starts the history afresh.
        let tables = Tables::from_history(
            vec![
                version(None, &["id", "a", "b"]),
                version(Some(500), &["id", "a"]),
                version(None, &["id", "z"]),
            ],
            &StreamOptions::default(),
        )
        .unwrap();
        assert_eq!(names(&tables, 100), ["id", "z"]);
    }

    #[test]
    fn tables_the_options_leave_out_are_not_decoded_though_the_snapshot_has_them() {
        // A snapshot taken under the old rule (schemas or tables) holds shop.w; the options now
        // exclude it, so its rows are not captured.
        let history = || {
            vec![SnapshotVersion {
                since: None,
                snapshot: snapshot(&["id", "a"]),
            }]
        };
        let at = BinlogPoint {
            file: "mysql-bin.000001".into(),
            position: 4,
        };
        let parse = |table: &str| QualifiedTable::parse(table).unwrap();
        let kept = Tables::from_history(history(), &StreamOptions::default()).unwrap();
        assert!(kept.get("shop", "w", &at).is_some());

        let excluded = StreamOptions {
            exclude_tables: vec![parse("shop.w")],
            ..StreamOptions::default()
        };
        let tables = Tables::from_history(history(), &excluded).unwrap();
        assert!(tables.get("shop", "w", &at).is_none());

        let other_table_of_the_schema = StreamOptions {
            schemas: vec![Identifier::parse("shop").unwrap()],
            tables: vec![parse("shop.orders")],
            ..StreamOptions::default()
        };
        let tables = Tables::from_history(history(), &other_table_of_the_schema).unwrap();
        assert!(tables.get("shop", "w", &at).is_none());
    }

    #[test]
    fn children_are_the_tables_whose_keys_cascade_from_the_parent() {
        let snapshot = serde_json::json!([
            {"schema": "shop", "name": "p", "engine": "InnoDB", "primary_key": ["id"],
             "columns": [{"name": "id", "column_type": "int(11)", "nullable": false}]},
            {"schema": "shop", "name": "c", "engine": "InnoDB", "primary_key": ["id"],
             "columns": [{"name": "id", "column_type": "int(11)", "nullable": false},
                         {"name": "p_id", "column_type": "int(11)", "nullable": true}],
             "cascades": [{"name": "c_p", "parent_schema": "shop", "parent_table": "p",
                           "columns": [["p_id", "id"]]}]},
        ]);
        let tables = Tables::from_history(
            vec![SnapshotVersion {
                since: None,
                snapshot,
            }],
            &StreamOptions::default(),
        )
        .unwrap();
        let at = BinlogPoint {
            file: "mysql-bin.000001".into(),
            position: 4,
        };
        let children = tables.cascading_children(("shop", "p"), &at);
        assert_eq!(children.len(), 1);
        assert_eq!((children[0].0, children[0].1), ("shop", "c"));
        assert_eq!(
            children[0].3.columns,
            [("p_id".to_owned(), "id".to_owned())]
        );
        assert!(tables.cascading_children(("shop", "c"), &at).is_empty());
    }

    /// The test's MySQL statements, one a line, kept out of src/ as a fixture.
    const DDL_STATEMENTS: &str = include_str!("../../tests/fixtures/ddl_tables.sql");

    #[test]
    fn ddl_names_the_tables_it_touches() {
        let statements: Vec<&str> = DDL_STATEMENTS
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with("--"))
            .collect();
        let pair = |schema: &str, table: &str| (schema.to_owned(), table.to_owned());
        // Each statement's default schema and the tables it touches, in the fixture's order.
        let expected = [
            ("shop", vec![pair("shop", "orders")]),
            ("shop", vec![pair("crm", "people")]),
            ("s", vec![pair("s", "t1")]),
            ("s", vec![pair("s", "a"), pair("s", "b")]),
            ("s", vec![]),
            ("s", vec![]),
        ];
        assert_eq!(statements.len(), expected.len());
        for (statement, (schema, tables)) in statements.into_iter().zip(expected) {
            assert_eq!(ddl_tables(statement, schema), tables, "{statement}");
        }
    }

    #[test]
    fn comments_and_drop_options_are_no_table_names() {
        let names = |statement| ddl_tables(statement, "s");
        assert_eq!(
            names("DROP TABLE `shop`.`orders` /* generated by server */"),
            vec![("shop".into(), "orders".into())]
        );
        assert_eq!(
            names("DROP TABLE IF EXISTS a, b CASCADE"),
            vec![("s".into(), "a".into()), ("s".into(), "b".into())]
        );
        assert_eq!(
            names("ALTER /* why */ TABLE t ADD c int -- a note\n"),
            vec![("s".into(), "t".into())]
        );
        assert_eq!(
            names("ALTER TABLE t # a note\n ADD c int"),
            vec![("s".into(), "t".into())]
        );
        assert_eq!(
            names("DROP TABLE `odd/*name` RESTRICT"),
            vec![("s".into(), "odd/*name".into())]
        );
    }
}
