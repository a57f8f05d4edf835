//! What initializing reads beyond the prerequisites: settings that work but put captured changes
//! at risk (binlog retention, `sync_binlog`, a read-only or replica source) become warnings, each
//! naming its fix; settings that change what the binlog holds (GTIDs, compression, partial JSON,
//! row metadata) are reported in the step's message. A variable the server does not have (MariaDB,
//! an older MySQL) is absent, never an error.
//!
//! This file owns what the checks work on and give (the variables, RDS's configuration, the
//! source, the findings) and the assembling of the findings. `reading` asks the server;
//! `retention` judges binlog retention on and off RDS; `sync_and_role` judges `sync_binlog` and a
//! read-only or replica source; `tests` holds the unit tests.

use std::collections::BTreeMap;

use crate::domain::check::{Check, CheckResult};

mod reading;
mod retention;
mod sync_and_role;
#[cfg(test)]
mod tests;

pub use reading::read;
use retention::{rds_retention, retention};
use sync_and_role::{read_only_or_replica, sync_binlog};

/// The settings reported in the step's message, in this order, when the server has them.
const REPORTED: &[&str] = &[
    "gtid_mode",
    "binlog_transaction_compression",
    "binlog_row_value_options",
    "binlog_row_metadata",
];

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

/// Reported settings and the checks they pass or warn of, for the step's outcome and for
/// CheckServer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Settings worth knowing, for the step's message ("gtid_mode ON").
    pub reported: Vec<String>,
    /// retention, sync_binlog, source_role and binlog_options: each passes or warns of what
    /// works but puts captured changes at risk, naming its fix.
    pub checks: Vec<Check>,
}

impl Findings {
    /// The warnings, each a sentence naming its fix, as the step lists them.
    pub fn warnings(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|check| check.result == CheckResult::Warn)
            .map(Check::sentence)
            .collect()
    }
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
        let sync = self
            .variables
            .get("sync_binlog")
            .map(|value| format!("sync_binlog {value}"));
        let options: Vec<String> = REPORTED
            .iter()
            .filter_map(|name| {
                let value = self.variables.get(name)?;
                Some(format!("{name} {}", shown(value)))
            })
            .collect();
        let judged =
            |name, passed: String, warning| Check::judge(name, CheckResult::Warn, passed, warning);
        let checks = vec![
            judged("retention", retention.clone(), retention_warning),
            judged(
                "sync_binlog",
                sync.clone()
                    .unwrap_or_else(|| "the server has no sync_binlog".to_owned()),
                sync_binlog(&self.variables, managed),
            ),
            judged(
                "source_role",
                "the source is neither read-only nor a replica".to_owned(),
                read_only_or_replica(self, managed),
            ),
            Check::pass("binlog_options", binlog_options(&options)),
        ];
        let mut reported = vec![retention];
        reported.extend(sync);
        reported.extend(options);
        Findings { reported, checks }
    }
}

/// What the MySQL 8 binlog options are, for the binlog_options check: each is supported.
fn binlog_options(options: &[String]) -> String {
    if options.is_empty() {
        "the server has none of gtid_mode, binlog_transaction_compression, \
         binlog_row_value_options, binlog_row_metadata"
            .to_owned()
    } else {
        format!("{}: each is supported", options.join(", "))
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
