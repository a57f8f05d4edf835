//! The rows an `ON DELETE CASCADE` took, for RevertChanges: each child row's latest image
//! before the parent's delete. PostgreSQL answers when the manifest holds nothing of the range;
//! otherwise both tiers are read newest first, a page at a time, remembering each row seen up to
//! a bound.

use std::collections::HashSet;

use diesel_async::RunQueryDsl;

use super::{ChangeIndex, ChangeSelection, events::archived_within};
use crate::{
    domain::{
        ServerId,
        change::{ChangeCondition, ChangeEvent, ChangeField, ChangeFilter, ChangeOperation},
        comparisons::Comparison,
    },
    store::StoreError,
};

/// At most this many rows of a child table are examined in both tiers for one parent.
pub const MAX_EXAMINED_ROWS: usize = 100_000;

/// The events of both tiers read at a time.
const PAGE_EVENTS: usize = 1_000;

/// What `rows_holding` found.
#[derive(Debug)]
pub enum Holding {
    /// The rows, oldest first (at most the limit), and whether more hold the values.
    Rows(Vec<ChangeEvent>, bool),
    /// The range's archived events hold more than [`MAX_EXAMINED_ROWS`] rows of the table.
    TooManyArchived,
}

impl ChangeIndex {
    /// The rows of `schema.table` whose latest captured change before the sequence `before`
    /// left them holding `values` (a JSON object of some of their columns), when that change
    /// came after the sequence `after`, as that change, oldest first: at most `limit`, and
    /// whether more follow. The children of a parent row deleted at `before`, by their
    /// foreign-key columns (`after`: the parent's previous delete, which deleted the older
    /// ones). The hot read comes first and the manifest is looked at after it, so a partition
    /// dropped in between is found in the manifest.
    pub async fn rows_holding(
        &self,
        server_id: ServerId,
        table: (&str, &str),
        values: &serde_json::Value,
        (after, before): (i64, i64),
        limit: usize,
    ) -> Result<Holding, StoreError> {
        let (rows, more) = self
            .hot_rows_holding(server_id, table, values, (after, before), limit)
            .await?;
        let mut connection = self.connection().await?;
        let archived: bool = diesel::select(archived_within(server_id.uuid(), after, before))
            .get_result(&mut connection)
            .await?;
        if !archived {
            return Ok(Holding::Rows(rows, more));
        }
        drop(connection);
        self.rows_holding_in_both_tiers(server_id, table, values, (after, before), limit)
            .await
    }

    /// `rows_holding` over both tiers: every change of the table in the range, newest first,
    /// each row's latest taken and the rest skipped.
    async fn rows_holding_in_both_tiers(
        &self,
        server_id: ServerId,
        (schema, table): (&str, &str),
        values: &serde_json::Value,
        (after, before): (i64, i64),
        limit: usize,
    ) -> Result<Holding, StoreError> {
        let selection = ChangeSelection {
            filter: ChangeFilter {
                conditions: vec![
                    equals(ChangeField::Schema, schema),
                    equals(ChangeField::Table, table),
                ],
            },
            event_ids: None,
            through: before.saturating_sub(1),
        };
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        let mut below = before;
        loop {
            let page = self
                .selected_events_descending(server_id, &selection, below, PAGE_EVENTS)
                .await?;
            for event in page.iter().take_while(|event| event.sequence > after) {
                let key = event.change.primary_key.as_ref().map(ToString::to_string);
                if !seen.insert(key) {
                    continue;
                }
                if seen.len() > MAX_EXAMINED_ROWS {
                    return Ok(Holding::TooManyArchived);
                }
                if holds(event, values) {
                    found.push(event.clone());
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE_EVENTS && last.sequence > after => {
                    below = last.sequence;
                }
                _ => break,
            }
        }
        found.reverse();
        let more = found.len() > limit;
        found.truncate(limit);
        Ok(Holding::Rows(found, more))
    }
}

fn equals(field: ChangeField, value: &str) -> ChangeCondition {
    ChangeCondition::Text {
        field,
        comparison: Comparison::Equals,
        value: value.to_owned(),
    }
}

/// Whether the change left its row holding `values` (PostgreSQL's `row_after @> values` for
/// an object of column values).
fn holds(event: &ChangeEvent, values: &serde_json::Value) -> bool {
    let (Some(serde_json::Value::Object(image)), serde_json::Value::Object(values)) =
        (&event.change.after, values)
    else {
        return false;
    };
    event.change.operation != ChangeOperation::Delete
        && values
            .iter()
            .all(|(column, value)| image.get(column) == Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::change::RowChange;
    use serde_json::json;

    fn event(operation: ChangeOperation, after: Option<serde_json::Value>) -> ChangeEvent {
        ChangeEvent {
            sequence: 3,
            change: RowChange {
                binlog_file: "f".into(),
                binlog_position: 3,
                row_index: 0,
                gtid: String::new(),
                committed_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
                schema: "shop".into(),
                table: "child".into(),
                operation,
                primary_key: Some(json!({"id": 10})),
                before: None,
                after,
            },
        }
    }

    #[test]
    fn a_change_holds_the_values_its_after_image_has_like_postgresql_containment() {
        let image = json!({"id": 10, "parent_id": 1, "note": "a"});
        let insert = event(ChangeOperation::Insert, Some(image.clone()));
        assert!(holds(&insert, &json!({"parent_id": 1})));
        assert!(holds(&insert, &json!({"parent_id": 1, "note": "a"})));
        assert!(
            holds(&insert, &json!({})),
            "an empty object is in every image"
        );
        assert!(!holds(&insert, &json!({"parent_id": 2})));
        assert!(!holds(&insert, &json!({"parent": 1})), "a column it lacks");
        assert!(
            !holds(&insert, &json!({"parent_id": "1"})),
            "another JSON type"
        );
        let update = event(ChangeOperation::Update, Some(image));
        assert!(holds(&update, &json!({"parent_id": 1})));
        let delete = event(ChangeOperation::Delete, None);
        assert!(
            !holds(&delete, &json!({"parent_id": 1})),
            "a delete leaves nothing"
        );
    }
}
