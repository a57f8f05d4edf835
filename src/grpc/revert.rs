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
        server::StreamOptions,
        stream::BinlogPoint,
    },
    proto::{self, RevertMode as ProtoMode},
    source::{
        decode::TableColumns,
        tables::Tables,
        undo::{self, RevertMode, ScriptHeader, UndoError},
    },
    store::{ChangeIndex, ChangeSelection, StoreError},
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
        let event_id = self.event.change.event_id();
        let mut text = String::new();
        let mut seen = HashSet::new();
        let mut stack = vec![(
            parent.0.to_owned(),
            parent.1.to_owned(),
            columns.clone(),
            image.clone(),
            key,
            0,
            0,
        )];
        while let Some((schema, table, columns, image, key, after, depth)) = stack.pop() {
            let children = self.tables.cascading_children((&schema, &table), self.at);
            if children.is_empty() {
                continue;
            }
            let parent_row = undo::row_text(&schema, &table, &columns, &image);
            if depth == MAX_CASCADE_DEPTH {
                text.push_str(&format!(
                    "-- not restored: cascades more than {MAX_CASCADE_DEPTH} levels below {} \
                     are not followed.\n",
                    undo::literal::comment_text(&parent_row)
                ));
                continue;
            }
            let uncaptured = self
                .may_have_uncaptured_children((&schema, &table), key.as_ref())
                .await?;
            // Rows whose latest image is older than this row's previous delete went with it.
            let after = match &key {
                Some(key) => self
                    .index
                    .last_delete_before(self.id, (&schema, &table), key, self.event.sequence)
                    .await?
                    .map_or(after, |deleted| deleted.max(after)),
                None => after,
            };
            for (child_schema, child_table, child_columns, key) in children {
                let child_name = format!("{child_schema}.{child_table}");
                let mut values = Map::new();
                for (child_column, parent_column) in &key.columns {
                    match image.get(parent_column) {
                        Some(value) if !value.is_null() => {
                            values.insert(child_column.clone(), value.clone());
                        }
                        _ => break,
                    }
                }
                // A NULL (or uncaptured) referenced value has no children.
                if values.len() < key.columns.len() {
                    continue;
                }
                if child_columns.primary_key.is_empty() {
                    text.push_str(&undo::uncaptured_children(&child_name, &parent_row, true));
                    continue;
                }
                let (rows, more) = self
                    .index
                    .rows_holding(
                        self.id,
                        (child_schema, child_table),
                        &Json::Object(values),
                        (after, self.event.sequence),
                        MAX_CASCADED_ROWS,
                    )
                    .await?;
                if more {
                    return Err(ApiError::Undo(UndoError::TooManyCascaded {
                        table: child_name,
                        event_id,
                        parent: parent_row,
                        limit: MAX_CASCADED_ROWS,
                    }));
                }
                for row in rows {
                    let identity = (
                        child_schema.to_owned(),
                        child_table.to_owned(),
                        row.change.primary_key.clone(),
                    );
                    if !seen.insert(identity) {
                        continue;
                    }
                    text.push_str(
                        &undo::cascaded_insert(
                            &row,
                            child_columns,
                            self.mode,
                            &parent_row,
                            &event_id,
                        )
                        .map_err(ApiError::Undo)?,
                    );
                    if let Some(Json::Object(row_image)) = row.change.after {
                        stack.push((
                            child_schema.to_owned(),
                            child_table.to_owned(),
                            child_columns.clone(),
                            row_image,
                            row.change.primary_key,
                            after,
                            depth + 1,
                        ));
                    }
                }
                if uncaptured {
                    text.push_str(&undo::uncaptured_children(&child_name, &parent_row, false));
                }
            }
        }
        Ok(text)
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
        let query = parse(request.get_ref())?;
        let server = self
            .store()
            .get_server(principal.tenant_id, query.id)
            .await?;
        let summary = self
            .index()
            .summarize_selection(query.id, &query.selection)
            .await?;
        if !summary.keyless_tables.is_empty() {
            let names: Vec<String> = summary
                .keyless_tables
                .iter()
                .map(|(schema, table)| format!("{schema}.{table}"))
                .collect();
            return Err(ApiError::Undo(UndoError::NoPrimaryKey {
                table: names.join(", "),
            }));
        }
        let tables = server_tables(self, query.id).await?;
        let selection = ChangeSelection {
            through: summary.through.unwrap_or(0),
            ..query.selection
        };
        // The newest page is read and written now, so that what stops its first statements is
        // the call's status rather than an error after the header.
        let first = match summary.through {
            Some(through) => {
                self.index()
                    .selected_events_descending(query.id, &selection, through + 1, PAGE_EVENTS)
                    .await?
            }
            None => Vec::new(),
        };
        let first_text = page_text(self.index(), query.id, &first, &tables, query.mode).await?;
        let header = undo::header(&ScriptHeader {
            server_id: query.id.uuid().to_string(),
            server_name: server.spec.name.to_string(),
            filter: query.filter_text.clone(),
            event_ids: selection.event_ids.as_ref().map_or(0, Vec::len),
            mode: query.mode,
            changes: u64::try_from(summary.count).unwrap_or_default(),
            oldest: summary
                .oldest
                .as_ref()
                .map(|event| (event.change.event_id(), event.change.committed_at)),
            newest: first
                .first()
                .map(|event| (event.change.event_id(), event.change.committed_at)),
            generated_at: crate::domain::now(),
        });
        let mut queue = VecDeque::new();
        chunks(header, &mut queue);
        chunks(first_text, &mut queue);
        let before = match first.last() {
            Some(last) if first.len() == PAGE_EVENTS => Some(last.sequence),
            _ => None,
        };
        let writer = Writer {
            index: self.index().clone(),
            id: query.id,
            selection,
            tables,
            mode: query.mode,
            changes: u64::try_from(summary.count).unwrap_or_default(),
            before,
            queue,
            done: false,
        };
        let stream = futures_util::stream::unfold(writer, |mut writer| async move {
            let item = writer.next().await?;
            Some((item, writer))
        });
        let mut response = Response::new(Box::pin(stream) as RevertStream);
        let disposition = format!("attachment; filename=\"revert-{}.sql\"", query.id.uuid());
        if let Ok(value) = MetadataValue::try_from(disposition) {
            response.metadata_mut().insert("content-disposition", value);
        }
        Ok(response)
    }
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
