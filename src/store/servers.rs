//! Server rows: registration (limit, name uniqueness, idempotency), reads, keyset listing with
//! filters, and the locked read-modify-write that records each onboarding revision with its
//! history row and NOTIFY in one transaction.

use chrono::{DateTime, Utc};
use diesel::{
    dsl::sql,
    pg::Pg,
    prelude::*,
    result::DatabaseErrorKind,
    sql_types::{Bool, Interval, Text, Timestamptz},
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::{
    Connection, Fence, ONBOARDING_CHANNEL, RUNNABLE_CHANNEL, Store, StoreError,
    by_id::{LockedServerById, ServerById},
    prepared::{notify, update_server},
    rows::{ServerChanges, ServerRow},
    schema::{idempotency_keys, onboarding_history, servers, tenants},
};
use crate::domain::{
    ServerId, ServerStatus, TenantId,
    filter::{Filter, FilterField},
    onboarding::OnboardingStatus,
    server::Server,
};

/// Who is changing a server: an API call of a tenant, the onboarding runner holding its lease,
/// or the replica holding its stream lease.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Tenant(TenantId),
    Runner(Fence),
    Stream(Fence),
}

/// A client's request id, with a digest of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub request_id: String,
    pub method: &'static str,
    pub request_hash: Vec<u8>,
}

/// Where a page of ListServers starts: after this (created_at, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// One page of servers and whether more follow.
#[derive(Debug)]
pub struct ListPage {
    pub servers: Vec<Server>,
    pub more: bool,
}

/// A server row locked for a change, with the onboarding and stream leases that fence it.
type LockedRow = (ServerRow, Option<Uuid>, i64, Option<Uuid>, i64);

type BoxedCondition = Box<dyn BoxableExpression<servers::table, Pg, SqlType = Bool>>;

/// Translates a parsed filter into SQL over the servers table.
fn condition(filter: &Filter) -> BoxedCondition {
    match filter {
        Filter::And(terms) => fold(terms, |left, right| Box::new(left.and(right))),
        Filter::Or(terms) => fold(terms, |left, right| Box::new(left.or(right))),
        Filter::Not(term) => Box::new(diesel::dsl::not(condition(term))),
        Filter::HasLabel(key) => Box::new(servers::labels.has_key(key.clone())),
        Filter::StatusIs(status) => Box::new(servers::status.eq(status.as_str())),
        Filter::ConnectionMethodIs(method) => {
            Box::new(servers::connection_method.eq(method.as_str()))
        }
        Filter::Equals { field, value } => match field {
            FilterField::Name => Box::new(servers::name.eq(value.clone())),
            FilterField::Host => Box::new(servers::host.eq(value.clone())),
            FilterField::Label(key) => Box::new(
                servers::labels.contains(serde_json::json!({ key.as_str(): value.as_str() })),
            ),
        },
        Filter::Like { field, pattern } => match field {
            FilterField::Name => Box::new(servers::name.like(pattern.clone())),
            FilterField::Host => Box::new(servers::host.like(pattern.clone())),
            FilterField::Label(key) => Box::new(
                sql::<Bool>("COALESCE(servers.labels ->> ")
                    .bind::<Text, _>(key.clone())
                    .sql(" LIKE ")
                    .bind::<Text, _>(pattern.clone())
                    .sql(", false)"),
            ),
        },
    }
}

/// A condition whose statement is prepared for its one call and closed after it. A filter is the
/// client's choice, and each distinct one would otherwise stay prepared on the pooled
/// connection for good: a client could make PostgreSQL hold any number of statements.
#[derive(Debug)]
struct OncePrepared<T>(T);

impl<T: Expression> Expression for OncePrepared<T> {
    type SqlType = T::SqlType;
}

impl<T: AppearsOnTable<QS>, QS> AppearsOnTable<QS> for OncePrepared<T> {}

impl<T: diesel::expression::ValidGrouping<G>, G> diesel::expression::ValidGrouping<G>
    for OncePrepared<T>
{
    type IsAggregate = T::IsAggregate;
}

impl<T> diesel::query_builder::QueryId for OncePrepared<T> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<T: diesel::query_builder::QueryFragment<Pg>> diesel::query_builder::QueryFragment<Pg>
    for OncePrepared<T>
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, Pg>,
    ) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        self.0.walk_ast(out)
    }
}

fn fold(
    terms: &[Filter],
    join: fn(BoxedCondition, BoxedCondition) -> BoxedCondition,
) -> BoxedCondition {
    let mut conditions = terms.iter().map(condition);
    let first = conditions
        .next()
        .unwrap_or_else(|| Box::new(diesel::dsl::sql::<Bool>("true")));
    conditions.fold(first, join)
}

fn is_unique_violation(error: &diesel::result::Error, constraint: &str) -> bool {
    matches!(
        error,
        diesel::result::Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(constraint)
    )
}

/// Records a request id with the server it concerns, first thing in the caller's transaction,
/// so a concurrent retry waits here for the first call to finish. False when it was used before.
async fn record_request_id(
    connection: &mut Connection,
    tenant: TenantId,
    key: &IdempotencyKey,
    server_id: ServerId,
) -> Result<bool, StoreError> {
    let recorded = diesel::insert_into(idempotency_keys::table)
        .values((
            idempotency_keys::tenant_id.eq(tenant.0),
            idempotency_keys::request_id.eq(&key.request_id),
            idempotency_keys::method.eq(key.method),
            idempotency_keys::request_hash.eq(&key.request_hash),
            idempotency_keys::server_id.eq(server_id.0),
        ))
        .on_conflict_do_nothing()
        .execute(connection)
        .await?;
    Ok(recorded == 1)
}

/// Records a revision: its history row and its NOTIFY, inside the caller's transaction.
async fn record_revision(connection: &mut Connection, server: &Server) -> Result<(), StoreError> {
    let status = server.onboarding_status();
    let json = serde_json::to_value(&status)
        .map_err(|error| StoreError::Corrupt(format!("onboarding status: {error}")))?;
    diesel::insert_into(onboarding_history::table)
        .values((
            onboarding_history::server_id.eq(server.id.0),
            onboarding_history::revision.eq(server.revision),
            onboarding_history::status.eq(json),
        ))
        .execute(connection)
        .await?;
    notify(
        connection,
        ONBOARDING_CHANNEL,
        format!("{}:{}", server.id, server.revision),
    )
    .await
}

async fn load_server(connection: &mut Connection, id: Uuid) -> Result<Server, StoreError> {
    ServerById(id)
        .get_result::<ServerRow>(connection)
        .await
        .optional()?
        .ok_or(StoreError::NotFound)?
        .try_into()
}

type ListQuery<'a> =
    servers::BoxedQuery<'a, Pg, diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<ServerRow, Pg>>>;

/// A page of the tenant's servers matching the filter after `cursor`, newest first, and one
/// more to tell whether more follow. The cursor is a row comparison, which PostgreSQL turns into
/// a condition of the listing index (tenant_id, created_at DESC, id DESC): a later page costs
/// what the first does.
fn list_query<'a>(
    tenant: TenantId,
    filter: Option<&Filter>,
    show_decommissioned: bool,
    cursor: Option<PageCursor>,
    page_size: usize,
) -> ListQuery<'a> {
    let mut query = servers::table
        .filter(servers::tenant_id.eq(tenant.0))
        .select(ServerRow::as_select())
        .order((servers::created_at.desc(), servers::id.desc()))
        .limit(page_size as i64 + 1)
        .into_boxed();
    if !show_decommissioned {
        query = query.filter(servers::status.ne(ServerStatus::Decommissioned.as_str()));
    }
    if let Some(filter) = filter {
        query = query.filter(OncePrepared(condition(filter)));
    }
    if let Some(cursor) = cursor {
        query = query.filter(
            sql::<Bool>("(servers.created_at, servers.id) < (")
                .bind::<Timestamptz, _>(cursor.created_at)
                .sql(", ")
                .bind::<diesel::sql_types::Uuid, _>(cursor.id)
                .sql(")"),
        );
    }
    query
}

/// Fails with `LimitReached` when the tenant already has as many live servers as its limit.
/// With `lock`, a limited tenant's row is locked first: counting and inserting must not
/// interleave between two registrations of that tenant. Unlimited tenants register in parallel.
async fn check_server_limit(
    connection: &mut Connection,
    tenant: TenantId,
    lock: bool,
) -> Result<(), StoreError> {
    let limit: Option<i32> = tenants::table
        .find(tenant.0)
        .select(tenants::server_limit)
        .first(connection)
        .await?;
    let limit = match limit {
        Some(_) if lock => {
            tenants::table
                .find(tenant.0)
                .select(tenants::server_limit)
                .for_update()
                .first(connection)
                .await?
        }
        limit => limit,
    };
    let Some(limit) = limit else {
        return Ok(());
    };
    let count: i64 = servers::table
        .filter(servers::tenant_id.eq(tenant.0))
        .filter(servers::status.ne(ServerStatus::Decommissioned.as_str()))
        .count()
        .get_result(connection)
        .await?;
    if count >= i64::from(limit) {
        return Err(StoreError::LimitReached { limit, count });
    }
    Ok(())
}

/// A write's error: `NameTaken` when the unique index on live names refused it.
fn name_taken_or(error: diesel::result::Error, name: &str) -> StoreError {
    if is_unique_violation(&error, "servers_live_name") {
        StoreError::NameTaken(name.to_owned())
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
        .filter(servers::tenant_id.eq(tenant.0))
        .filter(servers::name.eq(name))
        .filter(servers::status.ne(ServerStatus::Decommissioned.as_str()))
        .count()
        .get_result(connection)
        .await?;
    Ok(taken > 0)
}

/// Inserts a new server; the unique index on live names decides a name race.
async fn insert_server(connection: &mut Connection, server: &Server) -> Result<(), StoreError> {
    diesel::insert_into(servers::table)
        .values(ServerRow::from(server))
        .execute(connection)
        .await
        .map_err(|error| name_taken_or(error, &server.spec.name))?;
    Ok(())
}

/// Locks the server's row, checks that `scope` may change it, and returns it with the epoch
/// of its onboarding lease.
async fn lock_in_scope<E>(
    connection: &mut Connection,
    scope: Scope,
    id: ServerId,
) -> Result<(ServerRow, i64), E>
where
    E: From<StoreError> + From<diesel::result::Error>,
{
    let locked: Option<LockedRow> = LockedServerById(id.0)
        .get_result(connection)
        .await
        .optional()?;
    let (row, lease_owner, lease_epoch, stream_owner, stream_epoch) =
        locked.ok_or(StoreError::NotFound)?;
    let allowed = match scope {
        Scope::Tenant(tenant) if row.tenant_id != tenant.0 => Err(StoreError::NotFound),
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
/// changed onboarding, and a wake-up when the server became runnable.
async fn modify_locked<T, E, F>(
    connection: &mut Connection,
    scope: Scope,
    id: ServerId,
    change: F,
) -> Result<(Server, T), E>
where
    F: FnOnce(&mut Server) -> Result<T, E> + Send,
    E: From<StoreError> + From<diesel::result::Error>,
{
    let (row, lease_epoch) = lock_in_scope::<E>(connection, scope, id).await?;
    let before = Server::try_from(row.clone())?;
    let mut server = before.clone();
    let output = change(&mut server)?;
    if server == before {
        return Ok((server, output));
    }
    let status_changed = server.onboarding_status() != before.onboarding_status();
    let onboarding_changed = status_changed || server.runnable != before.runnable;
    if status_changed {
        server.revision = before.revision + 1;
    }
    server.version = before.version + 1;
    server.updated_at = crate::domain::now();
    let changes = ServerChanges::between(&row, ServerRow::from(&server));
    update_server(connection, id.0, &changes)
        .await
        .map_err(|error| name_taken_or(error, &server.spec.name))?;
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
    Ok((server, output))
}

/// Takes the server away from its onboarding runner: the lease ends and its epoch moves on,
/// so the runner's next fenced write fails.
async fn fence_off_runner(
    connection: &mut Connection,
    id: ServerId,
    lease_epoch: i64,
) -> Result<(), StoreError> {
    diesel::update(servers::table.find(id.0))
        .set((
            servers::lease_owner.eq(None::<Uuid>),
            servers::lease_expires_at.eq(None::<DateTime<Utc>>),
            servers::lease_epoch.eq(lease_epoch + 1),
        ))
        .execute(connection)
        .await?;
    Ok(())
}

/// What a transaction guarded by a request id did: its work, or nothing because the id was
/// recorded before and its first result is to be replayed.
enum Once<T> {
    Done(T),
    Replay,
}

impl Store {
    /// Registers a server: records the request id, checks the tenant's limit, then writes the
    /// server (the name index decides a name race), its first revision and the wake-up of a
    /// runner. A request id used before answers what its first call produced.
    pub async fn register_server(
        &self,
        server: Server,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Server, StoreError> {
        let mut connection = self.connection().await?;
        let tenant = server.tenant_id;
        let key = idempotency.clone();
        let outcome = connection
            .transaction(async move |connection| -> Result<_, StoreError> {
                if let Some(key) = &key
                    && !record_request_id(connection, tenant, key, server.id).await?
                {
                    return Ok(Once::Replay);
                }
                check_server_limit(connection, tenant, true).await?;
                insert_server(connection, &server).await?;
                record_revision(connection, &server).await?;
                notify(connection, super::RUNNABLE_CHANNEL, server.id.to_string()).await?;
                Ok(Once::Done(server))
            })
            .await?;
        self.first_result(&mut connection, tenant, idempotency.as_ref(), outcome)
            .await
    }

    /// What `register_server` would refuse, checked without writing anything (the checks of
    /// a validate-only request; a registration at the same moment may still take the name).
    pub async fn check_registration(&self, server: &Server) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        check_server_limit(&mut connection, server.tenant_id, false).await?;
        if live_name_taken(&mut connection, server.tenant_id, &server.spec.name).await? {
            return Err(StoreError::NameTaken(server.spec.name.to_string()));
        }
        Ok(())
    }

    /// The server a guarded transaction produced, or the one its request id produced first.
    async fn first_result(
        &self,
        connection: &mut Connection,
        tenant: TenantId,
        key: Option<&IdempotencyKey>,
        outcome: Once<Server>,
    ) -> Result<Server, StoreError> {
        match (outcome, key) {
            (Once::Done(server), _) => Ok(server),
            (Once::Replay, Some(key)) => self.replay(connection, tenant, key).await,
            // Only a transaction with a request id replays.
            (Once::Replay, None) => Err(StoreError::NotFound),
        }
    }

    /// The server a request id already produced, or why the id cannot be reused.
    async fn replay(
        &self,
        connection: &mut Connection,
        tenant: TenantId,
        key: &IdempotencyKey,
    ) -> Result<Server, StoreError> {
        let stored: Option<(String, Vec<u8>, Uuid)> = idempotency_keys::table
            .find((tenant.0, &key.request_id))
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
                load_server(connection, server_id).await
            }
            Some(_) => Err(StoreError::RequestIdReused),
            None => Err(StoreError::NotFound),
        }
    }

    /// The server a request id already produced, if it was used before.
    pub async fn find_replay(
        &self,
        tenant: TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<Server>, StoreError> {
        let mut connection = self.connection().await?;
        match self.replay(&mut connection, tenant, key).await {
            Ok(server) => Ok(Some(server)),
            Err(StoreError::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
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
        .bind::<Interval, _>(super::interval(retention))
        .execute(&mut connection)
        .await?)
    }

    /// Forgets onboarding history older than `retention`: for each server, every revision up to
    /// its newest old one, never its newest revision, so what stays is gap-free. One replica
    /// at a time compacts (the others skip); returns how many rows went.
    pub async fn compact_onboarding_history(
        &self,
        retention: std::time::Duration,
    ) -> Result<usize, StoreError> {
        #[derive(QueryableByName)]
        struct Locked {
            #[diesel(sql_type = Bool)]
            locked: bool,
        }
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| {
                let lock: Locked = diesel::sql_query(
                    "SELECT pg_try_advisory_xact_lock(hashtext('onboarding_history compaction')) \
                     AS locked",
                )
                .get_result(connection)
                .await?;
                if !lock.locked {
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
                .bind::<Interval, _>(super::interval(retention))
                .execute(connection)
                .await?)
            })
            .await
    }

    /// Fails with `Compacted` when the revisions after `since` are no longer all kept.
    pub async fn check_history_kept(&self, id: ServerId, since: i64) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let oldest: Option<i64> = onboarding_history::table
            .filter(onboarding_history::server_id.eq(id.0))
            .select(diesel::dsl::min(onboarding_history::revision))
            .first(&mut connection)
            .await?;
        match oldest {
            Some(oldest) if since + 1 < oldest => Err(StoreError::Compacted(oldest - 1)),
            _ => Ok(()),
        }
    }

    /// One of the tenant's servers, decommissioned ones included.
    pub async fn get_server(&self, tenant: TenantId, id: ServerId) -> Result<Server, StoreError> {
        let mut connection = self.connection().await?;
        let server = load_server(&mut connection, id.0).await?;
        if server.tenant_id != tenant {
            return Err(StoreError::NotFound);
        }
        Ok(server)
    }

    /// A server by id alone, for the engine and the watch hub (never for a client call).
    pub async fn server_by_id(&self, id: ServerId) -> Result<Server, StoreError> {
        let mut connection = self.connection().await?;
        load_server(&mut connection, id.0).await
    }

    /// A page of the tenant's servers, newest first, after `cursor`.
    pub async fn list_servers(
        &self,
        tenant: TenantId,
        filter: Option<&Filter>,
        show_decommissioned: bool,
        cursor: Option<PageCursor>,
        page_size: usize,
    ) -> Result<ListPage, StoreError> {
        let mut connection = self.connection().await?;
        let query = list_query(tenant, filter, show_decommissioned, cursor, page_size);
        let mut rows: Vec<ServerRow> = query.load(&mut connection).await?;
        let more = rows.len() > page_size;
        rows.truncate(page_size);
        let servers = rows
            .into_iter()
            .map(Server::try_from)
            .collect::<Result<_, _>>()?;
        Ok(ListPage { servers, more })
    }

    /// PostgreSQL's plan (EXPLAIN, text format) for the query of `list_servers`, so tests can
    /// check that the cursor stays an index condition.
    pub async fn explain_list_servers(
        &self,
        tenant: TenantId,
        filter: Option<&Filter>,
        show_decommissioned: bool,
        cursor: Option<PageCursor>,
        page_size: usize,
    ) -> Result<String, StoreError> {
        let mut connection = self.connection().await?;
        let query = list_query(tenant, filter, show_decommissioned, cursor, page_size);
        let lines: Vec<String> = super::explain::Explain(query).load(&mut connection).await?;
        Ok(lines.join("\n"))
    }

    /// Locks a server, lets `change` modify it, and writes the result in one transaction:
    /// a changed onboarding status becomes the next revision with its history row and NOTIFY;
    /// an API change of onboarding takes the server away from its runner (the fence); a server
    /// that became runnable wakes the engines. `change` runs under the row lock and must not
    /// do I/O.
    pub async fn modify_server<T, E, F>(
        &self,
        scope: Scope,
        id: ServerId,
        change: F,
    ) -> Result<(Server, T), E>
    where
        F: FnOnce(&mut Server) -> Result<T, E> + Send,
        T: Send,
        E: From<StoreError> + From<diesel::result::Error> + Send,
    {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| modify_locked(connection, scope, id, change).await)
            .await
    }

    /// The epoch of the server's stream lease (of its holder, or its last one).
    pub async fn stream_epoch(&self, tenant: TenantId, id: ServerId) -> Result<i64, StoreError> {
        let mut connection = self.connection().await?;
        servers::table
            .find(id.0)
            .filter(servers::tenant_id.eq(tenant.0))
            .select(servers::stream_epoch)
            .first(&mut connection)
            .await
            .optional()?
            .ok_or(StoreError::NotFound)
    }

    /// RestartStream's change of the server, with its stream lease taken from the holder: the
    /// lease ends and its epoch becomes `epoch`, the one the checkpoint was fenced with, so the
    /// next holder starts from the moved checkpoint. Fenced when the lease's epoch reached
    /// `epoch` meanwhile (a holder claimed it after the fence).
    pub async fn restart_stream<E, F>(
        &self,
        tenant: TenantId,
        id: ServerId,
        epoch: i64,
        change: F,
    ) -> Result<Server, E>
    where
        F: FnOnce(&mut Server) -> Result<(), E> + Send,
        E: From<StoreError> + From<diesel::result::Error> + Send,
    {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| -> Result<Server, E> {
                let fenced = diesel::update(
                    servers::table
                        .find(id.0)
                        .filter(servers::tenant_id.eq(tenant.0))
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
                let (server, ()) =
                    modify_locked(connection, Scope::Tenant(tenant), id, change).await?;
                Ok(server)
            })
            .await
    }

    /// `modify_server` for a tenant's call with a request id: the id is recorded in the same
    /// transaction, first, so a concurrent retry waits for this one and then finds it. A request
    /// id used before answers the server its first call produced.
    pub async fn modify_server_once<E, F>(
        &self,
        tenant: TenantId,
        id: ServerId,
        key: &IdempotencyKey,
        change: F,
    ) -> Result<Server, E>
    where
        F: FnOnce(&mut Server) -> Result<(), E> + Send,
        E: From<StoreError> + From<diesel::result::Error> + Send,
    {
        let mut connection = self.connection().await?;
        let outcome = connection
            .transaction(async move |connection| -> Result<_, E> {
                if !record_request_id(connection, tenant, key, id).await? {
                    return Ok(Once::Replay);
                }
                let (server, ()) =
                    modify_locked(connection, Scope::Tenant(tenant), id, change).await?;
                Ok(Once::Done(server))
            })
            .await?;
        Ok(self
            .first_result(&mut connection, tenant, Some(key), outcome)
            .await?)
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
            .filter(onboarding_history::server_id.eq(id.0))
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
