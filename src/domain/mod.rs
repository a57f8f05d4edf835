//! Pure types and rules of the service: servers, their validated fields, the onboarding state
//! machine and the ListServers filter. No I/O, no tonic, no diesel.

pub mod audit;
pub mod change;
pub mod comparisons;
pub mod fields;
pub mod filter;
pub mod onboarding;
pub mod partition;
pub mod rules;
pub mod schema_change;
pub mod server;
pub mod stored_time;
pub mod stream;
pub mod target;

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The current time at PostgreSQL's precision (microseconds), so a value written and the value
/// read back are equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Declares a closed set of lowercase wire names, with parsing and display.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The lowercase wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a lowercase wire name.
            pub fn parse(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
    };
}

pub mod check;
pub mod webhook;

wire_enum!(
    /// How the agent reaches a server.
    ConnectionMethod { Direct = "direct", Vpn = "vpn", SshTunnel = "ssh_tunnel" }
);
wire_enum!(
    /// The lifecycle status of a server.
    ServerStatus {
        Pending = "pending",
        Active = "active",
        Disconnected = "disconnected",
        Paused = "paused",
        Error = "error",
        Decommissioned = "decommissioned",
    }
);
wire_enum!(
    /// The onboarding steps, in order.
    OnboardingStep {
        Provisioning = "provisioning",
        AwaitingFirewall = "awaiting_firewall",
        WaitingForAgent = "waiting_for_agent",
        Initializing = "initializing",
        Snapshotting = "snapshotting",
        Streaming = "streaming",
    }
);
wire_enum!(
    /// The status of one onboarding step.
    StepStatus { Pending = "pending", InProgress = "in_progress", Completed = "completed", Failed = "failed" }
);
wire_enum!(
    /// The TLS mode of the MySQL connection.
    SslMode {
        Disabled = "disabled",
        Preferred = "preferred",
        Required = "required",
        VerifyCa = "verify_ca",
        VerifyFull = "verify_full",
    }
);
wire_enum!(
    /// What an API key may do.
    Permission {
        Read = "servers:read",
        Write = "servers:write",
        Delete = "servers:delete",
        ChangesRead = "changes:read",
        AuditRead = "audit:read",
        WebhooksRead = "webhooks:read",
        WebhooksWrite = "webhooks:write",
    }
);
wire_enum!(
    /// What a captured row change did.
    ChangeOperation { Insert = "insert", Update = "update", Delete = "delete" }
);
wire_enum!(
    /// The health of a server's live binlog stream (streaming.md §3).
    StreamState {
        Starting = "starting",
        Running = "running",
        Stalled = "stalled",
        Disconnected = "disconnected",
        LostPosition = "lost_position",
        Failed = "failed",
        Stopped = "stopped",
    }
);

impl OnboardingStep {
    /// The step's position, 0-based.
    pub fn index(self) -> usize {
        OnboardingStep::ALL
            .iter()
            .position(|step| *step == self)
            .unwrap_or_default()
    }
}

/// A server's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServerId(Uuid);

impl ServerId {
    /// The id a stored row carries.
    pub fn from_uuid(uuid: Uuid) -> ServerId {
        ServerId(uuid)
    }

    /// The UUID inside, for the store and the wire.
    pub fn uuid(self) -> Uuid {
        self.0
    }

    /// A new, time-ordered id.
    pub fn generate() -> ServerId {
        ServerId(Uuid::now_v7())
    }

    /// Parses a client-supplied id.
    pub fn parse(text: &str) -> Option<ServerId> {
        Uuid::try_parse(text).ok().map(ServerId)
    }
}

impl ServerId {
    /// `servers/ID`, the server's resource name, written without `core::fmt` (the audit
    /// record of every change names it).
    pub fn resource_name(self) -> String {
        let mut buffer = Uuid::encode_buffer();
        let id = self.0.hyphenated().encode_lower(&mut buffer);
        let mut name = String::with_capacity("servers/".len() + id.len());
        name.push_str("servers/");
        name.push_str(id);
        name
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

/// A tenant's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TenantId(Uuid);

impl TenantId {
    /// The id a stored row or a key carries.
    pub fn from_uuid(uuid: Uuid) -> TenantId {
        TenantId(uuid)
    }

    /// The UUID inside, for the store.
    pub fn uuid(self) -> Uuid {
        self.0
    }
}

/// One bad field of a request: its path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Every bad field of a request, reported together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    /// One bad field.
    pub fn one(field: impl Into<String>, description: impl Into<String>) -> Violations {
        let mut violations = Violations::default();
        violations.add(field, description);
        violations
    }

    /// Records one bad field.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Ok when nothing was recorded.
    pub fn into_result(self) -> Result<(), Violations> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// `result`, with the violations recorded so far ahead of its own: everything wrong with a
    /// request is reported at once.
    pub fn and<T>(mut self, result: Result<T, Violations>) -> Result<T, Violations> {
        match result {
            Ok(value) if self.0.is_empty() => Ok(value),
            Ok(_) => Err(self),
            Err(more) => {
                self.0.extend(more.0);
                Err(self)
            }
        }
    }

    /// Keeps the value of a check, recording its violation under `field` (written out only
    /// then).
    pub fn check<T>(&mut self, field: impl fmt::Display, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(description) => {
                self.add(field.to_string(), description);
                None
            }
        }
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|violation| format!("{}: {}", violation.field, violation.description))
            .collect();
        write!(formatter, "invalid request: {}", fields.join("; "))
    }
}

/// A business rule's refusal of a write: the service and the store are fine, the request is not
/// (as opposed to the store's faults, `StoreError`). The store's writes return it apart from
/// their faults; the API's one error table maps each to its code and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("a server named {0:?} already exists")]
    NameTaken(String),
    #[error("server limit reached ({count} of {limit})")]
    LimitReached { limit: i32, count: i64 },
    #[error("etag does not match the current version")]
    EtagMismatch,
    #[error("request_id was already used for a different request")]
    RequestIdReused,
    #[error("{0}")]
    Rejected(#[from] server::Rejection),
    /// A tenant of this name exists (the tenant's name).
    #[error("tenant {0:?} already exists")]
    TenantNameTaken(String),
    /// The tenant has as many webhooks as it may have.
    #[error("webhook limit reached ({0} of {0})")]
    WebhookLimitReached(usize),
    /// A dry run's preflight checks failed (the failed checks, never empty).
    #[error("{} preflight check(s) failed", .0.len())]
    ChecksFailed(Vec<check::Check>),
}
