//! Webhooks (docs/api.md, "Webhooks") against a real HTTP receiver the test starts: the calls
//! (create with the secret shown once, read, list, delete, tenant isolation, the limit), the URL
//! rules and the target policy, and delivery: a stream losing its source told in order, once per
//! change, signed; a failing receiver retried until it answers; a hanging one timed out while
//! calls stay fast and other webhooks are served; a killed replica's delivery sent by another
//! with the same id; dead deliveries shown and redelivered by hand, over REST too.

use std::time::{Duration, Instant};

use crate::common::mariadb::*;
use crate::common::stream::*;
use crate::common::*;
use crate::rest_common::{Rest, assert_status};
use dbtrail_servers::proto::{
    self, DeliveryStatus, ServerStatus, StreamState, WebhookDelivery, WebhookEvent,
};
use reqwest::Method;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

/// How long a delivery may take to arrive.
const DELIVERY: Duration = Duration::from_secs(30);

/// Options of a replica that may deliver to the test's http receiver on 127.0.0.1.
fn webhook_options(extra: &[&str]) -> ReplicaOptions {
    let mut options = ReplicaOptions::default();
    options.extra_args.push("--allow-http-webhooks".into());
    options
        .extra_args
        .extend(extra.iter().map(|arg| arg.to_string()));
    options
}

fn webhook(url: &str, events: &[WebhookEvent]) -> proto::Webhook {
    proto::Webhook {
        url: url.to_owned(),
        events: events.iter().map(|event| *event as i32).collect(),
        ..Default::default()
    }
}

async fn create(client: &mut Client, url: &str, events: &[WebhookEvent]) -> proto::Webhook {
    client
        .create_webhook(proto::CreateWebhookRequest {
            webhook: Some(webhook(url, events)),
        })
        .await
        .unwrap_or_else(|status| panic!("CreateWebhook {url}: {status:?}"))
        .into_inner()
}

async fn create_error(client: &mut Client, input: Option<proto::Webhook>) -> tonic::Status {
    expect_err(
        client
            .create_webhook(proto::CreateWebhookRequest { webhook: input })
            .await,
    )
}

/// Every delivery of the webhook, newest first.
async fn deliveries(client: &mut Client, webhook_id: &str) -> Vec<WebhookDelivery> {
    client
        .list_webhook_deliveries(proto::ListWebhookDeliveriesRequest {
            webhook_id: webhook_id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("ListWebhookDeliveries")
        .into_inner()
        .deliveries
}

/// The webhook's deliveries once every one of `count` has `status`.
async fn settled(
    client: &Client,
    webhook_id: &str,
    count: usize,
    status: DeliveryStatus,
) -> Vec<WebhookDelivery> {
    let what = format!("{count} deliveries of {webhook_id} to be {status:?}");
    wait_for(&what, DELIVERY, || {
        let mut client = client.clone();
        async move {
            let found = deliveries(&mut client, webhook_id).await;
            (found.len() == count
                && found
                    .iter()
                    .all(|delivery| delivery.status == status as i32))
            .then_some(found)
        }
    })
    .await
}

/// Registers a direct server and decommissions it: one change of its status.
async fn register_and_decommission(client: &mut Client, name: &str) -> String {
    let id = register(client, direct_server(name)).await.server_id;
    client
        .decommission_server(proto::DecommissionServerRequest {
            server_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("DecommissionServer");
    id
}

#[test]
fn webhooks_are_created_read_listed_and_deleted_and_the_secret_is_shown_once() {
    block_on(async {
        let app = TestApp::start_with(webhook_options(&[])).await;
        let mut client = app.client();
        let url = "https://203.0.113.10/dbtrail?team=db";
        let created = create(
            &mut client,
            url,
            &[
                WebhookEvent::LostPosition,
                WebhookEvent::StreamStateChanged,
                WebhookEvent::LostPosition,
            ],
        )
        .await;
        let secret = created.signing_secret.clone().expect("the secret, once");
        assert!(
            secret.starts_with("whsec_") && secret.len() > 40,
            "{secret}"
        );
        assert_eq!(created.url, url);
        assert_eq!(
            created.events,
            [
                WebhookEvent::StreamStateChanged as i32,
                WebhookEvent::LostPosition as i32
            ],
            "each event once, in declaration order"
        );
        assert!(created.created_at.is_some());
        let id = created.webhook_id.clone();
        uuid::Uuid::parse_str(&id).expect("a UUID");

        let read = client
            .get_webhook(proto::GetWebhookRequest {
                webhook_id: id.clone(),
            })
            .await
            .expect("GetWebhook")
            .into_inner();
        assert_eq!(
            read,
            proto::Webhook {
                signing_secret: None,
                ..created.clone()
            }
        );
        // Stored sealed: the secret's text is nowhere in the row.
        let sql = app.db.connect().await;
        let row = sql
            .query_one(
                "SELECT secret_sealed, secret_key_id FROM webhooks WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .expect("the webhook's row");
        let sealed: Vec<u8> = row.get(0);
        let body = secret.trim_start_matches("whsec_").as_bytes();
        assert!(!sealed.windows(body.len()).any(|window| window == body));
        assert!(!row.get::<_, String>(1).is_empty());

        // Twenty at most; the list pages through them, oldest first, never with a secret.
        for index in 1..20 {
            create(
                &mut client,
                &format!("https://203.0.113.10/hook-{index}"),
                &[WebhookEvent::Decommissioned],
            )
            .await;
        }
        let status = create_error(
            &mut client,
            Some(webhook(
                "https://203.0.113.10/one-too-many",
                &[WebhookEvent::Decommissioned],
            )),
        )
        .await;
        assert_error(&status, Code::ResourceExhausted, "WEBHOOK_LIMIT_REACHED");
        let mut listed = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_webhooks(proto::ListWebhooksRequest {
                    page_size: 7,
                    page_token: page_token.clone(),
                })
                .await
                .expect("ListWebhooks")
                .into_inner();
            assert!(page.webhooks.len() <= 7);
            listed.extend(page.webhooks);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(listed.len(), 20);
        assert_eq!(listed[0].webhook_id, id, "oldest first");
        assert!(listed.iter().all(|hook| hook.signing_secret.is_none()));

        // Another tenant sees none of it, and has a limit of its own.
        let stranger = app.other_tenant("tenant-b").await;
        let mut other = app.client_with_key(&stranger.key);
        let status = expect_err(
            other
                .get_webhook(proto::GetWebhookRequest {
                    webhook_id: id.clone(),
                })
                .await,
        );
        assert_error(&status, Code::NotFound, "WEBHOOK_NOT_FOUND");
        let status = expect_err(
            other
                .delete_webhook(proto::DeleteWebhookRequest {
                    webhook_id: id.clone(),
                })
                .await,
        );
        assert_error(&status, Code::NotFound, "WEBHOOK_NOT_FOUND");
        let status = expect_err(
            other
                .list_webhook_deliveries(proto::ListWebhookDeliveriesRequest {
                    webhook_id: id.clone(),
                    ..Default::default()
                })
                .await,
        );
        assert_error(&status, Code::NotFound, "WEBHOOK_NOT_FOUND");
        let theirs = other
            .list_webhooks(proto::ListWebhooksRequest::default())
            .await
            .expect("ListWebhooks")
            .into_inner();
        assert!(theirs.webhooks.is_empty());
        let status = expect_err(
            other
                .list_webhooks(proto::ListWebhooksRequest {
                    page_size: 7,
                    page_token: client
                        .list_webhooks(proto::ListWebhooksRequest {
                            page_size: 7,
                            page_token: String::new(),
                        })
                        .await
                        .expect("ListWebhooks")
                        .into_inner()
                        .next_page_token,
                })
                .await,
        );
        assert_bad_request(&status, &["page_token"]);
        create(
            &mut other,
            "https://203.0.113.11/theirs",
            &[WebhookEvent::Decommissioned],
        )
        .await;

        // Deleted: gone, and gone again.
        client
            .delete_webhook(proto::DeleteWebhookRequest {
                webhook_id: id.clone(),
            })
            .await
            .expect("DeleteWebhook");
        for _ in 0..2 {
            let status = expect_err(
                client
                    .get_webhook(proto::GetWebhookRequest {
                        webhook_id: id.clone(),
                    })
                    .await,
            );
            assert_error(&status, Code::NotFound, "WEBHOOK_NOT_FOUND");
        }
        let status = expect_err(
            client
                .delete_webhook(proto::DeleteWebhookRequest {
                    webhook_id: id.clone(),
                })
                .await,
        );
        assert_error(&status, Code::NotFound, "WEBHOOK_NOT_FOUND");
        let status = expect_err(
            client
                .get_webhook(proto::GetWebhookRequest {
                    webhook_id: "nope".into(),
                })
                .await,
        );
        assert_bad_request(&status, &["webhook_id"]);
        app.shutdown().await;
    });
}

#[test]
fn http_urls_metadata_loopback_and_bad_events_are_invalid_argument() {
    block_on(async {
        // The defaults: https only, and the target policy of a production replica.
        let app = TestApp::start_with(ReplicaOptions {
            allow_loopback_targets: false,
            ..Default::default()
        })
        .await;
        let mut client = app.client();
        let events = [WebhookEvent::ServerStatusChanged];
        let refused = [
            ("http://203.0.113.10/hook", "--allow-http-webhooks"),
            ("https://169.254.169.254/latest/meta-data", DENIED),
            ("https://[fd00:ec2::254]/", DENIED),
            ("https://127.0.0.1:8443/hook", DENIED),
            ("https://localhost:8443/hook", "localhost resolves to"),
            ("https://user:secret@203.0.113.10/", "credentials"),
            ("https://203.0.113.10/#part", "fragment"),
            ("ftp://203.0.113.10/", "scheme"),
            ("not a url", "not a URL"),
            ("", "is required"),
        ];
        for (url, says) in refused {
            let status = create_error(&mut client, Some(webhook(url, &events))).await;
            assert_bad_request(&status, &["webhook.url"]);
            let description = &status
                .get_details_bad_request()
                .expect("a BadRequest")
                .field_violations[0]
                .description;
            assert!(description.contains(says), "{url}: {description}");
            assert!(!description.contains("secret"), "{description}");
        }
        let url = "https://203.0.113.10/hook";
        let status = create_error(&mut client, Some(webhook(url, &[]))).await;
        assert_bad_request(&status, &["webhook.events"]);
        let mut unknown = webhook(url, &events);
        unknown.events.push(0);
        unknown.events.push(42);
        let status = create_error(&mut client, Some(unknown)).await;
        assert_bad_request(&status, &["webhook.events[1]", "webhook.events[2]"]);
        let status = create_error(
            &mut client,
            Some(proto::Webhook {
                webhook_id: uuid::Uuid::new_v4().to_string(),
                signing_secret: Some("whsec_mine".into()),
                ..webhook(url, &events)
            }),
        )
        .await;
        assert_bad_request(&status, &["webhook.webhook_id", "webhook.signing_secret"]);
        assert_bad_request(&create_error(&mut client, None).await, &["webhook"]);
        let listed = client
            .list_webhooks(proto::ListWebhooksRequest::default())
            .await
            .expect("ListWebhooks")
            .into_inner();
        assert!(listed.webhooks.is_empty(), "nothing was created");
        app.shutdown().await;
    });
}

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
        let hook = create(
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
        let listed = settled(&client, &hook.webhook_id, 2, DeliveryStatus::Delivered).await;
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
        let hook = create(
            &mut client,
            &receiver.url("/flaky"),
            &[WebhookEvent::ServerStatusChanged],
        )
        .await;
        let secret = hook.signing_secret.expect("the secret");
        let first = register_and_decommission(&mut client, "first").await;
        let second = register_and_decommission(&mut client, "second").await;

        let listed = settled(&client, &hook.webhook_id, 2, DeliveryStatus::Delivered).await;
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
        let other = create(
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
        let slow = create(
            &mut client,
            &hanging.url("/slow"),
            &[WebhookEvent::Decommissioned],
        )
        .await;
        create(
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
        let listed = settled(&client, &slow.webhook_id, 1, DeliveryStatus::Delivered).await;
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
        let hook = create(
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
        let listed = settled(&survivor, &hook.webhook_id, 1, DeliveryStatus::Delivered).await;
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
        let dead = settled(&client, &id, 1, DeliveryStatus::Dead).await;
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
        let delivered = settled(&client, &id, 1, DeliveryStatus::Delivered).await;
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

/// The README's receiver, as written: the Python block of its "Webhooks" section.
fn readme_receiver() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("the README");
    let section = readme
        .split("\n## Webhooks\n")
        .nth(1)
        .expect("a Webhooks section");
    section
        .split("```python\n")
        .nth(1)
        .and_then(|block| block.split("\n```").next())
        .expect("a Python block in it")
        .to_owned()
}

/// `body` as a receiver would get it at `timestamp`, signed with `secret`.
fn signed_post(url: &str, secret: &str, timestamp: i64, body: &str) -> reqwest::RequestBuilder {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("a key");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    reqwest::Client::new()
        .post(url)
        .header("dbtrail-timestamp", timestamp.to_string())
        .header(
            "dbtrail-signature",
            format!("v1={}", hex::encode(mac.finalize().into_bytes())),
        )
        .body(body.to_owned())
}

#[test]
fn the_readme_receiver_takes_a_real_delivery_and_refuses_forged_and_old_ones() {
    block_on(async {
        let app = TestApp::start_with(webhook_options(&[])).await;
        let mut client = app.client();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/");
        let hook = create(&mut client, &url, &[WebhookEvent::ServerStatusChanged]).await;
        let secret = hook.signing_secret.expect("the secret");
        let code = readme_receiver().replace("((\"\", 9000)", &format!("((\"127.0.0.1\", {port})"));
        assert!(
            code.contains(&port.to_string()),
            "the receiver listens on 9000: {code}"
        );
        let mut receiver = tokio::process::Command::new("python3")
            .args(["-u", "-c", &code])
            .env("DBTRAIL_WEBHOOK_SECRET", &secret)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the README's receiver");
        wait_until("the receiver to listen", DELIVERY, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;

        register_and_decommission(&mut client, "readme-told").await;
        let delivered = settled(&client, &hook.webhook_id, 1, DeliveryStatus::Delivered).await;
        assert_eq!(delivered[0].last_response_code, Some(204));

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64;
        let body = r#"{"type": "server_status_changed", "server": {"name": "forged", "stream_state": null}}"#;
        let tampered = signed_post(&url, &secret, now, body)
            .body(body.replace("forged", "tampered"))
            .send()
            .await
            .expect("POST");
        assert_eq!(tampered.status(), 401, "a body that is not the signed one");
        let replayed = signed_post(&url, &secret, now - 3600, body)
            .send()
            .await
            .expect("POST");
        assert_eq!(replayed.status(), 401, "an hour-old timestamp");
        let genuine = signed_post(&url, &secret, now, body)
            .send()
            .await
            .expect("POST");
        assert_eq!(genuine.status(), 204);

        receiver.kill().await.expect("stop the receiver");
        let mut printed = String::new();
        use tokio::io::AsyncReadExt;
        receiver
            .stdout
            .take()
            .expect("its output")
            .read_to_string(&mut printed)
            .await
            .expect("what it printed");
        assert_eq!(
            printed.lines().collect::<Vec<_>>(),
            [
                "server_status_changed readme-told None",
                "server_status_changed forged None"
            ],
            "{printed}"
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
        let failures = create(
            &mut client,
            &receiver.url("/failures"),
            &[WebhookEvent::OnboardingFailed, WebhookEvent::Decommissioned],
        )
        .await;
        create(
            &mut client,
            &receiver.url("/statuses"),
            &[WebhookEvent::ServerStatusChanged],
        )
        .await;
        let stranger = app.other_tenant("tenant-b").await;
        create(
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

/// Every event type.
const EVERY_EVENT: [WebhookEvent; 5] = [
    WebhookEvent::ServerStatusChanged,
    WebhookEvent::StreamStateChanged,
    WebhookEvent::OnboardingFailed,
    WebhookEvent::LostPosition,
    WebhookEvent::Decommissioned,
];

/// CreateWebhook, RedeliverWebhook and DeleteWebhook are in the audit log once each, about the
/// webhook, with the URL and events created (never the secret); a refused one is recorded too.
#[test]
fn webhook_calls_are_in_the_audit_log_once_each_and_without_the_secret() {
    block_on(async {
        let app = TestApp::start_with(webhook_options(&[])).await;
        let mut client = app.client();
        let url = "https://203.0.113.10/audited";
        let created = create(&mut client, url, &[WebhookEvent::Decommissioned]).await;
        let id = created.webhook_id.clone();
        let secret = created.signing_secret.clone().expect("the secret, once");
        let unknown_delivery = uuid::Uuid::new_v4().to_string();
        let status = client
            .redeliver_webhook(proto::RedeliverWebhookRequest {
                webhook_id: id.clone(),
                delivery_id: unknown_delivery,
            })
            .await
            .expect_err("no such delivery");
        assert_error(&status, Code::NotFound, "DELIVERY_NOT_FOUND");
        client
            .delete_webhook(proto::DeleteWebhookRequest {
                webhook_id: id.clone(),
            })
            .await
            .expect("DeleteWebhook");

        let events = crate::audit::audit_events(&mut client, "").await;
        let of = |method: &str| -> Vec<&proto::AuditEvent> {
            events
                .iter()
                .filter(|event| event.method == method)
                .collect()
        };
        let [create_record] = of("CreateWebhook")[..] else {
            panic!("CreateWebhook once: {events:#?}")
        };
        assert_eq!(create_record.outcome, "OK");
        assert_eq!(create_record.resource, format!("webhooks/{id}"));
        assert_eq!(
            crate::audit::change(create_record, "url").1,
            serde_json::json!(url)
        );
        assert_eq!(
            crate::audit::change(create_record, "events").1,
            serde_json::json!(["decommissioned"])
        );
        let [refused] = of("RedeliverWebhook")[..] else {
            panic!("RedeliverWebhook once: {events:#?}")
        };
        assert_eq!(
            (refused.outcome.as_str(), refused.reason.as_str()),
            ("NOT_FOUND", "DELIVERY_NOT_FOUND")
        );
        let [delete_record] = of("DeleteWebhook")[..] else {
            panic!("DeleteWebhook once: {events:#?}")
        };
        assert_eq!(delete_record.outcome, "OK");
        assert_eq!(delete_record.resource, format!("webhooks/{id}"));
        let records = crate::audit::stored_records(&app.db).await;
        let body = secret.trim_start_matches("whsec_");
        assert!(
            records.iter().all(|(_, line)| !line.contains(body)),
            "the secret is in an audit record"
        );
        app.shutdown().await;
    });
}
