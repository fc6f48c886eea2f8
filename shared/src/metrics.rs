//! Prometheus metrics through `prometheus-client`, in the OpenMetrics text
//! format: every name starts with `shop_`, every series carries the
//! `service` label, and names carry their unit (`_seconds`) and, for
//! counters, `_total`.
//!
//! Two kinds live here. What happens (requests, events handled, sagas
//! ended, emails sent) is counted where it happens, in the long-lived
//! registry of [`Metrics`]. What *is* (queue depths, consumer and breaker
//! states, the outbox's backlog) is read on each scrape into a
//! [`Snapshot`], a registry built for that one scrape, so a series can
//! never be stale.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, text},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::{Metric, Registry, Unit},
};

/// Every metric's name starts with this.
pub(crate) const PREFIX: &str = "shop";

/// Whether an `Accept` header asks for OpenMetrics, as Prometheus does.
pub(crate) fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

/// OpenMetrics text in the classic Prometheus text format (0.0.4): there
/// a counter's family is named with its `_total`, as its samples are, and
/// `# UNIT` and `# EOF` do not exist. Tools that read only the classic
/// format (`promtool check metrics` among them) otherwise see a counter
/// family without samples and samples without a family.
pub(crate) fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let metadata = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match metadata {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{tag}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Latencies from a millisecond to a minute: HTTP calls, event handling,
/// SMTP sends and whole sagas all land inside.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Builds latency histograms for a [`Family`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Seconds;

impl MetricConstructor<Histogram> for Seconds {
    fn new_metric(&self) -> Histogram {
        Histogram::new(SECONDS_BUCKETS)
    }
}

/// A histogram of durations per label set.
pub type DurationFamily<L> = Family<L, Histogram, Seconds>;

/// A new [`DurationFamily`].
pub fn durations<L: Clone + std::hash::Hash + Eq>() -> DurationFamily<L> {
    Family::new_with_constructor(Seconds)
}

/// Observes `elapsed` in seconds.
pub fn observe(histogram: &Histogram, elapsed: Duration) {
    histogram.observe(elapsed.as_secs_f64());
}

/// A label set of one label, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// The first digit of an HTTP status, as `2xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A service's metrics registry, shared by everything that counts.
#[derive(Clone)]
pub struct Metrics {
    service: &'static str,
    registry: Arc<Mutex<Registry>>,
    pub http: HttpMetrics,
    pub events: EventMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(service: &'static str) -> Self {
        let metrics = Metrics {
            service,
            registry: Arc::new(Mutex::new(registry(service))),
            http: HttpMetrics::default(),
            events: EventMetrics::default(),
        };
        metrics.http.register(&metrics);
        metrics.events.register(&metrics);
        metrics
    }

    /// Adds `metric` (a clone shares its values) as `shop_<name>`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// Adds `metric` as `shop_<name>_seconds`.
    pub fn register_seconds(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock()
            .register_with_unit(name, help, Unit::Seconds, metric);
    }

    /// A registry for one scrape's readings, named like this one.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(registry(self.service))
    }

    /// The whole exposition: what was counted, then `snapshot`, then the
    /// end marker OpenMetrics requires.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.lock());
        let _ = text::encode_registry(&mut out, &snapshot.0);
        let _ = text::encode_eof(&mut out);
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn registry(service: &'static str) -> Registry {
    Registry::with_prefix_and_labels(
        PREFIX,
        [(Cow::Borrowed("service"), Cow::Borrowed(service))].into_iter(),
    )
}

/// Readings taken for one scrape (gauges, and counters kept elsewhere as
/// plain atomics), registered under their final names.
pub struct Snapshot(Registry);

impl Snapshot {
    /// Registers `metric` once it holds this scrape's values.
    pub(crate) fn add(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.0.register(name, help, metric);
    }

    /// An unlabelled gauge of `value`.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        gauge.set(value);
        self.add(name, help, gauge);
    }

    /// An unlabelled counter whose running total is `total`.
    pub fn counter(&mut self, name: &str, help: &str, total: u64) {
        let counter = Counter::<u64>::default();
        counter.inc_by(total);
        self.add(name, help, counter);
    }
}

/// A gauge of any label set, for snapshots.
pub(crate) type GaugeFamily<L> = Family<L, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// HTTP requests, recorded by the request middleware.
#[derive(Clone)]
pub struct HttpMetrics {
    pub duration: DurationFamily<RouteLabels>,
    pub requests: Family<StatusClass, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// [`method_label`]: a method of HTTP's, or `OTHER`.
    pub method: &'static str,
    /// The OpenAPI path template (`/api/orders/{order_id}`), never the
    /// path itself, so ids do not become series.
    pub route: String,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClass {
    pub status_class: &'static str,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            duration: durations(),
            requests: Family::default(),
        }
    }
}

impl HttpMetrics {
    fn register(&self, metrics: &Metrics) {
        metrics.register_seconds(
            "http_request_duration",
            "HTTP requests from receipt to response, by route and status class.",
            self.duration.clone(),
        );
        metrics.register(
            "http_requests",
            "HTTP requests answered, by status class.",
            self.requests.clone(),
        );
    }

    /// One answered request. `pattern` is poem's route pattern (`:id`
    /// segments), or None when no route matched.
    pub fn record(&self, method: &str, pattern: Option<&str>, status: u16, elapsed: Duration) {
        let status_class = status_class(status);
        let labels = RouteLabels {
            method: method_label(method),
            route: route_label(pattern),
            status_class,
        };
        observe(&self.duration.get_or_create(&labels), elapsed);
        self.requests
            .get_or_create(&StatusClass { status_class })
            .inc();
    }
}

/// The method as a label: one of HTTP's own, or `OTHER` for any a client
/// invents (`PRBXYZ /health`), so that a probe cannot mint series.
pub(crate) fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("OTHER")
}

/// `/api/orders/:order_id` as OpenAPI writes it, `/api/orders/{order_id}`;
/// anything no route matched (a catch-all pattern) is `other`, so probing
/// clients cannot mint series.
pub(crate) fn route_label(pattern: Option<&str>) -> String {
    match pattern {
        Some(pattern) if !pattern.contains('*') => pattern
            .split('/')
            .map(|segment| match segment.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None => segment.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/"),
        _ => "other".into(),
    }
}

/// Events taken from the service's queues, recorded by the consumer.
#[derive(Clone)]
pub struct EventMetrics {
    pub duration: DurationFamily<EventLabels>,
    pub retries: Family<EventType, Counter>,
    pub dead_letters: Family<DeadLetterLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: String,
    pub outcome: EventOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EventOutcome {
    /// Handled, or a duplicate of one handled before: acked.
    done,
    /// Sent to a delay queue for another attempt.
    retry,
    /// Sent to the dead-letter queue.
    dead_letter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventType {
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub event_type: String,
    /// `permanent` (can never succeed) or `transient` (ran out of retries).
    pub class: &'static str,
}

impl Default for EventMetrics {
    fn default() -> Self {
        EventMetrics {
            duration: durations(),
            retries: Family::default(),
            dead_letters: Family::default(),
        }
    }
}

impl EventMetrics {
    fn register(&self, metrics: &Metrics) {
        metrics.register_seconds(
            "event_handling_duration",
            "Deliveries from receipt to settlement, by event type and outcome.",
            self.duration.clone(),
        );
        metrics.register(
            "event_retries",
            "Deliveries sent to a delay queue for another attempt.",
            self.retries.clone(),
        );
        metrics.register(
            "dead_letters",
            "Deliveries sent to the dead-letter queue, by class.",
            self.dead_letters.clone(),
        );
    }

    /// One settled delivery. `event_type` is `unreadable` for a body that
    /// is not an event.
    pub fn record(&self, event_type: &str, outcome: EventOutcome, elapsed: Duration) {
        let labels = EventLabels {
            event_type: event_type.to_string(),
            outcome,
        };
        observe(&self.duration.get_or_create(&labels), elapsed);
    }

    pub fn retried(&self, event_type: &str) {
        self.retries
            .get_or_create(&EventType {
                event_type: event_type.to_string(),
            })
            .inc();
    }

    pub fn dead_lettered(&self, event_type: &str, class: &'static str) {
        self.dead_letters
            .get_or_create(&DeadLetterLabels {
                event_type: event_type.to_string(),
                class,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_labelled_by_their_template_and_unmatched_paths_share_one_label() {
        assert_eq!(
            route_label(Some("/api/orders/:order_id/cancel")),
            "/api/orders/{order_id}/cancel"
        );
        assert_eq!(route_label(Some("/health")), "/health");
        assert_eq!(route_label(Some("/*--poem-rest")), "other");
        assert_eq!(route_label(None), "other");
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PRBXYZ"), "OTHER");
        assert_eq!(method_label("get"), "OTHER", "methods are case-sensitive");
    }

    #[test]
    fn the_exposition_names_carry_the_prefix_the_unit_and_the_service() {
        let metrics = Metrics::new("order-service");
        metrics.http.record(
            "GET",
            Some("/api/orders/:order_id"),
            404,
            Duration::from_millis(3),
        );
        metrics.events.retried("order.created");
        let mut snapshot = metrics.snapshot();
        snapshot.gauge("outbox_pending", "Events not yet confirmed.", 2.0);
        let text = metrics.render(&snapshot);
        assert!(
            text.contains("# TYPE shop_http_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains(
            r#"shop_http_request_duration_seconds_count{service="order-service",method="GET",route="/api/orders/{order_id}",status_class="4xx"} 1"#
        ), "{text}");
        assert!(
            text.contains(
                r#"shop_http_requests_total{service="order-service",status_class="4xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"shop_event_retries_total{service="order-service",event_type="order.created"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"shop_outbox_pending{service="order-service"} 2.0"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_classic_format_names_counter_families_with_their_total_and_drops_what_it_lacks() {
        let openmetrics = "# HELP shop_http_requests Requests.\n\
                           # TYPE shop_http_requests counter\n\
                           shop_http_requests_total{service=\"a\"} 1\n\
                           # HELP shop_took_seconds Took.\n\
                           # TYPE shop_took_seconds histogram\n\
                           # UNIT shop_took_seconds seconds\n\
                           shop_took_seconds_count 1\n\
                           # EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP shop_http_requests_total Requests.\n\
             # TYPE shop_http_requests_total counter\n\
             shop_http_requests_total{service=\"a\"} 1\n\
             # HELP shop_took_seconds Took.\n\
             # TYPE shop_took_seconds histogram\n\
             shop_took_seconds_count 1\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
