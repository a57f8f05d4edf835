//! Each server's schema snapshots, in its index tables (made by `template`) in the control
//! plane's database: read by the stream, written by whoever holds the server's lease.

use chrono::{DateTime, Utc};
use diesel::{
    pg::Pg,
    prelude::*,
    query_builder::{BoxedSqlQuery, SqlQuery},
    sql_types::{BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::domain::{
    ServerId,
    change::{ChangeCondition, ChangeField, ChangeFilter, Comparison},
    schema_change::{Ddl, SchemaChange, StatementText},
};
use crate::store::{Claim, Connection, Lease, PageBound, Store, StoreError, pages::collect_page};

/// Fails with Fenced unless the claim still holds the server's lease of that kind; the row lock
/// (FOR SHARE) keeps a takeover out until the caller's transaction ends.
pub(super) async fn hold_lease(
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
    .bind::<SqlUuid, _>(claim.server_id.uuid())
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
    format!("server_{}", server_id.uuid().simple())
}

/// One stored snapshot and the binlog place (file, position) it holds from.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotVersion {
    pub since: Option<(String, i64)>,
    pub snapshot: serde_json::Value,
}

impl Store {
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

    /// Whether the server's index tables exist (onboarding made them).
    pub async fn has_index_tables(&self, server_id: ServerId) -> Result<bool, StoreError> {
        let schema = index_schema_name(server_id);
        let mut connection = self.connection().await?;
        Ok(diesel::dsl::sql::<Bool>("SELECT to_regclass(")
            .bind::<Text, _>(format!("{schema}.schema_snapshots"))
            .sql(") IS NOT NULL")
            .get_result(&mut connection)
            .await?)
    }

    /// When the capture that the server's stored changes belong to began: the time of the last
    /// snapshot of the snapshotting step (the stream starts where it was taken); none before.
    pub async fn capture_started(
        &self,
        server_id: ServerId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        if !self.has_index_tables(server_id).await? {
            return Ok(None);
        }
        let schema = index_schema_name(server_id);
        let mut connection = self.connection().await?;
        Ok(diesel::dsl::sql::<Nullable<Timestamptz>>(&format!(
            "SELECT max(taken_at) FROM {schema}.schema_snapshots WHERE since_file IS NULL"
        ))
        .get_result(&mut connection)
        .await?)
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
    /// whoever took it: the onboarding runner, or the stream after `ddl`, which goes in the
    /// schema-change feed with it (once: a replay of the statement writes nothing).
    pub async fn store_snapshot(
        &self,
        lease: Lease,
        claim: Claim,
        counts: (i32, i32),
        snapshot: serde_json::Value,
        ddl: Option<&Ddl>,
    ) -> Result<(), StoreError> {
        let (schema_count, table_count) = counts;
        let ddl = ddl.cloned();
        let (since_file, since_position) = ddl
            .as_ref()
            .map(|ddl| (ddl.binlog_file.clone(), ddl.ends_at))
            .unzip();
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
                let version: i64 = diesel::dsl::sql::<BigInt>(&format!(
                    "INSERT INTO {schema}.schema_snapshots (is_current, schema_count, \
                         table_count, snapshot, since_file, since_position) \
                     VALUES (true, "
                ))
                .bind::<Integer, _>(schema_count)
                .sql(", ")
                .bind::<Integer, _>(table_count)
                .sql(", ")
                .bind::<Jsonb, _>(snapshot)
                .sql(", ")
                .bind::<Nullable<Text>, _>(since_file)
                .sql(", ")
                .bind::<Nullable<BigInt>, _>(since_position)
                .sql(") RETURNING id")
                .get_result(connection)
                .await?;
                if let Some(ddl) = ddl {
                    record_schema_change(connection, &schema, &ddl, version).await?;
                }
                Ok(())
            })
            .await
    }

    /// A page of the server's schema changes after `after` (a change's id), oldest first; none
    /// while its index tables do not exist yet.
    pub async fn schema_changes(
        &self,
        server_id: ServerId,
        filter: &ChangeFilter,
        after: i64,
        bound: &PageBound<SchemaChange>,
    ) -> Result<(Vec<SchemaChange>, bool), StoreError> {
        let schema = index_schema_name(server_id);
        let mut connection = self.connection().await?;
        if !feed_exists(&mut connection, &schema).await? {
            return Ok((Vec::new(), false));
        }
        let mut query = diesel::sql_query(format!(
            "SELECT change.id, binlog_file, binlog_position, \
                 COALESCE(snapshot.since_position, binlog_position) AS ends_at, gtid, \
                 committed_at, schema_name, table_name, statement, statement_truncated, \
                 snapshot_id \
             FROM {schema}.schema_changes change \
             JOIN {schema}.schema_snapshots snapshot ON snapshot.id = change.snapshot_id \
             WHERE change.id > $1"
        ))
        .into_boxed()
        .bind::<BigInt, _>(after);
        for (index, condition) in filter.conditions.iter().enumerate() {
            query = with_condition(query, condition, index + 2);
        }
        let limit = filter.conditions.len() + 2;
        let rows = query
            .sql(format!(" ORDER BY change.id LIMIT ${limit}"))
            .bind::<BigInt, _>(i64::try_from(bound.rows).unwrap_or(i64::MAX) + 1)
            .load_stream::<ChangeRow>(&mut connection)
            .await?;
        collect_page(rows, bound, |row| Ok(SchemaChange::from(row))).await
    }
}

/// Adds one filter comparison to the feed's query, its value the query's parameter `number`.
fn with_condition<'a>(
    query: BoxedSqlQuery<'a, Pg, SqlQuery>,
    condition: &ChangeCondition,
    number: usize,
) -> BoxedSqlQuery<'a, Pg, SqlQuery> {
    match condition {
        ChangeCondition::Text {
            field,
            comparison,
            value,
        } => {
            let column = match field {
                ChangeField::Schema => "schema_name",
                ChangeField::Table => "table_name",
                ChangeField::Gtid => "gtid",
                // The feed's grammar has no `type`; a statement has none.
                ChangeField::Type => return query.sql(" AND false"),
            };
            query
                .sql(format!(" AND {column} {} ${number}", operator(*comparison)))
                .bind::<Text, _>(value.clone())
        }
        ChangeCondition::CommittedAt { comparison, value } => query
            .sql(format!(
                " AND committed_at {} ${number}",
                operator(*comparison)
            ))
            .bind::<Timestamptz, _>(*value),
    }
}

fn operator(comparison: Comparison) -> &'static str {
    match comparison {
        Comparison::Equals => "=",
        Comparison::NotEquals => "<>",
        Comparison::Less => "<",
        Comparison::LessOrEqual => "<=",
        Comparison::Greater => ">",
        Comparison::GreaterOrEqual => ">=",
    }
}

/// Whether the server's schema-change table exists (its index tables were made, at template
/// version 3 or later).
async fn feed_exists(connection: &mut Connection, schema: &str) -> Result<bool, StoreError> {
    Ok(diesel::dsl::sql::<Bool>("SELECT to_regclass(")
        .bind::<Text, _>(format!("{schema}.schema_changes"))
        .sql(") IS NOT NULL")
        .get_result(connection)
        .await?)
}

/// Puts `ddl` in the feed with the snapshot `version` it produced, unless it is there already.
async fn record_schema_change(
    connection: &mut Connection,
    schema: &str,
    ddl: &Ddl,
    version: i64,
) -> Result<(), StoreError> {
    diesel::sql_query(format!(
        "INSERT INTO {schema}.schema_changes (binlog_file, binlog_position, gtid, committed_at, \
             schema_name, table_name, statement, statement_truncated, snapshot_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING"
    ))
    .bind::<Text, _>(&ddl.binlog_file)
    .bind::<BigInt, _>(ddl.binlog_position)
    .bind::<Text, _>(&ddl.gtid)
    .bind::<Timestamptz, _>(ddl.committed_at)
    .bind::<Text, _>(&ddl.schema)
    .bind::<Text, _>(&ddl.table)
    .bind::<Text, _>(&ddl.statement.text)
    .bind::<Bool, _>(ddl.statement.truncated)
    .bind::<BigInt, _>(version)
    .execute(connection)
    .await?;
    Ok(())
}

/// A row of the feed, as selected.
#[derive(QueryableByName)]
struct ChangeRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    binlog_file: String,
    #[diesel(sql_type = BigInt)]
    binlog_position: i64,
    #[diesel(sql_type = BigInt)]
    ends_at: i64,
    #[diesel(sql_type = Text)]
    gtid: String,
    #[diesel(sql_type = Timestamptz)]
    committed_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    statement: String,
    #[diesel(sql_type = Bool)]
    statement_truncated: bool,
    #[diesel(sql_type = BigInt)]
    snapshot_id: i64,
}

impl From<ChangeRow> for SchemaChange {
    fn from(row: ChangeRow) -> SchemaChange {
        SchemaChange {
            id: row.id,
            ddl: Ddl {
                binlog_file: row.binlog_file,
                binlog_position: row.binlog_position,
                ends_at: row.ends_at,
                gtid: row.gtid,
                committed_at: row.committed_at,
                schema: row.schema_name,
                table: row.table_name,
                statement: StatementText {
                    text: row.statement,
                    truncated: row.statement_truncated,
                },
            },
            snapshot_version: row.snapshot_id,
        }
    }
}
