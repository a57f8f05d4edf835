//! JSON <-> protobuf for the REST layer, driven by the descriptors (api.md §5): proto field names,
//! enum values in lower case without their prefix, every field present in a response (`null` when
//! it has no value), input-only fields never written, unknown or ill-typed input reported per field.
//! Well-known types (Timestamp, Duration, ...) keep their canonical proto3 JSON forms, which
//! prost-reflect writes and reads; FieldMask paths stay in snake_case like every other name here.

use base64::{Engine, engine::general_purpose};
use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, SerializeOptions, Value,
};
use serde_json::{Map, Number, Value as Json};

use super::descriptors::{Descriptors, is_nullable, is_well_known};
use crate::domain::Violations;

/// The types that carry arbitrary JSON (a row's images).
const DYNAMIC_JSON: [&str; 3] = [
    "google.protobuf.Struct",
    "google.protobuf.ListValue",
    "google.protobuf.Value",
];
const FIELD_MASK: &str = "google.protobuf.FieldMask";
const ANY: &str = "google.protobuf.Any";

/// Why a message could not be written as JSON.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {message} as JSON: {cause}")]
pub struct OutputError {
    message: String,
    cause: String,
}

/// A message as response JSON.
pub fn message_to_json(
    descriptors: &Descriptors,
    message: &DynamicMessage,
) -> Result<Json, OutputError> {
    let descriptor = message.descriptor();
    if is_well_known(&descriptor) {
        return well_known_to_json(descriptors, message);
    }
    let mut object = Map::new();
    for field in descriptor.fields() {
        if descriptors.is_input_only(&field) {
            continue;
        }
        let json = if is_nullable(&field) && !message.has_field(&field) {
            Json::Null
        } else {
            field_to_json(descriptors, &field, &message.get_field(&field))?
        };
        object.insert(field.name().to_owned(), json);
    }
    Ok(Json::Object(object))
}

fn field_to_json(
    descriptors: &Descriptors,
    field: &FieldDescriptor,
    value: &Value,
) -> Result<Json, OutputError> {
    let kind = field.kind();
    match value {
        Value::List(items) => items
            .iter()
            .map(|item| value_to_json(descriptors, &kind, item))
            .collect::<Result<Vec<_>, _>>()
            .map(Json::Array),
        Value::Map(entries) => {
            let value_kind = match &kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            let mut object = Map::new();
            for (key, value) in entries {
                object.insert(
                    map_key_to_string(key),
                    value_to_json(descriptors, &value_kind, value)?,
                );
            }
            Ok(Json::Object(object))
        }
        value => value_to_json(descriptors, &kind, value),
    }
}

fn map_key_to_string(key: &MapKey) -> String {
    match key {
        MapKey::Bool(value) => value.to_string(),
        MapKey::I32(value) => value.to_string(),
        MapKey::I64(value) => value.to_string(),
        MapKey::U32(value) => value.to_string(),
        MapKey::U64(value) => value.to_string(),
        MapKey::String(value) => value.clone(),
    }
}

fn float_to_json(value: f64) -> Json {
    // proto3 JSON writes the values JSON numbers cannot hold as strings.
    match Number::from_f64(value) {
        Some(number) => Json::Number(number),
        None if value.is_nan() => Json::String("NaN".into()),
        None if value > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
    }
}

fn value_to_json(
    descriptors: &Descriptors,
    kind: &Kind,
    value: &Value,
) -> Result<Json, OutputError> {
    Ok(match value {
        Value::Bool(value) => Json::Bool(*value),
        Value::I32(value) => Json::from(*value),
        Value::I64(value) => Json::from(*value),
        Value::U32(value) => Json::from(*value),
        Value::U64(value) => Json::from(*value),
        Value::F32(value) => float_to_json(f64::from(*value)),
        Value::F64(value) => float_to_json(*value),
        Value::String(value) => Json::String(value.clone()),
        Value::Bytes(value) => Json::String(general_purpose::STANDARD.encode(value)),
        Value::EnumNumber(number) => match kind {
            Kind::Enum(enumeration) => match descriptors.enum_name(enumeration, *number) {
                Some(name) => Json::String(name.to_owned()),
                // A number this build does not know (a newer peer): the number is all there is.
                None => Json::from(*number),
            },
            _ => Json::from(*number),
        },
        Value::Message(message) => message_to_json(descriptors, message)?,
        Value::List(_) | Value::Map(_) => {
            return Err(OutputError {
                message: "a nested list or map".into(),
                cause: "lists and maps only exist as fields".into(),
            });
        }
    })
}

/// Well-known types in their proto3 JSON forms; Any unpacks its message with this module's rules.
fn well_known_to_json(
    descriptors: &Descriptors,
    message: &DynamicMessage,
) -> Result<Json, OutputError> {
    let descriptor = message.descriptor();
    match descriptor.full_name() {
        FIELD_MASK => {
            let paths = message
                .get_field_by_name("paths")
                .and_then(|paths| {
                    paths.as_list().map(|paths| {
                        paths
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                })
                .unwrap_or_default();
            Ok(Json::String(paths))
        }
        ANY => any_to_json(descriptors, message),
        name => {
            let options = SerializeOptions::new()
                .use_proto_field_name(true)
                .skip_default_fields(false)
                .stringify_64_bit_integers(false);
            let mut json = message
                .serialize_with_options(serde_json::value::Serializer, &options)
                .map_err(|error| OutputError {
                    message: name.to_owned(),
                    cause: error.to_string(),
                })?;
            if DYNAMIC_JSON.contains(&name) {
                whole_numbers(&mut json);
            }
            Ok(json)
        }
    }
}

/// `{"@type": URL, ...the packed message's fields}`, or `{"@type": URL, "value": ...}` when the
/// packed message has a JSON form of its own or its type is not known here.
fn any_to_json(descriptors: &Descriptors, any: &DynamicMessage) -> Result<Json, OutputError> {
    let type_url = any
        .get_field_by_name("type_url")
        .and_then(|url| url.as_str().map(str::to_owned))
        .unwrap_or_default();
    let bytes = any
        .get_field_by_name("value")
        .and_then(|value| value.as_bytes().cloned())
        .unwrap_or_default();
    let type_name = type_url.rsplit('/').next().unwrap_or_default();
    let packed = descriptors
        .pool
        .get_message_by_name(type_name)
        .and_then(|descriptor| DynamicMessage::decode(descriptor, bytes.clone()).ok());
    let mut object = Map::new();
    object.insert("@type".into(), Json::String(type_url.clone()));
    match packed {
        Some(packed) if !is_well_known(&packed.descriptor()) => {
            if let Json::Object(fields) = message_to_json(descriptors, &packed)? {
                object.extend(fields);
            }
        }
        Some(packed) => {
            object.insert("value".into(), message_to_json(descriptors, &packed)?);
        }
        None => {
            object.insert(
                "value".into(),
                Json::String(general_purpose::STANDARD.encode(&bytes)),
            );
        }
    }
    Ok(Json::Object(object))
}

/// Builds a message from request JSON, recording every problem under its field path (`prefix`
/// names where `object` sits in the request, e.g. `server.`). Fields that cannot be read are
/// left unset; the caller refuses the request when anything was recorded.
pub fn message_from_json(
    descriptors: &Descriptors,
    descriptor: &MessageDescriptor,
    object: &Map<String, Json>,
    prefix: &str,
    violations: &mut Violations,
) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    let mut oneofs_seen: Vec<(String, String)> = Vec::new();
    for (key, json) in object {
        let path = format!("{prefix}{key}");
        let Some(field) = descriptor.get_field_by_name(key) else {
            violations.add(path, format!("is not a field of {}", descriptor.name()));
            continue;
        };
        if json.is_null() {
            if !is_nullable(&field) {
                violations.add(path, "cannot be null");
            }
            continue;
        }
        if let Some(oneof) = field
            .containing_oneof()
            .filter(|oneof| !oneof.is_synthetic())
        {
            if let Some((_, other)) = oneofs_seen.iter().find(|(name, _)| name == oneof.name()) {
                violations.add(
                    path,
                    format!(
                        "cannot be set together with {other} (one of {})",
                        oneof.name()
                    ),
                );
                continue;
            }
            oneofs_seen.push((oneof.name().to_owned(), key.clone()));
        }
        if let Some(value) = field_from_json(descriptors, &field, json, &path, violations) {
            message.set_field(&field, value);
        }
    }
    message
}

fn field_from_json(
    descriptors: &Descriptors,
    field: &FieldDescriptor,
    json: &Json,
    path: &str,
    violations: &mut Violations,
) -> Option<Value> {
    let kind = field.kind();
    if field.is_map() {
        let Kind::Message(entry) = &kind else {
            return None;
        };
        let Json::Object(entries) = json else {
            violations.add(path, "must be a JSON object");
            return None;
        };
        let key_kind = entry.map_entry_key_field().kind();
        let value_kind = entry.map_entry_value_field().kind();
        let mut map = std::collections::HashMap::new();
        for (key, value) in entries {
            let entry_path = format!("{path}[{key:?}]");
            let key = map_key_from_string(&key_kind, key);
            let value = value_from_json(descriptors, &value_kind, value, &entry_path, violations);
            match (key, value) {
                (Some(key), Some(value)) => {
                    map.insert(key, value);
                }
                (None, _) => violations.add(entry_path, "is not a valid key"),
                (Some(_), None) => {}
            }
        }
        return Some(Value::Map(map));
    }
    if field.is_list() {
        let Json::Array(items) = json else {
            violations.add(path, "must be a JSON array");
            return None;
        };
        let values: Vec<Value> = items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| {
                value_from_json(
                    descriptors,
                    &kind,
                    item,
                    &format!("{path}[{index}]"),
                    violations,
                )
            })
            .collect();
        return Some(Value::List(values));
    }
    value_from_json(descriptors, &kind, json, path, violations)
}

fn map_key_from_string(kind: &Kind, key: &str) -> Option<MapKey> {
    Some(match kind {
        Kind::String => MapKey::String(key.to_owned()),
        Kind::Bool => MapKey::Bool(key.parse().ok()?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(key.parse().ok()?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(key.parse().ok()?),
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(key.parse().ok()?),
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(key.parse().ok()?),
        _ => return None,
    })
}

/// An integer from a JSON number with no fractional part (JSON Schema's "integer").
fn integer(json: &Json) -> Option<i128> {
    let number = json.as_number()?;
    if let Some(value) = number.as_i64() {
        return Some(i128::from(value));
    }
    if let Some(value) = number.as_u64() {
        return Some(i128::from(value));
    }
    let value = number.as_f64()?;
    // Beyond 2^63 a float cannot be told apart from its neighbours: refuse it rather than round.
    (value.fract() == 0.0 && value.abs() < 9.2e18).then_some(value as i128)
}

fn integer_in<T: TryFrom<i128>>(json: &Json, range: &str) -> Result<T, String> {
    integer(json)
        .and_then(|value| T::try_from(value).ok())
        .ok_or_else(|| format!("must be an integer {range}"))
}

fn value_from_json(
    descriptors: &Descriptors,
    kind: &Kind,
    json: &Json,
    path: &str,
    violations: &mut Violations,
) -> Option<Value> {
    if json.is_null() {
        violations.add(path, "cannot be null");
        return None;
    }
    let value = match kind {
        Kind::Message(message) if message.full_name() != FIELD_MASK && !is_well_known(message) => {
            let Json::Object(object) = json else {
                violations.add(
                    path,
                    format!("must be a JSON object (a {})", message.name()),
                );
                return None;
            };
            let nested = &format!("{path}.");
            let message = message_from_json(descriptors, message, object, nested, violations);
            return Some(Value::Message(message));
        }
        Kind::Message(message) => special_message_from_json(message, json),
        Kind::Enum(enumeration) => enum_from_json(descriptors, enumeration, json),
        kind => scalar_from_json(kind, json),
    };
    value.map_err(|problem| violations.add(path, problem)).ok()
}

/// A scalar in proto3 JSON: integers as numbers or strings, bytes as base64 of any alphabet.
fn scalar_from_json(kind: &Kind, json: &Json) -> Result<Value, String> {
    const INT32: &str = "from -2147483648 to 2147483647";
    const UINT32: &str = "from 0 to 4294967295";
    const INT64: &str = "from -9223372036854775808 to 9223372036854775807";
    const UINT64: &str = "from 0 to 18446744073709551615";
    match kind {
        Kind::Bool => json
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| "must be true or false".to_owned()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => integer_in(json, INT32).map(Value::I32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => integer_in(json, INT64).map(Value::I64),
        Kind::Uint32 | Kind::Fixed32 => integer_in(json, UINT32).map(Value::U32),
        Kind::Uint64 | Kind::Fixed64 => integer_in(json, UINT64).map(Value::U64),
        Kind::Float => json
            .as_f64()
            .map(|value| Value::F32(value as f32))
            .ok_or_else(|| "must be a number".to_owned()),
        Kind::Double => json
            .as_f64()
            .map(Value::F64)
            .ok_or_else(|| "must be a number".to_owned()),
        Kind::String => json
            .as_str()
            .map(|text| Value::String(text.to_owned()))
            .ok_or_else(|| "must be a string".to_owned()),
        Kind::Bytes => json
            .as_str()
            .and_then(|text| {
                general_purpose::STANDARD
                    .decode(text)
                    .or_else(|_| general_purpose::URL_SAFE.decode(text))
                    .or_else(|_| general_purpose::URL_SAFE_NO_PAD.decode(text))
                    .or_else(|_| general_purpose::STANDARD_NO_PAD.decode(text))
                    .ok()
            })
            .map(|bytes| Value::Bytes(bytes.into()))
            .ok_or_else(|| "must be a base64 string".to_owned()),
        Kind::Enum(_) | Kind::Message(_) => Err("is not a scalar".to_owned()),
    }
}

/// An enum value by its name.
fn enum_from_json(
    descriptors: &Descriptors,
    enumeration: &EnumDescriptor,
    json: &Json,
) -> Result<Value, String> {
    json.as_str()
        .and_then(|name| descriptors.enum_number(enumeration, name))
        .map(Value::EnumNumber)
        .ok_or_else(|| {
            let names: Vec<&str> = descriptors
                .enum_values(enumeration)
                .iter()
                .map(|(_, name)| name.as_str())
                .collect();
            format!("must be one of {}", names.join(", "))
        })
}

/// A message with its own JSON form: a FieldMask as comma-separated paths, a well-known type
/// as proto3 JSON defines it.
fn special_message_from_json(message: &MessageDescriptor, json: &Json) -> Result<Value, String> {
    if message.full_name() != FIELD_MASK {
        return DynamicMessage::deserialize(message.clone(), json.clone())
            .map(Value::Message)
            .map_err(|error| format!("is not a valid {}: {error}", message.name()));
    }
    let paths = json
        .as_str()
        .ok_or_else(|| "must be a string of comma-separated field paths".to_owned())?;
    let paths = paths
        .split(',')
        .map(str::trim)
        .filter(|path| !path.is_empty())
        .map(|path| Value::String(path.to_owned()))
        .collect();
    let mut mask = DynamicMessage::new(message.clone());
    mask.set_field_by_name("paths", Value::List(paths));
    Ok(Value::Message(mask))
}

/// Messages of one type written as response JSON outside a request, e.g. by the command line.
pub struct MessageJson {
    descriptors: Descriptors,
    message: MessageDescriptor,
}

impl MessageJson {
    /// The writer of the message type `name` (a full name) of the encoded `descriptor_set`.
    pub fn new(descriptor_set: &[u8], name: &str) -> Result<MessageJson, String> {
        let descriptors = Descriptors::load(descriptor_set).map_err(|error| error.to_string())?;
        let message = descriptors
            .pool
            .get_message_by_name(name)
            .ok_or_else(|| format!("the message {name} is not in the descriptors"))?;
        Ok(MessageJson {
            descriptors,
            message,
        })
    }

    /// `message` as response JSON.
    pub fn write(&self, message: &impl prost::Message) -> Result<Json, String> {
        let dynamic =
            DynamicMessage::decode(self.message.clone(), message.encode_to_vec().as_slice())
                .map_err(|error| error.to_string())?;
        message_to_json(&self.descriptors, &dynamic).map_err(|error| error.to_string())
    }
}

/// google.protobuf.Value's numbers are doubles; a whole one is written as an integer (`1`, not
/// `1.0`), as protojson does, so that a row's integers read back as integers.
fn whole_numbers(json: &mut Json) {
    match json {
        Json::Number(number) => {
            if let Some(value) = number.as_f64()
                && value.fract() == 0.0
                && value.abs() <= 9_007_199_254_740_991.0
            {
                *number = Number::from(value as i64);
            }
        }
        Json::Array(items) => items.iter_mut().for_each(whole_numbers),
        Json::Object(fields) => fields.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::proto;

    fn descriptors() -> Descriptors {
        Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    fn dynamic(
        descriptors: &Descriptors,
        name: &str,
        message: &impl prost::Message,
    ) -> DynamicMessage {
        let descriptor = descriptors.pool.get_message_by_name(name).unwrap();
        DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).unwrap()
    }

    #[test]
    fn responses_carry_every_field_with_nulls_and_no_secrets() {
        let descriptors = descriptors();
        let server = proto::Server {
            server_id: "id".into(),
            name: "orders".into(),
            mysql_password: "hunter2".into(),
            connection_method: proto::ConnectionMethod::SshTunnel as i32,
            ssh_tunnel: Some(proto::SshTunnel {
                host: "bastion".into(),
                private_key: "KEY".into(),
                ..Default::default()
            }),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let json = message_to_json(
            &descriptors,
            &dynamic(&descriptors, "dbtrail.servers.v1.Server", &server),
        )
        .unwrap();
        assert_eq!(json["connection_method"], "ssh_tunnel");
        assert_eq!(json["status"], "unspecified");
        assert_eq!(json["onboarding_step"], Json::Null);
        assert_eq!(json["error"], Json::Null);
        assert_eq!(json["stream_options"], Json::Null);
        assert_eq!(json["decommissioned_at"], Json::Null);
        assert_eq!(json["created_at"], "2023-11-14T22:13:20Z");
        assert_eq!(json["labels"], json!({}));
        assert_eq!(json["port"], 0);
        assert!(json.get("mysql_password").is_none());
        assert!(json["ssh_tunnel"].get("private_key").is_none());
        assert_eq!(json["ssh_tunnel"]["has_private_key"], false);
        assert!(!json.to_string().contains("hunter2"));
    }

    #[test]
    fn requests_are_read_with_lowercase_enums_and_every_problem_named() {
        let descriptors = descriptors();
        let descriptor = descriptors
            .pool
            .get_message_by_name("dbtrail.servers.v1.Server")
            .unwrap();
        let body = json!({
            "name": "orders",
            "port": 3307,
            "connection_method": "ssh_tunnel",
            "ssh_tunnel": {"host": "bastion", "port": "22", "colour": "red"},
            "stream_options": {"ssl_mode": "SSL_MODE_REQUIRED", "schemas": ["a", 1]},
            "labels": {"team": "payments"},
            "status": null,
            "nickname": "x",
        });
        let mut violations = Violations::default();
        let message = message_from_json(
            &descriptors,
            &descriptor,
            body.as_object().unwrap(),
            "server.",
            &mut violations,
        );
        let fields: Vec<&str> = violations.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "server.nickname",
                "server.ssh_tunnel.colour",
                "server.ssh_tunnel.port",
                "server.status",
                "server.stream_options.schemas[1]",
                "server.stream_options.ssl_mode",
            ]
        );
        let server = message.transcode_to::<proto::Server>().unwrap();
        assert_eq!(server.port, 3307);
        assert_eq!(
            server.connection_method,
            proto::ConnectionMethod::SshTunnel as i32
        );
        assert_eq!(
            server.labels.get("team").map(String::as_str),
            Some("payments")
        );
    }

    #[test]
    fn field_masks_and_statuses_round_trip() {
        let descriptors = descriptors();
        let descriptor = descriptors
            .pool
            .get_message_by_name("dbtrail.servers.v1.UpdateServerRequest")
            .unwrap();
        let mut violations = Violations::default();
        let message = message_from_json(
            &descriptors,
            &descriptor,
            json!({"update_mask": "name, ssh_tunnel.host"})
                .as_object()
                .unwrap(),
            "",
            &mut violations,
        );
        assert!(violations.0.is_empty());
        let request = message
            .transcode_to::<proto::UpdateServerRequest>()
            .unwrap();
        assert_eq!(
            request.update_mask.unwrap().paths,
            ["name", "ssh_tunnel.host"]
        );
        let json = message_to_json(&descriptors, &message).unwrap();
        assert_eq!(json["update_mask"], "name,ssh_tunnel.host");
        assert_eq!(json["server"], Json::Null);
    }
}
