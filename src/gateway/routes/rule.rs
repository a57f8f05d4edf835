//! One `google.api.http` rule read into a route: its method and template, the body mapping,
//! the response body, what a create names in `Location`, how a stream resumes, and the query
//! parameters that set the remaining fields.

use http::{Method, uri::PathAndQuery};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value,
};

use super::{
    BodyMapping, FieldPath, PathTemplate, Resume, Route, RouteError,
    template::STRING_WELL_KNOWN_TYPES, unsupported,
};
use crate::gateway::descriptors::{Descriptors, is_well_known, message_of};

pub(super) fn has_bindings(rule: &DynamicMessage) -> bool {
    rule.get_field_by_name("additional_bindings")
        .as_deref()
        .and_then(Value::as_list)
        .is_some_and(|bindings| !bindings.is_empty())
}

fn string_field(message: &DynamicMessage, name: &str) -> String {
    message
        .get_field_by_name(name)
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The HTTP method and path template of a rule: the set member of its `pattern` oneof.
fn method_and_template(
    rpc: &MethodDescriptor,
    rule: &DynamicMessage,
) -> Result<(Method, String), RouteError> {
    for (field, method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(field) {
            return Ok((method, string_field(rule, field)));
        }
    }
    if let Some(custom) = rule
        .get_field_by_name("custom")
        .filter(|_| rule.has_field_by_name("custom"))
        .and_then(|custom| custom.as_message().cloned())
    {
        let kind = string_field(&custom, "kind");
        let method = Method::from_bytes(kind.as_bytes()).map_err(|_| {
            unsupported(
                rpc,
                format!("custom method kind {kind:?} is not an HTTP method"),
            )
        })?;
        return Ok((method, string_field(&custom, "path")));
    }
    Err(unsupported(
        rpc,
        "the google.api.http rule sets no method and path",
    ))
}

pub(super) fn route_from_rule(
    descriptors: &Descriptors,
    rpc: &MethodDescriptor,
    rule: &DynamicMessage,
) -> Result<Route, RouteError> {
    if rpc.is_client_streaming() {
        return Err(unsupported(
            rpc,
            "client-streaming RPCs have no REST mapping; call them over gRPC",
        ));
    }
    let request = rpc.input();
    let (method, template_text) = method_and_template(rpc, rule)?;
    let template = PathTemplate::parse(&template_text, &request)
        .map_err(|problem| unsupported(rpc, problem))?;
    let body = body_mapping(rpc, rule, &method, &template)?;
    let response_body = response_body(rpc, rule)?;
    let query = match &body {
        BodyMapping::Whole => Vec::new(),
        _ => query_parameters(rpc, &request, &template, &body)?,
    };
    let derived_update_mask = match &body {
        BodyMapping::Field(_) => request.get_field_by_name("update_mask").filter(|field| {
            message_of(field).is_some_and(|mask| mask.full_name() == "google.protobuf.FieldMask")
                && !field.is_list()
        }),
        _ => None,
    };
    let created_identifier = match &body {
        BodyMapping::Field(field) if method == Method::POST && response_body.is_none() => {
            created_identifier(descriptors, rpc, field)
        }
        _ => None,
    };
    let validate_only = request
        .get_field_by_name("validate_only")
        .filter(|field| matches!(field.kind(), Kind::Bool) && !field.is_list());
    let resume = resume(rpc, &query);
    let grpc_path = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name())
        .parse::<PathAndQuery>()
        .map_err(|error| unsupported(rpc, format!("no valid gRPC path: {error}")))?;
    Ok(Route {
        method,
        template,
        rpc: rpc.clone(),
        grpc_path,
        body,
        response_body,
        query,
        derived_update_mask,
        created_identifier,
        validate_only,
        resume,
    })
}

/// What the rule's `body` maps: nothing, the whole request, or one singular message field
/// that no path variable binds; GET and DELETE take none.
fn body_mapping(
    rpc: &MethodDescriptor,
    rule: &DynamicMessage,
    method: &Method,
    template: &PathTemplate,
) -> Result<BodyMapping, RouteError> {
    let request = rpc.input();
    let body = match string_field(rule, "body").as_str() {
        "" => BodyMapping::None,
        "*" => BodyMapping::Whole,
        name => {
            let field = request.get_field_by_name(name).ok_or_else(|| {
                unsupported(
                    rpc,
                    format!("body {name:?} is not a field of {}", request.name()),
                )
            })?;
            match message_of(&field) {
                Some(message)
                    if !field.is_list() && !field.is_map() && !is_well_known(&message) =>
                {
                    BodyMapping::Field(field)
                }
                _ => {
                    return Err(unsupported(
                        rpc,
                        format!("body {name:?} must be a singular message field"),
                    ));
                }
            }
        }
    };
    if !matches!(body, BodyMapping::None) && (method == Method::GET || method == Method::DELETE) {
        return Err(unsupported(
            rpc,
            format!("a {method} route cannot take a body"),
        ));
    }
    if let BodyMapping::Field(field) = &body
        && template
            .variables
            .iter()
            .any(|variable| variable.fields.first() == Some(field) && variable.fields.len() == 1)
    {
        return Err(unsupported(rpc, "the body field is also a path variable"));
    }
    Ok(body)
}

/// The response field the rule's `response_body` names, if it names one.
fn response_body(
    rpc: &MethodDescriptor,
    rule: &DynamicMessage,
) -> Result<Option<FieldDescriptor>, RouteError> {
    let response = rpc.output();
    match string_field(rule, "response_body").as_str() {
        "" => Ok(None),
        name => response.get_field_by_name(name).map(Some).ok_or_else(|| {
            unsupported(
                rpc,
                format!(
                    "response_body {name:?} is not a field of {}",
                    response.name()
                ),
            )
        }),
    }
}

/// A POST of a resource that answers that resource creates it: the resource's identifier field
/// names it in `Location`.
fn created_identifier(
    descriptors: &Descriptors,
    rpc: &MethodDescriptor,
    body: &FieldDescriptor,
) -> Option<FieldDescriptor> {
    message_of(body)
        .filter(|resource| resource.full_name() == rpc.output().full_name())
        .and_then(|resource| {
            resource.fields().find(|candidate| {
                descriptors.is_identifier(candidate)
                    && matches!(candidate.kind(), Kind::String)
                    && !candidate.is_list()
            })
        })
}

/// How a server stream resumes: its messages' integer `revision`, and the `since_revision`
/// query parameter when the request has one.
fn resume(rpc: &MethodDescriptor, query: &[FieldPath]) -> Option<Resume> {
    if !rpc.is_server_streaming() {
        return None;
    }
    let is_integer = |field: &FieldDescriptor| {
        !field.is_list()
            && matches!(
                field.kind(),
                Kind::Int64
                    | Kind::Int32
                    | Kind::Uint64
                    | Kind::Uint32
                    | Kind::Sint64
                    | Kind::Sint32
            )
    };
    rpc.output()
        .get_field_by_name("revision")
        .filter(is_integer)
        .map(|revision| Resume {
            since: query
                .iter()
                .find(|parameter| parameter.name == "since_revision")
                .and_then(|parameter| parameter.leaf().cloned())
                .filter(is_integer),
            revision,
        })
}

/// Every field the path and the body leave unset, as dotted query parameter names; a field that
/// cannot be written in a query string is refused, since no request could ever set it.
fn query_parameters(
    rpc: &MethodDescriptor,
    request: &MessageDescriptor,
    template: &PathTemplate,
    body: &BodyMapping,
) -> Result<Vec<FieldPath>, RouteError> {
    let mut walk = QueryWalk {
        rpc,
        template,
        body,
        stack: vec![request.full_name().to_owned()],
        parameters: Vec::new(),
    };
    walk.message(request, "", &[])?;
    Ok(walk.parameters)
}

/// A walk through a request message for the fields a query string may set.
struct QueryWalk<'a> {
    rpc: &'a MethodDescriptor,
    template: &'a PathTemplate,
    body: &'a BodyMapping,
    /// The messages being walked, outermost first: a field of one of them is recursive.
    stack: Vec<String>,
    parameters: Vec<FieldPath>,
}

impl QueryWalk<'_> {
    /// The fields of `message` (reached through `parents`, named from `prefix`).
    fn message(
        &mut self,
        message: &MessageDescriptor,
        prefix: &str,
        parents: &[FieldDescriptor],
    ) -> Result<(), RouteError> {
        for field in message.fields() {
            let name = format!("{prefix}{}", field.name());
            if self.set_elsewhere(&field, &name, parents) {
                continue;
            }
            let mut fields = parents.to_vec();
            fields.push(field.clone());
            match field.kind() {
                Kind::Message(nested)
                    if !field.is_list() && !field.is_map() && !is_well_known(&nested) =>
                {
                    self.nested(&nested, &name, &fields)?;
                }
                Kind::Message(nested)
                    if field.is_map()
                        || field.is_list()
                        || !STRING_WELL_KNOWN_TYPES.contains(&nested.full_name()) =>
                {
                    return Err(unsupported(
                        self.rpc,
                        format!(
                            "field {name:?} is set by neither the path nor the body and cannot be a \
                             query parameter (maps, repeated messages and {} cannot); map it into the body",
                            nested.full_name()
                        ),
                    ));
                }
                _ => self.parameters.push(FieldPath { name, fields }),
            }
        }
        Ok(())
    }

    /// Whether the body or the path sets the field already.
    fn set_elsewhere(
        &self,
        field: &FieldDescriptor,
        name: &str,
        parents: &[FieldDescriptor],
    ) -> bool {
        let is_body = parents.is_empty()
            && matches!(self.body, BodyMapping::Field(body_field) if body_field == field);
        is_body
            || self
                .template
                .variables
                .iter()
                .any(|variable| variable.name == name)
    }

    /// A nested message's fields, as `name.field`; a message inside itself is refused.
    fn nested(
        &mut self,
        nested: &MessageDescriptor,
        name: &str,
        fields: &[FieldDescriptor],
    ) -> Result<(), RouteError> {
        if self.stack.iter().any(|seen| seen == nested.full_name()) {
            return Err(unsupported(
                self.rpc,
                format!(
                    "field {name:?} is recursive and cannot be set from the query string; \
                     map it into the body"
                ),
            ));
        }
        self.stack.push(nested.full_name().to_owned());
        self.message(nested, &format!("{name}."), fields)?;
        self.stack.pop();
        Ok(())
    }
}
