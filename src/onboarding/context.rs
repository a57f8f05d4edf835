//! What an onboarding step works with: its server, its lease, the stores, the agent, and what it
//! is doing now; and how it reaches the customer's MySQL through `crate::source` under its own
//! lease, with a failure there turned into the step's outcome.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{
    agent::AgentSettings,
    domain::{OnboardingStep, onboarding::StepOutcome, server::Server},
    secrets::SecretBox,
    source::connection::{self, ConnectContext, LeaseHolder, MysqlFailure},
    store::{Claim, IndexShards, Scope, Store, StoreError},
};

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
    pub index: IndexShards,
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

    pub(super) fn describe(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl StepContext {
    /// What connecting to the step's server needs: its secrets, the agent's reach, and this
    /// step's lease, which fences the host key connecting records.
    pub fn source(&self) -> ConnectContext<'_> {
        ConnectContext {
            server: &self.server,
            secrets: &self.secrets,
            reach: self.agent.reach(),
            holder: self,
        }
    }

    /// The step outcome of a failure to connect or query: transient faults are retried until the
    /// budget is spent.
    pub fn outcome_of(&self, failure: MysqlFailure) -> StepOutcome {
        match failure {
            MysqlFailure::Permanent(error) => StepOutcome::Failed { error },
            MysqlFailure::Transient(message) => StepOutcome::transient(
                &message,
                self.server.steps.get(self.step).attempts,
                self.agent.connect_attempts,
            ),
        }
    }
}

#[async_trait]
impl LeaseHolder for StepContext {
    async fn record_host_key(&self, server: &Server, fingerprint: &str) -> Result<(), StoreError> {
        let fenced = Scope::Runner(self.claim.fence);
        connection::record_host_key(&self.store, fenced, server, fingerprint).await
    }

    fn doing(&self, what: String) {
        self.activity.set(what);
    }
}
