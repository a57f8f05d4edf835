//! ListAuditEvents: the caller's tenant's audit events, newest first, a keyset page at a time,
//! bounded in bytes as well as events; the tenant is the key's, never the request's. The auth
//! layer has already required `audit:read`.

use chrono::{DateTime, Datelike, Utc};
use tonic::Request;

use super::{
    convert::audit_event_to_proto,
    errors::ApiError,
    paging::{PAGE_BYTES, PageSizes, item_bytes, not_issued, query_digest},
    service::{ServersApi, principal},
};
use crate::{
    domain::{
        Violations,
        audit::{AuditEvent, AuditFilter},
    },
    proto,
    store::{AuditCursor, PageBound},
};

const AUDIT_PAGES: PageSizes = PageSizes {
    default: 100,
    max: 1000,
};

/// Where a page starts, as its token carries it.
#[derive(serde::Serialize, serde::Deserialize)]
struct EventsCursor {
    time_micros: i64,
    id: uuid::Uuid,
}

impl ServersApi {
    /// One page of the tenant's audit events.
    pub(super) async fn audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<proto::ListAuditEventsResponse, ApiError> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let page_size = AUDIT_PAGES.of(request.page_size, &mut violations);
        let filter = AuditFilter::parse(&request.filter).unwrap_or_else(|problem| {
            violations.add("filter", problem);
            AuditFilter::default()
        });
        violations.into_result().map_err(ApiError::Invalid)?;
        let tenant = principal.tenant_id;
        let digest = query_digest(&["audit-events", &tenant.uuid().to_string(), &request.filter]);
        let cursor = self.decode_cursor(&request.page_token, &digest)?;
        let bound = PageBound {
            rows: page_size,
            bytes: PAGE_BYTES,
            size: |event: &AuditEvent| item_bytes(&audit_event_to_proto(event)),
        };
        let (events, more) = self
            .store()
            .list_audit_events(tenant, &filter, cursor, &bound)
            .await?;
        let next_page_token = match (more, events.last()) {
            (true, Some(last)) => self.tokens().encode(
                EventsCursor {
                    time_micros: last.time.timestamp_micros(),
                    id: last.id,
                },
                &digest,
            ),
            _ => String::new(),
        };
        Ok(proto::ListAuditEventsResponse {
            audit_events: events.iter().map(audit_event_to_proto).collect(),
            next_page_token,
        })
    }

    fn decode_cursor(&self, token: &str, digest: &str) -> Result<Option<AuditCursor>, ApiError> {
        let Some(cursor) = self.tokens().decode::<EventsCursor>(
            token,
            digest,
            "a different filter, or another tenant",
        )?
        else {
            return Ok(None);
        };
        // Only a time an event can have: anything else is a token this service did not issue.
        let time = DateTime::<Utc>::from_timestamp_micros(cursor.time_micros)
            .filter(|time| (2000..=9999).contains(&time.year()))
            .ok_or_else(not_issued)?;
        Ok(Some(AuditCursor {
            time,
            id: cursor.id,
        }))
    }
}
