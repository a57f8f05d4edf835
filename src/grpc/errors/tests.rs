//! The error table's answers: codes, reasons, messages and details.

use super::*;

fn reason(status: &Status) -> String {
    status.get_details_error_info().unwrap().reason
}

#[test]
fn every_status_carries_its_reason_and_domain() {
    let status = Status::from(ApiError::Refused(Refused::LimitReached {
        limit: 5,
        count: 5,
    }));
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "Server limit reached (5 of 5)");
    assert_eq!(reason(&status), "SERVER_LIMIT_REACHED");
    assert_eq!(
        status.get_details_error_info().unwrap().domain,
        ERROR_DOMAIN
    );

    let status = Status::from(AuthError::MissingPermission(
        crate::domain::Permission::Delete,
    ));
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("servers:delete"));
}

#[test]
fn refusals_keep_their_codes_reasons_and_messages() {
    let cases = [
        (
            Refused::NameTaken("db1".into()),
            Code::AlreadyExists,
            "SERVER_NAME_TAKEN",
            "a server named \"db1\" already exists; choose another name or decommission it",
        ),
        (
            Refused::LimitReached { limit: 2, count: 3 },
            Code::ResourceExhausted,
            "SERVER_LIMIT_REACHED",
            "Server limit reached (3 of 2)",
        ),
        (
            Refused::EtagMismatch,
            Code::Aborted,
            "ETAG_MISMATCH",
            "the server changed since it was read (etag mismatch); read it again and retry",
        ),
        (
            Refused::RequestIdReused,
            Code::InvalidArgument,
            "REQUEST_ID_REUSED",
            "request_id was already used for a different request; use a new id",
        ),
        (
            Refused::Rejected(Rejection::Decommissioned),
            Code::FailedPrecondition,
            "SERVER_DECOMMISSIONED",
            "server is decommissioned",
        ),
        (
            Refused::TenantNameTaken("acme".into()),
            Code::AlreadyExists,
            "ALREADY_EXISTS",
            "tenant \"acme\" already exists",
        ),
    ];
    for (refused, code, expected_reason, message) in cases {
        let status = Status::from(ApiError::from(WriteError::Refused(refused)));
        assert_eq!(status.code(), code, "{expected_reason}");
        assert_eq!(reason(&status), expected_reason);
        assert_eq!(status.message(), message);
    }
    let status = Status::from(ApiError::from(Rejection::Decommissioned));
    assert_eq!(reason(&status), "SERVER_DECOMMISSIONED");
    let status = Status::from(WriteError::Store(StoreError::NotFound));
    assert_eq!(reason(&status), "SERVER_NOT_FOUND");
}

#[test]
fn webhook_errors_keep_their_codes_reasons_and_messages() {
    let status = Status::from(ApiError::Refused(Refused::WebhookLimitReached(20)));
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "WEBHOOK_LIMIT_REACHED");
    assert_eq!(
        status.message(),
        "webhook limit reached (20 of 20); delete one first"
    );
    let status = Status::from(StoreError::WebhookNotFound);
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::NotFound, "WEBHOOK_NOT_FOUND".into())
    );
    let status = Status::from(StoreError::DeliveryNotFound);
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::NotFound, "DELIVERY_NOT_FOUND".into())
    );
}

#[test]
fn validation_lists_every_field() {
    let mut violations = Violations::default();
    violations.add("server.name", "is required");
    violations.add("server.port", "out of range");
    let status = invalid_argument(&violations);
    let bad_request = status.get_details_bad_request().unwrap();
    assert_eq!(bad_request.field_violations.len(), 2);
    assert_eq!(reason(&status), "INVALID_ARGUMENT");
}

#[test]
fn an_error_lists_at_most_twenty_violations_and_counts_the_rest() {
    let mut violations = Violations::default();
    for index in 0..25 {
        violations.add(
            format!("server.stream_options.tables[{index}]"),
            "x".repeat(5_000),
        );
    }
    let status = invalid_argument(&violations);
    let bad_request = status.get_details_bad_request().unwrap();
    assert_eq!(bad_request.field_violations.len(), MAX_REPORTED_VIOLATIONS);
    assert!(
        bad_request
            .field_violations
            .iter()
            .all(|violation| violation.description.chars().count() == MAX_VIOLATION_TEXT)
    );
    assert!(
        status
            .message()
            .ends_with("; and 5 more violations (the first 20 are listed)")
    );
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["omitted_violations"],
        "5"
    );
    assert!(
        status.details().len() < 10_000,
        "{}",
        status.details().len()
    );
}

#[test]
fn undecodable_messages_name_the_field() {
    assert_eq!(
        decode_error_field(
            "failed to decode Protobuf message: Server.name: RegisterServerRequest.server: \
             invalid string value: data is not UTF-8 encoded"
        ),
        (
            "server.name".to_owned(),
            "invalid string value: data is not UTF-8 encoded".to_owned()
        )
    );
    assert_eq!(
        decode_error_field("failed to decode Protobuf message: buffer underflow"),
        ("request".to_owned(), "buffer underflow".to_owned())
    );
}

#[test]
fn size_faults_are_internal_or_resource_exhausted_with_an_error_info() {
    let tonic_fault = |verb: &str| {
        Status::out_of_range(format!(
            "Error, {verb} message length too large: found 7651736 bytes, the limit is: \
             4194304 bytes"
        ))
    };
    // The in-process client read a response too large.
    let status = tonic_size_fault(&tonic_fault("decoded"), Side::Client).unwrap();
    assert_eq!(status.code(), Code::Internal);
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "RESPONSE_TOO_LARGE");
    assert_eq!(info.domain, ERROR_DOMAIN);
    assert_eq!(info.metadata["size_bytes"], "7651736");
    assert_eq!(info.metadata["limit_bytes"], "4194304");
    // The server read a request too large, or a client was about to send one.
    let status = tonic_size_fault(&tonic_fault("decoded"), Side::Server).unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "REQUEST_TOO_LARGE");
    assert!(status.message().contains("7651736 bytes"), "{status:?}");
    let status = tonic_size_fault(&tonic_fault("encoded"), Side::Client).unwrap();
    assert_eq!(reason(&status), "REQUEST_TOO_LARGE");
    // The server was about to send a response too large.
    let status = tonic_size_fault(&tonic_fault("encoded"), Side::Server).unwrap();
    assert_eq!(reason(&status), "RESPONSE_TOO_LARGE");
    // Anything else is not a size fault.
    assert!(tonic_size_fault(&Status::out_of_range("past the end"), Side::Server).is_none());
    assert!(
        tonic_size_fault(
            &Status::internal(tonic_fault("decoded").message()),
            Side::Server
        )
        .is_none()
    );
}

#[test]
fn internal_errors_hide_their_cause() {
    let status = Status::from(ApiError::Store(StoreError::Corrupt("secret sql".into())));
    assert_eq!(status.code(), Code::Internal);
    assert!(!status.message().contains("secret sql"));
}
