//! Binlog retention: how long the binlog is kept, off RDS from the server's variables and on RDS
//! and Aurora from their configuration table, reported as a person says it and a warning, with its
//! fix, when it is below a day.

use super::{RdsConfiguration, Variables};

/// Below this, binlog retention is a warning.
const MINIMUM_RETENTION_SECONDS: u64 = 24 * 3600;

/// The fix the retention warnings propose: three days, so a weekend outage is survived.
const RECOMMENDED_RETENTION_HOURS: u64 = 72;

/// A span of seconds as a person says it: "30 days", "12 hours", "90 minutes".
pub(super) fn span(seconds: u64) -> String {
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
/// reported retention, and a warning (message, remedy) below 24 hours.
pub(super) fn retention(variables: &Variables) -> (String, Option<(String, String)>) {
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
        (
            format!(
                "binlog retention is {} ({variable} = {value}): a stream that is down longer \
                 than that loses its position and needs a new snapshot; keep at least 24 hours",
                span(retained)
            ),
            format!("{fix} and persist it in my.cnf"),
        )
    });
    (reported, warning)
}

/// Binlog retention on RDS and Aurora, which purge by `binlog retention hours` (NULL by default:
/// as soon as they can). The reported retention, and a warning (message, remedy) below 24 hours.
pub(super) fn rds_retention(
    rds: &RdsConfiguration,
    platform: &str,
) -> (String, Option<(String, String)>) {
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
        problem.map(|problem| (format!("{problem}; keep at least 24 hours"), fix)),
    )
}
