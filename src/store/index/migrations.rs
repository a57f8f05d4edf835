//! The change index's schema: the SQL files of `migrations_index/`, compiled in and applied in
//! order, each once, recorded in the index's own `change_index_migrations` table (the index may
//! share the control plane's database, whose diesel migrations table is `migrations/`'s).

use diesel::{
    QueryableByName,
    sql_types::{Integer, Text},
};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};

use super::ChangeIndex;
use crate::store::StoreError;

/// Creates the table of applied migrations; run before the others, safe to run again.
const MIGRATIONS_TABLE: &str = include_str!("../../../migrations_index/0000_migrations_table.sql");

/// One migration of the index: its version, name and SQL.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration of the index, oldest first; a new one is appended with the next version.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "change_index",
        sql: include_str!("../../../migrations_index/0001_change_index.sql"),
    },
    Migration {
        version: 2,
        name: "archive",
        sql: include_str!("../../../migrations_index/0002_archive.sql"),
    },
    Migration {
        version: 3,
        name: "identity",
        sql: include_str!("../../../migrations_index/0003_identity.sql"),
    },
];

#[derive(QueryableByName)]
struct Applied {
    #[diesel(sql_type = Integer)]
    version: i32,
}

impl ChangeIndex {
    /// Applies the index's pending migrations in one transaction, serialised across replicas by
    /// an advisory lock. Returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('dbtrail_change_index'))")
                    .execute(connection)
                    .await?;
                connection.batch_execute(MIGRATIONS_TABLE).await?;
                let applied: Vec<Applied> =
                    diesel::sql_query("SELECT version FROM change_index_migrations")
                        .load(connection)
                        .await?;
                let mut versions = Vec::new();
                for migration in MIGRATIONS {
                    if applied.iter().any(|row| row.version == migration.version) {
                        continue;
                    }
                    connection.batch_execute(migration.sql).await?;
                    diesel::sql_query(
                        "INSERT INTO change_index_migrations (version, name) VALUES ($1, $2)",
                    )
                    .bind::<Integer, _>(migration.version)
                    .bind::<Text, _>(migration.name)
                    .execute(connection)
                    .await?;
                    tracing::info!(
                        version = migration.version,
                        name = migration.name,
                        "applied change index migration"
                    );
                    versions.push(migration.version);
                }
                Ok(versions)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_one_by_one() {
        for (number, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, number as i32 + 1, "{}", migration.name);
        }
    }
}
