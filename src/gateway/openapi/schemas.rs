//! JSON Schemas of the messages, by direction: request schemas leave output-only fields out and
//! carry the request rules handed in; response schemas require every field and allow `null`
//! exactly where the JSON writes it. Well-known types, enums and comments are rendered here.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use prost_types::FileDescriptorProto;
use serde_json::{Map, Value as Json, json};

use crate::gateway::descriptors::{Descriptors, is_nullable, is_well_known};

pub(super) const STATUS: &str = "google.rpc.Status";

/// JSON Schema keywords that requests must follow, by the proto full name of the field (or, for
/// rules across fields, the message) they constrain. A message-typed field's keywords apply to
/// the message as that field carries it (e.g. which of its fields that request requires).
pub type Constraints = BTreeMap<String, Map<String, Json>>;

/// `keywords` merged into `schema`: objects key by key, anything else replaced. A reference (or
/// a nullable one) is kept whole beside them, under `allOf`.
fn constrain(schema: Json, keywords: Option<&Map<String, Json>>) -> Json {
    let Some(keywords) = keywords.filter(|keywords| !keywords.is_empty()) else {
        return schema;
    };
    match schema {
        Json::Object(object) if !object.contains_key("$ref") && !object.contains_key("anyOf") => {
            Json::Object(merge(object, keywords))
        }
        other => {
            let description = other.get("description").cloned();
            let mut wrapped = json!({ "allOf": [other, Json::Object(keywords.clone())] });
            if let (Some(description), Json::Object(object)) = (description, &mut wrapped) {
                object.insert("description".into(), description);
            }
            wrapped
        }
    }
}

fn merge(mut object: Map<String, Json>, keywords: &Map<String, Json>) -> Map<String, Json> {
    for (key, value) in keywords {
        let merged = match (object.remove(key), value) {
            (Some(Json::Object(inner)), Json::Object(more)) => Json::Object(merge(inner, more)),
            (_, value) => value.clone(),
        };
        object.insert(key.clone(), merged);
    }
    object
}

/// The standard error details (google/rpc/error_details.proto): google.rpc's top-level messages
/// other than Status itself.
pub(super) fn is_error_detail(message: &MessageDescriptor) -> bool {
    message.package_name() == "google.rpc"
        && message.parent_message().is_none()
        && message.full_name() != STATUS
}

/// Which way a message travels: requests omit output-only fields, responses input-only ones.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Direction {
    Request,
    Response,
}

/// Builds component schemas on demand, each message once per direction.
pub(super) struct Schemas<'a> {
    pub(super) descriptors: &'a Descriptors,
    pub(super) constraints: &'a Constraints,
    pub(super) built: BTreeMap<String, Json>,
    pub(super) pending: Vec<(MessageDescriptor, Direction)>,
}

fn schema_name(message: &MessageDescriptor, direction: Direction) -> String {
    match direction {
        Direction::Response => message.full_name().to_owned(),
        Direction::Request => format!("{}Input", message.full_name()),
    }
}

pub(super) fn reference(name: &str) -> Json {
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
pub(super) fn comment(file: &FileDescriptorProto, path: &[i32]) -> Option<String> {
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

pub(super) fn field_comment(field: &FieldDescriptor) -> Option<String> {
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
    pub(super) fn value_schema(&mut self, kind: &Kind, direction: Direction) -> Json {
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

    pub(super) fn message_reference(
        &mut self,
        message: &MessageDescriptor,
        direction: Direction,
    ) -> Json {
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
    pub(super) fn field_schema(&mut self, field: &FieldDescriptor, direction: Direction) -> Json {
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
        if direction == Direction::Request {
            schema = self.constrained(schema, field.full_name());
        }
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

    /// `schema` under the request constraints of `name`.
    pub(super) fn constrained(&self, schema: Json, name: &str) -> Json {
        constrain(schema, self.constraints.get(name))
    }

    /// A message's object schema. Responses list every field as required (they are always
    /// written); requests leave out output-only fields and require nothing (the service says
    /// what is missing, with every field at once).
    pub(super) fn message_schema(
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
            // A request's identifiers come from its path, never from a body.
            let written = match direction {
                Direction::Response => !self.descriptors.is_input_only(&field),
                Direction::Request => {
                    !self.descriptors.is_output_only(&field)
                        && !self.descriptors.is_identifier(&field)
                }
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
        if direction == Direction::Request {
            schema = self.constrained(schema, message.full_name());
        }
        schema
    }

    /// Builds every schema referenced so far.
    pub(super) fn drain(&mut self) {
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
