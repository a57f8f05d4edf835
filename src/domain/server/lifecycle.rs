//! The lifecycle of a stored server: register, update, confirm the firewall, retry, restart the
//! stream, adopt, decommission, and the engine's progress through the onboarding steps.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{NewSecrets, Rejection, Server, ServerSpec, StoredSecrets, input::DEFAULT_SSH_PORT};

use crate::domain::{
    ConnectionMethod, OnboardingStep, ServerId, ServerStatus, StepStatus, StreamState, TenantId,
    onboarding::{FIREWALL_AUTO_COMPLETED, OnboardingStatus, StepOutcome, Steps},
    stream::StreamHealth,
};

/// What a step says while its server waits for a runner slot.
pub const WAITING_FOR_RUNNER: &str = "waiting for a runner: this replica's runners are busy with other tenants' servers; it \
     resumes when one is free";

impl ServerSpec {
    /// A recorded host key belongs to the jumphost it was seen on: moving the jumphost forgets
    /// it, unless these settings pinned a new one.
    fn forget_fingerprint_of_moved_jumphost(&mut self, old: &ServerSpec) {
        if let (Some(old_tunnel), Some(new_tunnel)) = (&old.ssh_tunnel, self.ssh_tunnel.as_mut())
            && (old_tunnel.host != new_tunnel.host || old_tunnel.port != new_tunnel.port)
            && new_tunnel.host_key_fingerprint == old_tunnel.host_key_fingerprint
        {
            new_tunnel.host_key_fingerprint = None;
        }
    }

    /// Where changing to `new` settings (and `secrets`) makes onboarding start again
    /// (onboarding.md §4): a moved jumphost awaits the firewall again, another connection waits
    /// for the agent, other stream options snapshot again; none when nothing it uses changed.
    fn restart_point(&self, new: &ServerSpec, secrets: &NewSecrets) -> Option<OnboardingStep> {
        let jumphost = |spec: &ServerSpec| {
            spec.ssh_tunnel
                .as_ref()
                .map(|tunnel| (tunnel.host.clone(), tunnel.port))
        };
        let connection_changed = self.host != new.host
            || self.port != new.port
            || self.mysql_user != new.mysql_user
            || self.connection_method != new.connection_method
            || self.ssh_tunnel != new.ssh_tunnel
            || secrets.mysql_password.is_some()
            || secrets.ssh_private_key.is_some();
        if new.connection_method == ConnectionMethod::SshTunnel && jumphost(self) != jumphost(new) {
            Some(OnboardingStep::AwaitingFirewall)
        } else if connection_changed {
            Some(OnboardingStep::WaitingForAgent)
        } else if self.stream_options != new.stream_options {
            Some(OnboardingStep::Snapshotting)
        } else {
            None
        }
    }
}

impl Server {
    /// A newly registered server: pending, all steps pending, waiting for a runner.
    pub fn register(
        id: ServerId,
        tenant_id: TenantId,
        spec: ServerSpec,
        secrets: StoredSecrets,
        now: DateTime<Utc>,
    ) -> Server {
        Server {
            id,
            tenant_id,
            spec,
            secrets,
            status: ServerStatus::Pending,
            steps: Steps::default(),
            revision: 1,
            version: 1,
            agent_id: None,
            agent_outbound_ip: None,
            runnable: true,
            created_at: now,
            updated_at: now,
            decommissioned_at: None,
            stream: None,
            trace_parent: None,
            paused: false,
        }
    }

    /// The opaque etag of this version.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    /// The first step that is not completed; none once all are or when decommissioned.
    pub fn current_step(&self) -> Option<OnboardingStep> {
        match self.status {
            ServerStatus::Decommissioned => None,
            _ => self.steps.current(),
        }
    }

    /// The onboarding error while the status is error.
    pub fn error(&self) -> Option<String> {
        match self.status {
            ServerStatus::Error => self.steps.error().map(str::to_owned),
            _ => None,
        }
    }

    /// The onboarding status at this revision.
    pub fn onboarding_status(&self) -> OnboardingStatus {
        let current_step = self.current_step();
        OnboardingStatus {
            server_id: self.id,
            current_step,
            steps: self.steps.all().to_vec(),
            error: self.steps.error().map(str::to_owned),
            agent_outbound_ip: (current_step == Some(OnboardingStep::AwaitingFirewall))
                .then(|| self.agent_outbound_ip.clone())
                .flatten(),
            server_status: self.status,
            stream_state: self.stream.as_ref().map(|stream| stream.state),
            revision: self.revision,
        }
    }

    /// Refuses a change to a decommissioned server.
    pub fn ensure_live(&self) -> Result<(), Rejection> {
        if self.status == ServerStatus::Decommissioned {
            Err(Rejection::Decommissioned)
        } else {
            Ok(())
        }
    }

    /// Applies validated new settings (`secrets`: the stored ones after sealing `new_secrets`).
    /// A jumphost that moved forgets the host key recorded for it, unless the request pinned a
    /// new one; onboarding runs again from where the change invalidates it, which is returned.
    pub fn update(
        &mut self,
        mut spec: ServerSpec,
        new_secrets: &NewSecrets,
        secrets: StoredSecrets,
    ) -> Result<Option<OnboardingStep>, Rejection> {
        self.ensure_live()?;
        spec.forget_fingerprint_of_moved_jumphost(&self.spec);
        let restart = self.spec.restart_point(&spec, new_secrets);
        self.spec = spec;
        self.secrets = secrets;
        if let Some(restart) = restart {
            self.restart_from(restart);
        }
        Ok(restart)
    }

    /// Onboarding runs again from `restart` (or from a failed earlier step, which must run again
    /// too, or the server would stay stuck on it); the stream stops meanwhile and resumes from
    /// its checkpoint.
    fn restart_from(&mut self, restart: OnboardingStep) {
        let from = match self.steps.current() {
            Some(current) if current.index() < restart.index() => current,
            _ => restart,
        };
        self.steps.reset_from(from);
        self.status = ServerStatus::Pending;
        self.runnable = true;
        if let Some(stream) = &mut self.stream {
            stream.state = StreamState::Starting;
            stream.error = None;
        }
    }

    /// The customer allowed the agent's IP on the jumphost: awaiting_firewall completes.
    pub fn confirm_firewall(&mut self, now: DateTime<Utc>) -> Result<(), Rejection> {
        self.ensure_live()?;
        if self.spec.connection_method != ConnectionMethod::SshTunnel {
            return Err(Rejection::NotSshTunnel(self.spec.connection_method));
        }
        let current = self.current_step();
        let waiting = current == Some(OnboardingStep::AwaitingFirewall)
            && self.steps.get(OnboardingStep::AwaitingFirewall).status == StepStatus::InProgress;
        if !waiting {
            let found = match current {
                Some(step) => format!("current step is {step}"),
                None => "onboarding has completed".to_owned(),
            };
            return Err(Rejection::NotAwaitingFirewall(format!(
                "onboarding is not awaiting the firewall confirmation: {found}"
            )));
        }
        self.steps.complete(
            OnboardingStep::AwaitingFirewall,
            "firewall confirmed by the customer",
            &[],
            now,
        );
        self.runnable = true;
        Ok(())
    }

    /// Resumes a failed onboarding at the failed step, its attempts reset.
    pub fn retry(&mut self) -> Result<(), Rejection> {
        self.ensure_live()?;
        if self.status != ServerStatus::Error {
            return Err(Rejection::OnboardingNotFailed(self.status));
        }
        match &self.stream {
            // The binlog the checkpoint needs is gone: snapshot again and start from the
            // source's current position (the streaming step records the gap).
            Some(stream) if stream.state == StreamState::LostPosition => {
                self.steps.reset_from(OnboardingStep::Snapshotting);
            }
            _ => {
                if let Some(step) = self.steps.current() {
                    self.steps.reset(step);
                }
            }
        }
        self.status = ServerStatus::Pending;
        self.runnable = true;
        Ok(())
    }

    /// Whether RestartStream may move this server's stream: it has one that runs, or one that
    /// stopped on a lost position or a permanent fault.
    pub fn check_restartable(&self) -> Result<(), Rejection> {
        self.ensure_live()?;
        if self.paused {
            return Err(Rejection::StreamPaused);
        }
        let restartable = match (&self.stream, self.status) {
            (Some(_), ServerStatus::Active | ServerStatus::Disconnected) => true,
            (Some(stream), ServerStatus::Error) => !stream.state.wants_a_reader(),
            _ => false,
        };
        if restartable {
            Ok(())
        } else {
            Err(Rejection::NotStreaming(self.status))
        }
    }

    /// RestartStream moved the stream's checkpoint: the stream starts again from there, and the
    /// streaming step says from where and what was skipped or read again (a revision).
    pub fn restart_stream(
        &mut self,
        description: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Rejection> {
        self.check_restartable()?;
        if let Some(stream) = &mut self.stream {
            stream.state = StreamState::Starting;
            stream.error = None;
        }
        self.steps
            .complete(OnboardingStep::Streaming, description, &[], now);
        self.status = ServerStatus::Active;
        self.runnable = false;
        Ok(())
    }

    /// This server's agent died and `agent`, whose outbound IP is `outbound_ip`, takes it over.
    /// An SSH tunnel whose outbound IP changes goes back to awaiting_firewall, showing the new
    /// IP: the jumphost allows the old one only. Returns the previous IP.
    pub fn adopt(&mut self, agent: Uuid, outbound_ip: &str) -> Option<String> {
        let previous = self.agent_outbound_ip.replace(outbound_ip.to_owned());
        self.agent_id = Some(agent);
        let moved = previous.as_deref() != Some(outbound_ip);
        if !moved || self.spec.connection_method != ConnectionMethod::SshTunnel {
            return previous;
        }
        match self.status {
            ServerStatus::Pending
                if self.steps.current().is_some_and(|step| {
                    step.index() >= OnboardingStep::AwaitingFirewall.index()
                }) =>
            {
                self.steps.reset_from(OnboardingStep::AwaitingFirewall);
                self.runnable = true;
            }
            // Its stream cannot run from the new IP until the jumphost allows it.
            ServerStatus::Active | ServerStatus::Disconnected => {
                self.restart_from(OnboardingStep::AwaitingFirewall)
            }
            _ => {}
        }
        previous
    }

    /// Soft-deletes the server and frees its agent slot; a no-op when already done.
    pub fn decommission(&mut self, now: DateTime<Utc>) {
        if self.status == ServerStatus::Decommissioned {
            return;
        }
        self.status = ServerStatus::Decommissioned;
        self.decommissioned_at = Some(now);
        self.runnable = false;
        self.agent_id = None;
        if let Some(stream) = &mut self.stream {
            stream.state = StreamState::Stopped;
            stream.error = None;
        }
    }

    /// Whether this server's binlog stream should be running now.
    pub fn wants_stream(&self) -> bool {
        matches!(
            self.status,
            ServerStatus::Active | ServerStatus::Disconnected
        ) && self
            .stream
            .as_ref()
            .is_some_and(|stream| stream.state.wants_a_reader())
    }

    /// The stream's holder reports a new state (streaming.md §3). Permanent faults put the
    /// server in error with the message; a stream that runs again makes a disconnected server
    /// active. Returns false, changing nothing, when the server no longer wants its stream.
    pub fn stream_moved(
        &mut self,
        state: StreamState,
        error: Option<String>,
        now: DateTime<Utc>,
    ) -> bool {
        if !self.wants_stream() {
            return false;
        }
        let Some(stream) = &mut self.stream else {
            return false;
        };
        stream.state = state;
        stream.error = error.clone();
        match state {
            StreamState::Starting | StreamState::Running | StreamState::Stalled => {
                self.status = ServerStatus::Active;
            }
            StreamState::LostPosition | StreamState::Failed => {
                let error = error.unwrap_or_else(|| format!("the binlog stream is {state}"));
                self.steps.fail(OnboardingStep::Streaming, &error, now);
                self.status = ServerStatus::Error;
                self.runnable = false;
            }
            StreamState::Disconnected | StreamState::Stopped => {}
        }
        true
    }

    /// A stream disconnected for longer than the grace period: the server says so.
    pub fn stream_still_disconnected(&mut self) {
        if self.status == ServerStatus::Active
            && self
                .stream
                .as_ref()
                .is_some_and(|stream| stream.state == StreamState::Disconnected)
        {
            self.status = ServerStatus::Disconnected;
        }
    }

    /// The step a runner should work on now, if any.
    pub fn runnable_step(&self) -> Option<OnboardingStep> {
        if self.status != ServerStatus::Pending {
            return None;
        }
        self.steps.current()
    }

    /// Its runner yielded the slot to another tenant's server: the step it was running shows
    /// that it waits for a runner, not that it runs.
    pub fn wait_for_runner(&mut self) {
        if let Some(step) = self.runnable_step() {
            self.steps.requeue(step, WAITING_FOR_RUNNER);
        }
    }

    /// A runner starts (or restarts after a crash) a step: one more attempt.
    pub fn begin_step(&mut self, step: OnboardingStep, now: DateTime<Utc>) {
        self.steps.start(step, "", now);
    }

    /// Records what a step run produced. Returns the step to run next, if any.
    pub fn apply_outcome(
        &mut self,
        step: OnboardingStep,
        outcome: &StepOutcome,
        now: DateTime<Utc>,
    ) -> Option<OnboardingStep> {
        match outcome {
            StepOutcome::Completed { message, warnings } => {
                self.steps.complete(step, message, warnings, now);
                match self.steps.current() {
                    Some(next) => {
                        self.steps.start(next, "", now);
                        Some(next)
                    }
                    None => {
                        self.runnable = false;
                        if self.paused {
                            self.hold_paused();
                            return None;
                        }
                        self.status = ServerStatus::Active;
                        let stream = self.stream.get_or_insert_with(StreamHealth::starting);
                        stream.state = StreamState::Starting;
                        stream.error = None;
                        None
                    }
                }
            }
            StepOutcome::Waiting { message } => {
                self.steps.report(step, message);
                self.runnable = false;
                None
            }
            StepOutcome::Retry { message } => {
                self.steps.start(step, message, now);
                Some(step)
            }
            StepOutcome::Failed { error } => {
                self.steps.fail(step, error, now);
                self.status = ServerStatus::Error;
                self.runnable = false;
                None
            }
        }
    }

    /// The auto-completion of awaiting_firewall for connections that need no firewall rule.
    pub fn firewall_outcome(&self) -> StepOutcome {
        if self.spec.connection_method == ConnectionMethod::SshTunnel {
            let ip = self
                .agent_outbound_ip
                .as_deref()
                .unwrap_or("the agent's IP");
            StepOutcome::Waiting {
                message: format!(
                    "allow {ip} on TCP port {} of the jumphost, then call ConfirmFirewall",
                    self.spec
                        .ssh_tunnel
                        .as_ref()
                        .map_or(DEFAULT_SSH_PORT, |tunnel| tunnel.port.get())
                ),
            }
        } else {
            StepOutcome::completed(FIREWALL_AUTO_COMPLETED)
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::fields::{
        Host, Identifier, Labels, Port, QualifiedTable, ServerName, UserName,
    };
    use crate::domain::server::input::tests::{input, validate};
    use crate::domain::server::{DEFAULT_MYSQL_PORT, DEFAULT_SSH_PORT, Secret, SshTunnel};

    #[test]
    fn restart_points_follow_the_spec() {
        let (old, _) = validate(input()).unwrap();
        let none = NewSecrets::default();
        let mut renamed = old.clone();
        renamed.name = ServerName::parse("other").unwrap();
        renamed.labels = Labels::parse([("env".into(), "prod".into())].into()).unwrap();
        assert_eq!(old.restart_point(&renamed, &none), None);

        let mut moved = old.clone();
        moved.port = Port::parse(3307, DEFAULT_MYSQL_PORT).unwrap();
        assert_eq!(
            old.restart_point(&moved, &none),
            Some(OnboardingStep::WaitingForAgent)
        );
        let password = NewSecrets {
            mysql_password: Some(Secret("new".into())),
            ssh_private_key: None,
        };
        assert_eq!(
            old.restart_point(&old, &password),
            Some(OnboardingStep::WaitingForAgent)
        );

        let mut filtered = old.clone();
        filtered.stream_options.schemas = vec![Identifier::parse("shop").unwrap()];
        assert_eq!(
            old.restart_point(&filtered, &none),
            Some(OnboardingStep::Snapshotting)
        );

        let mut excluding = old.clone();
        excluding.stream_options.exclude_tables = vec![QualifiedTable::parse("shop.log").unwrap()];
        assert_eq!(
            old.restart_point(&excluding, &none),
            Some(OnboardingStep::Snapshotting)
        );

        let mut tunnelled = old.clone();
        tunnelled.connection_method = ConnectionMethod::SshTunnel;
        tunnelled.ssh_tunnel = Some(SshTunnel {
            host: Host::parse("bastion").unwrap(),
            port: Port::parse(22, DEFAULT_SSH_PORT).unwrap(),
            user: UserName::parse("ec2-user", "user", 64).unwrap(),
            host_key_fingerprint: None,
        });
        assert_eq!(
            old.restart_point(&tunnelled, &none),
            Some(OnboardingStep::AwaitingFirewall)
        );
    }

    /// A server just registered, for the tests of its lifecycle.
    pub(in crate::domain::server) fn registered() -> Server {
        let (spec, _) = validate(input()).unwrap();
        Server::register(
            ServerId::generate(),
            TenantId::from_uuid(Uuid::nil()),
            spec,
            StoredSecrets::default(),
            Utc::now(),
        )
    }

    #[test]
    fn engine_progress_moves_through_steps() {
        let now = Utc::now();
        let mut server = registered();
        assert_eq!(server.runnable_step(), Some(OnboardingStep::Provisioning));
        server.begin_step(OnboardingStep::Provisioning, now);
        let next = server.apply_outcome(
            OnboardingStep::Provisioning,
            &StepOutcome::completed("ok"),
            now,
        );
        assert_eq!(next, Some(OnboardingStep::AwaitingFirewall));
        let outcome = server.firewall_outcome();
        assert_eq!(outcome, StepOutcome::completed(FIREWALL_AUTO_COMPLETED));
        server.apply_outcome(OnboardingStep::AwaitingFirewall, &outcome, now);
        server.apply_outcome(
            OnboardingStep::WaitingForAgent,
            &StepOutcome::Failed {
                error: "denied".into(),
            },
            now,
        );
        assert_eq!(server.status, ServerStatus::Error);
        assert_eq!(server.error().as_deref(), Some("denied"));
        assert!(!server.runnable);
        server.retry().unwrap();
        assert_eq!(server.status, ServerStatus::Pending);
        assert_eq!(
            server.steps.get(OnboardingStep::WaitingForAgent).attempts,
            0
        );
        assert_eq!(
            server.retry(),
            Err(Rejection::OnboardingNotFailed(ServerStatus::Pending))
        );
    }

    #[test]
    fn confirm_firewall_preconditions() {
        let now = Utc::now();
        let mut direct = registered();
        assert_eq!(
            direct.confirm_firewall(now),
            Err(Rejection::NotSshTunnel(ConnectionMethod::Direct))
        );
        let mut ssh = registered();
        ssh.spec.connection_method = ConnectionMethod::SshTunnel;
        assert!(matches!(
            ssh.confirm_firewall(now),
            Err(Rejection::NotAwaitingFirewall(_))
        ));
        ssh.apply_outcome(
            OnboardingStep::Provisioning,
            &StepOutcome::completed(""),
            now,
        );
        ssh.agent_outbound_ip = Some("203.0.113.7".into());
        assert_eq!(
            ssh.onboarding_status().agent_outbound_ip.as_deref(),
            Some("203.0.113.7")
        );
        ssh.confirm_firewall(now).unwrap();
        assert_eq!(ssh.current_step(), Some(OnboardingStep::WaitingForAgent));
        assert_eq!(ssh.onboarding_status().agent_outbound_ip, None);
        assert!(ssh.runnable);
    }

    /// An ssh_tunnel server past provisioning on agent `ip`, its firewall confirmed.
    fn confirmed_ssh(ip: &str) -> Server {
        let now = Utc::now();
        let mut ssh = registered();
        ssh.spec.connection_method = ConnectionMethod::SshTunnel;
        let done = StepOutcome::completed("");
        ssh.apply_outcome(OnboardingStep::Provisioning, &done, now);
        ssh.agent_id = Some(Uuid::now_v7());
        ssh.agent_outbound_ip = Some(ip.into());
        ssh.confirm_firewall(now).unwrap();
        ssh
    }

    #[test]
    fn an_adopted_ssh_server_awaits_the_firewall_again_only_when_its_ip_changes() {
        let agent = Uuid::now_v7();
        let mut moved = confirmed_ssh("203.0.113.7");
        assert_eq!(
            moved.adopt(agent, "198.51.100.9").as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(moved.agent_id, Some(agent));
        assert_eq!(moved.current_step(), Some(OnboardingStep::AwaitingFirewall));
        assert!(
            moved.runnable,
            "awaiting_firewall runs again to show the new IP"
        );
        assert_eq!(
            moved.onboarding_status().agent_outbound_ip.as_deref(),
            Some("198.51.100.9")
        );

        let mut same_ip = confirmed_ssh("203.0.113.7");
        same_ip.adopt(agent, "203.0.113.7");
        assert_eq!(
            same_ip.current_step(),
            Some(OnboardingStep::WaitingForAgent)
        );

        let mut direct = confirmed_ssh("203.0.113.7");
        direct.spec.connection_method = ConnectionMethod::Direct;
        direct.adopt(agent, "198.51.100.9");
        assert_eq!(direct.current_step(), Some(OnboardingStep::WaitingForAgent));
        assert_eq!(direct.agent_id, Some(agent));
    }

    #[test]
    fn an_active_ssh_server_adopted_with_another_ip_onboards_again_from_the_firewall() {
        let now = Utc::now();
        let mut active = confirmed_ssh("203.0.113.7");
        let done = StepOutcome::completed("");
        while let Some(step) = active.current_step() {
            active.apply_outcome(step, &done, now);
        }
        assert_eq!(active.status, ServerStatus::Active);
        let mut same_ip = active.clone();

        active.adopt(Uuid::now_v7(), "198.51.100.9");
        assert_eq!(active.status, ServerStatus::Pending);
        assert_eq!(
            active.current_step(),
            Some(OnboardingStep::AwaitingFirewall)
        );
        assert!(active.runnable);
        assert!(
            !active.wants_stream(),
            "no stream until the new IP is allowed"
        );

        same_ip.adopt(Uuid::now_v7(), "203.0.113.7");
        assert_eq!(same_ip.status, ServerStatus::Active);
        assert_eq!(same_ip.current_step(), None);
    }

    #[test]
    fn decommission_is_idempotent_and_clears_current_step() {
        let now = Utc::now();
        let mut server = registered();
        server.decommission(now);
        let first = server.clone();
        server.decommission(now + chrono::Duration::seconds(1));
        assert_eq!(server, first);
        assert_eq!(server.current_step(), None);
        assert_eq!(
            server.update(
                first.spec.clone(),
                &NewSecrets::default(),
                StoredSecrets::default()
            ),
            Err(Rejection::Decommissioned)
        );
    }
}
