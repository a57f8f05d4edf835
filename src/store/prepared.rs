//! Statements whose SQL text is the same on every call, so each pooled connection prepares them
//! once. diesel marks every UPDATE and every `sql_query` as unsafe to cache, and diesel-async
//! then prepares such a statement anew on every call: one more round trip, and one more parse and
//! plan in PostgreSQL, per statement.

use diesel::{
    pg::Pg,
    prelude::*,
    query_builder::{AstPass, QueryFragment, QueryId},
    serialize::ToSql,
    sql_types::{self, HasSqlType},
};
use diesel_async::RunQueryDsl;

use super::{Connection, StoreError, rows::ServerRow, schema::servers};

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

/// One server's change as one UPDATE whose text never varies:
/// `UPDATE servers SET version = $1, updated_at = $2, <column> = CASE WHEN $changed THEN $value
/// ELSE <column> END, … WHERE id = $id`. An unchanged column keeps its stored value (a TOASTed
/// jsonb is not rewritten); with `fence_runner`, the same statement also ends the onboarding
/// runner's lease and bumps its epoch.
#[derive(Debug)]
pub struct ServerUpdate {
    row: ServerRow,
    changed: Vec<bool>,
    fence_runner: bool,
}

/// `, "<column>" = CASE WHEN $changed THEN $value ELSE "<column>" END`.
fn set_if_changed<'b, ST>(
    out: &mut AstPass<'_, 'b, Pg>,
    column: &str,
    changed: &'b bool,
    value: &'b (impl ToSql<ST, Pg> + 'b),
) -> QueryResult<()>
where
    Pg: HasSqlType<ST>,
{
    out.push_sql(", \"");
    out.push_sql(column);
    out.push_sql("\" = CASE WHEN ");
    out.push_bind_param::<sql_types::Bool, _>(changed)?;
    out.push_sql(" THEN ");
    out.push_bind_param::<ST, _>(value)?;
    out.push_sql(" ELSE \"");
    out.push_sql(column);
    out.push_sql("\" END");
    Ok(())
}

macro_rules! server_update_columns {
    ($($column:ident),* $(,)?) => {
        impl ServerUpdate {
            /// What `after` changes of `before` (a server's id, tenant and creation never change;
            /// every change bumps its version and time).
            pub fn between(before: &ServerRow, after: ServerRow, fence_runner: bool) -> Self {
                ServerUpdate {
                    changed: vec![$(before.$column != after.$column),*],
                    row: after,
                    fence_runner,
                }
            }

            fn walk_columns<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
                let mut changed = self.changed.iter();
                $(
                    set_if_changed::<<servers::$column as Expression>::SqlType>(
                        out,
                        stringify!($column),
                        changed.next().expect("one flag per column"),
                        &self.row.$column,
                    )?;
                )*
                Ok(())
            }
        }
    };
}

server_update_columns!(
    name,
    host,
    port,
    mysql_user,
    mysql_password_sealed,
    mysql_password_key_id,
    connection_method,
    ssh_host,
    ssh_port,
    ssh_user,
    ssh_private_key_sealed,
    ssh_private_key_key_id,
    ssh_host_key_fingerprint,
    stream_schemas,
    stream_tables,
    ssl_mode,
    labels,
    status,
    steps,
    revision,
    agent_id,
    agent_outbound_ip,
    runnable,
    decommissioned_at,
    stream_state,
    stream_error,
);

impl QueryId for ServerUpdate {
    type QueryId = ServerUpdate;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for ServerUpdate {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("UPDATE \"servers\" SET \"version\" = ");
        out.push_bind_param::<sql_types::BigInt, _>(&self.row.version)?;
        out.push_sql(", \"updated_at\" = ");
        out.push_bind_param::<sql_types::Timestamptz, _>(&self.row.updated_at)?;
        self.walk_columns(&mut out)?;
        for column in ["lease_owner", "lease_expires_at"] {
            out.push_sql(", \"");
            out.push_sql(column);
            out.push_sql("\" = CASE WHEN ");
            out.push_bind_param::<sql_types::Bool, _>(&self.fence_runner)?;
            out.push_sql(" THEN NULL ELSE \"");
            out.push_sql(column);
            out.push_sql("\" END");
        }
        out.push_sql(", \"lease_epoch\" = \"lease_epoch\" + CASE WHEN ");
        out.push_bind_param::<sql_types::Bool, _>(&self.fence_runner)?;
        out.push_sql(" THEN 1 ELSE 0 END WHERE \"id\" = ");
        out.push_bind_param::<sql_types::Uuid, _>(&self.row.id)
    }
}

#[cfg(test)]
mod tests {
    use diesel::debug_query;

    use super::*;
    use crate::store::jsonb::Json;

    fn row() -> ServerRow {
        let now = chrono::Utc::now();
        ServerRow {
            id: uuid::Uuid::nil(),
            tenant_id: uuid::Uuid::nil(),
            name: "orders".to_owned(),
            host: "db.example.com".to_owned(),
            port: 3306,
            mysql_user: "dbtrail".to_owned(),
            mysql_password_sealed: None,
            mysql_password_key_id: None,
            connection_method: "direct".to_owned(),
            ssh_host: None,
            ssh_port: None,
            ssh_user: None,
            ssh_private_key_sealed: None,
            ssh_private_key_key_id: None,
            ssh_host_key_fingerprint: None,
            stream_schemas: Vec::new(),
            stream_tables: Vec::new(),
            ssl_mode: "preferred".to_owned(),
            labels: Json(Default::default()),
            status: "pending".to_owned(),
            steps: Json(Vec::new()),
            revision: 1,
            version: 1,
            agent_id: None,
            agent_outbound_ip: None,
            runnable: true,
            created_at: now,
            updated_at: now,
            decommissioned_at: None,
            stream_state: None,
            stream_error: None,
            stream_progress: None,
        }
    }

    #[test]
    fn a_server_update_has_one_text_whatever_changed() {
        let before = row();
        let mut renamed = row();
        renamed.name = "renamed".to_owned();
        let mut relabelled = row();
        relabelled
            .labels
            .0
            .insert("team".to_owned(), "db".to_owned());
        let sql = |update: ServerUpdate| {
            debug_query::<Pg, _>(&update)
                .to_string()
                .split(" -- binds")
                .next()
                .unwrap()
                .to_owned()
        };
        let renaming = ServerUpdate::between(&before, renamed, false);
        assert_eq!(
            renaming.changed.iter().filter(|changed| **changed).count(),
            1
        );
        assert_eq!(
            sql(renaming),
            sql(ServerUpdate::between(&before, relabelled, true))
        );
    }

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
