//! Step 5, snapshotting: checks that SELECT is allowed, reads the schema (`crate::source::schema`)
//! and stores it as the server's current snapshot, with a summary that warns of tables the stream
//! handles poorly.

use std::collections::BTreeSet;

use async_trait::async_trait;
use mysql_async::{Conn, prelude::Queryable};

use super::{
    Step, StepContext,
    grants::Needed,
    initializing::{account, effective_grants},
};
use crate::{
    domain::{
        OnboardingStep,
        check::{Check, CheckResult},
        onboarding::StepOutcome,
        server::StreamOptions,
    },
    source::{
        connection::{
            self, MysqlFailure,
            mysql::{self, Endpoint},
        },
        schema::{SnapshotLimits, Table, read_tables},
        snapshot::store_tables,
    },
    store::{Lease, StoreError},
};

/// Takes the schema snapshot.
pub struct Snapshotting;

/// How many problem tables the message names before it only counts.
const NAMED_TABLES: usize = 10;

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

/// `schema`.`table`, quoted for a statement.
fn quoted(table: &Table) -> String {
    format!(
        "`{}`.`{}`",
        table.schema.replace('`', "``"),
        table.name.replace('`', "``")
    )
}

/// A check of the tables `found` with `problem` (each shown by `label`): it passes saying
/// `passed` when there are none, and else warns naming them, with `fix` and its `example` on the
/// first.
fn tables_check(
    name: &'static str,
    passed: &str,
    problem: &str,
    found: &[&Table],
    label: impl Fn(&Table) -> String,
    fix: &str,
    example: impl Fn(&str) -> String,
) -> Check {
    let warning = found.first().map(|first| {
        let labels: Vec<String> = found.iter().map(|table| label(table)).collect();
        (
            format!(
                "{} {problem}: {}",
                plural(found.len(), "table"),
                name_some(&labels)
            ),
            format!("{fix}, e.g. {}", example(&quoted(first))),
        )
    });
    Check::judge(name, CheckResult::Warn, passed, warning)
}

/// The tables the stream handles poorly, as two checks: primary_keys (a table without one is
/// captured, but its rows cannot be told apart by key) and storage_engines (a table not on
/// InnoDB is not transactional). Each warns naming the tables and the statement that fixes them.
pub fn table_checks(tables: &[Table]) -> [Check; 2] {
    let without_key: Vec<&Table> = tables
        .iter()
        .filter(|table| table.primary_key.is_empty())
        .collect();
    let not_innodb: Vec<&Table> = tables
        .iter()
        .filter(|table| {
            !table
                .engine
                .as_deref()
                .is_some_and(|engine| engine.eq_ignore_ascii_case("InnoDB"))
        })
        .collect();
    [
        tables_check(
            "primary_keys",
            "every table has a primary key",
            "without a primary key",
            &without_key,
            Table::qualified,
            "give each a primary key",
            |table| format!("ALTER TABLE {table} ADD PRIMARY KEY (column, ...)"),
        ),
        tables_check(
            "storage_engines",
            "every table is InnoDB",
            "not InnoDB",
            &not_innodb,
            |table| {
                let engine = table.engine.as_deref().unwrap_or("unknown engine");
                format!("{} ({engine})", table.qualified())
            },
            "convert each to InnoDB",
            |table| format!("ALTER TABLE {table} ENGINE = InnoDB"),
        ),
    ]
}

/// "2 schemas and 3 tables".
pub fn count(tables: &[Table]) -> String {
    let schemas: BTreeSet<&str> = tables.iter().map(|table| table.schema.as_str()).collect();
    format!(
        "{} and {}",
        plural(schemas.len(), "schema"),
        plural(tables.len(), "table")
    )
}

/// The completion message: counts, then warnings about tables the stream handles poorly.
pub fn summary(tables: &[Table]) -> String {
    let mut message = format!("snapshot of {}", count(tables));
    for check in table_checks(tables) {
        if check.result == CheckResult::Warn {
            message.push_str(&format!("; warning: {}", check.message));
        }
    }
    message
}

/// The tables to snapshot, or the select_grant or tables check that fails when there are none
/// the user may read. CheckServer reads the same.
pub async fn read_snapshot(
    connection: &mut Conn,
    address: &Endpoint,
    options: &StreamOptions,
    limits: SnapshotLimits,
) -> Result<Result<Vec<Table>, Check>, MysqlFailure> {
    let grants = effective_grants(connection, address).await?;
    if !grants.has_select_anywhere() {
        let account = account(connection, address).await?;
        return Ok(Err(Check::fail(
            "select_grant",
            "SELECT is denied: the user has no SELECT privilege, so no table can be read",
            format!("GRANT {} ON *.* TO {account}", Needed::Select.grant_name()),
        )));
    }
    let (flavour, _) = mysql::version(connection, address).await?;
    let tables = read_tables(
        connection,
        address,
        options,
        limits,
        flavour == "MariaDB",
        None,
    )
    .await?;
    let Some(probe) = tables.first() else {
        return Ok(Err(if options.filters() {
            Check::fail(
                "tables",
                format!(
                    "nothing matches the stream filters (schemas [{}], tables [{}], \
                     exclude_tables [{}]) among the tables the user can see",
                    options.schemas.join(", "),
                    options.tables.join(", "),
                    options.exclude_tables.join(", ")
                ),
                "a table is captured when its schema and the table itself are both listed (an \
                 empty list lists all) and it is not excluded",
            )
        } else {
            Check::fail(
                "tables",
                "no user tables are visible to the user",
                "create tables or GRANT SELECT on them",
            )
        }));
    };
    // information_schema can list tables the user cannot read: prove SELECT on one.
    let readable = connection.query_drop(format!("SELECT 1 FROM {} LIMIT 0", quoted(probe)));
    match address.ask("a SELECT of one table", readable).await {
        Ok(()) => Ok(Ok(tables)),
        Err(MysqlFailure::Permanent(reason)) => Ok(Err(Check::fail(
            "select_grant",
            format!("SELECT is denied on {}: {reason}", probe.qualified()),
            String::new(),
        ))),
        Err(transient) => Err(transient),
    }
}

#[async_trait]
impl Step for Snapshotting {
    fn name(&self) -> OnboardingStep {
        OnboardingStep::Snapshotting
    }

    async fn run(&self, context: &StepContext) -> Result<StepOutcome, StoreError> {
        let mut link = match connection::connect(&context.source()).await {
            Ok(link) => link,
            Err(failure) => return Ok(context.outcome_of(failure)),
        };
        let address = mysql::address(&context.source());
        let options = &context.server.spec.stream_options;
        let limits = context.agent.snapshot;
        let read = read_snapshot(&mut link.connection, &address, options, limits).await;
        link.close().await;
        let tables = match read {
            Ok(Ok(tables)) => tables,
            Ok(Err(check)) => {
                return Ok(StepOutcome::Failed {
                    error: check.sentence(),
                });
            }
            Err(failure) => return Ok(context.outcome_of(failure)),
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

    fn table(schema: &str, name: &str, engine: &str, key: bool) -> Table {
        Table {
            schema: schema.into(),
            name: name.into(),
            engine: Some(engine.into()),
            primary_key: if key { vec!["id".into()] } else { vec![] },
            columns: vec![],
            cascades: vec![],
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
}
