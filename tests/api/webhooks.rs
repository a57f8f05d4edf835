//! Webhooks (docs/api.md, "Webhooks"): the calls (create with the secret shown once, read, list,
//! delete, tenant isolation, the limit), the URL rules and the target policy, the audit log's
//! records of them, and the README's receiver run as written against a real delivery. Delivery
//! itself is webhook_delivery.rs.

use crate::common::*;
use dbtrail_servers::proto::{self, DeliveryStatus, WebhookEvent};
use tonic::Code;
use tonic_types::StatusExt;

#[test]
fn webhooks_are_created_read_listed_and_deleted_and_the_secret_is_shown_once() {
    block_on(async {
        let app = TestApp::start_with(webhook_options(&[])).await;
        let mut client = app.client();
        let url = "https://203.0.113.10/dbtrail?team=db";
        let created = create_webhook(
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
            create_webhook(
                &mut client,
                &format!("https://203.0.113.10/hook-{index}"),
                &[WebhookEvent::Decommissioned],
            )
            .await;
        }
        let status = create_webhook_error(
            &mut client,
            Some(webhook_input(
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
        create_webhook(
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
            let status = create_webhook_error(&mut client, Some(webhook_input(url, &events))).await;
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
        let status = create_webhook_error(&mut client, Some(webhook_input(url, &[]))).await;
        assert_bad_request(&status, &["webhook.events"]);
        let mut unknown = webhook_input(url, &events);
        unknown.events.push(0);
        unknown.events.push(42);
        let status = create_webhook_error(&mut client, Some(unknown)).await;
        assert_bad_request(&status, &["webhook.events[1]", "webhook.events[2]"]);
        let status = create_webhook_error(
            &mut client,
            Some(proto::Webhook {
                webhook_id: uuid::Uuid::new_v4().to_string(),
                signing_secret: Some("whsec_mine".into()),
                ..webhook_input(url, &events)
            }),
        )
        .await;
        assert_bad_request(&status, &["webhook.webhook_id", "webhook.signing_secret"]);
        assert_bad_request(&create_webhook_error(&mut client, None).await, &["webhook"]);
        let listed = client
            .list_webhooks(proto::ListWebhooksRequest::default())
            .await
            .expect("ListWebhooks")
            .into_inner();
        assert!(listed.webhooks.is_empty(), "nothing was created");
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
        let hook = create_webhook(&mut client, &url, &[WebhookEvent::ServerStatusChanged]).await;
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
        let delivered =
            settled_deliveries(&client, &hook.webhook_id, 1, DeliveryStatus::Delivered).await;
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

/// CreateWebhook, RedeliverWebhook and DeleteWebhook are in the audit log once each, about the
/// webhook, with the URL and events created (never the secret); a refused one is recorded too.
#[test]
fn webhook_calls_are_in_the_audit_log_once_each_and_without_the_secret() {
    block_on(async {
        let app = TestApp::start_with(webhook_options(&[])).await;
        let mut client = app.client();
        let url = "https://203.0.113.10/audited";
        let created = create_webhook(&mut client, url, &[WebhookEvent::Decommissioned]).await;
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
