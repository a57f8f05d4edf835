//! Unit tests of the source checks: the findings for MySQL, MariaDB, RDS and Aurora settings,
//! and how spans of time read.

use super::retention::span;
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
    let findings = mysql80(&[]).findings();
    assert_eq!(
        findings.reported,
        [
            "binlog retention 30 days (binlog_expire_logs_seconds 2592000)",
            "sync_binlog 1",
            "gtid_mode OFF",
            "binlog_transaction_compression OFF",
            "binlog_row_value_options empty",
            "binlog_row_metadata MINIMAL",
        ]
    );
    assert_eq!(findings.warnings(), Vec::<String>::new());
    let names: Vec<&str> = findings.checks.iter().map(|check| check.name).collect();
    assert_eq!(
        names,
        ["retention", "sync_binlog", "source_role", "binlog_options"]
    );
    assert!(findings.checks.iter().all(|check| !check.failed()));
}

#[test]
fn short_retention_names_the_variable_that_sets_it() {
    let findings = mysql80(&[("binlog_expire_logs_seconds", "3600")]).findings();
    assert_eq!(
        findings.warnings(),
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
        days.warnings(),
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
    assert_eq!(fallback.warnings(), Vec::<String>::new());
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
    assert_eq!(none.warnings(), Vec::<String>::new());
    let off = mysql80(&[
        ("binlog_expire_logs_seconds", "60"),
        ("binlog_expire_logs_auto_purge", "OFF"),
    ])
    .findings();
    assert_eq!(
        off.reported[0],
        "binlog retention unlimited (binlog_expire_logs_auto_purge OFF)"
    );
    assert_eq!(off.warnings(), Vec::<String>::new());
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
        null.findings().warnings(),
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
        short.findings().warnings(),
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
    assert_eq!(enough.findings().warnings(), Vec::<String>::new());
}

#[test]
fn an_unreadable_rds_table_warns_only_on_rds() {
    let rds = Source {
        rds: RdsConfiguration::Unreadable,
        ..mysql80(&[("basedir", "/rdsdbbin/mysql-8.0.40.R1/")])
    };
    assert_eq!(
        rds.findings().warnings(),
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
    assert_eq!(elsewhere.findings().warnings(), Vec::<String>::new());
}

#[test]
fn sync_binlog_other_than_one_is_a_warning_with_the_fix_where_it_is_made() {
    let warning = "sync_binlog is 0: the binlog is not flushed to disk at every commit, so a \
                   crash of the source's host can lose the binlog's tail, and changes \
                   committed there are never captured: ";
    assert_eq!(
        mysql80(&[("sync_binlog", "0")]).findings().warnings(),
        [format!(
            "{warning}SET GLOBAL sync_binlog = 1 and persist it in my.cnf"
        )]
    );
    let rds = Source {
        rds: RdsConfiguration::RetentionHours(Some("168".into())),
        ..mysql80(&[("sync_binlog", "0")])
    };
    assert_eq!(
        rds.findings().warnings(),
        [format!(
            "{warning}set sync_binlog to 1 in the RDS DB parameter group"
        )]
    );
}

#[test]
fn a_read_only_or_replica_source_is_reported_with_what_it_captures() {
    let mariadb_11 = source(&[("read_only", "NO_LOCK")], RdsConfiguration::Absent);
    assert!(
        mariadb_11.findings().warnings()[0].starts_with("the source is read-only (read_only ON)")
    );
    let read_only = mysql80(&[("read_only", "ON"), ("super_read_only", "ON")]);
    assert_eq!(
        read_only.findings().warnings(),
        [
            "the source is read-only (read_only, super_read_only ON): dbtrail captures what \
          this server's own binlog records; log_replica_updates is ON, so writes replicated \
          to it are captured: to capture the primary directly, register the primary instead"
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
        replica.findings().warnings(),
        [
            "the source replicates from 10.0.0.5:3306: dbtrail captures what this server's own \
          binlog records; log_slave_updates is OFF, so writes replicated to it are not in \
          its binlog and are never captured: set it in my.cnf and restart the server \
          (log_slave_updates = ON), or register the primary instead"
        ]
    );
    assert_eq!(mysql80(&[]).findings().warnings(), Vec::<String>::new());
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
    assert_eq!(findings.warnings().len(), 1, "{findings:?}");
    assert!(findings.warnings()[0].starts_with("sync_binlog is 0:"));
}

#[test]
fn spans_read_as_people_say_them() {
    assert_eq!(span(2592000), "30 days");
    assert_eq!(span(86400), "1 day");
    assert_eq!(span(43200), "12 hours");
    assert_eq!(span(5400), "90 minutes");
    assert_eq!(span(61), "61 seconds");
}
