//! RevertChanges: the SQL that undoes a selection of captured changes (`source::undo` writes
//! it), streamed as google.api.HttpBody chunks of text/plain. The selection is summarised first
//! (its size, its newest change, which bounds the pages, its oldest, and any table without a
//! primary key, which refuses the call); then the changes are read newest first a page at a time,
//! each page written and sent before the next is read, so memory stays bounded. A delete's
//! re-insert is followed by the re-inserts of the rows its `ON DELETE CASCADE` foreign keys
//! deleted (never logged), from their latest captured images in the change index. The auth layer
//! has already required `changes:read`.

use std::{
    collections::{HashSet, VecDeque},
    pin::Pin,
};

use futures_util::Stream;
use serde_json::{Map, Value as Json};
use tonic::{Request, Response, Status, metadata::MetadataValue};

use super::{
    errors::ApiError,
    service::{ServersApi, parse_server_id, principal},
};
use crate::{
    domain::{
        ServerId, Violations,
        change::{
            ChangeEvent, ChangeFilter, ChangeOperation, EventId, FilterGrammar, MAX_EVENT_IDS,
        },
        server::Server,
        server::StreamOptions,
        stream::BinlogPoint,
    },
    proto::{self, RevertMode as ProtoMode},
    source::{
        decode::TableColumns,
        schema::CascadeKey,
        tables::Tables,
        undo::{self, RevertMode, ScriptHeader, UndoError},
    },
    store::{
        ChangeIndex, ChangeSelection, SelectionSummary, StoreError,
        index::{Holding, MAX_EXAMINED_ROWS},
    },
};

/// Changes read (and written) at a time.
const PAGE_EVENTS: usize = 200;
/// The most bytes of script one message carries (well under the message limit).
const CHUNK_BYTES: usize = 512 * 1024;
/// The content type of every chunk.
pub const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// The stream RevertChanges answers with.
pub type RevertStream = Pin<Box<dyn Stream<Item = Result<proto::HttpBody, Status>> + Send>>;

/// A RevertChanges request, checked.
struct RevertQuery {
    id: ServerId,
    filter_text: String,
    selection: ChangeSelection,
    mode: RevertMode,
}

fn parse(request: &proto::RevertChangesRequest) -> Result<RevertQuery, ApiError> {
    let id = parse_server_id(&request.server_id, "server_id")?;
    let mut violations = Violations::default();
    let filter = ChangeFilter::parse_with(&request.filter, FilterGrammar::CHANGE_EVENTS)
        .unwrap_or_else(|error| {
            violations.add("filter", error.0);
            ChangeFilter::default()
        });
    let event_ids = if request.event_ids.len() > MAX_EVENT_IDS {
        violations.add(
            "event_ids",
            format!(
                "has {} entries; at most {MAX_EVENT_IDS} allowed (select more with a filter)",
                request.event_ids.len()
            ),
        );
        None
    } else if request.event_ids.is_empty() {
        None
    } else {
        let mut ids = Vec::with_capacity(request.event_ids.len());
        for (index, text) in request.event_ids.iter().enumerate() {
            match EventId::parse(text) {
                Ok(id) => ids.push(id),
                Err(problem) => violations.add(format!("event_ids[{index}]"), problem),
            }
        }
        Some(ids)
    };
    let mode = match ProtoMode::try_from(request.mode) {
        Ok(ProtoMode::Unspecified | ProtoMode::Strict) => RevertMode::Strict,
        Ok(ProtoMode::Force) => RevertMode::Force,
        Err(_) => {
            violations.add(
                "mode",
                format!("{} is not a revert mode (strict or force)", request.mode),
            );
            RevertMode::Strict
        }
    };
    violations.into_result().map_err(ApiError::Invalid)?;
    Ok(RevertQuery {
        id,
        filter_text: request.filter.clone(),
        selection: ChangeSelection {
            filter,
            event_ids,
            through: i64::MAX,
        },
        mode,
    })
}

/// The columns of each table at each binlog place, from the server's snapshot history.
pub(super) async fn server_tables(api: &ServersApi, id: ServerId) -> Result<Tables, ApiError> {
    if !api.store().has_index_tables(id).await? {
        return Ok(Tables::default());
    }
    let history = api.store().snapshot_history(id).await?;
    Tables::from_history(history, &StreamOptions::default())
        .map_err(|error| ApiError::Store(StoreError::Corrupt(format!("snapshot: {error}"))))
}

/// The most captured child rows of one table that one deleted parent row's cascade re-inserts;
/// more refuse the script ([`UndoError::TooManyCascaded`]).
const MAX_CASCADED_ROWS: usize = 1000;
/// How many levels of cascades below a deleted row are followed (children, grandchildren, ...).
const MAX_CASCADE_DEPTH: usize = 8;

/// The statements undoing a page of changes (newest first), as text: each delete's re-insert is
/// followed by the re-inserts of the rows its foreign keys' `ON DELETE CASCADE` deleted, when
/// they were captured.
async fn page_text(
    index: &ChangeIndex,
    id: ServerId,
    events: &[ChangeEvent],
    tables: &Tables,
    mode: RevertMode,
) -> Result<String, ApiError> {
    let mut text = String::new();
    for event in events {
        let change = &event.change;
        let at = BinlogPoint {
            file: change.binlog_file.clone(),
            position: u64::try_from(change.binlog_position).unwrap_or_default(),
        };
        let columns = tables.get(&change.schema, &change.table, &at);
        text.push_str(&undo::statement(event, columns, mode).map_err(ApiError::Undo)?);
        if let (ChangeOperation::Delete, Some(columns), Some(Json::Object(before))) =
            (change.operation, columns, &change.before)
        {
            let parent = (change.schema.as_str(), change.table.as_str());
            let cascade = Cascade {
                index,
                id,
                tables,
                mode,
                event,
                at: &at,
            };
            let key = change.primary_key.clone();
            text.push_str(&cascade.children(parent, columns, before, key).await?);
        }
    }
    Ok(text)
}

/// The re-inserts of the rows one delete event's cascades deleted.
struct Cascade<'a> {
    index: &'a ChangeIndex,
    id: ServerId,
    tables: &'a Tables,
    mode: RevertMode,
    /// The parent's delete.
    event: &'a ChangeEvent,
    at: &'a BinlogPoint,
}

/// A deleted row whose captured children are still to be re-inserted.
struct Parent {
    schema: String,
    table: String,
    columns: TableColumns,
    image: Map<String, Json>,
    key: Option<Json>,
    /// Only images newer than this sequence count.
    after: i64,
    depth: usize,
}

/// A table whose rows reference a deleted parent through an `ON DELETE CASCADE` key.
struct Child<'a> {
    schema: &'a str,
    table: &'a str,
    columns: &'a TableColumns,
    name: String,
}

/// A cascade walk's state: the text so far, the child rows already re-inserted, the parents
/// still to visit.
#[derive(Default)]
struct Walk {
    text: String,
    seen: HashSet<(String, String, Option<Json>)>,
    stack: Vec<Parent>,
}

/// The child's key values that reference `image`, or `None` when one of them is NULL (or not
/// captured): such a row has no children.
fn referenced_values(key: &CascadeKey, image: &Map<String, Json>) -> Option<Map<String, Json>> {
    key.columns
        .iter()
        .map(|(child_column, parent_column)| {
            let value = image.get(parent_column).filter(|value| !value.is_null())?;
            Some((child_column.clone(), value.clone()))
        })
        .collect()
}

impl Cascade<'_> {
    /// The statements re-inserting the captured children of the deleted row `image` of
    /// `parent`, their children, and so on (depth-first, at most [`MAX_CASCADE_DEPTH`] levels),
    /// each child row once; with a comment for the children that cannot be restored.
    async fn children(
        &self,
        parent: (&str, &str),
        columns: &TableColumns,
        image: &Map<String, Json>,
        key: Option<Json>,
    ) -> Result<String, ApiError> {
        let mut walk = Walk::default();
        walk.stack.push(Parent {
            schema: parent.0.to_owned(),
            table: parent.1.to_owned(),
            columns: columns.clone(),
            image: image.clone(),
            key,
            after: 0,
            depth: 0,
        });
        while let Some(parent) = walk.stack.pop() {
            self.restore_children_of(parent, &mut walk).await?;
        }
        Ok(walk.text)
    }

    /// Re-inserts the captured children of one deleted row, in every table that references it,
    /// and queues their own children.
    async fn restore_children_of(&self, parent: Parent, walk: &mut Walk) -> Result<(), ApiError> {
        let table = (parent.schema.as_str(), parent.table.as_str());
        let children = self.tables.cascading_children(table, self.at);
        if children.is_empty() {
            return Ok(());
        }
        let parent_row = undo::row_text(table.0, table.1, &parent.columns, &parent.image);
        if parent.depth == MAX_CASCADE_DEPTH {
            walk.text.push_str(&format!(
                "-- not restored: cascades more than {MAX_CASCADE_DEPTH} levels below {} \
                 are not followed.\n",
                undo::literal::comment_text(&parent_row)
            ));
            return Ok(());
        }
        let uncaptured = self
            .may_have_uncaptured_children(table, parent.key.as_ref())
            .await?;
        // Rows whose latest image is older than this row's previous delete went with it.
        let after = match &parent.key {
            Some(key) => self
                .index
                .last_delete_before(self.id, table, key, self.event.sequence)
                .await?
                .map_or(parent.after, |deleted| deleted.max(parent.after)),
            None => parent.after,
        };
        for (child_schema, child_table, child_columns, key) in children {
            let child = Child {
                schema: child_schema,
                table: child_table,
                columns: child_columns,
                name: format!("{child_schema}.{child_table}"),
            };
            // A NULL (or uncaptured) referenced value has no children.
            let Some(values) = referenced_values(key, &parent.image) else {
                continue;
            };
            if child.columns.primary_key.is_empty() {
                walk.text
                    .push_str(&undo::uncaptured_children(&child.name, &parent_row, true));
                continue;
            }
            let reach = (after, parent.depth + 1);
            self.restore_rows(&child, values, &parent_row, reach, walk)
                .await?;
            if uncaptured {
                walk.text
                    .push_str(&undo::uncaptured_children(&child.name, &parent_row, false));
            }
        }
        Ok(())
    }

    /// Re-inserts the captured rows of `child` that held `values` when the parent `parent_row`
    /// was deleted (images newer than `after`), each once, and queues them as parents at `depth`.
    async fn restore_rows(
        &self,
        child: &Child<'_>,
        values: Map<String, Json>,
        parent_row: &str,
        (after, depth): (i64, usize),
        walk: &mut Walk,
    ) -> Result<(), ApiError> {
        let event_id = self.event.change.event_id();
        let holding = self
            .index
            .rows_holding(
                self.id,
                (child.schema, child.table),
                &Json::Object(values),
                (after, self.event.sequence),
                MAX_CASCADED_ROWS,
            )
            .await?;
        let (rows, more) = match holding {
            Holding::Rows(rows, more) => (rows, more),
            Holding::TooManyArchived => {
                return Err(too_many_archived_rows(self.index, self.id, &child.name).await);
            }
        };
        if more {
            return Err(ApiError::Undo(UndoError::TooManyCascaded {
                table: child.name.clone(),
                event_id,
                parent: parent_row.to_owned(),
                limit: MAX_CASCADED_ROWS,
            }));
        }
        for row in rows {
            let identity = (
                child.schema.to_owned(),
                child.table.to_owned(),
                row.change.primary_key.clone(),
            );
            if !walk.seen.insert(identity) {
                continue;
            }
            walk.text.push_str(
                &undo::cascaded_insert(&row, child.columns, self.mode, parent_row, &event_id)
                    .map_err(ApiError::Undo)?,
            );
            if let Some(Json::Object(image)) = row.change.after {
                walk.stack.push(Parent {
                    schema: child.schema.to_owned(),
                    table: child.table.to_owned(),
                    columns: child.columns.clone(),
                    image,
                    key: row.change.primary_key,
                    after,
                    depth,
                });
            }
        }
        Ok(())
    }

    /// Whether the row `key` of `table` may have had children the capture never saw: unless its
    /// first captured change inserted it (after the capture began, so every row that referenced
    /// it since was inserted or updated, and captured, after that).
    async fn may_have_uncaptured_children(
        &self,
        table: (&str, &str),
        key: Option<&Json>,
    ) -> Result<bool, ApiError> {
        let Some(key) = key else {
            return Ok(true);
        };
        let (first, _) = self.index.row_history(self.id, table, key, 1).await?;
        Ok(first
            .first()
            .is_none_or(|event| event.change.operation != ChangeOperation::Insert))
    }
}

/// Splits text into chunks of at most [`CHUNK_BYTES`] (the script is ASCII, so any byte is a
/// boundary).
fn chunks(text: String, queue: &mut VecDeque<proto::HttpBody>) {
    let bytes = text.into_bytes();
    for chunk in bytes.chunks(CHUNK_BYTES) {
        queue.push_back(proto::HttpBody {
            content_type: CONTENT_TYPE.to_owned(),
            data: chunk.to_vec(),
            extensions: Vec::new(),
        });
    }
}

/// Where the writing of a script stands between messages.
struct Writer {
    index: ChangeIndex,
    id: ServerId,
    selection: ChangeSelection,
    tables: Tables,
    mode: RevertMode,
    changes: u64,
    /// The sequence the next page ends before; none once every page was read.
    before: Option<i64>,
    queue: VecDeque<proto::HttpBody>,
    done: bool,
}

impl Writer {
    /// The next message: queued text, else the next page's, else the footer.
    async fn next(&mut self) -> Option<Result<proto::HttpBody, Status>> {
        loop {
            if let Some(message) = self.queue.pop_front() {
                return Some(Ok(message));
            }
            if self.done {
                return None;
            }
            let Some(before) = self.before else {
                chunks(undo::footer(self.changes), &mut self.queue);
                self.done = true;
                continue;
            };
            let page = match self
                .index
                .selected_events_descending(self.id, &self.selection, before, PAGE_EVENTS)
                .await
            {
                Ok(page) => page,
                Err(error) => return self.fail(ApiError::Store(error)),
            };
            self.before = match page.last() {
                Some(last) if page.len() == PAGE_EVENTS => Some(last.sequence),
                _ => None,
            };
            match page_text(&self.index, self.id, &page, &self.tables, self.mode).await {
                Ok(text) => chunks(text, &mut self.queue),
                Err(error) => return self.fail(error),
            }
        }
    }

    fn fail(&mut self, error: ApiError) -> Option<Result<proto::HttpBody, Status>> {
        self.done = true;
        self.queue.clear();
        Some(Err(Status::from(error)))
    }
}

impl ServersApi {
    /// The undo script of the selection the request names, as a stream of text chunks; refused
    /// before any is sent when the request is wrong or a table has no primary key.
    pub(super) async fn revert_changes(
        &self,
        request: Request<proto::RevertChangesRequest>,
    ) -> Result<Response<RevertStream>, ApiError> {
        let principal = principal(&request)?;
        let mut query = parse(request.get_ref())?;
        let server = self
            .store()
            .get_server(principal.tenant_id, query.id)
            .await?;
        let index = self.index(query.id).await?;
        let summary = index
            .summarize_selection(query.id, &query.selection)
            .await?;
        refuse_keyless_tables(&summary)?;
        let tables = server_tables(self, query.id).await?;
        query.selection.through = summary.through.unwrap_or(0);
        // The newest page is read and written now, so that what stops its first statements is
        // the call's status rather than an error after the header.
        let first = match summary.through {
            Some(through) => {
                index
                    .selected_events_descending(
                        query.id,
                        &query.selection,
                        through + 1,
                        PAGE_EVENTS,
                    )
                    .await?
            }
            None => Vec::new(),
        };
        let first_text = page_text(&index, query.id, &first, &tables, query.mode).await?;
        let header = undo::header(&script_header(&query, &server, &summary, &first));
        let mut queue = VecDeque::new();
        chunks(header, &mut queue);
        chunks(first_text, &mut queue);
        let before = match first.last() {
            Some(last) if first.len() == PAGE_EVENTS => Some(last.sequence),
            _ => None,
        };
        let id = query.id;
        let writer = Writer {
            index,
            id,
            selection: query.selection,
            tables,
            mode: query.mode,
            changes: u64::try_from(summary.count).unwrap_or_default(),
            before,
            queue,
            done: false,
        };
        Ok(download(writer, id))
    }
}

/// Refuses a cascade whose child table has more rows in the archived range than one call
/// examines (`MAX_EXAMINED_ROWS`).
async fn too_many_archived_rows(index: &ChangeIndex, id: ServerId, table: &str) -> ApiError {
    match index.archived_through(id.uuid()).await {
        Ok(Some((_, through))) => archived(through, table),
        Ok(None) => ApiError::Store(StoreError::Archive(
            "the archive's manifest changed while the cascade was read".into(),
        )),
        Err(error) => ApiError::Store(error),
    }
}

fn archived(through: chrono::DateTime<chrono::Utc>, table: &str) -> ApiError {
    ApiError::Undo(UndoError::Archived {
        through: through.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        table: table.to_owned(),
        limit: MAX_EXAMINED_ROWS,
    })
}

/// Refuses a selection with changes of a table that has no primary key, naming the tables.
fn refuse_keyless_tables(summary: &SelectionSummary) -> Result<(), ApiError> {
    if summary.keyless_tables.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = summary
        .keyless_tables
        .iter()
        .map(|(schema, table)| format!("{schema}.{table}"))
        .collect();
    Err(ApiError::Undo(UndoError::NoPrimaryKey {
        table: names.join(", "),
    }))
}

/// What the script's first lines say of the selection; `first` is its newest page.
fn script_header(
    query: &RevertQuery,
    server: &Server,
    summary: &SelectionSummary,
    first: &[ChangeEvent],
) -> ScriptHeader {
    let identity = |event: &ChangeEvent| (event.change.event_id(), event.change.committed_at);
    ScriptHeader {
        server_id: query.id.uuid().to_string(),
        server_name: server.spec.name.to_string(),
        filter: query.filter_text.clone(),
        event_ids: query.selection.event_ids.as_ref().map_or(0, Vec::len),
        mode: query.mode,
        changes: u64::try_from(summary.count).unwrap_or_default(),
        oldest: summary.oldest.as_ref().map(identity),
        newest: first.first().map(identity),
        generated_at: crate::domain::now(),
    }
}

/// The script as a response: `writer`'s chunks, named as a download.
fn download(writer: Writer, id: ServerId) -> Response<RevertStream> {
    let stream = futures_util::stream::unfold(writer, |mut writer| async move {
        let item = writer.next().await?;
        Some((item, writer))
    });
    let mut response = Response::new(Box::pin(stream) as RevertStream);
    let disposition = format!("attachment; filename=\"revert-{}.sql\"", id.uuid());
    if let Ok(value) = MetadataValue::try_from(disposition) {
        response.metadata_mut().insert("content-disposition", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(event_ids: Vec<String>, mode: i32) -> proto::RevertChangesRequest {
        proto::RevertChangesRequest {
            server_id: uuid::Uuid::new_v4().to_string(),
            filter: String::new(),
            event_ids,
            mode,
        }
    }

    fn fields(error: ApiError) -> Vec<String> {
        match error {
            ApiError::Invalid(violations) => violations
                .0
                .iter()
                .map(|violation| violation.field.clone())
                .collect(),
            other => panic!("not invalid: {other}"),
        }
    }

    #[test]
    fn bad_requests_name_their_fields() {
        let too_many = (0..=MAX_EVENT_IDS).map(|i| format!("f:{i}:0")).collect();
        assert_eq!(
            fields(parse(&request(too_many, 0)).err().unwrap()),
            ["event_ids"]
        );
        let malformed = vec!["f:1:0".to_owned(), "nonsense".to_owned()];
        assert_eq!(
            fields(parse(&request(malformed, 7)).err().unwrap()),
            ["event_ids[1]", "mode"]
        );
        let mut bad_filter = request(Vec::new(), 2);
        bad_filter.filter = "colour = red".into();
        assert_eq!(fields(parse(&bad_filter).err().unwrap()), ["filter"]);
        let fine = parse(&request(vec!["f:1:0".into()], 2)).ok().unwrap();
        assert_eq!(fine.mode, RevertMode::Force);
    }
}
