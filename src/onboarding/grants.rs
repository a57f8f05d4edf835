//! Reading `SHOW GRANTS` output of MySQL and MariaDB: global and per-schema privileges, granted
//! roles, and the many spellings the same privilege has across versions.

use std::collections::{BTreeSet, HashMap};

/// A privilege onboarding needs, with every spelling servers print for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    ReplicationSlave,
    ReplicationClient,
    Select,
}

impl Needed {
    /// The canonical name, as used in a GRANT statement.
    pub fn grant_name(self) -> &'static str {
        match self {
            Needed::ReplicationSlave => "REPLICATION SLAVE",
            Needed::ReplicationClient => "REPLICATION CLIENT",
            Needed::Select => "SELECT",
        }
    }

    fn spellings(self) -> &'static [&'static str] {
        match self {
            // MySQL 8.0.26+ documents REPLICATION REPLICA as a synonym.
            Needed::ReplicationSlave => &["REPLICATION SLAVE", "REPLICATION REPLICA"],
            // MariaDB 10.5+ renamed REPLICATION CLIENT to BINLOG MONITOR.
            Needed::ReplicationClient => &["REPLICATION CLIENT", "BINLOG MONITOR"],
            Needed::Select => &["SELECT"],
        }
    }
}

/// The privileges and roles a set of GRANT lines gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    global: BTreeSet<String>,
    per_schema: HashMap<String, BTreeSet<String>>,
    /// Roles granted, as they must be named in `SHOW GRANTS FOR`.
    pub roles: Vec<String>,
}

fn unquote(identifier: &str) -> String {
    identifier
        .trim()
        .trim_matches('`')
        .trim_matches('\'')
        .trim_matches('"')
        .to_owned()
}

/// Splits a privilege list on commas outside parentheses (column lists).
fn split_privileges(list: &str) -> Vec<String> {
    let mut privileges = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for character in list.chars() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                privileges.push(current.trim().to_ascii_uppercase());
                current.clear();
                continue;
            }
            _ if depth > 0 => continue,
            _ => {}
        }
        current.push(character);
    }
    if !current.trim().is_empty() {
        privileges.push(current.trim().to_ascii_uppercase());
    }
    privileges
}

impl Grants {
    /// Parses the lines of one `SHOW GRANTS`.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Grants {
        let mut grants = Grants::default();
        for line in lines {
            grants.add_line(line);
        }
        grants
    }

    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("GRANT ") else {
            return;
        };
        let upper = rest.to_ascii_uppercase();
        match upper.find(" ON ") {
            Some(on) if upper[..on].trim() != "PROXY" => {
                let privileges = split_privileges(&rest[..on]);
                let after_on = &rest[on + 4..];
                let target = after_on
                    .to_ascii_uppercase()
                    .find(" TO ")
                    .map_or(after_on, |to| &after_on[..to])
                    .trim();
                let target = target
                    .strip_prefix("TABLE ")
                    .or_else(|| target.strip_prefix("table "))
                    .unwrap_or(target);
                let (schema, object) = target.split_once('.').unwrap_or((target, "*"));
                let schema = unquote(schema);
                if schema == "*" {
                    self.global.extend(privileges);
                } else if unquote(object) == "*" {
                    self.per_schema
                        .entry(schema)
                        .or_default()
                        .extend(privileges);
                }
            }
            Some(_) => {}
            None => {
                // A role grant: GRANT `role`[@`host`][, ...] TO user.
                let Some(to) = upper.find(" TO ") else {
                    return;
                };
                for role in rest[..to].split(',') {
                    let role = role.trim();
                    if !role.is_empty() {
                        self.roles.push(role.to_owned());
                    }
                }
            }
        }
    }

    /// Adds what a granted role gives.
    pub fn merge(&mut self, other: Grants) {
        self.global.extend(other.global);
        for (schema, privileges) in other.per_schema {
            self.per_schema
                .entry(schema)
                .or_default()
                .extend(privileges);
        }
    }

    fn any_of(privileges: &BTreeSet<String>, needed: Needed) -> bool {
        privileges.contains("ALL")
            || privileges.contains("ALL PRIVILEGES")
            || needed
                .spellings()
                .iter()
                .any(|spelling| privileges.contains(*spelling))
    }

    /// Whether the privilege is held on `*.*`.
    pub fn has_global(&self, needed: Needed) -> bool {
        Grants::any_of(&self.global, needed)
    }

    /// Whether SELECT is held anywhere at all.
    pub fn has_select_anywhere(&self) -> bool {
        self.has_global(Needed::Select)
            || self
                .per_schema
                .values()
                .any(|privileges| Grants::any_of(privileges, Needed::Select))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_prints_replication_client_as_binlog_monitor() {
        let grants = Grants::parse([
            "GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `bintrail`@`%` IDENTIFIED BY PASSWORD '*ABC'",
        ]);
        assert!(grants.has_global(Needed::ReplicationSlave));
        assert!(grants.has_global(Needed::ReplicationClient));
        assert!(grants.has_global(Needed::Select));
    }

    #[test]
    fn all_privileges_count_and_schema_grants_stay_schema_level() {
        let all =
            Grants::parse(["GRANT ALL PRIVILEGES ON *.* TO 'root'@'localhost' WITH GRANT OPTION"]);
        assert!(all.has_global(Needed::ReplicationSlave));
        let schema = Grants::parse([
            "GRANT USAGE ON *.* TO `u`@`%`",
            "GRANT SELECT, INSERT ON `shop`.* TO `u`@`%`",
            "GRANT SELECT (`id`, `name`), UPDATE ON `shop`.`orders` TO `u`@`%`",
        ]);
        assert!(!schema.has_global(Needed::Select));
        assert!(schema.has_select_anywhere());
        assert!(!schema.has_global(Needed::ReplicationSlave));
    }

    #[test]
    fn roles_are_collected_and_merged() {
        let mut user = Grants::parse([
            "GRANT USAGE ON *.* TO `u`@`%`",
            "GRANT `replicator`@`%`,`reader`@`%` TO `u`@`%`",
        ]);
        assert_eq!(user.roles, ["`replicator`@`%`", "`reader`@`%`"]);
        user.merge(Grants::parse([
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `replicator`@`%`",
        ]));
        assert!(user.has_global(Needed::ReplicationSlave));
        assert!(user.has_global(Needed::ReplicationClient));
        let mariadb = Grants::parse(["GRANT `replicator` TO `u`@`%`"]);
        assert_eq!(mariadb.roles, ["`replicator`"]);
    }

    #[test]
    fn missing_privileges_are_missing() {
        let grants = Grants::parse(["GRANT SELECT, BINLOG MONITOR ON *.* TO `u`@`%`"]);
        assert!(!grants.has_global(Needed::ReplicationSlave));
        let proxy =
            Grants::parse(["GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION"]);
        assert!(!proxy.has_global(Needed::Select));
    }
}
