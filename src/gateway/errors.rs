//! Errors over HTTP: every failure becomes a `google.rpc.Status` JSON body (`code`, `message`,
//! `details` with `@type`) with the HTTP status of grpc-gateway's table (api.md §5). Errors of the
//! gRPC stack keep their code, message and details as they are; errors of the translation itself
//! (no route, wrong method, unreadable body) are built here with an ErrorInfo like every other.

use std::collections::HashMap;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use http::Method;
use prost_reflect::DynamicMessage;
use serde_json::{Value as Json, json};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{
    descriptors::Descriptors,
    json::{OutputError, message_to_json},
};
use crate::{
    domain::Violations,
    grpc::errors::{ERROR_DOMAIN, invalid_argument, retry_after_seconds},
};

/// The request body limit.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a request body may take to arrive in full (a slow sender holds a connection).
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a REST request failed.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("no route for {method} {path}")]
    RouteNotFound { method: Method, path: String },
    #[error("{method} is not allowed on {path}; use {}", join_methods(.allowed))]
    MethodNotAllowed {
        method: Method,
        path: String,
        allowed: Vec<Method>,
    },
    #[error("content type {0:?} is not supported; send application/json")]
    UnsupportedMediaType(String),
    #[error("the request body is larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("the request body is not valid: {0}")]
    MalformedBody(String),
    #[error("the request body did not arrive within {} s", BODY_READ_TIMEOUT.as_secs())]
    BodyTimeout,
    #[error("{0}")]
    Invalid(Violations),
    /// The gRPC stack answered with this status.
    #[error("{}", .0.message())]
    Rpc(Status),
    /// A response that could not be translated; the cause is logged, not sent.
    #[error(transparent)]
    Output(#[from] OutputError),
}

fn join_methods(methods: &[Method]) -> String {
    methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn status_with_reason(code: Code, reason: &str, message: String) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

impl RestError {
    /// The gRPC code and ErrorInfo reason this error is reported with (for the audit log's
    /// record of a request that could not be translated).
    pub fn code_and_reason(&self) -> (Code, String) {
        let (code, reason) = match self {
            RestError::RouteNotFound { .. } => (Code::NotFound, "ROUTE_NOT_FOUND"),
            RestError::MethodNotAllowed { .. } => (Code::Unimplemented, "METHOD_NOT_ALLOWED"),
            RestError::UnsupportedMediaType(_) => (Code::InvalidArgument, "UNSUPPORTED_MEDIA_TYPE"),
            RestError::BodyTooLarge => (Code::InvalidArgument, "REQUEST_BODY_TOO_LARGE"),
            RestError::MalformedBody(_) => (Code::InvalidArgument, "MALFORMED_BODY"),
            RestError::BodyTimeout => (Code::DeadlineExceeded, "REQUEST_BODY_TIMEOUT"),
            RestError::Invalid(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            RestError::Rpc(status) => {
                let reason = status
                    .get_details_error_info()
                    .map(|info| info.reason)
                    .unwrap_or_default();
                return (status.code(), reason);
            }
            RestError::Output(_) => (Code::Internal, "INTERNAL"),
        };
        (code, reason.to_owned())
    }

    /// The HTTP status and the gRPC Status this error is reported as.
    fn into_parts(self) -> (StatusCode, Status) {
        let message = self.to_string();
        match self {
            RestError::RouteNotFound { .. } => (
                StatusCode::NOT_FOUND,
                status_with_reason(Code::NotFound, "ROUTE_NOT_FOUND", message),
            ),
            RestError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                status_with_reason(Code::Unimplemented, "METHOD_NOT_ALLOWED", message),
            ),
            RestError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                status_with_reason(Code::InvalidArgument, "UNSUPPORTED_MEDIA_TYPE", message),
            ),
            RestError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                status_with_reason(Code::InvalidArgument, "REQUEST_BODY_TOO_LARGE", message),
            ),
            RestError::MalformedBody(_) => (
                StatusCode::BAD_REQUEST,
                status_with_reason(Code::InvalidArgument, "MALFORMED_BODY", message),
            ),
            RestError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                status_with_reason(Code::DeadlineExceeded, "REQUEST_BODY_TIMEOUT", message),
            ),
            RestError::Invalid(violations) => {
                (StatusCode::BAD_REQUEST, invalid_argument(&violations))
            }
            RestError::Rpc(status) => (http_status(status.code()), status),
            RestError::Output(error) => {
                tracing::error!(%error, "response translation failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    status_with_reason(
                        Code::Internal,
                        "INTERNAL",
                        "internal error; it has been logged with the request id".into(),
                    ),
                )
            }
        }
    }

    /// The Status this error is reported as, e.g. as the last message of a stream.
    pub fn into_status(self) -> Status {
        self.into_parts().1
    }

    /// The HTTP response: the Status as JSON, `Allow` with 405, `WWW-Authenticate` with 401.
    pub fn into_http(self, descriptors: &Descriptors) -> Response {
        let allowed = match &self {
            RestError::MethodNotAllowed { allowed, .. } => Some(join_methods(allowed)),
            _ => None,
        };
        let (http_status, status) = self.into_parts();
        let mut response = (
            http_status,
            axum::Json(status_to_json(descriptors, &status)),
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(allowed) = allowed.and_then(|allowed| HeaderValue::from_str(&allowed).ok()) {
            headers.insert(header::ALLOW, allowed);
        }
        if http_status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let retry_delay = status
            .get_details_retry_info()
            .and_then(|retry| retry.retry_delay);
        if let Some(delay) = retry_delay
            && let Ok(value) = HeaderValue::from_str(&retry_after_seconds(delay))
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// grpc-gateway's table from gRPC codes to HTTP statuses (api.md §5).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request, as nginx and grpc-gateway write it.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A Status as `google.rpc.Status` JSON, its details decoded from `grpc-status-details-bin` with
/// the same rules as every other message (proto names, every field present).
pub fn status_to_json(descriptors: &Descriptors, status: &Status) -> Json {
    let fallback = || {
        json!({
            "code": status.code() as i32,
            "message": status.message(),
            "details": [],
        })
    };
    if status.details().is_empty() {
        return fallback();
    }
    // The details bytes are a whole google.rpc.Status; code and message are taken from the
    // Status itself, which tonic read from grpc-status and grpc-message.
    let decoded = descriptors
        .pool
        .get_message_by_name("google.rpc.Status")
        .and_then(|descriptor| DynamicMessage::decode(descriptor, status.details()).ok())
        .and_then(|message| message_to_json(descriptors, &message).ok());
    match decoded {
        Some(Json::Object(mut object)) => {
            object.insert("code".into(), Json::from(status.code() as i32));
            object.insert("message".into(), Json::String(status.message().to_owned()));
            Json::Object(object)
        }
        _ => {
            tracing::warn!(code = ?status.code(), "undecodable grpc-status-details-bin");
            fallback()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_become_typed_json() {
        let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut violations = Violations::default();
        violations.add("server.name", "is required");
        let json = status_to_json(&descriptors, &invalid_argument(&violations));
        assert_eq!(json["code"], 3);
        let details = json["details"].as_array().unwrap();
        let types: Vec<&str> = details
            .iter()
            .map(|detail| detail["@type"].as_str().unwrap())
            .collect();
        assert!(types.contains(&"type.googleapis.com/google.rpc.ErrorInfo"));
        assert!(types.contains(&"type.googleapis.com/google.rpc.BadRequest"));
        let bad_request = details
            .iter()
            .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.BadRequest")
            .unwrap();
        assert_eq!(bad_request["field_violations"][0]["field"], "server.name");
        let error_info = details
            .iter()
            .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
            .unwrap();
        assert_eq!(error_info["domain"], ERROR_DOMAIN);
        assert_eq!(error_info["reason"], "INVALID_ARGUMENT");
    }

    #[test]
    fn statuses_without_details_still_have_the_shape() {
        let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let status = Status::unavailable("down");
        assert_eq!(
            status_to_json(&descriptors, &status),
            json!({"code": 14, "message": "down", "details": []})
        );
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(http_status(Code::Aborted), StatusCode::CONFLICT);
    }

    #[test]
    fn a_panicked_call_is_a_500_whose_error_info_names_the_request_id() {
        let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let panicked = crate::grpc::errors::panicked("a bug", "req-7");
        let (http_status, status) = RestError::Rpc(panicked).into_parts();
        assert_eq!(http_status, StatusCode::INTERNAL_SERVER_ERROR);
        let json = status_to_json(&descriptors, &status);
        assert_eq!(json["code"], 13);
        let error_info = &json["details"][0];
        assert_eq!(
            error_info["@type"],
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        assert_eq!(error_info["reason"], "INTERNAL");
        assert_eq!(error_info["metadata"]["request_id"], "req-7");
    }
}
