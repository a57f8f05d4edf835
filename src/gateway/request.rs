//! Builds an RPC's request message from an HTTP request, the way its route says: the body (the
//! whole message or one field of it), the query string for the remaining fields (scalars,
//! repeated values, enums by their JSON names, nested fields with dots), the path's variables,
//! and, for a resource PATCH without `update_mask`, the mask derived from the body's keys.

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind};
use serde_json::{Map, Value as Json};

use super::{
    descriptors::{Descriptors, is_well_known, message_of},
    errors::RestError,
    json::message_from_json,
    routes::{BodyMapping, FieldPath, Route},
};
use crate::domain::Violations;

/// What the HTTP request brought, already split by the handler.
pub struct HttpParts<'a> {
    /// The percent-decoded values of the path's variables, in template order.
    pub path_values: Vec<String>,
    pub query: Option<&'a str>,
    /// The parsed JSON body, when one was sent.
    pub body: Option<Json>,
    /// An SSE client's `Last-Event-ID`.
    pub last_event_id: Option<&'a str>,
}

/// The request message for `route`, or every problem found with the HTTP request.
pub fn build_request(
    descriptors: &Descriptors,
    route: &Route,
    parts: HttpParts<'_>,
) -> Result<DynamicMessage, RestError> {
    let mut violations = Violations::default();
    let (mut root, derived_mask) = read_body(descriptors, route, parts.body)?;
    if let Some(query) = parts.query {
        read_query(route, query, &mut root, &mut violations);
    }
    if let Some(last_event_id) = parts.last_event_id {
        read_last_event_id(route, last_event_id, &mut root, &mut violations);
    }
    read_path(route, parts.path_values, &mut root, &mut violations);
    if let (Some(mask_field), Some(mask)) = (&route.derived_update_mask, derived_mask)
        && !root.contains_key(mask_field.name())
    {
        root.insert(mask_field.name().to_owned(), Json::String(mask));
    }
    let message = message_from_json(descriptors, &route.rpc.input(), &root, "", &mut violations);
    violations.into_result().map_err(RestError::Invalid)?;
    Ok(message)
}

/// The request's JSON as the body sets it, and the update mask a resource PATCH's body implies.
fn read_body(
    descriptors: &Descriptors,
    route: &Route,
    body: Option<Json>,
) -> Result<(Map<String, Json>, Option<String>), RestError> {
    match (&route.body, body) {
        (BodyMapping::None, Some(_)) => Err(RestError::MalformedBody(format!(
            "{} takes no request body; send its fields in the query string",
            route.rpc.name()
        ))),
        (BodyMapping::None, None) | (BodyMapping::Field(_), None) => Ok((Map::new(), None)),
        (BodyMapping::Whole, body) => match body.unwrap_or_else(|| Json::Object(Map::new())) {
            Json::Object(object) => Ok((object, None)),
            _ => Err(RestError::MalformedBody("it must be a JSON object".into())),
        },
        (BodyMapping::Field(field), Some(body)) => {
            let Json::Object(object) = body else {
                return Err(RestError::MalformedBody(format!(
                    "it must be a JSON object (the {})",
                    message_of(field)
                        .map(|message| message.name().to_owned())
                        .unwrap_or_default()
                )));
            };
            let derived_mask = route.derived_update_mask.as_ref().map(|_| {
                let mut paths = Vec::new();
                mask_paths(descriptors, field, &object, "", &mut paths);
                paths.join(",")
            });
            let mut root = Map::new();
            root.insert(field.name().to_owned(), Json::Object(object));
            Ok((root, derived_mask))
        }
    }
}

/// An SSE client's `Last-Event-ID` resumes a resumable stream after that revision.
fn read_last_event_id(
    route: &Route,
    last_event_id: &str,
    root: &mut Map<String, Json>,
    violations: &mut Violations,
) {
    let Some(since) = route
        .resume
        .as_ref()
        .and_then(|resume| resume.since.as_ref())
    else {
        return;
    };
    match last_event_id.trim().parse::<i64>() {
        Ok(revision) => {
            root.insert(since.name().to_owned(), Json::from(revision));
        }
        Err(_) => violations.add("Last-Event-ID", "must be a revision number"),
    }
}

/// The path's variables; a body or query value that says otherwise is a violation.
fn read_path(
    route: &Route,
    path_values: Vec<String>,
    root: &mut Map<String, Json>,
    violations: &mut Violations,
) {
    for (variable, value) in route.template.variables.iter().zip(path_values) {
        let Some(leaf) = variable.leaf() else {
            continue;
        };
        let Some(json) = scalar_from_text(leaf, &value) else {
            violations.add(
                &variable.name,
                format!("{value:?} is not a valid {}", kind_name(leaf)),
            );
            continue;
        };
        match lookup(root, variable) {
            Some(existing) if *existing != json => violations.add(
                &variable.name,
                format!("must match the URL path, which says {value:?}"),
            ),
            _ => insert(root, variable, json),
        }
    }
}

/// The update_mask paths a PATCH body implies: each key present, and inside a nested resource
/// message each of its keys (`ssh_tunnel.host`), as grpc-gateway derives them, so a PATCH changes
/// exactly what it names. The resource's identifier and etag say which version to change, not
/// what to change, and are left out.
fn mask_paths(
    descriptors: &Descriptors,
    body_field: &FieldDescriptor,
    object: &Map<String, Json>,
    prefix: &str,
    paths: &mut Vec<String>,
) {
    let message = message_of(body_field);
    for (key, value) in object {
        let field = message
            .as_ref()
            .and_then(|message| message.get_field_by_name(key));
        if prefix.is_empty()
            && (key == "etag"
                || field
                    .as_ref()
                    .is_some_and(|field| descriptors.is_identifier(field)))
        {
            continue;
        }
        let path = format!("{prefix}{key}");
        let nested = field.as_ref().filter(|field| {
            !field.is_list()
                && !field.is_map()
                && message_of(field).is_some_and(|message| !is_well_known(&message))
        });
        match (nested, value) {
            (Some(nested), Json::Object(inner)) if !inner.is_empty() => {
                mask_paths(descriptors, nested, inner, &format!("{path}."), paths);
            }
            _ => paths.push(path),
        }
    }
}

/// Why a query key sets nothing: where that field goes instead, or which keys there are.
fn unknown_parameter(route: &Route, key: &str) -> String {
    if route
        .template
        .variables
        .iter()
        .any(|variable| variable.name == key)
    {
        return "is set by the URL path".to_owned();
    }
    if !matches!(route.body, BodyMapping::None)
        && route.rpc.input().get_field_by_name(key).is_some()
    {
        return "belongs in the request body".to_owned();
    }
    let known: Vec<&str> = route
        .query
        .iter()
        .map(|parameter| parameter.name.as_str())
        .collect();
    if known.is_empty() {
        format!("is not a query parameter; {} takes none", route.rpc.name())
    } else {
        format!("is not a query parameter; use one of {}", known.join(", "))
    }
}

/// The query string's values, grouped by parameter, each set in the request's JSON.
fn read_query(
    route: &Route,
    query: &str,
    root: &mut Map<String, Json>,
    violations: &mut Violations,
) {
    let mut values: Vec<(&FieldPath, Vec<String>)> = Vec::new();
    for (key, value) in query_pairs(query) {
        let Ok(value) = value else {
            violations.add(
                key.as_str(),
                "is not UTF-8 text: its percent-encoded bytes must be UTF-8",
            );
            continue;
        };
        let Some(parameter) = route.query.iter().find(|parameter| parameter.name == key) else {
            violations.add(key.as_str(), unknown_parameter(route, &key));
            continue;
        };
        match values
            .iter_mut()
            .find(|(known, _)| known.name == parameter.name)
        {
            Some((_, list)) => list.push(value),
            None => values.push((parameter, vec![value])),
        }
    }
    for (parameter, texts) in values {
        if let Some(json) = parameter_json(parameter, &texts, violations) {
            insert(root, parameter, json);
        }
    }
}

/// The query string's pairs as `application/x-www-form-urlencoded` reads them, but strict: a
/// value whose bytes are not UTF-8 is an error rather than text with U+FFFD in it (the key,
/// which is only compared, is read leniently).
fn query_pairs(query: &str) -> Vec<(String, Result<String, ()>)> {
    let decode = |text: &str| {
        let spaced = text.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|text| text.into_owned())
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key).unwrap_or_else(|_| {
                percent_encoding::percent_decode_str(key)
                    .decode_utf8_lossy()
                    .into_owned()
            });
            (key, decode(value).map_err(|_| ()))
        })
        .collect()
}

/// One parameter's JSON: a list of its values, or its one value.
fn parameter_json(
    parameter: &FieldPath,
    texts: &[String],
    violations: &mut Violations,
) -> Option<Json> {
    let leaf = parameter.leaf()?;
    if !leaf.is_list() && texts.len() > 1 {
        violations.add(&parameter.name, "is given more than once");
        return None;
    }
    let mut items = Vec::new();
    for text in texts {
        match scalar_from_text(leaf, text) {
            Some(json) => items.push(json),
            None => violations.add(
                &parameter.name,
                format!("{text:?} is not a valid {}", kind_name(leaf)),
            ),
        }
    }
    if leaf.is_list() {
        Some(Json::Array(items))
    } else {
        items.pop()
    }
}

/// A query or path text as the JSON value of the field it sets; message-level checks (enum
/// names, integer ranges, timestamps) happen when the message is built.
fn scalar_from_text(field: &FieldDescriptor, text: &str) -> Option<Json> {
    Some(match field.kind() {
        Kind::Bool => match text {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => return None,
        },
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64 => Json::from(text.parse::<i64>().ok()?),
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => {
            Json::from(text.parse::<u64>().ok()?)
        }
        Kind::Float | Kind::Double => {
            Json::Number(serde_json::Number::from_f64(text.parse::<f64>().ok()?)?)
        }
        Kind::String | Kind::Bytes | Kind::Enum(_) | Kind::Message(_) => {
            Json::String(text.to_owned())
        }
    })
}

fn kind_name(field: &FieldDescriptor) -> String {
    match field.kind() {
        Kind::Bool => "boolean (true or false)".into(),
        Kind::Float | Kind::Double => "number".into(),
        Kind::String | Kind::Bytes => "string".into(),
        Kind::Enum(enumeration) => enumeration.name().into(),
        Kind::Message(message) => message.name().into(),
        _ => "integer".into(),
    }
}

fn lookup<'a>(root: &'a Map<String, Json>, path: &FieldPath) -> Option<&'a Json> {
    let mut current = root;
    let (leaf, parents) = path.fields.split_last()?;
    for parent in parents {
        current = current.get(parent.name())?.as_object()?;
    }
    current.get(leaf.name())
}

/// Sets `json` at the field path, creating the objects on the way; an intermediate that is
/// present but not an object is left for message building to report.
fn insert(root: &mut Map<String, Json>, path: &FieldPath, json: Json) {
    let Some((leaf, parents)) = path.fields.split_last() else {
        return;
    };
    let mut current = root;
    for parent in parents {
        let entry = current
            .entry(parent.name().to_owned())
            .or_insert_with(|| Json::Object(Map::new()));
        if entry.is_null() {
            *entry = Json::Object(Map::new());
        }
        match entry {
            Json::Object(object) => current = object,
            _ => return,
        }
    }
    current.insert(leaf.name().to_owned(), json);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{gateway::routes::RouteTable, proto};

    fn route(table: &RouteTable, rpc: &str) -> Route {
        table
            .routes
            .iter()
            .find(|route| route.rpc.name() == rpc)
            .cloned()
            .unwrap()
    }

    #[test]
    fn patch_derives_its_mask_from_the_body_and_takes_the_id_from_the_path() {
        let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let table = RouteTable::build(&descriptors).unwrap();
        let message = build_request(
            &descriptors,
            &route(&table, "UpdateServer"),
            HttpParts {
                path_values: vec!["0190-id".into()],
                query: None,
                body: Some(json!({
                    "name": "renamed",
                    "etag": "abc",
                    "ssh_tunnel": {"host": "bastion-2"},
                    "stream_options": null,
                })),
                last_event_id: None,
            },
        )
        .unwrap();
        let request = message
            .transcode_to::<proto::UpdateServerRequest>()
            .unwrap();
        assert_eq!(
            request.update_mask.unwrap().paths,
            ["name", "ssh_tunnel.host", "stream_options"]
        );
        let server = request.server.unwrap();
        assert_eq!(server.server_id, "0190-id");
        assert_eq!(server.etag, "abc");
    }

    #[test]
    fn query_parameters_are_typed_and_unknown_ones_refused() {
        let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let table = RouteTable::build(&descriptors).unwrap();
        let list = route(&table, "ListServers");
        let message = build_request(
            &descriptors,
            &list,
            HttpParts {
                path_values: vec![],
                query: Some("page_size=10&filter=status%20%3D%20active&show_decommissioned=true"),
                body: None,
                last_event_id: None,
            },
        )
        .unwrap();
        let request = message.transcode_to::<proto::ListServersRequest>().unwrap();
        assert_eq!(request.page_size, 10);
        assert_eq!(request.filter, "status = active");
        assert!(request.show_decommissioned);

        let Err(RestError::Invalid(violations)) = build_request(
            &descriptors,
            &list,
            HttpParts {
                path_values: vec![],
                query: Some("page_size=ten&colour=red&page_size=3"),
                body: None,
                last_event_id: None,
            },
        ) else {
            panic!("expected violations");
        };
        let fields: Vec<&str> = violations.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["colour", "page_size"]);
    }

    #[test]
    fn last_event_id_becomes_since_revision() {
        let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let table = RouteTable::build(&descriptors).unwrap();
        let message = build_request(
            &descriptors,
            &route(&table, "WatchOnboarding"),
            HttpParts {
                path_values: vec!["id".into()],
                query: Some("since_revision=1&follow=true"),
                body: None,
                last_event_id: Some("7"),
            },
        )
        .unwrap();
        let request = message
            .transcode_to::<proto::WatchOnboardingRequest>()
            .unwrap();
        assert_eq!(request.since_revision, Some(7));
        assert!(request.follow);
    }
}
