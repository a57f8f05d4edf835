//! `GET /openapi.json`: an OpenAPI 3.1 document generated from the same descriptors and routes
//! the gateway serves: every route with its path and query parameters, request and response
//! schemas (response fields all required, `null` allowed exactly where the JSON writes it),
//! enum values by their JSON names, the `google.rpc.Status` error with its detail types, and the
//! bearer scheme. Descriptions come from the proto comments.
//!
//! The rules a request must follow (lengths, patterns, formats, ranges, counts, required fields)
//! are not this module's: the wiring hands them in as [`Constraints`], JSON Schema keywords by
//! proto full name, and they are merged into the request-direction schema of that field (or
//! message) wherever it is sent. This module knows no field of any service.

mod schemas;

use std::collections::{BTreeMap, HashMap};

use prost_reflect::{FieldDescriptor, MessageDescriptor};
use serde_json::{Map, Value as Json, json};

use super::{
    Api,
    descriptors::Descriptors,
    routes::{BodyMapping, Route, RouteTable},
};
use crate::grpc::errors::ERROR_DOMAIN;

pub use schemas::Constraints;
use schemas::{Direction, STATUS, Schemas, comment, field_comment, is_error_detail, reference};

/// The `google.rpc.Status` schema, its details typed by the error-detail messages.
fn status_schemas(schemas: &mut Schemas<'_>) {
    let Some(status) = schemas.descriptors.pool.get_message_by_name(STATUS) else {
        return;
    };
    let details: Vec<MessageDescriptor> = schemas
        .descriptors
        .pool
        .all_messages()
        .filter(is_error_detail)
        .collect();
    let mut detail_types: Vec<Json> = details
        .iter()
        .map(|message| schemas.message_reference(message, Direction::Response))
        .collect();
    detail_types.push(json!({
        "type": "object",
        "required": ["@type"],
        "properties": { "@type": { "type": "string" } },
    }));
    let mut schema = schemas.message_schema(&status, Direction::Response, &[]);
    if let Some(details) = schema.pointer_mut("/properties/details/items") {
        *details = json!({ "anyOf": detail_types });
    }
    schemas.built.insert(STATUS.to_owned(), schema);
}

fn parameter_schema(schemas: &mut Schemas<'_>, field: &FieldDescriptor) -> Json {
    let schema = schemas.value_schema(&field.kind(), Direction::Request);
    let schema = if field.is_list() {
        json!({ "type": "array", "items": schema })
    } else {
        schema
    };
    schemas.constrained(schema, field.full_name())
}

fn response_headers() -> Json {
    json!({
        "x-request-id": {
            "description": "The request id: the client's x-request-id, or one the service made.",
            "schema": { "type": "string" },
        }
    })
}

/// One route's operation: its parameters, request body and responses.
fn operation(
    schemas: &mut Schemas<'_>,
    route: &Route,
    operation_id: String,
    path_names: &[String],
) -> Json {
    let rpc = &route.rpc;
    let mut parameters = path_parameters(schemas, route, path_names);
    parameters.extend(query_parameters(schemas, route));
    if route
        .resume
        .as_ref()
        .is_some_and(|resume| resume.since.is_some())
    {
        parameters.push(json!({
            "name": "Last-Event-ID",
            "in": "header",
            "required": false,
            "description": "With Accept: text/event-stream, the last revision received: the stream resumes after it (it overrides since_revision).",
            "schema": { "type": "string", "pattern": "^(0|[1-9][0-9]{0,17})$" },
        }));
    }
    let mut operation = Map::new();
    operation.insert("operationId".into(), Json::String(operation_id));
    operation.insert("tags".into(), json!([rpc.parent_service().name()]));
    operation.insert("parameters".into(), Json::Array(parameters));
    let description = comment(rpc.parent_file().file_descriptor_proto(), rpc.path());
    if let Some(description) = description {
        operation.insert("summary".into(), Json::String(description));
    }
    if let Some(body) = request_body(schemas, route) {
        operation.insert("requestBody".into(), body);
    }
    operation.insert("responses".into(), Json::Object(responses(schemas, route)));
    Json::Object(operation)
}

/// The path template's variables, under the names the path gives them.
fn path_parameters(schemas: &mut Schemas<'_>, route: &Route, path_names: &[String]) -> Vec<Json> {
    let mut parameters = Vec::new();
    for (variable, name) in route.template.variables.iter().zip(path_names) {
        let Some(leaf) = variable.leaf() else {
            continue;
        };
        let schema = parameter_schema(schemas, leaf);
        let description = match (field_comment(leaf), *name == variable.name) {
            (Some(text), true) => text,
            (Some(text), false) => format!("{text} Sets {}.", variable.name),
            (None, _) => format!("Sets {}.", variable.name),
        };
        parameters.push(json!({
            "name": name,
            "in": "path",
            "required": true,
            "description": description,
            "schema": schema,
        }));
    }
    parameters
}

/// The request fields a query string may set; lists repeat the parameter.
fn query_parameters(schemas: &mut Schemas<'_>, route: &Route) -> Vec<Json> {
    let mut parameters = Vec::new();
    for parameter in &route.query {
        let Some(leaf) = parameter.leaf() else {
            continue;
        };
        let mut entry = Map::new();
        entry.insert("name".into(), Json::String(parameter.name.clone()));
        entry.insert("in".into(), json!("query"));
        entry.insert("required".into(), json!(false));
        entry.insert("schema".into(), parameter_schema(schemas, leaf));
        if let Some(description) = field_comment(leaf) {
            entry.insert("description".into(), Json::String(description));
        }
        if leaf.is_list() {
            entry.insert("style".into(), json!("form"));
            entry.insert("explode".into(), json!(true));
        }
        parameters.push(Json::Object(entry));
    }
    parameters
}

/// The body a route reads: the whole request (less the fields its path binds) or one field.
fn request_body(schemas: &mut Schemas<'_>, route: &Route) -> Option<Json> {
    match &route.body {
        BodyMapping::None => None,
        BodyMapping::Whole => {
            let bound: Vec<FieldDescriptor> = route
                .template
                .variables
                .iter()
                .filter(|variable| variable.fields.len() == 1)
                .filter_map(|variable| variable.leaf().cloned())
                .collect();
            let schema = schemas.message_schema(&route.rpc.input(), Direction::Request, &bound);
            Some(json!({
                "required": false,
                "content": { "application/json": { "schema": schema } },
            }))
        }
        BodyMapping::Field(field) => {
            let schema = schemas.value_schema(&field.kind(), Direction::Request);
            let schema = schemas.constrained(schema, field.full_name());
            Some(json!({
                "required": true,
                "description": field_comment(field).unwrap_or_default(),
                "content": { "application/json": { "schema": schema } },
            }))
        }
    }
}

/// A route's responses: a stream, a creation, or one result; and the error of every route.
fn responses(schemas: &mut Schemas<'_>, route: &Route) -> Map<String, Json> {
    let raw = route.rpc.is_server_streaming() && is_http_body(&route.rpc.output());
    let result = match &route.response_body {
        _ if raw => Json::Null,
        Some(field) => schemas.field_schema(field, Direction::Response),
        None => schemas.message_reference(&route.rpc.output(), Direction::Response),
    };
    let mut responses = Map::new();
    if raw {
        responses.insert("200".into(), raw_response());
    } else if route.rpc.is_server_streaming() {
        responses.insert("200".into(), stream_response(result));
    } else if route.created_identifier.is_some() {
        let mut headers = response_headers();
        if let Json::Object(headers) = &mut headers {
            headers.insert(
                "Location".into(),
                json!({ "description": "The new resource's path.", "schema": { "type": "string" } }),
            );
        }
        responses.insert(
            "201".into(),
            json!({
                "description": "Created.",
                "headers": headers,
                "content": { "application/json": { "schema": result.clone() } },
            }),
        );
        if route.validate_only.is_some() {
            let description = "Validated only (validate_only=true): nothing was created.";
            responses.insert("200".into(), json_response(description, result));
        }
    } else {
        responses.insert("200".into(), json_response("OK.", result));
    }
    responses.insert(
        "default".into(),
        json_response(
            &format!("An error: google.rpc.Status with an ErrorInfo detail (reason, domain {ERROR_DOMAIN}) and, for bad fields, a BadRequest. HTTP status from the gRPC code: 400 INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE; 401 UNAUTHENTICATED; 403 PERMISSION_DENIED; 404 NOT_FOUND; 409 ALREADY_EXISTS, ABORTED; 429 RESOURCE_EXHAUSTED; 499 CANCELLED; 501 UNIMPLEMENTED; 503 UNAVAILABLE; 504 DEADLINE_EXCEEDED; 500 otherwise."),
            reference(STATUS),
        ),
    );
    responses
}

/// A JSON response of `schema`.
fn json_response(description: &str, schema: Json) -> Json {
    json!({
        "description": description,
        "headers": response_headers(),
        "content": { "application/json": { "schema": schema } },
    })
}

/// Whether a message is google.api.HttpBody: its bytes are the HTTP body itself.
pub fn is_http_body(message: &prost_reflect::MessageDescriptor) -> bool {
    message.full_name() == HTTP_BODY
}

/// The full name of google.api.HttpBody.
pub const HTTP_BODY: &str = "google.api.HttpBody";

/// A route whose stream is google.api.HttpBody: the messages' bytes, as a text/plain download
/// (RevertChanges' SQL).
fn raw_response() -> Json {
    let mut headers = response_headers();
    if let Json::Object(headers) = &mut headers {
        headers.insert(
            "content-disposition".into(),
            json!({
                "description": "attachment, with the file name to save it as.",
                "schema": { "type": "string" },
            }),
        );
    }
    json!({
        "description": "The text itself (the messages' bytes, in order), as a download. If the stream fails after it began, its last line is `-- ERROR: <message>`.",
        "headers": headers,
        "content": { "text/plain": { "schema": { "type": "string" } } },
    })
}

/// A server-streaming route's response: NDJSON of results, or Server-Sent Events.
fn stream_response(result: Json) -> Json {
    json!({
        "description": "A stream: newline-delimited JSON, one {\"result\": ...} per message and a final {\"error\": Status} if the stream fails; with Accept: text/event-stream, Server-Sent Events whose data is the message and whose id is its revision, and an `error` event if the stream fails.",
        "headers": response_headers(),
        "content": {
            "application/x-ndjson": { "schema": {
                "type": "object",
                "properties": { "result": result, "error": reference(STATUS) },
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": false,
            }},
            "text/event-stream": { "schema": { "type": "string" } },
        },
    })
}

/// The longest list or map any constrained field may hold (`maxItems`, `maxProperties`): the
/// bound on every array and object of a request body. Without such a rule, 1,000.
pub fn max_entries(constraints: &Constraints) -> usize {
    constraints
        .values()
        .flat_map(|keywords| ["maxItems", "maxProperties"].map(|keyword| keywords.get(keyword)))
        .flatten()
        .filter_map(Json::as_u64)
        .max()
        .and_then(|max| usize::try_from(max).ok())
        .unwrap_or(1_000)
}

/// The whole document.
pub fn document(descriptors: &Descriptors, routes: &RouteTable, api: &Api) -> Json {
    let mut schemas = Schemas {
        descriptors,
        constraints: &api.constraints,
        built: BTreeMap::new(),
        pending: Vec::new(),
    };
    status_schemas(&mut schemas);
    let paths = paths(&mut schemas, routes);
    schemas.drain();
    let services: Vec<String> = descriptors
        .pool
        .services()
        .filter_map(|service| {
            comment(
                service.parent_file().file_descriptor_proto(),
                service.path(),
            )
            .map(|text| format!("{}: {text}", service.name()))
        })
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": api.title,
            "version": api.version,
            "description": format!(
                "The REST translation of the gRPC API (api.md §5). {} Every call needs \
                 `Authorization: Bearer <api key>`.",
                services.join(" ")
            ),
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "schemas": schemas.built,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": api.bearer,
                }
            },
        },
    })
}

/// Every route's operation under its path. Templates of one shape are one OpenAPI path (the
/// spec forbids two that differ only in variable names): the first route's names stand for all
/// of them. An RPC with several routes numbers its later operation ids.
fn paths(schemas: &mut Schemas<'_>, routes: &RouteTable) -> BTreeMap<String, Map<String, Json>> {
    let mut path_names: HashMap<String, (String, Vec<String>)> = HashMap::new();
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut operation_ids: HashMap<String, usize> = HashMap::new();
    for route in &routes.routes {
        let (path, names) = path_names
            .entry(path_shape(route))
            .or_insert_with(|| {
                let names = route.template.variables.iter();
                let names = names.map(|variable| variable.name.clone()).collect();
                (route.template.openapi_path(), names)
            })
            .clone();
        let count = operation_ids
            .entry(route.rpc.name().to_owned())
            .or_insert(0);
        *count += 1;
        let operation_id = match *count {
            1 => route.rpc.name().to_owned(),
            n => format!("{}{n}", route.rpc.name()),
        };
        let operation = operation(schemas, route, operation_id, &names);
        paths
            .entry(path)
            .or_default()
            .insert(route.method.as_str().to_ascii_lowercase(), operation);
    }
    paths
}

/// A route's path with its variables unnamed: `/servers/{}`.
fn path_shape(route: &Route) -> String {
    route
        .template
        .openapi_path()
        .split('/')
        .map(|segment| match segment.strip_prefix('{') {
            // A custom verb after the last variable stays: `/servers/{}:restart-stream`.
            Some(variable) => format!(
                "{{}}{}",
                variable.split_once('}').map_or("", |(_, verb)| verb)
            ),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(constraints: Constraints) -> Api {
        Api {
            descriptor_set: crate::proto::FILE_DESCRIPTOR_SET,
            title: "example",
            version: "1",
            bearer: "A key.",
            constraints,
        }
    }

    #[test]
    fn every_constraint_names_a_field_or_message_and_lands_in_the_document() {
        let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let constraints = crate::domain::rules::json_schemas();
        for name in constraints.keys() {
            let message = descriptors.pool.get_message_by_name(name);
            let field = name.rsplit_once('.').and_then(|(message, field)| {
                descriptors
                    .pool
                    .get_message_by_name(message)?
                    .get_field_by_name(field)
            });
            assert!(
                message.is_some() || field.is_some(),
                "{name} is neither a message nor a field"
            );
        }
        let routes = RouteTable::build(&descriptors).unwrap();
        let document = document(&descriptors, &routes, &api(constraints));
        let schemas = &document["components"]["schemas"];
        let name = &schemas["dbtrail.servers.v1.ServerInput"]["properties"]["name"];
        assert_eq!(name["maxLength"], json!(100));
        assert!(
            schemas["dbtrail.servers.v1.ServerInput"]["properties"]
                .get("server_id")
                .is_none(),
            "an identifier comes from the path"
        );
        let register = &document["paths"]["/servers"]["post"];
        let body = &register["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["allOf"][1]["required"][0], "name");
        let get = &document["paths"]["/servers/{server_id}"]["get"];
        assert_eq!(get["parameters"][0]["schema"]["format"], "uuid");
    }

    #[test]
    fn the_document_describes_every_route_and_schema() {
        let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let routes = RouteTable::build(&descriptors).unwrap();
        let document = document(&descriptors, &routes, &api(Constraints::new()));
        let paths = document["paths"].as_object().unwrap();
        let operations: usize = paths
            .values()
            .map(|methods| methods.as_object().unwrap().len())
            .sum();
        assert_eq!(operations, 25);
        assert!(paths["/webhooks/{webhook_id}"]["delete"].is_object());
        let revert = &paths["/servers/{server_id}/revert-sql"]["get"]["responses"]["200"];
        assert!(revert["content"]["text/plain"].is_object(), "{revert}");
        assert!(paths.contains_key("/servers/{server_id}"));
        assert!(paths["/servers/{server_id}:restart-stream"]["post"].is_object());
        assert!(!paths.contains_key("/servers/{server.server_id}"));
        assert!(paths["/servers/{server_id}"]["patch"].is_object());

        let server = &document["components"]["schemas"]["dbtrail.servers.v1.Server"];
        assert!(server["properties"].get("mysql_password").is_none());
        assert_eq!(
            server["properties"]["error"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(
            server["properties"]["connection_method"]["enum"],
            json!(["unspecified", "direct", "vpn", "ssh_tunnel"])
        );
        assert_eq!(
            server["properties"]["onboarding_step"]["enum"]
                .as_array()
                .unwrap()
                .last(),
            Some(&Json::Null)
        );
        let input = &document["components"]["schemas"]["dbtrail.servers.v1.ServerInput"];
        assert!(input["properties"].get("mysql_password").is_some());
        assert!(input["properties"].get("status").is_none());
        assert!(document["components"]["schemas"]["google.rpc.BadRequest"].is_object());
        assert_eq!(
            document["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
