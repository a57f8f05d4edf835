//! Step 1, provisioning: take a slot on an agent with free capacity; with none, keep retrying.

use async_trait::async_trait;

use super::{Step, StepContext};
use crate::{
    domain::{OnboardingStep, onboarding::StepOutcome},
    store::StoreError,
};

/// Assigns the server to an agent.
pub struct Provisioning;

#[async_trait]
impl Step for Provisioning {
    fn name(&self) -> OnboardingStep {
        OnboardingStep::Provisioning
    }

    async fn run(&self, context: &StepContext) -> Result<StepOutcome, StoreError> {
        Ok(
            match context
                .store
                .assign_agent(context.claim, context.agent.dead_after)
                .await?
            {
                Some(outbound_ip) => StepOutcome::Completed {
                    message: format!("assigned to an agent with outbound IP {outbound_ip}"),
                    warnings: Vec::new(),
                },
                None => StepOutcome::Retry {
                    message: "no agent has free capacity; waiting for a slot".into(),
                },
            },
        )
    }
}
