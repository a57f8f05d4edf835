//! The columns of the tables a stream decodes, read from the source's information_schema when
//! a connection starts and again for a table that a DDL statement in the binlog touched, so the
//! names stay right across schema changes.

use std::collections::HashMap;

use mysql_async::{Conn, prelude::Queryable};

use super::decode::{ColumnInfo, ColumnKind, TableColumns};
use crate::{
    domain::server::StreamOptions,
    onboarding::{MysqlFailure, classify_mysql, included_in_stream},
};

const SYSTEM_SCHEMAS: &str = "'mysql', 'information_schema', 'performance_schema', 'sys'";

/// The tracked tables' columns by (schema, table).
#[derive(Debug, Default)]
pub struct Tables {
    tables: HashMap<(String, String), TableColumns>,
}

type ColumnRow = (String, String, String, String, String);

impl Tables {
    /// The columns of a table, if it is tracked and known.
    pub fn get(&self, schema: &str, table: &str) -> Option<&TableColumns> {
        self.tables.get(&(schema.to_owned(), table.to_owned()))
    }

    /// Reads the columns of every tracked table, or of one schema's table when `only` is set.
    pub async fn load(
        connection: &mut Conn,
        address: &str,
        options: &StreamOptions,
        mariadb: bool,
        only: Option<(&str, &str)>,
    ) -> Result<Tables, MysqlFailure> {
        let classify = |error: mysql_async::Error| classify_mysql(&error, address);
        let condition = match only {
            Some(_) => "TABLE_SCHEMA = ? AND TABLE_NAME = ?".to_owned(),
            None => format!("TABLE_SCHEMA NOT IN ({SYSTEM_SCHEMAS}) AND ? = ? "),
        };
        let (schema, table) = only.unwrap_or(("", ""));
        let columns: Vec<ColumnRow> = connection
            .exec(
                format!(
                    "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, COLUMN_KEY \
                     FROM information_schema.COLUMNS WHERE {condition} \
                     ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
                ),
                (schema, table),
            )
            .await
            .map_err(classify)?;
        // MariaDB's JSON is a LONGTEXT with a json_valid() check; only the check tells them apart.
        let json_columns: Vec<(String, String, String)> = if mariadb {
            connection
                .exec(
                    format!(
                        "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE \
                         FROM information_schema.CHECK_CONSTRAINTS \
                         WHERE CHECK_CLAUSE LIKE 'json_valid(%' AND {}",
                        condition.replace("TABLE_SCHEMA", "CONSTRAINT_SCHEMA")
                    ),
                    (schema, table),
                )
                .await
                .map_err(classify)?
        } else {
            Vec::new()
        };
        let is_json = |schema: &str, table: &str, column: &str| {
            json_columns.iter().any(|(s, t, clause)| {
                s == schema && t == table && clause.contains(&format!("`{column}`"))
            })
        };
        let mut tables: HashMap<(String, String), TableColumns> = HashMap::new();
        for (schema, table, name, column_type, key) in columns {
            if !included_in_stream(options, &schema, &table) {
                continue;
            }
            let json = is_json(&schema, &table, &name);
            let entry = tables
                .entry((schema, table))
                .or_insert_with(|| TableColumns {
                    columns: Vec::new(),
                    primary_key: Vec::new(),
                });
            if key == "PRI" {
                entry.primary_key.push(name.clone());
            }
            entry.columns.push(ColumnInfo {
                kind: ColumnKind::of(&column_type, json),
                name,
            });
        }
        Ok(Tables { tables })
    }

    /// Replaces one table's columns (after a DDL), or forgets the table when it is gone.
    pub fn replace(&mut self, schema: &str, table: &str, fresh: Tables) {
        let key = (schema.to_owned(), table.to_owned());
        match fresh.tables.into_iter().find(|(found, _)| *found == key) {
            Some((key, columns)) => {
                self.tables.insert(key, columns);
            }
            None => {
                self.tables.remove(&key);
            }
        }
    }
}

/// The tables a DDL statement names, as (schema, table), `default_schema` filling in unqualified
/// names. Recognises ALTER, CREATE, DROP, RENAME and TRUNCATE TABLE; anything else touches none.
pub fn ddl_tables(statement: &str, default_schema: &str) -> Vec<(String, String)> {
    let words: Vec<String> = statement
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
        names.push(qualified(&words[index], default_schema));
        // RENAME TABLE a TO b, c TO d and DROP TABLE a, b name several; ALTER names one.
        if verb != "RENAME" && verb != "DROP" {
            break;
        }
        index += 1;
    }
    names
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

    #[test]
    fn ddl_names_the_tables_it_touches() {
        assert_eq!(
            ddl_tables("ALTER TABLE orders ADD COLUMN note text", "shop"),
            vec![("shop".into(), "orders".into())]
        );
        assert_eq!(
            ddl_tables("alter table `crm`.`people` drop column x", "shop"),
            vec![("crm".into(), "people".into())]
        );
        assert_eq!(
            ddl_tables("CREATE TABLE IF NOT EXISTS t1 (id int)", "s"),
            vec![("s".into(), "t1".into())]
        );
        assert_eq!(
            ddl_tables("RENAME TABLE a TO b", "s"),
            vec![("s".into(), "a".into()), ("s".into(), "b".into())]
        );
        assert!(ddl_tables("BEGIN", "s").is_empty());
        assert!(ddl_tables("CREATE USER bob", "s").is_empty());
    }
}
