//! Webhook deliveries against a real HTTP receiver the test starts: a stream losing its source
//! told in order, once per change, signed; a failing receiver retried until it answers; a hanging
//! one timed out while calls stay fast and other webhooks are served; a killed replica's delivery
//! sent by another with the same id; dead deliveries shown and redelivered by hand, over REST too;
//! a failed onboarding and a decommission told only to the webhooks (and the tenant) that want
//! them.

use std::time::{Duration, Instant};

use crate::common::mariadb::*;
use crate::common::stream::*;
use crate::common::*;
use crate::rest_common::{Rest, assert_status};
use dbtrail_servers::proto::{self, DeliveryStatus, ServerStatus, StreamState, WebhookEvent};
use reqwest::Method;
use serde_json::json;

#[test]
fn a_stream_that_loses_its_source_is_told_disconnected_then_running_once_each_signed() {
    block_on(async {
        let mariadb = mariadb_with(&[
            "CREATE DATABASE shop",
            "CREATE TABLE shop.t (id INT PRIMARY KEY)",
        ])
        .await;
        let proxy = TcpProxy::start(format!("127.0.0.1:{}", mariadb.port)).await;
        let mut options = mysql_replica_options();
        options.extra_args.push("--allow-http-webhooks".into());
        let app = TestApp::start_with(options).await;
        let mut client = app.client();
        let mut input = mariadb.server("told", USER, PASSWORD);
        input.port = i32::from(proxy.addr.port());
        let id = register(&mut client, input).await.server_id;
        wait_stream(&mut client, &id, "the stream to run", running).await;

        let receiver = Receiver::start().await;
        let hook = create_webhook(
            &mut client,
            &receiver.url("/stream"),
            &[WebhookEvent::StreamStateChanged],
        )
        .await;
        let secret = hook.signing_secret.expect("the secret");
        proxy.cut();
        wait_stream(
            &mut client,
            &id,
            "the stream to say disconnected",
            |server| stream_state(server) == Some(StreamState::Disconnected),
        )
        .await;
        proxy.restore();
        wait_stream(&mut client, &id, "the stream to run again", running).await;

        receiver.wait_for("/stream", 2, DELIVERY).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let received = receiver.received();
        assert_eq!(received.len(), 2, "once each: {received:#?}");
        let states: Vec<(String, String)> = received
            .iter()
            .map(|request| {
                let body = request.json();
                assert_eq!(body["type"], "stream_state_changed");
                assert_eq!(body["server"]["server_id"], id.as_str());
                assert_eq!(body["webhook_id"], hook.webhook_id.as_str());
                assert_eq!(body["delivery_id"], request.delivery_id());
                assert_eq!(request.header("dbtrail-event"), "stream_state_changed");
                assert_signed(request, &secret);
                (
                    body["previous"]["stream_state"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    body["server"]["stream_state"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )
            })
            .collect();
        let told = |from: &str, to: &str| (from.to_owned(), to.to_owned());
        assert_eq!(
            states,
            [
                told("running", "disconnected"),
                told("disconnected", "running")
            ],
            "in order"
        );
        assert_ne!(received[0].delivery_id(), received[1].delivery_id());
        let listed =
            settled_deliveries(&client, &hook.webhook_id, 2, DeliveryStatus::Delivered).await;
        assert!(listed.iter().all(|delivery| delivery.attempts == 1
            && delivery.last_response_code == Some(200)
            && delivery.server_id == id
            && delivery.event == WebhookEvent::StreamStateChanged as i32));
        // Newest first: the running one.
        assert_eq!(listed[0].delivery_id, received[1].delivery_id());
        assert_eq!(
            get_server(&mut client, &id).await.status,
            ServerStatus::Active as i32
        );
        app.shutdown().await;
    });
}

#[test]
fn a_receiver_answering_500_three_times_gets_the_delivery_once_after_four_attempts() {
    block_on(async {
        let app = TestApp::start_with(webhook_options(&["--webhook-retry-base", "100ms"])).await;
        let mut client = app.client();
        let receiver = Receiver::start().await;
        receiver.answer(&[Answer::Status(500); 3]);
        let hook = create_webhook(
            &mut client,
            &receiver.url("/flaky"),
            &[WebhookEvent::ServerStatusChanged],
        )
        .await;
        let secret = hook.signing_secret.expect("the secret");
        let first = register_and_decommission(&mut client, "first").await;
        let second = register_and_decommission(&mut client, "second").await;

        let listed =
            settled_deliveries(&client, &hook.webhook_id, 2, DeliveryStatus::Delivered).await;
        let received = receiver.received();
        let answers: Vec<Answer> = received.iter().map(|request| request.answer).collect();
        assert_eq!(
            answers,
            [
                Answer::Status(500),
                Answer::Status(500),
                Answer::Status(500),
                Answer::Status(200),
                Answer::Status(200)
            ]
        );
        // The first change's delivery, four times (same id, same body), then the second's:
        // a webhook's next delivery waits until the one before is delivered.
        for request in &received[..4] {
            assert_eq!(request.delivery_id(), received[0].delivery_id());
            assert_eq!(request.body, received[0].body);
            assert_eq!(request.json()["server"]["server_id"], first.as_str());
            assert_signed(request, &secret);
        }
        assert_eq!(received[4].json()["server"]["server_id"], second.as_str());
        assert_eq!(received[4].json()["server"]["status"], "decommissioned");
        assert_eq!(received[4].json()["previous"]["status"], "pending");
        let retried = listed
            .iter()
            .find(|delivery| delivery.server_id == first)
            .expect("the first change's delivery");
        assert_eq!(retried.delivery_id, received[0].delivery_id());
        assert_eq!(retried.attempts, 4);
        assert_eq!(retried.last_response_code, Some(200));
        assert_eq!(retried.last_error, None);
        assert!(retried.delivered_at.is_some() && retried.next_attempt_at.is_none());

        // A page at a time, newest first; a token is its webhook's only.
        let page = |page_token: String| proto::ListWebhookDeliveriesRequest {
            webhook_id: hook.webhook_id.clone(),
            page_size: 1,
            page_token,
        };
        let first_page = client
            .list_webhook_deliveries(page(String::new()))
            .await
            .expect("a first page")
            .into_inner();
        assert_eq!(first_page.deliveries.len(), 1);
        assert_eq!(first_page.deliveries[0].server_id, second);
        let second_page = client
            .list_webhook_deliveries(page(first_page.next_page_token.clone()))
            .await
            .expect("a second page")
            .into_inner();
        assert_eq!(second_page.deliveries[0].server_id, first);
        assert!(second_page.next_page_token.is_empty());
        let other = create_webhook(
            &mut client,
            &receiver.url("/other"),
            &[WebhookEvent::LostPosition],
        )
        .await;
        let status = expect_err(
            client
                .list_webhook_deliveries(proto::ListWebhookDeliveriesRequest {
                    webhook_id: other.webhook_id,
                    page_size: 1,
                    page_token: first_page.next_page_token,
                })
                .await,
        );
        assert_bad_request(&status, &["page_token"]);

        let (status, metrics) = http_get(app.http_addr, "/metrics").await;
        assert_eq!(status, 200);
        for series in [
            "dbtrail_webhook_deliveries_total{outcome=\"retried\"} 3",
            "dbtrail_webhook_deliveries_total{outcome=\"delivered\"} 2",
            "dbtrail_webhook_deliveries_total{outcome=\"dead\"} 0",
            "dbtrail_webhook_outbox_depth",
            "dbtrail_webhook_oldest_undelivered_seconds",
        ] {
            assert!(metrics.contains(series), "{series} in\n{metrics}");
        }
        app.shutdown().await;
    });
}

#[test]
fn a_hanging_receiver_times_out_and_is_retried_while_calls_and_other_webhooks_go_on() {
    block_on(async {
        let app = TestApp::start_with(webhook_options(&[
            "--webhook-timeout",
            "2s",
            "--webhook-retry-base",
            "100ms",
        ]))
        .await;
        let mut client = app.client();
        let hanging = Receiver::start().await;
        hanging.answer(&[Answer::Hang]);
        let healthy = Receiver::start().await;
        let slow = create_webhook(
            &mut client,
            &hanging.url("/slow"),
            &[WebhookEvent::Decommissioned],
        )
        .await;
        create_webhook(
            &mut client,
            &healthy.url("/fine"),
            &[WebhookEvent::Decommissioned],
        )
        .await;
        let kept = register(&mut client, direct_server("kept")).await.server_id;
        register_and_decommission(&mut client, "gone").await;
        let hung = hanging.wait_for("/slow", 1, DELIVERY).await;

        // While the attempt hangs: the other webhook is served, and calls stay fast.
        let fine = healthy.wait_for("/fine", 1, DELIVERY).await;
        assert!(
            fine[0].at < hung[0].at + Duration::from_millis(1500),
            "the healthy webhook waited for the hanging one"
        );
        let mut slowest = Duration::ZERO;
        while hanging.received().len() < 2 {
            let started = Instant::now();
            get_server(&mut client, &kept).await;
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(hung[0].at.elapsed() < DELIVERY, "no retry came");
        }
        assert!(
            slowest < Duration::from_millis(500),
            "GetServer took {slowest:?} while a delivery hung"
        );

        let retried = hanging.wait_for("/slow", 2, DELIVERY).await;
        assert_eq!(retried[1].delivery_id(), hung[0].delivery_id());
        assert_eq!(retried[1].body, hung[0].body);
        assert!(
            retried[1].at - hung[0].at >= Duration::from_secs(2),
            "retried before the timeout: {:?}",
            retried[1].at - hung[0].at
        );
        let listed =
            settled_deliveries(&client, &slow.webhook_id, 1, DeliveryStatus::Delivered).await;
        assert_eq!(listed[0].attempts, 2);
        app.shutdown().await;
    });
}

/// The replica whose log names `owner` as its claims' owner.
fn holds(replica: &ServiceProcess, owner: &str) -> bool {
    replica.stdout().contains(owner) || replica.stderr().contains(owner)
}

#[test]
fn a_replica_killed_before_its_delivery_is_answered_is_replaced_by_another_with_the_same_id() {
    block_on(async {
        let db = TestDatabase::create().await;
        let tenant = db.create_tenant("tenant-a", None).await;
        let options =
            webhook_options(&["--webhook-timeout", "2s", "--webhook-retry-base", "100ms"]);
        let mut replicas = vec![
            ServiceProcess::serve("replica-a", &db.url, &options).await,
            ServiceProcess::serve(
                "replica-b",
                &db.url,
                &ReplicaOptions {
                    agent_name: "agent-b".into(),
                    ..options.clone()
                },
            )
            .await,
        ];
        let receiver = Receiver::start().await;
        receiver.answer(&[Answer::Hang]);
        let mut client = replicas[0].client(&tenant.key).await;
        let hook = create_webhook(
            &mut client,
            &receiver.url("/kill"),
            &[WebhookEvent::Decommissioned],
        )
        .await;
        let secret = hook.signing_secret.expect("the secret");
        register_and_decommission(&mut client, "doomed").await;

        // The attempt is in flight: the replica holding it dies before it is answered.
        let first = receiver.wait_for("/kill", 1, DELIVERY).await;
        let sql = db.connect().await;
        let owner: String = sql
            .query_one("SELECT lease_owner::text FROM webhook_deliveries", &[])
            .await
            .expect("the delivery's lease")
            .get(0);
        let holder = replicas
            .iter()
            .position(|replica| holds(replica, &owner))
            .expect("a replica logged the owner of the claim");
        let mut killed = replicas.remove(holder);
        killed.kill().await;
        eprintln!("killed {} holding the delivery", killed.label);

        let received = receiver.wait_for("/kill", 2, DELIVERY).await;
        assert_eq!(
            received[1].delivery_id(),
            first[0].delivery_id(),
            "the same id"
        );
        assert_eq!(received[1].body, first[0].body);
        assert_signed(&received[1], &secret);
        assert_eq!(received[1].answer, Answer::Status(200));
        let survivor = replicas[0].client(&tenant.key).await;
        let listed =
            settled_deliveries(&survivor, &hook.webhook_id, 1, DeliveryStatus::Delivered).await;
        assert_eq!(listed[0].attempts, 2, "the killed replica's attempt counts");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(receiver.received().len(), 2, "delivered, and not again");
    });
}

#[test]
fn dead_deliveries_are_shown_and_redelivered_by_hand_over_rest() {
    block_on(async {
        let app = TestApp::start_with(webhook_options(&[
            "--webhook-retry-base",
            "100ms",
            "--webhook-retry-window",
            "1s",
        ]))
        .await;
        let rest = Rest::new(&app);
        let receiver = Receiver::start().await;
        receiver.answer(&[Answer::Status(503); 1000]);
        let created = rest
            .post(
                "/webhooks",
                &json!({ "url": receiver.url("/dead"), "events": ["decommissioned"] }),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.json["webhook_id"]
            .as_str()
            .expect("an id")
            .to_owned();
        assert_eq!(created.header("location"), format!("/webhooks/{id}"));
        assert!(
            created.json["signing_secret"]
                .as_str()
                .is_some_and(|secret| secret.starts_with("whsec_"))
        );
        assert_eq!(created.json["events"], json!(["decommissioned"]));
        let read = rest.get(&format!("/webhooks/{id}")).await;
        assert_eq!(read.status, 200);
        assert_eq!(read.json["signing_secret"], json!(null));
        assert_eq!(read.json["url"], receiver.url("/dead"));

        register_and_decommission(&mut app.client(), "unheard").await;
        let client = app.client();
        let dead = settled_deliveries(&client, &id, 1, DeliveryStatus::Dead).await;
        assert!(dead[0].attempts >= 2, "{:?}", dead[0]);
        assert_eq!(dead[0].last_response_code, Some(503));
        assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 503"));
        assert!(dead[0].next_attempt_at.is_none());
        let listed = rest.get(&format!("/webhooks/{id}/deliveries")).await;
        assert_eq!(listed.status, 200);
        let shown = &listed.json["deliveries"][0];
        assert_eq!(shown["status"], "dead");
        assert_eq!(shown["event"], "decommissioned");
        assert_eq!(shown["next_attempt_at"], json!(null));
        let tried = receiver.received().len();
        assert_eq!(tried, dead[0].attempts as usize);

        // By hand, once the receiver is back.
        receiver.answer_ok();
        let delivery_id = dead[0].delivery_id.clone();
        let redelivered = rest
            .send(
                Method::POST,
                &format!("/webhooks/{id}/deliveries/{delivery_id}:redeliver"),
                Some(&json!({})),
            )
            .await;
        assert_eq!(redelivered.status, 200, "{}", redelivered.body);
        assert_eq!(redelivered.json["status"], "pending");
        let delivered = settled_deliveries(&client, &id, 1, DeliveryStatus::Delivered).await;
        assert_eq!(delivered[0].attempts, dead[0].attempts + 1);
        let received = receiver.received();
        assert_eq!(received.len(), tried + 1);
        assert_eq!(received[tried].delivery_id(), delivery_id);
        let missing = rest
            .send(
                Method::POST,
                &format!(
                    "/webhooks/{id}/deliveries/{}:redeliver",
                    uuid::Uuid::new_v4()
                ),
                Some(&json!({})),
            )
            .await;
        assert_status(&missing, 404, 5, "DELIVERY_NOT_FOUND");

        let listed = rest.get("/webhooks").await;
        assert_eq!(listed.json["webhooks"][0]["webhook_id"], id.as_str());
        assert_eq!(rest.delete(&format!("/webhooks/{id}")).await.status, 200);
        let gone = rest.get(&format!("/webhooks/{id}")).await;
        assert_status(&gone, 404, 5, "WEBHOOK_NOT_FOUND");
        assert_eq!(
            rest.get(&format!("/webhooks/{id}/deliveries")).await.status,
            404
        );
        app.shutdown().await;
    });
}

#[test]
fn a_failed_onboarding_and_a_decommission_reach_the_webhooks_that_want_them_and_no_other_tenant() {
    block_on(async {
        let mariadb = MariaDb::start().await;
        let mut options = mysql_replica_options();
        options.extra_args.push("--allow-http-webhooks".into());
        let app = TestApp::start_with(options).await;
        let mut client = app.client();
        let receiver = Receiver::start().await;
        let failures = create_webhook(
            &mut client,
            &receiver.url("/failures"),
            &[WebhookEvent::OnboardingFailed, WebhookEvent::Decommissioned],
        )
        .await;
        create_webhook(
            &mut client,
            &receiver.url("/statuses"),
            &[WebhookEvent::ServerStatusChanged],
        )
        .await;
        let stranger = app.other_tenant("tenant-b").await;
        create_webhook(
            &mut app.client_with_key(&stranger.key),
            &receiver.url("/stranger"),
            &EVERY_EVENT,
        )
        .await;

        let id = register(
            &mut client,
            mariadb.server("refused", USER, "not-the-password"),
        )
        .await
        .server_id;
        let settled_status = wait_settled(&client, &id).await;
        assert_eq!(settled_status.server_status, ServerStatus::Error as i32);
        client
            .decommission_server(proto::DecommissionServerRequest {
                server_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("DecommissionServer");

        let told = receiver.wait_for("/failures", 2, DELIVERY).await;
        let bodies: Vec<serde_json::Value> = told.iter().map(Received::json).collect();
        assert_eq!(bodies[0]["type"], "onboarding_failed");
        assert_eq!(bodies[0]["server"]["status"], "error");
        assert_eq!(bodies[0]["server"]["onboarding_step"], "waiting_for_agent");
        let error = bodies[0]["server"]["error"].as_str().unwrap_or_default();
        assert!(error.contains("Access denied"), "{error}");
        assert!(
            !told[0]
                .body
                .windows(16)
                .any(|window| window == b"not-the-password")
        );
        assert_eq!(bodies[0]["previous"]["status"], "pending");
        assert_eq!(bodies[1]["type"], "decommissioned");
        assert_eq!(bodies[1]["server"]["status"], "decommissioned");
        assert_eq!(bodies[1]["previous"]["status"], "error");
        assert!(bodies[1]["server"]["decommissioned_at"].is_string());
        assert!(
            bodies
                .iter()
                .all(|body| body["server"]["server_id"] == id.as_str())
        );
        assert_ne!(bodies[0]["event_id"], bodies[1]["event_id"]);
        assert!(
            told.iter()
                .all(|request| request.json()["webhook_id"] == failures.webhook_id.as_str())
        );

        let statuses = receiver.wait_for("/statuses", 2, DELIVERY).await;
        let changes: Vec<(String, String)> = statuses
            .iter()
            .map(|request| {
                let body = request.json();
                (
                    body["previous"]["status"].as_str().unwrap_or("").to_owned(),
                    body["server"]["status"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        assert_eq!(
            changes,
            [
                ("pending".to_owned(), "error".to_owned()),
                ("error".to_owned(), "decommissioned".to_owned())
            ]
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let paths: Vec<String> = receiver
            .received()
            .into_iter()
            .map(|request| request.path)
            .collect();
        assert_eq!(
            paths.len(),
            4,
            "each once, and nothing to another tenant: {paths:?}"
        );
        app.shutdown().await;
    });
}
