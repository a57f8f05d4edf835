//! The onboarding state machine: six steps in order, their transitions, and the status a watcher
//! sees. The engine decides when to move; this module decides what a move means.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{OnboardingStep, ServerId, ServerStatus, StepStatus, StreamState};

/// Message of awaiting_firewall when the connection needs no firewall rule.
pub const FIREWALL_AUTO_COMPLETED: &str = "auto-completed: only SSH tunnels need a firewall rule";

/// The progress of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepProgress {
    pub name: OnboardingStep,
    pub status: StepStatus,
    #[serde(default, deserialize_with = "super::stored_time::optional")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "super::stored_time::optional")]
    pub completed_at: Option<DateTime<Utc>>,
    pub message: String,
    pub error: Option<String>,
    pub attempts: i32,
    /// What a completed step found that works but deserves the operator's attention, each naming
    /// its fix. Rows stored before warnings existed have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl StepProgress {
    fn pending(name: OnboardingStep) -> StepProgress {
        StepProgress {
            name,
            status: StepStatus::Pending,
            started_at: None,
            completed_at: None,
            message: String::new(),
            error: None,
            attempts: 0,
            warnings: Vec::new(),
        }
    }
}

/// All six steps, always in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Steps(Vec<StepProgress>);

impl Default for Steps {
    fn default() -> Steps {
        Steps(
            OnboardingStep::ALL
                .iter()
                .map(|step| StepProgress::pending(*step))
                .collect(),
        )
    }
}

impl Steps {
    /// Rebuilds the steps from stored progress, filling in any step that is missing.
    pub fn from_stored(stored: Vec<StepProgress>) -> Steps {
        let mut steps = Steps::default();
        for progress in stored {
            let index = progress.name.index();
            steps.0[index] = progress;
        }
        steps
    }

    /// The steps, in order.
    pub fn all(&self) -> &[StepProgress] {
        &self.0
    }

    /// One step's progress.
    pub fn get(&self, step: OnboardingStep) -> &StepProgress {
        &self.0[step.index()]
    }

    fn get_mut(&mut self, step: OnboardingStep) -> &mut StepProgress {
        &mut self.0[step.index()]
    }

    /// The first step that is not completed.
    pub fn current(&self) -> Option<OnboardingStep> {
        self.0
            .iter()
            .find(|progress| progress.status != StepStatus::Completed)
            .map(|progress| progress.name)
    }

    /// The error of the first failed step.
    pub fn error(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|progress| progress.status == StepStatus::Failed)
            .and_then(|progress| progress.error.as_deref())
    }

    /// Marks a step in progress: a new attempt.
    pub fn start(&mut self, step: OnboardingStep, message: &str, now: DateTime<Utc>) {
        let progress = self.get_mut(step);
        if progress.status != StepStatus::InProgress {
            progress.started_at = Some(now);
        }
        progress.status = StepStatus::InProgress;
        progress.completed_at = None;
        progress.error = None;
        progress.warnings.clear();
        progress.attempts += 1;
        progress.message = message.to_owned();
    }

    /// Records progress of a step in progress without a new attempt.
    pub fn report(&mut self, step: OnboardingStep, message: &str) {
        self.get_mut(step).message = message.to_owned();
    }

    /// Completes a step, with what it found worth a warning.
    pub fn complete(
        &mut self,
        step: OnboardingStep,
        message: &str,
        warnings: &[String],
        now: DateTime<Utc>,
    ) {
        let progress = self.get_mut(step);
        progress.status = StepStatus::Completed;
        progress.started_at.get_or_insert(now);
        progress.completed_at = Some(now);
        progress.message = message.to_owned();
        progress.error = None;
        progress.warnings = warnings.to_vec();
    }

    /// Fails a step.
    pub fn fail(&mut self, step: OnboardingStep, error: &str, now: DateTime<Utc>) {
        let progress = self.get_mut(step);
        progress.status = StepStatus::Failed;
        progress.completed_at = Some(now);
        progress.error = Some(error.to_owned());
    }

    /// A step in progress whose runner gave its slot to another tenant: pending again with
    /// `message`, until a runner takes it. The interrupted attempt is not spent (starting again
    /// counts it once more); a step not in progress is left as it is.
    pub fn requeue(&mut self, step: OnboardingStep, message: &str) {
        let progress = self.get_mut(step);
        if progress.status != StepStatus::InProgress {
            return;
        }
        progress.status = StepStatus::Pending;
        progress.attempts = (progress.attempts - 1).max(0);
        progress.message = message.to_owned();
    }

    /// Puts a step back to pending with its attempts reset, to run again.
    pub fn reset(&mut self, step: OnboardingStep) {
        *self.get_mut(step) = StepProgress::pending(step);
    }

    /// Puts `from` and every later step back to pending.
    pub fn reset_from(&mut self, from: OnboardingStep) {
        for step in &OnboardingStep::ALL[from.index()..] {
            self.reset(*step);
        }
    }
}

/// What a running step reports back to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Done; the next step starts. `warnings` name what works but needs the operator's
    /// attention, each with its fix; they stay on the step until it runs again.
    Completed {
        message: String,
        warnings: Vec<String>,
    },
    /// Nothing more to do until something outside changes (a confirmation, an agent); the runner lets go.
    Waiting { message: String },
    /// A transient fault; the step runs again after a backoff, as a new attempt.
    Retry { message: String },
    /// The step cannot pass; the server goes to error.
    Failed { error: String },
}

impl StepOutcome {
    /// Done, with nothing to warn about.
    pub fn completed(message: impl Into<String>) -> StepOutcome {
        StepOutcome::Completed {
            message: message.into(),
            warnings: Vec::new(),
        }
    }

    /// A transient fault in attempt `attempts` of a step: retried until the budget is spent,
    /// then failed.
    pub fn transient(message: &str, attempts: i32, budget: i32) -> StepOutcome {
        if attempts >= budget {
            StepOutcome::Failed {
                error: format!("{message} (gave up after {attempts} attempts)"),
            }
        } else {
            StepOutcome::Retry {
                message: format!("{message}; attempt {attempts} of {budget} failed, retrying"),
            }
        }
    }
}

/// The onboarding status of a server, as watchers and GetOnboardingStatus see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnboardingStatus {
    pub server_id: ServerId,
    pub current_step: Option<OnboardingStep>,
    pub steps: Vec<StepProgress>,
    pub error: Option<String>,
    pub agent_outbound_ip: Option<String>,
    pub server_status: ServerStatus,
    /// The live stream's state, once onboarding reached streaming: each change is a revision.
    #[serde(default)]
    pub stream_state: Option<StreamState>,
    pub revision: i64,
}

impl OnboardingStatus {
    /// Whether a watch without `follow` ends after this message: a disconnected server's
    /// stream is being retried, so its watchers wait to see how that ends.
    pub fn is_final(&self) -> bool {
        !matches!(
            self.server_status,
            ServerStatus::Pending | ServerStatus::Disconnected
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_steps_are_six_pending_in_order() {
        let steps = Steps::default();
        let names: Vec<_> = steps.all().iter().map(|step| step.name).collect();
        assert_eq!(names, OnboardingStep::ALL);
        assert!(
            steps
                .all()
                .iter()
                .all(|step| step.status == StepStatus::Pending)
        );
        assert_eq!(steps.current(), Some(OnboardingStep::Provisioning));
        assert_eq!(steps.error(), None);
    }

    #[test]
    fn completing_moves_current_and_failing_sets_error() {
        let now = Utc::now();
        let mut steps = Steps::default();
        steps.start(OnboardingStep::Provisioning, "", now);
        steps.complete(OnboardingStep::Provisioning, "agent a", &[], now);
        assert_eq!(steps.current(), Some(OnboardingStep::AwaitingFirewall));
        steps.start(OnboardingStep::AwaitingFirewall, "", now);
        steps.fail(OnboardingStep::AwaitingFirewall, "boom", now);
        assert_eq!(steps.error(), Some("boom"));
        assert_eq!(steps.get(OnboardingStep::AwaitingFirewall).attempts, 1);
        steps.reset_from(OnboardingStep::AwaitingFirewall);
        assert_eq!(steps.error(), None);
        assert_eq!(steps.get(OnboardingStep::AwaitingFirewall).attempts, 0);
        assert_eq!(
            steps.get(OnboardingStep::Provisioning).status,
            StepStatus::Completed
        );
    }

    #[test]
    fn a_requeued_step_is_pending_and_its_interrupted_attempt_is_not_spent() {
        let now = Utc::now();
        let mut steps = Steps::default();
        steps.requeue(OnboardingStep::Provisioning, "waits");
        assert_eq!(steps.get(OnboardingStep::Provisioning).message, "");
        steps.start(OnboardingStep::Provisioning, "", now);
        steps.requeue(OnboardingStep::Provisioning, "waits");
        let progress = steps.get(OnboardingStep::Provisioning);
        assert_eq!(progress.status, StepStatus::Pending);
        assert_eq!(progress.attempts, 0);
        assert_eq!(progress.message, "waits");
        assert_eq!(steps.current(), Some(OnboardingStep::Provisioning));
        steps.start(OnboardingStep::Provisioning, "", now);
        assert_eq!(steps.get(OnboardingStep::Provisioning).attempts, 1);
    }

    #[test]
    fn restarting_an_in_progress_step_counts_an_attempt_and_keeps_its_start() {
        let first = Utc::now();
        let later = first + chrono::Duration::seconds(5);
        let mut steps = Steps::default();
        steps.start(OnboardingStep::Provisioning, "", first);
        steps.start(OnboardingStep::Provisioning, "again", later);
        let progress = steps.get(OnboardingStep::Provisioning);
        assert_eq!(progress.attempts, 2);
        assert_eq!(progress.started_at, Some(first));
        assert_eq!(progress.message, "again");
    }

    #[test]
    fn warnings_stay_with_a_completed_step_until_it_runs_again() {
        let now = Utc::now();
        let mut steps = Steps::default();
        steps.start(OnboardingStep::Provisioning, "", now);
        let warnings = vec!["sync_binlog is 0: SET GLOBAL sync_binlog = 1".to_owned()];
        steps.complete(OnboardingStep::Provisioning, "done", &warnings, now);
        assert_eq!(steps.get(OnboardingStep::Provisioning).warnings, warnings);
        steps.start(OnboardingStep::Provisioning, "again", now);
        assert_eq!(
            steps.get(OnboardingStep::Provisioning).warnings,
            Vec::<String>::new()
        );
        steps.complete(OnboardingStep::Provisioning, "done", &warnings, now);
        steps.reset(OnboardingStep::Provisioning);
        assert_eq!(
            steps.get(OnboardingStep::Provisioning).warnings,
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_step_stored_before_warnings_existed_reads_without_any() {
        let stored = serde_json::json!({
            "name": "initializing", "status": "completed",
            "started_at": "2026-01-02T03:04:05Z", "completed_at": "2026-01-02T03:04:06Z",
            "message": "ok", "error": null, "attempts": 1,
        });
        let progress: StepProgress = serde_json::from_value(stored).unwrap();
        assert_eq!(progress.warnings, Vec::<String>::new());
        assert_eq!(progress.message, "ok");
        // And a step without warnings is stored as before: no new key.
        let json = serde_json::to_value(&progress).unwrap();
        assert_eq!(json.get("warnings"), None);
    }

    #[test]
    fn stored_steps_round_trip_through_json() {
        let mut steps = Steps::default();
        steps.start(OnboardingStep::Provisioning, "working", Utc::now());
        steps.complete(
            OnboardingStep::Provisioning,
            "done",
            &["a warning".to_owned()],
            Utc::now(),
        );
        let json = serde_json::to_value(&steps).unwrap();
        let back: Vec<StepProgress> = serde_json::from_value(json).unwrap();
        assert_eq!(Steps::from_stored(back), steps);
    }
}
