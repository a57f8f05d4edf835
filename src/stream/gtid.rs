//! The GTID set a checkpoint records, advanced by each committed transaction's GTID: MariaDB's
//! `domain-server-sequence` per domain, or MySQL's `uuid:intervals` per source.

use std::collections::BTreeMap;

/// A GTID set in one of the two flavours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet {
    /// MariaDB: domain -> (server id, sequence) of the last transaction.
    mariadb: BTreeMap<u32, (u32, u64)>,
    /// MySQL: source uuid -> executed intervals, inclusive, sorted, disjoint.
    mysql: BTreeMap<String, Vec<(u64, u64)>>,
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
            if let Some((uuid, intervals)) = part.split_once(':') {
                let parsed = intervals.split(':').filter_map(|interval| {
                    let (start, end) = interval.split_once('-').unwrap_or((interval, interval));
                    Some((start.parse().ok()?, end.parse().ok()?))
                });
                set.mysql
                    .entry(uuid.to_ascii_lowercase())
                    .or_default()
                    .extend(parsed);
            } else {
                let numbers: Vec<&str> = part.split('-').collect();
                if let [domain, server, sequence] = numbers[..]
                    && let (Ok(domain), Ok(server), Ok(sequence)) =
                        (domain.parse(), server.parse(), sequence.parse())
                {
                    set.mariadb.insert(domain, (server, sequence));
                }
            }
        }
        for intervals in set.mysql.values_mut() {
            normalise(intervals);
        }
        set
    }

    /// A MariaDB transaction committed.
    pub fn add_mariadb(&mut self, domain: u32, server: u32, sequence: u64) {
        self.mariadb.insert(domain, (server, sequence));
    }

    /// A MySQL transaction committed.
    pub fn add_mysql(&mut self, uuid: &str, number: u64) {
        let intervals = self.mysql.entry(uuid.to_ascii_lowercase()).or_default();
        intervals.push((number, number));
        normalise(intervals);
    }

    /// The set as text; None when empty (GTIDs off).
    pub fn render(&self) -> Option<String> {
        let mariadb = self
            .mariadb
            .iter()
            .map(|(domain, (server, sequence))| format!("{domain}-{server}-{sequence}"));
        let mysql = self.mysql.iter().map(|(uuid, intervals)| {
            let intervals: Vec<String> = intervals
                .iter()
                .map(|(start, end)| {
                    if start == end {
                        start.to_string()
                    } else {
                        format!("{start}-{end}")
                    }
                })
                .collect();
            format!("{uuid}:{}", intervals.join(":"))
        });
        let parts: Vec<String> = mariadb.chain(mysql).collect();
        (!parts.is_empty()).then(|| parts.join(","))
    }
}

fn normalise(intervals: &mut Vec<(u64, u64)>) {
    intervals.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
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

    #[test]
    fn mariadb_sets_keep_the_last_gtid_per_domain() {
        let mut set = GtidSet::parse("0-1-100,1-2-5");
        set.add_mariadb(0, 1, 101);
        assert_eq!(set.render().as_deref(), Some("0-1-101,1-2-5"));
    }

    #[test]
    fn mysql_sets_merge_intervals() {
        let uuid = "3E11FA47-71CA-11E1-9E33-C80AA9429562";
        let mut set = GtidSet::parse(&format!("{uuid}:1-5:7"));
        set.add_mysql(uuid, 6);
        set.add_mysql(uuid, 9);
        assert_eq!(
            set.render().as_deref(),
            Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-7:9")
        );
        assert_eq!(GtidSet::parse("").render(), None);
    }
}
