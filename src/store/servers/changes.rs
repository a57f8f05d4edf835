//! The locked read-modify-write of a server: the row locked and its scope checked (tenant, or
//! the onboarding or stream lease's fence), the caller's change applied, and what changed
//! written with its revision, runner fence and wake-up; a tenant's change also with its audit
//! record (the fields it changed, from the server before and after). RestartStream's lease
//! hand-over and the request-id-guarded variant build on it.

use std::convert::Infallible;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::super::{
    Connection, RUNNABLE_CHANNEL, Store, StoreError, WriteError,
    audit::record_server_change,
    by_id::LockedServerById,
    prepared::{notify, update_server},
    rows::{ServerChanges, ServerRow},
    schema::servers,
};
use super::idempotency::{Once, record_request_id};
use super::registration::{LIVE_NAME, is_unique_violation};
use super::{IdempotencyKey, Scope, record_revision};
use crate::domain::{
    Refused, ServerId,
    audit::{Actor, FieldChange},
    server::Server,
};

/// A server row locked for a change, with the onboarding and stream leases that fence it.
type LockedRow = (ServerRow, Option<Uuid>, i64, Option<Uuid>, i64);

/// A transaction's failure around a caller's change of a server: the store's, the change's
/// own, or the refusal `R` of what it wrote. Diesel's transaction wants its error built from
/// diesel's; this keeps that inside the store, so callers' error types need only
/// `From<StoreError>` (and `From<Refused>` for a tenant's change, which may be refused).
pub(in crate::store) enum Changing<E, R = Infallible> {
    Store(StoreError),
    Change(E),
    Refused(R),
}

impl<E, R> From<StoreError> for Changing<E, R> {
    fn from(error: StoreError) -> Changing<E, R> {
        Changing::Store(error)
    }
}

impl<E, R> From<diesel::result::Error> for Changing<E, R> {
    fn from(error: diesel::result::Error) -> Changing<E, R> {
        Changing::Store(error.into())
    }
}

impl<E: From<StoreError>> Changing<E> {
    /// A fenced writer's error: nothing it writes is refused.
    pub(in crate::store) fn into_error(self) -> E {
        match self {
            Changing::Store(error) => error.into(),
            Changing::Change(error) => error,
            Changing::Refused(never) => match never {},
        }
    }
}

impl<E: From<StoreError> + From<Refused>> Changing<E, Refused> {
    /// A tenant's change's error, its refusal included.
    pub(in crate::store) fn into_tenant_error(self) -> E {
        match self {
            Changing::Store(error) => error.into(),
            Changing::Change(error) => error,
            Changing::Refused(refused) => refused.into(),
        }
    }
}

/// What a writer's change ends in when the unique index on live names refuses the row it
/// wrote. A tenant's rename is refused (`Refused`); the fenced writers (`Infallible`) never
/// rename a server, so for them it could only be a fault, the database's error as it is.
pub(in crate::store) trait NameRefusal: Sized {
    /// The refusal of taking `name`, for writers whose changes may be refused.
    fn name_taken(name: &str) -> Option<Self>;
}

impl NameRefusal for Infallible {
    fn name_taken(_: &str) -> Option<Infallible> {
        None
    }
}

impl NameRefusal for Refused {
    fn name_taken(name: &str) -> Option<Refused> {
        Some(Refused::NameTaken(name.to_owned()))
    }
}

/// Locks the server's row, checks that `scope` may change it, and returns it with the epoch
/// of its onboarding lease.
async fn lock_in_scope(
    connection: &mut Connection,
    scope: Scope,
    id: ServerId,
) -> Result<(ServerRow, i64), StoreError> {
    let locked: Option<LockedRow> = LockedServerById(id.uuid())
        .get_result(connection)
        .await
        .optional()?;
    let (row, lease_owner, lease_epoch, stream_owner, stream_epoch) =
        locked.ok_or(StoreError::NotFound)?;
    let allowed = match scope {
        Scope::Tenant(tenant) if row.tenant_id != tenant.uuid() => Err(StoreError::NotFound),
        Scope::Runner(fence) if lease_owner != Some(fence.owner) || lease_epoch != fence.epoch => {
            Err(StoreError::Fenced)
        }
        Scope::Stream(fence)
            if stream_owner != Some(fence.owner) || stream_epoch != fence.epoch =>
        {
            Err(StoreError::Fenced)
        }
        _ => Ok(()),
    };
    allowed?;
    Ok((row, lease_epoch))
}

/// `change` applied to the locked server, and what it changed written: the row, a new
/// revision when the onboarding status changed, the runner fenced off when a tenant's call
/// changed onboarding, and a wake-up when the server became runnable. (The new version is also
/// the tenant's next fleet revision, recorded by the database's trigger for WatchServers.) A name the server took
/// from a live one is refused as `R` tells ([`NameRefusal`]).
pub(in crate::store) async fn modify_locked<T, E, R, F>(
    connection: &mut Connection,
    scope: Scope,
    id: ServerId,
    change: F,
) -> Result<(Server, T), Changing<E, R>>
where
    F: FnOnce(&mut Server) -> Result<T, E> + Send,
    R: NameRefusal,
{
    let modified = modify_and_compare(connection, scope, id, change).await?;
    Ok((modified.after, modified.output))
}

/// What a change did: the server before and after it, and the change's own output.
pub(in crate::store) struct Modified<T> {
    pub before: Server,
    pub after: Server,
    pub output: T,
}

/// [`modify_locked`], keeping the server as it was before the change (for the audit log).
pub(in crate::store) async fn modify_and_compare<T, E, R, F>(
    connection: &mut Connection,
    scope: Scope,
    id: ServerId,
    change: F,
) -> Result<Modified<T>, Changing<E, R>>
where
    F: FnOnce(&mut Server) -> Result<T, E> + Send,
    R: NameRefusal,
{
    let (row, lease_epoch) = lock_in_scope(connection, scope, id).await?;
    let before = Server::try_from(row.clone())?;
    let mut server = before.clone();
    let output = change(&mut server).map_err(Changing::Change)?;
    if server == before {
        return Ok(Modified {
            before,
            after: server,
            output,
        });
    }
    let status_changed = server.onboarding_differs(&before);
    let onboarding_changed = status_changed || server.runnable != before.runnable;
    if status_changed {
        server.revision = before.revision + 1;
    }
    server.version = before.version + 1;
    server.updated_at = crate::domain::now();
    let changes = ServerChanges::between(&row, ServerRow::from(&server));
    update_server(connection, id.uuid(), &changes)
        .await
        .map_err(|error| match R::name_taken(&server.spec.name) {
            Some(refused) if is_unique_violation(&error, LIVE_NAME) => Changing::Refused(refused),
            _ => Changing::Store(error.into()),
        })?;
    let fence_runner = matches!(scope, Scope::Tenant(_)) && onboarding_changed;
    if fence_runner {
        fence_off_runner(connection, id, lease_epoch).await?;
    }
    if server.revision != before.revision {
        record_revision(connection, &server).await?;
    }
    if server.runnable && (fence_runner || !before.runnable) {
        notify(connection, RUNNABLE_CHANNEL, server.id.to_string()).await?;
    }
    Ok(Modified {
        before,
        after: server,
        output,
    })
}

/// A tenant's change of the locked server, recorded in the audit log as `actor`'s with what it
/// changed (and `more`), in the caller's transaction.
async fn change_audited<T, E, F>(
    connection: &mut Connection,
    actor: &Actor,
    id: ServerId,
    more: Vec<FieldChange>,
    change: F,
) -> Result<(Server, T), Changing<E, Refused>>
where
    F: FnOnce(&mut Server) -> Result<T, E> + Send,
{
    let scope = Scope::Tenant(actor.tenant_id);
    let modified = modify_and_compare(connection, scope, id, change).await?;
    record_server_change(
        connection,
        actor,
        Some(&modified.before),
        &modified.after,
        more,
    )
    .await?;
    Ok((modified.after, modified.output))
}

/// Takes the server away from its onboarding runner: the lease ends and its epoch moves on,
/// so the runner's next fenced write fails.
async fn fence_off_runner(
    connection: &mut Connection,
    id: ServerId,
    lease_epoch: i64,
) -> Result<(), StoreError> {
    diesel::update(servers::table.find(id.uuid()))
        .set((
            servers::lease_owner.eq(None::<Uuid>),
            servers::lease_expires_at.eq(None::<DateTime<Utc>>),
            servers::lease_epoch.eq(lease_epoch + 1),
        ))
        .execute(connection)
        .await?;
    Ok(())
}

impl Store {
    /// Locks a server, lets `change` modify it, and writes the result in one transaction:
    /// a changed onboarding status becomes the next revision with its history row and NOTIFY;
    /// an API change of onboarding takes the server away from its runner (the fence); a server
    /// that became runnable wakes the engines. `change` runs under the row lock and must not
    /// do I/O. For the fenced writers, whose changes are never refused (they never rename a
    /// server); a tenant's change goes through [`Store::change_server`].
    pub async fn modify_server<T, E, F>(
        &self,
        scope: Scope,
        id: ServerId,
        change: F,
    ) -> Result<(Server, T), E>
    where
        F: FnOnce(&mut Server) -> Result<T, E> + Send,
        T: Send,
        E: From<StoreError> + Send,
    {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| modify_locked(connection, scope, id, change).await)
            .await
            .map_err(Changing::into_error)
    }

    /// `modify_server` for a tenant's call by `actor`, recorded in the audit log in the same
    /// transaction: the change may be refused (a rename onto the name of a live server).
    pub async fn change_server<T, E, F>(
        &self,
        actor: &Actor,
        id: ServerId,
        change: F,
    ) -> Result<(Server, T), E>
    where
        F: FnOnce(&mut Server) -> Result<T, E> + Send,
        T: Send,
        E: From<StoreError> + From<Refused> + Send,
    {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| {
                change_audited(connection, actor, id, Vec::new(), change).await
            })
            .await
            .map_err(Changing::into_tenant_error)
    }

    /// RestartStream's change of the server, with its stream lease taken from the holder: the
    /// lease ends and its epoch becomes `epoch`, the one the checkpoint was fenced with, so the
    /// next holder starts from the moved checkpoint. Fenced when the lease's epoch reached
    /// `epoch` meanwhile (a holder claimed it after the fence).
    pub async fn restart_stream<E, F>(
        &self,
        actor: &Actor,
        id: ServerId,
        epoch: i64,
        moved: Vec<FieldChange>,
        change: F,
    ) -> Result<Server, E>
    where
        F: FnOnce(&mut Server) -> Result<(), E> + Send,
        E: From<StoreError> + From<Refused> + Send,
    {
        let tenant = actor.tenant_id;
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<Server, Changing<E, _>> {
                let fenced = diesel::update(
                    servers::table
                        .find(id.uuid())
                        .filter(servers::tenant_id.eq(tenant.uuid()))
                        .filter(servers::stream_epoch.lt(epoch)),
                )
                .set((
                    servers::stream_owner.eq(None::<Uuid>),
                    servers::stream_expires_at.eq(None::<DateTime<Utc>>),
                    servers::stream_epoch.eq(epoch),
                ))
                .execute(connection)
                .await?;
                if fenced == 0 {
                    return Err(StoreError::Fenced.into());
                }
                let (server, ()) = change_audited(connection, actor, id, moved, change).await?;
                Ok(server)
            })
            .await
            .map_err(Changing::into_tenant_error)
    }

    /// `change_server` with a request id: the id is recorded in the same transaction, first, so
    /// a concurrent retry waits for this one and then finds it. A request id used before
    /// answers the server its first call produced (and records nothing: that call was).
    pub async fn modify_server_once<E, F>(
        &self,
        actor: &Actor,
        id: ServerId,
        key: &IdempotencyKey,
        change: F,
    ) -> Result<Server, E>
    where
        F: FnOnce(&mut Server) -> Result<(), E> + Send,
        E: From<StoreError> + From<Refused> + Send,
    {
        let tenant = actor.tenant_id;
        let mut connection = self.connection().await?;
        let outcome = connection
            .transaction(async move |connection| -> Result<_, Changing<E, _>> {
                if !record_request_id(connection, tenant, key, id).await? {
                    return Ok(Once::Replay);
                }
                let (server, ()) =
                    change_audited(connection, actor, id, Vec::new(), change).await?;
                Ok(Once::Done(server))
            })
            .await
            .map_err(Changing::into_tenant_error)?;
        match self
            .first_result(&mut connection, tenant, Some(key), outcome)
            .await
        {
            Ok(server) => Ok(server),
            Err(WriteError::Refused(refused)) => Err(refused.into()),
            Err(WriteError::Store(error)) => Err(error.into()),
        }
    }
}
