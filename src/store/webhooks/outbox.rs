//! The webhook outbox in SQL, the delivery workers' side: claims of the deliveries at the head
//! of their webhook's queue under a lease (owner, expiry, epoch, like the engine's), each
//! attempt's outcome written fenced by that lease, the outbox's depth and age for the metrics,
//! and the pruning of finished deliveries past retention.
//!
//! A webhook's deliveries go out one at a time, in the order of their changes: only the first
//! pending delivery of a webhook (by position, then seq) is ever claimed, so a later one waits
//! until it is delivered or dead, and at most one attempt per webhook is in flight anywhere.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{
        Array, Bool, Bytea, Double, Int4, Int8, Interval, Nullable, Text, Timestamptz,
        Uuid as SqlUuid,
    },
};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::super::{Store, StoreError, interval};
use crate::domain::{
    server::Sealed,
    webhook::{DeliveryId, WebhookId},
};

/// A delivery claimed for one attempt: what sending it needs, and the lease that fences the
/// outcome's write.
#[derive(Debug, Clone, QueryableByName)]
pub struct DeliveryClaim {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    webhook_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub owner: Uuid,
    #[diesel(sql_type = Int8)]
    pub epoch: i64,
    /// This attempt's number, from 1.
    #[diesel(sql_type = Int4)]
    pub attempts: i32,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Bytea)]
    secret_sealed: Vec<u8>,
    #[diesel(sql_type = Text)]
    secret_key_id: String,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    /// The event's body as stored (a JSON object), without the delivery's ids.
    #[diesel(sql_type = Text)]
    pub payload: String,
}

impl DeliveryClaim {
    /// The delivery.
    pub fn id(&self) -> DeliveryId {
        DeliveryId::from_uuid(self.id)
    }

    /// Its webhook.
    pub fn webhook_id(&self) -> WebhookId {
        WebhookId::from_uuid(self.webhook_id)
    }

    /// The webhook's sealed signing secret.
    pub fn secret(&self) -> Sealed {
        Sealed {
            key_id: self.secret_key_id.clone(),
            ciphertext: self.secret_sealed.clone(),
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered { code: i32 },
    /// Anything else: another code, a timeout, no connection. Tried again after `retry_in`,
    /// unless that is past the retry `window`, which makes the delivery dead.
    Failed {
        code: Option<i32>,
        error: String,
        retry_in: Duration,
        window: Duration,
    },
}

/// Where a delivery stands after an attempt's outcome was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Delivered,
    /// Pending, due again at this time.
    Retrying(DateTime<Utc>),
    Dead,
    /// The lease was taken over (or the webhook deleted): nothing was written.
    Fenced,
}

/// The outbox at a glance, for the metrics (no label a tenant chooses).
#[derive(Debug, Clone, Copy, Default, PartialEq, QueryableByName)]
pub struct OutboxCensus {
    /// Deliveries pending, due or not.
    #[diesel(sql_type = Int8)]
    pub depth: i64,
    /// Seconds since the oldest pending delivery's event; 0 when none is pending.
    #[diesel(sql_type = Double)]
    pub oldest_seconds: f64,
}

/// The columns of a claim, from `claimed c` (the claimed rows' id, webhook_id, event_id,
/// lease_owner, lease_epoch and attempts) joined to its webhook `w` and event `e`.
const CLAIM_COLUMNS: &str = "c.id, c.webhook_id, c.lease_owner AS owner, c.lease_epoch AS epoch, \
     c.attempts, w.url, w.secret_sealed, w.secret_key_id, e.type AS event_type, \
     e.payload::text AS payload";

/// Takes the rows of `locked` (re-checked after the lock: still pending, the lease free or
/// expired) for owner `$1` for `$2`, one attempt more each.
const TAKE_LOCKED: &str = "claimed AS ( \
         UPDATE webhook_deliveries d SET lease_owner = $1, \
             lease_expires_at = now() + $2::interval, lease_epoch = d.lease_epoch + 1, \
             attempts = d.attempts + 1, last_attempt_at = now() \
         FROM locked WHERE d.id = locked.id AND d.status = 'pending' \
           AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now()) \
         RETURNING d.id, d.webhook_id, d.event_id, d.lease_owner, d.lease_epoch, d.attempts)";

/// The heads of webhook queues that are due and not leased (or the lease expired), but for the
/// webhooks in `$4` (those this replica works on), oldest due first, up to `$3`; the rows
/// another replica is claiming at the same moment are skipped.
fn claim_heads() -> String {
    format!(
        "WITH heads AS ( \
             SELECT head.id FROM webhooks w CROSS JOIN LATERAL ( \
                 SELECT d.id, d.next_attempt_at, d.lease_expires_at FROM webhook_deliveries d \
                 WHERE d.webhook_id = w.id AND d.status = 'pending' \
                 ORDER BY d.position, d.seq LIMIT 1) head \
             WHERE head.next_attempt_at <= now() \
               AND (head.lease_expires_at IS NULL OR head.lease_expires_at < now()) \
               AND NOT (w.id = ANY ($4)) \
             ORDER BY head.next_attempt_at LIMIT $3), \
         locked AS ( \
             SELECT d.id FROM webhook_deliveries d WHERE d.id IN (SELECT id FROM heads) \
             FOR UPDATE SKIP LOCKED), \
         {TAKE_LOCKED} \
         SELECT {CLAIM_COLUMNS} FROM claimed c JOIN webhooks w ON w.id = c.webhook_id \
             JOIN webhook_events e ON e.id = c.event_id"
    )
}

/// An attempt's outcome written, fenced by the lease (`$3`, `$4`, `$5`), and, when `$11` asks and
/// the delivery is done with (delivered or dead), the next delivery of its webhook claimed in
/// the same statement: the first pending one after it, if it is due and free. One commit per
/// delivery, and the order kept: a later delivery is never taken while an earlier one waits.
fn finish_and_claim_next() -> String {
    format!(
        "WITH done AS ( \
             UPDATE webhook_deliveries SET \
                 status = CASE WHEN $6 THEN 'delivered' \
                     WHEN now() + $7::interval > retrying_since + $8::interval THEN 'dead' \
                     ELSE 'pending' END, \
                 delivered_at = CASE WHEN $6 THEN now() ELSE delivered_at END, \
                 next_attempt_at = CASE WHEN $6 THEN next_attempt_at \
                     ELSE now() + $7::interval END, \
                 last_response_code = $9, last_error = $10, lease_owner = NULL, \
                 lease_expires_at = NULL \
             WHERE id = $3 AND lease_owner = $4 AND lease_epoch = $5 \
             RETURNING webhook_id, status, next_attempt_at), \
         head AS ( \
             SELECT d.id, d.next_attempt_at, d.lease_expires_at \
             FROM webhook_deliveries d JOIN done ON d.webhook_id = done.webhook_id \
             WHERE $11 AND done.status <> 'pending' AND d.status = 'pending' AND d.id <> $3 \
             ORDER BY d.position, d.seq LIMIT 1), \
         locked AS ( \
             SELECT d.id FROM webhook_deliveries d JOIN head ON d.id = head.id \
             WHERE head.next_attempt_at <= now() \
               AND (head.lease_expires_at IS NULL OR head.lease_expires_at < now()) \
             FOR UPDATE OF d SKIP LOCKED), \
         {TAKE_LOCKED} \
         SELECT done.status AS finished, done.next_attempt_at AS due, next.* FROM done \
         LEFT JOIN (SELECT {CLAIM_COLUMNS} FROM claimed c \
             JOIN webhooks w ON w.id = c.webhook_id \
             JOIN webhook_events e ON e.id = c.event_id) next ON true"
    )
}

/// What [`finish_and_claim_next`] answers: the delivery's new status, and the next claim.
#[derive(QueryableByName)]
struct FinishedRow {
    #[diesel(sql_type = Text)]
    finished: String,
    #[diesel(sql_type = Timestamptz)]
    due: DateTime<Utc>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    webhook_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    owner: Option<Uuid>,
    #[diesel(sql_type = Nullable<Int8>)]
    epoch: Option<i64>,
    #[diesel(sql_type = Nullable<Int4>)]
    attempts: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    url: Option<String>,
    #[diesel(sql_type = Nullable<Bytea>)]
    secret_sealed: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Text>)]
    secret_key_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    event_type: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    payload: Option<String>,
}

impl FinishedRow {
    /// The next claim, when one was taken.
    fn next(self) -> Option<DeliveryClaim> {
        Some(DeliveryClaim {
            id: self.id?,
            webhook_id: self.webhook_id?,
            owner: self.owner?,
            epoch: self.epoch?,
            attempts: self.attempts?,
            url: self.url?,
            secret_sealed: self.secret_sealed?,
            secret_key_id: self.secret_key_id?,
            event_type: self.event_type?,
            payload: self.payload?,
        })
    }
}

impl Store {
    /// Claims up to `limit` deliveries for `owner`, each the head of its webhook's queue, for
    /// `ttl`, of every webhook but those in `busy`.
    pub async fn claim_deliveries(
        &self,
        owner: Uuid,
        ttl: Duration,
        limit: usize,
        busy: &[WebhookId],
    ) -> Result<Vec<DeliveryClaim>, StoreError> {
        let busy: Vec<Uuid> = busy.iter().map(|id| id.uuid()).collect();
        let mut connection = self.connection().await?;
        Ok(diesel::sql_query(claim_heads())
            .bind::<SqlUuid, _>(owner)
            .bind::<Interval, _>(interval(ttl))
            .bind::<Int8, _>(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind::<Array<SqlUuid>, _>(busy)
            .load(&mut connection)
            .await?)
    }

    /// Writes what an attempt came to, fenced by its claim's lease, and lets go of the lease;
    /// with `next` (the next claim's lease), claims the webhook's next delivery when this one is
    /// done with and that one is due.
    pub async fn finish_delivery(
        &self,
        claim: &DeliveryClaim,
        attempt: &Attempt,
        next: Option<Duration>,
    ) -> Result<(Finished, Option<DeliveryClaim>), StoreError> {
        let (delivered, code, error, retry_in, window) = match attempt {
            Attempt::Delivered { code } => {
                (true, Some(*code), None, Duration::ZERO, Duration::ZERO)
            }
            Attempt::Failed {
                code,
                error,
                retry_in,
                window,
            } => (false, *code, Some(error.as_str()), *retry_in, *window),
        };
        let mut connection = self.connection().await?;
        let row: Option<FinishedRow> = diesel::sql_query(finish_and_claim_next())
            .bind::<SqlUuid, _>(claim.owner)
            .bind::<Interval, _>(interval(next.unwrap_or_default()))
            .bind::<SqlUuid, _>(claim.id)
            .bind::<SqlUuid, _>(claim.owner)
            .bind::<Int8, _>(claim.epoch)
            .bind::<Bool, _>(delivered)
            .bind::<Interval, _>(interval(retry_in))
            .bind::<Interval, _>(interval(window))
            .bind::<Nullable<Int4>, _>(code)
            .bind::<Nullable<Text>, _>(error)
            .bind::<Bool, _>(next.is_some())
            .get_result(&mut connection)
            .await
            .optional()?;
        let Some(row) = row else {
            return Ok((Finished::Fenced, None));
        };
        let finished = match row.finished.as_str() {
            "delivered" => Finished::Delivered,
            "dead" => Finished::Dead,
            _ => Finished::Retrying(row.due),
        };
        Ok((finished, row.next()))
    }

    /// How many deliveries are pending, and how old the oldest one's event is.
    pub async fn webhook_outbox_census(&self) -> Result<OutboxCensus, StoreError> {
        let mut connection = self.connection().await?;
        Ok(diesel::sql_query(
            "SELECT count(*) AS depth, \
                 COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 \
                     AS oldest_seconds \
             FROM webhook_deliveries WHERE status = 'pending'",
        )
        .get_result(&mut connection)
        .await?)
    }

    /// Removes delivered and dead deliveries whose events are older than `retention`, then the
    /// events no delivery needs any more, a batch at a time; how many rows went.
    pub async fn prune_webhook_deliveries(&self, retention: Duration) -> Result<usize, StoreError> {
        const BATCH: i64 = 10_000;
        let mut connection = self.connection().await?;
        let mut removed = 0;
        for statement in [
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
                 WHERE status <> 'pending' AND created_at < now() - $1::interval LIMIT $2)",
            "DELETE FROM webhook_events WHERE id IN (SELECT e.id FROM webhook_events e \
                 WHERE e.created_at < now() - $1::interval AND NOT EXISTS \
                     (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id) LIMIT $2)",
        ] {
            loop {
                let batch = diesel::sql_query(statement)
                    .bind::<Interval, _>(interval(retention))
                    .bind::<Int8, _>(BATCH)
                    .execute(&mut connection)
                    .await?;
                removed += batch;
                if i64::try_from(batch).unwrap_or(i64::MAX) < BATCH {
                    break;
                }
            }
        }
        Ok(removed)
    }
}
