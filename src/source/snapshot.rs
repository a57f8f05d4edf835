//! The schema snapshot as stored: the tables read from the source, kept as the server's current
//! snapshot under the lease of whoever read them (the snapshotting step, or a stream after a DDL
//! statement).

use std::collections::BTreeSet;

use super::schema::Table;
use crate::{
    domain::schema_change::Ddl,
    store::{Claim, Lease, Store, StoreError},
};

/// Stores `tables` as the server's current snapshot, fenced by `lease`.
pub async fn store_tables(
    store: &Store,
    lease: Lease,
    claim: Claim,
    tables: &[Table],
    ddl: Option<&Ddl>,
) -> Result<(), StoreError> {
    let schema_count = tables
        .iter()
        .map(|table| table.schema.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    let snapshot = serde_json::to_value(tables)
        .map_err(|error| StoreError::Corrupt(format!("snapshot: {error}")))?;
    store
        .store_snapshot(
            lease,
            claim,
            (
                i32::try_from(schema_count).unwrap_or(i32::MAX),
                i32::try_from(tables.len()).unwrap_or(i32::MAX),
            ),
            snapshot,
            ddl,
        )
        .await
}

/// After `ddl`: the current snapshot with its table replaced by what the source has now (or
/// removed when it is gone), stored under the stream's lease as holding from the statement's end
/// on, and the statement put in the schema-change feed.
pub async fn refresh_snapshot_table(
    store: &Store,
    claim: Claim,
    ddl: &Ddl,
    fresh: Option<Table>,
) -> Result<(), StoreError> {
    let (schema, name) = (ddl.schema.as_str(), ddl.table.as_str());
    let current = store.current_snapshot(claim.server_id).await?;
    let mut tables: Vec<Table> = match current {
        Some(snapshot) => serde_json::from_value(snapshot)
            .map_err(|error| StoreError::Corrupt(format!("snapshot: {error}")))?,
        None => Vec::new(),
    };
    tables.retain(|table| (table.schema.as_str(), table.name.as_str()) != (schema, name));
    tables.extend(fresh);
    tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    store_tables(store, Lease::Stream, claim, &tables, Some(ddl)).await
}
