//! How a claimed server is driven: its steps one after another under the lease, each run under
//! its deadline, its outcome written and recorded, a dead agent's server adopted, a server
//! handed to its live agent or given back for another tenant's sake.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Activity, Engine, StepContext,
    runner::{ActiveSpan, Run, Runner},
};
use crate::{
    domain::{
        OnboardingStep, ServerId, ServerStatus, StepStatus, onboarding::StepOutcome, server::Server,
    },
    store::{Claim, Scope, StoreError},
    telemetry,
};

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
    /// Runs one claimed server's steps until it waits, fails, completes, or the lease is lost.
    pub(super) async fn drive(self: &Arc<Engine>, claim: Claim, runner: &Arc<Runner>) {
        let lost = runner.lease.lost_token().clone();
        let result = self.drive_steps(claim, &lost, runner).await;
        match result {
            Err(StoreError::Fenced) => {
                tracing::info!(server_id = %claim.server_id, "lease taken over; runner stops");
            }
            Err(error) => {
                tracing::warn!(server_id = %claim.server_id, %error, "runner stopped");
            }
            Ok(()) => {}
        }
        self.leases.let_go(claim).await;
    }

    /// Takes over a server whose agent died: this replica's agent runs it from now on, if it has
    /// a free slot (checked under the agent's row lock); else None, and the runner lets it go. An
    /// SSH tunnel whose outbound IP thereby changes waits for the firewall again, with the new IP.
    pub(super) async fn adopt(&self, claim: Claim) -> Result<Option<Server>, StoreError> {
        let agent = &self.config.agent;
        let adopted = self
            .store
            .adopt_orphan(claim, agent.id, |server| {
                server.adopt(agent.id, &agent.outbound_ip)
            })
            .await?;
        let Some((server, previous)) = adopted else {
            tracing::info!(server_id = %claim.server_id, "no free slot to adopt a server of a dead agent");
            return Ok(None);
        };
        tracing::info!(
            server_id = %claim.server_id,
            previous_outbound_ip = previous.as_deref().unwrap_or("none"),
            outbound_ip = %agent.outbound_ip,
            "adopted a server of a dead agent"
        );
        Ok(Some(server))
    }

    /// Runs the server's steps one after another until it waits, fails, completes, is handed to
    /// another agent, yields its slot, or the lease is lost.
    pub(super) async fn drive_steps(
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
    pub(super) async fn write_outcome(
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
    /// it was handed over to the live agent that provisioning gave it to, or when it is a dead
    /// agent's server and this agent has no free slot to adopt it. A dead agent's server is
    /// adopted first.
    pub(super) async fn server_to_run(
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
        let Some(server) = self.adopt(claim).await? else {
            return Ok(None);
        };
        runner.wrote(server.revision);
        Ok(Some(server))
    }

    /// The server with `step` in progress: recorded as begun unless it already was.
    pub(super) async fn mark_step_begun(
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
    pub(super) async fn attempt_step(
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
    pub(super) fn store_fault(
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
    pub(super) fn stall(
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

    /// Gives a server back for another tenant's sake: its step shows that it waits for a runner
    /// (pending), and runs again when a slot is free.
    pub(super) async fn yield_server(&self, claim: Claim) -> Result<(), StoreError> {
        tracing::info!(server_id = %claim.server_id, "runner yielded its slot to a waiting tenant");
        metrics::counter!("dbtrail_onboarding_runner_yields_total").increment(1);
        self.store
            .modify_server(Scope::Runner(claim.fence), claim.server_id, |server| {
                server.wait_for_runner();
                Ok::<_, StoreError>(())
            })
            .await?;
        self.store.hand_over(claim).await
    }

    /// One run of a step on record: which replica (and agent) ran it under which epoch, and when
    /// it was active.
    pub(super) fn log_run(
        &self,
        claim: Claim,
        step: OnboardingStep,
        active: &ActiveSpan,
        how: &str,
    ) {
        tracing::info!(
            at_us = ActiveSpan::micros(Some(SystemTime::now())),
            server_id = %claim.server_id,
            %step,
            runner = %self.leases.owner(),
            agent_id = %self.config.agent.id,
            epoch = claim.fence.epoch,
            active_from_us = ActiveSpan::micros(active.first),
            active_until_us = ActiveSpan::micros(active.last),
            phase = how,
            "step run"
        );
    }

    pub(super) async fn run_step(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(100), Duration::from_secs(30));
        assert_eq!(backoff(0), Duration::from_millis(500));
    }
}
