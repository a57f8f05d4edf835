//! The per-server index tables (the initializing step's "Creating index tables"): one versioned
//! template, each step bringing a server's schema from the version before it to its own. A
//! server's schema records its version in its comment (`dbtrail index template N`); one created by an older template
//! (or before versions were recorded, as version 0) gets the missing steps when its runner next
//! prepares it. Every step is safe over what it brings, so a schema made before versions were
//! recorded (which holds the current shape, unrecorded) upgrades cleanly.

use diesel::{
    QueryableByName,
    sql_types::{Nullable, Text},
};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};

use super::snapshots::{hold_lease, index_schema_name};
use crate::store::{Claim, Connection, Lease, Store, StoreError};

/// The template, oldest step first; `{schema}` is the server's schema. Step N (1-based) makes
/// version N. A change to the tables is a new step appended here, never an edit of an old one.
pub const TEMPLATE: &[&str] = &[
    // 1: the schema snapshots, at most one current.
    "CREATE SCHEMA IF NOT EXISTS {schema};
     CREATE TABLE IF NOT EXISTS {schema}.schema_snapshots (
         id bigserial PRIMARY KEY,
         taken_at timestamptz NOT NULL DEFAULT now(),
         is_current boolean NOT NULL,
         schema_count integer NOT NULL,
         table_count integer NOT NULL,
         snapshot jsonb NOT NULL);
     CREATE UNIQUE INDEX IF NOT EXISTS schema_snapshots_one_current
         ON {schema}.schema_snapshots (is_current) WHERE is_current;",
    // 2: where in the binlog a snapshot starts to hold: the DDL statement it follows (none for
    // the snapshotting step's), so a replay decodes rows with the columns of then.
    "ALTER TABLE {schema}.schema_snapshots ADD COLUMN IF NOT EXISTS since_file text,
         ADD COLUMN IF NOT EXISTS since_position bigint;",
    // 3: the schema-change feed: each DDL statement the stream met, once for every table it
    // touched (a replay finds its row), with the snapshot it produced.
    "CREATE TABLE IF NOT EXISTS {schema}.schema_changes (
         id bigserial PRIMARY KEY,
         binlog_file text NOT NULL,
         binlog_position bigint NOT NULL,
         gtid text NOT NULL,
         committed_at timestamptz NOT NULL,
         schema_name text NOT NULL,
         table_name text NOT NULL,
         statement text NOT NULL,
         statement_truncated boolean NOT NULL,
         snapshot_id bigint NOT NULL REFERENCES {schema}.schema_snapshots (id),
         UNIQUE (binlog_file, binlog_position, schema_name, table_name));",
];

/// The version the template makes now.
pub fn template_version() -> i32 {
    TEMPLATE.len() as i32
}

/// How a schema's comment records its template version.
const VERSION_COMMENT: &str = "dbtrail index template ";

#[derive(QueryableByName)]
struct Comment {
    #[diesel(sql_type = Nullable<Text>)]
    comment: Option<String>,
}

/// The version a server's schema records; 0 when it records none (no schema yet, or one made
/// before versions were recorded).
async fn recorded_version(connection: &mut Connection, schema: &str) -> Result<i32, StoreError> {
    let recorded: Comment = diesel::sql_query(
        "SELECT (SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace \
             WHERE nspname = $1) AS comment",
    )
    .bind::<Text, _>(schema)
    .get_result(connection)
    .await?;
    Ok(recorded
        .comment
        .as_deref()
        .and_then(|comment| comment.strip_prefix(VERSION_COMMENT))
        .and_then(|version| version.parse().ok())
        .unwrap_or(0))
}

/// Applies the steps after `from` to `schema` and records the version they make.
async fn upgrade(connection: &mut Connection, schema: &str, from: i32) -> Result<(), StoreError> {
    let pending = TEMPLATE.iter().skip(usize::try_from(from).unwrap_or(0));
    for step in pending {
        connection
            .batch_execute(&step.replace("{schema}", schema))
            .await?;
    }
    diesel::sql_query(format!(
        "COMMENT ON SCHEMA {schema} IS '{VERSION_COMMENT}{}'",
        template_version()
    ))
    .execute(connection)
    .await?;
    Ok(())
}

impl Store {
    /// Brings the server's index tables to the template's version: creates them when missing,
    /// applies the steps an older template lacked, and does nothing when they are current.
    /// Fenced by the lease of whoever prepares them (the onboarding runner, or the stream).
    /// Returns the version they had.
    pub async fn prepare_index_tables(
        &self,
        lease: Lease,
        claim: Claim,
    ) -> Result<i32, StoreError> {
        let schema = index_schema_name(claim.server_id);
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                hold_lease(connection, lease, claim).await?;
                // Concurrent CREATE ... IF NOT EXISTS of the same object can still collide.
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind::<Text, _>(&schema)
                    .execute(connection)
                    .await?;
                let from = recorded_version(connection, &schema).await?;
                if from < template_version() {
                    upgrade(connection, &schema, from).await?;
                }
                Ok(from)
            })
            .await
    }
}
