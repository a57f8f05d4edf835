//! The route table, built at start-up from each RPC's `google.api.http` rule: the HTTP method,
//! the path template (`/servers/{server_id}`, `/servers/{server.server_id}`, an optional `:verb`),
//! the body mapping (`*`, a field, or none) and the query parameters that set the remaining
//! fields. A shape this layer cannot serve faithfully is refused here, naming the RPC and why,
//! rather than half-served at request time.

use http::{Method, uri::PathAndQuery};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value,
};

use super::descriptors::{Descriptors, HTTP_RULE_EXTENSION, is_well_known, message_of};

/// Well-known types a query parameter or path variable can carry as a string.
const STRING_WELL_KNOWN_TYPES: [&str; 3] = [
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
];

/// Why the routes could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("the embedded descriptor set cannot be read: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("{rpc}: {problem}")]
    Unsupported { rpc: String, problem: String },
    #[error(
        "no RPC has a google.api.http rule: the descriptor set lost its options (build.rs must \
         embed protox's own encoding) or the protos lost their annotations"
    )]
    NoRoutes,
}

fn unsupported(rpc: &MethodDescriptor, problem: impl Into<String>) -> RouteError {
    RouteError::Unsupported {
        rpc: rpc.full_name().to_owned(),
        problem: problem.into(),
    }
}

/// A chain of fields from the request message down to one field, e.g. `server.server_id`.
#[derive(Clone, Debug)]
pub struct FieldPath {
    /// The dotted proto names.
    pub name: String,
    /// The fields, outermost first; the last is the one the path names.
    pub fields: Vec<FieldDescriptor>,
}

impl FieldPath {
    /// The field the path ends at.
    pub fn leaf(&self) -> Option<&FieldDescriptor> {
        self.fields.last()
    }

    fn resolve(message: &MessageDescriptor, name: &str) -> Result<FieldPath, String> {
        let mut fields = Vec::new();
        let mut current = message.clone();
        let parts: Vec<&str> = name.split('.').collect();
        for (index, part) in parts.iter().enumerate() {
            let field = current
                .get_field_by_name(part)
                .ok_or_else(|| format!("{} has no field {part:?} (in {name:?})", current.name()))?;
            if index + 1 < parts.len() {
                match message_of(&field) {
                    Some(next) if !field.is_list() && !field.is_map() && !is_well_known(&next) => {
                        current = next;
                    }
                    _ => return Err(format!("{part:?} in {name:?} is not a singular message")),
                }
            }
            fields.push(field);
        }
        Ok(FieldPath {
            name: name.to_owned(),
            fields,
        })
    }
}

/// One segment of a path template.
#[derive(Clone, Debug)]
enum Segment {
    Literal(String),
    /// A variable: one non-empty path segment, bound to the field path at this index of
    /// `PathTemplate::variables`.
    Variable(usize),
}

/// A parsed path template.
#[derive(Clone, Debug)]
pub struct PathTemplate {
    /// The template as the rule wrote it.
    pub text: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    /// The fields the variables bind, in order of appearance.
    pub variables: Vec<FieldPath>,
}

impl PathTemplate {
    fn parse(template: &str, request: &MessageDescriptor) -> Result<PathTemplate, String> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| format!("path template {template:?} does not start with '/'"))?;
        // A custom verb follows the last segment after a ':' that is not inside a variable.
        let last_slash = rest.rfind('/').map_or(0, |index| index + 1);
        let last_brace = rest.rfind('}').map_or(0, |index| index + 1);
        let (path, verb) = match rest[last_slash.max(last_brace)..].find(':') {
            Some(offset) => {
                let colon = last_slash.max(last_brace) + offset;
                (&rest[..colon], Some(rest[colon + 1..].to_owned()))
            }
            None => (rest, None),
        };
        if verb
            .as_deref()
            .is_some_and(|verb| verb.is_empty() || verb.contains('/'))
        {
            return Err(format!("path template {template:?} has an invalid verb"));
        }
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        for segment in split_segments(path) {
            if segment.is_empty() {
                return Err(format!("path template {template:?} has an empty segment"));
            }
            if let Some(inner) = segment.strip_prefix('{') {
                let inner = inner.strip_suffix('}').ok_or_else(|| {
                    format!(
                        "path template {template:?}: variable {segment:?} is not one whole segment"
                    )
                })?;
                let (name, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                if pattern != "*" {
                    return Err(format!(
                        "path template {template:?}: variable {{{name}={pattern}}} spans more than \
                         one segment; only {{field}} and {{field=*}} are supported"
                    ));
                }
                let field_path = FieldPath::resolve(request, name)?;
                check_scalar_leaf(&field_path)?;
                segments.push(Segment::Variable(variables.len()));
                variables.push(field_path);
            } else if segment == "*" || segment == "**" || segment.contains(['{', '}']) {
                return Err(format!(
                    "path template {template:?}: wildcard or partial segment {segment:?} is not \
                     supported; bind the segment to a field with {{field}}"
                ));
            } else {
                segments.push(Segment::Literal(segment.to_owned()));
            }
        }
        Ok(PathTemplate {
            text: template.to_owned(),
            segments,
            verb,
            variables,
        })
    }

    /// The values of the variables when `path` (as sent, percent-encoded) matches.
    fn matches(&self, path: &str) -> Option<Vec<String>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut values = vec![String::new(); self.variables.len()];
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Variable(_) if part.is_empty() => return None,
                Segment::Variable(index) => {
                    values[*index] = percent_encoding::percent_decode_str(part)
                        .decode_utf8_lossy()
                        .into_owned();
                }
            }
        }
        Some(values)
    }

    /// Literal segments rank above variables, position by position: the most specific route wins.
    fn specificity(&self) -> Vec<bool> {
        self.segments
            .iter()
            .map(|segment| matches!(segment, Segment::Literal(_)))
            .collect()
    }

    /// The template as OpenAPI writes it: `{server.server_id}` for a variable.
    pub fn openapi_path(&self) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            match segment {
                Segment::Literal(literal) => path.push_str(literal),
                Segment::Variable(index) => {
                    path.push('{');
                    path.push_str(&self.variables[*index].name);
                    path.push('}');
                }
            }
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        path
    }
}

/// The segments of a template path: split at each '/' outside a `{variable}`, so that a
/// variable with a multi-segment pattern stays whole (and is refused by name).
fn split_segments(path: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in path.char_indices() {
        match character {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => {
                segments.push(&path[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    segments.push(&path[start..]);
    segments
}

/// A path variable or query parameter must end at one scalar, enum or string-formed
/// well-known type, reached through singular messages.
fn check_scalar_leaf(path: &FieldPath) -> Result<(), String> {
    let Some(leaf) = path.leaf() else {
        return Err("an empty field path".into());
    };
    if leaf.is_list() || leaf.is_map() {
        return Err(format!("path variable {:?} is repeated", path.name));
    }
    match leaf.kind() {
        Kind::Message(message) if !STRING_WELL_KNOWN_TYPES.contains(&message.full_name()) => Err(
            format!("path variable {:?} is a message, not a scalar", path.name),
        ),
        _ => Ok(()),
    }
}

/// Where the request body goes.
#[derive(Clone, Debug)]
pub enum BodyMapping {
    /// No body: every field comes from the path and the query string.
    None,
    /// `body: "*"`: the body is the request message, less the path's fields.
    Whole,
    /// `body: "field"`: the body is that field of the request.
    Field(FieldDescriptor),
}

/// Resuming a server stream from an SSE `Last-Event-ID`: the request field it sets and the
/// response field each event's id comes from.
#[derive(Clone, Debug)]
pub struct Resume {
    pub since: Option<FieldDescriptor>,
    pub revision: FieldDescriptor,
}

/// One HTTP route of one RPC.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    pub template: PathTemplate,
    pub rpc: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: PathAndQuery,
    pub body: BodyMapping,
    /// `response_body`: the response field written instead of the whole response.
    pub response_body: Option<FieldDescriptor>,
    /// The fields the query string may set.
    pub query: Vec<FieldPath>,
    /// The request's FieldMask to derive from the body's keys when the client sends none
    /// (AIP-134 `update_mask` with a resource body).
    pub derived_update_mask: Option<FieldDescriptor>,
    /// For a create (a POST of a resource that returns it): the resource's IDENTIFIER field,
    /// which makes the answer 201 with a Location.
    pub created_identifier: Option<FieldDescriptor>,
    /// AIP-163 `validate_only`: a create that only validated answers 200 without a Location.
    pub validate_only: Option<FieldDescriptor>,
    /// For server streams with a revision: SSE ids and Last-Event-ID.
    pub resume: Option<Resume>,
}

/// What a request's method and path lead to.
pub enum RouteMatch<'a> {
    Found {
        route: &'a Route,
        /// Percent-decoded values of the template's variables.
        values: Vec<String>,
    },
    /// The path exists with these methods only.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// Every route, in the order of the services and their methods.
#[derive(Clone, Debug)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// Routes for every method that has a `google.api.http` rule; methods without one stay
    /// gRPC-only. No rule at all is refused: it means the annotations were lost on the way.
    pub fn build(descriptors: &Descriptors) -> Result<RouteTable, RouteError> {
        let Some(extension) = descriptors.pool.get_extension_by_name(HTTP_RULE_EXTENSION) else {
            return Err(RouteError::NoRoutes);
        };
        let mut routes: Vec<Route> = Vec::new();
        for service in descriptors.pool.services() {
            for rpc in service.methods() {
                let options = rpc.options();
                if !options.has_extension(&extension) {
                    continue;
                }
                let rule = options.get_extension(&extension);
                let Some(rule) = rule.as_message() else {
                    continue;
                };
                let mut rules = vec![rule.clone()];
                if let Some(Value::List(bindings)) =
                    rule.get_field_by_name("additional_bindings").as_deref()
                {
                    for binding in bindings {
                        if let Some(binding) = binding.as_message() {
                            if has_bindings(binding) {
                                return Err(unsupported(
                                    &rpc,
                                    "additional_bindings may not nest further bindings",
                                ));
                            }
                            rules.push(binding.clone());
                        }
                    }
                }
                for rule in rules {
                    let route = route_from_rule(descriptors, &rpc, &rule)?;
                    check_enum_names(descriptors, &route)?;
                    if let Some(existing) = routes.iter().find(|existing| {
                        existing.method == route.method
                            && existing.template.openapi_shape() == route.template.openapi_shape()
                    }) {
                        return Err(unsupported(
                            &rpc,
                            format!(
                                "{} {} is already the route of {}",
                                route.method,
                                route.template.text,
                                existing.rpc.full_name()
                            ),
                        ));
                    }
                    routes.push(route);
                }
            }
        }
        if routes.is_empty() {
            return Err(RouteError::NoRoutes);
        }
        Ok(RouteTable { routes })
    }

    /// The route for a request, the most specific when several templates match.
    pub fn find(&self, method: &Method, path: &str) -> RouteMatch<'_> {
        let mut best: Option<(&Route, Vec<String>)> = None;
        let mut allowed: Vec<Method> = Vec::new();
        for route in &self.routes {
            let Some(values) = route.template.matches(path) else {
                continue;
            };
            if route.method != *method {
                if !allowed.contains(&route.method) {
                    allowed.push(route.method.clone());
                }
                continue;
            }
            let better = best.as_ref().is_none_or(|(current, _)| {
                route.template.specificity() > current.template.specificity()
            });
            if better {
                best = Some((route, values));
            }
        }
        match best {
            Some((route, values)) => RouteMatch::Found { route, values },
            None if !allowed.is_empty() => RouteMatch::MethodNotAllowed(allowed),
            None => RouteMatch::NotFound,
        }
    }
}

impl PathTemplate {
    /// The template with variable names erased: two routes with the same shape would be
    /// ambiguous.
    fn openapi_shape(&self) -> (Vec<Option<&str>>, Option<&str>) {
        (
            self.segments
                .iter()
                .map(|segment| match segment {
                    Segment::Literal(literal) => Some(literal.as_str()),
                    Segment::Variable(_) => None,
                })
                .collect(),
            self.verb.as_deref(),
        )
    }
}

/// Enum values are read back by their JSON names, so two values of one enum must not share one.
fn check_enum_names(descriptors: &Descriptors, route: &Route) -> Result<(), RouteError> {
    let mut pending = vec![route.rpc.input(), route.rpc.output()];
    let mut seen = std::collections::HashSet::new();
    while let Some(message) = pending.pop() {
        if !seen.insert(message.full_name().to_owned()) {
            continue;
        }
        for field in message.fields() {
            match field.kind() {
                Kind::Message(nested) => pending.push(nested),
                Kind::Enum(enumeration) => {
                    if let Some((first, second)) = descriptors.enum_name_clash(&enumeration) {
                        return Err(RouteError::Unsupported {
                            rpc: route.rpc.full_name().to_owned(),
                            problem: format!(
                                "enum {} has two values with the same JSON name: {first} and {second}",
                                enumeration.full_name()
                            ),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn has_bindings(rule: &DynamicMessage) -> bool {
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

fn route_from_rule(
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

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;

    use super::*;
    use crate::rest::request::{HttpParts, build_request};

    /// The routes of `example.proto` (with this repository's google/api protos), or why not.
    fn routes_of(body: &str) -> Result<RouteTable, RouteError> {
        let source = format!(
            "syntax = \"proto3\";\npackage example.v1;\n\
             import \"google/api/annotations.proto\";\n\
             import \"google/api/field_behavior.proto\";\n\
             import \"google/protobuf/timestamp.proto\";\n{body}"
        );
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("example.proto"), source).unwrap();
        let repository_protos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
        let mut compiler = protox::Compiler::new([directory.path(), &repository_protos]).unwrap();
        compiler
            .include_imports(true)
            .open_files(["example.proto"])
            .unwrap();
        let pool =
            DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).unwrap();
        RouteTable::build(&Descriptors::from_pool(pool))
    }

    fn refusal(body: &str) -> String {
        match routes_of(body) {
            Ok(table) => panic!("accepted: {table:?}"),
            Err(error) => error.to_string(),
        }
    }

    const MESSAGES: &str = "
        message Shelf { string id = 1 [(google.api.field_behavior) = IDENTIFIER]; string theme = 2; }
        message Filter {
          enum Cover { COVER_UNSPECIFIED = 0; COVER_HARD = 1; COVER_PAPER = 2; }
          repeated string authors = 1;
          Cover cover = 2;
          google.protobuf.Timestamp after = 3;
        }
        message ListBooksRequest { Filter filter = 1; int32 page_size = 2; }
        message PauseShelfRequest { string id = 1; bool notify = 2; }
        message CreateShelfRequest { Shelf shelf = 1; }
        message TaggedRequest { map<string, string> tags = 1; }
    ";

    #[test]
    fn a_new_annotated_rpc_gets_its_routes_with_no_new_code() {
        let table = routes_of(&format!(
            "service Shelves {{
               rpc PauseShelf(PauseShelfRequest) returns (Shelf) {{
                 option (google.api.http) = {{
                   post: \"/v1/shelves/{{id}}:pause\" body: \"*\"
                   additional_bindings {{ post: \"/v1/paused-shelves/{{id}}\" body: \"*\" }}
                 }};
               }}
               rpc ListBooks(ListBooksRequest) returns (Shelf) {{
                 option (google.api.http) = {{ get: \"/v1/books\" }};
               }}
               rpc CreateShelf(CreateShelfRequest) returns (Shelf) {{
                 option (google.api.http) = {{ post: \"/v1/shelves\" body: \"shelf\" }};
               }}
               rpc Internal(Shelf) returns (Shelf);
             }}
             {MESSAGES}"
        ))
        .unwrap();
        let routes: Vec<(String, String)> = table
            .routes
            .iter()
            .map(|route| (route.method.to_string(), route.template.openapi_path()))
            .collect();
        assert_eq!(
            routes,
            [
                ("POST".to_owned(), "/v1/shelves/{id}:pause".to_owned()),
                ("POST".to_owned(), "/v1/paused-shelves/{id}".to_owned()),
                ("GET".to_owned(), "/v1/books".to_owned()),
                ("POST".to_owned(), "/v1/shelves".to_owned()),
            ]
        );
        match table.find(&Method::POST, "/v1/shelves/s-1:pause") {
            RouteMatch::Found { route, values } => {
                assert_eq!(route.rpc.name(), "PauseShelf");
                assert_eq!(values, ["s-1"]);
            }
            _ => panic!("no route for the custom verb"),
        }
        let create = &table.routes[3];
        assert_eq!(
            create
                .created_identifier
                .as_ref()
                .map(FieldDescriptor::name),
            Some("id")
        );

        // Nested, repeated, enum and well-known query parameters, by their dotted names.
        let list = &table.routes[2];
        let names: Vec<&str> = list
            .query
            .iter()
            .map(|parameter| parameter.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "filter.authors",
                "filter.cover",
                "filter.after",
                "page_size"
            ]
        );
        let descriptors = Descriptors::from_pool(list.rpc.parent_pool().clone());
        let message = build_request(
            &descriptors,
            list,
            HttpParts {
                path_values: vec![],
                query: Some(
                    "filter.authors=le%20guin&filter.authors=banks&filter.cover=paper\
                     &filter.after=2024-01-02T03:04:05Z&page_size=3",
                ),
                body: None,
                last_event_id: None,
            },
        )
        .unwrap();
        let json = crate::rest::json::message_to_json(&descriptors, &message).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "filter": {"authors": ["le guin", "banks"], "cover": "paper",
                           "after": "2024-01-02T03:04:05Z"},
                "page_size": 3,
            })
        );
    }

    #[test]
    fn shapes_that_cannot_be_served_are_refused_at_start_up() {
        let service = |rpc: &str| format!("service Shelves {{ {rpc} }} {MESSAGES}");
        let cases = [
            (
                "rpc A(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/{id=shelves/*}\" }; }",
                "spans more than one segment",
            ),
            (
                "rpc A(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/{id}\" body: \"*\" }; }",
                "cannot take a body",
            ),
            (
                "rpc A(TaggedRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/tagged\" }; }",
                "\"tags\" is set by neither the path nor the body",
            ),
            (
                "rpc A(stream PauseShelfRequest) returns (Shelf) { option (google.api.http) = { post: \"/v1/a\" body: \"*\" }; }",
                "client-streaming",
            ),
            (
                "rpc A(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/{colour}\" }; }",
                "has no field \"colour\"",
            ),
            (
                "rpc A(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { post: \"/v1/a\" body: \"notify\" }; }",
                "must be a singular message field",
            ),
            (
                "rpc A(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/{id}\" }; }
                 rpc B(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/{id}\" }; }",
                "is already the route of example.v1.Shelves.A",
            ),
        ];
        for (rpc, expected) in cases {
            let message = refusal(&service(rpc));
            assert!(message.contains(expected), "{rpc}: {message}");
            assert!(message.starts_with("example.v1.Shelves."), "{message}");
        }
        assert!(
            refusal(&service("rpc A(PauseShelfRequest) returns (Shelf);")).contains("no RPC has")
        );
        let clash = refusal(
            "service Shelves {
               rpc A(Painted) returns (Painted) { option (google.api.http) = { get: \"/v1/painted\" }; }
             }
             enum Colour { COLOUR_UNSPECIFIED = 0; COLOUR_RED = 1; RED = 2; }
             message Painted { Colour colour = 1; }",
        );
        assert!(clash.contains("COLOUR_RED and RED"), "{clash}");
    }

    fn table() -> RouteTable {
        RouteTable::build(&Descriptors::load().unwrap()).unwrap()
    }

    #[test]
    fn every_annotated_rpc_has_its_route() {
        let table = table();
        let routes: Vec<(String, String, &str)> = table
            .routes
            .iter()
            .map(|route| {
                (
                    route.method.to_string(),
                    route.template.text.clone(),
                    route.rpc.name(),
                )
            })
            .collect();
        assert_eq!(routes.len(), 11);
        assert!(routes.contains(&(
            "PATCH".into(),
            "/servers/{server.server_id}".into(),
            "UpdateServer"
        )));
        let register = table
            .routes
            .iter()
            .find(|route| route.rpc.name() == "RegisterServer")
            .unwrap();
        assert_eq!(
            register
                .created_identifier
                .as_ref()
                .map(FieldDescriptor::name),
            Some("server_id")
        );
        let query: Vec<&str> = register
            .query
            .iter()
            .map(|parameter| parameter.name.as_str())
            .collect();
        assert_eq!(query, ["request_id", "validate_only"]);
        let update = table
            .routes
            .iter()
            .find(|route| route.rpc.name() == "UpdateServer")
            .unwrap();
        assert!(update.derived_update_mask.is_some());
        assert!(update.created_identifier.is_none());
        let watch = table
            .routes
            .iter()
            .find(|route| route.rpc.name() == "WatchOnboarding")
            .unwrap();
        assert!(
            watch
                .resume
                .as_ref()
                .is_some_and(|resume| resume.since.is_some())
        );
    }

    #[test]
    fn paths_find_the_most_specific_route_and_methods_are_told_apart() {
        let table = table();
        match table.find(&Method::GET, "/servers/abc%2Fdef/onboarding-status") {
            RouteMatch::Found { route, values } => {
                assert_eq!(route.rpc.name(), "GetOnboardingStatus");
                assert_eq!(values, ["abc/def"]);
            }
            _ => panic!("no route"),
        }
        match table.find(&Method::PUT, "/servers/x") {
            RouteMatch::MethodNotAllowed(allowed) => {
                assert_eq!(allowed, [Method::GET, Method::PATCH, Method::DELETE]);
            }
            _ => panic!("expected 405"),
        }
        assert!(matches!(
            table.find(&Method::GET, "/servers/"),
            RouteMatch::NotFound
        ));
        assert!(matches!(
            table.find(&Method::GET, "/nothing"),
            RouteMatch::NotFound
        ));
    }

    #[test]
    fn templates_parse_verbs_and_refuse_what_they_cannot_serve() {
        let descriptors = Descriptors::load().unwrap();
        let request = descriptors
            .pool
            .get_message_by_name("dbtrail.servers.v1.GetServerRequest")
            .unwrap();
        let template = PathTemplate::parse("/servers/{server_id=*}:pause", &request).unwrap();
        assert_eq!(template.openapi_path(), "/servers/{server_id}:pause");
        assert_eq!(
            template.matches("/servers/a:b:pause"),
            Some(vec!["a:b".to_owned()])
        );
        assert_eq!(template.matches("/servers/a"), None);
        for bad in [
            "servers",
            "/servers/{server_id=servers/*}",
            "/servers/**",
            "/servers/{colour}",
            "/servers//x",
        ] {
            assert!(PathTemplate::parse(bad, &request).is_err(), "{bad}");
        }
    }
}
