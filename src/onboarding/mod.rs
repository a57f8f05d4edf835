//! The onboarding engine: claims runnable servers with leases (an epoch fences every write),
//! wakes on NOTIFY, sweeps up expired leases, and runs each server's steps one at a time.
//! `claims` picks and claims servers, `runner` holds one server's lease, `drive` runs its steps.
//! Each step is one file behind the `Step` interface; the steps reach a customer's MySQL through
//! `crate::source`.

mod awaiting_firewall;
mod claims;
mod context;
mod drive;
mod grants;
mod initializing;
pub mod preflight;
mod provisioning;
mod runner;
mod snapshotting;
mod source_checks;
mod streaming;
mod waiting_for_agent;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

pub use awaiting_firewall::AwaitingFirewall;
pub use context::{Activity, StepContext};
pub use initializing::Initializing;
pub use provisioning::Provisioning;
pub use snapshotting::Snapshotting;
pub use streaming::Streaming;
pub use waiting_for_agent::WaitingForAgent;

use runner::Runner;

use crate::{
    agent::AgentSettings,
    domain::{OnboardingStep, ServerId, onboarding::StepOutcome},
    lease::{LeaseTerms, Leases},
    secrets::SecretBox,
    store::{Affinity, IndexShards, Lease, Store, StoreError},
};

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

/// Claims and runs onboarding on this replica.
pub struct Engine {
    store: Store,
    index: IndexShards,
    secrets: SecretBox,
    config: EngineConfig,
    /// The onboarding leases this replica holds, renewed together.
    leases: Arc<Leases>,
    steps: HashMap<OnboardingStep, Arc<dyn Step>>,
    running: Mutex<HashMap<ServerId, Arc<Runner>>>,
    shutdown: CancellationToken,
    runners: TaskTracker,
    waker: mpsc::Sender<Option<ServerId>>,
    wakeups: Mutex<Option<mpsc::Receiver<Option<ServerId>>>>,
    /// Told of each server whose onboarding this replica completed.
    activated: mpsc::Sender<ServerId>,
}

impl Engine {
    /// An engine running `steps`; steps it lacks make a server wait with a message.
    pub fn new(
        store: Store,
        index: IndexShards,
        secrets: SecretBox,
        config: EngineConfig,
        steps: Vec<Arc<dyn Step>>,
        activated: mpsc::Sender<ServerId>,
    ) -> Arc<Engine> {
        let (waker, wakeups) = mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        let terms = LeaseTerms {
            kind: Lease::Onboarding,
            ttl: config.lease_ttl,
            safe_for: runner::lease_safe_for(config.lease_ttl),
        };
        // A runner stops when its lease is lost, and at shutdown.
        let leases = Leases::new(store.clone(), terms, Uuid::now_v7(), shutdown.clone());
        Arc::new(Engine {
            store,
            index,
            secrets,
            config,
            leases,
            steps: steps.into_iter().map(|step| (step.name(), step)).collect(),
            running: Mutex::new(HashMap::new()),
            shutdown,
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
            self.leases.check_now();
        }
    }

    /// Wakes the engine: a server id to claim, or None to look at every runnable server.
    pub fn waker(&self) -> mpsc::Sender<Option<ServerId>> {
        self.waker.clone()
    }

    /// This replica's lease owner id.
    pub fn owner(&self) -> Uuid {
        self.leases.owner()
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
        tokio::spawn(self.leases.clone().run(self.shutdown.clone()));
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

    /// Stops every runner and lets go of this replica's leases so others take over at once.
    pub async fn stop(&self, grace: Duration) {
        self.shutdown.cancel();
        self.runners.close();
        let _ = tokio::time::timeout(grace, self.runners.wait()).await;
        self.leases.release_all(grace).await;
    }
}
