//! Private MariaDB instances (instance.rs, shared with the benchmark) and onboarding against them.

mod instance;

pub use instance::*;

use std::time::Duration;

use dbtrail_servers::proto::{OnboardingStatus, OnboardingStep, ServerStatus, StepStatus};

use super::{Client, ReplicaOptions, STEPS, TestApp, TestDatabase};

/// The dedicated user of the tests, and its password.
pub const USER: &str = "bintrail";
pub const PASSWORD: &str = "s3cret-Pass_1";
/// What a correctly set up user is granted.
pub const REPLICATION_GRANTS: [&str; 3] = ["REPLICATION SLAVE", "REPLICATION CLIENT", "SELECT"];
/// The connection budget the MySQL tests give the service: 3 attempts of at most 2 s each.
pub const CONNECT_ATTEMPTS: i32 = 3;
/// How long onboarding may take to settle (active or error) in these tests.
pub const ONBOARDING_TIMEOUT: Duration = Duration::from_secs(30);

/// A replica running every onboarding step, with a small connection budget.
pub fn mysql_replica_options() -> ReplicaOptions {
    ReplicaOptions {
        mysql_steps: true,
        extra_args: vec![
            "--mysql-connect-attempts".into(),
            CONNECT_ATTEMPTS.to_string(),
            "--mysql-connect-timeout".into(),
            "2s".into(),
        ],
        ..Default::default()
    }
}

/// A private MariaDB with one table to snapshot (`shop.items`) and the replication user: ready to
/// onboard to active.
pub async fn onboardable_mariadb() -> MariaDb {
    mariadb_with(&[
        "CREATE DATABASE shop",
        "CREATE TABLE shop.items (id INT PRIMARY KEY)",
    ])
    .await
}

/// A private MariaDB where `statements` ran, with the replication user.
pub async fn mariadb_with(statements: &[&str]) -> MariaDb {
    let mariadb = MariaDb::start().await;
    mariadb.exec(statements).await;
    mariadb
        .create_user(USER, PASSWORD, &REPLICATION_GRANTS)
        .await;
    mariadb
}

/// The service in process with every onboarding step.
pub async fn mysql_app() -> TestApp {
    TestApp::start_with(mysql_replica_options()).await
}

/// Polls until onboarding of `server_id` stops being pending (active or error), and returns it.
pub async fn wait_settled(client: &Client, server_id: &str) -> OnboardingStatus {
    super::wait_for_onboarding(
        client,
        server_id,
        "onboarding to settle (active or error)",
        ONBOARDING_TIMEOUT,
        |status| status.server_status != ServerStatus::Pending as i32,
    )
    .await
}

/// Asserts that onboarding completed every step, once each, and the server is active.
#[track_caller]
pub fn assert_active(status: &OnboardingStatus) {
    super::assert_six_steps_in_order(status);
    assert_eq!(
        status.server_status,
        ServerStatus::Active as i32,
        "the server is not active: {status:#?}"
    );
    assert_eq!(status.current_step, None, "{status:#?}");
    assert_eq!(status.error, None, "{status:#?}");
    assert_eq!(status.agent_outbound_ip, None, "{status:#?}");
    for progress in &status.steps {
        assert_eq!(
            progress.status,
            StepStatus::Completed as i32,
            "step {:?} is not completed: {status:#?}",
            progress.name
        );
        assert_eq!(progress.error, None, "{status:#?}");
        assert!(
            progress.started_at.is_some() && progress.completed_at.is_some(),
            "{status:#?}"
        );
    }
}

/// Asserts that onboarding failed at `failed`: status error, the steps before it completed,
/// the steps after it pending, and the server's error is the step's. Returns the error.
#[track_caller]
pub fn assert_failed_at(status: &OnboardingStatus, failed: OnboardingStep) -> String {
    super::assert_six_steps_in_order(status);
    assert_eq!(
        status.server_status,
        ServerStatus::Error as i32,
        "expected status error at {failed:?}: {status:#?}"
    );
    assert_eq!(
        status.current_step,
        Some(failed as i32),
        "expected the failure at {failed:?}: {status:#?}"
    );
    for progress in &status.steps {
        let expected = match progress.name.cmp(&(failed as i32)) {
            std::cmp::Ordering::Less => StepStatus::Completed,
            std::cmp::Ordering::Equal => StepStatus::Failed,
            std::cmp::Ordering::Greater => StepStatus::Pending,
        };
        assert_eq!(
            progress.status, expected as i32,
            "step {:?} should be {expected:?}: {status:#?}",
            progress.name
        );
    }
    let step = super::step(status, failed);
    let error = step
        .error
        .clone()
        .unwrap_or_else(|| panic!("the failed step has no error: {status:#?}"));
    assert!(!error.is_empty(), "{status:#?}");
    assert_eq!(
        status.error.as_deref(),
        Some(error.as_str()),
        "the status's error is not the failed step's: {status:#?}"
    );
    assert!(step.completed_at.is_some(), "{status:#?}");
    error
}

/// Asserts that GetServer agrees with a settled onboarding status.
pub async fn assert_server_agrees(client: &Client, status: &OnboardingStatus) {
    let server = super::get_server(&mut client.clone(), &status.server_id).await;
    assert_eq!(server.status, status.server_status, "{server:#?}");
    assert_eq!(server.onboarding_step, status.current_step, "{server:#?}");
    assert_eq!(server.error, status.error, "{server:#?}");
}

/// One schema snapshot row of a server's index schema.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRow {
    pub is_current: bool,
    pub schema_count: i32,
    pub table_count: i32,
    pub snapshot: serde_json::Value,
}

/// The stream checkpoint row of a server's index schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRow {
    pub binlog_file: String,
    pub binlog_position: i64,
    pub gtid_set: Option<String>,
    pub replication_server_id: i64,
}

/// What the service's PostgreSQL holds for a server's index.
#[derive(Clone, Debug)]
pub struct IndexState {
    /// The schema the server's index lives in.
    pub schema: String,
    /// Every `server_*` schema of the test database, sorted.
    pub all_index_schemas: Vec<String>,
    /// The tables of the server's schema, sorted (empty when the schema does not exist).
    pub tables: Vec<String>,
    /// The snapshot rows, oldest first.
    pub snapshots: Vec<SnapshotRow>,
    /// The checkpoint rows (at most one).
    pub checkpoints: Vec<CheckpointRow>,
    /// How many change events are stored.
    pub change_events: i64,
    /// `servers.replication_server_id`.
    pub replication_server_id: Option<i64>,
}

impl IndexState {
    /// The one current snapshot; panics unless there is exactly one.
    #[track_caller]
    pub fn current_snapshot(&self) -> &SnapshotRow {
        let current: Vec<&SnapshotRow> =
            self.snapshots.iter().filter(|row| row.is_current).collect();
        assert_eq!(current.len(), 1, "expected one current snapshot: {self:#?}");
        current[0]
    }
}

/// The index schema name of `server_id` (a UUID string).
pub fn index_schema(server_id: &str) -> String {
    let id = uuid::Uuid::parse_str(server_id).expect("a server id is a UUID");
    dbtrail_servers::store::index_schema_name(dbtrail_servers::domain::ServerId::from_uuid(id))
}

/// Reads the index state of `server_id` from the test database.
pub async fn index_state(db: &TestDatabase, server_id: &str) -> IndexState {
    let client = db.connect().await;
    let schema = index_schema(server_id);
    let all_index_schemas: Vec<String> = client
        .query(
            "SELECT schema_name::text FROM information_schema.schemata \
             WHERE schema_name LIKE 'server\\_%' ORDER BY 1",
            &[],
        )
        .await
        .expect("list index schemas")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER \
             BY 1",
            &[&schema],
        )
        .await
        .expect("list index tables")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let replication_server_id: Option<i64> = client
        .query_one(
            "SELECT replication_server_id FROM servers WHERE id::text = $1",
            &[&server_id],
        )
        .await
        .expect("read servers.replication_server_id")
        .get(0);
    let mut state = IndexState {
        schema: schema.clone(),
        all_index_schemas,
        tables,
        snapshots: Vec::new(),
        checkpoints: Vec::new(),
        change_events: 0,
        replication_server_id,
    };
    if state.tables.is_empty() {
        return state;
    }
    state.snapshots = client
        .query(
            &format!(
                "SELECT is_current, schema_count, table_count, snapshot::text \
                 FROM {schema}.schema_snapshots ORDER BY id"
            ),
            &[],
        )
        .await
        .expect("read schema_snapshots")
        .iter()
        .map(|row| SnapshotRow {
            is_current: row.get(0),
            schema_count: row.get(1),
            table_count: row.get(2),
            snapshot: serde_json::from_str(row.get::<_, &str>(3)).expect("snapshot JSON"),
        })
        .collect();
    state.checkpoints = client
        .query(
            "SELECT binlog_file, binlog_position, gtid_set, replication_server_id \
             FROM stream_checkpoints WHERE server_id::text = $1",
            &[&server_id],
        )
        .await
        .expect("read stream_checkpoint")
        .iter()
        .map(|row| CheckpointRow {
            binlog_file: row.get(0),
            binlog_position: row.get(1),
            gtid_set: row.get(2),
            replication_server_id: row.get(3),
        })
        .collect();
    state.change_events = client
        .query_one(
            "SELECT count(*) FROM change_events WHERE server_id::text = $1",
            &[&server_id],
        )
        .await
        .expect("count change_events")
        .get(0);
    state
}

/// A revision of a server's onboarding status in a form both the API and `onboarding_history`
/// give: the server status and each step's (status, attempts), with names as on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub revision: i64,
    pub server_status: String,
    pub steps: Vec<(String, i64)>,
    /// The live stream's state, once onboarding reached streaming.
    pub stream_state: Option<String>,
}

fn step_status_name(status: i32) -> String {
    match StepStatus::try_from(status) {
        Ok(StepStatus::Pending) => "pending",
        Ok(StepStatus::InProgress) => "in_progress",
        Ok(StepStatus::Completed) => "completed",
        Ok(StepStatus::Failed) => "failed",
        _ => "unspecified",
    }
    .to_owned()
}

fn server_status_name(status: i32) -> String {
    match ServerStatus::try_from(status) {
        Ok(ServerStatus::Pending) => "pending",
        Ok(ServerStatus::Active) => "active",
        Ok(ServerStatus::Disconnected) => "disconnected",
        Ok(ServerStatus::Error) => "error",
        Ok(ServerStatus::Decommissioned) => "decommissioned",
        _ => "unspecified",
    }
    .to_owned()
}

impl Revision {
    /// From a message of the API.
    pub fn from_status(status: &OnboardingStatus) -> Revision {
        Revision {
            revision: status.revision,
            server_status: server_status_name(status.server_status),
            steps: status
                .steps
                .iter()
                .map(|step| (step_status_name(step.status), i64::from(step.attempts)))
                .collect(),
            stream_state: status.stream_state.map(|state| {
                dbtrail_servers::proto::StreamState::try_from(state)
                    .map(|state| state.as_str_name())
                    .unwrap_or("?")
                    .trim_start_matches("STREAM_STATE_")
                    .to_ascii_lowercase()
            }),
        }
    }

    /// From a row of `onboarding_history`.
    pub fn from_json(revision: i64, status: &serde_json::Value) -> Revision {
        let steps = status["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("no steps in stored status {status}"));
        Revision {
            revision,
            server_status: status["server_status"]
                .as_str()
                .unwrap_or_else(|| panic!("no server_status in stored status {status}"))
                .to_owned(),
            steps: steps
                .iter()
                .map(|step| {
                    (
                        step["status"].as_str().expect("a step status").to_owned(),
                        step["attempts"].as_i64().expect("step attempts"),
                    )
                })
                .collect(),
            stream_state: status["stream_state"].as_str().map(str::to_owned),
        }
    }
}

/// Every stored revision of `server_id`'s onboarding status, in order.
pub async fn stored_history(db: &TestDatabase, server_id: &str) -> Vec<Revision> {
    db.connect()
        .await
        .query(
            "SELECT revision, status::text FROM onboarding_history WHERE server_id::text = $1 \
             ORDER BY revision",
            &[&server_id],
        )
        .await
        .expect("read onboarding_history")
        .iter()
        .map(|row| {
            let status: serde_json::Value =
                serde_json::from_str(row.get::<_, &str>(1)).expect("stored status JSON");
            Revision::from_json(row.get(0), &status)
        })
        .collect()
}

/// The revisions of an onboarding that ran each step exactly once, from registration (revision
/// `first`) to active: all pending; provisioning in progress; then one revision per step that
/// completes a step and starts the next in the same write; the last completes streaming and makes
/// the server active. Every started step shows exactly one attempt.
pub fn clean_onboarding(first: i64) -> Vec<Revision> {
    let pending = ("pending".to_owned(), 0);
    let in_progress = ("in_progress".to_owned(), 1);
    let completed = ("completed".to_owned(), 1);
    let mut revisions = vec![Revision {
        revision: first,
        server_status: "pending".into(),
        steps: vec![pending.clone(); STEPS.len()],
        stream_state: None,
    }];
    for running in 0..STEPS.len() {
        let steps = (0..STEPS.len())
            .map(|index| match index.cmp(&running) {
                std::cmp::Ordering::Less => completed.clone(),
                std::cmp::Ordering::Equal => in_progress.clone(),
                std::cmp::Ordering::Greater => pending.clone(),
            })
            .collect();
        revisions.push(Revision {
            revision: first + 1 + running as i64,
            server_status: "pending".into(),
            steps,
            stream_state: None,
        });
    }
    revisions.push(Revision {
        revision: first + 1 + STEPS.len() as i64,
        server_status: "active".into(),
        steps: vec![completed; STEPS.len()],
        stream_state: Some("starting".into()),
    });
    revisions
}

/// Splits a stored history into the onboarding (up to the revision that made the server active)
/// and the revisions after it, asserting those are the live stream's: the server stays active,
/// onboarding stays complete, only the stream's state moves.
#[track_caller]
pub fn onboarding_then_stream(history: Vec<Revision>) -> Vec<Revision> {
    let active = history
        .iter()
        .position(|revision| revision.server_status == "active")
        .unwrap_or(history.len().saturating_sub(1));
    let (onboarding, stream) = history.split_at(active + 1);
    let completed = vec![("completed".to_owned(), 1); STEPS.len()];
    for revision in stream {
        assert_eq!(revision.server_status, "active", "{revision:?}");
        assert_eq!(revision.steps, completed, "{revision:?}");
        assert!(revision.stream_state.is_some(), "{revision:?}");
    }
    onboarding.to_vec()
}
