//! GetRowHistory: every captured version of one row, by primary key, oldest first, each with the
//! change that made it; with `as_of`, what the row was then. The captured changes tell the row
//! at a time only from the start of the capture on: before it, or for a row no change of which
//! was captured, the answer says it is not known. The auth layer has already required
//! `changes:read`.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use tonic::Request;

use super::{
    convert::{change_event_to_proto, json_struct, timestamp},
    errors::ApiError,
    service::{ServersApi, parse_server_id, principal},
};
use crate::{
    domain::{
        ChangeOperation, Violations,
        change::{ChangeEvent, MAX_ROW_KEY_LENGTH as MAX_KEY_LENGTH},
    },
    proto,
};

/// Most versions one answer lists (the oldest).
pub const MAX_VERSIONS: usize = 1000;
/// Longest schema or table name accepted, in characters (MySQL's limit is 64).
const MAX_NAME_LENGTH: usize = 64;

/// A name of the path, checked.
fn name(value: &str, field: &str, violations: &mut Violations) {
    if value.is_empty() {
        violations.add(field, "is required");
    } else if value.chars().count() > MAX_NAME_LENGTH {
        violations.add(
            field,
            format!("is longer than MySQL's {MAX_NAME_LENGTH} characters"),
        );
    }
}

/// The key: a JSON object of the primary-key columns.
fn key(text: &str, violations: &mut Violations) -> Json {
    let problem = if text.is_empty() {
        "is required: the row's primary key as a JSON object, e.g. {\"id\":5}".to_owned()
    } else if text.chars().count() > MAX_KEY_LENGTH {
        format!("is longer than {MAX_KEY_LENGTH} characters")
    } else {
        match serde_json::from_str::<Json>(text) {
            Ok(Json::Object(object)) if !object.is_empty() => return Json::Object(object),
            Ok(_) => "must be a JSON object of the primary-key columns, e.g. {\"id\":5}".to_owned(),
            Err(error) => format!("is not JSON: {error}"),
        }
    };
    violations.add("key", problem);
    Json::Null
}

/// `as_of` as a time, when it is a valid Timestamp.
fn as_of(
    value: Option<&prost_types::Timestamp>,
    violations: &mut Violations,
) -> Option<DateTime<Utc>> {
    let value = value?;
    let time = u32::try_from(value.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos));
    if time.is_none() {
        violations.add("as_of", "is not a valid time");
    }
    time
}

/// The row as a change left it: its after image (none after a delete).
fn row_after(event: &ChangeEvent) -> Option<Json> {
    match event.change.operation {
        ChangeOperation::Delete => None,
        _ => event.change.after.clone(),
    }
}

/// The row at `at`, from its versions (oldest first), when the capture began at `started`.
fn state_at(
    versions: &[ChangeEvent],
    truncated: bool,
    at: DateTime<Utc>,
    started: Option<DateTime<Utc>>,
) -> proto::RowState {
    let mut state = proto::RowState {
        as_of: Some(timestamp(at)),
        ..Default::default()
    };
    let last_before = versions
        .iter()
        .rev()
        .find(|event| event.change.committed_at <= at);
    if let Some(event) = last_before {
        let is_last_listed = versions.last().map(|last| last.sequence) == Some(event.sequence);
        if truncated && is_last_listed {
            state.message = format!(
                "the row has more than {MAX_VERSIONS} captured versions and the time is after \
                 the last one listed; ask with an earlier as_of"
            );
        } else {
            left_by(&mut state, event);
        }
    } else if started.is_none_or(|started| started > at) {
        state.message = "not captured: the time is before the capture of this server's changes \
                         began, and no change of the row was captured before it"
            .to_owned();
    } else if let Some(first) = versions.first() {
        before_first(&mut state, first);
    } else {
        state.message = "not captured: no change of this row was captured; a row unchanged \
                         since onboarding has no image"
            .to_owned();
    }
    state
}

/// The row as the change `event` left it.
fn left_by(state: &mut proto::RowState, event: &ChangeEvent) {
    let after = row_after(event);
    state.captured = true;
    state.exists = after.is_some();
    state.row = json_struct(&after);
    state.event_id = event.change.event_id();
    state.message = format!(
        "as change {} ({}) left it",
        event.change.event_id(),
        event.change.operation.as_str()
    );
}

/// The row before its first captured change `first`: absent before an insert, else the
/// change's before image.
fn before_first(state: &mut proto::RowState, first: &ChangeEvent) {
    state.captured = true;
    state.event_id = first.change.event_id();
    if first.change.operation == ChangeOperation::Insert {
        state.exists = false;
        state.message = format!(
            "the row did not exist yet: change {} inserted it later",
            first.change.event_id()
        );
    } else {
        state.exists = true;
        state.row = json_struct(&first.change.before);
        state.message = format!(
            "unchanged until change {}: its before image",
            first.change.event_id()
        );
    }
}

impl ServersApi {
    /// The captured versions of the row the request names, and its state at `as_of`.
    pub(super) async fn row_history(
        &self,
        request: Request<proto::GetRowHistoryRequest>,
    ) -> Result<proto::GetRowHistoryResponse, ApiError> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let id = parse_server_id(&request.server_id, "server_id")?;
        let mut violations = Violations::default();
        name(&request.schema, "schema", &mut violations);
        name(&request.table, "table", &mut violations);
        let key = key(&request.key, &mut violations);
        let at = as_of(request.as_of.as_ref(), &mut violations);
        violations.into_result().map_err(ApiError::Invalid)?;
        self.store().get_server(principal.tenant_id, id).await?;
        let (versions, truncated) = self
            .index(id)
            .await?
            .row_history(id, (&request.schema, &request.table), &key, MAX_VERSIONS)
            .await?;
        let state = match at {
            Some(at) => {
                let started = self.store().capture_started(id).await?;
                Some(state_at(&versions, truncated, at, started))
            }
            None => None,
        };
        Ok(proto::GetRowHistoryResponse {
            versions: versions
                .iter()
                .map(|event| proto::RowVersion {
                    event: Some(change_event_to_proto(event)),
                    row: json_struct(&row_after(event)),
                })
                .collect(),
            state,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::change::RowChange;
    use serde_json::json;

    fn event(sequence: i64, seconds: i64, operation: ChangeOperation) -> ChangeEvent {
        let image = |n: i64| Some(json!({"id": 1, "n": n}));
        ChangeEvent {
            sequence,
            change: RowChange {
                binlog_file: "f".into(),
                binlog_position: sequence,
                row_index: 0,
                gtid: String::new(),
                committed_at: DateTime::from_timestamp(seconds, 0).unwrap(),
                schema: "s".into(),
                table: "t".into(),
                operation,
                primary_key: Some(json!({"id": 1})),
                before: (operation != ChangeOperation::Insert)
                    .then(|| image(sequence - 1))
                    .flatten(),
                after: (operation != ChangeOperation::Delete)
                    .then(|| image(sequence))
                    .flatten(),
            },
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap()
    }

    #[test]
    fn the_row_at_a_time_is_the_last_version_before_it_or_the_before_image_after_it() {
        let versions = [
            event(2, 100, ChangeOperation::Update),
            event(3, 200, ChangeOperation::Delete),
        ];
        let started = Some(at(50));
        let state = state_at(&versions, false, at(150), started);
        assert!(state.captured && state.exists);
        assert_eq!(state.event_id, "f:2:0");
        assert_eq!(state.row, json_struct(&Some(json!({"id": 1, "n": 2}))));
        let state = state_at(&versions, false, at(250), started);
        assert!(state.captured && !state.exists);
        let state = state_at(&versions, false, at(60), started);
        assert!(state.captured && state.exists);
        assert_eq!(state.row, json_struct(&Some(json!({"id": 1, "n": 1}))));
        // Before the capture began, or for a row never changed since: not known.
        assert!(!state_at(&versions, false, at(10), started).captured);
        assert!(!state_at(&[], false, at(60), started).captured);
        let inserted = [event(4, 100, ChangeOperation::Insert)];
        let state = state_at(&inserted, false, at(60), started);
        assert!(state.captured && !state.exists);
    }

    #[test]
    fn keys_must_be_json_objects() {
        let mut violations = Violations::default();
        assert_eq!(key(r#"{"id":5}"#, &mut violations), json!({"id": 5}));
        for bad in ["", "5", "{}", "{", "[1]"] {
            let mut violations = Violations::default();
            key(bad, &mut violations);
            assert_eq!(violations.0.len(), 1, "{bad:?}");
        }
    }
}
