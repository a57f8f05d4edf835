//! Webhook deliveries: this replica's workers that send the outbox's deliveries (the events the
//! database's trigger writes with each change, `store::webhooks`).
//!
//! A dispatcher claims the heads of webhook queues (NOTIFY, a lane finishing, or the sweep wakes
//! it), as many as it has free lanes (`--max-webhook-deliveries`). A lane sends its webhook's
//! deliveries one after the other, in order, over one connection while it stays usable, each
//! attempt signed and bounded by `--webhook-timeout`, until the queue is empty or waits for a retry, or it has sent its fair
//! share and lets the oldest waiting webhook have the lane. So a slow, failing or hanging
//! receiver holds one lane at a time, never a call, a stream or another webhook's queue. A claim
//! is a lease: a killed replica's claims are taken over once they expire, and a receiver then
//! sees the same delivery id again (at least once).

mod client;

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use client::{Exchange, Kept, Sender};

use crate::{
    config::Config,
    domain::{
        target::TargetPolicy,
        webhook::{self, WebhookId, WebhookUrl, headers},
    },
    secrets::SecretBox,
    store::{Attempt, DeliveryClaim, Finished, Store},
};

/// Deliveries a lane sends in a row before it lets another webhook have it.
const FAIR_SHARE: usize = 10;

/// Connections of the workers' own pool: a claim, and an outcome with the next claim, are one
/// statement each.
pub const POOL_SIZE: usize = 4;

/// How the workers deliver.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The deadline of one attempt (resolve, connect, TLS, send, answer).
    pub timeout: Duration,
    /// The first retry's delay, doubled per attempt (with full jitter).
    pub retry_base: Duration,
    /// How long after its event a delivery is retried before it is dead.
    pub retry_window: Duration,
    /// Attempts in flight at once on this replica, each for another webhook.
    pub max_in_flight: usize,
    /// How often the outbox is looked at without a wake-up.
    pub sweep_interval: Duration,
}

impl WebhookSettings {
    /// The settings `serve` was given.
    pub fn from_config(config: &Config) -> WebhookSettings {
        WebhookSettings {
            timeout: config.webhook_timeout,
            retry_base: config.webhook_retry_base,
            retry_window: config.webhook_retry_window,
            max_in_flight: config.max_webhook_deliveries,
            sweep_interval: config.sweep_interval,
        }
    }

    /// A claim's lease: the attempt's deadline twice and a margin, so the outcome's write lands
    /// before another replica may take the delivery over.
    fn lease_ttl(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(2)
    }
}

/// This replica's delivery workers.
pub struct Deliveries {
    store: Store,
    secrets: SecretBox,
    sender: Sender,
    settings: WebhookSettings,
    /// This replica's claims' owner (a new one per start).
    owner: Uuid,
    wake: Notify,
    lanes: Arc<Semaphore>,
    /// The webhooks a lane of this replica works on.
    busy: Mutex<HashSet<WebhookId>>,
}

impl Deliveries {
    /// The workers over `store`; `ca_file` adds roots to the web PKI's for https receivers.
    pub fn new(
        store: Store,
        secrets: SecretBox,
        targets: Arc<TargetPolicy>,
        ca_file: Option<&Path>,
        settings: WebhookSettings,
    ) -> Result<Arc<Deliveries>, String> {
        let sender = Sender::new(targets, ca_file, settings.timeout)?;
        for outcome in ["delivered", "retried", "dead"] {
            metrics::counter!("dbtrail_webhook_deliveries_total", "outcome" => outcome)
                .increment(0);
        }
        Ok(Arc::new(Deliveries {
            store,
            secrets,
            sender,
            lanes: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            settings,
            owner: Uuid::new_v4(),
            wake: Notify::new(),
            busy: Mutex::new(HashSet::new()),
        }))
    }

    /// The workers `config` asks for over `store`, running until `stop`.
    pub fn start(
        store: Store,
        secrets: SecretBox,
        targets: Arc<TargetPolicy>,
        config: &Config,
        stop: CancellationToken,
    ) -> Result<Arc<Deliveries>, String> {
        let settings = WebhookSettings::from_config(config);
        let ca_file = config.webhook_ca_file.as_deref();
        let deliveries = Deliveries::new(store, secrets, targets, ca_file, settings)?;
        tokio::spawn(deliveries.clone().run(stop));
        Ok(deliveries)
    }

    /// Deliveries may be due: look now (NOTIFY, a redelivery, a lane finished).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Claims and sends until `stop`; the outbox's metrics are refreshed on every sweep.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tracing::info!(owner = %self.owner, lanes = self.settings.max_in_flight, "webhook deliveries started");
        let mut census_due = tokio::time::Instant::now();
        loop {
            self.dispatch(&stop).await;
            if tokio::time::Instant::now() >= census_due {
                self.census().await;
                census_due = tokio::time::Instant::now() + self.settings.sweep_interval;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.sweep_interval) => {}
            }
        }
    }

    /// Claims as many queue heads as there are free lanes, and starts a lane for each.
    async fn dispatch(self: &Arc<Self>, stop: &CancellationToken) {
        let free = self.lanes.available_permits();
        if free == 0 || stop.is_cancelled() {
            return;
        }
        let busy: Vec<WebhookId> = self.busy().iter().copied().collect();
        let claims = match self
            .store
            .claim_deliveries(self.owner, self.settings.lease_ttl(), free, &busy)
            .await
        {
            Ok(claims) => claims,
            Err(error) => {
                tracing::warn!(%error, "claiming webhook deliveries failed; trying again later");
                return;
            }
        };
        for claim in claims {
            let Ok(permit) = self.lanes.clone().try_acquire_owned() else {
                break;
            };
            self.busy().insert(claim.webhook_id());
            tokio::spawn(self.clone().lane(claim, permit, stop.clone()));
        }
    }

    fn busy(&self) -> std::sync::MutexGuard<'_, HashSet<WebhookId>> {
        self.busy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends one webhook's deliveries in order, starting with `claim`, until its queue is empty
    /// or waits, or the lane has sent its fair share.
    async fn lane(
        self: Arc<Self>,
        mut claim: DeliveryClaim,
        _permit: OwnedSemaphorePermit,
        stop: CancellationToken,
    ) {
        let webhook = claim.webhook_id();
        let mut kept = None;
        for sent in 1..=FAIR_SHARE {
            // A claim is taken only to be sent: none after the share, none once stopping.
            let more = sent < FAIR_SHARE && !stop.is_cancelled();
            let (finished, next) = self.deliver(&claim, more, &mut kept).await;
            if let Finished::Retrying(at) = finished {
                self.wake_at(at);
            }
            match next {
                Some(next) => claim = next,
                None => break,
            }
        }
        self.busy().remove(&webhook);
        self.wake();
    }

    /// One attempt of a claimed delivery, its outcome written and counted; with `more`, the
    /// webhook's next delivery claimed in the same write, when it may go now.
    async fn deliver(
        &self,
        claim: &DeliveryClaim,
        more: bool,
        kept: &mut Option<Kept>,
    ) -> (Finished, Option<DeliveryClaim>) {
        let attempt = self.attempt(claim, kept).await;
        let next = more.then(|| self.settings.lease_ttl());
        let (finished, next) = match self.store.finish_delivery(claim, &attempt, next).await {
            Ok(written) => written,
            Err(error) => {
                // The lease expires and the delivery is tried again, by whichever replica.
                tracing::warn!(%error, delivery_id = %claim.id(), "recording a webhook delivery failed");
                return (Finished::Fenced, None);
            }
        };
        let outcome = match finished {
            Finished::Delivered => "delivered",
            Finished::Retrying(_) => "retried",
            Finished::Dead => "dead",
            Finished::Fenced => return (finished, None),
        };
        metrics::counter!("dbtrail_webhook_deliveries_total", "outcome" => outcome).increment(1);
        if let Attempt::Failed { error, code, .. } = &attempt {
            tracing::info!(delivery_id = %claim.id(), webhook_id = %claim.webhook_id(),
                attempts = claim.attempts, ?code, %error, outcome, "webhook delivery failed");
        }
        (finished, next)
    }

    /// Signs and sends a claimed delivery: what the receiver's answer (or its absence) means.
    async fn attempt(&self, claim: &DeliveryClaim, kept: &mut Option<Kept>) -> Attempt {
        let failed = |code: Option<i32>, error: String| Attempt::Failed {
            code,
            error: webhook::short_error(&error),
            retry_in: webhook::retry_delay(
                claim.attempts,
                self.settings.retry_base,
                webhook::MAX_RETRY_DELAY.min(self.settings.retry_window),
                rand::random::<f64>(),
            ),
            window: self.settings.retry_window,
        };
        let Some(url) = WebhookUrl::stored(&claim.url) else {
            return failed(None, format!("the stored URL {:?} is not a URL", claim.url));
        };
        let secret = match self.secrets.open(
            &claim.secret(),
            &webhook::secret_context(claim.webhook_id()),
        ) {
            Ok(secret) => secret,
            Err(error) => {
                tracing::error!(%error, webhook_id = %claim.webhook_id(), "a webhook's signing secret cannot be opened");
                return failed(
                    None,
                    format!("the signing secret cannot be opened: {error}"),
                );
            }
        };
        let body = body(claim);
        let timestamp = Utc::now().timestamp();
        let signed = [
            (headers::DELIVERY_ID, claim.id().to_string()),
            (headers::EVENT, claim.event_type.clone()),
            (headers::TIMESTAMP, timestamp.to_string()),
            (
                headers::SIGNATURE,
                webhook::signature(&secret.0, timestamp, &body),
            ),
        ];
        match self.sender.send(&url, &signed, body, kept).await {
            Exchange::Answered { code, .. } if (200..300).contains(&code) => Attempt::Delivered {
                code: i32::from(code),
            },
            Exchange::Answered { code, excerpt } => {
                let answer = excerpt.trim();
                let error = if answer.is_empty() {
                    format!("HTTP {code}")
                } else {
                    format!("HTTP {code}: {answer}")
                };
                failed(Some(i32::from(code)), error)
            }
            Exchange::Failed(error) => failed(None, error),
        }
    }

    /// Wakes the dispatcher when a retry falls due before the next sweep would find it.
    fn wake_at(self: &Arc<Self>, at: chrono::DateTime<Utc>) {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        if wait < self.settings.sweep_interval {
            let deliveries = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                deliveries.wake();
            });
        }
    }

    /// The outbox's depth and oldest age, as gauges.
    async fn census(&self) {
        match self.store.webhook_outbox_census().await {
            Ok(census) => {
                metrics::gauge!("dbtrail_webhook_outbox_depth").set(census.depth as f64);
                metrics::gauge!("dbtrail_webhook_oldest_undelivered_seconds")
                    .set(census.oldest_seconds);
            }
            Err(error) => tracing::warn!(%error, "reading the webhook outbox's size failed"),
        }
    }
}

/// The body a delivery sends: its event's JSON object with the delivery's own ids first.
fn body(claim: &DeliveryClaim) -> Bytes {
    let ids = format!(
        "{{\"delivery_id\": \"{}\", \"webhook_id\": \"{}\"",
        claim.id(),
        claim.webhook_id()
    );
    let rest = claim.payload.trim().strip_prefix('{').unwrap_or("}");
    let separator = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ", "
    };
    Bytes::from(format!("{ids}{separator}{rest}"))
}
