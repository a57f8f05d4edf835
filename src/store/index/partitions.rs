//! The time partitions of `change_events`: `--change-partition-width` wide (an hour by default),
//! registered in `change_partitions` with their bounds, and made ready ahead of now so a write
//! never meets a missing one. A width changed between runs takes effect after the partitions
//! already made: a new one starts where the last one ends. Old partitions leave through the
//! archive (`archive`), never dropped unarchived.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::ChangeIndex;
pub use crate::domain::partition::PartitionWidth;
use crate::store::{Connection, StoreError};

#[derive(diesel::QueryableByName)]
struct Covered {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    until: Option<DateTime<Utc>>,
}

/// Registers the day partitions that replicas before the registry made (safe to repeat).
const REGISTER_DAY_PARTITIONS: &str = "INSERT INTO change_partitions (name, starts_at, ends_at) \
     SELECT c.relname, to_date(substr(c.relname, 15), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC', \
         (to_date(substr(c.relname, 15), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' \
     FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
     JOIN pg_class p ON p.oid = i.inhparent \
     WHERE p.relname = 'change_events' AND c.relnamespace = p.relnamespace \
         AND c.relname ~ '^change_events_[0-9]{8}$' \
     ON CONFLICT DO NOTHING";

impl ChangeIndex {
    /// Makes the partitions from the one before now to `width.ahead()` after it, each starting
    /// where the last one made ends (dropped ones included: a range is never made twice).
    pub async fn maintain_change_index(&self, width: PartitionWidth) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('dbtrail_change_index'))")
                    .execute(connection)
                    .await?;
                diesel::sql_query(REGISTER_DAY_PARTITIONS)
                    .execute(connection)
                    .await?;
                let covered: Covered =
                    diesel::sql_query("SELECT max(ends_at) AS until FROM change_partitions")
                        .get_result(connection)
                        .await?;
                let now = Utc::now();
                let step = chrono::Duration::seconds(width.seconds());
                let mut start = width.start_of(now) - step;
                let end = width.start_of(now) + step * width.ahead() as i32;
                while start < end {
                    let next = start + step;
                    let from = covered.until.map_or(start, |until| until.max(start));
                    if from < next {
                        create_partition(connection, from, next).await?;
                    }
                    start = next;
                }
                Ok(())
            })
            .await
    }

    /// The partitions of the index not dropped yet, oldest first (for tests and operators).
    pub async fn change_partitions(&self) -> Result<Vec<String>, StoreError> {
        let mut connection = self.connection().await?;
        Ok(diesel::dsl::sql::<Text>(
            "SELECT name FROM change_partitions WHERE dropped_at IS NULL ORDER BY starts_at",
        )
        .load(&mut connection)
        .await?)
    }
}

async fn create_partition(
    connection: &mut Connection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(), StoreError> {
    diesel::sql_query("SELECT change_events_partition_range($1, $2)")
        .bind::<Timestamptz, _>(from)
        .bind::<Timestamptz, _>(to)
        .execute(connection)
        .await?;
    Ok(())
}
