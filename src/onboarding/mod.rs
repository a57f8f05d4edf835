//! The onboarding engine: claims runnable servers with leases (an epoch fences every write),
//! wakes on NOTIFY, sweeps up expired leases, and runs each server's steps one at a time.
//! Each step is one file behind the `Step` interface; `connection` is the path by which steps (and
//! the live streams) reach a customer's MySQL.

mod awaiting_firewall;
pub mod connection;
mod grants;
mod initializing;
pub mod interfaces;
mod provisioning;
mod snapshotting;
mod source_checks;
mod streaming;
mod waiting_for_agent;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    task::Poll,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

pub use awaiting_firewall::AwaitingFirewall;
pub use connection::{MysqlFailure, mysql::classify as classify_mysql};
pub use initializing::Initializing;
pub use provisioning::Provisioning;
pub use snapshotting::Snapshotting;
pub use snapshotting::{SnapshotLimits, Table, read_tables, refresh_snapshot_table};
pub use streaming::{
    Streaming, coordinates, end_dump_thread, is_replica_id_clash, replication_refusal,
    source_identity,
};
pub use waiting_for_agent::WaitingForAgent;

use crate::{
    domain::{
        OnboardingStep, ServerId, ServerStatus, StepStatus, TenantId, onboarding::StepOutcome,
        server::Server, target::TargetPolicy,
    },
    secrets::SecretBox,
    store::{Affinity, Claim, Lease, Scope, Store, StoreError},
    telemetry,
};
use tracing::Instrument;

/// How the embedded agent connects to customers' servers.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// This replica's agent: the servers assigned to it are the ones this replica runs.
    pub id: Uuid,
    /// The address customers allow on their jumphosts for this agent.
    pub outbound_ip: String,
    /// The local address connections to jumphosts leave from, when the host has several.
    pub source_address: Option<IpAddr>,
    /// How long an agent may miss its heartbeats before it counts as dead and its servers are
    /// adopted by live agents.
    pub dead_after: Duration,
    /// How long an agent may be silent before the active SSH-tunnel servers it streamed move to
    /// a live agent with another IP (and wait for the firewall again).
    pub replaced_after: Duration,
    /// Time limit of one connection attempt.
    pub connect_timeout: Duration,
    /// How long one MySQL request may go unanswered.
    pub query_timeout: Duration,
    /// How much of information_schema a snapshot may read.
    pub snapshot: SnapshotLimits,
    /// Attempts of a step that meets transient faults before it fails.
    pub connect_attempts: i32,
    /// The addresses the agent refuses to connect to.
    pub targets: Arc<TargetPolicy>,
}

/// What a step gets to work with.
pub struct StepContext {
    /// Which step runs.
    pub step: OnboardingStep,
    /// The server as it was when the step started.
    pub server: Server,
    /// The runner's lease, for fenced writes.
    pub claim: Claim,
    pub store: Store,
    /// The change index's database, where the stream's checkpoint lives.
    pub index: Store,
    pub secrets: SecretBox,
    pub agent: AgentSettings,
    /// What the step is doing now, named when it stalls past its deadline.
    pub activity: Activity,
}

/// What a step is doing now ("logging in to MySQL at db:3306"), shared with the engine that
/// names it when the step stalls.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<Mutex<String>>);

impl Activity {
    pub fn set(&self, what: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = what;
    }

    fn describe(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// One onboarding step. `run` may be called again after a crash: its effects must be idempotent.
#[async_trait]
pub trait Step: Send + Sync {
    /// Which step this is.
    fn name(&self) -> OnboardingStep;

    /// Does the step's work once.
    async fn run(&self, context: &StepContext) -> Result<StepOutcome, StoreError>;
}

/// The steps that need no connection to a customer's server.
pub fn core_steps() -> Vec<Arc<dyn Step>> {
    vec![Arc::new(Provisioning), Arc::new(AwaitingFirewall)]
}

/// Every step this build can run.
pub fn default_steps() -> Vec<Arc<dyn Step>> {
    vec![
        Arc::new(Provisioning),
        Arc::new(AwaitingFirewall),
        Arc::new(WaitingForAgent),
        Arc::new(Initializing),
        Arc::new(Snapshotting),
        Arc::new(Streaming),
    ]
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub lease_ttl: Duration,
    pub sweep_interval: Duration,
    pub max_runners: usize,
    /// A tenant's share of those: beyond it, a tenant takes a free runner only while a share's
    /// worth stays free for the others (see `pick_runnable`).
    pub max_runners_per_tenant: usize,
    /// The deadline of one run of a step, whatever it waits for.
    pub step_timeout: Duration,
    pub agent: AgentSettings,
}

/// What the engine knows of one running server's runner.
struct Runner {
    /// Whose server it runs (for the per-tenant share of runner slots).
    tenant: TenantId,
    /// The latest revision this runner wrote; a NOTIFY of a later one came from someone else.
    written: AtomicI64,
    /// Wakes the lease renewal to check the fence now.
    check: Notify,
    /// Until when the lease is surely this runner's (the renewal moves it on); past it, the
    /// step is not polled again.
    valid_until: Mutex<Instant>,
    /// When it was claimed: the youngest runner of a tenant yields first.
    claimed: Instant,
    /// Asks the runner to give its server back (its tenant holds more than its share while
    /// another tenant, below its share, waits).
    yielded: CancellationToken,
}

impl Runner {
    fn new(tenant: TenantId, claimed: Instant, valid_until: Instant) -> Runner {
        Runner {
            tenant,
            written: AtomicI64::default(),
            check: Notify::default(),
            valid_until: Mutex::new(valid_until),
            claimed,
            yielded: CancellationToken::new(),
        }
    }

    fn wrote(&self, revision: i64) {
        self.written.fetch_max(revision, Ordering::AcqRel);
    }

    fn valid_until(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn extend_until(&self, until: Instant) {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = until;
    }

    /// Runs `work` while the lease is surely held. Once it may have lapsed, `work` is never
    /// polled again, so it sends no query and reads no reply, even when the process was paused
    /// past that instant and its timers have not fired yet: None. `active` records when `work`
    /// was first and last polled.
    async fn within_lease<F: Future>(&self, work: F, active: &mut ActiveSpan) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|context| {
            if Instant::now() >= self.valid_until() {
                return Poll::Ready(None);
            }
            let polled = work.as_mut().poll(context);
            active.polled();
            polled.map(Some)
        })
        .await
    }
}

/// How a run of a step ended.
enum Run<T> {
    Ended(T),
    /// Stopped for another tenant's sake.
    Yielded,
    /// Stopped because the lease was lost or may have lapsed.
    CutOff,
}

/// When a run of a step was first and last polled, by the wall clock: outside that span it did
/// nothing. Logged with the runner and its epoch, so runs on different replicas can be compared.
#[derive(Debug, Default)]
struct ActiveSpan {
    first: Option<SystemTime>,
    last: Option<SystemTime>,
}

impl ActiveSpan {
    fn polled(&mut self) {
        let now = SystemTime::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn micros(at: Option<SystemTime>) -> i64 {
        at.and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| {
                i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
            })
    }
}

/// Claims and runs onboarding on this replica.
pub struct Engine {
    store: Store,
    index: Store,
    secrets: SecretBox,
    config: EngineConfig,
    owner: Uuid,
    steps: HashMap<OnboardingStep, Arc<dyn Step>>,
    running: Mutex<HashMap<ServerId, Arc<Runner>>>,
    shutdown: CancellationToken,
    runners: TaskTracker,
    waker: mpsc::Sender<Option<ServerId>>,
    wakeups: Mutex<Option<mpsc::Receiver<Option<ServerId>>>>,
    /// Told of each server whose onboarding this replica completed.
    activated: mpsc::Sender<ServerId>,
}

/// Delay before a transient fault's next attempt.
fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.clamp(1, 7) - 1).unwrap_or(0);
    (Duration::from_millis(500) * 2u32.pow(exponent)).min(Duration::from_secs(30))
}

/// The span of one run of a step, continuing the trace of the call that started onboarding.
fn step_span(server: &Server, step: OnboardingStep) -> tracing::Span {
    let span = tracing::info_span!(
        "onboarding_step",
        otel.name = %format_args!("onboarding {step}"),
        server_id = %server.id,
        step = %step,
        attempt = server.steps.get(step).attempts,
        outcome = tracing::field::Empty,
    );
    telemetry::continue_traceparent(&span, server.trace_parent.as_deref());
    span
}

fn outcome_label(outcome: &StepOutcome) -> &'static str {
    match outcome {
        StepOutcome::Completed { .. } => "completed",
        StepOutcome::Waiting { .. } => "waiting",
        StepOutcome::Retry { .. } => "retry",
        StepOutcome::Failed { .. } => "failed",
    }
}

/// Provisioning without capacity retries without a budget: once its message is on record, a
/// retry that says the same writes no revision (watchers would get the same message every 30 s,
/// forever), and it backs off further each time.
fn is_quiet_retry(step: OnboardingStep, outcome: &StepOutcome, reported: &str) -> bool {
    matches!(outcome, StepOutcome::Retry { message }
        if step == OnboardingStep::Provisioning && message == reported)
}

/// Puts a finished run of a step on its span and in the step metrics.
fn record_outcome(
    span: &tracing::Span,
    step: OnboardingStep,
    outcome: &StepOutcome,
    started: Instant,
) {
    let label = outcome_label(outcome);
    span.record("outcome", label);
    metrics::histogram!("dbtrail_onboarding_step_seconds", "step" => step.as_str(), "outcome" => label)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("dbtrail_onboarding_steps_total", "step" => step.as_str(), "outcome" => label)
        .increment(1);
}

/// Waits `delay` before a step's next attempt, or less when the runner is asked to yield; an
/// error when the lease is lost meanwhile.
async fn pause(
    lost: &CancellationToken,
    runner: &Runner,
    delay: Duration,
) -> Result<(), StoreError> {
    tokio::select! {
        () = lost.cancelled() => Err(StoreError::Fenced),
        () = runner.yielded.cancelled() => Ok(()),
        () = tokio::time::sleep(delay) => Ok(()),
    }
}

impl Engine {
    /// An engine running `steps`; steps it lacks make a server wait with a message.
    pub fn new(
        store: Store,
        index: Store,
        secrets: SecretBox,
        config: EngineConfig,
        steps: Vec<Arc<dyn Step>>,
        activated: mpsc::Sender<ServerId>,
    ) -> Arc<Engine> {
        let (waker, wakeups) = mpsc::channel(1024);
        Arc::new(Engine {
            store,
            index,
            secrets,
            config,
            owner: Uuid::now_v7(),
            steps: steps.into_iter().map(|step| (step.name(), step)).collect(),
            running: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            runners: TaskTracker::new(),
            waker,
            wakeups: Mutex::new(Some(wakeups)),
            activated,
        })
    }

    /// A server's onboarding reached `revision` (NOTIFY): if this replica runs it and did not
    /// write that revision, someone else changed it (a decommission, an update), and the runner
    /// checks its lease at once instead of at its next renewal.
    pub fn changed(&self, server_id: ServerId, revision: i64) {
        if let Some(runner) = self.running().get(&server_id)
            && revision > runner.written.load(Ordering::Acquire)
        {
            runner.check.notify_one();
        }
    }

    /// Wakes the engine: a server id to claim, or None to look at every runnable server.
    pub fn waker(&self) -> mpsc::Sender<Option<ServerId>> {
        self.waker.clone()
    }

    /// This replica's lease owner id.
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// What this replica's engine claims: its agent's servers, and those of dead agents.
    fn affinity(&self) -> Affinity {
        Affinity {
            agent_id: self.config.agent.id,
            dead_after: self.config.agent.dead_after,
            replaced_after: self.config.agent.replaced_after,
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, Arc<Runner>>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims on wake-ups (see `waker`) and on every sweep; runs once.
    pub async fn run(self: Arc<Engine>) {
        let Some(mut wakeups) = self
            .wakeups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        else {
            return;
        };
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let only = tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = sweep.tick() => None,
                wake = wakeups.recv() => match wake {
                    Some(only) => only,
                    None => return,
                },
            };
            self.claim(only).await;
        }
    }

    async fn claim(self: &Arc<Engine>, only: Option<ServerId>) {
        let free = self.config.max_runners.saturating_sub(self.running().len());
        if free == 0 && only.is_none() {
            self.rebalance().await;
        }
        if free == 0 || only.is_some_and(|id| self.running().contains_key(&id)) {
            return;
        }
        let tenants = match self.pick_runnable(only, free).await {
            Ok(picked) => picked,
            Err(error) => {
                tracing::warn!(%error, "finding runnable servers failed");
                return;
            }
        };
        let ids: Vec<ServerId> = tenants.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        // The leases expire TTL after the database ran the claim, which is after this.
        let asked = Instant::now();
        let claims = match self
            .store
            .claim_runnable(self.owner, self.config.lease_ttl, self.affinity(), &ids)
            .await
        {
            Ok(claims) => claims,
            Err(error) => {
                tracing::warn!(%error, "claiming runnable servers failed");
                return;
            }
        };
        if self.shutdown.is_cancelled() {
            // A claim that raced the shutdown: give it back at once rather than let it expire.
            for claim in claims {
                let _ = self.store.release_lease(Lease::Onboarding, claim).await;
            }
            return;
        }
        for claim in claims {
            self.start_runner(claim, tenants[&claim.server_id], asked)
                .await;
        }
    }

    /// Runs a fresh claim in a runner of its own, unless the server's old runner is still
    /// finishing: then the claim is given back. `asked` is when the claim was asked for.
    async fn start_runner(self: &Arc<Engine>, claim: Claim, tenant: TenantId, asked: Instant) {
        let runner = Arc::new(Runner::new(
            tenant,
            asked,
            asked + lease_safe_for(self.config.lease_ttl),
        ));
        let inserted = match self.running().entry(claim.server_id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(runner.clone());
                true
            }
        };
        if !inserted {
            // Its old runner is still finishing (fenced): give this claim back so that the
            // runner's re-check can take the server at once.
            let _ = self.store.release_lease(Lease::Onboarding, claim).await;
            return;
        }
        let engine = self.clone();
        self.runners.spawn(async move {
            engine.drive(claim, &runner).await;
            engine.running().remove(&claim.server_id);
            // The freed slot takes the next runnable server now, not at the next sweep
            // (wake-ups that came while every slot was busy were skipped), and a wake-up of
            // this server that came while its runner was finishing is honoured too.
            let _ = engine.waker.try_send(None);
        });
    }

    /// Up to `free` runnable servers to claim, taking the tenants in turn, with their tenants. A
    /// tenant within its share of this replica's runner slots may take any free slot; one beyond
    /// it only while a share's worth of slots stays free for the others. So one tenant alone uses
    /// most of the replica, and another tenant's server never waits for it; as the first
    /// tenant's runners end, the slots go to the others until it is back within its share.
    async fn pick_runnable(
        &self,
        only: Option<ServerId>,
        free: usize,
    ) -> Result<HashMap<ServerId, TenantId>, StoreError> {
        let share = self.config.max_runners_per_tenant;
        let mut held: HashMap<TenantId, usize> = HashMap::new();
        for runner in self.running().values() {
            *held.entry(runner.tenant).or_default() += 1;
        }
        let candidates = self
            .store
            .runnable_servers(
                self.affinity(),
                only,
                free as i64,
                4 * self.config.max_runners as i64,
            )
            .await?;
        let mut picked = HashMap::new();
        for (server, tenant) in candidates {
            let left = free - picked.len();
            if left == 0 {
                break;
            }
            let holds = held.entry(tenant).or_default();
            if *holds < share || left > share {
                *holds += 1;
                picked.insert(server, tenant);
            }
        }
        Ok(picked)
    }

    /// Every slot is taken: for each server waiting of a tenant below its share, the youngest
    /// runner of the tenant furthest above its share yields (gives its server back between two
    /// polls of its step, which runs again later, idempotent as after a crash), so the freed
    /// slot goes to the waiting tenant. Tenants within their share never yield, so two tenants
    /// never take slots back and forth.
    async fn rebalance(&self) {
        let share = self.config.max_runners_per_tenant;
        let mut held: HashMap<TenantId, Vec<Arc<Runner>>> = HashMap::new();
        for runner in self.running().values() {
            if !runner.yielded.is_cancelled() {
                held.entry(runner.tenant).or_default().push(runner.clone());
            }
        }
        if held.values().all(|runners| runners.len() <= share) {
            return;
        }
        let waiting = match self
            .store
            .runnable_servers(
                self.affinity(),
                None,
                share as i64,
                4 * self.config.max_runners as i64,
            )
            .await
        {
            Ok(waiting) => waiting,
            Err(error) => {
                tracing::warn!(%error, "finding waiting servers failed");
                return;
            }
        };
        let mut starved: HashMap<TenantId, usize> = HashMap::new();
        for (_, tenant) in waiting {
            let holds =
                held.get(&tenant).map_or(0, Vec::len) + starved.get(&tenant).copied().unwrap_or(0);
            if holds < share {
                *starved.entry(tenant).or_default() += 1;
            }
        }
        for _ in 0..starved.values().sum::<usize>() {
            let Some(runners) = held
                .values_mut()
                .filter(|runners| runners.len() > share)
                .max_by_key(|runners| runners.len())
            else {
                return;
            };
            runners.sort_by_key(|runner| runner.claimed);
            if let Some(youngest) = runners.pop() {
                youngest.yielded.cancel();
            }
        }
    }

    /// Runs one claimed server's steps until it waits, fails, completes, or the lease is lost.
    async fn drive(self: &Arc<Engine>, claim: Claim, runner: &Arc<Runner>) {
        let lost = self.shutdown.child_token();
        let renewal = tokio::spawn(renew(
            self.store.clone(),
            claim,
            self.config.lease_ttl,
            lost.clone(),
            runner.clone(),
        ));
        let result = self.drive_steps(claim, &lost, runner).await;
        renewal.abort();
        match result {
            Err(StoreError::Fenced) => {
                tracing::info!(server_id = %claim.server_id, "lease taken over; runner stops");
            }
            Err(error) => {
                tracing::warn!(server_id = %claim.server_id, %error, "runner stopped");
            }
            Ok(()) => {}
        }
        let _ = self.store.release_lease(Lease::Onboarding, claim).await;
    }

    /// Takes over a server whose agent died: this replica's agent runs it from now on. An SSH
    /// tunnel whose outbound IP thereby changes waits for the firewall again, with the new IP.
    async fn adopt(&self, scope: Scope, id: ServerId) -> Result<Server, StoreError> {
        let agent = &self.config.agent;
        let (server, previous) = self
            .store
            .modify_server(scope, id, |server| {
                Ok::<_, StoreError>(server.adopt(agent.id, &agent.outbound_ip))
            })
            .await?;
        tracing::info!(
            server_id = %id,
            previous_outbound_ip = previous.as_deref().unwrap_or("none"),
            outbound_ip = %agent.outbound_ip,
            "adopted a server of a dead agent"
        );
        Ok(server)
    }

    /// Runs the server's steps one after another until it waits, fails, completes, is handed to
    /// another agent, yields its slot, or the lease is lost.
    async fn drive_steps(
        &self,
        claim: Claim,
        lost: &CancellationToken,
        runner: &Runner,
    ) -> Result<(), StoreError> {
        // Provisioning retries that found nothing new since the last recorded one.
        let mut quiet_retries = 0;
        loop {
            if lost.is_cancelled() {
                return Err(StoreError::Fenced);
            }
            if runner.yielded.is_cancelled() {
                return self.yield_server(claim).await;
            }
            let Some(server) = self.server_to_run(claim, runner).await? else {
                return Ok(());
            };
            let Some(step) = server.runnable_step() else {
                return Ok(());
            };
            let server = self.mark_step_begun(claim, server, step, runner).await?;
            let started = Instant::now();
            let span = step_span(&server, step);
            let attempts = server.steps.get(step).attempts;
            let reported = server.steps.get(step).message.clone();
            let outcome = match self
                .attempt_step(claim, step, server, &span, lost, runner)
                .await?
            {
                Run::Ended(outcome) => outcome,
                Run::Yielded => return self.yield_server(claim).await,
                Run::CutOff => return Err(StoreError::Fenced),
            };
            if is_quiet_retry(step, &outcome, &reported) {
                quiet_retries += 1;
                pause(lost, runner, backoff(attempts + quiet_retries)).await?;
                continue;
            }
            record_outcome(&span, step, &outcome, started);
            if self
                .write_outcome(claim, step, &outcome, lost, runner)
                .await?
            {
                return Ok(());
            }
        }
    }

    /// Writes a run's outcome on the server and waits out a retry's backoff. True when no step
    /// follows here: the server waits, failed, or completed (and is then told to the streams).
    async fn write_outcome(
        &self,
        claim: Claim,
        step: OnboardingStep,
        outcome: &StepOutcome,
        lost: &CancellationToken,
        runner: &Runner,
    ) -> Result<bool, StoreError> {
        let (server, next) = self
            .store
            .modify_server(Scope::Runner(claim.fence), claim.server_id, |server| {
                Ok::<_, StoreError>(server.apply_outcome(step, outcome, crate::domain::now()))
            })
            .await?;
        runner.wrote(server.revision);
        match (outcome, next) {
            (StepOutcome::Retry { .. }, _) => {
                pause(lost, runner, backoff(server.steps.get(step).attempts)).await?;
                Ok(false)
            }
            (_, Some(_)) => Ok(false),
            (_, None) => {
                if server.status == ServerStatus::Active {
                    // Onboarding completed: the stream supervisor claims it now.
                    let _ = self.activated.try_send(claim.server_id);
                }
                Ok(true)
            }
        }
    }

    /// The claimed server as it is now, when this replica's agent is the one to run it: None once
    /// it was handed over to the live agent that provisioning gave it to. A server of a dead agent
    /// is adopted first.
    async fn server_to_run(
        &self,
        claim: Claim,
        runner: &Runner,
    ) -> Result<Option<Server>, StoreError> {
        let id = claim.server_id;
        let server = self.store.server_by_id(id).await?;
        let Some(agent) = server
            .agent_id
            .filter(|agent| *agent != self.config.agent.id)
        else {
            return Ok(Some(server));
        };
        if self
            .store
            .agent_is_live(agent, self.config.agent.dead_after)
            .await?
        {
            // Provisioning gave it to another agent: that agent's replica runs it.
            self.store.hand_over(claim).await?;
            return Ok(None);
        }
        let server = self.adopt(Scope::Runner(claim.fence), id).await?;
        runner.wrote(server.revision);
        Ok(Some(server))
    }

    /// The server with `step` in progress: recorded as begun unless it already was.
    async fn mark_step_begun(
        &self,
        claim: Claim,
        server: Server,
        step: OnboardingStep,
        runner: &Runner,
    ) -> Result<Server, StoreError> {
        if server.steps.get(step).status == StepStatus::InProgress {
            return Ok(server);
        }
        let (server, ()) = self
            .store
            .modify_server(Scope::Runner(claim.fence), claim.server_id, |server| {
                server.begin_step(step, crate::domain::now());
                Ok::<_, StoreError>(())
            })
            .await?;
        runner.wrote(server.revision);
        Ok(server)
    }

    /// One run of `step` under its deadline, while the lease holds and no other tenant claims the
    /// slot, logged as it begins and ends. A step that met the lease being taken over is an error;
    /// its other faults and a stall become the step's transient outcome.
    async fn attempt_step(
        &self,
        claim: Claim,
        step: OnboardingStep,
        server: Server,
        span: &tracing::Span,
        lost: &CancellationToken,
        runner: &Runner,
    ) -> Result<Run<StepOutcome>, StoreError> {
        let attempts = server.steps.get(step).attempts;
        let activity = Activity::default();
        let run = tokio::time::timeout(
            self.config.step_timeout,
            self.run_step(step, server, claim, activity.clone()),
        );
        let mut active = ActiveSpan::default();
        self.log_run(claim, step, &active, "begins");
        let outcome = tokio::select! {
            biased;
            () = lost.cancelled() => Run::CutOff,
            () = runner.yielded.cancelled() => Run::Yielded,
            outcome = runner.within_lease(run.instrument(span.clone()), &mut active) => {
                outcome.map_or(Run::CutOff, Run::Ended)
            }
        };
        let ran = |outcome: &str| self.log_run(claim, step, &active, outcome);
        let ended = match outcome {
            Run::Ended(ended) => ended,
            Run::Yielded => {
                ran("yielded: another tenant waits for a runner");
                return Ok(Run::Yielded);
            }
            Run::CutOff => {
                ran("cut off: the lease was lost or could not be renewed in time");
                return Ok(Run::CutOff);
            }
        };
        ran("finished");
        let outcome = match ended {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(StoreError::Fenced)) => return Err(StoreError::Fenced),
            Ok(Err(error)) => self.store_fault(claim.server_id, step, attempts, &error),
            Err(_) => self.stall(claim.server_id, step, attempts, &activity),
        };
        Ok(Run::Ended(outcome))
    }

    /// The outcome of a step that met a fault of the service's own database: retried.
    fn store_fault(
        &self,
        id: ServerId,
        step: OnboardingStep,
        attempts: i32,
        error: &StoreError,
    ) -> StepOutcome {
        tracing::warn!(server_id = %id, %step, %error, "step hit a transient fault");
        StepOutcome::transient(
            "the service's database is unavailable",
            attempts,
            self.config.agent.connect_attempts,
        )
    }

    /// The outcome of a step that did not finish within its deadline, naming what it was doing.
    fn stall(
        &self,
        id: ServerId,
        step: OnboardingStep,
        attempts: i32,
        activity: &Activity,
    ) -> StepOutcome {
        let stalled = format!(
            "{step} did not finish within {}: it stalled {}",
            humantime::format_duration(self.config.step_timeout),
            activity.describe()
        );
        tracing::warn!(server_id = %id, %step, %stalled, "step stalled");
        StepOutcome::transient(&stalled, attempts, self.config.agent.connect_attempts)
    }

    /// Gives a server back for another tenant's sake: its step runs again when a slot is free.
    async fn yield_server(&self, claim: Claim) -> Result<(), StoreError> {
        tracing::info!(server_id = %claim.server_id, "runner yielded its slot to a waiting tenant");
        metrics::counter!("dbtrail_onboarding_runner_yields_total").increment(1);
        self.store.hand_over(claim).await
    }

    /// One run of a step on record: which replica (and agent) ran it under which epoch, and when
    /// it was active.
    fn log_run(&self, claim: Claim, step: OnboardingStep, active: &ActiveSpan, how: &str) {
        tracing::info!(
            at_us = ActiveSpan::micros(Some(SystemTime::now())),
            server_id = %claim.server_id,
            %step,
            runner = %self.owner,
            agent_id = %self.config.agent.id,
            epoch = claim.fence.epoch,
            active_from_us = ActiveSpan::micros(active.first),
            active_until_us = ActiveSpan::micros(active.last),
            phase = how,
            "step run"
        );
    }

    async fn run_step(
        &self,
        step: OnboardingStep,
        server: Server,
        claim: Claim,
        activity: Activity,
    ) -> Result<StepOutcome, StoreError> {
        let Some(implementation) = self.steps.get(&step) else {
            return Ok(StepOutcome::Waiting {
                message: format!(
                    "no agent can run {step} yet: this replica was started without that step"
                ),
            });
        };
        let context = StepContext {
            step,
            server,
            claim,
            store: self.store.clone(),
            index: self.index.clone(),
            secrets: self.secrets.clone(),
            agent: self.config.agent.clone(),
            activity,
        };
        context.activity.set(format!("running {step}"));
        implementation.run(&context).await
    }

    /// Stops every runner and lets go of this replica's leases so others take over at once.
    pub async fn stop(&self, grace: Duration) {
        self.shutdown.cancel();
        self.runners.close();
        let _ = tokio::time::timeout(grace, self.runners.wait()).await;
        match tokio::time::timeout(
            grace,
            self.store.release_all_leases(Lease::Onboarding, self.owner),
        )
        .await
        {
            Ok(Ok(released)) => tracing::info!(released, "released onboarding leases"),
            Ok(Err(error)) => tracing::warn!(%error, "could not release leases; they will expire"),
            Err(_) => tracing::warn!("releasing leases timed out; they will expire"),
        }
    }
}

/// How long after a renewal was asked for the lease is surely still held: the TTL less a margin.
fn lease_safe_for(ttl: Duration) -> Duration {
    ttl.saturating_sub(ttl / 4)
}

/// Keeps a runner's lease, and stops the runner (`lost`) when it is taken over, or when it could
/// not be renewed for so long that it may expire: from `ttl` less a margin after the last
/// renewal that succeeded (or the claim), another replica may take the server, and two runners
/// must never touch the customer's MySQL at once. The step itself stops being polled at that
/// instant too (`Runner::within_lease`), whichever timer fires first.
async fn renew(
    store: Store,
    claim: Claim,
    ttl: Duration,
    lost: CancellationToken,
    runner: Arc<Runner>,
) {
    let expire = || {
        tracing::warn!(
            server_id = %claim.server_id,
            "the lease could not be renewed in time; the runner stops before it may expire"
        );
        lost.cancel();
    };
    loop {
        let valid_until = runner.valid_until();
        tokio::select! {
            () = tokio::time::sleep(ttl / 3) => {}
            // Someone else changed the server: find out now whether the lease is still ours.
            () = runner.check.notified() => {}
            () = tokio::time::sleep_until(valid_until.into()) => return expire(),
        }
        let asked = Instant::now();
        let renewed = tokio::select! {
            renewed = store.renew_lease(Lease::Onboarding, claim, ttl) => renewed,
            () = tokio::time::sleep_until(valid_until.into()) => return expire(),
        };
        match renewed {
            // A renewal answered after the window closed does not reopen it: the step may
            // already have been cut off, and another replica may hold the server by now.
            Ok(()) if Instant::now() < valid_until => {
                runner.extend_until(asked + lease_safe_for(ttl))
            }
            Ok(()) => return expire(),
            Err(StoreError::Fenced) => {
                lost.cancel();
                return;
            }
            Err(error) => {
                tracing::warn!(%error, server_id = %claim.server_id, "lease renewal failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(100), Duration::from_secs(30));
        assert_eq!(backoff(0), Duration::from_millis(500));
    }
}
