//! Reading the tenant-wide revision of WatchServers: every change of a tenant's servers takes the
//! tenant's next revision and leaves a history row with the server after and before it (secrets
//! as presence only) and a NOTIFY, all recorded by the database's trigger on `servers`
//! (migration 000011); a watcher starts from the tenant's servers at one revision and resumes
//! from the history, which is compacted after the retention.

use std::sync::Arc;

use diesel::{prelude::*, sql_types::Interval};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::super::{
    Store, StoreError,
    jsonb::Json,
    rows::ServerRow,
    schema::{server_history, server_revisions, servers},
};
use crate::domain::{
    TenantId,
    server::{Server, ServerChange},
};

/// A history row as read back.
type HistoryRow = (i64, Json<ServerRow>, Option<Json<ServerRow>>);

fn change_of((revision, server, previous): HistoryRow) -> Result<ServerChange, StoreError> {
    let server = Arc::new(Server::try_from(server.0)?);
    let previous = previous
        .map(|previous| Server::try_from(previous.0).map(Arc::new))
        .transpose()?;
    Ok(ServerChange {
        revision,
        server,
        previous,
    })
}

async fn revision_of(
    connection: &mut diesel_async::AsyncPgConnection,
    tenant: TenantId,
) -> Result<i64, StoreError> {
    Ok(server_revisions::table
        .find(tenant.uuid())
        .select(server_revisions::revision)
        .first::<i64>(connection)
        .await
        .optional()?
        .unwrap_or(0))
}

impl Store {
    /// The tenant's servers (decommissioned ones too) and the revision they are at, read in one
    /// snapshot: where a watch of the fleet starts.
    pub async fn fleet(&self, tenant: TenantId) -> Result<(i64, Vec<Server>), StoreError> {
        let mut connection = self.connection().await?;
        let (revision, rows) = connection
            .build_transaction()
            .repeatable_read()
            .read_only()
            .run(async move |connection| {
                let revision = revision_of(connection, tenant).await?;
                let rows: Vec<ServerRow> = servers::table
                    .filter(servers::tenant_id.eq(tenant.uuid()))
                    .select(ServerRow::as_select())
                    .load(connection)
                    .await?;
                Ok::<_, StoreError>((revision, rows))
            })
            .await?;
        let servers = rows
            .into_iter()
            .map(Server::try_from)
            .collect::<Result<_, _>>()?;
        Ok((revision, servers))
    }

    /// The tenant's latest revision (0 before its first change).
    pub async fn fleet_revision(&self, tenant: TenantId) -> Result<i64, StoreError> {
        let mut connection = self.connection().await?;
        revision_of(&mut connection, tenant).await
    }

    /// The changes of the tenant's servers after revision `after`, in order (at most `limit`).
    pub async fn fleet_history(
        &self,
        tenant: TenantId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ServerChange>, StoreError> {
        let mut connection = self.connection().await?;
        let rows: Vec<HistoryRow> = server_history::table
            .filter(server_history::tenant_id.eq(tenant.uuid()))
            .filter(server_history::revision.gt(after))
            .order(server_history::revision.asc())
            .limit(limit)
            .select((
                server_history::revision,
                server_history::server,
                server_history::previous,
            ))
            .load(&mut connection)
            .await?;
        rows.into_iter().map(change_of).collect()
    }

    /// Fails with `Compacted` when the changes after `since` are no longer all kept (`since`
    /// at or past `current`, the tenant's revision, needs none).
    pub async fn check_fleet_history_kept(
        &self,
        tenant: TenantId,
        since: i64,
        current: i64,
    ) -> Result<(), StoreError> {
        if since >= current {
            return Ok(());
        }
        let mut connection = self.connection().await?;
        let oldest: Option<i64> = server_history::table
            .filter(server_history::tenant_id.eq(tenant.uuid()))
            .select(diesel::dsl::min(server_history::revision))
            .first(&mut connection)
            .await?;
        match oldest {
            Some(oldest) if since + 1 >= oldest => Ok(()),
            Some(oldest) => Err(StoreError::Compacted(oldest - 1)),
            None => Err(StoreError::Compacted(current)),
        }
    }

    /// Forgets the fleet history older than `retention`; one replica at a time (the others
    /// skip). Returns how many rows went.
    pub async fn compact_fleet_history(
        &self,
        retention: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| {
                if !super::history::compaction_lock(connection, "server_history compaction").await?
                {
                    return Ok(0);
                }
                Ok(diesel::sql_query(
                    "DELETE FROM server_history WHERE created_at < now() - $1::interval",
                )
                .bind::<Interval, _>(super::super::interval(retention))
                .execute(connection)
                .await?)
            })
            .await
    }
}
