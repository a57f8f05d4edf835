//! Statements whose SQL text is the same on every call, so each pooled connection prepares them
//! once. diesel marks every `sql_query` (and every UPDATE) as unsafe to cache, and diesel-async
//! then prepares such a statement anew on every call: one more round trip, and one more parse and
//! plan in PostgreSQL, per statement. (A fixed-text UPDATE of a server, every column behind a
//! CASE, was tried and measured: UpdateServer gained nothing and the service spent 12% more
//! instructions per call binding every column, so a server's UPDATE stays diesel's changeset.)

use diesel::{
    pg::Pg,
    prelude::*,
    query_builder::{AstPass, QueryFragment, QueryId},
    sql_types,
};
use diesel_async::RunQueryDsl;

use super::{Connection, StoreError};

/// `SELECT pg_notify($1, $2)`.
#[derive(Debug)]
struct Notify {
    channel: &'static str,
    payload: String,
}

impl QueryId for Notify {
    type QueryId = Notify;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for Notify {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT pg_notify(");
        out.push_bind_param::<sql_types::Text, _>(self.channel)?;
        out.push_sql(", ");
        out.push_bind_param::<sql_types::Text, _>(&self.payload)?;
        out.push_sql(")");
        Ok(())
    }
}

/// Sends a NOTIFY on `channel`, delivered when the caller's transaction commits.
pub async fn notify(
    connection: &mut Connection,
    channel: &'static str,
    payload: String,
) -> Result<(), StoreError> {
    Notify { channel, payload }.execute(connection).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use diesel::debug_query;

    use super::*;

    #[test]
    fn a_notify_has_one_text_whatever_it_says() {
        let text = |payload: &str| {
            let notify = Notify {
                channel: "a",
                payload: payload.to_owned(),
            };
            debug_query::<Pg, _>(&notify)
                .to_string()
                .split(" -- binds")
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(text("one"), text("two"));
    }
}
