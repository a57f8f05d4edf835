//! What initializing reads beyond the prerequisites: settings that work but put captured changes
//! at risk (binlog retention, `sync_binlog`, a read-only or replica source) become warnings, each
//! naming its fix; settings that change what the binlog holds (GTIDs, compression, partial JSON,
//! row metadata) are reported in the step's message. A variable the server does not have (MariaDB,
//! an older MySQL) is absent, never an error.

use std::collections::BTreeMap;

use mysql_async::{Conn, Row, Value, prelude::Queryable};

use super::connection::{
    MysqlFailure,
    mysql::{self, Endpoint},
};

/// The global variables read, by their lower-case names.
const VARIABLES: &[&str] = &[
    "sync_binlog",
    "binlog_expire_logs_seconds",
    "expire_logs_days",
    "binlog_expire_logs_auto_purge",
    "binlog_row_value_options",
    "binlog_transaction_compression",
    "binlog_row_metadata",
    "gtid_mode",
    "read_only",
    "super_read_only",
    "log_slave_updates",
    "log_replica_updates",
    "aurora_version",
    "basedir",
];

/// The settings reported in the step's message, in this order, when the server has them.
const REPORTED: &[&str] = &[
    "gtid_mode",
    "binlog_transaction_compression",
    "binlog_row_value_options",
    "binlog_row_metadata",
];

/// Below this, binlog retention is a warning.
const MINIMUM_RETENTION_SECONDS: u64 = 24 * 3600;

/// The fix the retention warnings propose: three days, so a weekend outage is survived.
const RECOMMENDED_RETENTION_HOURS: u64 = 72;

/// MySQL's ER_PARSE_ERROR: the server does not know the statement (SHOW REPLICA STATUS before
/// MySQL 8.0.22 and MariaDB 10.5).
const PARSE_ERROR: u16 = 1064;

/// Errors that mean `mysql.rds_configuration` is not there: ER_BAD_DB_ERROR, ER_NO_SUCH_TABLE.
const NO_SUCH_TABLE: &[u16] = &[1049, 1146];

/// Errors that mean the user may not read something: ER_DBACCESS_DENIED_ERROR,
/// ER_TABLEACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR.
const DENIED: &[u16] = &[1044, 1142, 1227];

/// Global variables as `SHOW GLOBAL VARIABLES` lists them, by lower-case name; a variable the
/// server lacks is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables(BTreeMap<String, String>);

impl Variables {
    /// From (name, value) pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Variables {
        Variables(
            pairs
                .into_iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Whether a switch is on: anything but OFF, 0, FALSE, NO or nothing (MariaDB 11's
    /// read_only also has NO_LOCK and NO_LOCK_NO_ADMIN, both read-only).
    fn is_on(&self, name: &str) -> Option<bool> {
        self.get(name).map(|value| {
            !matches!(
                value.trim().to_ascii_uppercase().as_str(),
                "OFF" | "0" | "FALSE" | "NO" | ""
            )
        })
    }

    fn number(&self, name: &str) -> Option<f64> {
        self.get(name)?.trim().parse::<f64>().ok()
    }
}

/// What `mysql.rds_configuration` says of `binlog retention hours`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdsConfiguration {
    /// The table is not there: not RDS or Aurora.
    Absent,
    /// The table may be there, but the user may not read it.
    Unreadable,
    /// The table's value (NULL when unset, RDS's default).
    RetentionHours(Option<String>),
}

/// What initializing found about the source, beyond its prerequisites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub variables: Variables,
    pub rds: RdsConfiguration,
    /// `host:port` of the server it replicates from, when it is a replica and the user may see
    /// it (`SHOW REPLICA STATUS` needs REPLICATION CLIENT on MySQL, SLAVE MONITOR on MariaDB).
    pub replicates_from: Option<String>,
}

/// Warnings and reported settings, for the step's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Settings worth knowing, for the step's message ("gtid_mode ON").
    pub reported: Vec<String>,
    /// What works but puts captured changes at risk, each naming its fix.
    pub warnings: Vec<String>,
}

/// Reads what the checks need: the variables, RDS's configuration table, and the replication
/// source.
pub async fn read(connection: &mut Conn, address: &Endpoint) -> Result<Source, MysqlFailure> {
    Ok(Source {
        variables: variables(connection, address).await?,
        rds: rds_configuration(connection, address).await?,
        replicates_from: replicates_from(connection, address).await?,
    })
}

/// The variables of [`VARIABLES`] the server has.
async fn variables(connection: &mut Conn, address: &Endpoint) -> Result<Variables, MysqlFailure> {
    let names = VARIABLES
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<Row> = address
        .ask(
            "SHOW GLOBAL VARIABLES",
            connection.query(format!(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({names})"
            )),
        )
        .await?;
    let pairs: Vec<(String, String)> = rows
        .into_iter()
        .filter_map(|row| {
            // Row::unwrap hands the values over; it cannot fail.
            let mut values = row.unwrap();
            let value = text(values.pop()?);
            let name = text(values.pop()?);
            Some((name, value))
        })
        .collect();
    Ok(Variables::from_pairs(
        pairs
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    ))
}

/// A value as text, whatever the server sent it as (NULL is empty).
fn text(value: Value) -> String {
    match value {
        Value::NULL => String::new(),
        Value::Bytes(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Value::Int(number) => number.to_string(),
        Value::UInt(number) => number.to_string(),
        Value::Float(number) => number.to_string(),
        Value::Double(number) => number.to_string(),
        other => other.as_sql(true).trim_matches('\'').to_owned(),
    }
}

/// `binlog retention hours` from `mysql.rds_configuration`, where RDS and Aurora keep it.
async fn rds_configuration(
    connection: &mut Conn,
    address: &Endpoint,
) -> Result<RdsConfiguration, MysqlFailure> {
    let asked = address
        .ask("mysql.rds_configuration", async {
            Ok(connection
                .query::<Row, _>(
                    "SELECT value FROM mysql.rds_configuration \
                     WHERE name = 'binlog retention hours'",
                )
                .await)
        })
        .await?;
    match asked {
        Ok(rows) => Ok(RdsConfiguration::RetentionHours(
            rows.into_iter()
                .next()
                .and_then(|row| row.unwrap().into_iter().next()) // the values, never a panic
                .filter(|value| *value != Value::NULL)
                .map(text),
        )),
        Err(mysql_async::Error::Server(error)) if NO_SUCH_TABLE.contains(&error.code) => {
            Ok(RdsConfiguration::Absent)
        }
        Err(mysql_async::Error::Server(error)) if DENIED.contains(&error.code) => {
            Ok(RdsConfiguration::Unreadable)
        }
        Err(error) => Err(mysql::classify(&error, address)),
    }
}

/// The source's own source, from `SHOW REPLICA STATUS` (or `SHOW SLAVE STATUS` on servers that
/// do not know the former); None when it is no replica or the user may not see it.
async fn replicates_from(
    connection: &mut Conn,
    address: &Endpoint,
) -> Result<Option<String>, MysqlFailure> {
    let mut rows = Vec::new();
    for statement in ["SHOW REPLICA STATUS", "SHOW SLAVE STATUS"] {
        let asked = address
            .ask(statement, async {
                Ok(connection.query::<Row, _>(statement).await)
            })
            .await?;
        match asked {
            Ok(found) => {
                rows = found;
                break;
            }
            Err(mysql_async::Error::Server(error)) if error.code == PARSE_ERROR => continue,
            Err(mysql_async::Error::Server(error)) if DENIED.contains(&error.code) => {
                return Ok(None);
            }
            Err(error) => return Err(mysql::classify(&error, address)),
        }
    }
    Ok(rows.first().and_then(source_of))
}

/// `host:port` of a replica status row (MySQL 8.0.22+ names the columns Source_*, older MySQL
/// and MariaDB Master_*).
fn source_of(row: &Row) -> Option<String> {
    let column = |names: [&str; 2]| {
        names
            .into_iter()
            .find_map(|name| row.get::<Value, _>(name))
            .map(text)
            .filter(|value| !value.is_empty())
    };
    let host = column(["Source_Host", "Master_Host"])?;
    let port = column(["Source_Port", "Master_Port"]).unwrap_or_else(|| "3306".to_owned());
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

impl Source {
    /// Whether the server is RDS or Aurora: it has their configuration table, or (when the user
    /// may not read that) their install path or Aurora's version variable.
    fn managed(&self) -> Option<&'static str> {
        let hinted = self
            .variables
            .get("basedir")
            .is_some_and(|dir| dir.starts_with("/rdsdbbin"));
        let aurora = self.variables.get("aurora_version").is_some();
        let rds = match self.rds {
            RdsConfiguration::RetentionHours(_) => true,
            RdsConfiguration::Unreadable => hinted || aurora,
            RdsConfiguration::Absent => false,
        };
        match (rds, aurora) {
            (true, true) => Some("Aurora"),
            (true, false) => Some("RDS"),
            (false, _) => None,
        }
    }

    /// Every warning and reported setting.
    pub fn findings(&self) -> Findings {
        let managed = self.managed();
        let (retention, retention_warning) = match managed {
            Some(platform) => rds_retention(&self.rds, platform),
            None => retention(&self.variables),
        };
        let mut reported = vec![retention];
        reported.extend(
            self.variables
                .get("sync_binlog")
                .map(|value| format!("sync_binlog {value}")),
        );
        reported.extend(REPORTED.iter().filter_map(|name| {
            let value = self.variables.get(name)?;
            Some(format!("{name} {}", shown(value)))
        }));
        let warnings = [
            retention_warning,
            sync_binlog(&self.variables, managed),
            read_only_or_replica(self, managed),
        ];
        Findings {
            reported,
            warnings: warnings.into_iter().flatten().collect(),
        }
    }
}

/// A variable's value as the message shows it.
fn shown(value: &str) -> &str {
    if value.trim().is_empty() {
        "empty"
    } else {
        value
    }
}

/// A span of seconds as a person says it: "30 days", "12 hours", "90 minutes".
fn span(seconds: u64) -> String {
    let unit =
        |count: u64, name: &str| format!("{count} {name}{}", if count == 1 { "" } else { "s" });
    if seconds >= 86400 && seconds.is_multiple_of(86400) {
        unit(seconds / 86400, "day")
    } else if seconds >= 3600 && seconds.is_multiple_of(3600) {
        unit(seconds / 3600, "hour")
    } else if seconds >= 60 && seconds.is_multiple_of(60) {
        unit(seconds / 60, "minute")
    } else {
        unit(seconds, "second")
    }
}

/// Binlog retention off RDS: `binlog_expire_logs_seconds` when it is set, else
/// `expire_logs_days`; neither set (or automatic purging off) keeps the binlog for ever. The
/// reported retention, and a warning below 24 hours.
fn retention(variables: &Variables) -> (String, Option<String>) {
    if variables.is_on("binlog_expire_logs_auto_purge") == Some(false) {
        return (
            "binlog retention unlimited (binlog_expire_logs_auto_purge OFF)".to_owned(),
            None,
        );
    }
    let seconds = variables
        .number("binlog_expire_logs_seconds")
        .filter(|seconds| *seconds > 0.0);
    let days = variables
        .number("expire_logs_days")
        .filter(|days| *days > 0.0);
    let (variable, value, retained, fix) = match (seconds, days) {
        (Some(seconds), _) => (
            "binlog_expire_logs_seconds",
            seconds.to_string(),
            seconds as u64,
            format!(
                "SET GLOBAL binlog_expire_logs_seconds = {}",
                RECOMMENDED_RETENTION_HOURS * 3600
            ),
        ),
        (None, Some(days)) => (
            "expire_logs_days",
            days.to_string(),
            (days * 86400.0) as u64,
            format!(
                "SET GLOBAL expire_logs_days = {}",
                RECOMMENDED_RETENTION_HOURS / 24
            ),
        ),
        (None, None) => {
            return (
                "binlog retention unlimited (no expiry set)".to_owned(),
                None,
            );
        }
    };
    let reported = format!("binlog retention {} ({variable} {value})", span(retained));
    let warning = (retained < MINIMUM_RETENTION_SECONDS).then(|| {
        format!(
            "binlog retention is {} ({variable} = {value}): a stream that is down longer than \
             that loses its position and needs a new snapshot; keep at least 24 hours: {fix} \
             and persist it in my.cnf",
            span(retained)
        )
    });
    (reported, warning)
}

/// Binlog retention on RDS and Aurora, which purge by `binlog retention hours` (NULL by default:
/// as soon as they can). The reported retention, and a warning below 24 hours.
fn rds_retention(rds: &RdsConfiguration, platform: &str) -> (String, Option<String>) {
    let fix = format!(
        "CALL mysql.rds_set_configuration('binlog retention hours', {RECOMMENDED_RETENTION_HOURS})"
    );
    let (reported, problem) = match rds {
        RdsConfiguration::RetentionHours(None) => (
            format!("binlog retention hours NULL ({platform})"),
            Some(format!(
                "binlog retention hours is NULL on this {platform} server \
                 (mysql.rds_configuration), so {platform} removes binlogs as soon as it can: a \
                 stream that is down for minutes can lose its position and need a new snapshot"
            )),
        ),
        RdsConfiguration::RetentionHours(Some(value)) => match value.trim().parse::<u64>() {
            Ok(hours) if hours * 3600 >= MINIMUM_RETENTION_SECONDS => {
                (format!("binlog retention hours {hours} ({platform})"), None)
            }
            Ok(hours) => (
                format!("binlog retention hours {hours} ({platform})"),
                Some(format!(
                    "binlog retention hours is {hours} on this {platform} server: a stream that \
                     is down longer than that loses its position and needs a new snapshot"
                )),
            ),
            Err(_) => (
                format!("binlog retention hours {value} ({platform})"),
                Some(format!(
                    "binlog retention hours is '{value}' on this {platform} server, not a number \
                     of hours"
                )),
            ),
        },
        RdsConfiguration::Unreadable | RdsConfiguration::Absent => (
            format!("binlog retention hours unknown ({platform})"),
            Some(format!(
                "this {platform} server's binlog retention cannot be checked: the user may not \
                 read mysql.rds_configuration; see it with CALL mysql.rds_show_configuration, \
                 and if binlog retention hours is NULL or below 24"
            )),
        ),
    };
    (
        reported,
        problem.map(|problem| format!("{problem}; keep at least 24 hours: {fix}")),
    )
}

/// `sync_binlog` other than 1: a crash can lose the binlog's tail.
fn sync_binlog(variables: &Variables, managed: Option<&str>) -> Option<String> {
    let value = variables.get("sync_binlog")?;
    if value.trim() == "1" {
        return None;
    }
    let fix = match managed {
        Some(platform) => format!("set sync_binlog to 1 in the {platform} DB parameter group"),
        None => "SET GLOBAL sync_binlog = 1 and persist it in my.cnf".to_owned(),
    };
    Some(format!(
        "sync_binlog is {value}: the binlog is not flushed to disk at every commit, so a crash \
         of the source's host can lose the binlog's tail, and changes committed there are never \
         captured; {fix}"
    ))
}

/// A read-only source, or one that replicates from another server: dbtrail captures what its
/// own binlog records, which holds the replicated writes only with log_replica_updates ON.
fn read_only_or_replica(source: &Source, managed: Option<&str>) -> Option<String> {
    let variables = &source.variables;
    let flags: Vec<&str> = ["read_only", "super_read_only"]
        .into_iter()
        .filter(|name| variables.is_on(name) == Some(true))
        .collect();
    let what = match (&source.replicates_from, flags.is_empty()) {
        (None, true) => return None,
        (Some(from), true) => format!("the source replicates from {from}"),
        (None, false) => format!("the source is read-only ({} ON)", flags.join(", ")),
        (Some(from), false) => format!(
            "the source is a read-only replica of {from} ({} ON)",
            flags.join(", ")
        ),
    };
    // MySQL 8.0.26+ names it log_replica_updates (log_slave_updates an alias until 8.4).
    let updates = ["log_replica_updates", "log_slave_updates"]
        .into_iter()
        .find_map(|name| Some((name, variables.is_on(name)?)));
    let restart = match managed {
        Some(platform) => format!("set it in the {platform} DB parameter group and reboot"),
        None => "set it in my.cnf and restart the server".to_owned(),
    };
    let consequence = match updates {
        Some((name, true)) => format!(
            "{name} is ON, so writes replicated to it are captured; to capture the primary \
             directly, register the primary instead"
        ),
        Some((name, false)) => format!(
            "{name} is OFF, so writes replicated to it are not in its binlog and are never \
             captured: {restart} ({name} = ON), or register the primary instead"
        ),
        None => "writes replicated to it are in its binlog only with log_replica_updates \
                 (log_slave_updates) ON: check it, or register the primary instead"
            .to_owned(),
    };
    Some(format!(
        "{what}: dbtrail captures what this server's own binlog records; {consequence}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pairs: &[(&str, &str)], rds: RdsConfiguration) -> Source {
        Source {
            variables: Variables::from_pairs(pairs.iter().copied()),
            rds,
            replicates_from: None,
        }
    }

    fn mysql80(extra: &[(&str, &str)]) -> Source {
        let mut pairs = vec![
            ("sync_binlog", "1"),
            ("binlog_expire_logs_seconds", "2592000"),
            ("expire_logs_days", "0"),
            ("binlog_expire_logs_auto_purge", "ON"),
            ("binlog_row_value_options", ""),
            ("binlog_transaction_compression", "OFF"),
            ("binlog_row_metadata", "MINIMAL"),
            ("gtid_mode", "OFF"),
            ("read_only", "OFF"),
            ("super_read_only", "OFF"),
            ("log_replica_updates", "ON"),
            ("log_slave_updates", "ON"),
            ("basedir", "/usr/"),
        ];
        for (name, value) in extra {
            pairs.retain(|(existing, _)| existing != name);
            pairs.push((name, value));
        }
        source(&pairs, RdsConfiguration::Absent)
    }

    #[test]
    fn a_default_mysql_80_reports_its_settings_and_warns_of_nothing() {
        assert_eq!(
            mysql80(&[]).findings(),
            Findings {
                reported: vec![
                    "binlog retention 30 days (binlog_expire_logs_seconds 2592000)".to_owned(),
                    "sync_binlog 1".to_owned(),
                    "gtid_mode OFF".to_owned(),
                    "binlog_transaction_compression OFF".to_owned(),
                    "binlog_row_value_options empty".to_owned(),
                    "binlog_row_metadata MINIMAL".to_owned(),
                ],
                warnings: vec![],
            }
        );
    }

    #[test]
    fn short_retention_names_the_variable_that_sets_it() {
        let findings = mysql80(&[("binlog_expire_logs_seconds", "3600")]).findings();
        assert_eq!(
            findings.warnings,
            [
                "binlog retention is 1 hour (binlog_expire_logs_seconds = 3600): a stream that is \
              down longer than that loses its position and needs a new snapshot; keep at least \
              24 hours: SET GLOBAL binlog_expire_logs_seconds = 259200 and persist it in my.cnf"
            ]
        );
        // MySQL 5.7 has only expire_logs_days; MySQL 8.0 falls back to it when the seconds are 0.
        let days = source(
            &[("expire_logs_days", "0.5"), ("sync_binlog", "1")],
            RdsConfiguration::Absent,
        )
        .findings();
        assert_eq!(
            days.warnings,
            [
                "binlog retention is 12 hours (expire_logs_days = 0.5): a stream that is down \
              longer than that loses its position and needs a new snapshot; keep at least 24 \
              hours: SET GLOBAL expire_logs_days = 3 and persist it in my.cnf"
            ]
        );
        let fallback = mysql80(&[
            ("binlog_expire_logs_seconds", "0"),
            ("expire_logs_days", "7"),
        ])
        .findings();
        assert_eq!(fallback.warnings, Vec::<String>::new());
        assert_eq!(
            fallback.reported[0],
            "binlog retention 7 days (expire_logs_days 7)"
        );
    }

    #[test]
    fn no_expiry_or_no_automatic_purge_keeps_the_binlog() {
        let none = mysql80(&[("binlog_expire_logs_seconds", "0")]).findings();
        assert_eq!(
            none.reported[0],
            "binlog retention unlimited (no expiry set)"
        );
        assert_eq!(none.warnings, Vec::<String>::new());
        let off = mysql80(&[
            ("binlog_expire_logs_seconds", "60"),
            ("binlog_expire_logs_auto_purge", "OFF"),
        ])
        .findings();
        assert_eq!(
            off.reported[0],
            "binlog retention unlimited (binlog_expire_logs_auto_purge OFF)"
        );
        assert_eq!(off.warnings, Vec::<String>::new());
    }

    #[test]
    fn rds_retention_comes_from_its_configuration_table() {
        let fix = "keep at least 24 hours: CALL mysql.rds_set_configuration('binlog retention \
                   hours', 72)";
        let null = Source {
            rds: RdsConfiguration::RetentionHours(None),
            ..mysql80(&[])
        };
        assert_eq!(
            null.findings().warnings,
            [format!(
                "binlog retention hours is NULL on this RDS server (mysql.rds_configuration), so \
                 RDS removes binlogs as soon as it can: a stream that is down for minutes can \
                 lose its position and need a new snapshot; {fix}"
            )]
        );
        let short = Source {
            rds: RdsConfiguration::RetentionHours(Some("12".into())),
            ..mysql80(&[("aurora_version", "3.05.2")])
        };
        assert_eq!(
            short.findings().warnings,
            [format!(
                "binlog retention hours is 12 on this Aurora server: a stream that is down \
                 longer than that loses its position and needs a new snapshot; {fix}"
            )]
        );
        assert_eq!(
            short.findings().reported[0],
            "binlog retention hours 12 (Aurora)"
        );
        let enough = Source {
            rds: RdsConfiguration::RetentionHours(Some("72".into())),
            ..mysql80(&[("binlog_expire_logs_seconds", "600")])
        };
        assert_eq!(enough.findings().warnings, Vec::<String>::new());
    }

    #[test]
    fn an_unreadable_rds_table_warns_only_on_rds() {
        let rds = Source {
            rds: RdsConfiguration::Unreadable,
            ..mysql80(&[("basedir", "/rdsdbbin/mysql-8.0.40.R1/")])
        };
        assert_eq!(
            rds.findings().warnings,
            [
                "this RDS server's binlog retention cannot be checked: the user may not read \
              mysql.rds_configuration; see it with CALL mysql.rds_show_configuration, and if \
              binlog retention hours is NULL or below 24; keep at least 24 hours: CALL \
              mysql.rds_set_configuration('binlog retention hours', 72)"
            ]
        );
        let elsewhere = Source {
            rds: RdsConfiguration::Unreadable,
            ..mysql80(&[])
        };
        assert_eq!(elsewhere.findings().warnings, Vec::<String>::new());
    }

    #[test]
    fn sync_binlog_other_than_one_is_a_warning_with_the_fix_where_it_is_made() {
        let warning = "sync_binlog is 0: the binlog is not flushed to disk at every commit, so a \
                       crash of the source's host can lose the binlog's tail, and changes \
                       committed there are never captured; ";
        assert_eq!(
            mysql80(&[("sync_binlog", "0")]).findings().warnings,
            [format!(
                "{warning}SET GLOBAL sync_binlog = 1 and persist it in my.cnf"
            )]
        );
        let rds = Source {
            rds: RdsConfiguration::RetentionHours(Some("168".into())),
            ..mysql80(&[("sync_binlog", "0")])
        };
        assert_eq!(
            rds.findings().warnings,
            [format!(
                "{warning}set sync_binlog to 1 in the RDS DB parameter group"
            )]
        );
    }

    #[test]
    fn a_read_only_or_replica_source_is_reported_with_what_it_captures() {
        let mariadb_11 = source(&[("read_only", "NO_LOCK")], RdsConfiguration::Absent);
        assert!(
            mariadb_11.findings().warnings[0].starts_with("the source is read-only (read_only ON)")
        );
        let read_only = mysql80(&[("read_only", "ON"), ("super_read_only", "ON")]);
        assert_eq!(
            read_only.findings().warnings,
            [
                "the source is read-only (read_only, super_read_only ON): dbtrail captures what \
              this server's own binlog records; log_replica_updates is ON, so writes replicated \
              to it are captured; to capture the primary directly, register the primary instead"
            ]
        );
        let replica = Source {
            replicates_from: Some("10.0.0.5:3306".into()),
            ..source(
                &[("read_only", "OFF"), ("log_slave_updates", "OFF")],
                RdsConfiguration::Absent,
            )
        };
        assert_eq!(
            replica.findings().warnings,
            [
                "the source replicates from 10.0.0.5:3306: dbtrail captures what this server's own \
              binlog records; log_slave_updates is OFF, so writes replicated to it are not in \
              its binlog and are never captured: set it in my.cnf and restart the server \
              (log_slave_updates = ON), or register the primary instead"
            ]
        );
        assert_eq!(mysql80(&[]).findings().warnings, Vec::<String>::new());
    }

    #[test]
    fn mariadb_lacks_mysql_only_variables_and_that_is_no_error() {
        // MariaDB 10.11's defaults: no gtid_mode, compression or partial JSON variables.
        let mariadb = source(
            &[
                ("sync_binlog", "0"),
                ("binlog_expire_logs_seconds", "0"),
                ("expire_logs_days", "0.000000"),
                ("binlog_row_metadata", "NO_LOG"),
                ("read_only", "OFF"),
                ("log_slave_updates", "OFF"),
            ],
            RdsConfiguration::Absent,
        );
        let findings = mariadb.findings();
        assert_eq!(
            findings.reported,
            [
                "binlog retention unlimited (no expiry set)",
                "sync_binlog 0",
                "binlog_row_metadata NO_LOG"
            ]
        );
        assert_eq!(findings.warnings.len(), 1, "{findings:?}");
        assert!(findings.warnings[0].starts_with("sync_binlog is 0:"));
    }

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(2592000), "30 days");
        assert_eq!(span(86400), "1 day");
        assert_eq!(span(43200), "12 hours");
        assert_eq!(span(5400), "90 minutes");
        assert_eq!(span(61), "61 seconds");
    }
}
