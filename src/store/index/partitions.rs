//! The day partitions of `change_events`: made ready a few days ahead, and dropped whole past
//! the retention.

use chrono::{Days, NaiveDate, Utc};
use diesel::sql_types::{Date, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::ChangeIndex;
use crate::store::{Connection, StoreError};

/// Days of partitions kept ready ahead of today, so a write never meets a missing one.
const PARTITIONS_AHEAD: u64 = 3;

/// The day a partition holds, from its name (`change_events_YYYYMMDD`, as
/// `change_events_partition` in `migrations_index/` names it).
fn partition_day(name: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(name.strip_prefix("change_events_")?, "%Y%m%d").ok()
}

/// The partitions of change_events, oldest first.
async fn partitions(connection: &mut Connection) -> Result<Vec<String>, StoreError> {
    Ok(diesel::dsl::sql::<Text>(
        "SELECT c.relname::text FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
         WHERE p.relname = 'change_events' AND c.relnamespace = p.relnamespace ORDER BY 1",
    )
    .load(connection)
    .await?)
}

impl ChangeIndex {
    /// Creates the partitions from yesterday to a few days ahead and, with a retention, drops
    /// the partitions wholly older than it. Returns the dropped partitions' names.
    pub async fn maintain_change_index(
        &self,
        retention: Option<std::time::Duration>,
    ) -> Result<Vec<String>, StoreError> {
        let today = Utc::now().date_naive();
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('dbtrail_change_index'))")
                    .execute(connection)
                    .await?;
                let first = today - Days::new(1);
                for offset in 0..=PARTITIONS_AHEAD + 1 {
                    diesel::sql_query("SELECT change_events_partition($1)")
                        .bind::<Date, _>(first + Days::new(offset))
                        .execute(connection)
                        .await?;
                }
                let Some(retention) = retention else {
                    return Ok(Vec::new());
                };
                let cutoff = Utc::now() - retention;
                let partitions = partitions(connection).await?;
                let mut dropped = Vec::new();
                for name in partitions {
                    let expired = partition_day(&name).is_some_and(|day| {
                        (day + Days::new(1))
                            .and_hms_opt(0, 0, 0)
                            .is_some_and(|end| end.and_utc() <= cutoff)
                    });
                    if expired {
                        diesel::sql_query(format!("DROP TABLE IF EXISTS {name}"))
                            .execute(connection)
                            .await?;
                        dropped.push(name);
                    }
                }
                Ok(dropped)
            })
            .await
    }

    /// The day partitions of the index, oldest first (for tests and operators).
    pub async fn change_partitions(&self) -> Result<Vec<String>, StoreError> {
        let mut connection = self.connection().await?;
        partitions(&mut connection).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        assert_eq!(partition_day("change_events_20261202"), Some(day));
        assert_eq!(partition_day("change_events_default"), None);
    }
}
