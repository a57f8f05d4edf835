//! The REST gateway: matches a request to its route, reads the body, builds the request message,
//! calls the gRPC stack in process and writes the answer as JSON (201 with a Location for a
//! create), or, for a server stream, as NDJSON lines or Server-Sent Events.

use std::{convert::Infallible, sync::Arc, time::Instant};

use axum::{
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{Stream, StreamExt};
use prost_reflect::{DynamicMessage, FieldDescriptor};
use serde_json::{Value as Json, json};
use tonic::{Status, codec::Streaming};
use tower::ServiceExt;
use tracing::Instrument;

use super::{
    descriptors::Descriptors,
    dispatch::Call,
    errors::{BODY_READ_TIMEOUT, MAX_BODY_BYTES, RestError, status_to_json},
    json::message_to_json,
    openapi,
    request::{HttpParts, build_request},
    routes::{Route, RouteError, RouteMatch, RouteTable},
};
use crate::{
    auth::ClientAddress,
    grpc::{GrpcStack, InProcessService, REQUEST_ID_HEADER, client_request_id},
    telemetry,
};

/// How much of an oversized body is read (and dropped) before answering 413, so that a client
/// still sending gets the answer rather than a reset connection.
const MAX_DRAINED_BYTES: usize = 8 * MAX_BODY_BYTES;

/// What a path segment escapes: everything but RFC 3986's unreserved characters.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const NDJSON: &str = "application/x-ndjson";
const EVENT_STREAM: &str = "text/event-stream";

/// The request id of a request: the client's `x-request-id` when the service keeps it (see
/// [`client_request_id`]), or a fresh UUID.
fn request_id(headers: &HeaderMap) -> String {
    client_request_id(headers)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Serves every request no other route took: the REST translation of the annotated RPCs.
pub async fn handle(gateway: Arc<Gateway>, request: Request) -> Response {
    let started = Instant::now();
    let request_id = request_id(request.headers());
    let span = tracing::info_span!(
        "rest",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    );
    // The REST span continues the caller's trace; the call's span is its child.
    telemetry::continue_caller(
        &span,
        &format!("REST {}", request.method()),
        request.headers(),
    );
    let (rpc, outcome) = gateway.respond(request, &request_id).instrument(span).await;
    let mut response = outcome.unwrap_or_else(|error| error.into_http(&gateway.descriptors));
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    metrics::counter!(
        "dbtrail_http_requests_total",
        "rpc" => rpc.unwrap_or("unrouted").to_owned(),
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("dbtrail_http_request_seconds").record(started.elapsed().as_secs_f64());
    response
}

/// The routes, the descriptors they were built from, and the stack they call.
pub struct Gateway {
    pub(super) descriptors: Descriptors,
    pub(super) routes: RouteTable,
    service: InProcessService,
    /// The stack's layers around nothing: asks whether a caller would be admitted.
    admission: InProcessService,
    /// `GET /openapi.json`, rendered once.
    pub(super) openapi: Bytes,
}

impl Gateway {
    /// Reads the descriptors and builds every route over the stack; refuses a rule it cannot
    /// serve.
    pub fn new(stack: &GrpcStack) -> Result<Gateway, RouteError> {
        let descriptors = Descriptors::load()?;
        let routes = RouteTable::build(&descriptors)?;
        let document = openapi::document(&descriptors, &routes);
        Ok(Gateway {
            openapi: Bytes::from(document.to_string()),
            descriptors,
            routes,
            service: stack.in_process(),
            admission: stack.admission(),
        })
    }

    /// The answer to one request, with the RPC it was routed to (for the metrics).
    async fn respond(
        &self,
        request: Request,
        request_id: &str,
    ) -> (Option<&str>, Result<Response, RestError>) {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let (route, path_values) = match self.routes.find(&parts.method, &path) {
            RouteMatch::Found { route, values } => (route, values),
            RouteMatch::MethodNotAllowed(allowed) => {
                let error = RestError::MethodNotAllowed {
                    method: parts.method,
                    path,
                    allowed,
                };
                return (None, Err(error));
            }
            RouteMatch::NotFound => {
                let error = RestError::RouteNotFound {
                    method: parts.method,
                    path,
                };
                return (None, Err(error));
            }
        };
        let outcome = self
            .call(route, path_values, &parts, body, request_id)
            .await;
        (Some(route.rpc.name()), outcome)
    }

    /// Translates the request, calls the RPC and translates its answer.
    async fn call(
        &self,
        route: &Route,
        path_values: Vec<String>,
        parts: &http::request::Parts,
        body: Body,
        request_id: &str,
    ) -> Result<Response, RestError> {
        let message = match self.read_request(route, path_values, parts, body).await {
            Ok(message) => message,
            Err(error) => return Err(self.refusal(route, parts, request_id, error).await),
        };
        let validated_only = route
            .validate_only
            .as_ref()
            .is_some_and(|field| message.get_field(field).as_bool() == Some(true));
        let headers = &parts.headers;
        let call = Call {
            service: &self.service,
            path: &route.grpc_path,
            request: message,
            response: route.rpc.output(),
            headers: metadata(headers, request_id),
            client: client_address(parts),
        };
        if route.rpc.is_server_streaming() {
            let stream = call.server_streaming().await.map_err(RestError::Rpc)?;
            let wants_events = headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .any(|accept| accept.contains(EVENT_STREAM));
            return Ok(if wants_events {
                self.events(route, stream)
            } else {
                self.ndjson(route, stream)
            });
        }
        let response = call.unary().await.map_err(RestError::Rpc)?;
        let json = response_json(&self.descriptors, route, &response)?;
        let location = match &route.created_identifier {
            Some(identifier) if !validated_only => created_location(parts, &response, identifier),
            _ => None,
        };
        Ok(unary_response(json, location))
    }

    /// The RPC's request message from the HTTP request's path, query, body and headers.
    async fn read_request(
        &self,
        route: &Route,
        path_values: Vec<String>,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<DynamicMessage, RestError> {
        let headers = &parts.headers;
        let body = read_json_body(headers, body).await?;
        let last_event_id = headers
            .get("last-event-id")
            .and_then(|value| value.to_str().ok());
        let http = HttpParts {
            path_values,
            query: parts.uri.query(),
            body,
            last_event_id,
        };
        build_request(&self.descriptors, route, http)
    }

    /// A request that cannot be translated is answered as the stack answers any call first:
    /// a caller without a valid key or the permission learns that (401, 403), exactly as over
    /// gRPC, and only an admitted caller learns what is wrong with the request.
    async fn refusal(
        &self,
        route: &Route,
        parts: &http::request::Parts,
        request_id: &str,
        error: RestError,
    ) -> RestError {
        let mut probe = http::Request::new(tonic::body::Body::empty());
        *probe.uri_mut() = http::Uri::from(route.grpc_path.clone());
        *probe.method_mut() = http::Method::POST;
        *probe.headers_mut() = metadata(&parts.headers, request_id);
        if let Some(client) = client_address(parts) {
            probe.extensions_mut().insert(client);
        }
        probe.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let response = match self.admission.clone().oneshot(probe).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        match Status::from_header_map(response.headers()) {
            Some(status) if status.code() != tonic::Code::Ok => RestError::Rpc(status),
            _ => error,
        }
    }

    /// One `{"result": ...}` line per message; a failure ends the stream with `{"error": ...}`.
    fn ndjson(&self, route: &Route, stream: Streaming<DynamicMessage>) -> Response {
        let descriptors = self.descriptors.clone();
        let route = route.clone();
        let lines = items(stream).map(move |item| {
            let line = match item.and_then(|message| {
                response_json(&descriptors, &route, &message).map_err(RestError::into_status)
            }) {
                Ok(result) => json!({ "result": result }),
                Err(status) => json!({ "error": status_to_json(&descriptors, &status) }),
            };
            let mut bytes = line.to_string().into_bytes();
            bytes.push(b'\n');
            Ok::<_, Infallible>(Bytes::from(bytes))
        });
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON))],
            Body::from_stream(lines),
        )
            .into_response()
    }

    /// Server-Sent Events: each message's data with its revision as the event id, so that a
    /// reconnecting EventSource resumes with Last-Event-ID; a failure is an `error` event.
    fn events(&self, route: &Route, stream: Streaming<DynamicMessage>) -> Response {
        let descriptors = self.descriptors.clone();
        let route = route.clone();
        let events = items(stream).map(move |item| {
            let result = item.and_then(|message| {
                let revision = route
                    .resume
                    .as_ref()
                    .map(|resume| message.get_field(&resume.revision).into_owned());
                response_json(&descriptors, &route, &message)
                    .map(|json| (json, revision))
                    .map_err(RestError::into_status)
            });
            let event = match result {
                Ok((json, revision)) => {
                    let event = Event::default().data(json.to_string());
                    match revision.and_then(|revision| revision_text(&revision)) {
                        Some(id) => event.id(id),
                        None => event,
                    }
                }
                Err(status) => Event::default()
                    .event("error")
                    .data(status_to_json(&descriptors, &status).to_string()),
            };
            Ok::<_, Infallible>(event)
        });
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    }
}

/// The path of the resource a create made: the collection's path and the new identifier.
fn created_location(
    parts: &http::request::Parts,
    response: &DynamicMessage,
    identifier: &FieldDescriptor,
) -> Option<HeaderValue> {
    let id = response.get_field(identifier);
    let id = id.as_str().filter(|id| !id.is_empty())?;
    let id = percent_encoding::utf8_percent_encode(id, PATH_SEGMENT);
    let location = format!("{}/{id}", parts.uri.path().trim_end_matches('/'));
    HeaderValue::from_str(&location).ok()
}

/// A unary call's JSON answer: 201 with its Location when it created a resource, else 200.
fn unary_response(json: Json, location: Option<HeaderValue>) -> Response {
    match location {
        Some(location) => {
            let mut response = (StatusCode::CREATED, axum::Json(json)).into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        None => axum::Json(json).into_response(),
    }
}

fn revision_text(value: &prost_reflect::Value) -> Option<String> {
    match value {
        prost_reflect::Value::I64(value) => Some(value.to_string()),
        prost_reflect::Value::I32(value) => Some(value.to_string()),
        prost_reflect::Value::U64(value) => Some(value.to_string()),
        prost_reflect::Value::U32(value) => Some(value.to_string()),
        _ => None,
    }
}

/// A response message as JSON: the whole message, or its `response_body` field.
fn response_json(
    descriptors: &Descriptors,
    route: &Route,
    message: &DynamicMessage,
) -> Result<Json, RestError> {
    let json = message_to_json(descriptors, message)?;
    Ok(match &route.response_body {
        Some(field) => json.get(field.name()).cloned().unwrap_or(Json::Null),
        None => json,
    })
}

/// The messages of a stream, then its failure if it failed; nothing after a failure.
fn items(
    stream: Streaming<DynamicMessage>,
) -> impl Stream<Item = Result<DynamicMessage, Status>> + Send + 'static {
    futures_util::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        match stream.message().await {
            Ok(Some(message)) => Some((Ok(message), Some(stream))),
            Ok(None) => None,
            Err(status) => Some((Err(status), None)),
        }
    })
}

/// The headers that travel as gRPC metadata: the caller's key, its deadline (`grpc-timeout`, as
/// grpc-gateway forwards it) and the request id. (The trace context is not: the call's span is a
/// child of the REST span, which continued the caller's.)
fn metadata(headers: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut metadata = HeaderMap::new();
    for name in [
        header::AUTHORIZATION,
        HeaderName::from_static("grpc-timeout"),
    ] {
        // Every value: two authorization headers are refused by the stack, not narrowed to one.
        for value in headers.get_all(&name) {
            metadata.append(name.clone(), value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        metadata.insert(REQUEST_ID_HEADER, value);
    }
    metadata
}

/// The body as JSON, `None` when empty. The content type must be JSON; curl's default
/// `application/x-www-form-urlencoded` is read as JSON too, because `curl -d '{...}'` is how
/// api.md's own examples call the API.
async fn read_json_body(headers: &HeaderMap, body: Body) -> Result<Option<Json>, RestError> {
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared_length.is_some_and(|length| length > MAX_DRAINED_BYTES) {
        return Err(RestError::BodyTooLarge);
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut total = 0usize;
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    loop {
        let Some(chunk) = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| RestError::BodyTimeout)?
        else {
            break;
        };
        let chunk = chunk
            .map_err(|error| RestError::MalformedBody(format!("it could not be read: {error}")))?;
        total += chunk.len();
        if total > MAX_DRAINED_BYTES {
            return Err(RestError::BodyTooLarge);
        }
        if total <= MAX_BODY_BYTES {
            bytes.extend_from_slice(&chunk);
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(RestError::BodyTooLarge);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or_default();
        let essence = text
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let is_json = essence == "application/json"
            || essence == "application/x-www-form-urlencoded"
            || (essence.starts_with("application/") && essence.ends_with("+json"));
        if !is_json {
            return Err(RestError::UnsupportedMediaType(text.to_owned()));
        }
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| RestError::MalformedBody(format!("it is not JSON: {error}")))
}

/// The peer of the HTTP connection a request came on.
fn client_address(parts: &http::request::Parts) -> Option<ClientAddress> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| ClientAddress(info.0.ip()))
}
