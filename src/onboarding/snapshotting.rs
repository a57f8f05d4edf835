//! Step 5, snapshotting: reads schemas, tables, columns, primary keys and engines from
//! information_schema (honouring stream_options, skipping system schemas), checks that SELECT is
//! allowed, and stores the snapshot as the server's current one.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use mysql_async::{
    Conn,
    prelude::{FromRow, Queryable},
};
use serde::{Deserialize, Serialize};

use super::{
    Step, StepContext,
    connection::{
        self, MysqlFailure,
        mysql::{self, Endpoint},
    },
    grants::Needed,
    initializing::{account, effective_grants},
};
use crate::{
    domain::{
        OnboardingStep, fields::QualifiedTable, onboarding::StepOutcome, server::StreamOptions,
    },
    store::{Claim, Lease, Store, StoreError},
};

/// Takes the schema snapshot.
pub struct Snapshotting;

const SYSTEM_SCHEMAS: &str = "'mysql', 'information_schema', 'performance_schema', 'sys'";
/// How many problem tables the message names before it only counts.
const NAMED_TABLES: usize = 10;

/// One column of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub column_type: String,
    pub nullable: bool,
    /// MariaDB's JSON: a LONGTEXT with a json_valid() check, which only the check tells apart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub json: bool,
}

/// One table of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Table {
    pub schema: String,
    pub name: String,
    pub engine: Option<String>,
    pub primary_key: Vec<String>,
    pub columns: Vec<Column>,
}

impl Table {
    fn qualified(&self) -> String {
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
/// COLUMN_KEY.
type ColumnRow = (String, String, String, String, String, String);

/// A json_valid() check as MariaDB's information_schema.CHECK_CONSTRAINTS lists it: schema,
/// table, clause.
type JsonCheck = (String, String, String);

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
    let columns = column_rows(connection, address, condition, limits).await?;
    let json_checks = if mariadb {
        json_checks(connection, address, options, only, limits).await?
    } else {
        Vec::new()
    };
    add_columns(&mut tables, columns, &json_checks);
    Ok(tables.into_values().collect())
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
            };
            ((schema, name), table)
        })
        .collect())
}

/// The columns of the tables that `condition` selects, in each table's order.
async fn column_rows(
    connection: &mut Conn,
    address: &Endpoint,
    (condition, parameters): (String, Vec<String>),
    limits: SnapshotLimits,
) -> Result<Vec<ColumnRow>, MysqlFailure> {
    bounded(
        connection,
        address,
        (
            format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_KEY \
                 FROM information_schema.COLUMNS WHERE {condition} \
                 ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
            ),
            parameters,
        ),
        limits.max_columns,
        "columns",
    )
    .await
}

/// MariaDB's json_valid() checks on the included tables (or the one `only` names).
async fn json_checks(
    connection: &mut Conn,
    address: &Endpoint,
    options: &StreamOptions,
    only: Option<(&str, &str)>,
    limits: SnapshotLimits,
) -> Result<Vec<JsonCheck>, MysqlFailure> {
    let (condition, parameters) = table_condition(options, only, "CONSTRAINT_SCHEMA");
    bounded(
        connection,
        address,
        (
            format!(
                "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE \
                 FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CHECK_CLAUSE LIKE 'json_valid(%' AND {condition}"
            ),
            parameters,
        ),
        limits.max_columns,
        "JSON checks",
    )
    .await
}

/// Puts each column into its table (columns of tables not included are dropped), marking the
/// primary key's and those a json_valid() check names.
fn add_columns(
    tables: &mut BTreeMap<(String, String), Table>,
    columns: Vec<ColumnRow>,
    json_checks: &[JsonCheck],
) {
    for (schema, table, name, column_type, nullable, key) in columns {
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
            });
        }
    }
}

/// Names up to ten tables and gives the exact total.
fn name_some(tables: &[String]) -> String {
    let shown = tables[..tables.len().min(NAMED_TABLES)].join(", ");
    if tables.len() > NAMED_TABLES {
        format!("{shown} and {} more", tables.len() - NAMED_TABLES)
    } else {
        shown
    }
}

fn plural(count: usize, word: &str) -> String {
    format!("{count} {word}{}", if count == 1 { "" } else { "s" })
}

/// The completion message: counts, then warnings about tables the stream handles poorly.
pub fn summary(tables: &[Table]) -> String {
    let schemas: BTreeSet<&str> = tables.iter().map(|table| table.schema.as_str()).collect();
    let mut message = format!(
        "snapshot of {} and {}",
        plural(schemas.len(), "schema"),
        plural(tables.len(), "table")
    );
    let without_key: Vec<String> = tables
        .iter()
        .filter(|table| table.primary_key.is_empty())
        .map(Table::qualified)
        .collect();
    if !without_key.is_empty() {
        message.push_str(&format!(
            "; warning: {} without a primary key: {}",
            plural(without_key.len(), "table"),
            name_some(&without_key)
        ));
    }
    let not_innodb: Vec<String> = tables
        .iter()
        .filter(|table| {
            !table
                .engine
                .as_deref()
                .is_some_and(|engine| engine.eq_ignore_ascii_case("InnoDB"))
        })
        .map(|table| {
            format!(
                "{} ({})",
                table.qualified(),
                table.engine.as_deref().unwrap_or("unknown engine")
            )
        })
        .collect();
    if !not_innodb.is_empty() {
        message.push_str(&format!(
            "; warning: {} not InnoDB: {}",
            plural(not_innodb.len(), "table"),
            name_some(&not_innodb)
        ));
    }
    message
}

/// The tables to snapshot, or why there are none the user may read.
async fn read_snapshot(
    context: &StepContext,
    connection: &mut Conn,
) -> Result<Result<Vec<Table>, String>, MysqlFailure> {
    let address = mysql::address(context);
    let options = &context.server.spec.stream_options;
    let grants = effective_grants(connection, &address).await?;
    if !grants.has_select_anywhere() {
        let account = account(connection, &address).await?;
        return Ok(Err(format!(
            "SELECT is denied: the user has no SELECT privilege, so no table can be read: \
             GRANT {} ON *.* TO {account}",
            Needed::Select.grant_name()
        )));
    }
    let (flavour, _) = mysql::version(connection, &address).await?;
    let tables = read_tables(
        connection,
        &address,
        options,
        context.agent.snapshot,
        flavour == "MariaDB",
        None,
    )
    .await?;
    let Some(probe) = tables.first() else {
        return Ok(Err(if options.filters() {
            format!(
                "nothing matches the stream filters (schemas [{}], tables [{}], exclude_tables \
                 [{}]) among the tables the user can see; a table is captured when its schema \
                 and the table itself are both listed (an empty list lists all) and it is not \
                 excluded",
                options.schemas.join(", "),
                options.tables.join(", "),
                options.exclude_tables.join(", ")
            )
        } else {
            "no user tables are visible to the user: create tables or GRANT SELECT on them"
                .to_owned()
        }));
    };
    // information_schema can list tables the user cannot read: prove SELECT on one.
    let readable = connection.query_drop(format!(
        "SELECT 1 FROM `{}`.`{}` LIMIT 0",
        probe.schema.replace('`', "``"),
        probe.name.replace('`', "``")
    ));
    match address.ask("a SELECT of one table", readable).await {
        Ok(()) => Ok(Ok(tables)),
        Err(MysqlFailure::Permanent(reason)) => Ok(Err(format!(
            "SELECT is denied on {}: {reason}",
            probe.qualified()
        ))),
        Err(transient) => Err(transient),
    }
}

/// Stores `tables` as the server's current snapshot, fenced by `lease`.
async fn store_tables(
    store: &Store,
    lease: Lease,
    claim: Claim,
    tables: &[Table],
    since: Option<(String, i64)>,
) -> Result<(), StoreError> {
    let schema_count = tables
        .iter()
        .map(|table| table.schema.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    let snapshot = serde_json::to_value(tables)
        .map_err(|error| StoreError::Corrupt(format!("snapshot: {error}")))?;
    store
        .store_snapshot(
            lease,
            claim,
            (
                i32::try_from(schema_count).unwrap_or(i32::MAX),
                i32::try_from(tables.len()).unwrap_or(i32::MAX),
            ),
            snapshot,
            since,
        )
        .await
}

/// After a DDL statement at `since` (binlog file, position): the current snapshot with one table
/// replaced by what the source has now (or removed when it is gone), stored under the stream's
/// lease as holding from there on.
pub async fn refresh_snapshot_table(
    store: &Store,
    claim: Claim,
    (schema, name): (&str, &str),
    fresh: Option<Table>,
    since: (String, i64),
) -> Result<(), StoreError> {
    let current = store.current_snapshot(claim.server_id).await?;
    let mut tables: Vec<Table> = match current {
        Some(snapshot) => serde_json::from_value(snapshot)
            .map_err(|error| StoreError::Corrupt(format!("snapshot: {error}")))?,
        None => Vec::new(),
    };
    tables.retain(|table| (table.schema.as_str(), table.name.as_str()) != (schema, name));
    tables.extend(fresh);
    tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    store_tables(store, Lease::Stream, claim, &tables, Some(since)).await
}

#[async_trait]
impl Step for Snapshotting {
    fn name(&self) -> OnboardingStep {
        OnboardingStep::Snapshotting
    }

    async fn run(&self, context: &StepContext) -> Result<StepOutcome, StoreError> {
        let mut link = match connection::connect(context).await {
            Ok(link) => link,
            Err(failure) => return Ok(failure.outcome(context)),
        };
        let read = read_snapshot(context, &mut link.connection).await;
        link.close().await;
        let tables = match read {
            Ok(Ok(tables)) => tables,
            Ok(Err(error)) => return Ok(StepOutcome::Failed { error }),
            Err(failure) => return Ok(failure.outcome(context)),
        };
        store_tables(
            &context.store,
            Lease::Onboarding,
            context.claim,
            &tables,
            None,
        )
        .await?;
        Ok(StepOutcome::Completed {
            message: summary(&tables),
            warnings: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fields::Identifier;

    fn table(schema: &str, name: &str, engine: &str, key: bool) -> Table {
        Table {
            schema: schema.into(),
            name: name.into(),
            engine: Some(engine.into()),
            primary_key: if key { vec!["id".into()] } else { vec![] },
            columns: vec![],
        }
    }

    #[test]
    fn summary_counts_and_warns_with_exact_totals() {
        let mut tables = vec![
            table("shop", "orders", "InnoDB", true),
            table("shop", "legacy", "MyISAM", true),
            table("audit", "log", "InnoDB", false),
        ];
        assert_eq!(
            summary(&tables),
            "snapshot of 2 schemas and 3 tables; warning: 1 table without a primary key: audit.log; \
             warning: 1 table not InnoDB: shop.legacy (MyISAM)"
        );
        for index in 0..12 {
            tables.push(table("bulk", &format!("t{index:02}"), "InnoDB", false));
        }
        let message = summary(&tables);
        assert!(
            message.contains("13 tables without a primary key"),
            "{message}"
        );
        assert!(message.contains("and 3 more"), "{message}");
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
