//! The source's other risks to captured changes: `sync_binlog` other than 1 (a crash can lose the
//! binlog's tail), and a read-only or replica source (its binlog holds replicated writes only with
//! log_replica_updates ON).

use super::{Source, Variables};

/// `sync_binlog` other than 1: a crash can lose the binlog's tail. A warning (message, remedy).
pub(super) fn sync_binlog(
    variables: &Variables,
    managed: Option<&str>,
) -> Option<(String, String)> {
    let value = variables.get("sync_binlog")?;
    if value.trim() == "1" {
        return None;
    }
    let fix = match managed {
        Some(platform) => format!("set sync_binlog to 1 in the {platform} DB parameter group"),
        None => "SET GLOBAL sync_binlog = 1 and persist it in my.cnf".to_owned(),
    };
    Some((
        format!(
            "sync_binlog is {value}: the binlog is not flushed to disk at every commit, so a \
             crash of the source's host can lose the binlog's tail, and changes committed there \
             are never captured"
        ),
        fix,
    ))
}

/// A read-only source, or one that replicates from another server: dbtrail captures what its
/// own binlog records, which holds the replicated writes only with log_replica_updates ON. A
/// warning (message, remedy).
pub(super) fn read_only_or_replica(
    source: &Source,
    managed: Option<&str>,
) -> Option<(String, String)> {
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
    let (consequence, remedy) = match updates {
        Some((name, true)) => (
            format!("{name} is ON, so writes replicated to it are captured"),
            "to capture the primary directly, register the primary instead".to_owned(),
        ),
        Some((name, false)) => (
            format!(
                "{name} is OFF, so writes replicated to it are not in its binlog and are never \
                 captured"
            ),
            format!("{restart} ({name} = ON), or register the primary instead"),
        ),
        None => (
            "writes replicated to it are in its binlog only with log_replica_updates \
             (log_slave_updates) ON"
                .to_owned(),
            "check it, or register the primary instead".to_owned(),
        ),
    };
    Some((
        format!("{what}: dbtrail captures what this server's own binlog records; {consequence}"),
        remedy,
    ))
}
