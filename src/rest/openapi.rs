//! `GET /openapi.json`: an OpenAPI 3.1 document generated from the same descriptors and routes
//! the gateway serves: every route with its path and query parameters, request and response
//! schemas (response fields all required, `null` allowed exactly where the JSON writes it),
//! enum values by their JSON names, the `google.rpc.Status` error with its detail types, and the
//! bearer scheme. Descriptions come from the proto comments.

use std::collections::{BTreeMap, HashMap};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use prost_types::FileDescriptorProto;
use serde_json::{Map, Value as Json, json};

use super::{
    descriptors::{Descriptors, is_nullable, is_well_known},
    routes::{BodyMapping, Route, RouteTable},
};

const STATUS: &str = "google.rpc.Status";

/// The standard error details (google/rpc/error_details.proto): google.rpc's top-level messages
/// other than Status itself.
fn is_error_detail(message: &MessageDescriptor) -> bool {
    message.package_name() == "google.rpc"
        && message.parent_message().is_none()
        && message.full_name() != STATUS
}

/// Which way a message travels: requests omit output-only fields, responses input-only ones.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    Request,
    Response,
}

/// Builds component schemas on demand, each message once per direction.
struct Schemas<'a> {
    descriptors: &'a Descriptors,
    built: BTreeMap<String, Json>,
    pending: Vec<(MessageDescriptor, Direction)>,
}

fn schema_name(message: &MessageDescriptor, direction: Direction) -> String {
    match direction {
        Direction::Response => message.full_name().to_owned(),
        Direction::Request => format!("{}Input", message.full_name()),
    }
}

fn reference(name: &str) -> Json {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The schema that also allows `null`.
fn nullable(schema: Json) -> Json {
    let Json::Object(mut object) = schema else {
        return schema;
    };
    if object.is_empty() {
        return Json::Object(object);
    }
    match object.get("type").cloned() {
        Some(Json::String(kind)) if !object.contains_key("$ref") => {
            object.insert("type".into(), json!([kind, "null"]));
            if let Some(Json::Array(values)) = object.get_mut("enum") {
                values.push(Json::Null);
            }
            Json::Object(object)
        }
        _ => json!({ "anyOf": [Json::Object(object), { "type": "null" }] }),
    }
}

fn with_description(schema: Json, description: Option<String>) -> Json {
    match (schema, description) {
        (Json::Object(mut object), Some(description)) => {
            object.insert("description".into(), Json::String(description));
            Json::Object(object)
        }
        (schema, _) => schema,
    }
}

/// The leading comment of the element at `path` in `file`, lines trimmed.
fn comment(file: &FileDescriptorProto, path: &[i32]) -> Option<String> {
    let location = file
        .source_code_info
        .as_ref()?
        .location
        .iter()
        .find(|location| location.path == path)?;
    let text = location.leading_comments.as_deref()?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    (!lines.is_empty()).then(|| lines.join(" "))
}

fn field_comment(field: &FieldDescriptor) -> Option<String> {
    comment(field.parent_file().file_descriptor_proto(), field.path())
}

fn message_comment(message: &MessageDescriptor) -> Option<String> {
    comment(message.parent_file_descriptor_proto(), message.path())
}

/// The schema of a well-known type in its proto3 JSON form.
fn well_known_schema(message: &MessageDescriptor) -> Json {
    match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => {
            json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$" })
        }
        "google.protobuf.FieldMask" => json!({
            "type": "string",
            "description": "Comma-separated field paths, e.g. name,ssh_tunnel.host",
        }),
        "google.protobuf.Empty" => json!({ "type": "object", "additionalProperties": false }),
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "required": ["@type"],
            "properties": { "@type": { "type": "string" } },
        }),
        "google.protobuf.BoolValue" => json!({ "type": "boolean" }),
        "google.protobuf.StringValue" => json!({ "type": "string" }),
        "google.protobuf.BytesValue" => json!({ "type": "string", "contentEncoding": "base64" }),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => {
            json!({ "type": "integer" })
        }
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({ "type": "integer" })
        }
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => json!({ "type": "number" }),
        // google.protobuf.Value holds any JSON value.
        _ => json!({}),
    }
}

impl Schemas<'_> {
    /// The schema of one value of `kind`.
    fn value_schema(&mut self, kind: &Kind, direction: Direction) -> Json {
        match kind {
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({
                "type": "integer", "format": "int32",
                "minimum": i32::MIN, "maximum": i32::MAX,
            }),
            Kind::Uint32 | Kind::Fixed32 => json!({
                "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX,
            }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "integer", "format": "int64" })
            }
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "integer", "minimum": 0 }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Enum(enumeration) => {
                let names: Vec<&str> = self
                    .descriptors
                    .enum_values(enumeration)
                    .iter()
                    .map(|(_, name)| name.as_str())
                    .collect();
                json!({ "type": "string", "enum": names })
            }
            Kind::Message(message) if is_well_known(message) => well_known_schema(message),
            Kind::Message(message) => self.message_reference(message, direction),
        }
    }

    fn message_reference(&mut self, message: &MessageDescriptor, direction: Direction) -> Json {
        let name = schema_name(message, direction);
        if !self.built.contains_key(&name)
            && !self.pending.iter().any(|(queued, queued_direction)| {
                queued.full_name() == message.full_name() && *queued_direction == direction
            })
        {
            self.pending.push((message.clone(), direction));
        }
        reference(&name)
    }

    /// The schema of a field: an array for a repeated one, an object for a map, nullable where
    /// the JSON may write `null`.
    fn field_schema(&mut self, field: &FieldDescriptor, direction: Direction) -> Json {
        let kind = field.kind();
        let schema = if field.is_map() {
            let (key_kind, value_kind) = match &kind {
                Kind::Message(entry) => (
                    entry.map_entry_key_field().kind(),
                    entry.map_entry_value_field().kind(),
                ),
                other => (Kind::String, other.clone()),
            };
            let mut schema = json!({
                "type": "object",
                "additionalProperties": self.value_schema(&value_kind, direction),
            });
            let key_pattern = match key_kind {
                Kind::String => None,
                Kind::Bool => Some("^(true|false)$"),
                _ => Some("^-?[0-9]+$"),
            };
            if let (Some(pattern), Json::Object(object)) = (key_pattern, &mut schema) {
                object.insert("propertyNames".into(), json!({ "pattern": pattern }));
            }
            schema
        } else if field.is_list() {
            json!({ "type": "array", "items": self.value_schema(&kind, direction) })
        } else if is_nullable(field) {
            nullable(self.value_schema(&kind, direction))
        } else {
            self.value_schema(&kind, direction)
        };
        let mut schema = with_description(schema, field_comment(field));
        if let Json::Object(object) = &mut schema {
            if direction == Direction::Response && self.descriptors.is_output_only(field) {
                object.insert("readOnly".into(), Json::Bool(true));
            }
            if direction == Direction::Request && self.descriptors.is_input_only(field) {
                object.insert("writeOnly".into(), Json::Bool(true));
            }
        }
        schema
    }

    /// A message's object schema. Responses list every field as required (they are always
    /// written); requests leave out output-only fields and require nothing (the service says
    /// what is missing, with every field at once).
    fn message_schema(
        &mut self,
        message: &MessageDescriptor,
        direction: Direction,
        skip: &[FieldDescriptor],
    ) -> Json {
        let mut properties = Map::new();
        let mut required = Vec::new();
        if is_error_detail(message) {
            // Error details are written inside an Any: "@type" first, then the fields.
            properties.insert(
                "@type".into(),
                json!({ "const": format!("type.googleapis.com/{}", message.full_name()) }),
            );
            required.push(Json::String("@type".into()));
        }
        for field in message.fields() {
            if skip.contains(&field) {
                continue;
            }
            let written = match direction {
                Direction::Response => !self.descriptors.is_input_only(&field),
                Direction::Request => !self.descriptors.is_output_only(&field),
            };
            if !written {
                continue;
            }
            let schema = self.field_schema(&field, direction);
            properties.insert(field.name().to_owned(), schema);
            if direction == Direction::Response {
                required.push(Json::String(field.name().to_owned()));
            }
        }
        let mut schema = json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        });
        if let Json::Object(object) = &mut schema {
            if !required.is_empty() {
                object.insert("required".into(), Json::Array(required));
            }
            if let Some(description) = message_comment(message) {
                object.insert("description".into(), Json::String(description));
            }
        }
        schema
    }

    /// Builds every schema referenced so far.
    fn drain(&mut self) {
        while let Some((message, direction)) = self.pending.pop() {
            let name = schema_name(&message, direction);
            if self.built.contains_key(&name) {
                continue;
            }
            // A placeholder first, so that a recursive message refers to itself once.
            self.built.insert(name.clone(), Json::Null);
            let schema = self.message_schema(&message, direction, &[]);
            self.built.insert(name, schema);
        }
    }
}

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
    if field.is_list() {
        json!({ "type": "array", "items": schema })
    } else {
        schema
    }
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
            "schema": { "type": "string" },
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
    let result = match &route.response_body {
        Some(field) => schemas.field_schema(field, Direction::Response),
        None => schemas.message_reference(&route.rpc.output(), Direction::Response),
    };
    let mut responses = Map::new();
    if route.rpc.is_server_streaming() {
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
            "An error: google.rpc.Status with an ErrorInfo detail (reason, domain servers.dbtrail) and, for bad fields, a BadRequest. HTTP status from the gRPC code: 400 INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE; 401 UNAUTHENTICATED; 403 PERMISSION_DENIED; 404 NOT_FOUND; 409 ALREADY_EXISTS, ABORTED; 429 RESOURCE_EXHAUSTED; 499 CANCELLED; 501 UNIMPLEMENTED; 503 UNAVAILABLE; 504 DEADLINE_EXCEEDED; 500 otherwise.",
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

/// The whole document.
pub fn document(descriptors: &Descriptors, routes: &RouteTable) -> Json {
    let mut schemas = Schemas {
        descriptors,
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
            "title": "dbtrail-servers",
            "version": env!("CARGO_PKG_VERSION"),
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
                    "description": "An API key (dbt_...), from `dbtrail-servers keys create`.",
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

    #[test]
    fn the_document_describes_every_route_and_schema() {
        let descriptors = Descriptors::load().unwrap();
        let routes = RouteTable::build(&descriptors).unwrap();
        let document = document(&descriptors, &routes);
        let paths = document["paths"].as_object().unwrap();
        let operations: usize = paths
            .values()
            .map(|methods| methods.as_object().unwrap().len())
            .sum();
        assert_eq!(operations, 11);
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
