//! Logging and tracing. `LOG_FORMAT=json` gives one JSON object per line
//! (with the current span's fields: its correlation id, and the trace and
//! span ids of the trace it belongs to); the default is the human-readable
//! format. `RUST_LOG` filters as usual.
//!
//! Every request, every event handled and every email sent is a span of a
//! W3C trace: a request's `traceparent` header continues the caller's trace
//! (or a new one starts), each event carries its cause's `traceparent` in
//! its AMQP headers, and the consumer continues it, so one trace follows an
//! order through the three services. With `OTEL_EXPORTER_OTLP_ENDPOINT`
//! set (`http://collector:4318`), spans are exported over OTLP/HTTP; the
//! other `OTEL_*` variables of the OpenTelemetry SDK apply.

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn, fmt, prelude::*};

/// The header, in HTTP and in AMQP, that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Keeps the exporter alive; dropped, it sends what it still holds.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("could not flush the last spans: {error}");
        }
    }
}

/// Installs logging and tracing for `service`. Tests that start several
/// services in one process call it more than once: the first one wins.
pub fn init(service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "info,{}=info,lapin=warn,mongodb=warn,opentelemetry=warn",
            service.replace('-', "_")
        ))
    });
    let (provider, exporting) = tracer_provider(service);
    let traces = traces_layer(&provider, service);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    // try_init: tests start several apps in one process.
    let installed = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()
    };
    if installed.is_ok()
        && let Some(endpoint) = exporting
    {
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

/// The spans of `service`, through `provider`. Spans only: a log line stays
/// a log line (it carries the span's ids) rather than also becoming an
/// event stored on the span.
fn traces_layer<S>(provider: &SdkTracerProvider, service: &str) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service.to_string()))
        .with_filter(filter_fn(|metadata| metadata.is_span()))
}

/// Without an exporter: a span is recorded only when its caller's
/// `traceparent` is sampled; its own root spans are not.
fn unsampled_unless_asked() -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
}

/// A provider that exports to `OTEL_EXPORTER_OTLP_ENDPOINT` if it is set.
/// Without it, spans still get trace and span ids (for the logs and the
/// headers) but are not recorded unless a caller's `traceparent` asks for
/// it: recording every span for nobody cost a third of the throughput.
fn tracer_provider(service: &str) -> (SdkTracerProvider, Option<String>) {
    let resource = Resource::builder()
        .with_service_name(service.to_string())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.is_empty());
    let Some(endpoint) = endpoint else {
        return (builder.with_sampler(unsampled_unless_asked()).build(), None);
    };
    match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => (
            builder.with_batch_exporter(exporter).build(),
            Some(endpoint),
        ),
        Err(error) => {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: not exporting traces: {error}");
            (builder.build(), None)
        }
    }
}

/// Makes `span` continue the trace of `traceparent` (a new trace when it
/// is absent or malformed), and records its `trace_id` and `span_id`
/// fields for the logs. Call it before the span is first entered.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let parent = match traceparent {
        Some(value) => {
            let carrier = HashMap::from([(TRACEPARENT.to_string(), value.to_string())]);
            TraceContextPropagator::new().extract(&carrier)
        }
        None => Context::new(),
    };
    // Without the tracing layer (a test's own subscriber) there is no
    // trace to continue, and nothing to record.
    if span.set_parent(parent).is_err() {
        return;
    }
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

/// `span`'s trace context as a W3C `traceparent`, for the events it
/// causes; None when it is not traced.
pub(crate) fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    let ids = context.span().span_context().clone();
    ids.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            ids.trace_id(),
            ids.span_id(),
            ids.trace_flags().to_u8()
        )
    })
}

/// The current span's `traceparent` (see [`traceparent_of`]).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Runs `test` with the services' tracing layer over `provider`.
    fn traced(provider: SdkTracerProvider, test: impl FnOnce()) {
        let subscriber = tracing_subscriber::registry().with(traces_layer(&provider, "test"));
        tracing::subscriber::with_default(subscriber, test);
    }

    /// As with an exporter: every span sampled.
    fn with_tracing(test: impl FnOnce()) {
        traced(SdkTracerProvider::builder().build(), test);
    }

    fn span() -> Span {
        tracing::info_span!(
            parent: None,
            "request",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty
        )
    }

    /// The `traceparent` of a new span that continued [`CALLER`]'s trace.
    fn continued_from_caller() -> String {
        let span = span();
        continue_trace(&span, Some(CALLER));
        traceparent_of(&span).unwrap()
    }

    #[test]
    fn a_span_continues_the_callers_trace_as_its_child() {
        with_tracing(|| {
            let ours = continued_from_caller();
            assert!(
                ours.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{ours}"
            );
            assert!(
                !ours.contains("00f067aa0ba902b7"),
                "a span of its own: {ours}"
            );
            assert!(ours.ends_with("-01"), "sampled: {ours}");
        });
    }

    #[test]
    fn without_a_caller_or_with_a_malformed_one_a_new_trace_starts() {
        with_tracing(|| {
            let (first, second, malformed) = (span(), span(), span());
            continue_trace(&first, None);
            continue_trace(&second, None);
            continue_trace(&malformed, Some("00-not-a-trace"));
            let trace = |span: &Span| traceparent_of(span).unwrap()[3..35].to_string();
            assert_ne!(trace(&first), trace(&second));
            assert_ne!(trace(&malformed), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(trace(&malformed).len(), 32);
        });
    }

    #[test]
    fn without_an_exporter_spans_get_ids_for_the_logs_and_the_headers_but_are_not_sampled() {
        let provider = SdkTracerProvider::builder()
            .with_sampler(unsampled_unless_asked())
            .build();
        traced(provider, || {
            let root = span();
            continue_trace(&root, None);
            let ours = traceparent_of(&root).unwrap();
            assert!(ours.ends_with("-00"), "{ours}");
            // A caller that samples is still followed, and sampled.
            let ours = continued_from_caller();
            assert!(
                ours.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{ours}"
            );
            assert!(ours.ends_with("-01"), "{ours}");
        });
    }

    #[test]
    fn an_event_span_inside_a_long_lived_span_starts_its_own_trace() {
        with_tracing(|| {
            let consumer = tracing::info_span!("consumer");
            let _inside = consumer.enter();
            let event = tracing::info_span!("event");
            continue_trace(&event, None);
            assert_ne!(
                traceparent_of(&event).unwrap()[3..35],
                traceparent_of(&consumer).unwrap()[3..35]
            );
        });
    }
}
