//! What the REST layer reads from the protobuf descriptors, once at start-up: the pool (the
//! service's protos with their imports, plus google.rpc's status and error details), each field's
//! `google.api.field_behavior`, and the JSON names of enum values.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use prost_reflect::{
    DescriptorError, DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    Value,
};

/// The method option that maps an RPC onto HTTP.
pub const HTTP_RULE_EXTENSION: &str = "google.api.http";
/// The field option that says what a field does (AIP-203).
const FIELD_BEHAVIOR_EXTENSION: &str = "google.api.field_behavior";

/// The descriptors and what was worked out from them.
#[derive(Clone)]
pub struct Descriptors {
    pub pool: DescriptorPool,
    facts: Arc<Facts>,
}

#[derive(Default)]
struct Facts {
    /// Full names of the fields marked INPUT_ONLY: never written in a response.
    input_only: HashSet<String>,
    /// Full names of the fields marked OUTPUT_ONLY: left out of request schemas.
    output_only: HashSet<String>,
    /// Full names of the fields marked IDENTIFIER: a resource's id.
    identifier: HashSet<String>,
    /// Each enum's values by full enum name, as (number, JSON name).
    enum_names: HashMap<String, Vec<(i32, String)>>,
}

impl Descriptors {
    /// The service's encoded descriptor set with google.rpc's added; files both carry are read
    /// once.
    pub fn load(descriptor_set: &[u8]) -> Result<Descriptors, DescriptorError> {
        let mut pool = DescriptorPool::decode(descriptor_set)?;
        pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
        Ok(Descriptors::from_pool(pool))
    }

    /// What the descriptors of `pool` say.
    pub fn from_pool(pool: DescriptorPool) -> Descriptors {
        let mut facts = Facts::default();
        if let Some(extension) = pool.get_extension_by_name(FIELD_BEHAVIOR_EXTENSION) {
            for message in pool.all_messages() {
                for field in message.fields() {
                    let options = field.options();
                    if !options.has_extension(&extension) {
                        continue;
                    }
                    let behaviours = options.get_extension(&extension);
                    let Some(values) = behaviours.as_list() else {
                        continue;
                    };
                    for value in values {
                        let name = match (value, extension.kind()) {
                            (Value::EnumNumber(number), Kind::Enum(behaviour)) => behaviour
                                .get_value(*number)
                                .map(|value| value.name().to_owned()),
                            _ => None,
                        };
                        let set = match name.as_deref() {
                            Some("INPUT_ONLY") => &mut facts.input_only,
                            Some("OUTPUT_ONLY") => &mut facts.output_only,
                            Some("IDENTIFIER") => &mut facts.identifier,
                            _ => continue,
                        };
                        set.insert(field.full_name().to_owned());
                    }
                }
            }
        }
        for enumeration in pool.all_enums() {
            facts.enum_names.insert(
                enumeration.full_name().to_owned(),
                enumeration
                    .values()
                    .map(|value| (value.number(), enum_json_name(&enumeration, value.name())))
                    .collect(),
            );
        }
        Descriptors {
            pool,
            facts: Arc::new(facts),
        }
    }

    /// Whether a field is marked INPUT_ONLY.
    pub fn is_input_only(&self, field: &FieldDescriptor) -> bool {
        self.facts.input_only.contains(field.full_name())
    }

    /// Whether a field is marked OUTPUT_ONLY.
    pub fn is_output_only(&self, field: &FieldDescriptor) -> bool {
        self.facts.output_only.contains(field.full_name())
    }

    /// Whether a field is marked IDENTIFIER.
    pub fn is_identifier(&self, field: &FieldDescriptor) -> bool {
        self.facts.identifier.contains(field.full_name())
    }

    /// The JSON names of an enum's values, in declaration order.
    pub fn enum_values(&self, enumeration: &EnumDescriptor) -> &[(i32, String)] {
        self.facts
            .enum_names
            .get(enumeration.full_name())
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The JSON name of an enum number, when the enum has it.
    pub fn enum_name(&self, enumeration: &EnumDescriptor, number: i32) -> Option<&str> {
        self.enum_values(enumeration)
            .iter()
            .find(|(value, _)| *value == number)
            .map(|(_, name)| name.as_str())
    }

    /// The number of an enum value given by its JSON name.
    pub fn enum_number(&self, enumeration: &EnumDescriptor, name: &str) -> Option<i32> {
        self.enum_values(enumeration)
            .iter()
            .find(|(_, value)| value == name)
            .map(|(number, _)| *number)
    }

    /// The first two values of an enum that share a JSON name, if any.
    pub fn enum_name_clash(&self, enumeration: &EnumDescriptor) -> Option<(String, String)> {
        let values = self.enum_values(enumeration);
        for (index, (number, name)) in values.iter().enumerate() {
            if let Some((other, _)) = values[index + 1..]
                .iter()
                .find(|(other, other_name)| other_name == name && other != number)
            {
                let full = |number: i32| {
                    enumeration
                        .get_value(number)
                        .map(|value| value.name().to_owned())
                        .unwrap_or_default()
                };
                return Some((full(*number), full(*other)));
            }
        }
        None
    }
}

/// Whether a message is one of protobuf's well-known types, which have JSON forms of their own.
pub fn is_well_known(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}

/// Whether a field is written as `null` when unset: singular messages and fields with explicit
/// presence (proto3 `optional`, oneof members). Scalars without presence always have a value.
pub fn is_nullable(field: &FieldDescriptor) -> bool {
    !field.is_list() && !field.is_map() && field.supports_presence()
}

/// The message a field holds, when it holds one.
pub fn message_of(field: &FieldDescriptor) -> Option<MessageDescriptor> {
    match field.kind() {
        Kind::Message(message) => Some(message),
        _ => None,
    }
}

/// An enum value's JSON name: lower case without the enum's prefix
/// (`CONNECTION_METHOD_SSH_TUNNEL` of `ConnectionMethod` is `ssh_tunnel`).
fn enum_json_name(enumeration: &EnumDescriptor, value_name: &str) -> String {
    let prefix = format!("{}_", upper_snake_case(enumeration.name()));
    value_name
        .strip_prefix(&prefix)
        .filter(|rest| !rest.is_empty())
        .unwrap_or(value_name)
        .to_ascii_lowercase()
}

/// `SslMode` as `SSL_MODE`, `HTTPRule` as `HTTP_RULE`.
fn upper_snake_case(name: &str) -> String {
    let characters: Vec<char> = name.chars().collect();
    let mut snake = String::with_capacity(name.len() + 4);
    for (index, &character) in characters.iter().enumerate() {
        if character.is_ascii_uppercase() && index > 0 {
            let previous = characters[index - 1];
            let next_is_lower = characters
                .get(index + 1)
                .is_some_and(|next| next.is_ascii_lowercase());
            if previous.is_ascii_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_ascii_uppercase() && next_is_lower)
            {
                snake.push('_');
            }
        }
        snake.push(character.to_ascii_uppercase());
    }
    snake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_prefixes_come_from_the_enum_name() {
        assert_eq!(upper_snake_case("ConnectionMethod"), "CONNECTION_METHOD");
        assert_eq!(upper_snake_case("SslMode"), "SSL_MODE");
        assert_eq!(upper_snake_case("HTTPRule"), "HTTP_RULE");
        assert_eq!(upper_snake_case("Step2Status"), "STEP2_STATUS");
    }

    #[test]
    fn the_service_protos_read_as_expected() {
        let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let server = descriptors
            .pool
            .get_message_by_name("dbtrail.servers.v1.Server")
            .unwrap();
        let field = |name: &str| server.get_field_by_name(name).unwrap();
        assert!(descriptors.is_input_only(&field("mysql_password")));
        assert!(descriptors.is_output_only(&field("status")));
        assert!(descriptors.is_identifier(&field("server_id")));
        assert!(!descriptors.is_output_only(&field("etag")));
        let method = descriptors
            .pool
            .get_enum_by_name("dbtrail.servers.v1.ConnectionMethod")
            .unwrap();
        assert_eq!(descriptors.enum_name(&method, 3), Some("ssh_tunnel"));
        assert_eq!(descriptors.enum_number(&method, "ssh_tunnel"), Some(3));
        assert_eq!(descriptors.enum_number(&method, "SSH_TUNNEL"), None);
        assert_eq!(descriptors.enum_name_clash(&method), None);
        assert!(
            descriptors
                .pool
                .get_message_by_name("google.rpc.BadRequest")
                .is_some()
        );
    }
}
