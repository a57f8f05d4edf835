//! Every periodic job of a replica, on one schedule: expired request ids, onboarding history
//! past retention, the change index's time partitions (made ahead, archived and dropped once
//! closed past the hot retention, their files deleted past the archive's) and the audit log's
//! monthly ones (made ahead, dropped whole past retention), dead agents no server names any more, the key checks
//! of retired secrets keys, and finished webhook deliveries past retention.
//!
//! Every replica runs them; each is safe to run on several at once. A job that fails is logged,
//! counted in `dbtrail_housekeeping_failures_total{job}` and tried again within a minute.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    domain::partition::PartitionWidth,
    store::{IndexShards, Store, StoreError, index::archive::ArchiveSettings},
};

/// How long a request id is remembered: retries come within minutes, not days.
const REQUEST_ID_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The longest wait between two runs of a job (partitions excepted: days change slowly).
const CLEANUP_INTERVAL: Duration = Duration::from_secs(600);
/// How often the change index's partitions are looked at.
const PARTITIONS_INTERVAL: Duration = Duration::from_secs(3600);
/// A failed job is tried again after at most this.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How often the schedule is looked at.
const TICK: Duration = Duration::from_secs(1);

/// What the jobs keep and for how long.
#[derive(Debug, Clone)]
pub struct HousekeepingSettings {
    /// Onboarding revisions older than this are forgotten (each server's newest stays).
    pub history_retention: Duration,
    /// The width of the change index's partitions.
    pub partition_width: PartitionWidth,
    /// What the archive keeps hot, and how long it keeps files.
    pub archive: ArchiveSettings,
    /// Audit events older than this are dropped, a month's partition at a time.
    pub audit_retention: Duration,
    /// An agent silent this long, whose servers all moved, is forgotten.
    pub dead_agents_after: Duration,
    /// The ids of this replica's secrets keys; other keys' checks may be retired.
    pub held_keys: Vec<String>,
    /// Delivered and dead webhook deliveries older than this are forgotten.
    pub webhook_retention: Duration,
}

impl HousekeepingSettings {
    /// The settings of `serve`'s flags, with the archive's, when agents count as dead, and the
    /// replica's keys.
    pub fn of(
        config: &Config,
        archive: ArchiveSettings,
        dead_agents_after: Duration,
        held_keys: Vec<String>,
    ) -> HousekeepingSettings {
        HousekeepingSettings {
            history_retention: config.history_retention,
            partition_width: config.change_partition_width,
            archive,
            audit_retention: config.audit_retention,
            dead_agents_after,
            held_keys,
            webhook_retention: config.webhook_retention,
        }
    }
}

/// The jobs, in the order they run when several are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Partitions,
    Archive,
    AuditLog,
    RetiredKeyChecks,
    DeadAgents,
    RequestIds,
    History,
    WebhookDeliveries,
}

const JOBS: [Job; 8] = [
    Job::Partitions,
    Job::Archive,
    Job::AuditLog,
    Job::RetiredKeyChecks,
    Job::DeadAgents,
    Job::RequestIds,
    Job::History,
    Job::WebhookDeliveries,
];

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Partitions => "change_index_partitions",
            Job::Archive => "change_archive",
            Job::AuditLog => "audit_log_partitions",
            Job::RetiredKeyChecks => "retired_key_checks",
            Job::DeadAgents => "dead_agents",
            Job::RequestIds => "request_ids",
            Job::History => "onboarding_history",
            Job::WebhookDeliveries => "webhook_deliveries",
        }
    }

    fn interval(self, settings: &HousekeepingSettings) -> Duration {
        let width = settings.partition_width.duration();
        match self {
            // Well within the partitions kept ready ahead.
            Job::Partitions => {
                PARTITIONS_INTERVAL.min(width * settings.partition_width.ahead() as u32 / 4)
            }
            // A quarter of a partition's width: a closed one waits little.
            Job::Archive => (width / 4).min(CLEANUP_INTERVAL),
            Job::AuditLog => PARTITIONS_INTERVAL,
            // At least twice per retention period.
            Job::History => (settings.history_retention / 2).min(CLEANUP_INTERVAL),
            Job::RetiredKeyChecks | Job::DeadAgents | Job::RequestIds | Job::WebhookDeliveries => {
                CLEANUP_INTERVAL
            }
        }
    }

    /// The first run: at start for the jobs a new replica may find work for at once (the
    /// partitions it writes into, what replicas before it left), after an interval otherwise.
    fn first_run(self, settings: &HousekeepingSettings, start: Instant) -> Instant {
        match self {
            Job::Partitions
            | Job::Archive
            | Job::AuditLog
            | Job::RetiredKeyChecks
            | Job::DeadAgents => start,
            Job::RequestIds | Job::History | Job::WebhookDeliveries => {
                start + self.interval(settings)
            }
        }
    }
}

/// The replica's periodic jobs.
pub struct Housekeeping {
    /// The control plane's database.
    store: Store,
    /// The change index's databases (the control plane's by default).
    index: IndexShards,
    settings: HousekeepingSettings,
}

impl Housekeeping {
    pub fn new(store: Store, index: IndexShards, settings: HousekeepingSettings) -> Housekeeping {
        for job in JOBS {
            metrics::counter!("dbtrail_housekeeping_failures_total", "job" => job.name())
                .increment(0);
        }
        Housekeeping {
            store,
            index,
            settings,
        }
    }

    /// Runs each job when it is due, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let start = Instant::now();
        let mut due: Vec<(Job, Instant)> = JOBS
            .iter()
            .map(|job| (*job, job.first_run(&self.settings, start)))
            .collect();
        loop {
            for (job, at) in &mut due {
                if stop.is_cancelled() {
                    return;
                }
                if Instant::now() < *at {
                    continue;
                }
                let wait = match self.run_job(*job).await {
                    Ok(()) => job.interval(&self.settings),
                    Err(error) => {
                        metrics::counter!("dbtrail_housekeeping_failures_total", "job" => job.name())
                            .increment(1);
                        tracing::warn!(%error, job = job.name(), "housekeeping failed; trying again later");
                        job.interval(&self.settings).min(RETRY_AFTER)
                    }
                };
                *at = Instant::now() + wait;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// One run of `job`; what it removed is logged.
    async fn run_job(&self, job: Job) -> Result<(), StoreError> {
        match job {
            Job::Partitions => {
                // A failing shard does not hold the others back.
                let mut outcome = Ok(());
                for index in self.index.all() {
                    let width = self.settings.partition_width;
                    if let Err(error) = index.maintain_change_index(width).await {
                        outcome = Err(error);
                    }
                }
                outcome
            }
            Job::Archive => self.archive().await,
            Job::AuditLog | Job::RetiredKeyChecks | Job::DeadAgents => self.remove_named(job).await,
            Job::RequestIds | Job::History | Job::WebhookDeliveries => self.forget_rows(job).await,
        }
    }

    /// The jobs that remove named things (partitions, key checks, agents), each logged by name.
    async fn remove_named(&self, job: Job) -> Result<(), StoreError> {
        let settings = &self.settings;
        let (removed, what): (Vec<String>, &str) = match job {
            Job::AuditLog => (
                self.store
                    .maintain_audit_log(settings.audit_retention)
                    .await?,
                "dropped audit-log partitions past retention",
            ),
            Job::RetiredKeyChecks => (
                self.store
                    .forget_retired_key_checks(&settings.held_keys)
                    .await?,
                "removed the key checks of retired secrets keys",
            ),
            Job::DeadAgents => (
                self.store
                    .prune_dead_agents(settings.dead_agents_after)
                    .await?
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                "forgot dead agents that no server names",
            ),
            Job::Partitions
            | Job::Archive
            | Job::RequestIds
            | Job::History
            | Job::WebhookDeliveries => {
                return Ok(());
            }
        };
        if !removed.is_empty() {
            tracing::info!(?removed, "{what}");
        }
        Ok(())
    }

    /// Archives the partitions due in every shard of the index and deletes files past
    /// retention; the archive's lag (how long the oldest partition due has waited, in any
    /// shard) is a gauge. A failing shard does not hold the others back.
    async fn archive(&self) -> Result<(), StoreError> {
        let settings = &self.settings.archive;
        let due = chrono::Utc::now()
            - chrono::Duration::from_std(settings.hot_retention).unwrap_or(chrono::Duration::MAX);
        let mut lag: f64 = 0.0;
        let mut failed = Ok(());
        for index in self.index.all() {
            let outcome = index.archive_due(settings).await;
            match index.oldest_closed_partition(due).await {
                Ok(Some(ended)) => {
                    lag = lag.max((due - ended).to_std().unwrap_or_default().as_secs_f64());
                }
                Ok(None) => {}
                Err(error) => failed = Err(error),
            }
            match outcome {
                Ok(run) if !run.partitions.is_empty() || run.expired_files > 0 => {
                    tracing::info!(partitions = ?run.partitions, rows = run.rows, bytes = run.bytes, expired_files = run.expired_files, "archived change partitions");
                }
                Ok(_) => {}
                Err(error) => failed = Err(error),
            }
        }
        metrics::gauge!("dbtrail_archive_lag_seconds").set(lag);
        failed
    }

    /// The jobs that forget rows past their retention, each logged with how many.
    async fn forget_rows(&self, job: Job) -> Result<(), StoreError> {
        let settings = &self.settings;
        let forgotten = match job {
            Job::RequestIds => vec![(
                self.store.forget_request_ids(REQUEST_ID_RETENTION).await?,
                "forgot expired request ids",
            )],
            Job::History => vec![
                (
                    self.store
                        .compact_onboarding_history(settings.history_retention)
                        .await?,
                    "compacted onboarding history",
                ),
                (
                    self.store
                        .compact_fleet_history(settings.history_retention)
                        .await?,
                    "compacted fleet history",
                ),
            ],
            Job::WebhookDeliveries => vec![(
                self.store
                    .prune_webhook_deliveries(settings.webhook_retention)
                    .await?,
                "forgot webhook deliveries past retention",
            )],
            Job::Partitions
            | Job::Archive
            | Job::AuditLog
            | Job::RetiredKeyChecks
            | Job::DeadAgents => vec![],
        };
        for (count, what) in forgotten {
            if count > 0 {
                tracing::info!(forgotten = count, "{what}");
            }
        }
        Ok(())
    }
}
