//! The two most frequent statements, a server by id and a server by id locked for a change,
//! with their SQL rendered once. diesel-async renders a query's SQL on every call (to key its
//! statement cache), which cost a GetServer as much as decoding the row.

use std::sync::LazyLock;

use diesel::{
    pg::{Pg, PgQueryBuilder},
    prelude::*,
    query_builder::{AstPass, Query, QueryBuilder, QueryFragment, QueryId},
    sql_types,
};
use uuid::Uuid;

use super::{rows::ServerRow, schema::servers};

/// `SELECT <ServerRow columns> FROM servers WHERE id = $1`.
#[derive(Debug, Clone, Copy)]
pub struct ServerById(pub Uuid);

/// `SELECT <ServerRow columns>, lease_owner, lease_epoch, stream_owner, stream_epoch FROM servers
/// WHERE id = $1 FOR UPDATE`.
#[derive(Debug, Clone, Copy)]
pub struct LockedServerById(pub Uuid);

/// `select` as SQL, followed by the condition on the id, up to its parameter.
fn render(select: impl QueryFragment<Pg>) -> String {
    let mut builder = PgQueryBuilder::default();
    select
        .to_sql(&mut builder, &Pg)
        .expect("a servers SELECT renders");
    format!("{} WHERE \"servers\".\"id\" = ", builder.finish())
}

static SERVER_BY_ID: LazyLock<String> =
    LazyLock::new(|| render(servers::table.select(ServerRow::as_select())));

static LOCKED_SERVER_BY_ID: LazyLock<String> = LazyLock::new(|| {
    render(servers::table.select((
        ServerRow::as_select(),
        servers::lease_owner,
        servers::lease_epoch,
        servers::stream_owner,
        servers::stream_epoch,
    )))
});

impl QueryId for ServerById {
    type QueryId = ServerById;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for ServerById {
    type SqlType = diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<ServerRow, Pg>>;
}

impl QueryFragment<Pg> for ServerById {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(&SERVER_BY_ID);
        out.push_bind_param::<sql_types::Uuid, _>(&self.0)
    }
}

impl QueryId for LockedServerById {
    type QueryId = LockedServerById;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for LockedServerById {
    type SqlType = (
        diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<ServerRow, Pg>>,
        sql_types::Nullable<sql_types::Uuid>,
        sql_types::BigInt,
        sql_types::Nullable<sql_types::Uuid>,
        sql_types::BigInt,
    );
}

impl QueryFragment<Pg> for LockedServerById {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(&LOCKED_SERVER_BY_ID);
        out.push_bind_param::<sql_types::Uuid, _>(&self.0)?;
        out.push_sql(" FOR UPDATE");
        Ok(())
    }
}
