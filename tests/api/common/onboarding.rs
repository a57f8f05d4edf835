//! Servers to register, and onboarding: registering, waiting, reading steps and watches.

use super::*;

// ------------------------------------------------------------------------------------------------
// Servers and onboarding
// ------------------------------------------------------------------------------------------------

/// A valid direct server named `name`. Every host a test registers is on loopback (or
/// `localhost`, resolved from /etc/hosts): once the agent connects to servers, no test may send
/// traffic, DNS included, anywhere else.
pub fn direct_server(name: &str) -> proto::Server {
    proto::Server {
        name: name.to_owned(),
        host: "127.0.0.1".to_owned(),
        port: 3306,
        mysql_user: "bintrail".to_owned(),
        mysql_password: "s3cret-password".to_owned(),
        connection_method: ConnectionMethod::Direct as i32,
        ..Default::default()
    }
}

/// A valid ssh_tunnel server named `name`.
pub fn ssh_server(name: &str) -> proto::Server {
    proto::Server {
        connection_method: ConnectionMethod::SshTunnel as i32,
        ssh_tunnel: Some(proto::SshTunnel {
            host: "localhost".to_owned(),
            port: 22,
            user: "ec2-user".to_owned(),
            private_key: TEST_PRIVATE_KEY.to_owned(),
            ..Default::default()
        }),
        ..direct_server(name)
    }
}

/// The Status a registration that must fail fails with.
pub async fn register_error(client: &mut Client, server: proto::Server) -> Status {
    expect_err(
        client
            .register_server(proto::RegisterServerRequest {
                server: Some(server),
                ..Default::default()
            })
            .await,
    )
}

/// Registers `server`, panicking on failure.
pub async fn register(client: &mut Client, server: proto::Server) -> proto::Server {
    let name = server.name.clone();
    client
        .register_server(proto::RegisterServerRequest {
            server: Some(server),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("RegisterServer {name}: {status:?}"))
        .into_inner()
}

/// An UpdateServer request changing the `paths` of `server`.
pub fn update_request(server: proto::Server, paths: &[&str]) -> proto::UpdateServerRequest {
    proto::UpdateServerRequest {
        server: Some(server),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|path| path.to_string()).collect(),
        }),
        request_id: String::new(),
    }
}

/// UpdateServer of the `paths` of `server`, panicking on failure.
pub async fn update_server(
    client: &mut Client,
    server: proto::Server,
    paths: &[&str],
) -> proto::Server {
    client
        .update_server(update_request(server, paths))
        .await
        .unwrap_or_else(|status| panic!("UpdateServer {paths:?}: {status:?}"))
        .into_inner()
}

/// RetryOnboarding of `server_id`, panicking on failure: the status it answers.
pub async fn retry_onboarding(client: &mut Client, server_id: &str) -> OnboardingStatus {
    client
        .retry_onboarding(proto::RetryOnboardingRequest {
            server_id: server_id.to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("RetryOnboarding {server_id}: {status:?}"))
        .into_inner()
}

/// The onboarding status of `server_id`, panicking on failure.
pub async fn onboarding_status(client: &mut Client, server_id: &str) -> OnboardingStatus {
    client
        .get_onboarding_status(proto::GetOnboardingStatusRequest {
            server_id: server_id.to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("GetOnboardingStatus {server_id}: {status:?}"))
        .into_inner()
}

/// GetServer, panicking on failure.
pub async fn get_server(client: &mut Client, server_id: &str) -> proto::Server {
    client
        .get_server(proto::GetServerRequest {
            server_id: server_id.to_owned(),
        })
        .await
        .unwrap_or_else(|status| panic!("GetServer {server_id}: {status:?}"))
        .into_inner()
}

/// The progress of `step` in `status`.
#[track_caller]
pub fn step(status: &OnboardingStatus, step: OnboardingStep) -> &StepProgress {
    status
        .steps
        .iter()
        .find(|progress| progress.name == step as i32)
        .unwrap_or_else(|| panic!("no {step:?} in {status:#?}"))
}

/// The six steps, in order.
pub const STEPS: [OnboardingStep; 6] = [
    OnboardingStep::Provisioning,
    OnboardingStep::AwaitingFirewall,
    OnboardingStep::WaitingForAgent,
    OnboardingStep::Initializing,
    OnboardingStep::Snapshotting,
    OnboardingStep::Streaming,
];

/// Asserts the status lists the six steps, in order.
#[track_caller]
pub fn assert_six_steps_in_order(status: &OnboardingStatus) {
    let names: Vec<i32> = status.steps.iter().map(|progress| progress.name).collect();
    let expected: Vec<i32> = STEPS.iter().map(|step| *step as i32).collect();
    assert_eq!(
        names, expected,
        "the steps are not the six in order: {status:#?}"
    );
}

/// The status of `step` in `status`.
#[track_caller]
pub fn step_status(status: &OnboardingStatus, which: OnboardingStep) -> StepStatus {
    StepStatus::try_from(step(status, which).status).expect("a known step status")
}

/// Registers `server` and waits until onboarding stops where the core steps leave it: at
/// awaiting_firewall for an ssh_tunnel server, at waiting_for_agent for a direct one. Returns the
/// server's id and that status.
pub async fn register_and_settle(
    client: &mut Client,
    server: proto::Server,
) -> (String, OnboardingStatus) {
    let ssh_tunnel = server.connection_method == ConnectionMethod::SshTunnel as i32;
    let id = register(client, server).await.server_id;
    let status = if ssh_tunnel {
        awaiting_firewall(client, &id).await
    } else {
        waiting_for_agent(client, &id).await
    };
    (id, status)
}

/// Waits until provisioning of `server_id` is in progress (where it stays while no agent has
/// room), and returns that status; `what` names the wait should it time out.
pub async fn wait_provisioning(client: &Client, server_id: &str, what: &str) -> OnboardingStatus {
    wait_for_onboarding(client, server_id, what, Duration::from_secs(15), |status| {
        step_status(status, OnboardingStep::Provisioning) == StepStatus::InProgress
    })
    .await
}

/// Registers `count` direct servers named `{prefix}-{index}`, then waits until provisioning of
/// each is in progress (`what` names the wait).
pub async fn register_provisioning(
    client: &mut Client,
    prefix: &str,
    count: usize,
    what: &str,
) -> Vec<proto::Server> {
    let mut servers = Vec::new();
    for index in 0..count {
        servers.push(register(client, direct_server(&format!("{prefix}-{index}"))).await);
    }
    for server in &servers {
        wait_provisioning(client, &server.server_id, what).await;
    }
    servers
}

/// Waits until the server waits at waiting_for_agent (where the core steps leave it).
pub async fn waiting_for_agent(client: &Client, server_id: &str) -> OnboardingStatus {
    wait_for_onboarding(
        client,
        server_id,
        "waiting_for_agent",
        Duration::from_secs(15),
        is_waiting_for_agent,
    )
    .await
}

/// Whether onboarding waits at waiting_for_agent because no agent can run the MySQL steps yet.
pub fn is_waiting_for_agent(status: &OnboardingStatus) -> bool {
    status.current_step == Some(OnboardingStep::WaitingForAgent as i32)
        && status.steps.len() == 6
        && step_status(status, OnboardingStep::WaitingForAgent) == StepStatus::InProgress
        && step(status, OnboardingStep::WaitingForAgent)
            .message
            .contains("no agent can run")
}

/// Waits until an ssh_tunnel server waits at awaiting_firewall.
pub async fn awaiting_firewall(client: &Client, server_id: &str) -> OnboardingStatus {
    wait_for_onboarding(
        client,
        server_id,
        "awaiting_firewall",
        Duration::from_secs(15),
        is_awaiting_firewall,
    )
    .await
}

/// Whether an ssh_tunnel server waits at awaiting_firewall, saying what to allow.
pub fn is_awaiting_firewall(status: &OnboardingStatus) -> bool {
    status.current_step == Some(OnboardingStep::AwaitingFirewall as i32)
        && status.steps.len() == 6
        && step_status(status, OnboardingStep::AwaitingFirewall) == StepStatus::InProgress
        && !step(status, OnboardingStep::AwaitingFirewall)
            .message
            .is_empty()
}

/// Whether provisioning and awaiting_firewall are behind the server (whatever the later steps
/// make of it).
pub fn is_past_firewall(status: &OnboardingStatus) -> bool {
    status.steps.len() == 6
        && step_status(status, OnboardingStep::Provisioning) == StepStatus::Completed
        && step_status(status, OnboardingStep::AwaitingFirewall) == StepStatus::Completed
}

/// Every revision of a server's onboarding status so far, replayed from revision 0.
pub async fn history(client: &Client, server_id: &str) -> Vec<OnboardingStatus> {
    let mut client = client.clone();
    let current = onboarding_status(&mut client, server_id).await.revision;
    let mut watch = open_watch(&mut client, server_id, Some(0), true)
        .await
        .expect("replay the history");
    watch
        .messages_until(Duration::from_secs(5), |message| {
            message.revision >= current
        })
        .await
}

/// Opens a watch of `server_id` from after revision `since` (without follow) and reads the
/// replayed revisions up to `until`, each within ten seconds, asserting that they are
/// consecutive. The watch stays open for what comes after.
pub async fn replay_since(
    client: &mut Client,
    server_id: &str,
    since: i64,
    until: i64,
) -> (Watch, Vec<OnboardingStatus>) {
    let mut watch = open_watch(client, server_id, Some(since), false)
        .await
        .unwrap_or_else(|status| panic!("WatchOnboarding since_revision={since}: {status:?}"));
    let replayed = watch
        .messages_until(Duration::from_secs(10), |message| message.revision == until)
        .await;
    assert_consecutive_revisions(&replayed);
    (watch, replayed)
}

/// Reads `watch` until `server_id` is no longer pending, each message within `timeout` of the
/// previous, asserting that the revisions are consecutive and that the last message is the
/// status GetOnboardingStatus gives now. Returns the messages and that last one.
pub async fn watch_until_settled(
    watch: &mut Watch,
    client: &mut Client,
    server_id: &str,
    timeout: Duration,
) -> (Vec<OnboardingStatus>, OnboardingStatus) {
    let messages = watch
        .messages_until(timeout, |message| {
            message.server_status != proto::ServerStatus::Pending as i32
        })
        .await;
    assert_consecutive_revisions(&messages);
    let status = messages.last().expect("a final message").clone();
    assert_eq!(status, onboarding_status(client, server_id).await);
    (messages, status)
}

/// Asserts that `which` was tried `attempts` times in the watched `messages`, each retry
/// announced while the step was in progress: `announced(failed, message)` judges the message
/// that announced the retry after attempt `failed`.
#[track_caller]
pub fn assert_retries_announced(
    messages: &[OnboardingStatus],
    which: OnboardingStep,
    attempts: i32,
    announced: impl Fn(i32, &str) -> bool,
) {
    let retries: Vec<(i32, String)> = messages
        .iter()
        .map(|message| step(message, which))
        .filter(|progress| progress.status == StepStatus::InProgress as i32)
        .map(|progress| (progress.attempts, progress.message.clone()))
        .collect();
    assert_eq!(
        retries
            .iter()
            .map(|(attempts, _)| *attempts)
            .collect::<Vec<_>>(),
        (1..=attempts).collect::<Vec<_>>(),
        "{retries:#?}"
    );
    for (attempt, message) in &retries[1..] {
        assert!(announced(attempt - 1, message), "{message}");
    }
}

/// One line per revision: the current step, and each step's status and message.
pub fn describe_history(history: &[OnboardingStatus]) -> String {
    let mut text = String::new();
    for status in history {
        text.push_str(&format!(
            "rev {} current {:?} ip {:?} status {:?}\n",
            status.revision,
            status
                .current_step
                .and_then(|step| OnboardingStep::try_from(step).ok()),
            status.agent_outbound_ip,
            proto::ServerStatus::try_from(status.server_status).ok()
        ));
        for progress in &status.steps {
            text.push_str(&format!(
                "    {:?} {:?} {:?} error {:?}\n",
                OnboardingStep::try_from(progress.name).ok(),
                StepStatus::try_from(progress.status).ok(),
                progress.message,
                progress.error
            ));
        }
    }
    text
}

/// Polls the onboarding status of `server_id` until `condition` holds, and returns it; on
/// timeout, panics naming `what` with the last status seen.
pub async fn wait_for_onboarding(
    client: &Client,
    server_id: &str,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&OnboardingStatus) -> bool,
) -> OnboardingStatus {
    let mut client = client.clone();
    let started = Instant::now();
    loop {
        let status = onboarding_status(&mut client, server_id).await;
        if condition(&status) {
            return status;
        }
        if started.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what} on server {server_id}; last \
                 status: {status:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens WatchOnboarding; the error of a refused watch may come from the call or as the first
/// message, and is returned either way.
pub async fn open_watch(
    client: &mut Client,
    server_id: &str,
    since_revision: Option<i64>,
    follow: bool,
) -> Result<Watch, Status> {
    let stream = client
        .watch_onboarding(WatchOnboardingRequest {
            server_id: server_id.to_owned(),
            since_revision,
            follow,
        })
        .await?
        .into_inner();
    Ok(Watch { stream })
}

/// The error a watch fails with, from the call or from its first message.
pub async fn watch_error(client: &mut Client, server_id: &str) -> Status {
    match open_watch(client, server_id, None, false).await {
        Err(status) => status,
        Ok(mut watch) => match watch.next(Duration::from_secs(5)).await {
            WatchEvent::Error(status) => status,
            other => panic!("expected the watch of {server_id} to fail, got {other:?}"),
        },
    }
}

/// An open WatchOnboarding stream.
pub struct Watch {
    pub stream: tonic::Streaming<OnboardingStatus>,
}

/// What a watch did next.
#[derive(Debug)]
pub enum WatchEvent {
    Message(OnboardingStatus),
    Error(Status),
    Ended,
    TimedOut,
}

impl Watch {
    /// The next event within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> WatchEvent {
        match tokio::time::timeout(timeout, self.stream.message()).await {
            Err(_) => WatchEvent::TimedOut,
            Ok(Ok(Some(message))) => WatchEvent::Message(message),
            Ok(Ok(None)) => WatchEvent::Ended,
            Ok(Err(status)) => WatchEvent::Error(status),
        }
    }

    /// The next message within `timeout`; panics on anything else.
    pub async fn message(&mut self, timeout: Duration) -> OnboardingStatus {
        match self.next(timeout).await {
            WatchEvent::Message(message) => message,
            other => panic!("expected a watch message within {timeout:?}, got {other:?}"),
        }
    }

    /// Messages until one satisfies `condition` (included), each within `timeout` of the previous.
    pub async fn messages_until(
        &mut self,
        timeout: Duration,
        condition: impl Fn(&OnboardingStatus) -> bool,
    ) -> Vec<OnboardingStatus> {
        let mut messages = Vec::new();
        loop {
            match self.next(timeout).await {
                WatchEvent::Message(message) => {
                    let done = condition(&message);
                    messages.push(message);
                    if done {
                        return messages;
                    }
                }
                other => panic!(
                    "the watch stopped before the awaited message ({other:?}); got so far: \
                     {messages:#?}"
                ),
            }
        }
    }
}

/// Asserts that the revisions of `messages` increase by exactly one each.
#[track_caller]
pub fn assert_consecutive_revisions(messages: &[OnboardingStatus]) {
    let revisions: Vec<i64> = messages.iter().map(|message| message.revision).collect();
    for pair in revisions.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "revisions are not consecutive (a gap or a duplicate): {revisions:?}"
        );
    }
}

/// Asserts that agent_outbound_ip is set exactly while current_step is awaiting_firewall.
#[track_caller]
pub fn assert_outbound_ip_invariant(status: &OnboardingStatus) {
    let awaiting = status.current_step == Some(OnboardingStep::AwaitingFirewall as i32);
    assert_eq!(
        status.agent_outbound_ip.is_some(),
        awaiting,
        "agent_outbound_ip must be set exactly while current_step is awaiting_firewall: {status:#?}"
    );
}

/// Asserts that a write's response and a later read give one timestamp the same value, to the
/// nanosecond (a client comparing them must not see the resource change).
#[track_caller]
pub fn assert_same_timestamp(
    what: &str,
    written: &Option<prost_types::Timestamp>,
    read: &Option<prost_types::Timestamp>,
) {
    assert_eq!(
        written, read,
        "{what}: the write's response and a later read disagree"
    );
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// Every row of every table of the test database, as text (bytea as hex), by table.
pub async fn dump_all_rows(db: &TestDatabase) -> BTreeMap<String, Vec<String>> {
    let client = db.connect().await;
    let tables = client
        .query(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
             FROM information_schema.tables
             WHERE table_type = 'BASE TABLE'
               AND table_schema NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .expect("list tables");
    let mut dump = BTreeMap::new();
    for table in tables {
        let table: String = table.get(0);
        let rows = client
            .query(&format!("SELECT t::text FROM {table} AS t"), &[])
            .await
            .unwrap_or_else(|error| panic!("read {table}: {error}"));
        dump.insert(
            table,
            rows.iter().map(|row| row.get::<_, String>(0)).collect(),
        );
    }
    dump
}

/// Records panics anywhere in this process (spawned tasks included) from now on.
pub fn record_panics() -> Arc<Mutex<Vec<String>>> {
    let panics = Arc::new(Mutex::new(Vec::new()));
    let sink = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        sink.lock()
            .map(|mut panics| panics.push(info.to_string()))
            .ok();
        previous(info);
    }));
    panics
}
