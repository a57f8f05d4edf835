//! Each server's schema in PostgreSQL (its schema snapshots), and replication server ids. The
//! captured changes and the stream's checkpoint live in the change index (`change_index`).

use diesel::{
    prelude::*,
    sql_types::{BigInt, Integer, Jsonb, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{Claim, Connection, Lease, Store, StoreError};
use crate::domain::ServerId;

/// Fails with Fenced unless the claim still holds the server's lease of that kind; the row lock
/// (FOR SHARE) keeps a takeover out until the caller's transaction ends.
async fn hold_lease(
    connection: &mut Connection,
    lease: Lease,
    claim: Claim,
) -> Result<(), StoreError> {
    let (owner, _, epoch) = lease.columns();
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        held: bool,
    }
    let held: Option<Held> = diesel::sql_query(format!(
        "SELECT true AS held FROM servers WHERE id = $1 AND {owner} = $2 AND {epoch} = $3 FOR SHARE"
    ))
    .bind::<SqlUuid, _>(claim.server_id.0)
    .bind::<SqlUuid, _>(claim.fence.owner)
    .bind::<BigInt, _>(claim.fence.epoch)
    .get_result(connection)
    .await
    .optional()?;
    match held {
        Some(Held { held: true }) => Ok(()),
        _ => Err(StoreError::Fenced),
    }
}

/// The name of a server's index schema; made of hex digits only, so it needs no quoting.
pub fn index_schema_name(server_id: ServerId) -> String {
    format!("server_{}", server_id.0.simple())
}

/// One stored snapshot and the binlog place (file, position) it holds from.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotVersion {
    pub since: Option<(String, i64)>,
    pub snapshot: serde_json::Value,
}

#[derive(QueryableByName)]
struct ReplicationId {
    #[diesel(sql_type = BigInt)]
    replication_server_id: i64,
}

impl Store {
    /// Creates the server's index schema and tables when missing (safe to run again), fenced
    /// by the runner's lease.
    pub async fn create_index_schema(&self, claim: Claim) -> Result<(), StoreError> {
        let schema = index_schema_name(claim.server_id);
        let statements = [
            format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {schema}.schema_snapshots (\
                     id bigserial PRIMARY KEY, \
                     taken_at timestamptz NOT NULL DEFAULT now(), \
                     is_current boolean NOT NULL, \
                     schema_count integer NOT NULL, \
                     table_count integer NOT NULL, \
                     snapshot jsonb NOT NULL)"
            ),
            format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS schema_snapshots_one_current \
                 ON {schema}.schema_snapshots (is_current) WHERE is_current"
            ),
            // Where in the binlog a snapshot starts to hold: the DDL statement it follows (none
            // for the snapshotting step's), so a replay decodes rows with the columns of then.
            format!(
                "ALTER TABLE {schema}.schema_snapshots ADD COLUMN IF NOT EXISTS since_file text, \
                 ADD COLUMN IF NOT EXISTS since_position bigint"
            ),
        ];
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                hold_lease(connection, Lease::Onboarding, claim).await?;
                // Concurrent CREATE ... IF NOT EXISTS of the same object can still collide.
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind::<Text, _>(&schema)
                    .execute(connection)
                    .await?;
                for statement in &statements {
                    diesel::sql_query(statement).execute(connection).await?;
                }
                Ok(())
            })
            .await
    }

    /// The server's snapshots, oldest first, each with the binlog place it holds from (none for
    /// a snapshot of the snapshotting step).
    pub async fn snapshot_history(
        &self,
        server_id: ServerId,
    ) -> Result<Vec<SnapshotVersion>, StoreError> {
        #[derive(QueryableByName)]
        struct VersionRow {
            #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
            since_file: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
            since_position: Option<i64>,
            #[diesel(sql_type = Jsonb)]
            snapshot: serde_json::Value,
        }
        let schema = index_schema_name(server_id);
        let mut connection = self.connection().await?;
        let rows: Vec<VersionRow> = diesel::sql_query(format!(
            "SELECT since_file, since_position, snapshot FROM {schema}.schema_snapshots ORDER BY id"
        ))
        .load(&mut connection)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| SnapshotVersion {
                since: row.since_file.zip(row.since_position),
                snapshot: row.snapshot,
            })
            .collect())
    }

    /// The server's current schema snapshot, if it has one.
    pub async fn current_snapshot(
        &self,
        server_id: ServerId,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let schema = index_schema_name(server_id);
        let mut connection = self.connection().await?;
        Ok(diesel::dsl::sql::<Jsonb>(&format!(
            "SELECT snapshot FROM {schema}.schema_snapshots WHERE is_current"
        ))
        .get_result(&mut connection)
        .await
        .optional()?)
    }

    /// Stores a schema snapshot as the server's one current snapshot, fenced by the lease of
    /// whoever took it (the onboarding runner, or the stream after a DDL statement).
    pub async fn store_snapshot(
        &self,
        lease: Lease,
        claim: Claim,
        counts: (i32, i32),
        snapshot: serde_json::Value,
        since: Option<(String, i64)>,
    ) -> Result<(), StoreError> {
        let (schema_count, table_count) = counts;
        let (since_file, since_position) = since.unzip();
        let schema = index_schema_name(claim.server_id);
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                hold_lease(connection, lease, claim).await?;
                diesel::sql_query(format!(
                    "UPDATE {schema}.schema_snapshots SET is_current = false WHERE is_current"
                ))
                .execute(connection)
                .await?;
                diesel::sql_query(format!(
                    "INSERT INTO {schema}.schema_snapshots (is_current, schema_count, \
                         table_count, snapshot, since_file, since_position) \
                     VALUES (true, $1, $2, $3, $4, $5)"
                ))
                .bind::<Integer, _>(schema_count)
                .bind::<Integer, _>(table_count)
                .bind::<Jsonb, _>(snapshot)
                .bind::<diesel::sql_types::Nullable<Text>, _>(since_file)
                .bind::<diesel::sql_types::Nullable<BigInt>, _>(since_position)
                .execute(connection)
                .await?;
                Ok(())
            })
            .await
    }

    /// The server's replication server id, allocated once from a sequence.
    pub async fn replication_server_id(&self, server_id: ServerId) -> Result<i64, StoreError> {
        let mut connection = self.connection().await?;
        let row: ReplicationId = diesel::sql_query(
            "UPDATE servers SET replication_server_id = \
                 COALESCE(replication_server_id, nextval('replication_server_ids')) \
             WHERE id = $1 RETURNING replication_server_id",
        )
        .bind::<SqlUuid, _>(server_id.0)
        .get_result(&mut connection)
        .await?;
        Ok(row.replication_server_id)
    }
}
