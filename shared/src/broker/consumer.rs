//! The consumer loop every service runs: parse, hand to the service's handler,
//! and only then settle the delivery. Transient failures wait in a delay queue
//! (never in the consumer); permanent ones and exhausted retries go to the
//! dead-letter queue with the reason. Connection loss reconnects with
//! jittered backoff and declares the topology again. Every step with the
//! broker has a time limit, so a connection that looks alive while nothing
//! moves on it cannot wedge the consumer; each consumer reports its state
//! (for `/ready` and `/metrics`) and survives its handler's panics. An
//! operator's pause (see `crate::pauses`) stops the intake like a shutdown
//! does, settles what is in hand, cancels the AMQP consumer and waits,
//! without a connection, until it is resumed.

mod acks;
mod state;
mod supervisor;

pub(crate) use acks::Acks;

pub use state::{
    ConsumerRole, ConsumerSnapshot, ConsumerState, ConsumerStatus, Consumers, consumers_ready,
};
pub use supervisor::{panic_message, supervise};

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Outgoing, PublishOutcome, Publisher, Senders, Subscription, Topology, connect, header_string,
    header_u32, senders::broker_user, set_header, text,
};
use crate::{
    events::{ContractError, DeliveryInfo, RawEnvelope},
    metrics::{EventMetrics, EventOutcome},
    retry::{RetryDecision, RetryPolicy},
    store::StoreError,
    telemetry::{self, TRACEPARENT},
};

/// Header carrying the number of the attempt this delivery is (1 = first).
pub(crate) const ATTEMPT_HEADER: &str = "x-attempt";
pub(crate) const FIRST_FAILURE_HEADER: &str = "x-first-failure-at";
pub(crate) const LAST_FAILURE_HEADER: &str = "x-last-failure-at";
pub(crate) const LAST_ERROR_HEADER: &str = "x-last-error";
pub const REASON_HEADER: &str = "x-dead-letter-reason";
pub(crate) const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-original-routing-key";
pub(crate) const ORIGINAL_QUEUE_HEADER: &str = "x-original-queue";
/// `transient` on a dead letter whose retry budget ran out (worth another
/// try later: see `DEAD_LETTER_REDRIVES`), `permanent` on one that can never
/// succeed.
pub const FAILURE_CLASS_HEADER: &str = "x-failure-class";
/// How many times this message was sent back from the dead letters by itself.
pub(crate) const REDRIVES_HEADER: &str = "x-redrives";

/// The longest one delivery may take from receipt to ack, handler included.
/// A handler meets an unavailable database within seconds (short driver
/// timeouts, then a delay-queue retry), so only a broken channel gets here.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// The longest a connect may take (TCP, TLS, AMQP handshake): a live broker
/// answers in milliseconds, and one still booting may take the TCP
/// connection and never finish the handshake. With 15 s, one such connect
/// (chaos, RabbitMQ restarted ten times) left a queue without its consumer
/// for over 10 s; trying again sooner finds the broker up.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// The longest any other broker step may take: each is one round trip (a
/// declare, a handful) that a live broker answers in milliseconds.
pub(crate) const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Why a handler did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Will never succeed (bad payload, broken rule): dead-letter at once.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// May succeed later (database down, write conflict): retry with backoff.
    #[error("transient failure: {0}")]
    Transient(String),
}

/// An event that breaks the contract never becomes handleable; one made by
/// a newer producer is handled once an upgraded instance of this consumer
/// takes it, so it is retried meanwhile.
impl From<ContractError> for HandleError {
    fn from(error: ContractError) -> Self {
        match error {
            ContractError::NewerVersion { .. } => HandleError::Transient(error.to_string()),
            _ => HandleError::Permanent(error.to_string()),
        }
    }
}

/// The one mapping of a store outcome to what happens to the delivery: done
/// or a duplicate (ack), worth another try (a delay queue, on the retry
/// policy), or never (the dead-letter queue, with the reason).
pub fn outcome(result: Result<(), StoreError>) -> Result<(), HandleError> {
    match result {
        Ok(()) => Ok(()),
        Err(StoreError::AlreadyHandled) => {
            tracing::info!("duplicate delivery ignored");
            Ok(())
        }
        Err(e @ (StoreError::Rule(_) | StoreError::NotFound { .. } | StoreError::Taken(_))) => {
            Err(HandleError::Permanent(e.to_string()))
        }
        // Outages and lost races; and database failures we cannot tell
        // apart from an outage, which the policy's last attempt dead-letters.
        Err(e) => Err(HandleError::Transient(e.to_string())),
    }
}

/// A service's reaction to the events its queue receives. It must make its
/// effect and its inbox record durable before returning `Ok`.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, event: RawEnvelope) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// Everything a consumer needs besides its handler.
#[derive(Clone)]
pub struct ConsumerSettings {
    /// The broker: one AMQP URL, or a cluster's nodes separated by commas.
    pub url: String,
    pub name: String,
    pub topology: Topology,
    pub subscription: Subscription,
    pub policy: RetryPolicy,
    pub prefetch: u16,
    /// Where each settled delivery is counted.
    pub metrics: EventMetrics,
    /// Which broker user may send each source's events (`AMQP_SOURCE_USERS`);
    /// an event from anyone else is dead-lettered unhandled.
    pub senders: Senders,
}

/// How one delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Acked: its effect, or its retry or dead letter, is durable.
    Acked,
    /// Handed back to the queue.
    Requeued,
}

/// A queue consumed with manual acks: what to declare, and how to settle one
/// delivery. The work-queue consumer and the dead-letter archiver are both
/// one, and share the reconnecting loop below.
pub(crate) trait QueueWorker: Send + Sync {
    /// For log lines.
    fn label(&self) -> &str;
    fn topology(&self) -> &Topology;
    /// Declares what the worker needs and returns the queue to consume.
    fn declare(
        &self,
        channel: &Channel,
    ) -> impl Future<Output = Result<String, lapin::Error>> + Send;
    /// Settles one delivery through `acks` (an ack, or a nack with
    /// requeue) once its outcome is durable, publishing a next hop through
    /// `publisher` if need be. An error means the consumer must reconnect.
    fn settle(
        &self,
        delivery: Delivery,
        publisher: &Publisher,
        acks: &Acks,
    ) -> impl Future<Output = Result<Settled, ConsumerError>> + Send;
}

struct HandlerWorker<H> {
    settings: ConsumerSettings,
    handler: Arc<H>,
    /// The broker user this consumer's own republishes carry.
    own_user: String,
}

impl<H: Handler> QueueWorker for HandlerWorker<H> {
    fn label(&self) -> &str {
        self.settings.subscription.queue
    }

    fn topology(&self) -> &Topology {
        &self.settings.topology
    }

    async fn declare(&self, channel: &Channel) -> Result<String, lapin::Error> {
        let settings = &self.settings;
        settings
            .topology
            .declare_subscription(channel, &settings.subscription, &settings.policy)
            .await?;
        Ok(settings.topology.work_queue(&settings.subscription))
    }

    async fn settle(
        &self,
        delivery: Delivery,
        publisher: &Publisher,
        acks: &Acks,
    ) -> Result<Settled, ConsumerError> {
        settle(delivery, self, publisher, acks).await
    }
}

/// A step of the consume path with the broker, each under a time limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    OpenChannel,
    Declare,
    Qos,
    Consume,
    /// The basic.cancel of a pause.
    Cancel,
    PublishConfirm,
    Ack,
    /// One delivery from receipt to ack, handler included.
    Settle,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::OpenChannel => "channel open",
            Step::Declare => "declare",
            Step::Qos => "qos",
            Step::Consume => "consume",
            Step::Cancel => "cancel",
            Step::PublishConfirm => "publish confirm",
            Step::Ack => "ack",
            Step::Settle => "settle",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a consumer lost its channel and reconnects.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsumerError {
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    /// A step got no answer in time: the connection may look alive while
    /// nothing moves on it.
    #[error("{step} got no answer within {} s", limit.as_secs())]
    TimedOut { step: Step, limit: Duration },
    /// The delivery stream ended without an error: the broker cancelled
    /// the consumer (its queue was deleted, say).
    #[error("the broker cancelled the consumer")]
    Cancelled,
}

/// `operation`, or [`ConsumerError::TimedOut`] (logged as a named event)
/// once it has taken longer than `limit`.
pub(crate) async fn within<T, E: Into<ConsumerError>>(
    step: Step,
    limit: Duration,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, ConsumerError> {
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => {
            tracing::error!(
                step = step.as_str(),
                limit_ms = limit.as_millis() as u64,
                "consumer step timed out; reconnecting"
            );
            Err(ConsumerError::TimedOut { step, limit })
        }
    }
}

/// Runs until `shutdown`, reconnecting whenever the broker goes away, and
/// reports how it is doing in `state`. On shutdown it stops taking
/// deliveries and finishes the ones in hand; on a pause asked for in
/// `state`, too, and then waits until it is resumed.
pub async fn run_consumer<H: Handler>(
    settings: ConsumerSettings,
    handler: Arc<H>,
    state: Arc<ConsumerState>,
    shutdown: CancellationToken,
) {
    let (url, name, prefetch) = (
        settings.url.clone(),
        settings.name.clone(),
        settings.prefetch,
    );
    let worker = HandlerWorker {
        own_user: broker_user(&settings.url),
        settings,
        handler,
    };
    run_worker(&url, &name, prefetch, &worker, &state, shutdown).await;
}

pub(crate) async fn run_worker<W: QueueWorker>(
    url: &str,
    name: &str,
    prefetch: u16,
    worker: &W,
    state: &ConsumerState,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("consumer", queue = worker.label());
    // Retries and dead letters go out on a connection of their own, so a
    // consumer channel in trouble cannot hold up the next hop's publish,
    // nor a stuck publish the consumer's channel. It reconnects by itself.
    let next_hops = Publisher::new(url, &format!("{name}-next-hop"), worker.topology().clone());
    let mut backoff = reconnect_backoff();
    while !shutdown.is_cancelled() {
        if state.pause_requested() {
            // Nothing is held here: the session before settled what it had,
            // and closing its connection gave back what it had not taken.
            // (Asked for while disconnected, or at start, it pauses here.)
            state.paused();
            // Its next-hop connection too: a paused consumer holds none.
            next_hops.close().await;
            tracing::info!(queue = worker.label(), "consumer paused");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = state.until_resume_requested() => {}
            }
            tracing::info!(queue = worker.label(), "consumer resumed");
            backoff = reconnect_backoff();
            continue;
        }
        // Out of a pause, this loop's or the one the last session ended
        // with: disconnected from now until the broker takes the consumer.
        state.resumed();
        let consumed =
            consume_until_broken(url, name, prefetch, worker, &next_hops, state, &shutdown)
                .instrument(span.clone())
                .await;
        // A session that held its channel a while starts the backoff over,
        // so each broker restart in a row is met as quickly as the first
        // (otherwise the tenth waited 6 s before even trying); one closed
        // as soon as it opened keeps backing off.
        if state
            .take_session_age()
            .is_some_and(|age| age >= HEALTHY_SESSION)
        {
            backoff = reconnect_backoff();
        }
        match consumed {
            Ok(()) => backoff = reconnect_backoff(),
            Err(error) => {
                if let ConsumerError::TimedOut { .. } = error {
                    state.timed_out();
                    // It may be the next-hop connection that stopped answering.
                    next_hops.reset().await;
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(
                    queue = worker.label(),
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "consumer lost RabbitMQ; reconnecting"
                );
                // A pause during an outage applies at once.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = state.until_pause_requested() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    next_hops.close().await;
    tracing::info!(queue = worker.label(), "consumer stopped");
}

/// A session that held its channel this long was a working one.
const HEALTHY_SESSION: Duration = Duration::from_secs(2);

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        // A restarted broker is back within seconds; keep the gap short.
        // Jitter adds up to the delay again, so gaps stay under 3 s (with a
        // 3 s maximum they reached 5.5 s).
        .with_max_delay(Duration::from_millis(1500))
        .without_max_times()
        .build()
}

async fn consume_until_broken<W: QueueWorker>(
    url: &str,
    name: &str,
    prefetch: u16,
    worker: &W,
    next_hops: &Publisher,
    state: &ConsumerState,
    shutdown: &CancellationToken,
) -> Result<(), ConsumerError> {
    let connection = connect(url, name, CONNECT_LIMIT).await?;
    let consumed = consume(
        &connection,
        name,
        prefetch,
        worker,
        next_hops,
        state,
        shutdown,
    )
    .await;
    state.disconnected();
    // Bounded too: a close on a dead connection may never be answered, and
    // dropping the connection closes it all the same.
    let _ = tokio::time::timeout(
        STEP_LIMIT,
        connection.close(200, "consumer stopping".into()),
    )
    .await;
    consumed
}

async fn consume<W: QueueWorker>(
    connection: &Connection,
    name: &str,
    prefetch: u16,
    worker: &W,
    next_hops: &Publisher,
    state: &ConsumerState,
    shutdown: &CancellationToken,
) -> Result<(), ConsumerError> {
    let channel = within(Step::OpenChannel, STEP_LIMIT, connection.create_channel()).await?;
    let queue = within(Step::Declare, STEP_LIMIT, worker.declare(&channel)).await?;
    within(
        Step::Qos,
        STEP_LIMIT,
        channel.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    let mut consumer = within(
        Step::Consume,
        STEP_LIMIT,
        channel.basic_consume(
            queue.as_str().into(),
            name.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    state.connected();
    tracing::info!(%queue, prefetch, "consuming");

    // The first failure, which stops the intake; the deliveries in hand
    // are finished (each within its limits), the rest the broker redelivers.
    let failure: std::sync::Mutex<Option<ConsumerError>> = Default::default();
    let broken = CancellationToken::new();
    let fail = |error: ConsumerError| {
        failure.lock().expect("poisoned").get_or_insert(error);
        state.disconnected();
        broken.cancel();
    };
    // The connection's own report that it broke. The delivery stream of a
    // dead connection did not always end while deliveries were in flight,
    // which once left a consumer waiting forever after a broker restart.
    let mut events = connection.events_listener();
    let paused_by_operator = std::sync::atomic::AtomicBool::new(false);
    let stop_taking = async {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = broken.cancelled() => {}
            _ = state.until_pause_requested() => {
                paused_by_operator.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Some(error) = async {
                while let Some(event) = events.next().await {
                    if let lapin::Event::Error(error) = event {
                        return Some(error);
                    }
                }
                None
            } => fail(error.into()),
        }
    };
    let acks = Acks::new(channel.clone());
    // Borrowed, so that a pause can cancel it once the intake is done.
    let deliveries = (&mut consumer)
        .take_until(stop_taking)
        .take_while(|delivery| {
            let ok = delivery.is_ok();
            if let Err(error) = delivery {
                fail(error.clone().into());
            }
            futures::future::ready(ok)
        })
        // In arrival order, before any is handled: an ack may cover only
        // the deliveries it knows are done.
        .inspect(|delivery| {
            if let Ok(delivery) = delivery {
                acks.received(delivery);
            }
        })
        .for_each_concurrent(prefetch as usize, |delivery| async {
            let Ok(delivery) = delivery else { return };
            let _in_hand = state.delivery_started();
            // Every settle ends: on a dead channel an ack or a confirm
            // may never be answered, and the broker redelivers whatever
            // we leave unacked once the connection is gone.
            match within(
                Step::Settle,
                SETTLE_LIMIT,
                worker.settle(delivery, next_hops, &acks),
            )
            .await
            {
                Ok(Settled::Acked) => state.acked(),
                Ok(Settled::Requeued) => {}
                Err(error) => fail(error),
            }
        });
    // The acks go out from beside the deliveries; one that fails breaks
    // the channel, which stops the intake.
    let sending = async {
        if let Err(error) = acks.send().await {
            fail(error);
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = deliveries => {}
        _ = sending => {}
    }
    // What the deliveries left done (the last batch before a shutdown).
    if let Err(error) = acks.flush().await {
        tracing::warn!(%error, "could not send the last acks; the broker redelivers those deliveries");
    }

    let failure = failure.lock().expect("poisoned").take();
    match failure {
        _ if shutdown.is_cancelled() => Ok(()),
        Some(error) => Err(error),
        None if paused_by_operator.into_inner() => {
            // What is in hand is settled and acked: the broker stops
            // sending, and closing the connection gives back what arrived
            // but was not taken. Nothing stays unacked while paused.
            within(
                Step::Cancel,
                STEP_LIMIT,
                channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
            )
            .await?;
            // Paused from here: the broker sends nothing more. The answer
            // to the operator does not wait for the connection's close.
            state.paused();
            tracing::info!(%queue, "consumer cancelled for a pause");
            Ok(())
        }
        None => Err(ConsumerError::Cancelled),
    }
}

/// Handles one delivery and acks it only after its effect (or its retry or
/// dead letter) is durable. A handler that panics has failed transiently:
/// the delivery takes the retry path, so it is neither lost nor retried
/// forever, and the consumer carries on.
async fn settle<H: Handler>(
    delivery: Delivery,
    worker: &HandlerWorker<H>,
    next_hops: &Publisher,
    acks: &Acks,
) -> Result<Settled, ConsumerError> {
    let (settings, handler) = (&worker.settings, &worker.handler);
    let received = std::time::Instant::now();
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let attempt = header_u32(&headers, ATTEMPT_HEADER).unwrap_or(1).max(1);
    let first_failure_at = header_string(&headers, FIRST_FAILURE_HEADER)
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| at.with_timezone(&Utc));
    let parsed = RawEnvelope::parse(&delivery.data);
    // What the metrics call it; a fixed word for a body that could not be
    // read, whose routing key may be anything a stray publisher chose.
    let event_type = match &parsed {
        Ok(event) => event.event_type.clone(),
        Err(_) => "unreadable".to_string(),
    };

    let span = match &parsed {
        Ok(event) => tracing::info_span!(
            "event",
            event_type = %event.event_type,
            event_id = %event.event_id,
            correlation_id = %event.correlation_id,
            attempt,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        ),
        Err(_) => tracing::info_span!(
            "event",
            event_type = %event_type,
            attempt,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        ),
    };
    // The handling is a span of the trace that caused the event, and what
    // it emits is caused in that span.
    telemetry::continue_trace(&span, header_string(&headers, TRACEPARENT).as_deref());

    let refusal = parsed.as_ref().ok().and_then(|event| {
        settings.senders.refusal(
            &event.source,
            delivery
                .properties
                .user_id()
                .as_ref()
                .map(|user| user.as_str()),
            &worker.own_user,
        )
    });
    let outcome = match (parsed, refusal) {
        (Err(error), _) => Err(HandleError::Permanent(error.to_string())),
        (Ok(_), Some(reason)) => {
            span.in_scope(|| tracing::warn!(%reason, "event refused: not from its source"));
            Err(HandleError::Permanent(reason))
        }
        (Ok(mut event), None) => {
            event.traceparent = telemetry::traceparent_of(&span);
            event.delivery = DeliveryInfo {
                attempt,
                first_failure_at,
                last_error: header_string(&headers, LAST_ERROR_HEADER),
            };
            async {
                match AssertUnwindSafe(handler.handle(event)).catch_unwind().await {
                    Ok(outcome) => outcome,
                    Err(panic) => {
                        let message = panic_message(panic.as_ref());
                        tracing::error!(panic = %message, "handler panicked; treating it as a transient failure");
                        Err(HandleError::Transient(format!("handler panicked: {message}")))
                    }
                }
            }
            .instrument(span.clone())
            .await
        }
    };

    let (next_hop, counted) = match outcome {
        Ok(()) => (None, Counted::Done),
        Err(HandleError::Permanent(reason)) => (
            Some(dead_letter(
                &delivery,
                settings,
                &headers,
                attempt,
                &reason,
                "permanent",
            )),
            Counted::DeadLetter("permanent"),
        ),
        Err(HandleError::Transient(reason)) => {
            let failing_for = first_failure_at
                .and_then(|at| (Utc::now() - at).to_std().ok())
                .unwrap_or_default();
            match settings.policy.decide_now(attempt, failing_for) {
                RetryDecision::RetryAfter(delay) => {
                    tracing::warn!(attempt, %reason, delay_ms = delay.as_millis() as u64, "handler failed; retrying later");
                    (
                        Some(retry_later(
                            &delivery, settings, &headers, attempt, &reason, delay,
                        )),
                        Counted::Retry,
                    )
                }
                RetryDecision::GiveUp => (
                    Some(dead_letter(
                        &delivery,
                        settings,
                        &headers,
                        attempt,
                        &format!(
                            "gave up after {attempt} attempts in {} s: {reason}",
                            failing_for.as_secs()
                        ),
                        "transient",
                    )),
                    Counted::DeadLetter("transient"),
                ),
            }
        }
    };

    if let Some(message) = next_hop {
        match within(Step::PublishConfirm, STEP_LIMIT, next_hops.publish(message)).await? {
            PublishOutcome::Confirmed => {}
            outcome => {
                // Not stored anywhere else yet: hand it back to the queue.
                tracing::error!(?outcome, "could not park a failed delivery; requeueing");
                return acks.requeue(&delivery).await;
            }
        }
    }
    crate::crash_point!("consumer.before_ack");
    let settled = acks.ack(&delivery);
    // Counted once settled: a delivery whose next hop failed comes back.
    let outcome = match counted {
        Counted::Done => EventOutcome::done,
        Counted::Retry => {
            settings.metrics.retried(&event_type);
            EventOutcome::retry
        }
        Counted::DeadLetter(class) => {
            settings.metrics.dead_lettered(&event_type, class);
            EventOutcome::dead_letter
        }
    };
    let took = received.elapsed();
    settings.metrics.record(&event_type, outcome, took);
    span.in_scope(|| {
        tracing::debug!(
            outcome = ?outcome,
            duration_ms = took.as_secs_f64() * 1000.0,
            "event settled"
        )
    });
    Ok(settled)
}

/// Where a delivery went, for the metrics.
enum Counted {
    Done,
    Retry,
    /// With its class, `permanent` or `transient`.
    DeadLetter(&'static str),
}

fn failure_headers(
    delivery: &Delivery,
    settings: &ConsumerSettings,
    headers: &FieldTable,
    reason: &str,
) -> FieldTable {
    let now = Utc::now().to_rfc3339();
    let mut next = headers.clone();
    if header_string(headers, FIRST_FAILURE_HEADER).is_none() {
        set_header(&mut next, FIRST_FAILURE_HEADER, text(now.clone()));
    }
    set_header(&mut next, LAST_FAILURE_HEADER, text(now));
    set_header(&mut next, LAST_ERROR_HEADER, text(truncate(reason, 1000)));
    if header_string(headers, ORIGINAL_ROUTING_KEY_HEADER).is_none() {
        set_header(
            &mut next,
            ORIGINAL_ROUTING_KEY_HEADER,
            text(delivery.routing_key.to_string()),
        );
    }
    set_header(
        &mut next,
        ORIGINAL_QUEUE_HEADER,
        text(settings.topology.work_queue(&settings.subscription)),
    );
    next
}

fn retry_later(
    delivery: &Delivery,
    settings: &ConsumerSettings,
    headers: &FieldTable,
    attempt: u32,
    reason: &str,
    delay: Duration,
) -> Outgoing {
    let mut headers = failure_headers(delivery, settings, headers, reason);
    set_header(
        &mut headers,
        ATTEMPT_HEADER,
        AMQPValue::LongUInt(attempt + 1),
    );
    reroute(
        delivery,
        String::new(),
        settings.topology.delay_queue(&settings.subscription, delay),
        headers,
    )
}

fn dead_letter(
    delivery: &Delivery,
    settings: &ConsumerSettings,
    headers: &FieldTable,
    attempt: u32,
    reason: &str,
    class: &str,
) -> Outgoing {
    tracing::error!(attempt, %reason, class, "dead-lettering message");
    let mut headers = failure_headers(delivery, settings, headers, reason);
    set_header(&mut headers, REASON_HEADER, text(truncate(reason, 1000)));
    set_header(&mut headers, FAILURE_CLASS_HEADER, text(class));
    set_header(&mut headers, ATTEMPT_HEADER, AMQPValue::LongUInt(attempt));
    reroute(
        delivery,
        settings.topology.dead_letter_exchange(),
        settings.topology.work_queue(&settings.subscription),
        headers,
    )
}

/// A copy of `delivery` (same body and ids) bound somewhere else.
fn reroute(
    delivery: &Delivery,
    exchange: String,
    routing_key: String,
    headers: FieldTable,
) -> Outgoing {
    let property =
        |value: &Option<lapin::types::ShortString>| value.as_ref().map(|s| s.to_string());
    Outgoing {
        exchange,
        routing_key,
        payload: delivery.data.clone(),
        headers,
        message_id: property(delivery.properties.message_id()),
        correlation_id: property(delivery.properties.correlation_id()),
        // Delay queues and DLQs always exist: a return means the topology is broken.
        mandatory: true,
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}
