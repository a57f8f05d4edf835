//! Statements whose SQL text is the same on every call, so each pooled connection prepares them
//! once. diesel marks every `sql_query` (and every UPDATE) as unsafe to cache, and diesel-async
//! then prepares such a statement anew on every call: a Parse round trip before the statement
//! and a Close after it, each waking the PostgreSQL backend once more.

use std::{
    collections::HashSet,
    sync::{LazyLock, Mutex},
};

use diesel::{
    pg::Pg,
    prelude::*,
    query_builder::{AstPass, QueryFragment, QueryId},
    sql_types,
};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::{Connection, StoreError, rows::ServerChanges};

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

/// How many UPDATE shapes (sets of changed columns) are prepared on each connection; rarer ones
/// are prepared for the one call. A client choosing update masks cannot make PostgreSQL hold
/// more statements than this per connection.
const CACHED_UPDATE_SHAPES: usize = 32;

/// Whether UPDATEs of this shape are kept prepared: the first `CACHED_UPDATE_SHAPES` shapes
/// this process meets are.
fn cache_update_shape(shape: u64) -> bool {
    static SHAPES: LazyLock<Mutex<HashSet<u64>>> = LazyLock::new(Default::default);
    let mut shapes = SHAPES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if shapes.len() < CACHED_UPDATE_SHAPES {
        shapes.insert(shape);
    }
    shapes.contains(&shape)
}

/// `UPDATE servers SET <changed columns> WHERE id = $n`: its text depends only on which columns
/// change, so the frequent shapes (labels; steps and revision; ...) are prepared once per
/// connection.
#[derive(Debug)]
struct UpdateServer<'a> {
    id: Uuid,
    changes: &'a ServerChanges,
}

impl QueryId for UpdateServer<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl QueryFragment<Pg> for UpdateServer<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let shape = self.changes.shape();
        if shape == 0 {
            return Err(diesel::result::Error::QueryBuilderError(
                "an UPDATE of a server changes at least one column".into(),
            ));
        }
        if !cache_update_shape(shape) {
            out.unsafe_to_cache_prepared();
        }
        out.push_sql("UPDATE servers SET ");
        self.changes.walk_set(&mut out)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<sql_types::Uuid, _>(&self.id)
    }
}

/// Writes the changed columns of server `id`.
pub async fn update_server(
    connection: &mut Connection,
    id: Uuid,
    changes: &ServerChanges,
) -> Result<usize, diesel::result::Error> {
    UpdateServer { id, changes }.execute(connection).await
}

/// A condition whose statement is prepared for its one call and closed after it. A filter is the
/// client's choice, and each distinct one would otherwise stay prepared on the pooled
/// connection for good: a client could make PostgreSQL hold any number of statements.
#[derive(Debug)]
pub(super) struct OncePrepared<T>(pub T);

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

    #[test]
    fn an_update_has_one_text_per_set_of_changed_columns() {
        let text = |labels: &[(&str, &str)], version: Option<i64>| {
            let changes = ServerChanges {
                labels: Some(super::super::jsonb::Json(
                    labels
                        .iter()
                        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                        .collect(),
                )),
                version,
                ..Default::default()
            };
            let update = UpdateServer {
                id: Uuid::nil(),
                changes: &changes,
            };
            let sql = debug_query::<Pg, _>(&update).to_string();
            sql.split(" -- binds").next().unwrap().to_owned()
        };
        assert_eq!(
            text(&[("a", "1")], Some(2)),
            text(&[("b", "2"), ("c", "3")], Some(9))
        );
        assert_eq!(
            text(&[("a", "1")], Some(2)),
            r#"UPDATE servers SET "labels" = $1, "version" = $2 WHERE id = $3"#
        );
        assert_ne!(text(&[("a", "1")], Some(2)), text(&[("a", "1")], None));
    }

    #[test]
    fn only_a_bounded_number_of_update_shapes_stay_prepared() {
        let shapes = (0..CACHED_UPDATE_SHAPES as u64 + 8).map(|bit| (1 << 63) | bit);
        let cached = shapes.filter(|&shape| cache_update_shape(shape)).count();
        assert!(cached <= CACHED_UPDATE_SHAPES);
        assert!(
            !cache_update_shape((1 << 62) | 1),
            "a new shape past the bound"
        );
        assert!(
            cache_update_shape(1 << 63),
            "a shape admitted before stays admitted"
        );
    }
}
