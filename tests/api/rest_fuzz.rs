//! Fuzzing from the spec: schemathesis (PyPI; scripts/test installs it) reads `/openapi.json` from
//! a live service and sends requests generated from it, valid and invalid, with a valid key. Every
//! response must be a non-5xx that conforms to the document: its status, content type, headers and
//! body schema; invalid data must be refused; a missing key must be 401; an undocumented method
//! must be 405 with Allow. The HTTP archive schemathesis writes is checked independently: at least
//! 500 requests, none answered 5xx.
//!
//! The service runs the core onboarding steps only, so whatever host a generated server names,
//! nothing is ever connected to.

use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// What schemathesis checks on every response.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,\
                      negative_data_rejection,missing_required_header,unsupported_method,\
                      ignored_auth";
/// Generated cases per operation and phase; with the coverage phase's own cases this makes well
/// over 500 requests in about half a minute.
const EXAMPLES_PER_OPERATION: &str = "40";
const MINIMUM_REQUESTS: usize = 500;
/// The whole run's limit, under nextest's two minutes.
const RUN_TIMEOUT: Duration = Duration::from_secs(100);

#[test]
fn schemathesis_finds_no_5xx_and_no_schema_violation() {
    block_on(async {
        let app = TestApp::start().await;
        let base = format!("http://{}", app.http_addr);
        let directory = tempfile::tempdir().expect("a temporary directory");
        let archive = directory.path().join("requests.har");
        let mut command = tokio::process::Command::new("schemathesis");
        command
            .arg("run")
            .arg(format!("{base}/openapi.json"))
            .args(["--url", &base])
            .args([
                "--header",
                &format!("Authorization: Bearer {}", app.tenant.key),
            ])
            .args(["--checks", CHECKS])
            // Stateful sequences would open watches of real servers that, by design, stay open
            // until onboarding settles; every other phase runs.
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", EXAMPLES_PER_OPERATION])
            .args(["--request-timeout", "10"])
            .args(["--report", "har"])
            .arg("--report-har-path")
            .arg(&archive)
            .env("NO_COLOR", "1")
            .current_dir(directory.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(RUN_TIMEOUT, command.output()).await {
            Err(_) => panic!("schemathesis did not finish within {RUN_TIMEOUT:?}"),
            Ok(Err(error)) => panic!(
                "cannot run schemathesis ({error}); it must be installed for this test: \
                 pip install schemathesis (scripts/test does)"
            ),
            Ok(Ok(output)) => output,
        };
        echo_output(&output);
        assert!(
            output.status.success(),
            "schemathesis found failures (exit {}); its report is above",
            output.status
        );

        let archive: Value = serde_json::from_slice(
            &std::fs::read(&archive).expect("schemathesis wrote its HTTP archive"),
        )
        .expect("an HTTP archive in JSON");
        let entries = archive["log"]["entries"]
            .as_array()
            .expect("the archive's entries");
        assert!(
            entries.len() >= MINIMUM_REQUESTS,
            "only {} requests were sent",
            entries.len()
        );
        let failed: Vec<String> = entries
            .iter()
            .filter(|entry| {
                let status = entry["response"]["status"].as_u64().unwrap_or(0);
                !(100..500).contains(&status)
            })
            .map(|entry| {
                format!(
                    "{} {} -> {}",
                    entry["request"]["method"],
                    entry["request"]["url"],
                    entry["response"]["status"]
                )
            })
            .collect();
        assert!(failed.is_empty(), "5xx or no answer: {failed:#?}");
        app.shutdown().await;
    });
}
