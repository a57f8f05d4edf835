//! Preflight checks (CheckServer, RegisterServer with validate_only, and the onboarding steps
//! that run the same checks): what one check found, as a stable name, a result, a message and the
//! exact remedy. No I/O: the checks themselves live in `onboarding/`.

use std::fmt;

use serde::{Deserialize, Serialize};

wire_enum!(
    /// What one check found: `skipped` when an earlier failure kept it from running.
    CheckResult { Pass = "pass", Warn = "warn", Fail = "fail", Skipped = "skipped" }
);

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// A stable snake_case identifier ("log_bin", "replication_slave_grant").
    pub name: &'static str,
    pub result: CheckResult,
    /// What was found, never a secret.
    pub message: String,
    /// The SQL or setting that fixes it; empty when nothing needs fixing.
    pub remedy: String,
}

impl Check {
    fn new(name: &'static str, result: CheckResult, message: String, remedy: String) -> Check {
        Check {
            name,
            result,
            message,
            remedy,
        }
    }

    /// A check that passed.
    pub fn pass(name: &'static str, message: impl Into<String>) -> Check {
        Check::new(name, CheckResult::Pass, message.into(), String::new())
    }

    /// A check that warns: it works, but `remedy` is advised.
    pub fn warn(
        name: &'static str,
        message: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Check {
        Check::new(name, CheckResult::Warn, message.into(), remedy.into())
    }

    /// A check that failed: onboarding cannot go on until `remedy` is applied.
    pub fn fail(
        name: &'static str,
        message: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Check {
        let failed = Check::warn(name, message, remedy);
        Check {
            result: CheckResult::Fail,
            ..failed
        }
    }

    /// A check of `result` naming its `problem` (message, remedy), or, without one, a pass
    /// saying `passed`.
    pub fn judge(
        name: &'static str,
        result: CheckResult,
        passed: impl Into<String>,
        problem: Option<(String, String)>,
    ) -> Check {
        match problem {
            Some((message, remedy)) => Check::new(name, result, message, remedy),
            None => Check::pass(name, passed),
        }
    }

    /// A check that did not run, saying why.
    pub fn skipped(name: &'static str, why: impl Into<String>) -> Check {
        Check::new(name, CheckResult::Skipped, why.into(), String::new())
    }

    /// Whether it failed.
    pub fn failed(&self) -> bool {
        self.result == CheckResult::Fail
    }

    /// The message and its remedy as one sentence, as onboarding's step errors and warnings say it.
    pub fn sentence(&self) -> String {
        if self.remedy.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.message, self.remedy)
        }
    }
}

/// Every check of one preflight, in the order they ran, and the SSH jumphost's host key seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The jumphost's host key fingerprint (`SHA256:...`) as presented, when one was; never pinned.
    pub host_key_fingerprint: Option<String>,
}

impl Report {
    /// Whether no check failed (warnings do not block).
    pub fn ok(&self) -> bool {
        !self.checks.iter().any(Check::failed)
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|check| check.failed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentence_joins_the_message_and_its_remedy() {
        let check = Check::fail(
            "log_bin",
            "log_bin is OFF",
            "start the server with --log-bin",
        );
        assert_eq!(
            check.sentence(),
            "log_bin is OFF: start the server with --log-bin"
        );
        assert_eq!(
            Check::pass("version", "MariaDB 11").sentence(),
            "MariaDB 11"
        );
        let report = Report {
            checks: vec![
                Check::warn("sync_binlog", "0", "SET GLOBAL sync_binlog = 1"),
                check,
            ],
            host_key_fingerprint: None,
        };
        assert!(!report.ok());
        assert_eq!(report.failures().count(), 1);
        assert_eq!(CheckResult::parse("skipped"), Some(CheckResult::Skipped));
    }
}
