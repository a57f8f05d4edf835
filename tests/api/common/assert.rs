//! Waiting for conditions, and assertions on `google.rpc` error details.

use super::*;

// ------------------------------------------------------------------------------------------------
// Waiting
// ------------------------------------------------------------------------------------------------

/// Polls `probe` every 50 ms until it returns `Some`, and returns that; panics naming `what` and
/// the last value seen (from `describe`) when `timeout` passes first.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `condition` every 50 ms until it holds; panics naming `what` when `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = condition();
        async move { fut.await.then_some(()) }
    })
    .await
}

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// Polls ListServers with `client` until it fails (its key was revoked); panics when `timeout`
/// passes first.
pub async fn wait_until_refused(client: &Client, timeout: Duration) {
    wait_until("the revoked key to be refused", timeout, || {
        let mut client = client.clone();
        async move {
            client
                .list_servers(proto::ListServersRequest::default())
                .await
                .is_err()
        }
    })
    .await;
}

/// Asserts that `status` has `code` and an ErrorInfo with `reason` in the service's domain.
#[track_caller]
pub fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(
        status.code(),
        code,
        "expected {code:?}/{reason}, got {:?}: {:?} ({:?})",
        status.code(),
        status.message(),
        status.get_details_error_info()
    );
    let info = status.get_details_error_info().unwrap_or_else(|| {
        panic!(
            "expected an ErrorInfo with reason {reason}, got none: {:?} {:?}",
            status.code(),
            status.message()
        )
    });
    assert_eq!(
        info.reason,
        reason,
        "wrong ErrorInfo reason for {:?}: {:?}",
        status.code(),
        status.message()
    );
    assert_eq!(info.domain, ERROR_DOMAIN, "wrong ErrorInfo domain");
    assert!(
        !status.message().is_empty(),
        "the error has no message a person could act on"
    );
}

/// Unwraps the error of `result`, panicking with the success value if it succeeded.
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(result: Result<T, Status>) -> Status {
    match result {
        Ok(value) => panic!("expected an error, got success: {value:?}"),
        Err(status) => status,
    }
}

/// The field paths of the BadRequest detail of `status`, sorted.
#[track_caller]
pub fn bad_request_fields(status: &Status) -> Vec<String> {
    let bad_request = status.get_details_bad_request().unwrap_or_else(|| {
        panic!(
            "expected a BadRequest detail: {:?} {:?}",
            status.code(),
            status.message()
        )
    });
    let mut fields: Vec<String> = bad_request
        .field_violations
        .iter()
        .map(|violation| {
            assert!(
                !violation.description.is_empty(),
                "field violation of {} has no description",
                violation.field
            );
            violation.field.clone()
        })
        .collect();
    fields.sort();
    fields
}

/// Asserts INVALID_ARGUMENT / INVALID_ARGUMENT with a BadRequest naming exactly `expected`
/// (each expected path matches a violation of that field or of a field inside it, such as
/// `server.stream_options.tables[0]` for `server.stream_options.tables`).
#[track_caller]
pub fn assert_bad_request(status: &Status, expected: &[&str]) {
    assert_error(status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let fields = bad_request_fields(status);
    let matches = |field: &str, path: &str| {
        field == path
            || field.starts_with(&format!("{path}."))
            || field.starts_with(&format!("{path}["))
    };
    for path in expected {
        assert!(
            fields.iter().any(|field| matches(field, path)),
            "BadRequest lacks a violation of {path}: it lists {fields:?} ({:?})",
            status.message()
        );
    }
    for field in &fields {
        assert!(
            expected.iter().any(|path| matches(field, path)),
            "BadRequest lists {field}, which is not bad; expected only {expected:?}: {fields:?}"
        );
    }
}

/// The `since_revision` a watch's OUT_OF_RANGE / REVISION_COMPACTED (or WATCH_LAGGED) says to
/// resume from, from its ErrorInfo.
pub fn resume_from(status: &Status) -> Option<i64> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()?
        .metadata
        .get("since_revision")?
        .parse()
        .ok()
}
