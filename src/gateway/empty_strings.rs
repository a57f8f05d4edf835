//! Strings an update's JSON body sends as `""` outside its `update_mask` (AIP-134) where the
//! document's rule wants a character (`minLength` of 1 or more, or a `format`). Over gRPC an
//! empty string is an unset one; in a JSON body a key sent with `""` is a value the document
//! says is invalid, so it is refused, named by its proto path, though the call would ignore it.

use std::collections::BTreeSet;

use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value};
use serde_json::Value as Json;

use super::openapi::Constraints;

/// The full names of the string fields whose rule wants at least one character: a minimum
/// length, or a format (no format the document uses takes `""`).
pub fn non_empty_fields(constraints: &Constraints) -> BTreeSet<String> {
    constraints
        .iter()
        .filter(|(_, keywords)| {
            keywords.contains_key("format")
                || keywords
                    .get("minLength")
                    .and_then(Json::as_u64)
                    .is_some_and(|min| min > 0)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Whether requests of `message` carry an `update_mask`.
pub fn has_update_mask(message: &MessageDescriptor) -> bool {
    message.get_field_by_name("update_mask").is_some()
}

/// The paths of a request's `update_mask` (a `google.protobuf.FieldMask`), when it has one
/// and it does not name every field (`*`).
pub fn update_mask(request: &DynamicMessage) -> Option<Vec<String>> {
    let field = request.descriptor().get_field_by_name("update_mask")?;
    let Value::Message(mask) = &*request.get_field(&field) else {
        return None;
    };
    let paths_field = mask.descriptor().get_field_by_name("paths")?;
    let Value::List(paths) = &*mask.get_field(&paths_field) else {
        return None;
    };
    let paths: Vec<String> = paths
        .iter()
        .filter_map(|path| path.as_str().map(str::to_owned))
        .collect();
    (!paths.iter().any(|path| path == "*")).then_some(paths)
}

/// Whether `mask` covers the field at `path` (itself, or a message holding it).
pub fn covers(mask: &[String], path: &str) -> bool {
    mask.iter().any(|masked| {
        path == masked
            || path
                .strip_prefix(masked.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The proto paths (under `prefix`) of the strings of `json`, a `message`, sent empty though
/// `non_empty` names their field.
pub fn sent_empty(
    message: &MessageDescriptor,
    json: &Json,
    non_empty: &BTreeSet<String>,
    prefix: &str,
) -> Vec<String> {
    let mut found = Vec::new();
    walk(message, json, non_empty, prefix, &mut found);
    found
}

fn walk(
    message: &MessageDescriptor,
    json: &Json,
    non_empty: &BTreeSet<String>,
    prefix: &str,
    found: &mut Vec<String>,
) {
    let Some(object) = json.as_object() else {
        return;
    };
    for (key, value) in object {
        let Some(field) = message
            .get_field_by_json_name(key)
            .or_else(|| message.get_field_by_name(key))
        else {
            continue;
        };
        let path = format!("{prefix}{}", field.name());
        match (field.kind(), value) {
            (Kind::String, Json::String(text))
                if text.is_empty() && non_empty.contains(field.full_name()) =>
            {
                found.push(path);
            }
            (Kind::Message(inner), Json::Object(_)) if !field.is_map() && !field.is_list() => {
                walk(&inner, value, non_empty, &format!("{path}."), found);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::descriptors::Descriptors;

    #[test]
    fn empty_strings_of_non_empty_fields_are_found_by_their_proto_path() {
        let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let server = descriptors
            .pool
            .get_message_by_name("dbtrail.servers.v1.Server")
            .unwrap();
        let non_empty: BTreeSet<String> = [
            "dbtrail.servers.v1.Server.mysql_user",
            "dbtrail.servers.v1.SshTunnel.user",
        ]
        .map(str::to_owned)
        .into();
        let body = serde_json::json!({
            "mysqlUser": "",
            "name": "",
            "ssh_tunnel": {"user": "", "host": ""},
            "labels": {"": ""},
        });
        let mut found = sent_empty(&server, &body, &non_empty, "server.");
        found.sort();
        assert_eq!(found, ["server.mysql_user", "server.ssh_tunnel.user"]);
        let fine = serde_json::json!({"mysql_user": "app", "ssh_tunnel": null});
        assert!(sent_empty(&server, &fine, &non_empty, "").is_empty());
    }

    #[test]
    fn a_mask_covers_its_fields_and_theirs() {
        let mask = ["name".to_owned(), "ssh_tunnel".to_owned()];
        assert!(covers(&mask, "name"));
        assert!(covers(&mask, "ssh_tunnel.user"));
        assert!(!covers(&mask, "ssh_tunnel_x"));
        assert!(!covers(&mask, "mysql_user"));
    }
}
