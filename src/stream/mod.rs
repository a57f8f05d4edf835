//! The live binlog streams after onboarding (streaming.md): this replica's supervisor claims
//! stream leases (its fair share of them), runs one task per held stream, keeps their leases
//! renewed, tells them about changes of their servers, and lets them go on shutdown.

mod context;
mod control;
mod ending;
mod holder;
mod progress;
mod reader;
pub mod restart;
mod runner;
mod session;
mod sink;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use control::Control;
pub use holder::StreamSettings;
use holder::{Holder, HolderParts};
use progress::ProgressBook;

use crate::{
    agent::AgentSettings,
    domain::{ServerId, StreamState},
    lease::{LeaseTerms, Leases},
    secrets::SecretBox,
    store::{Claim, IndexShards, Lease, Scope, Store, StoreError},
};

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    pub lease_ttl: Duration,
    pub sweep_interval: Duration,
    /// Most streams this replica holds, whatever its fair share.
    pub max_streams: usize,
    pub settings: StreamSettings,
    /// This replica's agent, and how its connections are made.
    pub agent: AgentSettings,
}

/// Runs this replica's share of the streams.
pub struct Streams {
    store: Store,
    index: IndexShards,
    secrets: SecretBox,
    config: StreamsConfig,
    /// The stream leases this replica holds, renewed together.
    leases: Arc<Leases>,
    running: Mutex<HashMap<ServerId, Held>>,
    /// Progress waiting for its batch.
    book: Arc<ProgressBook>,
    /// Ends the lease renewals and progress batches, once the streams have stopped.
    after_streams: CancellationToken,
    /// The most streams to hold, as the last sweep computed it.
    limit: AtomicUsize,
    /// Servers whose onboarding this replica just completed.
    activations: Mutex<Option<mpsc::Receiver<ServerId>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A stream this replica runs.
#[derive(Clone)]
struct Held {
    claim: Claim,
    control: Arc<Control>,
}

impl Streams {
    /// A supervisor; `index` is the change index's database (the control plane's by default).
    pub fn new(
        store: Store,
        index: IndexShards,
        secrets: SecretBox,
        config: StreamsConfig,
        activations: mpsc::Receiver<ServerId>,
    ) -> Arc<Streams> {
        // Counters that alerts and dashboards read exist from the start (0, not absent).
        metrics::counter!("dbtrail_stream_reconnects_total").increment(0);
        metrics::gauge!("dbtrail_streams_held").increment(0.0);
        let terms = LeaseTerms {
            kind: Lease::Stream,
            ttl: config.lease_ttl,
            // The connection closes a third of the TTL before the lease could expire.
            safe_for: config.lease_ttl * 2 / 3,
        };
        // A stream's lease is lost only when taken over or not renewed in time; at shutdown it
        // is released at a checkpoint instead.
        let leases = Leases::new(
            store.clone(),
            terms,
            Uuid::now_v7(),
            CancellationToken::new(),
        );
        Arc::new(Streams {
            store: store.clone(),
            index,
            secrets,
            limit: AtomicUsize::new(config.max_streams),
            config,
            leases,
            running: Mutex::new(HashMap::new()),
            book: Arc::new(ProgressBook::new(store.clone())),
            after_streams: CancellationToken::new(),
            activations: Mutex::new(Some(activations)),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, Held>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A server changed (NOTIFY): its stream, if this replica runs it, looks at it again (a
    /// decommission or an update). Servers that became streamable are claimed at once by the
    /// replica that onboarded them, and by the sweeps.
    pub fn changed(&self, server_id: ServerId) {
        if let Some(held) = self.running().get(&server_id) {
            held.control.notify();
        }
    }

    /// Sweeps on every interval and wake-up until shutdown.
    pub async fn run(self: Arc<Streams>) {
        let Some(mut activations) = self
            .activations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        else {
            return;
        };
        tokio::spawn(self.book.clone().run(self.after_streams.clone()));
        tokio::spawn(self.leases.clone().run(self.after_streams.clone()));
        tokio::spawn(self.clone().heartbeats());
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = sweep.tick() => {}
                activated = activations.recv() => {
                    if let Some(server_id) = activated {
                        self.claim_one(server_id).await;
                    }
                    continue;
                }
            }
            if let Err(error) = self.sweep().await {
                tracing::warn!(%error, "stream sweep failed");
            }
            self.report().await;
        }
    }

    async fn sweep(self: &Arc<Streams>) -> Result<(), StoreError> {
        let spread = self
            .store
            .stream_spread(self.config.agent.dead_after)
            .await?;
        let share = usize::try_from(spread.fair_share()).unwrap_or(usize::MAX);
        let limit = share.min(self.config.max_streams);
        self.limit.store(limit, Ordering::Release);
        let held: Vec<Held> = self.running().values().cloned().collect();
        // Above the fair share: the extra streams stop at their next checkpoint, and a replica
        // with room takes them.
        for extra in held.iter().skip(limit) {
            extra.control.release();
        }
        let free = limit.saturating_sub(held.len());
        if free == 0 || self.shutdown.is_cancelled() {
            return Ok(());
        }
        let asked = Instant::now();
        let claims = self
            .store
            .claim_streams(
                self.leases.owner(),
                self.config.agent.id,
                &self.config.agent.outbound_ip,
                self.config.lease_ttl,
                free as i64,
                None,
            )
            .await?;
        for claim in claims {
            self.start(claim, asked);
        }
        Ok(())
    }

    /// Sets the stream gauges: streams per state (every state, zeros included) and the age of
    /// the oldest checkpoint of a running stream.
    async fn report(&self) {
        let census = match self.store.stream_census().await {
            Ok(census) => census,
            Err(error) => {
                tracing::debug!(%error, "counting streams failed");
                return;
            }
        };
        for state in StreamState::ALL {
            let count = census
                .by_state
                .iter()
                .find(|(counted, _)| counted == state)
                .map_or(0, |(_, count)| *count);
            metrics::gauge!("dbtrail_streams", "state" => state.as_str()).set(count as f64);
        }
        metrics::gauge!("dbtrail_stream_oldest_checkpoint_seconds")
            .set(census.oldest_checkpoint_seconds);
    }

    /// Claims one server whose onboarding just completed here, within this replica's share.
    async fn claim_one(self: &Arc<Streams>, server_id: ServerId) {
        let held = self.running().len();
        if held >= self.limit.load(Ordering::Acquire) || self.shutdown.is_cancelled() {
            return;
        }
        let asked = Instant::now();
        let claimed = self
            .store
            .claim_streams(
                self.leases.owner(),
                self.config.agent.id,
                &self.config.agent.outbound_ip,
                self.config.lease_ttl,
                1,
                Some(server_id),
            )
            .await;
        match claimed {
            Ok(claims) => claims
                .into_iter()
                .for_each(|claim| self.start(claim, asked)),
            Err(error) => tracing::warn!(%server_id, %error, "claiming a new stream failed"),
        }
    }

    /// Runs a fresh `claim`, asked for at `asked`, in a task of its own.
    fn start(self: &Arc<Streams>, claim: Claim, asked: Instant) {
        let control = Arc::new(Control::new(self.leases.hold(claim, asked)));
        let held = Held {
            claim,
            control: control.clone(),
        };
        self.running().insert(claim.server_id, held);
        let streams = self.clone();
        self.tasks.spawn(async move {
            streams.hold(claim, control).await;
            streams.forget(claim);
            Box::pin(streams.leases.let_go(claim)).await;
        });
    }

    /// A stream of `claim` stopped (not one claimed since for the same server).
    fn forget(&self, claim: Claim) {
        let mut running = self.running();
        if running
            .get(&claim.server_id)
            .is_some_and(|held| held.claim == claim)
        {
            running.remove(&claim.server_id);
        }
    }

    async fn hold(&self, claim: Claim, control: Arc<Control>) {
        let server = match Box::pin(self.store.server_by_id(claim.server_id)).await {
            Ok(server) => server,
            Err(error) => {
                tracing::warn!(server_id = %claim.server_id, %error, "claimed stream's server unreadable");
                return;
            }
        };
        let index = match Box::pin(self.index.for_server(claim.server_id)).await {
            Ok(index) => index,
            Err(error) => return self.unindexed(claim, &error).await,
        };
        let mut holder = Holder::new(HolderParts {
            claim,
            settings: self.config.settings,
            control,
            server,
            store: self.store.clone(),
            index,
            secrets: self.secrets.clone(),
            agent: self.config.agent.clone(),
            book: self.book.clone(),
        });
        metrics::gauge!("dbtrail_streams_held").increment(1.0);
        runner::run_stream(&mut holder).await;
        metrics::gauge!("dbtrail_streams_held").decrement(1.0);
    }

    /// A claimed stream whose change index cannot be opened (its shard is not among this
    /// replica's, or the database fails): `stalled`, saying why, until a sweep claims it again.
    async fn unindexed(&self, claim: Claim, error: &StoreError) {
        tracing::warn!(server_id = %claim.server_id, %error, "claimed stream's change index cannot be opened");
        let message = format!("the change index cannot be opened: {error}");
        let now = crate::domain::now();
        let stalled =
            self.store
                .modify_server(Scope::Stream(claim.fence), claim.server_id, |server| {
                    Ok::<_, StoreError>(server.stream_moved(
                        StreamState::Stalled,
                        Some(message),
                        now,
                    ))
                });
        if let Err(error) = Box::pin(stalled).await {
            tracing::warn!(server_id = %claim.server_id, %error, "recording the stalled stream failed");
        }
    }

    /// Stops every stream at a checkpoint and lets go of their leases so other replicas take
    /// them at once.
    pub async fn stop(&self, grace: Duration) {
        self.shutdown.cancel();
        for held in self.running().values() {
            held.control.release();
        }
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        self.after_streams.cancel();
        let _ = tokio::time::timeout(grace, self.book.flush()).await;
        self.leases.release_all(grace).await;
    }

    /// Marks this replica's agent alive every sweep interval, on a timer of its own: a slow
    /// sweep (claiming many streams, index maintenance) must not make a live agent look dead,
    /// which would move its pending servers to another agent.
    async fn heartbeats(self: Arc<Streams>) {
        let mut tick = tokio::time::interval(self.config.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(error) = self.store.beat(self.config.agent.id).await {
                        tracing::warn!(%error, "the agent's heartbeat failed");
                    }
                }
            }
        }
    }
}
