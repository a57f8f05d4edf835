//! What the REST tests share (`crate::rest_common`): an HTTP client bound to a
//! test app's HTTP port and key, the JSON a gRPC message must be written as (api.md §5), and
//! assertions on `google.rpc.Status` error bodies.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use dbtrail_servers::proto::{self, OnboardingStatus};
use reqwest::{Method, header::HeaderMap};
use serde_json::{Value, json};

use crate::common::{ERROR_DOMAIN, TestApp};

/// The keys of a Server in a response, every one always present.
pub const SERVER_KEYS: [&str; 18] = [
    "connection_method",
    "created_at",
    "decommissioned_at",
    "error",
    "etag",
    "has_mysql_password",
    "host",
    "labels",
    "mysql_user",
    "name",
    "onboarding_step",
    "port",
    "server_id",
    "ssh_tunnel",
    "status",
    "stream",
    "stream_options",
    "updated_at",
];
/// The keys of an OnboardingStatus.
pub const ONBOARDING_KEYS: [&str; 8] = [
    "agent_outbound_ip",
    "current_step",
    "error",
    "revision",
    "server_id",
    "server_status",
    "steps",
    "stream_state",
];
/// The keys of a StepProgress.
pub const STEP_KEYS: [&str; 8] = [
    "attempts",
    "completed_at",
    "error",
    "message",
    "name",
    "started_at",
    "status",
    "warnings",
];
/// The step names, in order.
pub const STEP_NAMES: [&str; 6] = [
    "provisioning",
    "awaiting_firewall",
    "waiting_for_agent",
    "initializing",
    "snapshotting",
    "streaming",
];

/// One HTTP exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub json: Value,
}

impl Reply {
    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }
}

/// A REST client for one app and one authorization header.
#[derive(Clone)]
pub struct Rest {
    pub base: String,
    pub http: reqwest::Client,
    pub authorization: Option<String>,
}

impl Rest {
    /// HTTP/1.1 to the app's HTTP port with the tenant's key.
    pub fn new(app: &TestApp) -> Rest {
        Rest {
            base: format!("http://{}", app.http_addr),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            authorization: Some(format!("Bearer {}", app.tenant.key)),
        }
    }

    /// The same client with another key.
    pub fn with_key(&self, key: &str) -> Rest {
        Rest {
            authorization: Some(format!("Bearer {key}")),
            ..self.clone()
        }
    }

    /// The same client sending this authorization header verbatim, or none.
    pub fn with_authorization(&self, authorization: Option<&str>) -> Rest {
        Rest {
            authorization: authorization.map(str::to_owned),
            ..self.clone()
        }
    }

    /// A request builder with the authorization header.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.authorization {
            Some(authorization) => builder.header("authorization", authorization),
            None => builder,
        }
    }

    /// Sends a built request and reads the whole answer.
    pub async fn exchange(&self, builder: reqwest::RequestBuilder) -> Reply {
        let response = builder.send().await.expect("the HTTP exchange");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("a response body");
        let json = serde_json::from_str(&body).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            json,
        }
    }

    /// `method path` with an optional JSON body.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let mut builder = self.request(method, path);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        self.exchange(builder).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }

    /// Registers `body` and returns the created server, asserting 201 and its Location.
    pub async fn register(&self, body: &Value) -> Value {
        let reply = self.post("/servers", body).await;
        assert_eq!(reply.status, 201, "POST /servers: {}", reply.body);
        let id = reply.json["server_id"].as_str().expect("a server_id");
        assert_eq!(reply.header("location"), format!("/servers/{id}"));
        reply.json
    }

    /// Polls GET onboarding-status until `condition` holds; panics with the last status after
    /// `timeout`.
    pub async fn wait_for_onboarding(
        &self,
        server_id: &str,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = std::time::Instant::now();
        loop {
            let reply = self
                .get(&format!("/servers/{server_id}/onboarding-status"))
                .await;
            assert_eq!(reply.status, 200, "onboarding-status: {}", reply.body);
            if condition(&reply.json) {
                return reply.json;
            }
            if started.elapsed() > timeout {
                panic!("timed out waiting for {what}: last status {:#}", reply.json);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An ssh_tunnel server as request JSON, pointing at loopback only.
pub fn ssh_server_json(name: &str) -> Value {
    json!({
        "name": name,
        "host": "127.0.0.1",
        "port": 3306,
        "mysql_user": "bintrail",
        "mysql_password": "s3cret-password",
        "connection_method": "ssh_tunnel",
        "ssh_tunnel": {
            "host": "localhost",
            "user": "ec2-user",
            "private_key": crate::common::TEST_PRIVATE_KEY,
        },
    })
}

/// A direct server as request JSON, pointing at loopback only.
pub fn direct_server_json(name: &str) -> Value {
    json!({
        "name": name,
        "host": "127.0.0.1",
        "port": 3306,
        "mysql_user": "bintrail",
        "mysql_password": "s3cret-password",
        "connection_method": "direct",
    })
}

/// The sorted keys of a JSON object.
#[track_caller]
pub fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

/// A Timestamp as the JSON writes it: RFC 3339 UTC with `Z`, 0, 3, 6 or 9 fraction digits.
pub fn timestamp_json(timestamp: &Option<prost_types::Timestamp>) -> Value {
    match timestamp {
        Some(timestamp) => DateTime::from_timestamp(timestamp.seconds, timestamp.nanos as u32)
            .map(|time| Value::String(time.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
            .unwrap_or(Value::Null),
        None => Value::Null,
    }
}

/// A proto enum value as the REST layer writes it: its name without `prefix`, in lower case ("?"
/// for a value the enum does not know).
fn enum_json<E: TryFrom<i32>>(value: i32, name: fn(&E) -> &'static str, prefix: &str) -> Value {
    let name = E::try_from(value).map(|known| name(&known)).unwrap_or("?");
    Value::String(name.trim_start_matches(prefix).to_ascii_lowercase())
}

fn connection_method(value: i32) -> Value {
    enum_json(
        value,
        proto::ConnectionMethod::as_str_name,
        "CONNECTION_METHOD_",
    )
}

fn server_status(value: i32) -> Value {
    enum_json(value, proto::ServerStatus::as_str_name, "SERVER_STATUS_")
}

/// A StreamStatus as the REST layer writes it.
pub fn stream_json(stream: &proto::StreamStatus) -> Value {
    json!({
        "state": stream_state_name(stream.state),
        "binlog_file": stream.binlog_file,
        "binlog_position": stream.binlog_position,
        "gtid_set": stream.gtid_set,
        "source_server_uuid": stream.source_server_uuid,
        "last_event_at": timestamp_json(&stream.last_event_at),
        "last_heartbeat_at": timestamp_json(&stream.last_heartbeat_at),
        "last_checkpoint_at": timestamp_json(&stream.last_checkpoint_at),
        "lag_seconds": stream.lag_seconds,
        "events_indexed": stream.events_indexed,
        "reconnects": stream.reconnects,
        "error": stream.error,
        "holder_agent_id": stream.holder_agent_id,
        "statement_changes_skipped": stream.statement_changes_skipped,
        "statement_changes_since": timestamp_json(&stream.statement_changes_since),
        "last_statement_change_position": stream.last_statement_change_position,
        "samples": stream.samples.iter().map(|sample| json!({
            "at": timestamp_json(&sample.at),
            "lag_millis": sample.lag_millis,
            "events_indexed": sample.events_indexed,
        })).collect::<Vec<_>>(),
    })
}

fn onboarding_step(value: i32) -> Value {
    enum_json(
        value,
        proto::OnboardingStep::as_str_name,
        "ONBOARDING_STEP_",
    )
}

fn step_status(value: i32) -> Value {
    enum_json(value, proto::StepStatus::as_str_name, "STEP_STATUS_")
}

fn ssl_mode(value: i32) -> Value {
    enum_json(value, proto::SslMode::as_str_name, "SSL_MODE_")
}

/// The JSON a Server read over gRPC must be written as over REST.
pub fn server_json(server: &proto::Server) -> Value {
    json!({
        "server_id": server.server_id,
        "name": server.name,
        "host": server.host,
        "port": server.port,
        "mysql_user": server.mysql_user,
        "has_mysql_password": server.has_mysql_password,
        "connection_method": connection_method(server.connection_method),
        "ssh_tunnel": server.ssh_tunnel.as_ref().map(|tunnel| json!({
            "host": tunnel.host,
            "port": tunnel.port,
            "user": tunnel.user,
            "has_private_key": tunnel.has_private_key,
            "host_key_fingerprint": tunnel.host_key_fingerprint,
        })),
        "stream_options": server.stream_options.as_ref().map(|options| json!({
            "schemas": options.schemas,
            "tables": options.tables,
            "exclude_tables": options.exclude_tables,
            "ssl_mode": ssl_mode(options.ssl_mode),
        })),
        "labels": server.labels,
        "status": server_status(server.status),
        "onboarding_step": server.onboarding_step.map(onboarding_step),
        "error": server.error,
        "created_at": timestamp_json(&server.created_at),
        "updated_at": timestamp_json(&server.updated_at),
        "decommissioned_at": timestamp_json(&server.decommissioned_at),
        "etag": server.etag,
        "stream": server.stream.as_ref().map(stream_json),
    })
}

/// The JSON an OnboardingStatus read over gRPC must be written as over REST.
pub fn onboarding_json(status: &OnboardingStatus) -> Value {
    json!({
        "server_id": status.server_id,
        "current_step": status.current_step.map(onboarding_step),
        "steps": status.steps.iter().map(|step| json!({
            "name": onboarding_step(step.name),
            "status": step_status(step.status),
            "started_at": timestamp_json(&step.started_at),
            "completed_at": timestamp_json(&step.completed_at),
            "message": step.message,
            "error": step.error,
            "attempts": step.attempts,
            "warnings": step.warnings,
        })).collect::<Vec<_>>(),
        "error": status.error,
        "agent_outbound_ip": status.agent_outbound_ip,
        "server_status": server_status(status.server_status),
        "revision": status.revision,
        "stream_state": status.stream_state.map(stream_state_name),
    })
}

fn stream_state_name(value: i32) -> Value {
    enum_json(value, proto::StreamState::as_str_name, "STREAM_STATE_")
}

/// The `@type`s of a Status body's details, in order.
pub fn detail_types(status: &Value) -> Vec<String> {
    status["details"]
        .as_array()
        .map(|details| {
            details
                .iter()
                .map(|detail| detail["@type"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The detail of a Status body with this `@type` suffix (`ErrorInfo`, `BadRequest`, ...).
#[track_caller]
pub fn detail<'a>(status: &'a Value, kind: &str) -> &'a Value {
    let wanted = format!("type.googleapis.com/google.rpc.{kind}");
    status["details"]
        .as_array()
        .and_then(|details| details.iter().find(|detail| detail["@type"] == wanted))
        .unwrap_or_else(|| panic!("no {kind} detail in {status:#}"))
}

/// Asserts an error reply: the HTTP status, a `google.rpc.Status` body with the gRPC `code`, a
/// message, and an ErrorInfo with `reason` in the service's domain.
#[track_caller]
pub fn assert_status(reply: &Reply, http: u16, code: i32, reason: &str) {
    assert_eq!(reply.status, http, "HTTP status of {}", reply.body);
    assert!(
        reply.header("content-type").starts_with("application/json"),
        "an error body is JSON: {:?}",
        reply.headers
    );
    assert_eq!(
        keys(&reply.json),
        ["code", "details", "message"],
        "{}",
        reply.body
    );
    assert_eq!(reply.json["code"], code, "{}", reply.body);
    assert!(
        !reply.json["message"].as_str().unwrap_or("").is_empty(),
        "the error has no message: {}",
        reply.body
    );
    let info = detail(&reply.json, "ErrorInfo");
    assert_eq!(info["reason"], reason, "{}", reply.body);
    assert_eq!(info["domain"], ERROR_DOMAIN, "{}", reply.body);
}

/// The sorted field paths of a Status body's BadRequest.
#[track_caller]
pub fn violation_fields(status: &Value) -> Vec<String> {
    let mut fields: Vec<String> = detail(status, "BadRequest")["field_violations"]
        .as_array()
        .expect("field_violations")
        .iter()
        .map(|violation| {
            assert!(
                !violation["description"].as_str().unwrap_or("").is_empty(),
                "a violation without a description: {violation}"
            );
            violation["field"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    fields.sort();
    fields
}

/// Panics if a secret the tests send shows up in `text`.
#[track_caller]
pub fn assert_no_secret(text: &str) {
    for secret in [
        "s3cret",
        crate::common::TEST_PRIVATE_KEY_BODY_LINE,
        "\"mysql_password\"",
        "\"private_key\"",
    ] {
        assert!(!text.contains(secret), "{secret:?} leaked into {text}");
    }
}

/// `value` with every RFC 3339 timestamp cut to microseconds: what PostgreSQL stores. The
/// responses of mutations carry the service's clock to the nanosecond, later reads the stored
/// value, so the two are compared at the stored precision.
pub fn at_stored_precision(value: &Value) -> Value {
    match value {
        Value::String(text) => match DateTime::parse_from_rfc3339(text) {
            Ok(time) if text.ends_with('Z') => {
                let micros = time.timestamp_micros();
                DateTime::from_timestamp_micros(micros)
                    .map(|time| Value::String(time.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
                    .unwrap_or_else(|| value.clone())
            }
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(at_stored_precision).collect()),
        Value::Object(object) => Value::Object(
            object
                .iter()
                .map(|(key, value)| (key.clone(), at_stored_precision(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}
