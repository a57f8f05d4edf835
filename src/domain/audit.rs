//! The audit log's records (ListAuditEvents): who made a call (an API key, or the command
//! line), what it changed (field by field, a secret only as set, changed or removed), and how it
//! ended; the changes between a server before and after a call; and the list's filter.
//!
//! A record never holds a secret: [`server_changes`] reads the stored secrets only for whether
//! they are there and whether they moved, never their bytes.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    ServerId, TenantId,
    comparisons::{self, Comparison, Fields, Written},
    fields::texts,
    server::{Sealed, Server, ServerSpec, SshTunnel, StreamOptions},
};

/// What the command line records as its key name, when it knows no OS user.
pub const CLI_KEY_NAME: &str = "cli";
/// The command line's `tenants create`.
pub const CREATE_TENANT: &str = "CreateTenant";
/// The command line's `keys create` (and the first start's bootstrap key).
pub const CREATE_API_KEY: &str = "CreateApiKey";
/// The command line's `keys revoke`.
pub const REVOKE_API_KEY: &str = "RevokeApiKey";

/// The outcome of a call that succeeded.
pub const OK: &str = "OK";
/// gRPC's status codes by number, as the audit log names an outcome.
pub const OUTCOMES: [&str; 17] = [
    OK,
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Who made a call, and which: the tenant, the key (none for the command line) and its name,
/// the request id, the method, and the client's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub tenant_id: TenantId,
    pub key_id: Option<Uuid>,
    pub key_name: String,
    pub request_id: String,
    pub method: String,
    pub client_address: Option<IpAddr>,
}

/// How a call ended: `OK`, or the gRPC code of its refusal with the ErrorInfo reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: String,
    pub reason: String,
}

impl Outcome {
    /// A call that did what it was asked.
    pub fn ok() -> Outcome {
        Outcome {
            code: OK.to_owned(),
            reason: String::new(),
        }
    }
}

/// What became of a secret field: never its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretChange {
    Set,
    Changed,
    Removed,
}

impl SecretChange {
    /// The word the record shows.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretChange::Set => "set",
            SecretChange::Changed => "changed",
            SecretChange::Removed => "removed",
        }
    }
}

/// One changed field: its path as UpdateServer names it, with the values before and after
/// (JSON; null when there was none), or for a secret only what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretChange>,
}

impl FieldChange {
    /// A field whose value went from `old` to `new`.
    pub fn value(field: impl Into<String>, old: Value, new: Value) -> FieldChange {
        FieldChange {
            field: field.into(),
            old: Some(old),
            new: Some(new),
            secret: None,
        }
    }

    fn secret(field: &str, change: SecretChange) -> FieldChange {
        FieldChange {
            field: field.to_owned(),
            old: None,
            new: None,
            secret: Some(change),
        }
    }
}

/// One record of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: Uuid,
    pub time: DateTime<Utc>,
    pub actor: Actor,
    /// The server the call concerns, when it concerns one.
    pub server_id: Option<ServerId>,
    /// The resource the call acted on, by its name (`servers/ID`, `apiKeys/ID`, `tenants/ID`,
    /// `webhooks/ID`); empty when it is not known (a refused request that was not read).
    pub resource: String,
    pub changes: Vec<FieldChange>,
    pub outcome: Outcome,
}

impl AuditEvent {
    /// A record of `actor`'s call made now, on `server_id`'s server when it names one.
    pub fn new(
        actor: Actor,
        server_id: Option<ServerId>,
        changes: Vec<FieldChange>,
        outcome: Outcome,
    ) -> AuditEvent {
        AuditEvent {
            id: Uuid::now_v7(),
            time: super::now(),
            actor,
            resource: server_id.map(ServerId::resource_name).unwrap_or_default(),
            server_id,
            changes,
            outcome,
        }
    }

    /// The record, about another resource than a server (e.g. `webhooks/ID`).
    pub fn about(mut self, resource: impl Into<String>) -> AuditEvent {
        self.resource = resource.into();
        self
    }
}

/// The command line (or the first start's bootstrap) as a caller: it has no key, so its name
/// says what it is ("cli", or "cli:USER" with the OS user who ran it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
}

impl Operator {
    /// The caller of one of its commands on `tenant_id`'s tenant, with a request id of its own.
    pub fn actor(&self, tenant_id: TenantId, method: &str) -> Actor {
        Actor {
            tenant_id,
            key_id: None,
            key_name: self.name.clone(),
            request_id: Uuid::new_v4().to_string(),
            method: method.to_owned(),
            client_address: None,
        }
    }
}

/// What creating a resource with these fields changed: each set field, from null. A field
/// created without a value (null) is not a change.
pub fn created(fields: Vec<(&str, Value)>) -> Vec<FieldChange> {
    fields
        .into_iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(field, value)| FieldChange::value(field, Value::Null, value))
        .collect()
}

/// Collects the changed fields of a comparison, in the order they are compared.
#[derive(Default)]
struct Changes(Vec<FieldChange>);

impl Changes {
    fn compare(&mut self, field: &str, old: Value, new: Value) {
        if old != new {
            self.0.push(FieldChange::value(field, old, new));
        }
    }

    fn secret(&mut self, field: &str, old: Option<&[u8]>, new: Option<&[u8]>) {
        let change = match (old, new) {
            (None, Some(_)) => SecretChange::Set,
            (Some(_), None) => SecretChange::Removed,
            // A secret sent again is sealed anew (a fresh nonce), so equal ciphertext means
            // the call did not touch it.
            (Some(old), Some(new)) if old != new => SecretChange::Changed,
            _ => return,
        };
        self.0.push(FieldChange::secret(field, change));
    }
}

/// A field of a `T` as the audit log names it, and how to read its value as JSON.
type Reader<T> = (&'static str, fn(&T) -> Value);

/// A server's settings, by UpdateServer's paths.
const SPEC_FIELDS: [Reader<ServerSpec>; 5] = [
    ("name", |spec| json!(spec.name.as_str())),
    ("host", |spec| json!(spec.host.as_str())),
    ("port", |spec| json!(spec.port.get())),
    ("mysql_user", |spec| json!(spec.mysql_user.as_str())),
    ("connection_method", |spec| {
        json!(spec.connection_method.as_str())
    }),
];

const TUNNEL_FIELDS: [Reader<SshTunnel>; 4] = [
    ("ssh_tunnel.host", |tunnel| json!(tunnel.host.as_str())),
    ("ssh_tunnel.port", |tunnel| json!(tunnel.port.get())),
    ("ssh_tunnel.user", |tunnel| json!(tunnel.user.as_str())),
    ("ssh_tunnel.host_key_fingerprint", |tunnel| {
        json!(
            tunnel
                .host_key_fingerprint
                .as_ref()
                .map(|print| print.as_str())
        )
    }),
];

const STREAM_OPTION_FIELDS: [Reader<StreamOptions>; 4] = [
    ("stream_options.schemas", |options| {
        json!(texts(&options.schemas))
    }),
    ("stream_options.tables", |options| {
        json!(texts(&options.tables))
    }),
    ("stream_options.exclude_tables", |options| {
        json!(texts(&options.exclude_tables))
    }),
    ("stream_options.ssl_mode", |options| {
        json!(options.ssl_mode.as_str())
    }),
];

/// Where a server is in its life: what the lifecycle calls change.
const LIFECYCLE_FIELDS: [Reader<Server>; 4] = [
    ("status", |server| json!(server.status.as_str())),
    ("onboarding_step", |server| {
        json!(server.current_step().map(|step| step.as_str()))
    }),
    ("stream_paused", |server| json!(server.paused)),
    ("stream.state", |server| {
        json!(server.stream.as_ref().map(|stream| stream.state.as_str()))
    }),
];

impl Changes {
    /// Compares the `readers`' fields of `before` and `after` (a missing one's fields are null);
    /// nothing is read when the two are equal.
    fn fields<T: PartialEq>(
        &mut self,
        before: Option<&T>,
        after: Option<&T>,
        readers: &[Reader<T>],
    ) {
        if before == after {
            return;
        }
        for (field, read) in readers {
            let old = before.map_or(Value::Null, read);
            let new = after.map_or(Value::Null, read);
            self.compare(field, old, new);
        }
    }
}

/// The bytes of a stored secret, only to see whether it moved.
fn ciphertext(secret: Option<&Sealed>) -> Option<&[u8]> {
    secret.map(|sealed| sealed.ciphertext.as_slice())
}

/// What a call changed of a server: every settable field (UpdateServer's paths, a label per
/// key), the secrets as set, changed or removed, and the lifecycle (status, onboarding step,
/// whether its stream is paused, the stream's state). `before` is none for a registration.
pub fn server_changes(before: Option<&Server>, after: &Server) -> Vec<FieldChange> {
    let mut changes = Changes::default();
    let spec = &after.spec;
    changes.fields(before.map(|s| &s.spec), Some(spec), &SPEC_FIELDS);
    let old_tunnel = before.and_then(|s| s.spec.ssh_tunnel.as_ref());
    changes.fields(old_tunnel, spec.ssh_tunnel.as_ref(), &TUNNEL_FIELDS);
    let old_options = before.map(|s| &s.spec.stream_options);
    changes.fields(
        old_options,
        Some(&spec.stream_options),
        &STREAM_OPTION_FIELDS,
    );
    label_changes(&mut changes, before, after);
    changes.secret(
        "mysql_password",
        ciphertext(before.and_then(|s| s.secrets.mysql_password.as_ref())),
        ciphertext(after.secrets.mysql_password.as_ref()),
    );
    changes.secret(
        "ssh_tunnel.private_key",
        ciphertext(before.and_then(|s| s.secrets.ssh_private_key.as_ref())),
        ciphertext(after.secrets.ssh_private_key.as_ref()),
    );
    changes.fields(before, Some(after), &LIFECYCLE_FIELDS);
    changes.0
}

/// One change per label key that was added, removed or given another value.
fn label_changes(changes: &mut Changes, before: Option<&Server>, after: &Server) {
    let empty = Default::default();
    let old = before.map_or(&empty, |server| server.spec.labels.as_map());
    let new = after.spec.labels.as_map();
    if old == new {
        return;
    }
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        changes.compare(
            &format!("labels.{key}"),
            json!(old.get(key)),
            json!(new.get(key)),
        );
    }
}

/// A field ListAuditEvents' filter compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditField {
    Time,
    Method,
    KeyId,
    ServerId,
    Outcome,
}

/// The filter's fields.
const AUDIT_FIELDS: Fields<AuditField> = Fields {
    names: &[
        ("time", AuditField::Time),
        ("method", AuditField::Method),
        ("key_id", AuditField::KeyId),
        ("server_id", AuditField::ServerId),
        ("outcome", AuditField::Outcome),
    ],
    listed: "time, method, key_id, server_id and outcome",
};

/// One comparison of ListAuditEvents' filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditCondition {
    /// The record's time compares so with this one.
    Time(Comparison, DateTime<Utc>),
    /// The method is (`equals`) or is not this one.
    Method { equals: bool, value: String },
    /// The outcome (a gRPC code name, OK included) is or is not this one.
    Outcome { equals: bool, value: String },
    /// The key is or is not this one (the command line has none, so is never it).
    KeyId { equals: bool, value: Uuid },
    /// The server is or is not this one (a record of no server is never it).
    ServerId { equals: bool, value: Uuid },
}

/// ListAuditEvents' filter: every comparison holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub conditions: Vec<AuditCondition>,
}

impl AuditFilter {
    /// Parses `method = "UpdateServer" AND time >= "2026-12-01T00:00:00Z"`; empty is no filter.
    /// The error says what is wrong and at which character.
    pub fn parse(input: &str) -> Result<AuditFilter, String> {
        let conditions = comparisons::parse(input, &AUDIT_FIELDS)?
            .into_iter()
            .map(audit_condition)
            .collect::<Result<_, _>>()?;
        Ok(AuditFilter { conditions })
    }
}

fn audit_condition(written: Written<AuditField>) -> Result<AuditCondition, String> {
    let Written {
        field,
        comparison,
        value,
        value_position: at,
    } = written;
    if field != AuditField::Time && !comparison.is_equality() {
        let name = AUDIT_FIELDS
            .names
            .iter()
            .find(|(_, named)| *named == field)
            .map_or("", |(name, _)| name);
        return Err(format!(
            "{name} compares with = or != only, not {} (at character {at}); time takes <, <=, > and >=",
            comparison.as_str()
        ));
    }
    let equals = comparison == Comparison::Equals;
    let id = |what: &str| {
        Uuid::try_parse(&value)
            .map_err(|_| format!("{what} {value:?} at character {at} is not a UUID"))
    };
    Ok(match field {
        AuditField::Time => {
            let time = DateTime::parse_from_rfc3339(&value).map_err(|_| {
                format!(
                    "time {value:?} at character {at} is not an RFC 3339 time such as \"2026-12-01T10:00:00Z\""
                )
            })?;
            AuditCondition::Time(comparison, time.with_timezone(&Utc))
        }
        AuditField::Method => AuditCondition::Method { equals, value },
        AuditField::KeyId => AuditCondition::KeyId {
            equals,
            value: id("key_id")?,
        },
        AuditField::ServerId => AuditCondition::ServerId {
            equals,
            value: id("server_id")?,
        },
        AuditField::Outcome => {
            let upper = value.to_ascii_uppercase();
            if !OUTCOMES.contains(&upper.as_str()) {
                return Err(format!(
                    "outcome {value:?} at character {at} is not OK or a gRPC code such as PERMISSION_DENIED or INVALID_ARGUMENT"
                ));
            }
            AuditCondition::Outcome {
                equals,
                value: upper,
            }
        }
    })
}

#[cfg(test)]
mod tests;
