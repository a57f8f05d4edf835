//! ListChangeEvents: the server's captured row changes, oldest first, a keyset page at a time.
//! The server must be the caller's (NOT_FOUND otherwise); the auth layer has already required
//! `changes:read`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use tonic::Request;

use super::{
    convert::change_event_to_proto,
    errors::ApiError,
    service::{ServersApi, invalid_page_token, parse_server_id, principal},
};
use crate::{
    domain::{Violations, change::ChangeFilter},
    proto,
};

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// What a page token holds: the last sequence returned and the filter it belongs to.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChangePageToken {
    after: i64,
    query: String,
}

fn query_digest(server_id: &str, filter: &str) -> String {
    hex::encode(&Sha256::digest(format!("{server_id}\n{filter}"))[..8])
}

fn decode_token(token: &str, query: &str) -> Result<i64, ApiError> {
    if token.is_empty() {
        return Ok(0);
    }
    let invalid = || invalid_page_token("is not a token this service issued");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let token: ChangePageToken = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if token.query != query {
        return Err(invalid_page_token(
            "belongs to a different server or filter; start from the first page",
        ));
    }
    if token.after < 0 {
        return Err(invalid());
    }
    Ok(token.after)
}

fn encode_token(after: i64, query: &str) -> String {
    let token = ChangePageToken {
        after,
        query: query.to_owned(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn page_size(requested: i32, violations: &mut Violations) -> usize {
    match requested {
        size if size < 0 => {
            violations.add(
                "page_size",
                format!("{size} is negative; use 0 for the default of {DEFAULT_PAGE_SIZE}"),
            );
            DEFAULT_PAGE_SIZE
        }
        0 => DEFAULT_PAGE_SIZE,
        size => (size as usize).min(MAX_PAGE_SIZE),
    }
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
        let page_size = page_size(request.page_size, &mut violations);
        let filter = ChangeFilter::parse(&request.filter).unwrap_or_else(|error| {
            violations.add("filter", error.0);
            ChangeFilter::default()
        });
        violations.into_result().map_err(ApiError::Invalid)?;
        let query = query_digest(&request.server_id, &request.filter);
        let after = decode_token(&request.page_token, &query)?;
        // The server must be the caller's: another tenant's is NOT_FOUND.
        self.store().get_server(principal.tenant_id, id).await?;
        let page = self
            .index()
            .list_change_events(id, &filter, after, page_size)
            .await?;
        let next_page_token = match (page.more, page.events.last()) {
            (true, Some(last)) => encode_token(last.sequence, &query),
            _ => String::new(),
        };
        Ok(proto::ListChangeEventsResponse {
            events: page.events.iter().map(change_event_to_proto).collect(),
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_query() {
        let query = query_digest("s", "table = a");
        let token = encode_token(42, &query);
        assert_eq!(decode_token(&token, &query).unwrap(), 42);
        assert!(decode_token(&token, &query_digest("s", "")).is_err());
        assert!(decode_token("garbage!", &query).is_err());
        assert_eq!(decode_token("", &query).unwrap(), 0);
    }
}
