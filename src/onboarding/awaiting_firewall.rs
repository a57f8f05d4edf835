//! Step 2, awaiting_firewall: SSH tunnels wait for ConfirmFirewall; other connections need no
//! firewall rule and complete at once.

use async_trait::async_trait;

use super::{Step, StepContext};
use crate::{
    domain::{OnboardingStep, onboarding::StepOutcome},
    store::StoreError,
};

/// Waits for the customer's firewall confirmation where one is needed.
pub struct AwaitingFirewall;

#[async_trait]
impl Step for AwaitingFirewall {
    fn name(&self) -> OnboardingStep {
        OnboardingStep::AwaitingFirewall
    }

    async fn run(&self, context: &StepContext) -> Result<StepOutcome, StoreError> {
        Ok(context.server.firewall_outcome())
    }
}
