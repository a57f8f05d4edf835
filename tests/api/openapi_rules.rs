//! The OpenAPI document's request rules against the validators, behaviourally: every numeric
//! limit the served `/openapi.json` states on a request field (minLength, maxLength, minimum,
//! maximum, maxItems, maxProperties) and every field it requires is sent over REST to the real
//! service twice: at the limit (accepted, or refused for another reason than that field) and
//! just past it (400 naming that field). A limit that moved in the validators or in the document
//! alone fails here, in either direction.
//!
//! Bodies are walked on every operation but UpdateServer, whose body is the same Server schema
//! as RegisterServer's (checked there, with `validate_only`, so nothing is created).

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{
    common::*,
    rest_common::{Reply, Rest, direct_server_json, ssh_server_json},
};

/// The numeric keywords this test reads; each is a limit on a request field.
const LIMIT_KEYWORDS: [&str; 6] = [
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "maxItems",
    "maxProperties",
];

/// Where a constrained field is sent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Location {
    Query(String),
    /// A path of properties from the body's root.
    Body(Vec<String>),
}

/// One limit the document states.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Limit {
    location: Location,
    keyword: String,
    bound: i64,
    /// The limit is on each entry of a list (sent as a list of one).
    per_item: bool,
}

impl Limit {
    fn field(&self) -> String {
        match &self.location {
            Location::Query(name) => name.clone(),
            Location::Body(path) => path.join("."),
        }
    }

    fn describe(&self) -> String {
        let item = if self.per_item { "[*]" } else { "" };
        format!("{}{item} {} {}", self.field(), self.keyword, self.bound)
    }
}

/// The schema `$ref` names, or the schema itself.
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            document.pointer(pointer).unwrap_or(&Value::Null)
        }
        None => schema,
    }
}

/// Whether a bound is only the range of the value's type (int32, int64), not a rule.
fn is_type_bound(bound: i64) -> bool {
    bound <= i64::from(i32::MIN) || bound >= i64::from(i32::MAX)
}

/// The limits of `schema` and everything under it.
fn walk(document: &Value, schema: &Value, path: &[String], per_item: bool, out: &mut Vec<Limit>) {
    let schema = resolve(document, schema);
    let location = || Location::Body(path.to_vec());
    for keyword in LIMIT_KEYWORDS {
        let bound = schema[keyword]
            .as_i64()
            .filter(|bound| !is_type_bound(*bound));
        // A minimum length of 0 limits nothing.
        if let Some(bound) = bound.filter(|bound| *bound > 0 || keyword != "minLength") {
            out.push(Limit {
                location: location(),
                keyword: keyword.to_owned(),
                bound,
                per_item,
            });
        }
    }
    for part in ["allOf", "anyOf"] {
        for inner in schema[part].as_array().into_iter().flatten() {
            walk(document, inner, path, per_item, out);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(document, items, path, true, out);
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        let mut field = path.to_vec();
        field.push(required.as_str().unwrap_or_default().to_owned());
        out.push(Limit {
            location: Location::Body(field),
            keyword: "required".to_owned(),
            bound: 0,
            per_item: false,
        });
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        let mut inner = path.to_vec();
        inner.push(name.clone());
        walk(document, property, &inner, false, out);
    }
}

/// Every limit of an operation's query parameters and body.
fn limits_of(document: &Value, operation: &Value, walk_body: bool) -> Vec<Limit> {
    let mut limits = Vec::new();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] != "query" {
            continue;
        }
        let name = parameter["name"].as_str().unwrap_or_default().to_owned();
        let mut found = Vec::new();
        walk(document, &parameter["schema"], &[], false, &mut found);
        limits.extend(found.into_iter().map(|limit| Limit {
            location: Location::Query(name.clone()),
            ..limit
        }));
    }
    if walk_body {
        let body = &operation["requestBody"]["content"]["application/json"]["schema"];
        walk(document, body, &[], false, &mut limits);
    }
    let unique: BTreeSet<Limit> = limits.into_iter().collect();
    unique.into_iter().collect()
}

/// A GTID set of exactly `length` characters: MariaDB members `0-1-1`, the last one's sequence
/// lengthened.
fn gtid_set(length: usize) -> String {
    let members = length.div_ceil(6).max(1);
    let members = (1..=members)
        .rev()
        .find(|count| 6 * count - 1 <= length)
        .unwrap_or(1);
    let mut set = vec!["0-1-1".to_owned(); members].join(",");
    set.push_str(&"1".repeat(length.saturating_sub(set.len())));
    set
}

/// A valid text of exactly `length` characters for `field` of `operation`.
fn text(operation: &str, field: &str, length: usize) -> String {
    let quoted = |prefix: &str| {
        if length < prefix.len() + 1 {
            return "x".repeat(length);
        }
        format!("{prefix}{}\"", "x".repeat(length - prefix.len() - 1))
    };
    match field {
        "filter"
            if operation.ends_with("/change-events")
                || operation.ends_with("/schema-changes")
                || operation.ends_with("/revert-sql") =>
        {
            quoted("schema = \"")
        }
        "filter" if operation.ends_with("/audit-events") => quoted("method = \""),
        "filter" => quoted("name = \""),
        "gtid_set" => gtid_set(length),
        // A webhook's URL: an https one the policy allows, as long as asked.
        "url" if length >= 21 => format!("https://203.0.113.10/{}", "a".repeat(length - 21)),
        // GetRowHistory's key: a JSON object of the primary key.
        "key" if length >= 9 => format!("{{\"id\":\"{}\"}}", "x".repeat(length - 9)),
        // A request id is one request's: each probe has its own.
        "request_id" => Uuid::new_v4()
            .simple()
            .to_string()
            .repeat(length / 32 + 1)
            .chars()
            .take(length)
            .collect(),
        _ => "a".repeat(length),
    }
}

/// A valid list entry number `index` of `field`.
fn entry(field: &str, index: usize) -> Value {
    if field.ends_with("events") {
        let events = [
            "server_status_changed",
            "stream_state_changed",
            "onboarding_failed",
            "lost_position",
            "decommissioned",
        ];
        json!(events[index % events.len()])
    } else if field.ends_with("event_ids") {
        json!(format!("mysql-bin.000001:{index}:0"))
    } else if field.ends_with("tables") {
        json!(format!("shop.t{index}"))
    } else {
        json!(format!("s{index}"))
    }
}

/// The value of a limited field at the limit (`past` false) or just past it.
fn value(operation: &str, limit: &Limit, past: bool) -> Value {
    let field = limit.field();
    let last = field.rsplit('.').next().unwrap_or_default().to_owned();
    let bound = limit.bound;
    let value = match limit.keyword.as_str() {
        "maxLength" => json!(text(operation, &last, (bound + i64::from(past)) as usize)),
        "minLength" => json!(text(operation, &last, (bound - i64::from(past)) as usize)),
        "minimum" => json!(bound - i64::from(past)),
        "maximum" => json!(bound + i64::from(past)),
        "maxItems" => {
            let count = (bound + i64::from(past)) as usize;
            Value::Array((0..count).map(|index| entry(&field, index)).collect())
        }
        "maxProperties" => {
            let count = (bound + i64::from(past)) as usize;
            let map: Map<String, Value> = (0..count)
                .map(|index| (format!("k{index}"), json!("")))
                .collect();
            Value::Object(map)
        }
        other => panic!("no value for {other}"),
    };
    if limit.per_item {
        json!([value])
    } else {
        value
    }
}

/// The request an operation is probed with: its path (ids filled in), query and body.
struct Probe {
    path: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
}

fn base_probe(method: &Method, template: &str, limit: &Limit, ids: &Ids) -> Probe {
    let id = if *method == Method::DELETE {
        &ids.deleted
    } else {
        &ids.kept
    };
    let path = template
        .replace("{server_id}", id)
        .replace("{server.server_id}", id)
        .replace("{webhook_id}", &ids.webhook)
        .replace("{delivery_id}", &Uuid::new_v4().to_string());
    let field = limit.field();
    let (query, body) = match (method.as_str(), template) {
        ("POST", "/servers") => {
            let body = if field.starts_with("ssh_tunnel") {
                ssh_server_json("limits-probe")
            } else {
                direct_server_json("limits-probe")
            };
            (vec![("validate_only", "true")], Some(body))
        }
        // CheckServer's body holds RegisterServer's (checked, and rate-limited, likewise).
        ("POST", "/servers:check") => {
            let server = if field.starts_with("server.ssh_tunnel") {
                ssh_server_json("limits-probe")
            } else {
                direct_server_json("limits-probe")
            };
            (vec![], Some(json!({ "server": server })))
        }
        ("PATCH", _) => (vec![], Some(json!({ "labels": { "probe": "1" } }))),
        ("POST", "/webhooks") => (
            vec![],
            Some(json!({ "url": "https://203.0.113.10/probe", "events": ["decommissioned"] })),
        ),
        ("POST", template) if template.ends_with(":restart-stream") => {
            let body = match field.as_str() {
                "binlog_file" => json!({ "binlog_position": 4 }),
                "binlog_position" => json!({ "current_position": true }),
                "gtid_set" => json!({}),
                _ => json!({ "current_position": true }),
            };
            (vec![], Some(body))
        }
        ("POST", _) => (vec![], Some(json!({}))),
        _ => (vec![], None),
    };
    Probe {
        path,
        query: query
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect(),
        body,
    }
}

/// The probe with the limited field at (or past) its limit.
fn probe(method: &Method, template: &str, limit: &Limit, ids: &Ids, past: bool) -> Probe {
    let mut probe = base_probe(method, template, limit, ids);
    match &limit.location {
        Location::Query(name) => {
            let text = |value: Value| match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
            match value(template, limit, past) {
                // A list in a query string repeats its parameter.
                Value::Array(items) => {
                    for item in items {
                        probe.query.push((name.clone(), text(item)));
                    }
                }
                other => probe.query.push((name.clone(), text(other))),
            }
        }
        Location::Body(path) => {
            let body = probe.body.get_or_insert_with(|| json!({}));
            let (last, parents) = path.split_last().expect("a body field has a name");
            let mut object = body;
            for parent in parents {
                object = object
                    .as_object_mut()
                    .expect("an object")
                    .entry(parent.clone())
                    .or_insert_with(|| json!({}));
            }
            let object = object.as_object_mut().expect("an object");
            if limit.keyword == "required" {
                if past {
                    object.remove(last);
                }
            } else {
                object.insert(last.clone(), value(template, limit, past));
            }
        }
    }
    probe
}

/// The servers the probes name.
struct Ids {
    /// Probed by every operation but DecommissionServer.
    kept: String,
    /// Probed by DecommissionServer (an accepted probe decommissions it).
    deleted: String,
    /// The webhook the webhook calls' probes name.
    webhook: String,
}

/// Sends a probe. A stream that opens (a watch follows its server until it settles) is answered
/// by its status alone: nothing in it is a refusal.
async fn send(rest: &Rest, method: &Method, probe: &Probe) -> Reply {
    let mut builder = rest
        .request(method.clone(), &probe.path)
        .query(&probe.query);
    if let Some(body) = &probe.body {
        builder = builder.json(body);
    }
    let response = builder.send().await.expect("the HTTP exchange");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let streamed = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-ndjson"));
    let body = if streamed && status == 200 {
        String::new()
    } else {
        response.text().await.expect("a response body")
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        json,
    }
}

/// The fields a 400's BadRequest names.
fn violated_fields(reply: &Reply) -> Vec<String> {
    reply.json["details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|detail| {
            detail["field_violations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|violation| violation["field"].as_str().map(str::to_owned))
        .collect()
}

/// Whether a violation's field (`server.stream_options.schemas[0]`) is `field`
/// (`stream_options.schemas`), wherever the request puts it.
fn names(violation: &str, field: &str) -> bool {
    let within = |rest: &str| rest.is_empty() || rest.starts_with('[') || rest.starts_with('.');
    violation.match_indices(field).any(|(start, _)| {
        (start == 0 || violation[..start].ends_with('.'))
            && within(&violation[start + field.len()..])
    })
}

#[test]
fn every_limit_in_the_document_is_the_limit_the_server_enforces() {
    block_on(async {
        let app = TestApp::start().await;
        let rest = Rest::new(&app);
        let document = rest.get("/openapi.json").await.json;
        let mut ids = Vec::new();
        for name in ["limits-kept", "limits-deleted"] {
            let server = rest.register(&direct_server_json(name)).await;
            ids.push(server["server_id"].as_str().expect("an id").to_owned());
        }
        let webhook = rest
            .post(
                "/webhooks",
                &json!({ "url": "https://203.0.113.10/kept", "events": ["decommissioned"] }),
            )
            .await;
        let ids = Ids {
            kept: ids[0].clone(),
            deleted: ids[1].clone(),
            webhook: webhook.json["webhook_id"]
                .as_str()
                .expect("a webhook")
                .to_owned(),
        };
        let mut checked = BTreeSet::new();
        let mut failures = Vec::new();
        for (template, methods) in document["paths"].as_object().expect("paths") {
            for (method, operation) in methods.as_object().expect("operations") {
                let method: Method = method.to_ascii_uppercase().parse().expect("a method");
                let walk_body = method != Method::PATCH;
                for limit in limits_of(&document, operation, walk_body) {
                    let what = format!("{method} {template}: {}", limit.describe());
                    let at = send(
                        &rest,
                        &method,
                        &probe(&method, template, &limit, &ids, false),
                    )
                    .await;
                    let field = limit.field();
                    if at.status >= 500
                        || violated_fields(&at)
                            .iter()
                            .any(|violation| names(violation, &field))
                    {
                        failures.push(format!(
                            "{what}: at the limit got {} {}",
                            at.status, at.body
                        ));
                    }
                    let past = send(
                        &rest,
                        &method,
                        &probe(&method, template, &limit, &ids, true),
                    )
                    .await;
                    if past.status != 400
                        || !violated_fields(&past)
                            .iter()
                            .any(|violation| names(violation, &field))
                    {
                        failures.push(format!(
                            "{what}: just past the limit got {} {}",
                            past.status, past.body
                        ));
                    }
                    checked.insert(format!("{method} {template}: {}", limit.describe()));
                }
            }
        }
        eprintln!(
            "checked {} limits:\n{}",
            checked.len(),
            checked.iter().cloned().collect::<Vec<_>>().join("\n")
        );
        failures.extend(update_mask_limit(&rest, &document, &ids).await);
        assert!(
            failures.is_empty(),
            "limits that differ:\n{}",
            failures.join("\n")
        );
        // The limits issue 32 names are all in the document, so all were probed.
        for expected in [
            "POST /servers: name maxLength 100",
            "POST /servers: name minLength 1",
            "POST /servers: port maximum 65535",
            "POST /servers: mysql_user maxLength 80",
            "POST /servers: labels maxProperties 64",
            "POST /servers: stream_options.schemas maxItems 1000",
            "POST /servers: stream_options.tables maxItems 1000",
            "POST /servers: stream_options.exclude_tables maxItems 1000",
            "POST /servers: ssh_tunnel.user maxLength 64",
            "POST /servers: name required 0",
            "POST /servers: request_id maxLength 128",
            "GET /servers: page_size minimum 0",
            "GET /servers: filter maxLength 2000",
            "GET /servers/{server_id}/change-events: filter maxLength 2000",
            "GET /servers/{server_id}/schema-changes: filter maxLength 2000",
            "GET /audit-events: filter maxLength 2000",
            "POST /servers/{server_id}:restart-stream: binlog_file maxLength 255",
            "POST /servers/{server_id}:restart-stream: gtid_set maxLength 4096",
            "POST /webhooks: url maxLength 2048",
            "POST /webhooks: events maxItems 5",
            "POST /webhooks: url required 0",
            "GET /webhooks: page_size minimum 0",
            "GET /webhooks/{webhook_id}/deliveries: page_size minimum 0",
        ] {
            assert!(
                checked.contains(expected),
                "not in the document: {expected}"
            );
        }
        app.shutdown().await;
    });
}

/// UpdateServer's mask: its pattern allows one path and then `{0,N}` more; N + 1 paths are
/// accepted and N + 2 refused, naming update_mask.
async fn update_mask_limit(rest: &Rest, document: &Value, ids: &Ids) -> Vec<String> {
    let parameters = document["paths"]["/servers/{server_id}"]["patch"]["parameters"]
        .as_array()
        .expect("UpdateServer's parameters");
    let pattern = parameters
        .iter()
        .find(|parameter| parameter["name"] == "update_mask")
        .and_then(|parameter| parameter["schema"]["pattern"].as_str())
        .expect("update_mask has a pattern");
    let more: usize = pattern
        .rsplit_once("{0,")
        .and_then(|(_, rest)| rest.split('}').next())
        .and_then(|count| count.parse().ok())
        .expect("the pattern ends with a count");
    let mut failures = Vec::new();
    for (count, refused) in [(more + 1, false), (more + 2, true)] {
        let mask = vec!["labels"; count].join(",");
        let builder = rest
            .request(Method::PATCH, &format!("/servers/{}", ids.kept))
            .query(&[("update_mask", mask.as_str())])
            .json(&json!({ "labels": { "probe": "2" } }));
        let reply = rest.exchange(builder).await;
        let named = violated_fields(&reply)
            .iter()
            .any(|violation| names(violation, "update_mask"));
        if named != refused || (refused && reply.status != 400) {
            failures.push(format!(
                "PATCH update_mask of {count} paths got {} {}",
                reply.status, reply.body
            ));
        }
    }
    failures
}

#[test]
fn a_gtid_set_filler_has_the_length_asked() {
    for length in [5, 11, 17, 4096, 4097] {
        assert_eq!(gtid_set(length).len(), length, "{length}");
    }
}
