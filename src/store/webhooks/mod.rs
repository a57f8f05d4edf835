//! Webhooks in SQL, the API's side: a tenant's webhooks (created under its limit, read, listed,
//! deleted with their deliveries) and their deliveries (listed, redelivered by hand). Each write
//! is one transaction. The outbox the delivery workers claim from is `outbox`; the events
//! themselves are written by the database's trigger on `servers` (migration 000013).

mod outbox;

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, Bytea, Int4, Int8, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

pub use outbox::{Attempt, DeliveryClaim, Finished, OutboxCensus};

use super::{Connection, Store, StoreError, WEBHOOKS_CHANNEL, WriteError, audit, prepared::notify};
use crate::domain::{
    Refused, ServerId, TenantId,
    audit::AuditEvent,
    server::Sealed,
    webhook::{
        Delivery, DeliveryId, DeliveryStatus, EventType, Webhook, WebhookId, WebhookSpec,
        WebhookUrl,
    },
};

/// Where a page of ListWebhooks starts: after this (created_at, id), oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

#[derive(QueryableByName)]
struct WebhookRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    tenant_id: Uuid,
    #[diesel(sql_type = Text)]
    url: String,
    #[diesel(sql_type = Array<Text>)]
    events: Vec<String>,
    #[diesel(sql_type = Bytea)]
    secret_sealed: Vec<u8>,
    #[diesel(sql_type = Text)]
    secret_key_id: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

/// The columns of a [`WebhookRow`].
const WEBHOOK_COLUMNS: &str =
    "id, tenant_id, url, events, secret_sealed, secret_key_id, created_at";

impl TryFrom<WebhookRow> for Webhook {
    type Error = StoreError;

    fn try_from(row: WebhookRow) -> Result<Webhook, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("webhook {}: {what}", row.id));
        let url = WebhookUrl::stored(&row.url).ok_or_else(|| corrupt("url"))?;
        let events = row
            .events
            .iter()
            .map(|event| EventType::parse(event).ok_or_else(|| corrupt("events")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Webhook {
            id: WebhookId::from_uuid(row.id),
            tenant_id: TenantId::from_uuid(row.tenant_id),
            spec: WebhookSpec { url, events },
            secret: Sealed {
                key_id: row.secret_key_id,
                ciphertext: row.secret_sealed,
            },
            created_at: row.created_at,
        })
    }
}

#[derive(QueryableByName)]
struct DeliveryRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    webhook_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    event_id: Uuid,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = SqlUuid)]
    server_id: Uuid,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Int4)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Int4>)]
    last_response_code: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    next_attempt_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_attempt_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    delivered_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Int8)]
    seq: i64,
}

/// A delivery with its event, as [`DeliveryRow`] reads it (`d` the delivery, `e` its event).
const DELIVERY_SELECT: &str = "SELECT d.id, d.webhook_id, d.event_id, e.type AS event_type, \
         e.server_id, d.status, d.attempts, d.last_response_code, d.last_error, \
         d.next_attempt_at, d.last_attempt_at, d.delivered_at, d.created_at, d.seq \
     FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id";

impl TryFrom<DeliveryRow> for Delivery {
    type Error = StoreError;

    fn try_from(row: DeliveryRow) -> Result<Delivery, StoreError> {
        let corrupt = |what: &str, value: &str| {
            StoreError::Corrupt(format!("webhook delivery {}: {what} {value:?}", row.id))
        };
        let status =
            DeliveryStatus::parse(&row.status).ok_or_else(|| corrupt("status", &row.status))?;
        let event_type = EventType::parse(&row.event_type)
            .ok_or_else(|| corrupt("event type", &row.event_type))?;
        Ok(Delivery {
            id: DeliveryId::from_uuid(row.id),
            webhook_id: WebhookId::from_uuid(row.webhook_id),
            event_id: row.event_id,
            event_type,
            server_id: ServerId::from_uuid(row.server_id),
            status,
            attempts: row.attempts,
            last_response_code: row.last_response_code,
            last_error: row.last_error,
            next_attempt_at: (status == DeliveryStatus::Pending).then_some(row.next_attempt_at),
            last_attempt_at: row.last_attempt_at,
            delivered_at: row.delivered_at,
            created_at: row.created_at,
        })
    }
}

/// Serialises the creates of one tenant's webhooks, so its count cannot pass the limit.
async fn lock_tenant_webhooks(
    connection: &mut Connection,
    tenant: TenantId,
) -> Result<(), StoreError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended('webhooks:' || $1::text, 0))")
        .bind::<SqlUuid, _>(tenant.uuid())
        .execute(connection)
        .await?;
    Ok(())
}

impl Store {
    /// Stores a new webhook, unless its tenant already has `limit`, with the call's audit
    /// record.
    pub async fn create_webhook(
        &self,
        webhook: &Webhook,
        limit: usize,
        audit: &AuditEvent,
    ) -> Result<(), WriteError> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = Int8)]
            webhooks: i64,
        }
        let mut connection = self.connection().await?;
        let events: Vec<&str> = webhook
            .spec
            .events
            .iter()
            .map(|event| event.as_str())
            .collect();
        connection
            .transaction(async move |connection| -> Result<(), WriteError> {
                lock_tenant_webhooks(connection, webhook.tenant_id).await?;
                let count: Count = diesel::sql_query(
                    "SELECT count(*) AS webhooks FROM webhooks WHERE tenant_id = $1",
                )
                .bind::<SqlUuid, _>(webhook.tenant_id.uuid())
                .get_result(connection)
                .await?;
                if usize::try_from(count.webhooks).unwrap_or(usize::MAX) >= limit {
                    return Err(Refused::WebhookLimitReached(limit).into());
                }
                diesel::sql_query(
                    "INSERT INTO webhooks (id, tenant_id, url, events, secret_sealed, \
                         secret_key_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind::<SqlUuid, _>(webhook.id.uuid())
                .bind::<SqlUuid, _>(webhook.tenant_id.uuid())
                .bind::<Text, _>(webhook.spec.url.as_str())
                .bind::<Array<Text>, _>(&events)
                .bind::<Bytea, _>(&webhook.secret.ciphertext)
                .bind::<Text, _>(&webhook.secret.key_id)
                .bind::<Timestamptz, _>(webhook.created_at)
                .execute(connection)
                .await?;
                audit::record(connection, audit).await?;
                Ok(())
            })
            .await
    }

    /// The tenant's webhook `id` (WebhookNotFound for another tenant's).
    pub async fn webhook(&self, tenant: TenantId, id: WebhookId) -> Result<Webhook, StoreError> {
        let mut connection = self.connection().await?;
        let row: Option<WebhookRow> = diesel::sql_query(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND tenant_id = $2"
        ))
        .bind::<SqlUuid, _>(id.uuid())
        .bind::<SqlUuid, _>(tenant.uuid())
        .get_result(&mut connection)
        .await
        .optional()?;
        row.ok_or(StoreError::WebhookNotFound)?.try_into()
    }

    /// Up to `limit` of the tenant's webhooks after `after`, oldest first, and whether more
    /// follow.
    pub async fn list_webhooks(
        &self,
        tenant: TenantId,
        after: Option<WebhookCursor>,
        limit: usize,
    ) -> Result<(Vec<Webhook>, bool), StoreError> {
        let mut connection = self.connection().await?;
        let rows: Vec<WebhookRow> = diesel::sql_query(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 \
               AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3)) \
             ORDER BY created_at, id LIMIT $4"
        ))
        .bind::<SqlUuid, _>(tenant.uuid())
        .bind::<Nullable<Timestamptz>, _>(after.map(|cursor| cursor.created_at))
        .bind::<SqlUuid, _>(after.map(|cursor| cursor.id).unwrap_or_default())
        .bind::<Int8, _>(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1))
        .load(&mut connection)
        .await?;
        let more = rows.len() > limit;
        let webhooks = rows
            .into_iter()
            .take(limit)
            .map(Webhook::try_from)
            .collect::<Result<_, _>>()?;
        Ok((webhooks, more))
    }

    /// Deletes the tenant's webhook `id` and its deliveries, pending ones included, with the
    /// call's audit record; the webhook as it was.
    pub async fn delete_webhook(
        &self,
        tenant: TenantId,
        id: WebhookId,
        audit: &AuditEvent,
    ) -> Result<Webhook, StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| {
                let row: Option<WebhookRow> = diesel::sql_query(format!(
                    "DELETE FROM webhooks WHERE id = $1 AND tenant_id = $2 \
                     RETURNING {WEBHOOK_COLUMNS}"
                ))
                .bind::<SqlUuid, _>(id.uuid())
                .bind::<SqlUuid, _>(tenant.uuid())
                .get_result(connection)
                .await
                .optional()?;
                let deleted = row.ok_or(StoreError::WebhookNotFound)?.try_into()?;
                audit::record(connection, audit).await?;
                Ok(deleted)
            })
            .await
    }

    /// Up to `limit` deliveries of the tenant's webhook `webhook`, newest first, before the
    /// one numbered `before`; and the number to continue before when more follow.
    pub async fn list_deliveries(
        &self,
        tenant: TenantId,
        webhook: WebhookId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<Delivery>, Option<i64>), StoreError> {
        self.webhook(tenant, webhook).await?;
        let mut connection = self.connection().await?;
        let rows: Vec<DeliveryRow> = diesel::sql_query(format!(
            "{DELIVERY_SELECT} WHERE d.webhook_id = $1 AND ($2::int8 IS NULL OR d.seq < $2) \
             ORDER BY d.seq DESC LIMIT $3"
        ))
        .bind::<SqlUuid, _>(webhook.uuid())
        .bind::<Nullable<Int8>, _>(before)
        .bind::<Int8, _>(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1))
        .load(&mut connection)
        .await?;
        let next = (rows.len() > limit)
            .then(|| rows.get(limit.saturating_sub(1)).map(|row| row.seq))
            .flatten();
        let deliveries = rows
            .into_iter()
            .take(limit)
            .map(Delivery::try_from)
            .collect::<Result<_, _>>()?;
        Ok((deliveries, next))
    }

    /// Sends a delivery of the tenant's webhook again, by hand: pending and due now, with a new
    /// retry window when it had finished (delivered or dead); the replicas are woken.
    pub async fn redeliver(
        &self,
        tenant: TenantId,
        (webhook, delivery): (WebhookId, DeliveryId),
        audit: &AuditEvent,
    ) -> Result<Delivery, StoreError> {
        let mut connection = self.connection().await?;
        connection
            .transaction(async move |connection| {
                let updated = diesel::sql_query(
                    "UPDATE webhook_deliveries d SET status = 'pending', next_attempt_at = now(), \
                         retrying_since = CASE WHEN d.status = 'pending' THEN d.retrying_since \
                             ELSE now() END \
                     FROM webhooks w \
                     WHERE d.id = $1 AND d.webhook_id = $2 AND w.id = d.webhook_id \
                       AND w.tenant_id = $3",
                )
                .bind::<SqlUuid, _>(delivery.uuid())
                .bind::<SqlUuid, _>(webhook.uuid())
                .bind::<SqlUuid, _>(tenant.uuid())
                .execute(connection)
                .await?;
                if updated == 0 {
                    // Which of the two the caller named wrong.
                    let exists: Option<WebhookRow> = diesel::sql_query(format!(
                        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND tenant_id = $2"
                    ))
                    .bind::<SqlUuid, _>(webhook.uuid())
                    .bind::<SqlUuid, _>(tenant.uuid())
                    .get_result(connection)
                    .await
                    .optional()?;
                    return Err(match exists {
                        Some(_) => StoreError::DeliveryNotFound,
                        None => StoreError::WebhookNotFound,
                    });
                }
                notify(connection, WEBHOOKS_CHANNEL, String::new()).await?;
                audit::record(connection, audit).await?;
                let row: DeliveryRow =
                    diesel::sql_query(format!("{DELIVERY_SELECT} WHERE d.id = $1"))
                        .bind::<SqlUuid, _>(delivery.uuid())
                        .get_result(connection)
                        .await?;
                row.try_into()
            })
            .await
    }
}
