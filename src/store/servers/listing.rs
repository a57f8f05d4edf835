//! Reading servers: one by id, the keyset-paged ListServers query with its filter translated to
//! SQL (prepared once per call), its EXPLAIN for tests, and a server's stream epoch.

use diesel::{
    dsl::sql,
    pg::Pg,
    prelude::*,
    sql_types::{Bool, Text, Timestamptz},
};
use diesel_async::RunQueryDsl;

use super::super::{
    Store, StoreError,
    pages::{PageBound, collect_page},
    prepared::OncePrepared,
    rows::ServerRow,
    schema::servers,
};
use super::{ListPage, PageCursor, load_server};
use crate::domain::{
    ServerId, ServerStatus, TenantId,
    filter::{Filter, FilterField},
    server::Server,
};

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
        .filter(servers::tenant_id.eq(tenant.uuid()))
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

impl Store {
    /// One of the tenant's servers, decommissioned ones included.
    pub async fn get_server(&self, tenant: TenantId, id: ServerId) -> Result<Server, StoreError> {
        let mut connection = self.connection().await?;
        let server = load_server(&mut connection, id.uuid()).await?;
        if server.tenant_id != tenant {
            return Err(StoreError::NotFound);
        }
        Ok(server)
    }

    /// A server by id alone, for the engine and the watch hub (never for a client call).
    pub async fn server_by_id(&self, id: ServerId) -> Result<Server, StoreError> {
        let mut connection = self.connection().await?;
        load_server(&mut connection, id.uuid()).await
    }

    /// A page of the tenant's servers, newest first, after `cursor`, within `bound`.
    pub async fn list_servers(
        &self,
        tenant: TenantId,
        filter: Option<&Filter>,
        show_decommissioned: bool,
        cursor: Option<PageCursor>,
        bound: &PageBound<Server>,
    ) -> Result<ListPage, StoreError> {
        let mut connection = self.connection().await?;
        let query = list_query(tenant, filter, show_decommissioned, cursor, bound.rows);
        let rows = query.load_stream::<ServerRow>(&mut connection).await?;
        let (servers, more) = collect_page(rows, bound, Server::try_from).await?;
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
        let lines: Vec<String> = super::super::explain::Explain(query)
            .load(&mut connection)
            .await?;
        Ok(lines.join("\n"))
    }

    /// The epoch of the server's stream lease (of its holder, or its last one).
    pub async fn stream_epoch(&self, tenant: TenantId, id: ServerId) -> Result<i64, StoreError> {
        let mut connection = self.connection().await?;
        servers::table
            .find(id.uuid())
            .filter(servers::tenant_id.eq(tenant.uuid()))
            .select(servers::stream_epoch)
            .first(&mut connection)
            .await
            .optional()?
            .ok_or(StoreError::NotFound)
    }
}
