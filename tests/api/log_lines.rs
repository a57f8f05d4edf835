//! The service's log lines (telemetry.rs, log_format.rs, grpc/access_line.rs): every line of a
//! call carries its request id, the access line keeps tower-http's target and fields, and no
//! secret is logged.

use std::{sync::Arc, time::Duration};

use crate::common::*;
use dbtrail_servers::proto::{ListServersRequest, RegisterServerRequest};

/// The JSON lines `process` logged in the span of the call `request_id`.
fn lines_of_call(process: &ServiceProcess, request_id: &str) -> Vec<serde_json::Value> {
    process
        .stderr()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["span"]["request_id"] == request_id)
        .collect()
}

/// The service's JSON log lines of a call carry the call's request id (the client's own), and the
/// secrets it was sent appear in none of them.
#[test]
fn every_log_line_of_a_call_carries_its_request_id() {
    block_on(async {
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("logs", None).await;
        let options = ReplicaOptions::default();
        let process = ServiceProcess::serve("logs", &db.url, &options).await;
        let mut client = process.client(&tenant.key).await;

        let mut request = tonic::Request::new(RegisterServerRequest {
            server: Some(direct_server("logged")),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("x-request-id", "log-check-4711".parse().expect("ascii"));
        let response = client
            .register_server(request)
            .await
            .expect("RegisterServer");
        assert_eq!(
            response
                .metadata()
                .get("x-request-id")
                .map(|value| value.to_str().ok()),
            Some(Some("log-check-4711")),
            "the request id is echoed"
        );
        let mut rejected = tonic::Request::new(ListServersRequest::default());
        rejected
            .metadata_mut()
            .insert("x-request-id", "log-check-4712".parse().expect("ascii"));
        let mut anonymous = client_with_authorization(process.channel().await, None);
        expect_err(anonymous.list_servers(rejected).await);

        let lines_of = |request_id: &str| lines_of_call(&process, request_id);
        // Each call's last line is its access line; the output is read as it comes.
        let logged = |request_id: &str| {
            lines_of(request_id)
                .iter()
                .any(|line| line["fields"]["message"] == "finished processing request")
        };
        wait_until("the calls are logged", Duration::from_secs(5), || async {
            logged("log-check-4711") && logged("log-check-4712")
        })
        .await;
        for line in lines_of("log-check-4711")
            .iter()
            .chain(&lines_of("log-check-4712"))
        {
            assert!(
                line["span"]["method"]
                    .as_str()
                    .is_some_and(|method| method.starts_with(&format!("/{SERVERS_SERVICE}/"))),
                "{line}"
            );
        }
        let rejection = lines_of("log-check-4712");
        assert!(
            rejection
                .iter()
                .any(|line| line["fields"]["message"] == "call rejected"),
            "the rejection is logged with the request id: {rejection:?}"
        );
        assert_access_line(&lines_of("log-check-4711"), None);
        assert_access_line(&lines_of("log-check-4712"), Some(16));
        let everything = format!("{}{}", process.stdout(), process.stderr());
        assert!(
            !everything.contains("s3cret-password"),
            "a password was logged"
        );
    });
}

/// The access line among a call's log `lines`: tower-http's target and fields (message, latency
/// in whole milliseconds, and `status` when the response's headers carry a grpc-status: a
/// refusal's, not a result's, whose status comes in the trailers), in the call's span.
fn assert_access_line(lines: &[serde_json::Value], status: Option<i64>) {
    let access = lines
        .iter()
        .find(|line| line["fields"]["message"] == "finished processing request")
        .unwrap_or_else(|| panic!("no access line: {lines:?}"));
    assert_eq!(
        access["target"], "tower_http::trace::on_response",
        "{access}"
    );
    assert_eq!(access["level"], "INFO", "{access}");
    assert_eq!(access["fields"]["status"].as_i64(), status, "{access}");
    let latency = access["fields"]["latency"].as_str().unwrap_or_default();
    let millis = latency.strip_suffix(" ms").unwrap_or_default();
    assert!(
        !millis.is_empty() && millis.bytes().all(|byte| byte.is_ascii_digit()),
        "{access}"
    );
    assert_eq!(access["span"]["name"], "call", "{access}");
    let fields = access["fields"].as_object().expect("fields").len();
    assert_eq!(fields, 2 + usize::from(status.is_some()), "{access}");
}
