//! ListServers' pages: the page size and byte budget, the parsed filter and the cursor a page
//! token carries, checked against the query the token was issued for.

use chrono::{DateTime, Datelike, Utc};

use super::{
    convert::server_to_proto,
    errors::ApiError,
    paging::{PAGE_BYTES, PageSizes, PageTokens, item_bytes, not_issued, query_digest},
};
use crate::{
    domain::{
        TenantId, Violations,
        filter::{self, Filter},
        server::Server,
    },
    proto,
    store::{PageBound, PageCursor},
};

const SERVER_PAGES: PageSizes = PageSizes {
    default: 50,
    max: 500,
};

/// Where a ListServers page starts, as its token carries it.
#[derive(serde::Serialize, serde::Deserialize)]
struct ServersCursor {
    created_at_micros: i64,
    id: uuid::Uuid,
}

/// A ListServers request, checked.
pub struct ServersQuery {
    pub filter: Option<Filter>,
    pub show_decommissioned: bool,
    pub cursor: Option<PageCursor>,
    pub page_size: usize,
    /// The digest a page token of this query carries.
    digest: String,
}

impl ServersQuery {
    /// Checks the page size, the filter and the page token together; a token is good only for
    /// the tenant it was issued to.
    pub fn parse(
        request: &proto::ListServersRequest,
        tenant: TenantId,
        tokens: &PageTokens,
    ) -> Result<ServersQuery, ApiError> {
        let mut violations = Violations::default();
        let page_size = SERVER_PAGES.of(request.page_size, &mut violations);
        let filter = filter::parse(&request.filter).unwrap_or_else(|error| {
            violations.add("filter", error.message);
            None
        });
        violations.into_result().map_err(ApiError::Invalid)?;
        let digest = query_digest(&[
            &tenant.uuid().to_string(),
            &request.show_decommissioned.to_string(),
            &request.filter,
        ]);
        let cursor = decode_cursor(tokens, &request.page_token, &digest)?;
        Ok(ServersQuery {
            filter,
            show_decommissioned: request.show_decommissioned,
            cursor,
            page_size,
            digest,
        })
    }

    /// How much the page may hold: `page_size` servers within [`PAGE_BYTES`] as the response
    /// encodes them.
    pub fn bound(&self) -> PageBound<Server> {
        PageBound {
            rows: self.page_size,
            bytes: PAGE_BYTES,
            size: |server| item_bytes(&server_to_proto(server)),
        }
    }

    /// The token of the page after `last`, when there is one.
    pub fn next_page_token(
        &self,
        tokens: &PageTokens,
        more: bool,
        last: Option<&Server>,
    ) -> String {
        match (more, last) {
            (true, Some(last)) => {
                let cursor = ServersCursor {
                    created_at_micros: last.created_at.timestamp_micros(),
                    id: last.id.uuid(),
                };
                tokens.encode(cursor, &self.digest)
            }
            _ => String::new(),
        }
    }
}

fn decode_cursor(
    tokens: &PageTokens,
    token: &str,
    digest: &str,
) -> Result<Option<PageCursor>, ApiError> {
    let Some(cursor) = tokens.decode::<ServersCursor>(
        token,
        digest,
        "a different filter or show_decommissioned, or another tenant",
    )?
    else {
        return Ok(None);
    };
    // Only a time a server can have been created at: anything else (PostgreSQL would refuse a
    // year beyond its range) is a token this service did not issue.
    let created_at = DateTime::<Utc>::from_timestamp_micros(cursor.created_at_micros)
        .filter(|time| (2000..=9999).contains(&time.year()))
        .ok_or_else(not_issued)?;
    Ok(Some(PageCursor {
        created_at,
        id: cursor.id,
    }))
}
