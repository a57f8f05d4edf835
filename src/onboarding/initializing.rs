//! Step 4, initializing: checks that the binlog can be streamed (log_bin, binlog_format,
//! binlog_row_image, the replication grants, roles included), reads what else the source's
//! settings warrant (`source_checks`: warnings and reported settings), then creates the server's
//! index schema in PostgreSQL.

use async_trait::async_trait;
use mysql_async::{Conn, prelude::Queryable};

use super::{
    Step, StepContext,
    grants::{Grants, Needed},
    source_checks::{self, Findings},
};
use crate::{
    domain::{
        OnboardingStep,
        check::{Check, CheckResult},
        onboarding::StepOutcome,
    },
    source::connection::{
        self, MysqlFailure,
        mysql::{self, Endpoint},
    },
    store::{Lease, StoreError},
};

/// Checks prerequisites and creates the index tables.
pub struct Initializing;

/// The user's grants, with those of the roles granted to it.
pub async fn effective_grants(
    connection: &mut Conn,
    address: &Endpoint,
) -> Result<Grants, MysqlFailure> {
    let lines: Vec<String> = address
        .ask("SHOW GRANTS", connection.query("SHOW GRANTS"))
        .await?;
    let mut grants = Grants::parse(lines.iter().map(String::as_str));
    // Role names come from the customer's server: only well-formed quoted names are used.
    let quoted = |role: &str| {
        role.split('@').all(|part| {
            part.len() >= 2
                && part.starts_with('`')
                && part.ends_with('`')
                && !part[1..part.len() - 1].contains('`')
        })
    };
    for role in grants
        .roles
        .iter()
        .filter(|role| quoted(role))
        .cloned()
        .collect::<Vec<_>>()
    {
        // A role that cannot be inspected adds nothing; the checks then say what is missing.
        let asked = connection.query::<String, _>(format!("SHOW GRANTS FOR {role}"));
        if let Ok(lines) = address.ask("SHOW GRANTS FOR a role", asked).await {
            grants.merge(Grants::parse(lines.iter().map(String::as_str)));
        }
    }
    Ok(grants)
}

/// `'user'@'host'` as the server knows the session's account.
pub async fn account(connection: &mut Conn, address: &Endpoint) -> Result<String, MysqlFailure> {
    let current: Option<String> = address
        .ask(
            "SELECT CURRENT_USER()",
            connection.query_first("SELECT CURRENT_USER()"),
        )
        .await?;
    let current = current.unwrap_or_default();
    let (user, host) = current.rsplit_once('@').unwrap_or((current.as_str(), "%"));
    Ok(format!("'{user}'@'{host}'"))
}

/// The binlog settings a stream needs, each a check naming its current value and, when it
/// fails, the statement that fixes it.
fn binlog_settings(log_bin: &str, format: &str, row_image: &str) -> [Check; 3] {
    let off = !matches!(log_bin.to_ascii_uppercase().as_str(), "1" | "ON");
    let log_bin = Check::judge(
        "log_bin",
        CheckResult::Fail,
        "log_bin is ON",
        off.then(|| {
            (
                "log_bin is OFF; dbtrail needs the binary log".to_owned(),
                "start the server with --log-bin (log_bin in my.cnf) and restart it".to_owned(),
            )
        }),
    );
    let setting = |name: &'static str, value: &str, needed: &str| {
        let problem = (!value.eq_ignore_ascii_case(needed)).then(|| {
            (
                format!("{name} is {value}; dbtrail needs {needed}"),
                format!("SET GLOBAL {name} = '{needed}' and persist it in my.cnf"),
            )
        });
        Check::judge(
            name,
            CheckResult::Fail,
            format!("{name} is {value}"),
            problem,
        )
    };
    [
        log_bin,
        setting("binlog_format", format, "ROW"),
        setting("binlog_row_image", row_image, "FULL"),
    ]
}

/// Initializing's prerequisites, each a check: log_bin, binlog_format, binlog_row_image, and the
/// replication grants (roles included). CheckServer runs the same.
pub async fn prerequisites(
    connection: &mut Conn,
    address: &Endpoint,
) -> Result<Vec<Check>, MysqlFailure> {
    let variables: Option<(String, String, String)> = address
        .ask(
            "the binlog settings",
            connection.query_first(
                "SELECT CAST(@@GLOBAL.log_bin AS CHAR), @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image",
            ),
        )
        .await?;
    let (log_bin, format, row_image) = variables.unwrap_or_default();
    let mut checks = binlog_settings(&log_bin, &format, &row_image).to_vec();
    let grants = effective_grants(connection, address).await?;
    let account = account(connection, address).await?;
    for (check, needed) in [
        ("replication_slave_grant", Needed::ReplicationSlave),
        ("replication_client_grant", Needed::ReplicationClient),
    ] {
        let name = needed.grant_name();
        let lacking = (!grants.has_global(needed)).then(|| {
            (
                format!("the user lacks {name} (SHOW GRANTS shows none on *.*)"),
                format!("GRANT {name} ON *.* TO {account}"),
            )
        });
        let holds = format!("the user holds {name} on *.*");
        checks.push(Check::judge(check, CheckResult::Fail, holds, lacking));
    }
    Ok(checks)
}

/// The unmet prerequisites (Err, each a sentence naming its fix), or, when there are none, what
/// the source's other settings warrant.
async fn check(
    connection: &mut Conn,
    address: &Endpoint,
) -> Result<Result<Findings, Vec<String>>, MysqlFailure> {
    let problems: Vec<String> = prerequisites(connection, address)
        .await?
        .iter()
        .filter(|check| check.failed())
        .map(Check::sentence)
        .collect();
    if !problems.is_empty() {
        return Ok(Err(problems));
    }
    let source = source_checks::read(connection, address).await?;
    Ok(Ok(source.findings()))
}

/// The message of a completed initializing: what passed, then the settings read.
fn completed_message(findings: &Findings) -> String {
    let mut message = "log_bin ON, binlog_format ROW, binlog_row_image FULL, replication grants \
                       present; index tables ready"
        .to_owned();
    if !findings.reported.is_empty() {
        message.push_str("; ");
        message.push_str(&findings.reported.join(", "));
    }
    message
}

#[async_trait]
impl Step for Initializing {
    fn name(&self) -> OnboardingStep {
        OnboardingStep::Initializing
    }

    async fn run(&self, context: &StepContext) -> Result<StepOutcome, StoreError> {
        let address = mysql::address(&context.source());
        let mut link = match connection::connect(&context.source()).await {
            Ok(link) => link,
            Err(failure) => return Ok(context.outcome_of(failure)),
        };
        let checked = check(&mut link.connection, &address).await;
        link.close().await;
        match checked {
            Err(failure) => Ok(context.outcome_of(failure)),
            Ok(Err(problems)) => Ok(StepOutcome::Failed {
                error: problems.join("; "),
            }),
            Ok(Ok(findings)) => {
                context
                    .store
                    .prepare_index_tables(Lease::Onboarding, context.claim)
                    .await?;
                Ok(StepOutcome::Completed {
                    message: completed_message(&findings),
                    warnings: findings.warnings(),
                })
            }
        }
    }
}
