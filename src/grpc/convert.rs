//! Conversions between the proto messages and the domain: outputs never carry a secret; inputs
//! become raw domain input, with unknown enum numbers reported as field violations.

use chrono::{DateTime, Utc};

use crate::{
    domain::{
        ConnectionMethod, OnboardingStep, ServerStatus, SslMode, StepStatus, StreamState,
        Violations,
        audit::AuditEvent,
        change::ChangeEvent,
        check::{CheckResult, Report},
        fields::texts,
        onboarding::{OnboardingStatus, StepProgress},
        schema_change::SchemaChange,
        server::{Secret, Server, ServerInput, SshTunnelInput, StreamOptionsInput},
        stream::StreamHealth,
        webhook::{Delivery, DeliveryStatus, EventType, Webhook},
    },
    proto,
};

/// A chrono time as a protobuf Timestamp.
pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// Maps a domain enum to the proto enum of the same variants; with `<=>`, also back from a
/// request's number, where the proto's Unspecified means "not set".
macro_rules! proto_enum {
    ($domain:ident => $proto:ident { $($variant:ident),+ $(,)? }) => {
        impl From<$domain> for proto::$proto {
            fn from(value: $domain) -> proto::$proto {
                match value {
                    $($domain::$variant => proto::$proto::$variant),+
                }
            }
        }
    };
    ($domain:ident <=> $proto:ident { $($variant:ident),+ $(,)? }) => {
        proto_enum!($domain => $proto { $($variant),+ });

        impl FromProtoNumber for $domain {
            const NAMES: &'static [$domain] = $domain::ALL;

            fn from_number(value: i32) -> Option<Option<$domain>> {
                match proto::$proto::try_from(value).ok()? {
                    proto::$proto::Unspecified => Some(None),
                    $(proto::$proto::$variant => Some(Some($domain::$variant)),)+
                }
            }
        }
    };
}

/// A domain enum a request sets by its proto number.
trait FromProtoNumber: Sized + Copy + std::fmt::Display + 'static {
    /// Every value, for the message that lists them.
    const NAMES: &'static [Self];

    /// None for a number the proto does not define; Some(None) for Unspecified.
    fn from_number(value: i32) -> Option<Option<Self>>;
}

proto_enum!(ConnectionMethod <=> ConnectionMethod { Direct, Vpn, SshTunnel });
proto_enum!(SslMode <=> SslMode { Disabled, Preferred, Required, VerifyCa, VerifyFull });
proto_enum!(ServerStatus => ServerStatus { Pending, Active, Disconnected, Paused, Error, Decommissioned });
proto_enum!(OnboardingStep => OnboardingStep {
    Provisioning,
    AwaitingFirewall,
    WaitingForAgent,
    Initializing,
    Snapshotting,
    Streaming,
});
proto_enum!(StepStatus => StepStatus { Pending, InProgress, Completed, Failed });
proto_enum!(StreamState => StreamState {
    Starting,
    Running,
    Stalled,
    Disconnected,
    LostPosition,
    Failed,
    Stopped,
});

proto_enum!(CheckResult => CheckResult { Pass, Warn, Fail, Skipped });
proto_enum!(EventType <=> WebhookEvent {
    ServerStatusChanged,
    StreamStateChanged,
    OnboardingFailed,
    LostPosition,
    Decommissioned,
});
proto_enum!(DeliveryStatus => DeliveryStatus { Pending, Delivered, Dead });

/// A proto enum's number as wire-encoded.
fn number<P: Into<i32>>(value: impl Into<P>) -> i32 {
    value.into().into()
}

/// The domain value of a request's enum number (none when unset); a number the proto does not
/// define is a violation of `field`.
fn enum_from_proto<E: FromProtoNumber>(
    value: i32,
    field: &str,
    violations: &mut Violations,
) -> Option<E> {
    E::from_number(value).unwrap_or_else(|| {
        let names: Vec<String> = E::NAMES.iter().map(ToString::to_string).collect();
        violations.add(
            field,
            format!("unknown value {value}: one of {}", names.join(", ")),
        );
        None
    })
}

/// A webhook as the API shows it: without its secret (CreateWebhook adds it, once).
pub fn webhook_to_proto(webhook: &Webhook) -> proto::Webhook {
    proto::Webhook {
        webhook_id: webhook.id.to_string(),
        url: webhook.spec.url.as_str().to_owned(),
        events: webhook
            .spec
            .events
            .iter()
            .map(|event| number::<proto::WebhookEvent>(*event))
            .collect(),
        signing_secret: None,
        created_at: Some(timestamp(webhook.created_at)),
    }
}

/// A request's event types: `None` for a number that names none (reported by the domain).
pub fn webhook_events_from_proto(values: &[i32]) -> Vec<Option<EventType>> {
    values
        .iter()
        .map(|value| EventType::from_number(*value).flatten())
        .collect()
}

/// A delivery as ListWebhookDeliveries shows it.
pub fn delivery_to_proto(delivery: &Delivery) -> proto::WebhookDelivery {
    proto::WebhookDelivery {
        delivery_id: delivery.id.to_string(),
        webhook_id: delivery.webhook_id.to_string(),
        event_id: delivery.event_id.to_string(),
        event: number::<proto::WebhookEvent>(delivery.event_type),
        server_id: delivery.server_id.to_string(),
        status: number::<proto::DeliveryStatus>(delivery.status),
        attempts: delivery.attempts,
        last_response_code: delivery.last_response_code,
        last_error: delivery.last_error.clone(),
        next_attempt_at: delivery.next_attempt_at.map(timestamp),
        last_attempt_at: delivery.last_attempt_at.map(timestamp),
        delivered_at: delivery.delivered_at.map(timestamp),
        created_at: Some(timestamp(delivery.created_at)),
    }
}

/// A preflight's report as CheckServer answers it.
pub fn report_to_proto(report: &Report) -> proto::CheckServerResponse {
    proto::CheckServerResponse {
        checks: report
            .checks
            .iter()
            .map(|check| proto::Check {
                name: check.name.to_owned(),
                result: number::<proto::CheckResult>(check.result),
                message: check.message.clone(),
                remedy: check.remedy.clone(),
            })
            .collect(),
        ok: report.ok(),
        host_key_fingerprint: report.host_key_fingerprint.clone().unwrap_or_default(),
    }
}

/// A server as clients see it: no secret, only whether one is stored.
pub fn server_to_proto(server: &Server) -> proto::Server {
    let spec = &server.spec;
    proto::Server {
        server_id: server.id.to_string(),
        name: spec.name.to_string(),
        host: spec.host.to_string(),
        port: i32::from(spec.port),
        mysql_user: spec.mysql_user.to_string(),
        mysql_password: String::new(),
        has_mysql_password: server.secrets.mysql_password.is_some(),
        connection_method: number::<proto::ConnectionMethod>(spec.connection_method),
        ssh_tunnel: spec.ssh_tunnel.as_ref().map(|tunnel| proto::SshTunnel {
            host: tunnel.host.to_string(),
            port: i32::from(tunnel.port),
            user: tunnel.user.to_string(),
            private_key: String::new(),
            has_private_key: server.secrets.ssh_private_key.is_some(),
            host_key_fingerprint: tunnel
                .host_key_fingerprint
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }),
        stream_options: Some(proto::StreamOptions {
            schemas: texts(&spec.stream_options.schemas),
            tables: texts(&spec.stream_options.tables),
            exclude_tables: texts(&spec.stream_options.exclude_tables),
            ssl_mode: number::<proto::SslMode>(spec.stream_options.ssl_mode),
        }),
        labels: spec.labels.as_map().clone().into_iter().collect(),
        status: number::<proto::ServerStatus>(server.status),
        onboarding_step: server.current_step().map(number::<proto::OnboardingStep>),
        error: server.error(),
        created_at: Some(timestamp(server.created_at)),
        updated_at: Some(timestamp(server.updated_at)),
        decommissioned_at: server.decommissioned_at.map(timestamp),
        etag: server.etag(),
        stream: server.stream.as_ref().map(stream_to_proto),
    }
}

fn stream_to_proto(stream: &StreamHealth) -> proto::StreamStatus {
    let progress = &stream.progress;
    proto::StreamStatus {
        state: number::<proto::StreamState>(stream.state),
        binlog_file: progress.binlog_file.clone(),
        binlog_position: progress.binlog_position,
        gtid_set: progress.gtid_set.clone(),
        source_server_uuid: progress.source_server_uuid.clone(),
        last_event_at: progress.last_event_at.map(timestamp),
        last_heartbeat_at: progress.last_heartbeat_at.map(timestamp),
        last_checkpoint_at: progress.last_checkpoint_at.map(timestamp),
        lag_seconds: progress.lag_millis as f64 / 1000.0,
        events_indexed: progress.events_indexed,
        reconnects: progress.reconnects,
        error: stream.error.clone(),
        holder_agent_id: progress
            .holder_agent_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        statement_changes_skipped: progress.statement_changes.skipped,
        statement_changes_since: progress.statement_changes.since.map(timestamp),
        last_statement_change_position: progress.statement_changes.last_position.clone(),
        samples: progress
            .samples
            .iter()
            .map(|sample| proto::StreamSample {
                at: Some(timestamp(sample.at)),
                lag_millis: sample.lag_millis,
                events_indexed: sample.events_indexed,
            })
            .collect(),
    }
}

/// A JSON object as a protobuf Struct (null and non-objects as none).
pub(super) fn json_struct(value: &Option<serde_json::Value>) -> Option<prost_types::Struct> {
    match value {
        Some(serde_json::Value::Object(object)) => Some(object_struct(object)),
        _ => None,
    }
}

fn object_struct(object: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: object
            .iter()
            .map(|(key, value)| (key.clone(), json_value(value)))
            .collect(),
    }
}

fn json_value(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(value) => Kind::BoolValue(*value),
        serde_json::Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or_default()),
        serde_json::Value::String(text) => Kind::StringValue(text.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(object_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A captured change as clients see it.
pub fn change_event_to_proto(event: &ChangeEvent) -> proto::ChangeEvent {
    let event = &event.change;
    proto::ChangeEvent {
        event_id: event.event_id(),
        binlog_file: event.binlog_file.clone(),
        binlog_position: event.binlog_position,
        gtid: event.gtid.clone(),
        committed_at: Some(timestamp(event.committed_at)),
        schema: event.schema.clone(),
        table: event.table.clone(),
        r#type: event.operation.as_str().to_owned(),
        primary_key: json_struct(&event.primary_key),
        before: json_struct(&event.before),
        after: json_struct(&event.after),
    }
}

pub fn schema_change_to_proto(change: &SchemaChange) -> proto::SchemaChange {
    let ddl = &change.ddl;
    proto::SchemaChange {
        change_id: change.id,
        statement: ddl.statement.text.clone(),
        statement_truncated: ddl.statement.truncated,
        schema: ddl.schema.clone(),
        table: ddl.table.clone(),
        binlog_file: ddl.binlog_file.clone(),
        binlog_position: ddl.binlog_position,
        gtid: ddl.gtid.clone(),
        committed_at: Some(timestamp(ddl.committed_at)),
        snapshot_version: change.snapshot_version,
    }
}

/// An audit event as clients see it: a secret field's change as what became of it, never a
/// value (the record holds none).
pub fn audit_event_to_proto(event: &AuditEvent) -> proto::AuditEvent {
    let actor = &event.actor;
    proto::AuditEvent {
        event_id: event.id.to_string(),
        time: Some(timestamp(event.time)),
        key_id: actor.key_id.map(|id| id.to_string()).unwrap_or_default(),
        key_name: actor.key_name.clone(),
        request_id: actor.request_id.clone(),
        method: actor.method.clone(),
        server_id: event.server_id.map(|id| id.to_string()).unwrap_or_default(),
        changes: event
            .changes
            .iter()
            .map(|change| proto::AuditFieldChange {
                field: change.field.clone(),
                old_value: change.old.as_ref().map(json_value),
                new_value: change.new.as_ref().map(json_value),
                secret: change
                    .secret
                    .map(|secret| secret.as_str().to_owned())
                    .unwrap_or_default(),
            })
            .collect(),
        outcome: event.outcome.code.clone(),
        reason: event.outcome.reason.clone(),
        client_address: actor
            .client_address
            .map(|address| address.to_string())
            .unwrap_or_default(),
        resource: event.resource.clone(),
    }
}

fn step_progress_to_proto(progress: &StepProgress) -> proto::StepProgress {
    proto::StepProgress {
        name: number::<proto::OnboardingStep>(progress.name),
        status: number::<proto::StepStatus>(progress.status),
        started_at: progress.started_at.map(timestamp),
        completed_at: progress.completed_at.map(timestamp),
        message: progress.message.clone(),
        error: progress.error.clone(),
        attempts: progress.attempts,
        warnings: progress.warnings.clone(),
    }
}

/// An onboarding status as clients see it.
pub fn onboarding_status_to_proto(status: &OnboardingStatus) -> proto::OnboardingStatus {
    proto::OnboardingStatus {
        server_id: status.server_id.to_string(),
        current_step: status.current_step.map(number::<proto::OnboardingStep>),
        steps: status.steps.iter().map(step_progress_to_proto).collect(),
        error: status.error.clone(),
        agent_outbound_ip: status.agent_outbound_ip.clone(),
        server_status: number::<proto::ServerStatus>(status.server_status),
        revision: status.revision,
        stream_state: status.stream_state.map(number::<proto::StreamState>),
    }
}

fn non_empty_secret(text: &str) -> Option<Secret> {
    (!text.is_empty()).then(|| Secret(text.to_owned()))
}

/// A request's server as raw domain input; enum numbers that do not exist are violations.
pub fn server_input_from_proto(
    server: &proto::Server,
    prefix: &str,
    violations: &mut Violations,
) -> ServerInput {
    ServerInput {
        name: server.name.clone(),
        host: server.host.clone(),
        port: server.port,
        mysql_user: server.mysql_user.clone(),
        mysql_password: non_empty_secret(&server.mysql_password),
        connection_method: enum_from_proto(
            server.connection_method,
            &format!("{prefix}connection_method"),
            violations,
        ),
        ssh_tunnel: server.ssh_tunnel.as_ref().map(|tunnel| SshTunnelInput {
            host: tunnel.host.clone(),
            port: tunnel.port,
            user: tunnel.user.clone(),
            private_key: non_empty_secret(&tunnel.private_key),
            host_key_fingerprint: (!tunnel.host_key_fingerprint.is_empty())
                .then(|| tunnel.host_key_fingerprint.clone()),
        }),
        stream_options: server
            .stream_options
            .as_ref()
            .map(|options| StreamOptionsInput {
                schemas: options.schemas.clone(),
                tables: options.tables.clone(),
                exclude_tables: options.exclude_tables.clone(),
                ssl_mode: enum_from_proto(
                    options.ssl_mode,
                    &format!("{prefix}stream_options.ssl_mode"),
                    violations,
                ),
            }),
        labels: server.labels.clone().into_iter().collect(),
    }
}

/// The update_mask paths a server message implies when no mask is sent: its populated fields.
pub fn populated_paths(server: &proto::Server) -> Vec<&'static str> {
    let mut paths = Vec::new();
    let mut add = |present: bool, path: &'static str| {
        if present {
            paths.push(path);
        }
    };
    add(!server.name.is_empty(), "name");
    add(!server.host.is_empty(), "host");
    add(server.port != 0, "port");
    add(!server.mysql_user.is_empty(), "mysql_user");
    add(!server.mysql_password.is_empty(), "mysql_password");
    add(server.connection_method != 0, "connection_method");
    add(server.ssh_tunnel.is_some(), "ssh_tunnel");
    add(server.stream_options.is_some(), "stream_options");
    add(!server.labels.is_empty(), "labels");
    paths
}

/// Output-only fields a request set, which an update rejects.
pub fn populated_output_only(server: &proto::Server) -> Vec<&'static str> {
    let mut paths = Vec::new();
    if server.has_mysql_password {
        paths.push("has_mysql_password");
    }
    if server.status != 0 {
        paths.push("status");
    }
    if server.onboarding_step.is_some() {
        paths.push("onboarding_step");
    }
    if server.error.is_some() {
        paths.push("error");
    }
    if server.created_at.is_some() {
        paths.push("created_at");
    }
    if server.updated_at.is_some() {
        paths.push("updated_at");
    }
    if server.decommissioned_at.is_some() {
        paths.push("decommissioned_at");
    }
    if server
        .ssh_tunnel
        .as_ref()
        .is_some_and(|tunnel| tunnel.has_private_key)
    {
        paths.push("ssh_tunnel.has_private_key");
    }
    paths
}
