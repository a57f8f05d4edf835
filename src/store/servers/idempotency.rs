//! Request ids: recording one first thing in a write's transaction (so a concurrent retry waits
//! for the first call), replaying the server its first call produced, and forgetting old ids.

use diesel::{prelude::*, sql_types::Interval};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::super::{Connection, Store, StoreError, WriteError, schema::idempotency_keys};
use super::{IdempotencyKey, load_server};
use crate::domain::{Refused, ServerId, TenantId, server::Server};

/// What a transaction guarded by a request id did: its work, or nothing because the id was
/// recorded before and its first result is to be replayed.
pub(super) enum Once<T> {
    Done(T),
    Replay,
}

/// Records a request id with the server it concerns, first thing in the caller's transaction,
/// so a concurrent retry waits here for the first call to finish. False when it was used before.
pub(super) async fn record_request_id(
    connection: &mut Connection,
    tenant: TenantId,
    key: &IdempotencyKey,
    server_id: ServerId,
) -> Result<bool, StoreError> {
    let recorded = diesel::insert_into(idempotency_keys::table)
        .values((
            idempotency_keys::tenant_id.eq(tenant.uuid()),
            idempotency_keys::request_id.eq(&key.request_id),
            idempotency_keys::method.eq(key.method),
            idempotency_keys::request_hash.eq(&key.request_hash),
            idempotency_keys::server_id.eq(server_id.uuid()),
        ))
        .on_conflict_do_nothing()
        .execute(connection)
        .await?;
    Ok(recorded == 1)
}

impl Store {
    /// The server a guarded transaction produced, or the one its request id produced first.
    pub(super) async fn first_result(
        &self,
        connection: &mut Connection,
        tenant: TenantId,
        key: Option<&IdempotencyKey>,
        outcome: Once<Server>,
    ) -> Result<Server, WriteError> {
        match (outcome, key) {
            (Once::Done(server), _) => Ok(server),
            (Once::Replay, Some(key)) => self
                .replay(connection, tenant, key)
                .await?
                .ok_or(StoreError::NotFound.into()),
            // Only a transaction with a request id replays.
            (Once::Replay, None) => Err(StoreError::NotFound.into()),
        }
    }

    /// The server a request id already produced (None when it produced none), or the refusal
    /// of an id used for a different request.
    async fn replay(
        &self,
        connection: &mut Connection,
        tenant: TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<Server>, WriteError> {
        let stored: Option<(String, Vec<u8>, Uuid)> = idempotency_keys::table
            .find((tenant.uuid(), &key.request_id))
            .select((
                idempotency_keys::method,
                idempotency_keys::request_hash,
                idempotency_keys::server_id,
            ))
            .first(connection)
            .await
            .optional()?;
        match stored {
            Some((method, hash, server_id)) if method == key.method && hash == key.request_hash => {
                match load_server(connection, server_id).await {
                    Ok(server) => Ok(Some(server)),
                    Err(StoreError::NotFound) => Ok(None),
                    Err(error) => Err(error.into()),
                }
            }
            Some(_) => Err(Refused::RequestIdReused.into()),
            None => Ok(None),
        }
    }

    /// The server a request id already produced, if it was used before.
    pub async fn find_replay(
        &self,
        tenant: TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<Server>, WriteError> {
        let mut connection = self.connection().await?;
        self.replay(&mut connection, tenant, key).await
    }

    /// Forgets request ids older than `retention`; returns how many.
    pub async fn forget_request_ids(
        &self,
        retention: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let mut connection = self.connection().await?;
        Ok(diesel::sql_query(
            "DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval",
        )
        .bind::<Interval, _>(super::super::interval(retention))
        .execute(&mut connection)
        .await?)
    }
}
