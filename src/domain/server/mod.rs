//! A monitored server: its validated settings, the server as stored, and why a lifecycle call
//! is refused. `input` turns what a request sends into these settings, `update` merges an update mask over them; `lifecycle` moves a
//! stored server through its states.

mod input;
mod lifecycle;
mod pause;
mod update;
mod watch;

pub use input::{
    DEFAULT_MYSQL_PORT, DEFAULT_SSH_PORT, Existing, MAX_MYSQL_PASSWORD_LENGTH,
    MAX_MYSQL_USER_LENGTH, MAX_SSH_USER_LENGTH, MAX_STREAM_OPTION_ENTRIES, ServerInput,
    SshTunnelInput, StreamOptionsInput,
};
pub use lifecycle::WAITING_FOR_RUNNER;
pub use update::{UpdateField, is_output_only_path};
pub use watch::{FleetView, Seen, ServerChange};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    ConnectionMethod, OnboardingStep, ServerId, ServerStatus, SslMode, TenantId,
    fields::{
        Host, HostKeyFingerprint, Identifier, Labels, Port, QualifiedTable, ServerName, UserName,
    },
    onboarding::Steps,
    stream::StreamHealth,
};

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
    #[error("the server's stream is paused: resume it first (ResumeStream)")]
    StreamPaused,
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
    /// PauseStream's wanted state: while set, no stream runs (status `paused` once onboarded),
    /// across restarts, lease moves and re-onboarding, until ResumeStream.
    pub paused: bool,
    /// The W3C traceparent of the call that last started its onboarding, continued by the
    /// steps' spans (none while traces are off).
    pub trace_parent: Option<String>,
}

impl Server {
    /// Whether `other`'s onboarding status differs from this one's: what comparing the two
    /// [`Server::onboarding_status`]es says, without building them (each clones the steps).
    pub fn onboarding_differs(&self, other: &Server) -> bool {
        fn firewall_ip(server: &Server) -> Option<&String> {
            (server.current_step() == Some(OnboardingStep::AwaitingFirewall))
                .then_some(server.agent_outbound_ip.as_ref())
                .flatten()
        }
        let stream_state = |server: &Server| server.stream.as_ref().map(|stream| stream.state);
        self.id != other.id
            || self.current_step() != other.current_step()
            || self.steps != other.steps
            || firewall_ip(self) != firewall_ip(other)
            || self.status != other.status
            || stream_state(self) != stream_state(other)
            || self.revision != other.revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onboarding_differs_as_the_statuses_compare() {
        let registered = lifecycle::tests::registered();
        let mut awaiting = registered.clone();
        let now = Utc::now();
        awaiting
            .steps
            .complete(OnboardingStep::Provisioning, "done", &[], now);
        for before in [registered, awaiting] {
            let differs = |change: &dyn Fn(&mut Server)| {
                let mut after = before.clone();
                change(&mut after);
                let statuses_differ = before.onboarding_status() != after.onboarding_status();
                assert_eq!(before.onboarding_differs(&after), statuses_differ);
                statuses_differ
            };
            let at_firewall = before.current_step() == Some(OnboardingStep::AwaitingFirewall);
            assert!(!differs(&|_| {}));
            assert!(!differs(&|server| server.version += 1));
            assert_eq!(
                differs(&|server| server.agent_outbound_ip = Some("192.0.2.7".into())),
                at_firewall
            );
            assert!(differs(&|server| server.status = ServerStatus::Error));
            assert!(differs(&|server| server.revision += 1));
            assert!(differs(&|server| server
                .steps
                .report(OnboardingStep::Provisioning, "working")));
            assert!(differs(&|server| server.steps.fail(
                OnboardingStep::Provisioning,
                "broken",
                now
            )));
        }
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
}
