//! The audit log (issue 28 part 1), against the service and PostgreSQL through its clients:
//! `recording` (every call that changes something is in ListAuditEvents once, with the calling
//! key, the fields it changed and its outcome; no secret in any record; refused calls recorded,
//! unauthenticated ones only counted), `reading` (a tenant sees only its own records; REST with a
//! filter and pages), `keeping` (the database refuses to update or delete a record; retention
//! drops whole old partitions only; the command line's key and tenant changes; `--trusted-proxies`
//! decides the recorded client address).

mod keeping;
mod reading;
mod recording;

use crate::common::*;
use dbtrail_servers::proto::{AuditEvent as Event, ListAuditEventsRequest};
use serde_json::{Value, json};

/// Every audit event of the client's tenant matching `filter`, newest first, page after page.
pub async fn audit_events(client: &mut Client, filter: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_audit_events(ListAuditEventsRequest {
                page_size: 3,
                page_token,
                filter: filter.to_owned(),
            })
            .await
            .expect("ListAuditEvents")
            .into_inner();
        events.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

/// `message` sent with the request id `id`.
pub fn with_request_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("an ASCII request id"));
    request
}

/// The one event of the call with request id `id` (a call is recorded exactly once).
pub fn the_event<'a>(events: &'a [Event], id: &str) -> &'a Event {
    let found: Vec<&Event> = events.iter().filter(|e| e.request_id == id).collect();
    assert_eq!(found.len(), 1, "the events of request {id}: {found:#?}");
    found[0]
}

/// A protobuf Value as JSON (null for none).
pub fn json_of(value: &Option<prost_types::Value>) -> Value {
    use prost_types::value::Kind;
    match value.as_ref().and_then(|value| value.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(value)) => json!(value),
        Some(Kind::NumberValue(value)) => json!(value),
        Some(Kind::StringValue(value)) => json!(value),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .iter()
                .map(|value| json_of(&Some(value.clone())))
                .collect(),
        ),
        Some(Kind::StructValue(_)) => panic!("no field change is an object"),
    }
}

/// The change of `field` an event lists: (old, new, secret).
pub fn change(event: &Event, field: &str) -> (Value, Value, String) {
    let change = event
        .changes
        .iter()
        .find(|change| change.field == field)
        .unwrap_or_else(|| panic!("{} has no change of {field}: {event:#?}", event.method));
    (
        json_of(&change.old_value),
        json_of(&change.new_value),
        change.secret.clone(),
    )
}

/// Asserts who made the call and how it ended.
#[track_caller]
pub fn assert_call(event: &Event, key: &dbtrail_servers::auth::admin::CreatedKey, method: &str) {
    assert_eq!(event.key_id, key.id.to_string(), "{event:#?}");
    assert_eq!(event.method, method, "{event:#?}");
    assert!(event.time.is_some(), "{event:#?}");
    assert_eq!(event.client_address, "127.0.0.1", "{event:#?}");
}

/// Every record as PostgreSQL writes it, one line each, by id.
pub async fn stored_records(db: &TestDatabase) -> Vec<(String, String)> {
    db.connect()
        .await
        .query(
            "SELECT id::text, audit_events::text FROM audit_events ORDER BY id",
            &[],
        )
        .await
        .expect("the audit records")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// The text of `value` percent-encoded for a query string.
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
