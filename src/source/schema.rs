//! Schema reading: the tables, columns, primary keys and engines of a customer's MySQL as
//! information_schema lists them (honouring stream_options, skipping system schemas), filtered in
//! MySQL and bounded. The snapshotting step reads them all; a stream re-reads one table after a
//! DDL statement.

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::{
    Conn,
    prelude::{FromRow, Queryable},
};
use serde::{Deserialize, Serialize};

use super::connection::{MysqlFailure, mysql::Endpoint};
use crate::domain::{fields::QualifiedTable, server::StreamOptions};

const SYSTEM_SCHEMAS: &str = "'mysql', 'information_schema', 'performance_schema', 'sys'";

/// One column of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub column_type: String,
    pub nullable: bool,
    /// MariaDB's JSON: a LONGTEXT with a json_valid() check, which only the check tells apart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub json: bool,
    /// A generated column (information_schema's EXTRA says VIRTUAL, STORED or PERSISTENT
    /// GENERATED). Snapshots stored before this flag existed say false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generated: bool,
}

/// One table of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Table {
    pub schema: String,
    pub name: String,
    pub engine: Option<String>,
    pub primary_key: Vec<String>,
    pub columns: Vec<Column>,
    /// This table's foreign keys that cascade on delete (InnoDB deletes its rows with their
    /// parent's, and the binlog never logs them). Snapshots stored before this existed say none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cascades: Vec<CascadeKey>,
}

/// A foreign key `ON DELETE CASCADE`: the parent table it references and its column pairs
/// (this table's column, the parent's column), in the key's order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CascadeKey {
    pub name: String,
    pub parent_schema: String,
    pub parent_table: String,
    pub columns: Vec<(String, String)>,
}

impl Table {
    /// `schema.name`, as messages name it.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// How much of information_schema one snapshot may read: more rows than these, or more than
/// [`MAX_SNAPSHOT_BYTES`] of names and types in one query, fail the step with a message saying
/// how to narrow it, instead of filling the replica's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLimits {
    pub max_tables: usize,
    pub max_columns: usize,
}

/// The most bytes of values one information_schema query of a snapshot may return.
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// The condition that selects, in an information_schema table whose schema column is
/// `schema_column`, the one table `only` names or else the user tables stream_options include;
/// with its parameters. The filters run in MySQL, so excluded tables are never sent.
///
/// It selects every table [`StreamOptions::includes`] admits and may select more: MySQL can
/// compare names without regard to case, so the listed schemas and tables are a first cut that
/// [`base_tables`] finishes with the rule itself. Exclusions compare the names' bytes, so that
/// they never drop a table the rule keeps.
fn table_condition(
    options: &StreamOptions,
    only: Option<(&str, &str)>,
    schema_column: &str,
) -> (String, Vec<String>) {
    if let Some((schema, table)) = only {
        return (
            format!("{schema_column} = ? AND TABLE_NAME = ?"),
            vec![schema.to_owned(), table.to_owned()],
        );
    }
    let mut conditions = vec![format!("{schema_column} NOT IN ({SYSTEM_SCHEMAS})")];
    let mut parameters = Vec::new();
    if !options.schemas.is_empty() {
        let marks = vec!["?"; options.schemas.len()].join(", ");
        conditions.push(format!("{schema_column} IN ({marks})"));
        parameters.extend(options.schemas.iter().map(ToString::to_string));
    }
    if !options.tables.is_empty() {
        let columns = (schema_column.to_owned(), "TABLE_NAME".to_owned());
        let listed = any_table(&options.tables, &columns, &mut parameters);
        conditions.push(format!("({listed})"));
    }
    if !options.exclude_tables.is_empty() {
        let bytes = |column: &str| format!("CAST({column} AS BINARY)");
        let columns = (bytes(schema_column), bytes("TABLE_NAME"));
        let excluded = any_table(&options.exclude_tables, &columns, &mut parameters);
        conditions.push(format!("NOT ({excluded})"));
    }
    (conditions.join(" AND "), parameters)
}

/// `(SCHEMA = ? AND TABLE = ?) OR ...`, one term per table, over the (schema, table) `columns`
/// expressions; the tables' names go to `parameters`.
fn any_table(
    tables: &[QualifiedTable],
    (schema_column, table_column): &(String, String),
    parameters: &mut Vec<String>,
) -> String {
    let term = format!("({schema_column} = ? AND {table_column} = ?)");
    for (schema, table) in tables.iter().map(QualifiedTable::parts) {
        parameters.extend([schema.to_owned(), table.to_owned()]);
    }
    vec![term; tables.len()].join(" OR ")
}

/// The bytes a row of information_schema holds.
fn row_bytes(row: &mysql_async::Row) -> usize {
    (0..row.len())
        .map(|index| match row.as_ref(index) {
            Some(mysql_async::Value::Bytes(bytes)) => bytes.len(),
            _ => 8,
        })
        .sum()
}

/// Runs one information_schema query for a snapshot, reading at most `max` rows and
/// [`MAX_SNAPSHOT_BYTES`]; more fails for good, naming the limit and how to stay under it.
async fn bounded<T: FromRow + Send + 'static>(
    connection: &mut Conn,
    address: &Endpoint,
    query: (String, Vec<String>),
    max: usize,
    what: &str,
) -> Result<Vec<T>, MysqlFailure> {
    let (sql, parameters) = query;
    let asked = format!("the information_schema query of {what}");
    let mut result = address
        .ask(
            &asked,
            connection.exec_iter(format!("{sql} LIMIT {}", max.saturating_add(1)), parameters),
        )
        .await?;
    let mut rows = Vec::new();
    let mut bytes = 0;
    while let Some(row) = address.ask(&asked, result.next()).await? {
        bytes += row_bytes(&row);
        if rows.len() == max || bytes > MAX_SNAPSHOT_BYTES {
            address.ask(&asked, result.drop_result()).await?;
            let limit = if rows.len() == max {
                format!("more than {max} {what}")
            } else {
                format!("more than {} MiB of {what}", MAX_SNAPSHOT_BYTES >> 20)
            };
            return Err(MysqlFailure::Permanent(format!(
                "the schema of {address} is too large to snapshot: {limit} match the stream \
                 filters; list the schemas or tables to stream in stream_options.schemas and \
                 stream_options.tables, or leave tables out with stream_options.exclude_tables"
            )));
        }
        let row = mysql_async::from_row_opt(row).map_err(|error| {
            MysqlFailure::Permanent(format!(
                "{address} answered an unexpected information_schema row: {error}"
            ))
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// A column as information_schema.COLUMNS lists it: schema, table, name, type, IS_NULLABLE,
/// COLUMN_KEY, EXTRA.
type ColumnRow = (String, String, String, String, String, String, String);

/// A json_valid() check as MariaDB's information_schema.CHECK_CONSTRAINTS lists it: schema,
/// table, clause.
type JsonCheck = (String, String, String);

/// A column of a foreign key, as information_schema.KEY_COLUMN_USAGE lists it, with the key's
/// DELETE_RULE from REFERENTIAL_CONSTRAINTS: schema, table, constraint, column, referenced
/// schema, table and column, rule (none when REFERENTIAL_CONSTRAINTS hides the key, as MariaDB
/// does from an account with SELECT only).
type ForeignKeyRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
);

/// The included tables with their columns and keys; only the one table `only` names when given
/// (a stream re-reading a table after a DDL statement). `mariadb` also reads the json_valid()
/// checks that mark MariaDB's JSON columns. Filtered in MySQL and bounded by `limits`.
pub async fn read_tables(
    connection: &mut Conn,
    address: &Endpoint,
    options: &StreamOptions,
    limits: SnapshotLimits,
    mariadb: bool,
    only: Option<(&str, &str)>,
) -> Result<Vec<Table>, MysqlFailure> {
    let condition = table_condition(options, only, "TABLE_SCHEMA");
    let mut tables = base_tables(connection, address, condition.clone(), options, limits).await?;
    let max = limits.max_columns;
    let columns: Vec<ColumnRow> = bounded(
        connection,
        address,
        query(&condition, columns_sql),
        max,
        "columns",
    )
    .await?;
    let json_checks: Vec<JsonCheck> = if mariadb {
        let condition = table_condition(options, only, "CONSTRAINT_SCHEMA");
        let query = query(&condition, json_checks_sql);
        bounded(connection, address, query, max, "JSON checks").await?
    } else {
        Vec::new()
    };
    add_columns(&mut tables, columns, &json_checks);
    let query = query(&condition, foreign_keys_sql);
    let keys: Vec<ForeignKeyRow> =
        bounded(connection, address, query, max, "foreign-key columns").await?;
    let cascading = cascading_keys(connection, address, &keys).await?;
    add_cascades(&mut tables, keys, &cascading);
    Ok(tables.into_values().collect())
}

/// A query over the tables `condition` selects: its text, and the condition's parameters.
fn query(
    (condition, parameters): &(String, Vec<String>),
    sql: fn(&str) -> String,
) -> (String, Vec<String>) {
    (sql(condition), parameters.clone())
}

/// The included base tables that `condition` selects, by schema and name, still without columns.
async fn base_tables(
    connection: &mut Conn,
    address: &Endpoint,
    (condition, parameters): (String, Vec<String>),
    options: &StreamOptions,
    limits: SnapshotLimits,
) -> Result<BTreeMap<(String, String), Table>, MysqlFailure> {
    let rows: Vec<(String, String, Option<String>)> = bounded(
        connection,
        address,
        (
            format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE FROM information_schema.TABLES \
                 WHERE TABLE_TYPE = 'BASE TABLE' AND {condition} ORDER BY TABLE_SCHEMA, TABLE_NAME"
            ),
            parameters,
        ),
        limits.max_tables,
        "tables",
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(schema, name, _)| options.includes(schema, name))
        .map(|(schema, name, engine)| {
            let table = Table {
                schema: schema.clone(),
                name: name.clone(),
                engine,
                primary_key: Vec::new(),
                columns: Vec::new(),
                cascades: Vec::new(),
            };
            ((schema, name), table)
        })
        .collect())
}

/// The query of the columns of the tables that `condition` selects, in each table's order.
fn columns_sql(condition: &str) -> String {
    format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_KEY, EXTRA \
         FROM information_schema.COLUMNS WHERE {condition} \
         ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
    )
}

/// The query of MariaDB's json_valid() checks on the tables `condition` selects (over
/// CONSTRAINT_SCHEMA).
fn json_checks_sql(condition: &str) -> String {
    format!(
        "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE \
         FROM information_schema.CHECK_CONSTRAINTS \
         WHERE CHECK_CLAUSE LIKE 'json_valid(%' AND {condition}"
    )
}

/// The query of the columns of the foreign keys of the tables `condition` selects, in each
/// key's order, with their DELETE_RULE when REFERENTIAL_CONSTRAINTS shows it.
fn foreign_keys_sql(condition: &str) -> String {
    format!(
        "SELECT TABLE_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, \
         REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME, \
         DELETE_RULE \
         FROM (SELECT k.TABLE_SCHEMA, k.TABLE_NAME, k.CONSTRAINT_NAME, k.COLUMN_NAME, \
         k.REFERENCED_TABLE_SCHEMA, k.REFERENCED_TABLE_NAME, k.REFERENCED_COLUMN_NAME, \
         k.ORDINAL_POSITION, r.DELETE_RULE \
         FROM information_schema.KEY_COLUMN_USAGE k \
         LEFT JOIN information_schema.REFERENTIAL_CONSTRAINTS r \
         ON k.CONSTRAINT_SCHEMA = r.CONSTRAINT_SCHEMA AND k.TABLE_NAME = r.TABLE_NAME \
         AND k.CONSTRAINT_NAME = r.CONSTRAINT_NAME \
         WHERE k.REFERENCED_TABLE_NAME IS NOT NULL) AS fk \
         WHERE {condition} \
         ORDER BY TABLE_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION"
    )
}

/// The foreign keys of `keys` that cascade on delete, as (schema, table, constraint): those
/// whose DELETE_RULE says CASCADE, and those REFERENTIAL_CONSTRAINTS hid whose table's `SHOW
/// CREATE TABLE` says `ON DELETE CASCADE` (one statement per such table, so at most as many as
/// the snapshot has tables).
async fn cascading_keys(
    connection: &mut Conn,
    address: &Endpoint,
    keys: &[ForeignKeyRow],
) -> Result<BTreeSet<(String, String, String)>, MysqlFailure> {
    let mut cascading = BTreeSet::new();
    let mut hidden = BTreeSet::new();
    for (schema, table, name, _, _, _, _, rule) in keys {
        match rule.as_deref() {
            Some(rule) if rule.eq_ignore_ascii_case("CASCADE") => {
                cascading.insert((schema.clone(), table.clone(), name.clone()));
            }
            Some(_) => {}
            None => {
                hidden.insert((schema.clone(), table.clone()));
            }
        }
    }
    for (schema, table) in hidden {
        let quote = |name: &str| format!("`{}`", name.replace('`', "``"));
        let asked = format!("SHOW CREATE TABLE of {schema}.{table} (its foreign keys)");
        let statement = format!("SHOW CREATE TABLE {}.{}", quote(&schema), quote(&table));
        let row: Option<(String, String)> = address
            .ask(&asked, connection.query_first(statement))
            .await?;
        let Some((_, create)) = row else {
            continue;
        };
        for name in cascading_constraints(&create) {
            cascading.insert((schema.clone(), table.clone(), name));
        }
    }
    Ok(cascading)
}

/// The names of the constraints of a `SHOW CREATE TABLE` text that cascade on delete: each
/// foreign key is a line `CONSTRAINT `name` FOREIGN KEY (...) REFERENCES ... ON DELETE CASCADE`.
fn cascading_constraints(create: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in create.lines() {
        let Some(rest) = line.trim_start().strip_prefix("CONSTRAINT `") else {
            continue;
        };
        // The name ends at the first backtick not doubled.
        let mut name = String::new();
        let mut chars = rest.chars().peekable();
        let mut closed = false;
        while let Some(c) = chars.next() {
            if c == '`' {
                if chars.peek() == Some(&'`') {
                    chars.next();
                } else {
                    closed = true;
                    break;
                }
            }
            name.push(c);
        }
        let tail: String = chars.collect();
        if closed
            && tail.trim_start().starts_with("FOREIGN KEY")
            && tail.contains(" ON DELETE CASCADE")
        {
            names.push(name);
        }
    }
    names
}

/// Puts each foreign key that cascades on delete, with its columns, into its table (keys of
/// tables not included are dropped).
fn add_cascades(
    tables: &mut BTreeMap<(String, String), Table>,
    rows: Vec<ForeignKeyRow>,
    cascading: &BTreeSet<(String, String, String)>,
) {
    for (schema, table, name, column, parent_schema, parent_table, parent_column, _) in rows {
        if !cascading.contains(&(schema.clone(), table.clone(), name.clone())) {
            continue;
        }
        let Some(table) = tables.get_mut(&(schema, table)) else {
            continue;
        };
        match table.cascades.last_mut() {
            Some(key) if key.name == name => key.columns.push((column, parent_column)),
            _ => table.cascades.push(CascadeKey {
                name,
                parent_schema,
                parent_table,
                columns: vec![(column, parent_column)],
            }),
        }
    }
}

/// Puts each column into its table (columns of tables not included are dropped), marking the
/// primary key's and those a json_valid() check names.
fn add_columns(
    tables: &mut BTreeMap<(String, String), Table>,
    columns: Vec<ColumnRow>,
    json_checks: &[JsonCheck],
) {
    for (schema, table, name, column_type, nullable, key, extra) in columns {
        let json = json_checks.iter().any(|(s, t, clause)| {
            *s == schema && *t == table && clause.contains(&format!("`{name}`"))
        });
        if let Some(table) = tables.get_mut(&(schema, table)) {
            if key == "PRI" {
                table.primary_key.push(name.clone());
            }
            table.columns.push(Column {
                name,
                column_type,
                nullable: nullable == "YES",
                json,
                generated: is_generated(&extra),
            });
        }
    }
}

/// Whether information_schema.COLUMNS.EXTRA marks a generated column: MySQL says `VIRTUAL
/// GENERATED` or `STORED GENERATED`, MariaDB the same or, before 10.2, `PERSISTENT GENERATED`
/// (and `VIRTUAL`/`PERSISTENT` alone in some versions).
fn is_generated(extra: &str) -> bool {
    let upper = extra.to_ascii_uppercase();
    upper.contains("GENERATED") && !upper.contains("DEFAULT_GENERATED")
        || upper
            .split_whitespace()
            .any(|word| word == "VIRTUAL" || word == "PERSISTENT" || word == "STORED")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fields::Identifier;

    #[test]
    fn show_create_table_tells_the_keys_that_cascade_on_delete() {
        let create = "CREATE TABLE `child` (\n  `id` int(11) NOT NULL,\n  `p` int(11) DEFAULT NULL,\n  \
            PRIMARY KEY (`id`),\n  KEY `p` (`p`),\n  \
            CONSTRAINT `a``b` FOREIGN KEY (`p`) REFERENCES `parent` (`id`) ON DELETE CASCADE,\n  \
            CONSTRAINT `c` FOREIGN KEY (`p`) REFERENCES `parent` (`id`) ON UPDATE CASCADE,\n  \
            CONSTRAINT `d` FOREIGN KEY (`p`) REFERENCES `parent` (`id`) ON DELETE SET NULL,\n  \
            CONSTRAINT `e` CHECK (`p` > 0)\n) ENGINE=InnoDB";
        assert_eq!(cascading_constraints(create), ["a`b"]);
    }

    #[test]
    fn generated_columns_are_told_by_extra() {
        for extra in [
            "VIRTUAL GENERATED",
            "STORED GENERATED",
            "PERSISTENT GENERATED",
            "virtual generated",
        ] {
            assert!(is_generated(extra), "{extra}");
        }
        // MySQL 8 marks a column whose DEFAULT is an expression DEFAULT_GENERATED: written.
        for extra in [
            "",
            "auto_increment",
            "DEFAULT_GENERATED",
            "on update current_timestamp()",
        ] {
            assert!(!is_generated(extra), "{extra}");
        }
    }

    #[test]
    fn the_sql_condition_requires_schema_and_table_and_leaves_out_exclusions() {
        let mut options = StreamOptions::default();
        let system =
            "TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')";
        assert_eq!(
            table_condition(&options, None, "TABLE_SCHEMA"),
            (system.to_owned(), vec![])
        );
        options.schemas = vec![Identifier::parse("shop").unwrap()];
        options.tables = vec![
            QualifiedTable::parse("shop.orders").unwrap(),
            QualifiedTable::parse("shop.items").unwrap(),
        ];
        options.exclude_tables = vec![QualifiedTable::parse("shop.items").unwrap()];
        let (condition, parameters) = table_condition(&options, None, "TABLE_SCHEMA");
        assert_eq!(
            condition,
            format!(
                "{system} AND TABLE_SCHEMA IN (?) \
                 AND ((TABLE_SCHEMA = ? AND TABLE_NAME = ?) OR (TABLE_SCHEMA = ? AND TABLE_NAME = ?)) \
                 AND NOT ((CAST(TABLE_SCHEMA AS BINARY) = ? AND CAST(TABLE_NAME AS BINARY) = ?))"
            )
        );
        assert_eq!(
            parameters,
            ["shop", "shop", "orders", "shop", "items", "shop", "items"]
        );
        // The one table a DDL statement names is read whatever the options say; the rule
        // decides afterwards.
        assert_eq!(
            table_condition(&options, Some(("crm", "people")), "CONSTRAINT_SCHEMA"),
            (
                "CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?".to_owned(),
                vec!["crm".to_owned(), "people".to_owned()]
            )
        );
    }
}
