//! The route table, built at start-up from each RPC's `google.api.http` rule: the HTTP method,
//! the path template (`/servers/{server_id}`, `/servers/{server.server_id}`, an optional `:verb`),
//! the body mapping (`*`, a field, or none) and the query parameters that set the remaining
//! fields. A shape this layer cannot serve faithfully is refused here, naming the RPC and why,
//! rather than half-served at request time.

mod rule;
mod template;
#[cfg(test)]
mod tests;

use http::{Method, uri::PathAndQuery};
use prost_reflect::{FieldDescriptor, Kind, MethodDescriptor, Value};

use super::descriptors::{Descriptors, HTTP_RULE_EXTENSION};
use rule::{has_bindings, route_from_rule};
pub use template::{FieldPath, PathTemplate};

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

    /// The route for a request: among the templates that match the path, the most specific
    /// (a custom verb first, then literal segments before variables) decides, whatever the
    /// method; when none of those has the request's method, the path exists with theirs only.
    /// So `PATCH /servers/ID:restart-stream` is a 405, not an update of server `ID:restart-stream`.
    pub fn find(&self, method: &Method, path: &str) -> RouteMatch<'_> {
        let matching: Vec<(&Route, Vec<String>)> = self
            .routes
            .iter()
            .filter_map(|route| Some((route, route.template.matches(path)?)))
            .collect();
        let Some(best) = matching
            .iter()
            .map(|(route, _)| route.template.rank())
            .max()
        else {
            return RouteMatch::NotFound;
        };
        let mut allowed: Vec<Method> = Vec::new();
        for (route, values) in matching {
            if route.template.rank() != best {
                continue;
            }
            if route.method == *method {
                return RouteMatch::Found { route, values };
            }
            if !allowed.contains(&route.method) {
                allowed.push(route.method.clone());
            }
        }
        RouteMatch::MethodNotAllowed(allowed)
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
