//! The onboarding history of servers: reading revisions after a point, checking that they are
//! still all kept, and compacting old ones (one replica at a time).

use diesel::{
    prelude::*,
    sql_types::{Bool, Interval},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::super::{Connection, Store, StoreError, schema::onboarding_history};
use crate::domain::{ServerId, onboarding::OnboardingStatus};

/// Takes the transaction's advisory lock of one compaction job; false when another replica's
/// transaction holds it (this one then skips the job).
pub(super) async fn compaction_lock(
    connection: &mut Connection,
    job: &str,
) -> Result<bool, StoreError> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = Bool)]
        locked: bool,
    }
    let lock: Locked =
        diesel::sql_query("SELECT pg_try_advisory_xact_lock(hashtext($1)) AS locked")
            .bind::<diesel::sql_types::Text, _>(job)
            .get_result(connection)
            .await?;
    Ok(lock.locked)
}

impl Store {
    /// Forgets onboarding history older than `retention`: for each server, every revision up to
    /// its newest old one, never its newest revision, so what stays is gap-free. One replica
    /// at a time compacts (the others skip); returns how many rows went.
    pub async fn compact_onboarding_history(
        &self,
        retention: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| {
                if !compaction_lock(connection, "onboarding_history compaction").await? {
                    return Ok(0);
                }
                // The old rows come from the created_at index; each server's newest revision
                // from its primary key.
                Ok(diesel::sql_query(
                    "DELETE FROM onboarding_history history USING ( \
                         SELECT old.server_id, least(old.old_through, \
                                (SELECT max(revision) FROM onboarding_history newest \
                                 WHERE newest.server_id = old.server_id) - 1) AS through \
                         FROM (SELECT server_id, max(revision) AS old_through \
                               FROM onboarding_history WHERE created_at < now() - $1::interval \
                               GROUP BY server_id) old) kept \
                     WHERE history.server_id = kept.server_id \
                       AND history.revision <= kept.through",
                )
                .bind::<Interval, _>(super::super::interval(retention))
                .execute(connection)
                .await?)
            })
            .await
    }

    /// Fails with `Compacted` when the revisions after `since` are no longer all kept.
    pub async fn check_history_kept(&self, id: ServerId, since: i64) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let oldest: Option<i64> = onboarding_history::table
            .filter(onboarding_history::server_id.eq(id.uuid()))
            .select(diesel::dsl::min(onboarding_history::revision))
            .first(&mut connection)
            .await?;
        match oldest {
            Some(oldest) if since + 1 < oldest => Err(StoreError::Compacted(oldest - 1)),
            _ => Ok(()),
        }
    }

    /// The revisions of a server's onboarding after `after`, in order (at most `limit`).
    pub async fn onboarding_history(
        &self,
        id: ServerId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OnboardingStatus>, StoreError> {
        let mut connection = self.connection().await?;
        let rows: Vec<serde_json::Value> = onboarding_history::table
            .filter(onboarding_history::server_id.eq(id.uuid()))
            .filter(onboarding_history::revision.gt(after))
            .order(onboarding_history::revision.asc())
            .limit(limit)
            .select(onboarding_history::status)
            .load(&mut connection)
            .await?;
        rows.into_iter()
            .map(|json| {
                serde_json::from_value(json)
                    .map_err(|error| StoreError::Corrupt(format!("onboarding history: {error}")))
            })
            .collect()
    }
}
