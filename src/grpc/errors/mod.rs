//! The one table from the service's errors to gRPC Status: a code, a stable ErrorInfo reason
//! in domain `servers.dbtrail`, and a message a person can act on. Causes go to the log only.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    auth::AuthError,
    domain::{Refused, Violations, server::Rejection},
    source::undo::UndoError,
    store::{StoreError, WriteError},
    watch::WatchError,
};

/// The ErrorInfo domain of every error.
pub const ERROR_DOMAIN: &str = "servers.dbtrail";

/// Why a ServersService call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(Violations),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A limit of the handler's own (the checks' rate per tenant).
    #[error(transparent)]
    Limited(#[from] Refusal),
    /// Captured changes that an undo script cannot undo (RevertChanges).
    #[error(transparent)]
    Undo(#[from] UndoError),
}

impl ApiError {
    /// A request with one bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> ApiError {
        ApiError::Invalid(Violations::one(field, description))
    }
}

impl From<Violations> for ApiError {
    fn from(violations: Violations) -> ApiError {
        ApiError::Invalid(violations)
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        ApiError::Refused(Refused::Rejected(rejection))
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> ApiError {
        match error {
            WriteError::Refused(refused) => ApiError::Refused(refused),
            WriteError::Store(error) => ApiError::Store(error),
        }
    }
}

/// A Status with an ErrorInfo detail (and any further details).
fn status(code: Code, reason: &str, message: String, details: ErrorDetails) -> Status {
    status_with_metadata(code, reason, message, details, HashMap::new())
}

fn status_with_metadata(
    code: Code,
    reason: &str,
    message: String,
    mut details: ErrorDetails,
    metadata: HashMap<String, String>,
) -> Status {
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

fn precondition(reason: &str, subject: &str, message: String) -> Status {
    let details =
        ErrorDetails::with_precondition_failure_violation(reason, subject, message.clone());
    status(Code::FailedPrecondition, reason, message, details)
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Status {
        let message = error.to_string();
        let none = ErrorDetails::new();
        match error {
            AuthError::MissingCredentials => {
                status(Code::Unauthenticated, "MISSING_CREDENTIALS", message, none)
            }
            AuthError::InvalidKey => {
                status(Code::Unauthenticated, "INVALID_API_KEY", message, none)
            }
            AuthError::DuplicateCredentials => status(
                Code::Unauthenticated,
                "DUPLICATE_CREDENTIALS",
                message,
                none,
            ),
            AuthError::Revoked => status(Code::Unauthenticated, "API_KEY_REVOKED", message, none),
            AuthError::Expired => status(Code::Unauthenticated, "API_KEY_EXPIRED", message, none),
            AuthError::MissingPermission(permission) => status_with_metadata(
                Code::PermissionDenied,
                "MISSING_PERMISSION",
                message,
                none,
                HashMap::from([("permission".to_owned(), permission.as_str().to_owned())]),
            ),
            AuthError::Unavailable => status(Code::Unavailable, "STORE_UNAVAILABLE", message, none),
            AuthError::UnknownMethod => {
                status(Code::Unimplemented, "UNKNOWN_METHOD", message, none)
            }
            AuthError::TooManyFailures { retry_after } => retry_later(
                "TOO_MANY_FAILED_AUTHENTICATIONS",
                message,
                retry_after,
                "client address",
            ),
        }
    }
}

/// Why admission control turned a call away before it ran.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("the {scope}'s rate limit is reached; retry in {} s", retry_after.as_secs().max(1))]
    RateLimited {
        scope: &'static str,
        retry_after: std::time::Duration,
    },
    #[error(
        "this replica is at its limit of calls in flight; retry shortly, or on another replica"
    )]
    Overloaded,
    #[error("the {scope}'s limit of {limit} open watches is reached; close one first")]
    TooManyWatches { scope: &'static str, limit: usize },
    #[error("the call did not finish within its deadline of {} ms", deadline.as_millis())]
    DeadlineExceeded { deadline: std::time::Duration },
    #[error(
        "the tenant's rate of preflight checks (CheckServer, RegisterServer with validate_only; \
         --check-rate-limit) is reached: they connect to the server; retry in {} s",
        retry_after.as_secs().max(1)
    )]
    ChecksRateLimited { retry_after: std::time::Duration },
}

/// RESOURCE_EXHAUSTED with a RetryInfo and a retry-after header.
fn retry_later(
    reason: &str,
    message: String,
    retry_after: std::time::Duration,
    scope: &str,
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(retry_after));
    let metadata = HashMap::from([("scope".to_owned(), scope.to_owned())]);
    let mut status =
        status_with_metadata(Code::ResourceExhausted, reason, message, details, metadata);
    if let Ok(seconds) = retry_after_seconds(retry_after).parse() {
        status.metadata_mut().insert("retry-after", seconds);
    }
    status
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Status {
        let message = refusal.to_string();
        match refusal {
            Refusal::RateLimited { scope, retry_after } => {
                retry_later("RATE_LIMITED", message, retry_after, scope)
            }
            Refusal::ChecksRateLimited { retry_after } => {
                retry_later("RATE_LIMITED", message, retry_after, "tenant checks")
            }
            Refusal::Overloaded => retry_later(
                "OVERLOADED",
                message,
                std::time::Duration::from_secs(1),
                "replica",
            ),
            Refusal::TooManyWatches { scope, .. } => retry_later(
                "TOO_MANY_WATCHES",
                message,
                std::time::Duration::from_secs(1),
                scope,
            ),
            Refusal::DeadlineExceeded { .. } => status(
                Code::DeadlineExceeded,
                "DEADLINE_EXCEEDED",
                message,
                ErrorDetails::new(),
            ),
        }
    }
}

/// A retry delay in whole seconds, as HTTP's Retry-After counts it (at least 1).
pub fn retry_after_seconds(delay: std::time::Duration) -> String {
    delay.as_secs_f64().ceil().max(1.0).to_string()
}

/// Most violations one error lists; the rest are counted, so that no error grows with the
/// request (a REST body, or gRPC trailers that clients drop past a few KB).
pub const MAX_REPORTED_VIOLATIONS: usize = 20;
/// Longest field path and description reported, in characters.
const MAX_VIOLATION_TEXT: usize = 200;

/// A BadRequest listing the first [`MAX_REPORTED_VIOLATIONS`] violations, the message saying how
/// many more there were (ErrorInfo metadata `omitted_violations` too).
pub fn invalid_argument(violations: &Violations) -> Status {
    let reported = violations.0.iter().take(MAX_REPORTED_VIOLATIONS);
    let omitted = violations.0.len().saturating_sub(MAX_REPORTED_VIOLATIONS);
    let mut details = ErrorDetails::new();
    let mut lines = Vec::new();
    for violation in reported {
        let field = clipped(&violation.field);
        let description = clipped(&violation.description);
        lines.push(format!("{field}: {description}"));
        details.add_bad_request_violation(field, description);
    }
    let mut message = format!("invalid request: {}", lines.join("; "));
    let mut metadata = HashMap::new();
    if omitted > 0 {
        message.push_str(&format!(
            "; and {omitted} more violations (the first {MAX_REPORTED_VIOLATIONS} are listed)"
        ));
        metadata.insert("omitted_violations".to_owned(), omitted.to_string());
    }
    status_with_metadata(
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        message,
        details,
        metadata,
    )
}

/// `text`, cut to [`MAX_VIOLATION_TEXT`] characters with an ellipsis.
fn clipped(text: &str) -> String {
    if text.chars().count() <= MAX_VIOLATION_TEXT {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_VIOLATION_TEXT - 1).collect();
    cut.push('…');
    cut
}

/// A message prost could not decode: INVALID_ARGUMENT naming the field it was reading (prost
/// says where only in its error's text: `Inner.field: Outer.field: what`, innermost first).
pub fn undecodable_message(error: &prost::DecodeError) -> Status {
    let (field, problem) = decode_error_field(&error.to_string());
    invalid_field(&field, format!("cannot be decoded: {problem}"))
}

/// The request's field path and the problem of a prost error text.
fn decode_error_field(text: &str) -> (String, String) {
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(text);
    let mut fields = Vec::new();
    let mut rest = text;
    while let Some((step, after)) = rest.split_once(": ") {
        let Some((message, field)) = step.split_once('.') else {
            break;
        };
        let identifier = |part: &str| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !identifier(message) || !identifier(field) {
            break;
        }
        fields.push(field);
        rest = after;
    }
    fields.reverse();
    let field = if fields.is_empty() {
        "request".to_owned()
    } else {
        fields.join(".")
    };
    (field, rest.to_owned())
}

/// A response whose encoding passes the message limit: the service's fault (a stored row larger
/// than the limits now allow), INTERNAL with the sizes in the ErrorInfo and in the log.
pub fn response_too_large(bytes: usize, limit: usize) -> Status {
    tracing::error!(bytes, limit, "a response passed the message limit");
    status_with_metadata(
        Code::Internal,
        "RESPONSE_TOO_LARGE",
        format!(
            "the response would be {bytes} bytes, over the message limit of {limit}; this is a \
             fault of the service, logged with the request id"
        ),
        ErrorDetails::new(),
        size_metadata(bytes, limit),
    )
}

/// A request message larger than the message limit: RESOURCE_EXHAUSTED, as gRPC's own
/// implementations answer it, with the sizes in the ErrorInfo.
pub fn request_too_large(bytes: usize, limit: usize) -> Status {
    status_with_metadata(
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
        format!(
            "the request message is {bytes} bytes, over the limit of {limit}; send fewer or \
             shorter entries"
        ),
        ErrorDetails::new(),
        size_metadata(bytes, limit),
    )
}

fn size_metadata(bytes: usize, limit: usize) -> HashMap<String, String> {
    HashMap::from([
        ("size_bytes".to_owned(), bytes.to_string()),
        ("limit_bytes".to_owned(), limit.to_string()),
    ])
}

/// Which end of a call tonic refused a message's size on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The server: it decodes requests and encodes responses.
    Server,
    /// A client (the REST gateway's in-process one): it encodes requests and decodes responses.
    Client,
}

/// tonic's own size fault (`OUT_OF_RANGE` "Error, decoded message length too large: found N
/// bytes, the limit is: L bytes", or "encoded"), mapped into the table: a request too large, or
/// a response too large, as `side` tells which; `None` for any other status. tonic says what
/// happened only in the text, so the text is what is read.
pub fn tonic_size_fault(status: &Status, side: Side) -> Option<Status> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    let (decoded, rest) = match status
        .message()
        .strip_prefix("Error, decoded message length too large: found ")
    {
        Some(rest) => (true, rest),
        None => (
            false,
            status
                .message()
                .strip_prefix("Error, encoded message length too large: found ")?,
        ),
    };
    let (bytes, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    let (bytes, limit) = (bytes.parse().ok()?, limit.parse().ok()?);
    let request = decoded == (side == Side::Server);
    Some(if request {
        request_too_large(bytes, limit)
    } else {
        response_too_large(bytes, limit)
    })
}

/// A fault of the service with no better entry in the table: INTERNAL, the cause logged only.
pub fn internal(cause: impl std::fmt::Display) -> Status {
    tracing::error!(%cause, "internal error");
    status(
        Code::Internal,
        "INTERNAL",
        "internal error; it has been logged with the request id".into(),
        ErrorDetails::new(),
    )
}

/// A call whose handler panicked: INTERNAL like any other fault, logged once with what the panic
/// said, and the request id in the ErrorInfo so that the caller can quote it.
pub fn panicked(panic: &str, request_id: &str) -> Status {
    tracing::error!(%panic, request_id, "a handler panicked; the call is answered INTERNAL");
    status_with_metadata(
        Code::Internal,
        "INTERNAL",
        "internal error; it has been logged with the request id".into(),
        ErrorDetails::new(),
        HashMap::from([("request_id".to_owned(), request_id.to_owned())]),
    )
}

/// A single bad field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    invalid_argument(&Violations::one(field, description))
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        match error {
            ApiError::Invalid(violations) => invalid_argument(&violations),
            ApiError::Auth(error) => error.into(),
            ApiError::Refused(refused) => refused_status(refused),
            ApiError::Store(error) => store_status(error),
            ApiError::Limited(refusal) => refusal.into(),
            ApiError::Undo(error) => undo_status(error),
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Status {
        store_status(error)
    }
}

impl From<WriteError> for Status {
    fn from(error: WriteError) -> Status {
        ApiError::from(error).into()
    }
}

impl From<WatchError> for Status {
    fn from(error: WatchError) -> Status {
        let message = error.to_string();
        match error {
            WatchError::Auth(error) => error.into(),
            WatchError::Store(error) => store_status(error),
            WatchError::ShuttingDown => status(
                Code::Unavailable,
                "SHUTTING_DOWN",
                message,
                ErrorDetails::new(),
            ),
            WatchError::Lagged(revision) => status_with_metadata(
                Code::ResourceExhausted,
                "WATCH_LAGGED",
                message,
                ErrorDetails::new(),
                HashMap::from([("since_revision".to_owned(), revision.to_string())]),
            ),
        }
    }
}

/// NOT_FOUND for a resource a call names that does not exist (or is another tenant's).
fn not_found(reason: &str, message: &str) -> Status {
    status(Code::NotFound, reason, message.into(), ErrorDetails::new())
}

/// A server whose events are in an index database this replica was not given.
const INDEX_SHARD_MISSING: &str = "this server's change events are in an index database this \
     replica was not given; the operator must start every replica with all of the deployment's \
     --index-database-url values";

/// UNAVAILABLE: the client may retry (the cause goes to the log, not to the client).
fn unavailable(reason: &str, message: &str) -> Status {
    status(
        Code::Unavailable,
        reason,
        message.into(),
        ErrorDetails::new(),
    )
}

/// The table itself: one arm per store error, each its code, reason and message (what business
/// rules refuse is `refused_status`, below). It is long because the table is, and splitting it
/// would scatter the one place a reader checks.
fn store_status(error: StoreError) -> Status {
    let none = ErrorDetails::new();
    match error {
        StoreError::NotFound => not_found("SERVER_NOT_FOUND", "server not found"),
        StoreError::WebhookNotFound => not_found("WEBHOOK_NOT_FOUND", "webhook not found"),
        StoreError::DeliveryNotFound => not_found(
            "DELIVERY_NOT_FOUND",
            "no delivery of this webhook has that id",
        ),
        StoreError::Unavailable(cause) => {
            tracing::warn!(%cause, "database unavailable");
            unavailable(
                "STORE_UNAVAILABLE",
                "the database is unavailable; retry shortly",
            )
        }
        StoreError::Archive(cause) => {
            tracing::warn!(%cause, "change archive unavailable");
            unavailable(
                "ARCHIVE_UNAVAILABLE",
                "the archive of older change events cannot be read now; retry shortly",
            )
        }
        StoreError::IndexShardMissing(cause) => {
            tracing::error!(%cause, "a server's change index shard is not configured on this replica");
            unavailable("INDEX_SHARD_UNAVAILABLE", INDEX_SHARD_MISSING)
        }
        StoreError::Fenced => status(
            Code::Aborted,
            "CONCURRENT_CHANGE",
            "the server changed concurrently; retry".into(),
            none,
        ),
        StoreError::Compacted(resume_since) => status_with_metadata(
            Code::OutOfRange,
            "REVISION_COMPACTED",
            format!(
                "revisions up to {resume_since} are no longer kept (--history-retention); resume \
                 with since_revision={resume_since}, or watch without it for the current status"
            ),
            none,
            HashMap::from([("since_revision".to_owned(), resume_since.to_string())]),
        ),
        StoreError::Missing(what) => status(
            Code::NotFound,
            "NOT_FOUND",
            format!("{what} not found"),
            none,
        ),
        error @ (StoreError::Corrupt(_) | StoreError::Database(_)) => internal(error),
    }
}

/// The table of what business rules refuse: one arm per refusal, each its code, reason and
/// message.
fn refused_status(refused: Refused) -> Status {
    let none = ErrorDetails::new();
    match refused {
        Refused::NameTaken(name) => status(
            Code::AlreadyExists,
            "SERVER_NAME_TAKEN",
            format!(
                "a server named {name:?} already exists; choose another name or decommission it"
            ),
            none,
        ),
        Refused::LimitReached { limit, count } => status_with_metadata(
            Code::ResourceExhausted,
            "SERVER_LIMIT_REACHED",
            format!("Server limit reached ({count} of {limit})"),
            none,
            HashMap::from([
                ("limit".to_owned(), limit.to_string()),
                ("count".to_owned(), count.to_string()),
            ]),
        ),
        Refused::EtagMismatch => status(
            Code::Aborted,
            "ETAG_MISMATCH",
            "the server changed since it was read (etag mismatch); read it again and retry".into(),
            none,
        ),
        Refused::RequestIdReused => {
            let mut details = ErrorDetails::new();
            details.add_bad_request_violation(
                "request_id",
                "was already used for a different request",
            );
            status(
                Code::InvalidArgument,
                "REQUEST_ID_REUSED",
                "request_id was already used for a different request; use a new id".into(),
                details,
            )
        }
        Refused::Rejected(rejection) => rejection_status(rejection),
        Refused::TenantNameTaken(name) => status(
            Code::AlreadyExists,
            "ALREADY_EXISTS",
            format!("tenant {name:?} already exists"),
            none,
        ),
        Refused::ChecksFailed(failed) => checks_failed(&failed),
        Refused::WebhookLimitReached(limit) => status_with_metadata(
            Code::ResourceExhausted,
            "WEBHOOK_LIMIT_REACHED",
            format!("webhook limit reached ({limit} of {limit}); delete one first"),
            none,
            HashMap::from([("limit".to_owned(), limit.to_string())]),
        ),
    }
}

/// A dry run whose checks failed: FAILED_PRECONDITION, a PreconditionFailure violation per failed
/// check (its type the check's name, its description the message and remedy).
fn checks_failed(failed: &[crate::domain::check::Check]) -> Status {
    let mut details = ErrorDetails::new();
    for check in failed {
        details.add_precondition_failure_violation(check.name, "server", check.sentence());
    }
    let names: Vec<&str> = failed.iter().map(|check| check.name).collect();
    let message = format!(
        "{} preflight check(s) failed ({}); CheckServer lists every check with its remedy",
        failed.len(),
        names.join(", ")
    );
    status(Code::FailedPrecondition, "CHECKS_FAILED", message, details)
}

fn rejection_status(rejection: Rejection) -> Status {
    let message = rejection.to_string();
    match rejection {
        Rejection::Decommissioned => precondition("SERVER_DECOMMISSIONED", "server", message),
        Rejection::NotSshTunnel(_) => precondition("NOT_SSH_TUNNEL", "connection_method", message),
        Rejection::NotAwaitingFirewall(_) => {
            precondition("NOT_AWAITING_FIREWALL", "current_step", message)
        }
        Rejection::OnboardingNotFailed(_) => {
            precondition("ONBOARDING_NOT_FAILED", "server_status", message)
        }
        Rejection::NotStreaming(_) => precondition("NOT_STREAMING", "server_status", message),
        Rejection::StreamPaused => precondition("STREAM_PAUSED", "server_status", message),
        Rejection::RestartPointRefused(reason, _) => precondition(reason, "start", message),
    }
}

/// What an undo script cannot undo: FAILED_PRECONDITION naming the table (or event) and why.
fn undo_status(error: UndoError) -> Status {
    let message = error.to_string();
    match &error {
        UndoError::NoPrimaryKey { table } => precondition(
            "TABLE_WITHOUT_PRIMARY_KEY",
            table,
            format!("{message}; leave it out of the selection (filter on schema and table)"),
        ),
        UndoError::UnknownTable { table, .. } => {
            precondition("TABLE_COLUMNS_UNKNOWN", table, message)
        }
        UndoError::PartialImage { table, .. } => precondition("PARTIAL_ROW_IMAGE", table, message),
        UndoError::Value { table, .. } => precondition("UNREVERTIBLE_VALUE", table, message),
        UndoError::Name { event_id, .. } => precondition("UNREVERTIBLE_VALUE", event_id, message),
        UndoError::TooManyCascaded { table, .. } => {
            precondition("TOO_MANY_CASCADED_ROWS", table, message)
        }
        UndoError::Archived { .. } => precondition("CHANGES_ARCHIVED", "filter", message),
    }
}

#[cfg(test)]
mod tests;
