//! What the webhook tests share (tests/api/webhooks.rs, webhook_delivery.rs): a replica that may
//! deliver to a test's http receiver, creating webhooks, and reading their deliveries.

use dbtrail_servers::proto::{self, DeliveryStatus, WebhookDelivery, WebhookEvent};

use super::*;

/// How long a delivery may take to arrive.
pub const DELIVERY: Duration = Duration::from_secs(30);

/// Options of a replica that may deliver to the test's http receiver on 127.0.0.1.
pub fn webhook_options(extra: &[&str]) -> ReplicaOptions {
    let mut options = ReplicaOptions::default();
    options.extra_args.push("--allow-http-webhooks".into());
    options
        .extra_args
        .extend(extra.iter().map(|arg| arg.to_string()));
    options
}

/// A webhook to create: `url` and `events`.
pub fn webhook_input(url: &str, events: &[WebhookEvent]) -> proto::Webhook {
    proto::Webhook {
        url: url.to_owned(),
        events: events.iter().map(|event| *event as i32).collect(),
        ..Default::default()
    }
}

/// Creates a webhook; its answer, with the secret.
pub async fn create_webhook(
    client: &mut Client,
    url: &str,
    events: &[WebhookEvent],
) -> proto::Webhook {
    client
        .create_webhook(proto::CreateWebhookRequest {
            webhook: Some(webhook_input(url, events)),
        })
        .await
        .unwrap_or_else(|status| panic!("CreateWebhook {url}: {status:?}"))
        .into_inner()
}

/// CreateWebhook's refusal of `input`.
pub async fn create_webhook_error(
    client: &mut Client,
    input: Option<proto::Webhook>,
) -> tonic::Status {
    expect_err(
        client
            .create_webhook(proto::CreateWebhookRequest { webhook: input })
            .await,
    )
}

/// Every delivery of the webhook, newest first.
pub async fn webhook_deliveries(client: &mut Client, webhook_id: &str) -> Vec<WebhookDelivery> {
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
pub async fn settled_deliveries(
    client: &Client,
    webhook_id: &str,
    count: usize,
    status: DeliveryStatus,
) -> Vec<WebhookDelivery> {
    let what = format!("{count} deliveries of {webhook_id} to be {status:?}");
    wait_for(&what, DELIVERY, || {
        let mut client = client.clone();
        async move {
            let found = webhook_deliveries(&mut client, webhook_id).await;
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
pub async fn register_and_decommission(client: &mut Client, name: &str) -> String {
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

/// Every event type.
pub const EVERY_EVENT: [WebhookEvent; 5] = [
    WebhookEvent::ServerStatusChanged,
    WebhookEvent::StreamStateChanged,
    WebhookEvent::OnboardingFailed,
    WebhookEvent::LostPosition,
    WebhookEvent::Decommissioned,
];
