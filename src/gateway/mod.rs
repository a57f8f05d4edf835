//! The generic REST gateway: a grpc-gateway style translation of any gRPC service whose methods
//! carry `google.api.http` rules. It reads the descriptors it is given (descriptors.rs), builds
//! the routes (routes.rs), turns an HTTP request into the request message (request.rs, json.rs),
//! calls the layered gRPC stack in process (dispatch.rs), writes the answer as JSON, NDJSON or
//! Server-Sent Events (handler.rs), maps every failure to a `google.rpc.Status` body (errors.rs)
//! and renders the OpenAPI document (openapi.rs). It names no field of any service: what it must
//! know of one (its descriptors, its request rules, the document's title) the wiring hands in.

mod bounded_json;
mod descriptors;
mod dispatch;
mod empty_strings;
mod errors;
mod handler;
mod json;
mod openapi;
mod request;
mod routes;

pub use handler::{Gateway, handle};
pub use json::MessageJson;
pub use openapi::Constraints;
pub use routes::RouteError;

/// What the gateway is told of the service it translates; nothing else of it is known here.
pub struct Api {
    /// The service's encoded `FileDescriptorSet`, imports included.
    pub descriptor_set: &'static [u8],
    /// The OpenAPI document's title.
    pub title: &'static str,
    /// The version the OpenAPI document states.
    pub version: &'static str,
    /// How a caller gets the bearer token every call needs (the security scheme's description).
    pub bearer: &'static str,
    /// The request rules the OpenAPI document states.
    pub constraints: Constraints,
}
