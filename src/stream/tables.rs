//! The columns of the tables a stream decodes, read from the source's information_schema when
//! a connection starts and again for a table that a DDL statement in the binlog touched, so the
//! names stay right across schema changes.

use std::collections::HashMap;

use mysql_async::Conn;

use super::decode::{ColumnInfo, ColumnKind, TableColumns};
use crate::{
    domain::server::StreamOptions,
    onboarding::{MysqlFailure, Table, read_tables},
};

/// The tracked tables' columns by (schema, table).
#[derive(Debug, Default)]
pub struct Tables {
    tables: HashMap<(String, String), TableColumns>,
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
                })
                .collect(),
            primary_key: table.primary_key,
        }
    }
}

impl Tables {
    /// The columns of a table, if it is tracked and known.
    pub fn get(&self, schema: &str, table: &str) -> Option<&TableColumns> {
        self.tables.get(&(schema.to_owned(), table.to_owned()))
    }

    /// Reads the columns of every tracked table (what the snapshot step reads).
    pub async fn load(
        connection: &mut Conn,
        address: &str,
        options: &StreamOptions,
        mariadb: bool,
    ) -> Result<Tables, MysqlFailure> {
        let tables = read_tables(connection, address, options, mariadb, None).await?;
        Ok(Tables {
            tables: tables
                .into_iter()
                .map(|table| ((table.schema.clone(), table.name.clone()), table.into()))
                .collect(),
        })
    }

    /// Reads one table's columns again (after a DDL touched it); forgets a table that is gone.
    /// Returns what was read, for the stored snapshot.
    pub async fn reload(
        &mut self,
        connection: &mut Conn,
        address: &str,
        options: &StreamOptions,
        mariadb: bool,
        (schema, table): (&str, &str),
    ) -> Result<Option<Table>, MysqlFailure> {
        let fresh = read_tables(connection, address, options, mariadb, Some((schema, table)))
            .await?
            .into_iter()
            .next();
        let key = (schema.to_owned(), table.to_owned());
        match &fresh {
            Some(found) => self.tables.insert(key, found.clone().into()),
            None => self.tables.remove(&key),
        };
        Ok(fresh)
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
