//! `/health` (the process is alive), `/ready` (its database and broker
//! answer, its consumers are connected, and the state of its circuit
//! breakers) and `/metrics` (Prometheus text). Readiness names what is down
//! so an operator knows where to look.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use mongodb::Database;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::Header,
    payload::{Json, PlainText},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::sync::Mutex;

use super::{loadshed::LoadShedder, ratelimit::RateLimiter};
use crate::{
    broker::{
        Publisher,
        consumer::{ConsumerRole, ConsumerSnapshot, ConsumerStatus, Consumers, consumers_ready},
    },
    deadletter::DeadLetterStore,
    metrics::{self, GaugeFamily, Metrics, Snapshot},
    resilience::Breakers,
    store::{self, outbox},
};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one check of the database and the broker answers `/ready`:
/// probes from several balancers share it, and a broker that is down is not
/// asked for a new connection on every probe.
const READY_CHECK_TTL: Duration = Duration::from_secs(1);

pub struct HealthApi {
    pub service: &'static str,
    pub db: Database,
    pub publisher: Arc<Publisher>,
    pub breakers: Breakers,
    pub consumers: Consumers,
    /// How long a consumer may be disconnected before `/ready` fails.
    pub consumer_ready_grace: Duration,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub load_shedder: Option<Arc<LoadShedder>>,
    /// What the service counted; `/metrics` adds this moment's readings.
    pub metrics: Metrics,
    /// The service's own gauges, if it has any.
    pub gauges: Option<Arc<dyn GaugeSource>>,
    /// The last check of the database and the broker, and when it ended.
    pub last_check: Mutex<Option<(Instant, Dependencies)>>,
}

/// The database's and the broker's state: `up`, or `down: <why>`
/// ([`describe`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Dependencies {
    pub mongodb: String,
    pub rabbitmq: String,
}

/// A gauge a service adds to `/metrics` beside the shared ones.
pub struct Gauge {
    /// The metric name, e.g. `saga_oldest_unfinished_age_seconds`.
    pub name: &'static str,
    /// Its `# HELP` line.
    pub help: &'static str,
    pub value: f64,
}

/// Where a service's own gauges come from: read on every scrape, within
/// the probes' time limit. What it cannot read, it leaves out.
pub trait GaugeSource: Send + Sync {
    fn gauges(&self) -> BoxFuture<'_, Vec<Gauge>>;
}

/// Liveness.
#[derive(Object)]
pub(crate) struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
    /// Which service answered.
    pub service: String,
}

/// Readiness of each dependency.
#[derive(Object)]
pub(crate) struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// `up`, or `down: unreachable` or `down: timed out` (the driver's
    /// error is in the service's log).
    pub mongodb: String,
    /// Like `mongodb`.
    pub rabbitmq: String,
    /// Each circuit breaker: `closed`, `open` or `half_open`. An open
    /// breaker does not make the service unready: it is how the service
    /// stays useful while a dependency is down.
    pub breakers: BTreeMap<String, String>,
    /// Each consumer of the service's queues. One that has been
    /// disconnected for longer than `CONSUMER_READY_GRACE_SECONDS` makes
    /// the service unready; a shorter reconnect (after a broker restart)
    /// does not, nor does an operator's pause.
    pub consumers: Vec<ConsumerReadiness>,
}

/// What one consumer is doing.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub(crate) struct ConsumerReadiness {
    /// The queue it consumes, with the namespace prefix.
    pub queue: String,
    /// `work` (the service's events) or `dead_letters` (the archiver of
    /// its dead-letter queue).
    pub role: ConsumerRole,
    /// `consuming`, `paused` (by an operator: its messages wait in the
    /// queue) or `disconnected` (connecting or reconnecting).
    pub state: ConsumerStatus,
    /// Whether it is consuming on a live channel right now.
    pub connected: bool,
    /// Whether a pause is asked for; `state` says when it has taken effect
    /// (once the deliveries in hand are settled).
    pub pause_requested: bool,
    /// When it paused, RFC 3339; null unless paused.
    #[oai(nullable)]
    pub paused_since: Option<DateTime<Utc>>,
    /// When it lost its channel (or started without one), RFC 3339; null
    /// while connected or paused.
    #[oai(nullable)]
    pub disconnected_since: Option<DateTime<Utc>>,
    /// Seconds it has been disconnected; null while connected or paused.
    #[oai(nullable)]
    pub disconnected_seconds: Option<f64>,
    /// Deliveries received and not yet settled.
    pub in_flight: u64,
    /// When it last acked a delivery, RFC 3339; null if it has acked none
    /// since the service started.
    #[oai(nullable)]
    pub last_ack_at: Option<DateTime<Utc>>,
    /// Seconds since it last acked a delivery; null if it has acked none
    /// since the service started.
    #[oai(nullable)]
    pub last_ack_age_seconds: Option<f64>,
    /// Times its task panicked and was started again, since start.
    pub restarts: u64,
    /// Reconnects because a broker step (connect, declare, publish
    /// confirm, ack, …) got no answer within its time limit, since start.
    pub timeouts: u64,
}

impl From<ConsumerSnapshot> for ConsumerReadiness {
    fn from(consumer: ConsumerSnapshot) -> Self {
        let now = Utc::now();
        ConsumerReadiness {
            queue: consumer.queue,
            role: consumer.role,
            state: consumer.status,
            connected: consumer.connected,
            pause_requested: consumer.pause_requested,
            paused_since: consumer.paused_since,
            disconnected_since: consumer.disconnected_since,
            disconnected_seconds: consumer.disconnected_for.map(seconds),
            in_flight: consumer.in_flight,
            last_ack_at: consumer
                .last_ack_age
                .and_then(|age| chrono::Duration::from_std(age).ok())
                .map(|age| now - age),
            last_ack_age_seconds: consumer.last_ack_age.map(seconds),
            restarts: consumer.restarts,
            timeouts: consumer.timeouts,
        }
    }
}

/// Seconds, to the millisecond.
fn seconds(duration: Duration) -> f64 {
    (duration.as_millis() as f64) / 1000.0
}

/// The service's metrics in the format the scraper asked for.
#[derive(ApiResponse)]
pub(crate) enum MetricsText {
    /// OpenMetrics, for a scraper whose `Accept` names it (Prometheus does).
    #[oai(
        status = 200,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )]
    OpenMetrics(PlainText<String>),
    /// The classic Prometheus text format, for any other caller.
    #[oai(
        status = 200,
        content_type = "text/plain; version=0.0.4; charset=utf-8"
    )]
    Prometheus(PlainText<String>),
}

#[derive(ApiResponse)]
pub(crate) enum ReadyResponse {
    /// MongoDB and RabbitMQ both answer, and every consumer is connected,
    /// paused by an operator, or reconnecting within its grace.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// A dependency is down or a consumer has been disconnected too long;
    /// the body says which.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

#[OpenApi(tag = "crate::http::health::Tag::Health")]
impl HealthApi {
    /// Liveness: answers as long as the process runs.
    #[oai(path = "/health", method = "get")]
    async fn health(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
            service: self.service.into(),
        })
    }

    /// Prometheus metrics, in the classic text format unless OpenMetrics is
    /// asked for: request, event, saga and email histograms and counters;
    /// queue depths, consumers, breakers and the outbox's backlog as of
    /// now. docs/operations.md says what each means.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(
        &self,
        /// `application/openmetrics-text` for OpenMetrics; otherwise the
        /// classic text format.
        #[oai(name = "Accept")]
        accept: Header<Option<String>>,
    ) -> MetricsText {
        let openmetrics = self.render_metrics().await;
        if metrics::wants_openmetrics(accept.0.as_deref()) {
            MetricsText::OpenMetrics(PlainText(openmetrics))
        } else {
            MetricsText::Prometheus(PlainText(metrics::to_prometheus_text(&openmetrics)))
        }
    }

    /// Readiness: MongoDB and RabbitMQ are reachable, and no consumer has
    /// been disconnected for longer than `CONSUMER_READY_GRACE_SECONDS` (a
    /// paused one is not disconnected: the API keeps serving).
    #[oai(path = "/ready", method = "get")]
    async fn ready(&self) -> ReadyResponse {
        let Dependencies { mongodb, rabbitmq } =
            reuse_or_check(&self.last_check, READY_CHECK_TTL, || {
                self.check_dependencies()
            })
            .await;
        // In memory, so as of now.
        let consumers = self.consumers.snapshot(Instant::now());
        let ok = mongodb == "up"
            && rabbitmq == "up"
            && consumers_ready(&consumers, self.consumer_ready_grace);
        let body = Readiness {
            status: if ok { "ready" } else { "unavailable" }.into(),
            mongodb,
            rabbitmq,
            breakers: self
                .breakers
                .snapshot()
                .iter()
                .map(|b| (b.name().to_string(), b.state().as_str().to_string()))
                .collect(),
            consumers: consumers.into_iter().map(Into::into).collect(),
        };
        if ok {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::NotReady(Json(body))
        }
    }
}

impl HealthApi {
    /// Pings the database and the broker, each within the probes' time limit.
    async fn check_dependencies(&self) -> Dependencies {
        let (mongo, rabbit) = tokio::join!(
            tokio::time::timeout(CHECK_TIMEOUT, store::ping(&self.db)),
            tokio::time::timeout(CHECK_TIMEOUT, self.publisher.check()),
        );
        Dependencies {
            mongodb: describe("mongodb", mongo.map(|r| r.map_err(|e| e.to_string()))),
            rabbitmq: describe("rabbitmq", rabbit.map(|r| r.map_err(|e| e.to_string()))),
        }
    }

    /// The exposition for `/metrics`: what the service counted, and this
    /// moment's readings. A reading that cannot be taken within the probes'
    /// time limit is left out.
    async fn render_metrics(&self) -> String {
        let dead_letters = DeadLetterStore::new(&self.db);
        let own = async {
            match &self.gauges {
                Some(source) => tokio::time::timeout(CHECK_TIMEOUT, source.gauges())
                    .await
                    .unwrap_or_default(),
                None => Vec::new(),
            }
        };
        let consumers = self.consumers.snapshot(Instant::now());
        let queues: Vec<String> = consumers.iter().map(|c| c.queue.clone()).collect();
        let (pending, oldest, dead, depths, own) = tokio::join!(
            within_check_timeout(outbox::pending_count(&self.db)),
            within_check_timeout(outbox::oldest_age(&self.db)),
            within_check_timeout(dead_letters.dead_count()),
            within_check_timeout(self.publisher.queue_depths(&queues)),
            own,
        );
        let mut snapshot = self.metrics.snapshot();
        if let Some(n) = pending {
            snapshot.gauge(
                "outbox_pending",
                "Events written but not yet confirmed by the broker.",
                n as f64,
            );
        }
        if let Some(age) = oldest {
            snapshot.gauge(
                "outbox_oldest_age_seconds",
                "Seconds the oldest event not yet confirmed has waited; 0 when none.",
                age.map_or(0.0, seconds),
            );
        }
        if let Some(n) = dead {
            snapshot.gauge(
                "dead_letters_waiting",
                "Dead letters archived and waiting for an operator.",
                n as f64,
            );
        }
        if let Some(depths) = depths {
            let (messages, consumers) = (
                GaugeFamily::<Queue>::default(),
                GaugeFamily::<Queue>::default(),
            );
            for depth in depths {
                let queue = Queue { queue: depth.queue };
                messages
                    .get_or_create(&queue)
                    .set(f64::from(depth.messages));
                consumers
                    .get_or_create(&queue)
                    .set(f64::from(depth.consumers));
            }
            snapshot.add(
                "queue_messages",
                "Messages ready in each of the service's queues.",
                messages,
            );
            snapshot.add(
                "queue_consumers",
                "Consumers the broker counts on each of the service's queues.",
                consumers,
            );
        }
        self.breaker_metrics(&mut snapshot);
        consumer_metrics(&mut snapshot, &consumers);
        // 0 while a limit is off: nothing was refused.
        snapshot.counter(
            "http_rate_limited",
            "Requests refused with 429 by the per-address rate limit.",
            self.rate_limiter
                .as_ref()
                .map_or(0, |limiter| limiter.refused()),
        );
        snapshot.counter(
            "http_load_shed",
            "Requests refused with 503 over MAX_IN_FLIGHT_REQUESTS.",
            self.load_shedder
                .as_ref()
                .map_or(0, |shedder| shedder.shed()),
        );
        for own in own {
            snapshot.gauge(own.name, own.help, own.value);
        }
        self.metrics.render(&snapshot)
    }

    /// One series per breaker and state, 1 for the state it is in, so an
    /// alert asks `state="open"` rather than decoding a number.
    fn breaker_metrics(&self, snapshot: &mut Snapshot) {
        let (state, rejected) = (
            GaugeFamily::<BreakerState>::default(),
            Family::<BreakerName, Counter>::default(),
        );
        for breaker in self.breakers.snapshot() {
            let current = breaker.state().as_str();
            for name in ["closed", "open", "half_open"] {
                state
                    .get_or_create(&BreakerState {
                        breaker: breaker.name().to_string(),
                        state: name,
                    })
                    .set(if name == current { 1.0 } else { 0.0 });
            }
            rejected
                .get_or_create(&BreakerName {
                    breaker: breaker.name().to_string(),
                })
                .inc_by(breaker.rejected());
        }
        snapshot.add(
            "circuit_breaker_state",
            "1 for the state each circuit breaker is in (closed, open, half_open), else 0.",
            state,
        );
        snapshot.add(
            "circuit_breaker_rejected",
            "Calls a circuit breaker refused while open.",
            rejected,
        );
    }
}

/// Each consumer's state, labelled by its queue and role.
fn consumer_metrics(snapshot: &mut Snapshot, consumers: &[ConsumerSnapshot]) {
    let connected = GaugeFamily::<ConsumerLabels>::default();
    let paused = GaugeFamily::<ConsumerLabels>::default();
    let in_flight = GaugeFamily::<ConsumerLabels>::default();
    let last_ack = GaugeFamily::<ConsumerLabels>::default();
    let restarts = Family::<ConsumerLabels, Counter>::default();
    let timeouts = Family::<ConsumerLabels, Counter>::default();
    for consumer in consumers {
        let labels = ConsumerLabels {
            queue: consumer.queue.clone(),
            role: consumer.role.as_str(),
        };
        connected
            .get_or_create(&labels)
            .set(if consumer.connected { 1.0 } else { 0.0 });
        paused
            .get_or_create(&labels)
            .set(if consumer.status == ConsumerStatus::Paused {
                1.0
            } else {
                0.0
            });
        in_flight
            .get_or_create(&labels)
            .set(consumer.in_flight as f64);
        // Absent until the first ack: no value is not "long ago".
        if let Some(age) = consumer.last_ack_age {
            last_ack.get_or_create(&labels).set(seconds(age));
        }
        restarts.get_or_create(&labels).inc_by(consumer.restarts);
        timeouts.get_or_create(&labels).inc_by(consumer.timeouts);
    }
    snapshot.add(
        "consumer_connected",
        "1 while the consumer is consuming on a live channel, else 0.",
        connected,
    );
    snapshot.add(
        "consumer_paused",
        "1 while an operator's pause keeps the consumer from consuming, else 0.",
        paused,
    );
    snapshot.add(
        "consumer_in_flight",
        "Deliveries the consumer received and has not settled yet.",
        in_flight,
    );
    snapshot.add(
        "consumer_last_ack_age_seconds",
        "Seconds since the consumer last acked a delivery.",
        last_ack,
    );
    snapshot.add(
        "consumer_restarts",
        "Times the consumer task panicked and was started again.",
        restarts,
    );
    snapshot.add(
        "consumer_timeouts",
        "Reconnects after a broker step got no answer in time.",
        timeouts,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Queue {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    queue: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerState {
    breaker: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerName {
    breaker: String,
}

/// A reading, or `None` if it failed or took longer than a probe may.
async fn within_check_timeout<T, E>(count: impl Future<Output = Result<T, E>>) -> Option<T> {
    tokio::time::timeout(CHECK_TIMEOUT, count)
        .await
        .ok()
        .and_then(Result::ok)
}

/// The value in `last` while it is younger than `ttl`, else a fresh
/// `check`, kept there. The lock is held through the check, so concurrent
/// callers wait for the one check in flight and share its result.
async fn reuse_or_check<T: Clone, F: Future<Output = T>>(
    last: &Mutex<Option<(Instant, T)>>,
    ttl: Duration,
    check: impl FnOnce() -> F,
) -> T {
    let mut last = last.lock().await;
    if let Some((at, value)) = &*last
        && at.elapsed() < ttl
    {
        return value.clone();
    }
    let value = check().await;
    *last = Some((Instant::now(), value.clone()));
    value
}

/// `up`, `down: timed out` or `down: unreachable`. The driver's own
/// words go to the log, not to whoever probes: they name hosts, ports and
/// accounts.
fn describe<E>(dependency: &str, check: Result<Result<(), String>, E>) -> String {
    match check {
        Ok(Ok(())) => "up".into(),
        Ok(Err(error)) => {
            tracing::warn!(dependency, %error, "readiness check failed");
            "down: unreachable".into()
        }
        Err(_) => {
            tracing::warn!(dependency, "readiness check timed out");
            "down: timed out".into()
        }
    }
}

#[derive(poem_openapi::Tags)]
pub enum Tag {
    /// Liveness and readiness probes.
    Health,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const TTL: Duration = Duration::from_millis(100);

    /// A check that counts its calls and answers with the count.
    async fn counted(checks: &AtomicU32) -> u32 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        checks.fetch_add(1, Ordering::SeqCst) + 1
    }

    #[tokio::test]
    async fn a_probe_within_the_ttl_reuses_the_last_check_and_a_later_one_checks_again() {
        let (last, checks) = (Mutex::new(None), AtomicU32::new(0));
        let first = reuse_or_check(&last, TTL, || counted(&checks)).await;
        let second = reuse_or_check(&last, TTL, || counted(&checks)).await;
        assert_eq!((first, second), (1, 1));
        tokio::time::sleep(TTL).await;
        assert_eq!(reuse_or_check(&last, TTL, || counted(&checks)).await, 2);
    }

    #[tokio::test]
    async fn concurrent_probes_wait_for_the_check_in_flight_and_share_it() {
        let (last, checks) = (Mutex::new(None), AtomicU32::new(0));
        let probe = || reuse_or_check(&last, TTL, || counted(&checks));
        let results = tokio::join!(probe(), probe(), probe(), probe());
        assert_eq!(results, (1, 1, 1, 1));
        assert_eq!(checks.load(Ordering::SeqCst), 1);
    }
}
