//! A monitored server: its validated settings, how a request's input becomes them, and the
//! lifecycle transitions (register, update, confirm, retry, decommission, engine progress).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    ConnectionMethod, OnboardingStep, ServerId, ServerStatus, SslMode, StepStatus, StreamState,
    TenantId, Violations,
    fields::{
        Host, HostKeyFingerprint, Identifier, Labels, Port, QualifiedTable, ServerName, UserName,
        check_text, texts,
    },
    onboarding::{FIREWALL_AUTO_COMPLETED, OnboardingStatus, StepOutcome, Steps},
    stream::StreamHealth,
};

/// Default MySQL port.
pub const DEFAULT_MYSQL_PORT: u16 = 3306;
/// Default SSH port.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// A secret as stored: AEAD ciphertext and the id of the key that sealed it. Opaque here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub ciphertext: Vec<u8>,
}

/// A plaintext secret from a request; its Debug never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

/// The SSH jumphost settings of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTunnel {
    pub host: Host,
    pub port: Port,
    pub user: UserName,
    pub host_key_fingerprint: Option<HostKeyFingerprint>,
}

/// What the binlog stream covers (streaming.md §6): the rows of the tables that
/// [`StreamOptions::includes`] admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// The schemas to capture; every schema when empty.
    pub schemas: Vec<Identifier>,
    /// The tables to capture; every table of those schemas when empty.
    pub tables: Vec<QualifiedTable>,
    /// Tables never captured, whatever the two lists above say.
    pub exclude_tables: Vec<QualifiedTable>,
    pub ssl_mode: SslMode,
}

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            schemas: Vec::new(),
            tables: Vec::new(),
            exclude_tables: Vec::new(),
            ssl_mode: SslMode::Preferred,
        }
    }
}

impl StreamOptions {
    /// Whether the rows of `schema.table` are captured: its schema is listed (or none is), and
    /// it is listed (or no table is), and it is not excluded. The one statement of the rule: the
    /// snapshot and the live stream both ask it. Names compare exactly, as the binlog spells them.
    pub fn includes(&self, schema: &str, table: &str) -> bool {
        let is = |listed: &QualifiedTable| listed.parts() == (schema, table);
        (self.schemas.is_empty() || self.schemas.iter().any(|listed| listed.as_str() == schema))
            && (self.tables.is_empty() || self.tables.iter().any(is))
            && !self.exclude_tables.iter().any(is)
    }

    /// Whether any list narrows the capture (else every user table is captured).
    pub fn filters(&self) -> bool {
        !(self.schemas.is_empty() && self.tables.is_empty() && self.exclude_tables.is_empty())
    }
}

/// The validated, client-settable settings of a server (secrets apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: ServerName,
    pub host: Host,
    pub port: Port,
    pub mysql_user: UserName,
    pub connection_method: ConnectionMethod,
    pub ssh_tunnel: Option<SshTunnel>,
    pub stream_options: StreamOptions,
    pub labels: Labels,
}

/// Secrets a request sets; `None` keeps what is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewSecrets {
    pub mysql_password: Option<Secret>,
    pub ssh_private_key: Option<Secret>,
}

/// The stored secrets of a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSecrets {
    pub mysql_password: Option<Sealed>,
    pub ssh_private_key: Option<Sealed>,
}

/// Raw SSH settings from a request, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshTunnelInput {
    pub host: String,
    pub port: i32,
    pub user: String,
    pub private_key: Option<Secret>,
    pub host_key_fingerprint: Option<String>,
}

/// Raw stream options from a request, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptionsInput {
    pub schemas: Vec<String>,
    pub tables: Vec<String>,
    pub exclude_tables: Vec<String>,
    pub ssl_mode: Option<SslMode>,
}

/// A server as a request describes it, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInput {
    pub name: String,
    pub host: String,
    pub port: i32,
    pub mysql_user: String,
    pub mysql_password: Option<Secret>,
    pub connection_method: Option<ConnectionMethod>,
    pub ssh_tunnel: Option<SshTunnelInput>,
    pub stream_options: Option<StreamOptionsInput>,
    pub labels: BTreeMap<String, String>,
}

/// The fields UpdateServer may change, as update_mask paths name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateField {
    Name,
    Host,
    Port,
    MysqlUser,
    MysqlPassword,
    ConnectionMethod,
    SshTunnel,
    SshTunnelHost,
    SshTunnelPort,
    SshTunnelUser,
    SshTunnelPrivateKey,
    SshTunnelHostKeyFingerprint,
    StreamOptions,
    StreamOptionsSchemas,
    StreamOptionsTables,
    StreamOptionsExcludeTables,
    StreamOptionsSslMode,
    Labels,
}

/// Whether a mask path names an output-only field (rejected with a specific message).
pub fn is_output_only_path(path: &str) -> bool {
    matches!(
        path,
        "server_id"
            | "has_mysql_password"
            | "status"
            | "onboarding_step"
            | "error"
            | "created_at"
            | "updated_at"
            | "decommissioned_at"
            | "etag"
            | "ssh_tunnel.has_private_key"
    )
}

impl UpdateField {
    /// Every path an update mask may name, besides `*`; a mask names at most this many paths.
    pub const PATHS: [&'static str; 18] = [
        "name",
        "host",
        "port",
        "mysql_user",
        "mysql_password",
        "connection_method",
        "ssh_tunnel",
        "ssh_tunnel.host",
        "ssh_tunnel.port",
        "ssh_tunnel.user",
        "ssh_tunnel.private_key",
        "ssh_tunnel.host_key_fingerprint",
        "stream_options",
        "stream_options.schemas",
        "stream_options.tables",
        "stream_options.exclude_tables",
        "stream_options.ssl_mode",
        "labels",
    ];

    /// Every settable field: what `*` means.
    pub const ALL_TOP_LEVEL: &'static [UpdateField] = &[
        UpdateField::Name,
        UpdateField::Host,
        UpdateField::Port,
        UpdateField::MysqlUser,
        UpdateField::MysqlPassword,
        UpdateField::ConnectionMethod,
        UpdateField::SshTunnel,
        UpdateField::StreamOptions,
        UpdateField::Labels,
    ];

    /// The field a mask path names.
    pub fn from_path(path: &str) -> Option<UpdateField> {
        Some(match path {
            "name" => UpdateField::Name,
            "host" => UpdateField::Host,
            "port" => UpdateField::Port,
            "mysql_user" => UpdateField::MysqlUser,
            "mysql_password" => UpdateField::MysqlPassword,
            "connection_method" => UpdateField::ConnectionMethod,
            "ssh_tunnel" => UpdateField::SshTunnel,
            "ssh_tunnel.host" => UpdateField::SshTunnelHost,
            "ssh_tunnel.port" => UpdateField::SshTunnelPort,
            "ssh_tunnel.user" => UpdateField::SshTunnelUser,
            "ssh_tunnel.private_key" => UpdateField::SshTunnelPrivateKey,
            "ssh_tunnel.host_key_fingerprint" => UpdateField::SshTunnelHostKeyFingerprint,
            "stream_options" => UpdateField::StreamOptions,
            "stream_options.schemas" => UpdateField::StreamOptionsSchemas,
            "stream_options.tables" => UpdateField::StreamOptionsTables,
            "stream_options.exclude_tables" => UpdateField::StreamOptionsExcludeTables,
            "stream_options.ssl_mode" => UpdateField::StreamOptionsSslMode,
            "labels" => UpdateField::Labels,
            _ => return None,
        })
    }

    /// Copies this field from the request into the merged input.
    fn apply(self, merged: &mut ServerInput, request: &ServerInput) {
        fn ssh(input: &mut ServerInput) -> &mut SshTunnelInput {
            input.ssh_tunnel.get_or_insert_with(Default::default)
        }
        fn stream(input: &mut ServerInput) -> &mut StreamOptionsInput {
            input.stream_options.get_or_insert_with(Default::default)
        }
        let request_ssh = request.ssh_tunnel.clone().unwrap_or_default();
        let request_stream = request.stream_options.clone().unwrap_or_default();
        match self {
            UpdateField::Name => merged.name = request.name.clone(),
            UpdateField::Host => merged.host = request.host.clone(),
            UpdateField::Port => merged.port = request.port,
            UpdateField::MysqlUser => merged.mysql_user = request.mysql_user.clone(),
            UpdateField::MysqlPassword => merged.mysql_password = request.mysql_password.clone(),
            UpdateField::ConnectionMethod => merged.connection_method = request.connection_method,
            UpdateField::SshTunnel => merged.ssh_tunnel = request.ssh_tunnel.clone(),
            UpdateField::SshTunnelHost => ssh(merged).host = request_ssh.host,
            UpdateField::SshTunnelPort => ssh(merged).port = request_ssh.port,
            UpdateField::SshTunnelUser => ssh(merged).user = request_ssh.user,
            UpdateField::SshTunnelPrivateKey => ssh(merged).private_key = request_ssh.private_key,
            UpdateField::SshTunnelHostKeyFingerprint => {
                ssh(merged).host_key_fingerprint = request_ssh.host_key_fingerprint
            }
            UpdateField::StreamOptions => merged.stream_options = request.stream_options.clone(),
            UpdateField::StreamOptionsSchemas => stream(merged).schemas = request_stream.schemas,
            UpdateField::StreamOptionsTables => stream(merged).tables = request_stream.tables,
            UpdateField::StreamOptionsExcludeTables => {
                stream(merged).exclude_tables = request_stream.exclude_tables
            }
            UpdateField::StreamOptionsSslMode => stream(merged).ssl_mode = request_stream.ssl_mode,
            UpdateField::Labels => merged.labels = request.labels.clone(),
        }
    }
}

/// What is already stored, which validation of an update needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Existing {
    pub has_ssh_private_key: bool,
}

impl ServerInput {
    /// The input that would reproduce a stored spec (secrets left unset, meaning "keep").
    pub fn from_spec(spec: &ServerSpec) -> ServerInput {
        ServerInput {
            name: spec.name.to_string(),
            host: spec.host.to_string(),
            port: i32::from(spec.port),
            mysql_user: spec.mysql_user.to_string(),
            mysql_password: None,
            connection_method: Some(spec.connection_method),
            ssh_tunnel: spec.ssh_tunnel.as_ref().map(|tunnel| SshTunnelInput {
                host: tunnel.host.to_string(),
                port: i32::from(tunnel.port),
                user: tunnel.user.to_string(),
                private_key: None,
                host_key_fingerprint: tunnel
                    .host_key_fingerprint
                    .as_ref()
                    .map(ToString::to_string),
            }),
            stream_options: Some(StreamOptionsInput {
                schemas: texts(&spec.stream_options.schemas),
                tables: texts(&spec.stream_options.tables),
                exclude_tables: texts(&spec.stream_options.exclude_tables),
                ssl_mode: Some(spec.stream_options.ssl_mode),
            }),
            labels: spec.labels.as_map().clone(),
        }
    }

    /// Merges the masked fields of an update request over the stored spec.
    pub fn merge_update(
        current: &ServerSpec,
        request: &ServerInput,
        fields: &[UpdateField],
    ) -> ServerInput {
        let mut merged = ServerInput::from_spec(current);
        for field in fields {
            field.apply(&mut merged, request);
        }
        merged
    }

    /// The validated settings and secrets, or every violation under `prefix` (e.g. `server.`).
    pub fn validate(
        self,
        prefix: &str,
        existing: Existing,
    ) -> Result<(ServerSpec, NewSecrets), Violations> {
        let mut violations = Violations::default();
        let validated = self.validate_each(prefix, existing, &mut violations);
        violations.into_result()?;
        // Every field that failed recorded why; this is never reached without a violation.
        validated.ok_or_else(|| Violations::one(prefix.trim_end_matches('.'), "is invalid"))
    }

    fn validate_each(
        self,
        prefix: &str,
        existing: Existing,
        violations: &mut Violations,
    ) -> Option<(ServerSpec, NewSecrets)> {
        let field = |name: &str| format!("{prefix}{name}");
        let name = violations.check(&field("name"), ServerName::parse(&self.name));
        let host = violations.check(&field("host"), Host::parse(&self.host));
        let port = violations.check(&field("port"), Port::parse(self.port, DEFAULT_MYSQL_PORT));
        let mysql_user = violations.check(
            &field("mysql_user"),
            UserName::parse(&self.mysql_user, "mysql_user", 80),
        );
        if let Some(password) = &self.mysql_password {
            violations.check(&field("mysql_password"), check_text(&password.0, 1024));
        }
        if self.connection_method.is_none() {
            violations.add(
                field("connection_method"),
                "is required: one of direct, vpn, ssh_tunnel",
            );
        }
        let ssh_private_key = self
            .ssh_tunnel
            .as_ref()
            .and_then(|tunnel| tunnel.private_key.clone());
        let ssh_tunnel = tunnel_for(
            self.connection_method,
            self.ssh_tunnel,
            &field("ssh_tunnel"),
            existing,
            violations,
        );
        let stream_options = validate_stream_options(
            self.stream_options.unwrap_or_default(),
            &field("stream_options."),
            violations,
        );
        let labels = violations.check(&field("labels"), Labels::parse(self.labels));
        let spec = ServerSpec {
            name: name?,
            host: host?,
            port: port?,
            mysql_user: mysql_user?,
            connection_method: self.connection_method?,
            ssh_tunnel,
            stream_options: stream_options?,
            labels: labels?,
        };
        if spec.connection_method == ConnectionMethod::SshTunnel && spec.ssh_tunnel.is_none() {
            return None;
        }
        Some((
            spec,
            NewSecrets {
                mysql_password: self.mysql_password,
                ssh_private_key,
            },
        ))
    }
}

/// The tunnel of a server reached `method`: required for ssh_tunnel, refused for the others
/// (`field` names it).
fn tunnel_for(
    method: Option<ConnectionMethod>,
    tunnel: Option<SshTunnelInput>,
    field: &str,
    existing: Existing,
    violations: &mut Violations,
) -> Option<SshTunnel> {
    match (method, tunnel) {
        (Some(ConnectionMethod::SshTunnel), None) => {
            violations.add(field, "is required when connection_method is ssh_tunnel");
            None
        }
        (Some(ConnectionMethod::SshTunnel), Some(tunnel)) => {
            validate_ssh_tunnel(tunnel, &format!("{field}."), existing, violations)
        }
        (Some(method), Some(_)) => {
            violations.add(
                field,
                format!("must not be set when connection_method is {method}"),
            );
            None
        }
        (_, _) => None,
    }
}

fn validate_ssh_tunnel(
    tunnel: SshTunnelInput,
    prefix: &str,
    existing: Existing,
    violations: &mut Violations,
) -> Option<SshTunnel> {
    let field = |name: &str| format!("{prefix}{name}");
    let host = violations.check(&field("host"), Host::parse(&tunnel.host));
    let port = violations.check(&field("port"), Port::parse(tunnel.port, DEFAULT_SSH_PORT));
    let user = violations.check(&field("user"), UserName::parse(&tunnel.user, "user", 64));
    match &tunnel.private_key {
        Some(key) => {
            violations.check(&field("private_key"), validate_private_key(&key.0));
        }
        None if !existing.has_ssh_private_key => {
            violations.add(
                field("private_key"),
                "is required: the OpenSSH or PEM private key the agent logs in with",
            );
        }
        None => {}
    }
    let fingerprint = match tunnel.host_key_fingerprint {
        Some(text) if !text.is_empty() => violations
            .check(
                &field("host_key_fingerprint"),
                HostKeyFingerprint::parse(&text),
            )
            .map(Some),
        _ => Some(None),
    };
    Some(SshTunnel {
        host: host?,
        port: port?,
        user: user?,
        host_key_fingerprint: fingerprint?,
    })
}

/// Most entries in each of `stream_options.schemas`, `.tables` and `.exclude_tables`.
pub const MAX_STREAM_OPTION_ENTRIES: usize = 1_000;

/// Whether a list is within [`MAX_STREAM_OPTION_ENTRIES`]; one violation, not one per entry, when
/// it is not, so that a huge list costs no more than a short one.
fn within_entry_limit(texts: &[String], field: &str, violations: &mut Violations) -> bool {
    if texts.len() <= MAX_STREAM_OPTION_ENTRIES {
        return true;
    }
    violations.add(
        field,
        format!(
            "has {} entries; at most {MAX_STREAM_OPTION_ENTRIES} allowed",
            texts.len()
        ),
    );
    false
}

fn validate_stream_options(
    options: StreamOptionsInput,
    prefix: &str,
    violations: &mut Violations,
) -> Option<StreamOptions> {
    let lists = [
        (&options.schemas, "schemas"),
        (&options.tables, "tables"),
        (&options.exclude_tables, "exclude_tables"),
    ];
    let mut within = true;
    for (texts, name) in lists {
        within &= within_entry_limit(texts, &format!("{prefix}{name}"), violations);
    }
    if !within {
        return None;
    }
    let schemas = parse_each(
        &options.schemas,
        &format!("{prefix}schemas"),
        Identifier::parse,
        violations,
    );
    let tables = parse_each(
        &options.tables,
        &format!("{prefix}tables"),
        QualifiedTable::parse,
        violations,
    );
    let exclude_tables = parse_each(
        &options.exclude_tables,
        &format!("{prefix}exclude_tables"),
        QualifiedTable::parse,
        violations,
    );
    Some(StreamOptions {
        schemas: schemas?,
        tables: tables?,
        exclude_tables: exclude_tables?,
        ssl_mode: options.ssl_mode.unwrap_or(SslMode::Preferred),
    })
}

/// Each text parsed, a violation for each that fails (`field[index]`); none if any failed.
fn parse_each<T>(
    texts: &[String],
    field: &str,
    parse: fn(&str) -> Result<T, String>,
    violations: &mut Violations,
) -> Option<Vec<T>> {
    let mut parsed = Vec::new();
    let mut valid = true;
    for (index, text) in texts.iter().enumerate() {
        match parse(text) {
            Ok(value) => parsed.push(value),
            Err(problem) => {
                violations.add(format!("{field}[{index}]"), problem);
                valid = false;
            }
        }
    }
    valid.then_some(parsed)
}

/// Parses a private key (OpenSSH or PEM: Ed25519, ECDSA, RSA); never echoes it.
fn validate_private_key(key: &str) -> Result<(), String> {
    match russh::keys::decode_secret_key(key, None) {
        Ok(_) => Ok(()),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(
            "is encrypted with a passphrase; provide an unencrypted key (ssh-keygen -p -N '' -f KEY)"
                .into(),
        ),
        Err(_) => Err(
            "is not a valid private key: expected an unencrypted OpenSSH or PEM key (Ed25519, ECDSA or RSA)"
                .into(),
        ),
    }
}

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

/// Why a lifecycle call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("server is decommissioned")]
    Decommissioned,
    #[error("connection_method is {0}; only ssh_tunnel servers have a firewall step")]
    NotSshTunnel(ConnectionMethod),
    #[error("{0}")]
    NotAwaitingFirewall(String),
    #[error(
        "onboarding has not failed: server status is {0}; only a server in error can be retried"
    )]
    OnboardingNotFailed(ServerStatus),
    #[error(
        "the server has no binlog stream to restart (status {0}): a stream exists once onboarding \
         completes its streaming step"
    )]
    NotStreaming(ServerStatus),
    /// The source refused the requested start: the reason code and what to do.
    #[error("{1}")]
    RestartPointRefused(&'static str, String),
}

/// A server as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub id: ServerId,
    pub tenant_id: TenantId,
    pub spec: ServerSpec,
    pub secrets: StoredSecrets,
    pub status: ServerStatus,
    pub steps: Steps,
    pub revision: i64,
    pub version: i64,
    pub agent_id: Option<Uuid>,
    pub agent_outbound_ip: Option<String>,
    pub runnable: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub decommissioned_at: Option<DateTime<Utc>>,
    /// The live binlog stream; none until onboarding reaches streaming.
    pub stream: Option<StreamHealth>,
    /// The W3C traceparent of the call that last started its onboarding, continued by the
    /// steps' spans (none while traces are off).
    pub trace_parent: Option<String>,
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
                        self.status = ServerStatus::Active;
                        self.runnable = false;
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
mod tests {
    use super::*;

    fn input() -> ServerInput {
        ServerInput {
            name: "orders-primary".into(),
            host: "10.0.3.17".into(),
            port: 0,
            mysql_user: "bintrail".into(),
            mysql_password: Some(Secret("pw".into())),
            connection_method: Some(ConnectionMethod::Direct),
            ..ServerInput::default()
        }
    }

    fn validate(input: ServerInput) -> Result<(ServerSpec, NewSecrets), Violations> {
        input.validate("server.", Existing::default())
    }

    fn fields(violations: &Violations) -> Vec<&str> {
        violations.0.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn valid_input_gets_defaults() {
        let (spec, secrets) = validate(input()).unwrap();
        assert_eq!(spec.port.get(), 3306);
        assert_eq!(spec.stream_options.ssl_mode, SslMode::Preferred);
        assert_eq!(secrets.mysql_password, Some(Secret("pw".into())));
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let bad = ServerInput {
            name: String::new(),
            host: "bad host!".into(),
            port: 70000,
            mysql_user: String::new(),
            connection_method: None,
            labels: [("bad key".to_owned(), "v".to_owned())].into(),
            ..ServerInput::default()
        };
        let violations = validate(bad).unwrap_err();
        assert_eq!(
            fields(&violations),
            [
                "server.name",
                "server.host",
                "server.port",
                "server.mysql_user",
                "server.connection_method",
                "server.labels"
            ]
        );
    }

    #[test]
    fn ssh_tunnel_is_required_for_ssh_and_rejected_otherwise() {
        let mut ssh = input();
        ssh.connection_method = Some(ConnectionMethod::SshTunnel);
        assert_eq!(fields(&validate(ssh).unwrap_err()), ["server.ssh_tunnel"]);

        let mut direct = input();
        direct.ssh_tunnel = Some(SshTunnelInput::default());
        assert_eq!(
            fields(&validate(direct).unwrap_err()),
            ["server.ssh_tunnel"]
        );
    }

    #[test]
    fn ssh_tunnel_fields_are_checked() {
        let mut ssh = input();
        ssh.connection_method = Some(ConnectionMethod::SshTunnel);
        ssh.ssh_tunnel = Some(SshTunnelInput {
            host: String::new(),
            port: -1,
            user: String::new(),
            private_key: Some(Secret("not a key".into())),
            host_key_fingerprint: Some("MD5:aa".into()),
        });
        let violations = validate(ssh).unwrap_err();
        assert_eq!(
            fields(&violations),
            [
                "server.ssh_tunnel.host",
                "server.ssh_tunnel.port",
                "server.ssh_tunnel.user",
                "server.ssh_tunnel.private_key",
                "server.ssh_tunnel.host_key_fingerprint"
            ]
        );
        assert!(
            !violations.to_string().contains("not a key"),
            "a secret is never echoed"
        );
    }

    /// A throwaway Ed25519 key, encrypted with the passphrase "secret"; it opens nothing.
    const ENCRYPTED_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABDhgdCWTm\n3K/J6jDnbe7ZuCAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAILCA7Hnm0Yw7/7aY\nPQYvFXKPoDhNtxHuLX4d/KwiZsR8AAAAkGTlS+LUVfL639bffAE5teFFt6c/J1U3o6y5/J\nMGojQ5XZ8BqITMgPNy4IjV74gUGpeB/XqlXjBjk2CgEhUJKtqVovD2XZ50SFVJ+DwUGfPK\nE11UlZoiDUK02VIHT4oNjclfUKvpcvST3RXikjyhbeQOIA5sUxDECeYR+j5aQJFE/daxZ3\n2G7RAjpj+fN/BB5Q==\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn private_keys_are_parsed_and_passphrases_refused() {
        let encrypted = validate_private_key(ENCRYPTED_KEY).unwrap_err();
        assert!(encrypted.contains("passphrase"), "{encrypted}");
        let garbage = validate_private_key(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(garbage.contains("not a valid private key"), "{garbage}");
        assert!(!garbage.contains("AAAA"));
    }

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

    #[test]
    fn every_mask_path_names_a_field() {
        for path in UpdateField::PATHS {
            assert!(UpdateField::from_path(path).is_some(), "{path}");
        }
    }

    #[test]
    fn stream_option_lists_are_counted_before_their_entries_are_checked() {
        let mut input = input();
        input.stream_options = Some(StreamOptionsInput {
            tables: vec!["not a table".to_owned(); MAX_STREAM_OPTION_ENTRIES + 1],
            schemas: vec!["shop".to_owned(); MAX_STREAM_OPTION_ENTRIES],
            ..Default::default()
        });
        let violations = validate(input).unwrap_err();
        assert_eq!(
            violations.0,
            vec![crate::domain::FieldViolation {
                field: "server.stream_options.tables".into(),
                description: "has 1001 entries; at most 1000 allowed".into(),
            }]
        );
    }

    #[test]
    fn merge_update_takes_only_masked_fields() {
        let (current, _) = validate(input()).unwrap();
        let request = ServerInput {
            name: "renamed".into(),
            host: "ignored.example.com".into(),
            ..ServerInput::default()
        };
        let merged = ServerInput::merge_update(&current, &request, &[UpdateField::Name]);
        assert_eq!(merged.name, "renamed");
        assert_eq!(merged.host, "10.0.3.17");
        assert_eq!(merged.mysql_password, None);
    }

    fn options(schemas: &[&str], tables: &[&str], exclude_tables: &[&str]) -> StreamOptions {
        let qualified = |names: &[&str]| {
            names
                .iter()
                .map(|name| QualifiedTable::parse(name).unwrap())
                .collect()
        };
        StreamOptions {
            schemas: schemas
                .iter()
                .map(|name| Identifier::parse(name).unwrap())
                .collect(),
            tables: qualified(tables),
            exclude_tables: qualified(exclude_tables),
            ssl_mode: SslMode::Preferred,
        }
    }

    #[test]
    fn empty_stream_options_include_every_table() {
        let all = StreamOptions::default();
        assert!(all.includes("shop", "orders"));
        assert!(all.includes("audit", "log"));
        assert!(!all.filters());
    }

    #[test]
    fn schemas_and_tables_must_both_admit_a_table() {
        let shop_orders = options(&["shop"], &["shop.orders"], &[]);
        assert!(shop_orders.includes("shop", "orders"));
        // Listed schema, unlisted table: the union rule let it in.
        assert!(!shop_orders.includes("shop", "ignored"));
        assert!(!shop_orders.includes("audit", "orders"));

        // A listed table outside the listed schemas is not captured either.
        let elsewhere = options(&["shop"], &["audit.log"], &[]);
        assert!(!elsewhere.includes("audit", "log"));
        assert!(!elsewhere.includes("shop", "orders"));

        let schemas_only = options(&["shop", "crm"], &[], &[]);
        assert!(schemas_only.includes("shop", "anything"));
        assert!(schemas_only.includes("crm", "people"));
        assert!(!schemas_only.includes("audit", "log"));

        let tables_only = options(&[], &["shop.orders", "audit.log"], &[]);
        assert!(tables_only.includes("audit", "log"));
        assert!(!tables_only.includes("audit", "other"));
        assert!(!tables_only.includes("shop", "log"));
        assert!(tables_only.filters());
    }

    #[test]
    fn excluded_tables_stay_out_whatever_else_lists_them() {
        let whole_schema = options(&["shop"], &[], &["shop.sessions"]);
        assert!(whole_schema.includes("shop", "orders"));
        assert!(!whole_schema.includes("shop", "sessions"));

        let everything_but = options(&[], &[], &["shop.sessions", "audit.log"]);
        assert!(everything_but.filters());
        assert!(everything_but.includes("crm", "sessions"));
        assert!(!everything_but.includes("audit", "log"));

        let listed_and_excluded = options(&[], &["shop.orders"], &["shop.orders"]);
        assert!(!listed_and_excluded.includes("shop", "orders"));
    }

    #[test]
    fn names_compare_exactly() {
        let excluded = options(&["shop"], &[], &["shop.Orders"]);
        assert!(excluded.includes("shop", "orders"));
        assert!(!excluded.includes("shop", "Orders"));
        assert!(!excluded.includes("Shop", "x"));
        // A table name may contain a dot: schema.table splits at the first one.
        let dotted = options(&[], &["shop.a.b"], &[]);
        assert!(dotted.includes("shop", "a.b"));
        assert!(!dotted.includes("shop.a", "b"));
    }

    #[test]
    fn exclude_tables_are_validated_like_tables() {
        let mut bad = input();
        bad.stream_options = Some(StreamOptionsInput {
            tables: vec!["shop.orders".into(), "orders".into()],
            exclude_tables: vec!["shop.sessions".into(), "sessions".into(), "shop.".into()],
            ..StreamOptionsInput::default()
        });
        let violations = validate(bad).unwrap_err();
        assert_eq!(
            fields(&violations),
            [
                "server.stream_options.tables[1]",
                "server.stream_options.exclude_tables[1]",
                "server.stream_options.exclude_tables[2]"
            ]
        );
        assert_eq!(
            violations.0[1].description,
            "\"sessions\" must be schema.table"
        );

        let mut good = input();
        good.stream_options = Some(StreamOptionsInput {
            exclude_tables: vec!["shop.sessions".into()],
            ..StreamOptionsInput::default()
        });
        let (spec, _) = validate(good).unwrap();
        assert_eq!(
            texts(&spec.stream_options.exclude_tables),
            ["shop.sessions"]
        );
        let again = ServerInput::from_spec(&spec).stream_options.unwrap();
        assert_eq!(again.exclude_tables, ["shop.sessions"]);
    }

    #[test]
    fn an_update_mask_may_name_exclude_tables_alone() {
        let mut current_input = input();
        current_input.stream_options = Some(StreamOptionsInput {
            schemas: vec!["shop".into()],
            ..StreamOptionsInput::default()
        });
        let (current, _) = validate(current_input).unwrap();
        let field = UpdateField::from_path("stream_options.exclude_tables").unwrap();
        let request = ServerInput {
            stream_options: Some(StreamOptionsInput {
                schemas: vec!["ignored".into()],
                exclude_tables: vec!["shop.sessions".into()],
                ..StreamOptionsInput::default()
            }),
            ..ServerInput::default()
        };
        let merged = ServerInput::merge_update(&current, &request, &[field]);
        let stream = merged.stream_options.unwrap();
        assert_eq!(stream.schemas, ["shop"]);
        assert_eq!(stream.exclude_tables, ["shop.sessions"]);
    }

    fn registered() -> Server {
        let (spec, _) = validate(input()).unwrap();
        Server::register(
            ServerId::generate(),
            TenantId(Uuid::nil()),
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
