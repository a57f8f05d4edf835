//! ListChangeEvents: the server's captured row changes, oldest first, a keyset page at a time.
//! The server must be the caller's (NOT_FOUND otherwise); the auth layer has already required
//! `changes:read`.

use tonic::Request;

use super::{
    convert::change_event_to_proto,
    errors::ApiError,
    paging::{PageSizes, not_issued, query_digest},
    service::{ServersApi, parse_server_id, principal},
};
use crate::{
    domain::{Violations, change::ChangeFilter},
    proto,
};

const CHANGE_PAGES: PageSizes = PageSizes {
    default: 100,
    max: 1000,
};

/// Where a page of change events starts: after this sequence.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChangesCursor {
    after: i64,
}

impl ServersApi {
    /// One page of the server's change events.
    pub(super) async fn change_events(
        &self,
        request: Request<proto::ListChangeEventsRequest>,
    ) -> Result<proto::ListChangeEventsResponse, ApiError> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let id = parse_server_id(&request.server_id, "server_id")?;
        let mut violations = Violations::default();
        let page_size = CHANGE_PAGES.of(request.page_size, &mut violations);
        let filter = ChangeFilter::parse(&request.filter).unwrap_or_else(|error| {
            violations.add("filter", error.0);
            ChangeFilter::default()
        });
        violations.into_result().map_err(ApiError::Invalid)?;
        let tenant = principal.tenant_id.0.to_string();
        let query = query_digest(&[&tenant, &request.server_id, &request.filter]);
        let after = match self.tokens().decode::<ChangesCursor>(
            &request.page_token,
            &query,
            "a different server or filter, or another tenant",
        )? {
            Some(cursor) if cursor.after < 0 => return Err(not_issued()),
            Some(cursor) => cursor.after,
            None => 0,
        };
        // The server must be the caller's: another tenant's is NOT_FOUND.
        self.store().get_server(principal.tenant_id, id).await?;
        let page = self
            .index()
            .list_change_events(id, &filter, after, page_size)
            .await?;
        let next_page_token = match (page.more, page.events.last()) {
            (true, Some(last)) => self.tokens().encode(
                ChangesCursor {
                    after: last.sequence,
                },
                &query,
            ),
            _ => String::new(),
        };
        Ok(proto::ListChangeEventsResponse {
            events: page.events.iter().map(change_event_to_proto).collect(),
            next_page_token,
        })
    }
}
