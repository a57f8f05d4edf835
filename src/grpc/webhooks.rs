//! The webhook calls: CreateWebhook (the URL held to the target policy, the secret generated,
//! sealed and answered once), GetWebhook, ListWebhooks, DeleteWebhook, ListWebhookDeliveries and
//! RedeliverWebhook. Each converts, calls the store and converts back; the deliveries themselves
//! are the workers' (`crate::webhooks`).

use serde_json::Value as Json;
use tonic::Request;

use super::{
    audit::audited,
    convert::{delivery_to_proto, webhook_events_from_proto, webhook_to_proto},
    errors::ApiError,
    paging::{PageSizes, not_issued, query_digest},
    service::{ServersApi, principal},
};
use crate::{
    domain::{
        Violations,
        audit::{self, AuditEvent, Outcome},
        server::Secret,
        webhook::{self, DeliveryId, MAX_WEBHOOKS_PER_TENANT, Webhook, WebhookId, WebhookSpec},
    },
    proto,
    source::connection,
    store::WebhookCursor,
};

const WEBHOOK_PAGES: PageSizes = PageSizes {
    default: 20,
    max: 100,
};

const DELIVERY_PAGES: PageSizes = PageSizes {
    default: 50,
    max: 500,
};

/// Where a ListWebhooks page starts, as its token carries it.
#[derive(serde::Serialize, serde::Deserialize)]
struct WebhooksCursor {
    created_at_micros: i64,
    id: uuid::Uuid,
}

/// Where a ListWebhookDeliveries page starts: before this delivery's number.
#[derive(serde::Serialize, serde::Deserialize)]
struct DeliveriesCursor {
    before: i64,
}

/// A webhook id from a request's `field`, recorded as a violation when it is not one.
fn webhook_id(text: &str, field: &str, violations: &mut Violations) -> Option<WebhookId> {
    let id = WebhookId::parse(text);
    if id.is_none() {
        violations.add(field, id_problem(text, "webhook"));
    }
    id
}

/// Why `text` is not an id of a `what`.
fn id_problem(text: &str, what: &str) -> String {
    if text.is_empty() {
        "is required".to_owned()
    } else {
        format!("{text:?} is not a {what} id (a UUID)")
    }
}

/// The one webhook id of a request.
fn parse_webhook_id(text: &str) -> Result<WebhookId, ApiError> {
    let mut violations = Violations::default();
    let id = webhook_id(text, "webhook_id", &mut violations);
    violations.into_result()?;
    id.ok_or_else(|| ApiError::invalid("webhook_id", "is required"))
}

/// The settings of a webhook to create, every problem of the request at once.
fn creation(input: Option<&proto::Webhook>, allow_http: bool) -> Result<WebhookSpec, ApiError> {
    let input = input.ok_or_else(|| ApiError::invalid("webhook", "is required"))?;
    let mut violations = Violations::default();
    if !input.webhook_id.is_empty() {
        violations.add(
            "webhook.webhook_id",
            "is assigned by the service; leave it empty",
        );
    }
    if input.signing_secret.is_some() {
        violations.add(
            "webhook.signing_secret",
            "is output only: the service generates the secret and answers it once",
        );
    }
    if input.created_at.is_some() {
        violations.add("webhook.created_at", "is output only and cannot be set");
    }
    let events = webhook_events_from_proto(&input.events);
    Ok(violations.and(WebhookSpec::new(
        &input.url, &events, allow_http, "webhook.",
    ))?)
}

impl ServersApi {
    /// CreateWebhook: the webhook with its secret, shown this once.
    pub(super) async fn create_webhook(
        &self,
        request: Request<proto::CreateWebhookRequest>,
    ) -> Result<proto::Webhook, ApiError> {
        let principal = principal(&request)?;
        let call = audited(&request)?;
        let spec = creation(
            request.get_ref().webhook.as_ref(),
            self.allow_http_webhooks(),
        )?;
        let resolved = connection::lookup(spec.url.host()).await;
        webhook::check_target(&self.agent().targets, &spec.url, &resolved, "webhook.url")?;
        let id = WebhookId::generate();
        let secret = webhook::generate_secret();
        let sealed = self
            .secrets()
            .seal(&Secret(secret.clone()), &webhook::secret_context(id));
        let created = Webhook {
            id,
            tenant_id: principal.tenant_id,
            spec,
            secret: sealed,
            created_at: crate::domain::now(),
        };
        let events: Vec<&str> = created
            .spec
            .events
            .iter()
            .map(|event| event.as_str())
            .collect();
        let changes = audit::created(vec![
            ("url", Json::from(created.spec.url.as_str())),
            ("events", Json::from(events)),
        ]);
        let record = AuditEvent::new(call.actor().clone(), None, changes, Outcome::ok())
            .about(format!("webhooks/{id}"));
        self.store()
            .create_webhook(&created, MAX_WEBHOOKS_PER_TENANT, &record)
            .await?;
        Ok(proto::Webhook {
            signing_secret: Some(secret),
            ..webhook_to_proto(&created)
        })
    }

    /// GetWebhook.
    pub(super) async fn get_webhook(
        &self,
        request: Request<proto::GetWebhookRequest>,
    ) -> Result<proto::Webhook, ApiError> {
        let principal = principal(&request)?;
        let id = parse_webhook_id(&request.get_ref().webhook_id)?;
        let found = self.store().webhook(principal.tenant_id, id).await?;
        Ok(webhook_to_proto(&found))
    }

    /// ListWebhooks: a keyset page, oldest first.
    pub(super) async fn list_webhooks(
        &self,
        request: Request<proto::ListWebhooksRequest>,
    ) -> Result<proto::ListWebhooksResponse, ApiError> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let mut violations = Violations::default();
        let page_size = WEBHOOK_PAGES.of(request.page_size, &mut violations);
        violations.into_result()?;
        let digest = query_digest(&["webhooks", &principal.tenant_id.uuid().to_string()]);
        let cursor = self
            .tokens()
            .decode::<WebhooksCursor>(&request.page_token, &digest, "another tenant")?
            .map(|cursor| {
                let created_at = chrono::DateTime::from_timestamp_micros(cursor.created_at_micros)
                    .ok_or_else(not_issued)?;
                Ok::<_, ApiError>(WebhookCursor {
                    created_at,
                    id: cursor.id,
                })
            })
            .transpose()?;
        let (webhooks, more) = self
            .store()
            .list_webhooks(principal.tenant_id, cursor, page_size)
            .await?;
        let next_page_token = match (more, webhooks.last()) {
            (true, Some(last)) => self.tokens().encode(
                WebhooksCursor {
                    created_at_micros: last.created_at.timestamp_micros(),
                    id: last.id.uuid(),
                },
                &digest,
            ),
            _ => String::new(),
        };
        Ok(proto::ListWebhooksResponse {
            webhooks: webhooks.iter().map(webhook_to_proto).collect(),
            next_page_token,
        })
    }

    /// DeleteWebhook: the webhook and its deliveries go.
    pub(super) async fn delete_webhook(
        &self,
        request: Request<proto::DeleteWebhookRequest>,
    ) -> Result<(), ApiError> {
        let principal = principal(&request)?;
        let call = audited(&request)?;
        let id = parse_webhook_id(&request.get_ref().webhook_id)?;
        let record = AuditEvent::new(call.actor().clone(), None, Vec::new(), Outcome::ok())
            .about(format!("webhooks/{id}"));
        self.store()
            .delete_webhook(principal.tenant_id, id, &record)
            .await?;
        Ok(())
    }

    /// ListWebhookDeliveries: a keyset page, newest first.
    pub(super) async fn list_webhook_deliveries(
        &self,
        request: Request<proto::ListWebhookDeliveriesRequest>,
    ) -> Result<proto::ListWebhookDeliveriesResponse, ApiError> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let mut violations = Violations::default();
        let id = webhook_id(&request.webhook_id, "webhook_id", &mut violations);
        let page_size = DELIVERY_PAGES.of(request.page_size, &mut violations);
        violations.into_result()?;
        let id = id.ok_or_else(|| ApiError::invalid("webhook_id", "is required"))?;
        let tenant = principal.tenant_id.uuid().to_string();
        let digest = query_digest(&["webhook deliveries", &tenant, &id.to_string()]);
        let before = self
            .tokens()
            .decode::<DeliveriesCursor>(
                &request.page_token,
                &digest,
                "another webhook, or another tenant",
            )?
            .map(|cursor| cursor.before);
        let (deliveries, next) = self
            .store()
            .list_deliveries(principal.tenant_id, id, before, page_size)
            .await?;
        let next_page_token = next
            .map(|before| self.tokens().encode(DeliveriesCursor { before }, &digest))
            .unwrap_or_default();
        Ok(proto::ListWebhookDeliveriesResponse {
            deliveries: deliveries.iter().map(delivery_to_proto).collect(),
            next_page_token,
        })
    }

    /// RedeliverWebhook: the delivery, pending and due now.
    pub(super) async fn redeliver_webhook(
        &self,
        request: Request<proto::RedeliverWebhookRequest>,
    ) -> Result<proto::WebhookDelivery, ApiError> {
        let principal = principal(&request)?;
        let call = audited(&request)?;
        let request = request.get_ref();
        let mut violations = Violations::default();
        let webhook = webhook_id(&request.webhook_id, "webhook_id", &mut violations);
        let delivery = DeliveryId::parse(&request.delivery_id);
        if delivery.is_none() {
            violations.add("delivery_id", id_problem(&request.delivery_id, "delivery"));
        }
        violations.into_result()?;
        let (Some(webhook), Some(delivery)) = (webhook, delivery) else {
            return Err(ApiError::invalid("webhook_id", "is required"));
        };
        let record = AuditEvent::new(call.actor().clone(), None, Vec::new(), Outcome::ok())
            .about(format!("webhooks/{webhook}/deliveries/{delivery}"));
        let redelivered = self
            .store()
            .redeliver(principal.tenant_id, (webhook, delivery), &record)
            .await?;
        Ok(delivery_to_proto(&redelivered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_only_fields_and_bad_input_are_reported_together() {
        let input = proto::Webhook {
            webhook_id: "x".into(),
            url: "http://hooks.example.com/".into(),
            events: vec![0, 99],
            signing_secret: Some("whsec_mine".into()),
            created_at: None,
        };
        let Err(ApiError::Invalid(violations)) = creation(Some(&input), false) else {
            panic!("accepted");
        };
        let fields: Vec<&str> = violations
            .0
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "webhook.webhook_id",
                "webhook.signing_secret",
                "webhook.url",
                "webhook.events[0]",
                "webhook.events[1]"
            ]
        );
        assert!(creation(None, false).is_err());
    }
}
