//! The REST gateway: matches a request to its route, reads the body, builds the request message,
//! calls the gRPC stack in process and writes the answer as JSON (201 with a Location for a
//! create), or, for a server stream, as NDJSON lines or Server-Sent Events.

use std::{collections::BTreeSet, convert::Infallible, sync::Arc, time::Instant};

use axum::{
    body::{Body, Bytes},
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
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
    Api,
    bounded_json::{self, BoundedError, TooManyEntries},
    descriptors::{Descriptors, message_of},
    dispatch::{Call, client_fault},
    empty_strings,
    errors::{BODY_READ_TIMEOUT, MAX_BODY_BYTES, RestError, status_to_json},
    json::message_to_json,
    openapi,
    request::{HttpParts, build_request},
    routes::{BodyMapping, Route, RouteError, RouteMatch, RouteTable},
};
use crate::{
    auth::PeerAddress,
    domain::Violations,
    grpc::{GrpcStack, InProcessService, REQUEST_ID_HEADER, Untranslated, client_request_id},
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
    descriptors: Descriptors,
    routes: RouteTable,
    service: InProcessService,
    /// The stack's layers around nothing: asks whether a caller would be admitted.
    admission: InProcessService,
    /// `GET /openapi.json`, rendered once.
    openapi: Bytes,
    /// The most entries a body's array or object may hold: the longest list any request rule
    /// allows (a longer one is counted while it is read, never kept).
    max_entries: usize,
    /// The string fields a body may not send as `""` (their rule wants a character).
    non_empty: BTreeSet<String>,
}

impl Gateway {
    /// Reads the descriptors of `api` and builds every route over the stack; refuses a rule it
    /// cannot serve.
    pub fn new(stack: &GrpcStack, api: &Api) -> Result<Gateway, RouteError> {
        let descriptors = Descriptors::load(api.descriptor_set)?;
        let routes = RouteTable::build(&descriptors)?;
        let document = openapi::document(&descriptors, &routes, api);
        Ok(Gateway {
            max_entries: openapi::max_entries(&api.constraints),
            non_empty: empty_strings::non_empty_fields(&api.constraints),
            openapi: Bytes::from(document.to_string()),
            descriptors,
            routes,
            service: stack.in_process(),
            admission: stack.admission(),
        })
    }

    /// The OpenAPI document of every route, as `GET /openapi.json` serves it.
    pub fn openapi_document(&self) -> Bytes {
        self.openapi.clone()
    }

    /// The 405 answer (a Status body and `Allow`) for a path that only takes `allowed`.
    pub fn method_not_allowed(&self, method: Method, path: &str, allowed: Vec<Method>) -> Response {
        RestError::MethodNotAllowed {
            method,
            path: path.to_owned(),
            allowed,
        }
        .into_http(&self.descriptors)
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
            client: peer_address(parts),
        };
        if route.rpc.is_server_streaming() && openapi::is_http_body(&route.rpc.output()) {
            let response = call.server_streaming().await.map_err(RestError::Rpc)?;
            return raw_body(response).await;
        }
        if route.rpc.is_server_streaming() {
            let stream = call
                .server_streaming()
                .await
                .map_err(RestError::Rpc)?
                .into_inner();
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
        let body = read_json_body(headers, body, self.max_entries)
            .await
            .map_err(|error| body_error(route, error))?;
        let last_event_id = headers
            .get("last-event-id")
            .and_then(|value| value.to_str().ok());
        // Only a request with an update mask needs its body's JSON once more, after the build.
        let sent = body
            .as_ref()
            .filter(|_| empty_strings::has_update_mask(&route.rpc.input()))
            .cloned();
        let http = HttpParts {
            path_values,
            query: parts.uri.query(),
            body,
            last_event_id,
        };
        let request = build_request(&self.descriptors, route, http)?;
        if let Some(json) = &sent {
            self.refuse_empty_strings(route, &request, json)?;
        }
        Ok(request)
    }

    /// An update's body that sends `""` outside its `update_mask` where the document wants a
    /// character is refused, each such field named by its proto path (inside the mask, the
    /// call's own validation names it with everything else wrong).
    fn refuse_empty_strings(
        &self,
        route: &Route,
        request: &DynamicMessage,
        json: &Json,
    ) -> Result<(), RestError> {
        let Some(mask) = empty_strings::update_mask(request) else {
            return Ok(());
        };
        let (message, prefix) = match &route.body {
            BodyMapping::None => return Ok(()),
            BodyMapping::Whole => (route.rpc.input(), String::new()),
            BodyMapping::Field(field) => match message_of(field) {
                Some(message) => (message, format!("{}.", field.name())),
                None => return Ok(()),
            },
        };
        let empty: Vec<String> =
            empty_strings::sent_empty(&message, json, &self.non_empty, &prefix)
                .into_iter()
                .filter(|path| {
                    !empty_strings::covers(&mask, path.strip_prefix(&prefix).unwrap_or(path))
                })
                .collect();
        if empty.is_empty() {
            return Ok(());
        }
        let mut violations = Violations::default();
        for field in empty {
            violations.add(field, "is empty; leave it out, or give it a value");
        }
        Err(RestError::Invalid(violations))
    }

    /// A request that cannot be translated is answered as the stack answers any call first:
    /// a caller without a valid key or the permission learns that (401, 403), exactly as over
    /// gRPC, and only an admitted caller learns what is wrong with the request (which the
    /// audit log records, for a method that changes something).
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
        if let Some(client) = peer_address(parts) {
            probe.extensions_mut().insert(client);
        }
        // An admitted caller is refused with the error: the audit log records it as such.
        let (code, reason) = error.code_and_reason();
        probe.extensions_mut().insert(Untranslated { code, reason });
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

/// A google.api.HttpBody field of a message: its content type, or its bytes.
fn http_body_type(message: &DynamicMessage) -> Option<String> {
    message
        .get_field_by_name("content_type")
        .and_then(|value| value.as_str().map(str::to_owned))
        .filter(|content_type| !content_type.is_empty())
}

fn http_body_data(message: &DynamicMessage) -> Bytes {
    message
        .get_field_by_name("data")
        .and_then(|value| value.as_bytes().cloned())
        .unwrap_or_default()
}

/// A stream of google.api.HttpBody as the HTTP body itself: the first message's content type
/// (a failure before it is an ordinary error answer), a `content-disposition` the call's
/// metadata carries, then every message's bytes. A failure after the first message can no
/// longer change the status: the body ends with a line `-- ERROR: <message>` (a comment in the
/// text formats this serves: RevertChanges' SQL, which then lacks its COMMIT).
async fn raw_body(
    response: tonic::Response<Streaming<DynamicMessage>>,
) -> Result<Response, RestError> {
    let (metadata, mut stream, _) = response.into_parts();
    let first = stream
        .message()
        .await
        .map_err(|status| RestError::Rpc(client_fault(status)))?;
    let content_type = first
        .as_ref()
        .and_then(http_body_type)
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let first_bytes = first.as_ref().map(http_body_data).unwrap_or_default();
    let rest = futures_util::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        match stream.message().await {
            Ok(Some(message)) => Some((http_body_data(&message), Some(stream))),
            Ok(None) => None,
            Err(status) => {
                let status = client_fault(status);
                let message: String = status
                    .message()
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                Some((Bytes::from(format!("\n-- ERROR: {message}\n")), None))
            }
        }
    });
    let bytes = futures_util::stream::once(async move { first_bytes })
        .chain(rest)
        .map(Ok::<_, Infallible>);
    let mut response = Body::from_stream(bytes).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Some(value) = metadata
        .get("content-disposition")
        .and_then(|value| HeaderValue::from_bytes(value.as_bytes()).ok())
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
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

/// A message's revision as its SSE id; none for 0, which marks a message no stream resumes
/// after (a WatchServers list page that more pages follow).
fn revision_text(value: &prost_reflect::Value) -> Option<String> {
    let revision = match value {
        prost_reflect::Value::I64(value) => *value,
        prost_reflect::Value::I32(value) => i64::from(*value),
        prost_reflect::Value::U64(value) => i64::try_from(*value).ok()?,
        prost_reflect::Value::U32(value) => i64::from(*value),
        _ => return None,
    };
    (revision != 0).then(|| revision.to_string())
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
            Err(status) => Some((Err(client_fault(status)), None)),
        }
    })
}

/// The headers that travel as gRPC metadata: the caller's key, its deadline (`grpc-timeout`, as
/// grpc-gateway forwards it), the proxies' `X-Forwarded-For` (the auth layer believes it only
/// from --trusted-proxies) and the request id. (The trace context is not: the call's span is a
/// child of the REST span, which continued the caller's.)
fn metadata(headers: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut metadata = HeaderMap::new();
    for name in [
        header::AUTHORIZATION,
        HeaderName::from_static("grpc-timeout"),
        HeaderName::from_static("x-forwarded-for"),
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
async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    max_entries: usize,
) -> Result<Option<Json>, BodyError> {
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared_length.is_some_and(|length| length > MAX_DRAINED_BYTES) {
        return Err(RestError::BodyTooLarge.into());
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::with_capacity(declared_length.unwrap_or(0).min(MAX_BODY_BYTES));
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
            return Err(RestError::BodyTooLarge.into());
        }
        if total <= MAX_BODY_BYTES {
            bytes.extend_from_slice(&chunk);
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(RestError::BodyTooLarge.into());
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    check_json_content_type(headers)?;
    bounded_json::parse(&bytes, max_entries)
        .map(Some)
        .map_err(|error| match error {
            BoundedError::TooMany(too_many) => BodyError::TooMany(too_many),
            BoundedError::Syntax(error) => {
                RestError::MalformedBody(format!("it is not JSON: {error}")).into()
            }
        })
}

/// The content type, when one is sent, must be JSON; curl's default
/// `application/x-www-form-urlencoded` counts as JSON (see `read_json_body`).
fn check_json_content_type(headers: &HeaderMap) -> Result<(), RestError> {
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
    Ok(())
}

/// Why a body was not read: a list too long (named once the route is known), or else.
enum BodyError {
    TooMany(TooManyEntries),
    Rest(RestError),
}

impl From<RestError> for BodyError {
    fn from(error: RestError) -> BodyError {
        BodyError::Rest(error)
    }
}

/// The HTTP answer to a body that was not read: a list too long is a violation of the field
/// it sets, named by its proto path as the validators name it.
fn body_error(route: &Route, error: BodyError) -> RestError {
    let too_many = match error {
        BodyError::Rest(error) => return error,
        BodyError::TooMany(too_many) => too_many,
    };
    let field = match &route.body {
        BodyMapping::Field(field) => match message_of(field) {
            Some(message) => {
                let inner = bounded_json::field_path(&message, &too_many.path);
                [field.name(), inner.as_str()]
                    .iter()
                    .filter(|part| !part.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(".")
            }
            None => field.name().to_owned(),
        },
        _ => bounded_json::field_path(&route.rpc.input(), &too_many.path),
    };
    RestError::Invalid(Violations::one(
        field,
        format!(
            "has {} entries; at most {} allowed",
            too_many.entries, too_many.max_entries
        ),
    ))
}

/// The peer of the HTTP connection a request came on.
fn peer_address(parts: &http::request::Parts) -> Option<PeerAddress> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| PeerAddress(info.0.ip()))
}
