//! W3C trace context across Kafka: injected from the current span into headers on produce,
//! extracted from headers into the parent of the consumer's span.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::Headers;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use hcp_events::headers;

/// A trace context (the parent a consumer's span continues).
pub use opentelemetry::Context;

/// The current span's `traceparent` and `tracestate`, if it is part of a trace.
pub fn current_trace_headers() -> (Option<String>, Option<String>) {
    let cx = tracing::Span::current().context();
    let mut map: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    (
        map.remove(headers::TRACEPARENT),
        map.remove(headers::TRACESTATE).filter(|s| !s.is_empty()),
    )
}

/// The trace id of the current span as 32 hex digits, if any (for logs and tests).
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Builds an OpenTelemetry context from Kafka headers (empty context when absent).
pub fn context_from_headers<H: Headers>(h: Option<&H>) -> opentelemetry::Context {
    let mut map: HashMap<String, String> = HashMap::new();
    if let Some(h) = h {
        for header in h.iter() {
            if header.key == headers::TRACEPARENT || header.key == headers::TRACESTATE {
                if let Some(v) = header.value.and_then(|v| std::str::from_utf8(v).ok()) {
                    map.insert(header.key.to_owned(), v.to_owned());
                }
            }
        }
    }
    TraceContextPropagator::new().extract(&map)
}

/// The trace context of one event of a message: a packed item's own, else the message's
/// headers'.
pub fn context_of_item<H: Headers>(
    h: Option<&H>,
    item: &hcp_events::pack::Item<'_>,
) -> opentelemetry::Context {
    let Some(tp) = &item.traceparent else {
        return context_from_headers(h);
    };
    let mut map: HashMap<String, String> = HashMap::new();
    map.insert(headers::TRACEPARENT.to_owned(), tp.clone().into_owned());
    if let Some(ts) = &item.tracestate {
        map.insert(headers::TRACESTATE.to_owned(), ts.clone().into_owned());
    }
    TraceContextPropagator::new().extract(&map)
}

/// Makes `parent` the parent of `span` (ignored when the context carries no span).
pub fn set_parent(span: &tracing::Span, parent: opentelemetry::Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}
