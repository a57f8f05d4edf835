//! Registering a server: the tenant's server limit, live-name uniqueness (checked ahead for a
//! validate-only request, decided by the unique index on a race) and the insert with its first
//! revision and runner wake-up.

use diesel::{prelude::*, result::DatabaseErrorKind};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::super::{
    Connection, RUNNABLE_CHANNEL, Store, StoreError, WriteError,
    audit::record_server_change,
    prepared::notify,
    rows::ServerRow,
    schema::{servers, tenants},
};
use super::idempotency::{Once, record_request_id};
use super::{IdempotencyKey, record_revision};
use crate::domain::{Refused, ServerStatus, TenantId, audit::Actor, server::Server};

impl Store {
    /// Registers a server: records the request id, checks the tenant's limit, then writes the
    /// server (the name index decides a name race), its first revision, the wake-up of a runner
    /// and `actor`'s audit record. A request id used before answers what its first call
    /// produced.
    pub async fn register_server(
        &self,
        actor: &Actor,
        server: Server,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Server, WriteError> {
        let mut connection = self.connection().await?;
        let tenant = server.tenant_id;
        let key = idempotency.clone();
        let outcome = connection
            .transaction(async move |connection| -> Result<_, WriteError> {
                if let Some(key) = &key
                    && !record_request_id(connection, tenant, key, server.id).await?
                {
                    return Ok(Once::Replay);
                }
                check_server_limit(connection, tenant, true).await?;
                insert_server(connection, &server).await?;
                record_revision(connection, &server).await?;
                notify(connection, RUNNABLE_CHANNEL, server.id.to_string()).await?;
                record_server_change(connection, actor, None, &server, Vec::new()).await?;
                Ok(Once::Done(server))
            })
            .await?;
        self.first_result(&mut connection, tenant, idempotency.as_ref(), outcome)
            .await
    }

    /// What `register_server` would refuse, checked without writing anything (the checks of
    /// a validate-only request; a registration at the same moment may still take the name).
    pub async fn check_registration(&self, server: &Server) -> Result<(), WriteError> {
        let mut connection = self.connection().await?;
        check_server_limit(&mut connection, server.tenant_id, false).await?;
        if live_name_taken(&mut connection, server.tenant_id, &server.spec.name).await? {
            return Err(Refused::NameTaken(server.spec.name.to_string()).into());
        }
        Ok(())
    }
}

pub(super) fn is_unique_violation(error: &diesel::result::Error, constraint: &str) -> bool {
    matches!(
        error,
        diesel::result::Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(constraint)
    )
}

/// Refused with `LimitReached` when the tenant already has as many live servers as its limit.
/// With `lock`, a limited tenant's row is locked first (FOR NO KEY UPDATE, which the foreign-key
/// checks of the tenant's other changes never wait for): counting and inserting must not
/// interleave between two registrations of that tenant. Unlimited tenants register in parallel.
async fn check_server_limit(
    connection: &mut Connection,
    tenant: TenantId,
    lock: bool,
) -> Result<(), WriteError> {
    let limit: Option<i32> = tenants::table
        .find(tenant.uuid())
        .select(tenants::server_limit)
        .first(connection)
        .await?;
    let limit = match limit {
        Some(_) if lock => {
            tenants::table
                .find(tenant.uuid())
                .select(tenants::server_limit)
                .for_no_key_update()
                .first(connection)
                .await?
        }
        limit => limit,
    };
    let Some(limit) = limit else {
        return Ok(());
    };
    let count: i64 = servers::table
        .filter(servers::tenant_id.eq(tenant.uuid()))
        .filter(servers::status.ne(ServerStatus::Decommissioned.as_str()))
        .count()
        .get_result(connection)
        .await?;
    if count >= i64::from(limit) {
        return Err(Refused::LimitReached { limit, count }.into());
    }
    Ok(())
}

/// The unique index on the names of a tenant's live servers.
pub(super) const LIVE_NAME: &str = "servers_live_name";

/// A write's error: refused with `NameTaken` when the unique index on live names refused it.
fn name_taken_or(error: diesel::result::Error, name: &str) -> WriteError {
    if is_unique_violation(&error, LIVE_NAME) {
        Refused::NameTaken(name.to_owned()).into()
    } else {
        error.into()
    }
}

/// Whether one of the tenant's live servers has this name.
async fn live_name_taken(
    connection: &mut Connection,
    tenant: TenantId,
    name: &str,
) -> Result<bool, StoreError> {
    let taken: i64 = servers::table
        .filter(servers::tenant_id.eq(tenant.uuid()))
        .filter(servers::name.eq(name))
        .filter(servers::status.ne(ServerStatus::Decommissioned.as_str()))
        .count()
        .get_result(connection)
        .await?;
    Ok(taken > 0)
}

/// Inserts a new server; the unique index on live names decides a name race.
async fn insert_server(connection: &mut Connection, server: &Server) -> Result<(), WriteError> {
    diesel::insert_into(servers::table)
        .values(ServerRow::from(server))
        .execute(connection)
        .await
        .map_err(|error| name_taken_or(error, &server.spec.name))?;
    Ok(())
}
