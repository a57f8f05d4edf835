//! ListChangeEvents: the server's captured row changes, oldest first, a keyset page at a time,
//! bounded in bytes as well as events (`paging::PAGE_BYTES`); and what every list of a server's
//! captured changes (ListSchemaChanges too) shares: its fields checked, its page token, the
//! server the caller's (NOT_FOUND otherwise). The auth layer has already required
//! `changes:read`.

use tonic::Request;

use super::{
    convert::change_event_to_proto,
    errors::ApiError,
    paging::{PAGE_BYTES, PageSizes, item_bytes, not_issued, query_digest},
    service::{ServersApi, parse_server_id, principal},
};
use crate::{
    domain::{
        ServerId, Violations,
        change::{ChangeEvent, ChangeFilter, FilterGrammar},
    },
    proto,
    store::PageBound,
};

const CHANGE_PAGES: PageSizes = PageSizes {
    default: 100,
    max: 1000,
};

/// Where a page of a list starts: after this sequence (or id).
#[derive(serde::Serialize, serde::Deserialize)]
struct ChangesCursor {
    after: i64,
}

/// Which list of a server's captured changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChangesList {
    ChangeEvents,
    SchemaChanges,
}

impl ChangesList {
    fn grammar(self) -> FilterGrammar {
        match self {
            ChangesList::ChangeEvents => FilterGrammar::CHANGE_EVENTS,
            ChangesList::SchemaChanges => FilterGrammar::SCHEMA_CHANGES,
        }
    }

    /// What a page token is bound to besides the tenant, server and filter: a token of one list
    /// is no token of another.
    fn token_scope(self) -> &'static [&'static str] {
        match self {
            ChangesList::ChangeEvents => &[],
            ChangesList::SchemaChanges => &["schema-changes"],
        }
    }
}

/// The fields every list of a server's captured changes has, as the request sent them.
pub(super) struct ListFields<'a> {
    pub server_id: &'a str,
    pub page_size: i32,
    pub page_token: &'a str,
    pub filter: &'a str,
}

/// A request for a list of a server's captured changes.
pub(super) trait ChangesRequest {
    fn fields(&self) -> ListFields<'_>;
}

impl ChangesRequest for proto::ListChangeEventsRequest {
    fn fields(&self) -> ListFields<'_> {
        ListFields {
            server_id: &self.server_id,
            page_size: self.page_size,
            page_token: &self.page_token,
            filter: &self.filter,
        }
    }
}

impl ChangesRequest for proto::ListSchemaChangesRequest {
    fn fields(&self) -> ListFields<'_> {
        ListFields {
            server_id: &self.server_id,
            page_size: self.page_size,
            page_token: &self.page_token,
            filter: &self.filter,
        }
    }
}

/// A list of a server's captured changes as asked, checked: the caller's server, how many,
/// which, and after what.
pub(super) struct ChangesQuery {
    pub id: ServerId,
    pub page_size: usize,
    pub filter: ChangeFilter,
    pub after: i64,
    /// What a page token of this list is bound to.
    digest: String,
}

impl ServersApi {
    /// The page of `list` that `request` asks for; the server must be the caller's.
    pub(super) async fn changes_query<R: ChangesRequest>(
        &self,
        request: Request<R>,
        list: ChangesList,
    ) -> Result<ChangesQuery, ApiError> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let fields = request.fields();
        let id = parse_server_id(fields.server_id, "server_id")?;
        let mut violations = Violations::default();
        let page_size = CHANGE_PAGES.of(fields.page_size, &mut violations);
        let filter =
            ChangeFilter::parse_with(fields.filter, list.grammar()).unwrap_or_else(|error| {
                violations.add("filter", error.0);
                ChangeFilter::default()
            });
        violations.into_result().map_err(ApiError::Invalid)?;
        let tenant = principal.tenant_id.uuid().to_string();
        let mut parts = list.token_scope().to_vec();
        parts.extend([tenant.as_str(), fields.server_id, fields.filter]);
        let digest = query_digest(&parts);
        let after = match self.tokens().decode::<ChangesCursor>(
            fields.page_token,
            &digest,
            "a different server or filter, or another tenant",
        )? {
            Some(cursor) if cursor.after < 0 => return Err(not_issued()),
            Some(cursor) => cursor.after,
            None => 0,
        };
        // The server must be the caller's: another tenant's is NOT_FOUND.
        self.store().get_server(principal.tenant_id, id).await?;
        Ok(ChangesQuery {
            id,
            page_size,
            filter,
            after,
            digest,
        })
    }

    /// The token of the page after one that ended at `last`, when `more` follow.
    pub(super) fn next_changes_token(
        &self,
        query: &ChangesQuery,
        more: bool,
        last: Option<i64>,
    ) -> String {
        match (more, last) {
            (true, Some(after)) => self.tokens().encode(ChangesCursor { after }, &query.digest),
            _ => String::new(),
        }
    }

    /// One page of the server's change events.
    pub(super) async fn change_events(
        &self,
        request: Request<proto::ListChangeEventsRequest>,
    ) -> Result<proto::ListChangeEventsResponse, ApiError> {
        let query = self
            .changes_query(request, ChangesList::ChangeEvents)
            .await?;
        let bound = PageBound {
            rows: query.page_size,
            bytes: PAGE_BYTES,
            size: |event: &ChangeEvent| item_bytes(&change_event_to_proto(event)),
        };
        let page = self
            .index(query.id)
            .await?
            .list_change_events(query.id, &query.filter, query.after, &bound)
            .await?;
        let last = page.events.last().map(|event| event.sequence);
        Ok(proto::ListChangeEventsResponse {
            events: page.events.iter().map(change_event_to_proto).collect(),
            next_page_token: self.next_changes_token(&query, page.more, last),
        })
    }
}
