//! A database outage: the service reaches PostgreSQL through a TCP proxy that the test cuts (other
//! tests are not disturbed). Calls fail fast with UNAVAILABLE within the pool and statement
//! timeouts, nothing panics, health follows, and once the path is restored calls, watches and
//! NOTIFY-driven changes work again without a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use dbtrail_servers::proto::{
    self, ConfirmFirewallRequest, GetOnboardingStatusRequest, GetServerRequest, ListServersRequest,
    OnboardingStep, RegisterServerRequest, StepStatus, UpdateServerRequest,
};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const POOL_TIMEOUT: Duration = Duration::from_secs(1);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// What a failing call may take: the pool wait, a statement, and scheduling slack.
const FAIL_FAST: Duration = Duration::from_secs(4);

/// Every unary call, each a fresh future; the result is the call's status.
async fn every_call(
    client: &Client,
    server_id: &str,
) -> Vec<(&'static str, Duration, Result<(), Status>)> {
    let mut outcomes = Vec::new();
    macro_rules! timed {
        ($name:expr, $call:expr) => {{
            let started = Instant::now();
            let result = tokio::time::timeout(Duration::from_secs(15), $call)
                .await
                .unwrap_or_else(|_| panic!("{} hung for 15 s during the outage", $name))
                .map(|_| ());
            outcomes.push(($name, started.elapsed(), result));
        }};
    }
    let id = server_id.to_owned();
    timed!(
        "ListServers",
        client.clone().list_servers(ListServersRequest::default())
    );
    timed!(
        "GetServer",
        client.clone().get_server(GetServerRequest {
            server_id: id.clone()
        })
    );
    timed!(
        "GetOnboardingStatus",
        client
            .clone()
            .get_onboarding_status(GetOnboardingStatusRequest {
                server_id: id.clone()
            })
    );
    timed!(
        "RegisterServer",
        client.clone().register_server(RegisterServerRequest {
            server: Some(direct_server("during-outage")),
            ..Default::default()
        })
    );
    timed!(
        "UpdateServer",
        client.clone().update_server(UpdateServerRequest {
            server: Some(proto::Server {
                server_id: id.clone(),
                labels: labels(&[("outage", "yes")]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels".to_owned()],
            }),
            request_id: String::new(),
        })
    );
    timed!(
        "ConfirmFirewall",
        client.clone().confirm_firewall(ConfirmFirewallRequest {
            server_id: id.clone()
        })
    );
    let started = Instant::now();
    let mut client = client.clone();
    let watch_result = tokio::time::timeout(Duration::from_secs(15), async {
        match open_watch(&mut client, &id, None, false).await {
            Err(status) => Err(status),
            Ok(mut watch) => match watch.next(Duration::from_secs(14)).await {
                WatchEvent::Error(status) => Err(status),
                WatchEvent::Message(_) => Ok(()),
                other => panic!("a watch during the outage gave {other:?}"),
            },
        }
    })
    .await
    .unwrap_or_else(|_| panic!("WatchOnboarding hung for 15 s during the outage"));
    outcomes.push(("WatchOnboarding", started.elapsed(), watch_result));
    outcomes
}

#[test]
fn calls_fail_fast_during_a_database_outage_and_recover_without_a_restart() {
    block_on(async {
        let panics = record_panics();
        let proxy = TcpProxy::to_postgres().await;
        let db = Arc::new(TestDatabase::create().await);
        let tenant = db.create_tenant("tenant-a", None).await;
        let app = TestApp::start_on(
            db.clone(),
            tenant,
            ReplicaOptions {
                database_url: Some(with_host_port(&db.url, proxy.addr)),
                statement_timeout: format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
                pool_timeout: format!("{}ms", POOL_TIMEOUT.as_millis()),
                ..Default::default()
            },
        )
        .await;
        let mut client = app.client();
        let (tunnelled_id, waiting) =
            register_and_settle(&mut client, ssh_server("before-outage")).await;
        let mut open = open_watch(&mut client, &tunnelled_id, None, false)
            .await
            .expect("WatchOnboarding before the outage");
        assert_eq!(
            open.message(Duration::from_secs(5)).await.revision,
            waiting.revision
        );
        wait_until("health to be SERVING", Duration::from_secs(5), || async {
            matches!(
                health(app.grpc_addr, SERVERS_SERVICE).await,
                Ok(ServingStatus::Serving)
            )
        })
        .await;
        wait_until("/readyz to answer 200", Duration::from_secs(5), || async {
            http_get(app.http_addr, "/readyz").await.0 == 200
        })
        .await;

        // --- The outage ---
        proxy.cut();

        for (name, elapsed, result) in every_call(&client, &tunnelled_id).await {
            let status = match result {
                Ok(()) => panic!("{name} succeeded while PostgreSQL was unreachable"),
                Err(status) => status,
            };
            assert_error(&status, Code::Unavailable, "STORE_UNAVAILABLE");
            assert!(
                elapsed <= FAIL_FAST,
                "{name} took {elapsed:?} to fail; the pool and statement timeouts allow \
                 {FAIL_FAST:?}"
            );
            assert!(
                !status.message().to_lowercase().contains("select ")
                    && !status
                        .message()
                        .to_lowercase()
                        .contains("connection refused"),
                "{name}: database details reach the client: {:?}",
                status.message()
            );
        }

        // A key this replica has not seen cannot be checked: UNAVAILABLE, not UNAUTHENTICATED.
        let fresh_key = db.create_key("tenant-a", &ALL_PERMISSIONS, None).await;
        let status = expect_err(
            app.client_with_key(&fresh_key.secret)
                .list_servers(ListServersRequest::default())
                .await,
        );
        assert_error(&status, Code::Unavailable, "STORE_UNAVAILABLE");

        wait_until(
            "health to turn NOT_SERVING",
            Duration::from_secs(10),
            || async {
                matches!(
                    health(app.grpc_addr, SERVERS_SERVICE).await,
                    Ok(ServingStatus::NotServing)
                )
            },
        )
        .await;
        wait_until("/readyz to fail", Duration::from_secs(10), || async {
            http_get(app.http_addr, "/readyz").await.0 == 503
        })
        .await;
        assert_eq!(
            http_get(app.http_addr, "/healthz").await.0,
            200,
            "liveness does not follow the database"
        );

        // --- The path comes back ---
        proxy.restore();
        let restored_at = Instant::now();
        wait_until("calls to succeed again", Duration::from_secs(15), || {
            let mut client = client.clone();
            let server_id = tunnelled_id.clone();
            async move {
                client
                    .get_server(GetServerRequest { server_id })
                    .await
                    .is_ok()
            }
        })
        .await;
        eprintln!(
            "recovered {:?} after the path was restored",
            restored_at.elapsed()
        );
        wait_until(
            "health to turn SERVING again",
            Duration::from_secs(10),
            || async {
                matches!(
                    health(app.grpc_addr, SERVERS_SERVICE).await,
                    Ok(ServingStatus::Serving)
                )
            },
        )
        .await;
        assert_eq!(http_get(app.http_addr, "/readyz").await.0, 200);

        for (name, _, result) in every_call(&client, &tunnelled_id).await {
            result.unwrap_or_else(|status| panic!("{name} after the outage: {status:?}"));
        }
        app.client_with_key(&fresh_key.secret)
            .list_servers(ListServersRequest::default())
            .await
            .expect("the new key works once PostgreSQL is back");
        let status = onboarding_status(&mut client, &tunnelled_id).await;
        let replay = history(&client, &tunnelled_id).await;
        eprintln!("{}", describe_history(&replay));
        assert_eq!(
            step_status(&status, OnboardingStep::AwaitingFirewall),
            StepStatus::Completed
        );

        // The watch opened before the outage either ended with UNAVAILABLE (clients resume with
        // since_revision) or, still open, caught up with no gap.
        let mut seen = Vec::new();
        loop {
            match open.next(Duration::from_secs(10)).await {
                WatchEvent::Error(error) => {
                    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
                    break;
                }
                WatchEvent::Message(message) => {
                    let done = step_status(&message, OnboardingStep::AwaitingFirewall)
                        == StepStatus::Completed;
                    seen.push(message);
                    if done {
                        let mut all = vec![waiting.clone()];
                        all.extend(seen.iter().cloned());
                        assert_consecutive_revisions(&all);
                        break;
                    }
                }
                other => panic!(
                    "the watch opened before the outage neither ended with UNAVAILABLE nor caught \
                     up: {other:?}"
                ),
            }
        }

        // NOTIFY works again: a new watch sees a change made after the outage.
        let (second_id, second_waiting) =
            register_and_settle(&mut client, ssh_server("after-outage")).await;
        let mut watch = open_watch(&mut client, &second_id, None, false)
            .await
            .expect("WatchOnboarding after the outage");
        assert_eq!(
            watch.message(Duration::from_secs(5)).await.revision,
            second_waiting.revision
        );
        client
            .confirm_firewall(ConfirmFirewallRequest {
                server_id: second_id.clone(),
            })
            .await
            .expect("ConfirmFirewall after the outage");
        let next = watch.message(Duration::from_secs(10)).await;
        assert_eq!(next.revision, second_waiting.revision + 1);
        assert_eq!(
            step_status(&next, OnboardingStep::AwaitingFirewall),
            StepStatus::Completed
        );

        app.shutdown().await;
        let panics = panics.lock().expect("panic log").clone();
        assert!(panics.is_empty(), "the service panicked: {panics:#?}");
    });
}
