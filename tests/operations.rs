//! Operations (issue 2, "What must work" 2 and 8): reflection v1 and v1alpha without a key,
//! /healthz, /readyz and /metrics, and SIGTERM draining: watches end with UNAVAILABLE, leases are
//! released and the process exits within ten seconds.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dbtrail_servers::proto::{ListServersRequest, OnboardingStep, StepStatus};
use tonic::Code;

async fn reflected_services_v1(app: &TestApp) -> BTreeSet<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(app.grpc_addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("a reflection response")
        .expect("one message");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect(),
        other => panic!("unexpected reflection response {other:?}"),
    }
}

async fn reflected_services_v1alpha(app: &TestApp) -> BTreeSet<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(app.grpc_addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("a reflection response")
        .expect("one message");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect(),
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_the_services_without_a_key() {
    let app = TestApp::start().await;
    for services in [
        reflected_services_v1(&app).await,
        reflected_services_v1alpha(&app).await,
    ] {
        assert!(services.contains(SERVERS_SERVICE), "{services:?}");
        assert!(services.contains("grpc.health.v1.Health"), "{services:?}");
    }

    // describe: the file holding ServersService resolves with its imports.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(app.grpc_addr).await);
    let requests = [
        MessageRequest::FileContainingSymbol(SERVERS_SERVICE.to_owned()),
        MessageRequest::FileByFilename("google/api/annotations.proto".to_owned()),
        MessageRequest::FileContainingSymbol("google.protobuf.Timestamp".to_owned()),
    ];
    for request in requests {
        let mut stream = client
            .server_reflection_info(tokio_stream::once(ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request.clone()),
            }))
            .await
            .expect("reflection")
            .into_inner();
        let response = stream
            .message()
            .await
            .expect("a response")
            .expect("one message");
        match response.message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => {
                assert!(!files.file_descriptor_proto.is_empty(), "{request:?}")
            }
            other => panic!("{request:?} gave {other:?}"),
        }
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_over_http() {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_within_ten_seconds() {
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
    wait_for_onboarding(
        &client,
        &server.server_id,
        "provisioning in progress",
        Duration::from_secs(15),
        |status| step_status(status, OnboardingStep::Provisioning) == StepStatus::InProgress,
    )
    .await;
    let sql = db.connect().await;
    let live_leases = || async {
        sql.query_one(
            "SELECT count(*) FROM servers WHERE lease_owner IS NOT NULL AND lease_expires_at > now()",
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
}
