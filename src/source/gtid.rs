//! The GTID set a checkpoint records, advanced by each committed transaction's GTID: MariaDB's
//! `domain-server-sequence` per domain, or MySQL's `uuid:intervals` per source, with MySQL 8.3+'s
//! tags (`uuid:1-5:tag:1-3`, where a tag applies to the intervals that follow it).

use std::collections::BTreeMap;

/// One transaction's GTID, as the binlog names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gtid {
    Mariadb {
        domain: u32,
        server: u32,
        sequence: u64,
    },
    /// MySQL's `uuid:n`, or `uuid:tag:n` when tagged (empty tag: untagged).
    Mysql {
        uuid: String,
        tag: String,
        number: u64,
    },
}

impl std::fmt::Display for Gtid {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gtid::Mariadb {
                domain,
                server,
                sequence,
            } => write!(formatter, "{domain}-{server}-{sequence}"),
            Gtid::Mysql { uuid, tag, number } if tag.is_empty() => {
                write!(formatter, "{uuid}:{number}")
            }
            Gtid::Mysql { uuid, tag, number } => write!(formatter, "{uuid}:{tag}:{number}"),
        }
    }
}

/// Executed intervals, inclusive, sorted, disjoint.
type Intervals = Vec<(u64, u64)>;

/// A GTID set in one of the two flavours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet {
    /// MariaDB: domain -> (server id, sequence) of the last transaction.
    mariadb: BTreeMap<u32, (u32, u64)>,
    /// MySQL: source uuid -> tag ("" untagged) -> executed intervals.
    mysql: BTreeMap<String, BTreeMap<String, Intervals>>,
}

/// `a-b` or `n` of a MySQL set.
fn interval(text: &str) -> Option<(u64, u64)> {
    let (start, end) = text.split_once('-').unwrap_or((text, text));
    Some((start.parse().ok()?, end.parse().ok()?))
}

impl GtidSet {
    /// Parses a stored set; parts it cannot read are dropped (the position still resumes).
    pub fn parse(text: &str) -> GtidSet {
        let mut set = GtidSet::default();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            match part.split_once(':') {
                Some((uuid, rest)) => set.parse_mysql(uuid, rest),
                None => set.parse_mariadb(part),
            }
        }
        set
    }

    /// `uuid:1-5:tag:1-3`: numbers are intervals of the tag named last (none at first).
    fn parse_mysql(&mut self, uuid: &str, rest: &str) {
        let tags = self.mysql.entry(uuid.to_ascii_lowercase()).or_default();
        let mut tag = String::new();
        for token in rest.split(':') {
            if token.starts_with(|c: char| c.is_ascii_digit()) {
                if let Some(interval) = interval(token) {
                    tags.entry(tag.clone()).or_default().push(interval);
                }
            } else {
                tag = token.to_ascii_lowercase();
            }
        }
        for intervals in tags.values_mut() {
            normalise(intervals);
        }
    }

    fn parse_mariadb(&mut self, part: &str) {
        let numbers: Vec<&str> = part.split('-').collect();
        if let [domain, server, sequence] = numbers[..]
            && let (Ok(domain), Ok(server), Ok(sequence)) =
                (domain.parse(), server.parse(), sequence.parse())
        {
            self.mariadb.insert(domain, (server, sequence));
        }
    }

    /// A transaction committed.
    pub fn add(&mut self, gtid: &Gtid) {
        match gtid {
            Gtid::Mariadb {
                domain,
                server,
                sequence,
            } => {
                self.mariadb.insert(*domain, (*server, *sequence));
            }
            Gtid::Mysql { uuid, tag, number } => {
                let intervals = self
                    .mysql
                    .entry(uuid.to_ascii_lowercase())
                    .or_default()
                    .entry(tag.to_ascii_lowercase())
                    .or_default();
                intervals.push((*number, *number));
                normalise(intervals);
            }
        }
    }

    /// The set as text; None when empty (GTIDs off).
    pub fn render(&self) -> Option<String> {
        let mariadb = self
            .mariadb
            .iter()
            .map(|(domain, (server, sequence))| format!("{domain}-{server}-{sequence}"));
        let mysql = self.mysql.iter().map(|(uuid, tags)| {
            let mut text = uuid.clone();
            // The untagged intervals ("" sorts first) come before any tag, as MySQL prints them.
            for (tag, intervals) in tags {
                if !tag.is_empty() {
                    text.push(':');
                    text.push_str(tag);
                }
                for (start, end) in intervals {
                    text.push(':');
                    text.push_str(&start.to_string());
                    if start != end {
                        text.push('-');
                        text.push_str(&end.to_string());
                    }
                }
            }
            text
        });
        let parts: Vec<String> = mariadb.chain(mysql).collect();
        (!parts.is_empty()).then(|| parts.join(","))
    }
}

fn normalise(intervals: &mut Intervals) {
    intervals.sort_unstable();
    let mut merged: Intervals = Vec::with_capacity(intervals.len());
    for &(start, end) in intervals.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *intervals = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mysql(uuid: &str, tag: &str, number: u64) -> Gtid {
        Gtid::Mysql {
            uuid: uuid.into(),
            tag: tag.into(),
            number,
        }
    }

    #[test]
    fn mariadb_sets_keep_the_last_gtid_per_domain() {
        let mut set = GtidSet::parse("0-1-100,1-2-5");
        set.add(&Gtid::Mariadb {
            domain: 0,
            server: 1,
            sequence: 101,
        });
        assert_eq!(set.render().as_deref(), Some("0-1-101,1-2-5"));
    }

    #[test]
    fn mysql_sets_merge_intervals() {
        let uuid = "3E11FA47-71CA-11E1-9E33-C80AA9429562";
        let mut set = GtidSet::parse(&format!("{uuid}:1-5:7"));
        set.add(&mysql(uuid, "", 6));
        set.add(&mysql(uuid, "", 9));
        assert_eq!(
            set.render().as_deref(),
            Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-7:9")
        );
        assert_eq!(GtidSet::parse("").render(), None);
    }

    #[test]
    fn tagged_gtids_keep_their_own_intervals_without_gaps() {
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let mut set = GtidSet::parse(&format!("{uuid}:1-3:backup:1-2"));
        set.add(&mysql(uuid, "", 4));
        set.add(&mysql(uuid, "backup", 3));
        set.add(&mysql(uuid, "audit", 1));
        let text = format!("{uuid}:1-4:audit:1:backup:1-3");
        assert_eq!(set.render().as_deref(), Some(text.as_str()));
        assert_eq!(GtidSet::parse(&text), set);
        assert_eq!(
            mysql(uuid, "backup", 3).to_string(),
            format!("{uuid}:backup:3")
        );
    }
}
