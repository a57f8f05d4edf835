//! Traces: OpenTelemetry spans over OTLP/gRPC (`--otlp-endpoint`, off by default) for every
//! call, onboarding step and stream connection, continuing the caller's W3C `traceparent`.
//! Onboarding runs later, maybe on another replica: the call that starts it leaves its
//! `traceparent` with the server, and the steps' spans continue that trace.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::{
    KeyValue,
    propagation::{Extractor, TextMapPropagator},
    trace::TracerProvider,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether spans are exported: without it, no call pays for reading or writing trace context.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct TelemetryError {
    endpoint: String,
    reason: String,
}

/// The exporting tracer provider; `shutdown` sends what is buffered.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes the spans not yet sent and stops the exporter.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("traces: the last spans were not exported: {error}");
        }
    }
}

/// Exports spans to the OTLP/gRPC collector at `endpoint` (e.g. `http://127.0.0.1:4317`), in
/// batches. The returned layer joins the tracing subscriber.
pub fn export_to<S>(
    endpoint: &str,
    instance: &str,
) -> Result<
    (
        Telemetry,
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    ),
    TelemetryError,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| TelemetryError {
            // A password in the URL stays out of the message.
            endpoint: crate::store::connect::redacted(endpoint),
            reason: error.to_string(),
        })?;
    let resource = Resource::builder()
        .with_service_name("dbtrail-servers")
        .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("dbtrail-servers");
    ENABLED.store(true, Ordering::Release);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_tracked_inactivity(false);
    Ok((Telemetry { provider }, layer))
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// HTTP headers (and so gRPC metadata) as a source of trace context.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Names a call's span (declared with empty `otel.name` and `otel.kind`) for export, and makes it
/// continue the trace of the caller's `traceparent` header, when it sent one.
pub fn continue_caller(span: &tracing::Span, name: &str, headers: &http::HeaderMap) {
    if !enabled() {
        return;
    }
    span.record("otel.name", name);
    span.record("otel.kind", "server");
    if headers.contains_key("traceparent") {
        let context = TraceContextPropagator::new().extract(&Headers(headers));
        let _ = span.set_parent(context);
    }
}

/// The current span's W3C `traceparent`, to be continued later by work it starts (None while
/// traces are off).
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` continue the trace a call left with a server (its `traceparent`).
pub fn continue_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| enabled()) else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}
