//! Step 3, waiting_for_agent: the agent opens the connection path and logs in to MySQL with the
//! stored credentials; the message names the server's flavour and version.

use async_trait::async_trait;

use super::{Step, StepContext, mysql};
use crate::{
    domain::{OnboardingStep, onboarding::StepOutcome},
    store::StoreError,
};

/// Logs in to the server.
pub struct WaitingForAgent;

#[async_trait]
impl Step for WaitingForAgent {
    fn name(&self) -> OnboardingStep {
        OnboardingStep::WaitingForAgent
    }

    async fn run(&self, context: &StepContext) -> Result<StepOutcome, StoreError> {
        let address = mysql::address(context);
        let mut connection = match mysql::connect(context).await {
            Ok(connection) => connection,
            Err(failure) => return Ok(failure.outcome(context)),
        };
        let outcome = match mysql::version(&mut connection, &address).await {
            Ok((flavour, version)) => StepOutcome::Completed {
                message: format!(
                    "logged in to {flavour} {version} at {address} as {}",
                    context.server.spec.mysql_user
                ),
            },
            Err(failure) => failure.outcome(context),
        };
        mysql::close(connection).await;
        Ok(outcome)
    }
}
