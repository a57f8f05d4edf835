//! The undo script of RevertChanges, in MySQL's dialect (MySQL 5.7, 8 and MariaDB alike, no
//! stored programs): a header, one statement per captured change (the caller feeds them newest
//! first), and a footer that commits. The script sets its own session (character set, sql_mode,
//! time zone, foreign-key checks) and restores it, so `mysql < undo.sql` needs nothing else.
//!
//! Each statement touches its row only while it still is what the change left: an insert's undo
//! deletes the row by key where its comparable columns still equal the after image; an update's
//! undo sets the before image where the key and comparable columns equal the after image; a
//! delete's undo inserts the before image. JSON and floating-point columns are not compared
//! (their text or binary equality is unreliable) and generated columns are never written. In
//! strict mode a statement that did not change exactly one row stops the script before COMMIT
//! (by setting sql_mode to a message, which MySQL refuses naming it); in force mode it is
//! skipped and a SELECT says so. Rows InnoDB deleted by `ON DELETE CASCADE` with a deleted
//! parent are re-inserted from their latest captured images ([`cascaded_insert`]); those never
//! captured are named in a comment ([`uncaptured_children`]).

pub mod literal;
mod script;

pub use script::{ScriptHeader, footer, header};

use serde_json::{Map, Value as Json};

use crate::{
    domain::change::{ChangeEvent, ChangeOperation, RowChange},
    source::decode::{ColumnInfo, ColumnKind, TableColumns},
};
use literal::{LiteralError, comment_text, qualified, text};

/// How the script treats a row that changed again after the reverted change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevertMode {
    /// Stop at the first statement that does not change exactly one row; commit nothing.
    Strict,
    /// Skip such a statement, say so, and go on.
    Force,
}

impl RevertMode {
    fn name(self) -> &'static str {
        match self {
            RevertMode::Strict => "strict",
            RevertMode::Force => "force",
        }
    }
}

/// Why a change cannot be undone by the script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UndoError {
    #[error("table {table} has no primary key, so its rows cannot be told apart")]
    NoPrimaryKey { table: String },
    #[error("the columns of table {table} at event {event_id} are not known")]
    UnknownTable { table: String, event_id: String },
    #[error(
        "event {event_id} of table {table} lacks column {column} in its {image} image (the source \
         logs partial row images: binlog_row_image is not FULL), so it cannot be undone"
    )]
    PartialImage {
        table: String,
        event_id: String,
        column: String,
        image: &'static str,
    },
    #[error("event {event_id} of table {table}: column {column}: {problem}")]
    Value {
        table: String,
        event_id: String,
        column: String,
        problem: String,
    },
    #[error("event {event_id}: {problem}")]
    Name { event_id: String, problem: String },
    #[error(
        "event {event_id} deleted {parent}, whose ON DELETE CASCADE deleted more than {limit} \
         captured rows of table {table}: too many to re-insert; undo that delete by hand"
    )]
    TooManyCascaded {
        table: String,
        event_id: String,
        parent: String,
        limit: usize,
    },
    #[error(
        "changes of this server up to {through} are archived (--hot-retention), and the rows of \
         {table} that a delete's ON DELETE CASCADE may have taken are more than the {limit} one \
         undo examines there; select changes committed after {through} (filter: committed_at > \
         \"{through}\"), or undo that delete by hand"
    )]
    Archived {
        through: String,
        table: String,
        limit: usize,
    },
}

/// A column's value in an image, which must hold it.
fn image_value<'a>(
    image: &'a Map<String, Json>,
    column: &ColumnInfo,
    context: &Context<'_>,
    which: &'static str,
) -> Result<&'a Json, UndoError> {
    image
        .get(&column.name)
        .ok_or_else(|| UndoError::PartialImage {
            table: context.table_name.clone(),
            event_id: context.event_id.clone(),
            column: column.name.clone(),
            image: which,
        })
}

/// What every statement of one change needs to name its problems.
struct Context<'a> {
    event_id: String,
    table_name: String,
    columns: &'a TableColumns,
}

impl Context<'_> {
    fn literal(&self, column: &ColumnInfo, value: &Json) -> Result<String, UndoError> {
        literal::value(value, &column.kind).map_err(|LiteralError(problem)| UndoError::Value {
            table: self.table_name.clone(),
            event_id: self.event_id.clone(),
            column: column.name.clone(),
            problem,
        })
    }

    fn name(&self, name: &str) -> Result<String, UndoError> {
        literal::identifier(name).map_err(|LiteralError(problem)| UndoError::Name {
            event_id: self.event_id.clone(),
            problem,
        })
    }

    /// The columns the script writes: all but the generated ones.
    fn written(&self) -> impl Iterator<Item = &ColumnInfo> {
        self.columns
            .columns
            .iter()
            .filter(|column| !column.generated)
    }

    /// `key AND comparable columns` equal to `image` (NULL-safe).
    fn still_equal(&self, image: &Map<String, Json>) -> Result<String, UndoError> {
        let mut terms = Vec::new();
        for column in &self.columns.columns {
            let key = self.columns.primary_key.contains(&column.name);
            let comparable =
                !column.generated && !matches!(column.kind, ColumnKind::Json | ColumnKind::Float);
            if key || comparable {
                let value = image_value(image, column, self, "after")?;
                terms.push(format!(
                    "{} <=> {}",
                    self.name(&column.name)?,
                    self.literal(column, value)?
                ));
            }
        }
        Ok(terms.join(" AND "))
    }

    /// `INSERT` (`INSERT IGNORE` in force mode) of `image`'s written columns.
    fn insert(
        &self,
        table: &str,
        image: &Map<String, Json>,
        mode: RevertMode,
    ) -> Result<String, UndoError> {
        let mut names = Vec::new();
        let mut values = Vec::new();
        for column in self.written() {
            let value = image_value(image, column, self, "before")?;
            names.push(self.name(&column.name)?);
            values.push(self.literal(column, value)?);
        }
        let verb = match mode {
            RevertMode::Strict => "INSERT",
            RevertMode::Force => "INSERT IGNORE",
        };
        Ok(format!(
            "{verb} INTO {table} ({}) VALUES ({});",
            names.join(", "),
            values.join(", ")
        ))
    }

    /// The check after a statement on the row `key_image` names: in strict mode it stops the
    /// script with `strict` (what happened to the row), in force mode a SELECT names the row
    /// with `force` when it was not changed.
    fn check(
        &self,
        mode: RevertMode,
        key_image: &Map<String, Json>,
        strict: &str,
        force: &str,
    ) -> String {
        match mode {
            RevertMode::Strict => {
                // The row first: MySQL cuts the value it names at 200 characters.
                let message = format!(
                    "dbtrail revert stopped: row {} {} {strict}; nothing was applied",
                    self.table_name,
                    self.key_text(key_image),
                )
                .replace(',', ";");
                format!(
                    "SET @@session.sql_mode = IF(ROW_COUNT() = 1, @@session.sql_mode, {});",
                    text(&message)
                )
            }
            RevertMode::Force => {
                let message = format!(
                    "event {}: row {} {} {force}; not reverted",
                    self.event_id,
                    self.table_name,
                    self.key_text(key_image)
                );
                format!(
                    "SELECT {} AS skipped FROM DUAL WHERE ROW_COUNT() <> 1;",
                    text(&message)
                )
            }
        }
    }

    /// The row's key as a short text for messages: `id=5 region=eu` (no commas: sql_mode's
    /// refusal names only the part before the first comma).
    fn key_text(&self, image: &Map<String, Json>) -> String {
        self.columns
            .primary_key
            .iter()
            .map(|name| {
                let value = image.get(name).map(Json::to_string).unwrap_or_default();
                format!("{name}={value}").replace(',', ";")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One change's undo: its statement and the check after it, each line ending in a newline.
pub fn statement(
    event: &ChangeEvent,
    columns: Option<&TableColumns>,
    mode: RevertMode,
) -> Result<String, UndoError> {
    let change = &event.change;
    let context = Context::of(change, columns)?;
    let table = qualified(&change.schema, &change.table).map_err(|LiteralError(problem)| {
        UndoError::Name {
            event_id: context.event_id.clone(),
            problem,
        }
    })?;
    let (sql, key_image) = context.inverse(change, &table, mode)?;
    let what = match change.operation {
        ChangeOperation::Insert => "its insert",
        ChangeOperation::Update => "its update",
        ChangeOperation::Delete => "its delete",
    };
    let check = context.check(
        mode,
        &key_image,
        &format!(
            "was changed since {what} (event {}) or is gone",
            context.event_id
        ),
        &format!("was changed since {what}"),
    );
    Ok(format!(
        "-- {} {} of {}\n{sql}\n{check}\n",
        comment_text(&context.event_id),
        change.operation.as_str(),
        comment_text(&context.table_name)
    ))
}

impl<'a> Context<'a> {
    /// The context of `change`'s table, refused when its columns are unknown or it has no
    /// primary key.
    fn of(change: &RowChange, columns: Option<&'a TableColumns>) -> Result<Self, UndoError> {
        let table_name = format!("{}.{}", change.schema, change.table);
        let event_id = change.event_id();
        let columns = columns.ok_or_else(|| UndoError::UnknownTable {
            table: table_name.clone(),
            event_id: event_id.clone(),
        })?;
        if columns.primary_key.is_empty() {
            return Err(UndoError::NoPrimaryKey { table: table_name });
        }
        Ok(Context {
            event_id,
            table_name,
            columns,
        })
    }

    /// The statement that undoes `change` on `table`, and the image that names its row after.
    fn inverse(
        &self,
        change: &RowChange,
        table: &str,
        mode: RevertMode,
    ) -> Result<(String, Map<String, Json>), UndoError> {
        Ok(match change.operation {
            ChangeOperation::Insert => {
                let after = self.image(&change.after, "after")?;
                let sql = format!("DELETE FROM {table} WHERE {};", self.still_equal(&after)?);
                (sql, after)
            }
            ChangeOperation::Update => {
                let before = self.image(&change.before, "before")?;
                let after = self.image(&change.after, "after")?;
                let sql = format!(
                    "UPDATE {table} SET {} WHERE {};",
                    self.assignments(&before)?,
                    self.still_equal(&after)?
                );
                (sql, after)
            }
            ChangeOperation::Delete => {
                let before = self.image(&change.before, "before")?;
                (self.insert(table, &before, mode)?, before)
            }
        })
    }

    /// A whole row image, or the error that names the missing one.
    fn image(
        &self,
        image: &Option<Json>,
        which: &'static str,
    ) -> Result<Map<String, Json>, UndoError> {
        match image {
            Some(Json::Object(object)) => Ok(object.clone()),
            _ => Err(UndoError::PartialImage {
                table: self.table_name.clone(),
                event_id: self.event_id.clone(),
                column: "(all)".to_owned(),
                image: which,
            }),
        }
    }

    /// `a = 1, b = 'x'`: every written column set back to `before`.
    fn assignments(&self, before: &Map<String, Json>) -> Result<String, UndoError> {
        let mut assignments = Vec::new();
        for column in self.written() {
            let value = image_value(before, column, self, "before")?;
            assignments.push(format!(
                "{} = {}",
                self.name(&column.name)?,
                self.literal(column, value)?
            ));
        }
        Ok(assignments.join(", "))
    }
}

/// A row for messages: `schema.table id=5` (its primary key's columns and values, no commas).
pub fn row_text(
    schema: &str,
    table: &str,
    columns: &TableColumns,
    image: &Map<String, Json>,
) -> String {
    let context = Context {
        event_id: String::new(),
        table_name: format!("{schema}.{table}"),
        columns,
    };
    format!("{} {}", context.table_name, context.key_text(image))
}

/// The re-insert of a child row that InnoDB deleted by `ON DELETE CASCADE` with its parent
/// (`parent`, as [`row_text`] names it) when the delete event `parent_event_id` ran; `child` is
/// the child row's latest captured change before that delete, whose after image is the row.
/// `INSERT` (`INSERT IGNORE` in force mode) with the same check as other statements.
pub fn cascaded_insert(
    child: &ChangeEvent,
    columns: &TableColumns,
    mode: RevertMode,
    parent: &str,
    parent_event_id: &str,
) -> Result<String, UndoError> {
    let change = &child.change;
    let context = Context {
        event_id: parent_event_id.to_owned(),
        table_name: format!("{}.{}", change.schema, change.table),
        columns,
    };
    if columns.primary_key.is_empty() {
        return Err(UndoError::NoPrimaryKey {
            table: context.table_name,
        });
    }
    let table = qualified(&change.schema, &change.table).map_err(|LiteralError(problem)| {
        UndoError::Name {
            event_id: context.event_id.clone(),
            problem,
        }
    })?;
    let Some(Json::Object(image)) = &change.after else {
        return Err(UndoError::PartialImage {
            table: context.table_name.clone(),
            event_id: change.event_id(),
            column: "(all)".to_owned(),
            image: "after",
        });
    };
    let sql = context.insert(&table, image, mode)?;
    let check = context.check(
        mode,
        image,
        &format!("deleted by cascade (event {parent_event_id}) could not be re-inserted"),
        "deleted by cascade could not be re-inserted",
    );
    Ok(format!(
        "-- re-inserted: deleted by ON DELETE CASCADE with {} (its image from event {})\n\
         {sql}\n{check}\n",
        comment_text(parent),
        comment_text(&change.event_id()),
    ))
}

/// What the script cannot restore of the children in `child` (`schema.table`) of the deleted
/// `parent` row: those never captured, and all of them when the child table has no primary key.
pub fn uncaptured_children(child: &str, parent: &str, keyless: bool) -> String {
    if keyless {
        format!(
            "-- not restored: rows of {} deleted by ON DELETE CASCADE with {}: the table has no \
             primary key.\n",
            comment_text(child),
            comment_text(parent)
        )
    } else {
        format!(
            "-- not restored: rows of {} deleted by ON DELETE CASCADE with {} that were never \
             captured (unchanged since onboarding): children never captured cannot be \
             restored.\n",
            comment_text(child),
            comment_text(parent)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    fn columns() -> TableColumns {
        let column = |name: &str, kind: ColumnKind, generated: bool| ColumnInfo {
            name: name.into(),
            kind,
            generated,
        };
        TableColumns {
            columns: vec![
                column("id", ColumnKind::Signed, false),
                column("note", ColumnKind::Text, false),
                column("doc", ColumnKind::Json, false),
                column("twice", ColumnKind::Signed, true),
            ],
            primary_key: vec!["id".into()],
            cascades: Vec::new(),
        }
    }

    fn event(operation: ChangeOperation, before: Option<Json>, after: Option<Json>) -> ChangeEvent {
        ChangeEvent {
            sequence: 7,
            change: RowChange {
                binlog_file: "bin.000001".into(),
                binlog_position: 400,
                row_index: 0,
                gtid: String::new(),
                committed_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
                schema: "shop".into(),
                table: "t`x".into(),
                operation,
                primary_key: Some(json!({"id": 5})),
                before,
                after,
            },
        }
    }

    #[test]
    fn each_change_becomes_its_inverse_guarded_by_what_it_left() {
        let row = json!({"id": 5, "note": "it's", "doc": {"a": 1}, "twice": 10});
        let newer = json!({"id": 5, "note": "new", "doc": {"a": 2}, "twice": 10});
        let insert = statement(
            &event(ChangeOperation::Insert, None, Some(row.clone())),
            Some(&columns()),
            RevertMode::Strict,
        )
        .unwrap();
        assert_eq!(
            insert,
            "-- bin.000001:400:0 insert of shop.t`x\n\
             DELETE FROM `shop`.`t``x` WHERE `id` <=> 5 AND `note` <=> _utf8mb4 X'69742773';\n\
             SET @@session.sql_mode = IF(ROW_COUNT() = 1, @@session.sql_mode, 'dbtrail revert \
             stopped: row shop.t`x id=5 was changed since its insert (event bin.000001:400:0) or \
             is gone; nothing was applied');\n"
        );
        let update = statement(
            &event(ChangeOperation::Update, Some(row.clone()), Some(newer)),
            Some(&columns()),
            RevertMode::Force,
        )
        .unwrap();
        assert!(
            update.contains(
                "UPDATE `shop`.`t``x` SET `id` = 5, `note` = _utf8mb4 X'69742773', \
                 `doc` = '{\"a\":1}' WHERE `id` <=> 5 AND `note` <=> 'new';\n\
                 SELECT 'event bin.000001:400:0: row shop.t`x id=5 was changed since its update; \
                 not reverted' AS skipped FROM DUAL WHERE ROW_COUNT() <> 1;\n"
            ),
            "{update}"
        );
        let delete = statement(
            &event(ChangeOperation::Delete, Some(row), None),
            Some(&columns()),
            RevertMode::Force,
        )
        .unwrap();
        assert!(
            delete.contains(
                "INSERT IGNORE INTO `shop`.`t``x` (`id`, `note`, `doc`) VALUES (5, \
                 _utf8mb4 X'69742773', '{\"a\":1}');"
            ),
            "{delete}"
        );
    }

    #[test]
    fn a_cascaded_child_is_re_inserted_from_its_after_image_and_the_rest_is_named() {
        let child = event(
            ChangeOperation::Update,
            Some(json!({"id": 5, "note": "old", "doc": null, "twice": 10})),
            Some(json!({"id": 5, "note": "x", "doc": null, "twice": 10})),
        );
        let strict = cascaded_insert(
            &child,
            &columns(),
            RevertMode::Strict,
            "shop.p id=1",
            "bin.000002:9:0",
        )
        .unwrap();
        assert_eq!(
            strict,
            "-- re-inserted: deleted by ON DELETE CASCADE with shop.p id=1 (its image from event \
             bin.000001:400:0)\n\
             INSERT INTO `shop`.`t``x` (`id`, `note`, `doc`) VALUES (5, 'x', NULL);\n\
             SET @@session.sql_mode = IF(ROW_COUNT() = 1, @@session.sql_mode, 'dbtrail revert \
             stopped: row shop.t`x id=5 deleted by cascade (event bin.000002:9:0) could not be \
             re-inserted; nothing was applied');\n"
        );
        let forced = cascaded_insert(&child, &columns(), RevertMode::Force, "p", "e").unwrap();
        assert!(forced.contains("INSERT IGNORE INTO"), "{forced}");
        assert!(forced.contains("'event e: row shop.t`x id=5 deleted by cascade"));
        assert!(
            uncaptured_children("shop.c", "shop.p id=1", false)
                .contains("children never captured cannot be restored")
        );
        assert!(uncaptured_children("shop.c", "shop.p id=1", true).contains("no primary key"));
    }

    #[test]
    fn what_cannot_be_undone_is_named() {
        let mut keyless = columns();
        keyless.primary_key.clear();
        let insert = event(ChangeOperation::Insert, None, Some(json!({"id": 1})));
        assert_eq!(
            statement(&insert, Some(&keyless), RevertMode::Strict).unwrap_err(),
            UndoError::NoPrimaryKey {
                table: "shop.t`x".into()
            }
        );
        let partial = event(ChangeOperation::Delete, Some(json!({"id": 1})), None);
        assert!(matches!(
            statement(&partial, Some(&columns()), RevertMode::Strict).unwrap_err(),
            UndoError::PartialImage { column, .. } if column == "note"
        ));
        assert!(matches!(
            statement(&partial, None, RevertMode::Strict).unwrap_err(),
            UndoError::UnknownTable { .. }
        ));
    }

    #[test]
    fn the_frame_sets_and_restores_the_session() {
        let text = header(&ScriptHeader {
            server_id: "id".into(),
            server_name: "db*/1".into(),
            filter: "table = \"t\"\nDROP".into(),
            event_ids: 0,
            mode: RevertMode::Strict,
            changes: 3,
            oldest: None,
            newest: None,
            generated_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        });
        assert!(text.contains("-- Filter: table = \"t\"<U+000A>DROP\n"));
        assert!(text.contains("Expects to change 3 rows"));
        assert!(text.ends_with("SET SESSION foreign_key_checks = 0;\nSTART TRANSACTION;\n"));
        assert!(
            text.lines()
                .all(|line| line.starts_with("-- ") || line.ends_with(';'))
        );
        assert!(footer(3).starts_with("COMMIT;\n"));
    }
}
