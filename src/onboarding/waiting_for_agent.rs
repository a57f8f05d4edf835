//! Step 3, waiting_for_agent: the agent opens the connection path and logs in to MySQL with the
//! stored credentials; the message names the server's flavour and version.

use async_trait::async_trait;

use super::{Step, StepContext};
use crate::{
    domain::{OnboardingStep, onboarding::StepOutcome},
    source::connection::{self, mysql},
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
        let address = mysql::address(&context.source());
        let mut link = match connection::connect(&context.source()).await {
            Ok(link) => link,
            Err(failure) => return Ok(context.outcome_of(failure)),
        };
        let through = match &context.server.spec.ssh_tunnel {
            Some(tunnel) if link.tunnel.is_some() => {
                format!(" through the SSH jumphost {}:{}", tunnel.host, tunnel.port)
            }
            _ => String::new(),
        };
        let outcome = match mysql::version(&mut link.connection, &address).await {
            Ok((flavour, version)) => StepOutcome::Completed {
                message: format!(
                    "logged in to {flavour} {version} at {address} as {}{through}",
                    context.server.spec.mysql_user
                ),
                warnings: Vec::new(),
            },
            Err(failure) => context.outcome_of(failure),
        };
        link.close().await;
        Ok(outcome)
    }
}
