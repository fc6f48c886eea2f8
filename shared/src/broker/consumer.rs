//! The consumer loop every service runs: parse, hand to the service's handler,
//! and only then settle the delivery. Transient failures wait in a delay queue
//! (never in the consumer); permanent ones and exhausted retries go to the
//! dead-letter queue with the reason. Connection loss reconnects with
//! jittered backoff and declares the topology again.

mod state;
mod supervisor;

pub use state::{ConsumerRole, ConsumerSnapshot, ConsumerState, Consumers, consumers_ready};
pub use supervisor::{panic_message, supervise};

use std::{future::Future, sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use futures::StreamExt;
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Outgoing, PublishOutcome, Publisher, Subscription, Topology, connection_properties,
    header_string, header_u32, set_header, text,
};
use crate::{
    events::{ContractError, RawEnvelope},
    retry::{RetryDecision, RetryPolicy},
    store::StoreError,
};

/// Header carrying the number of the attempt this delivery is (1 = first).
pub const ATTEMPT_HEADER: &str = "x-attempt";
pub const FIRST_FAILURE_HEADER: &str = "x-first-failure-at";
pub const LAST_FAILURE_HEADER: &str = "x-last-failure-at";
pub const LAST_ERROR_HEADER: &str = "x-last-error";
pub const REASON_HEADER: &str = "x-dead-letter-reason";
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-original-routing-key";
pub const ORIGINAL_QUEUE_HEADER: &str = "x-original-queue";
/// `transient` on a dead letter whose retry budget ran out (worth another
/// try later: see `DEAD_LETTER_REDRIVES`), `permanent` on one that can never
/// succeed.
pub const FAILURE_CLASS_HEADER: &str = "x-failure-class";
/// How many times this message was sent back from the dead letters by itself.
pub const REDRIVES_HEADER: &str = "x-redrives";

/// The longest one delivery may take from receipt to ack, handler included.
/// A handler meets an unavailable database within seconds (short driver
/// timeouts, then a delay-queue retry), so only a broken channel gets here.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

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

/// An event that breaks the contract never becomes handleable.
impl From<ContractError> for HandleError {
    fn from(error: ContractError) -> Self {
        HandleError::Permanent(error.to_string())
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
    pub url: String,
    pub name: String,
    pub topology: Topology,
    pub subscription: Subscription,
    pub policy: RetryPolicy,
    pub prefetch: u16,
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
    /// Settles one delivery (ack, or nack with requeue) once its outcome is
    /// durable. An error means the channel is unusable.
    fn settle(
        &self,
        delivery: Delivery,
        publisher: &Publisher,
    ) -> impl Future<Output = Result<(), lapin::Error>> + Send;
}

struct HandlerWorker<H> {
    settings: ConsumerSettings,
    handler: Arc<H>,
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

    async fn settle(&self, delivery: Delivery, publisher: &Publisher) -> Result<(), lapin::Error> {
        settle(delivery, &self.settings, &self.handler, publisher).await
    }
}

/// Runs until `shutdown`, reconnecting whenever the broker goes away. On
/// shutdown it stops taking deliveries and finishes the ones in hand.
pub async fn run_consumer<H: Handler>(
    settings: ConsumerSettings,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let (url, name, prefetch) = (
        settings.url.clone(),
        settings.name.clone(),
        settings.prefetch,
    );
    let worker = HandlerWorker { settings, handler };
    run_worker(&url, &name, prefetch, &worker, shutdown).await;
}

pub(crate) async fn run_worker<W: QueueWorker>(
    url: &str,
    name: &str,
    prefetch: u16,
    worker: &W,
    shutdown: CancellationToken,
) {
    let mut backoff = reconnect_backoff();
    while !shutdown.is_cancelled() {
        match consume_until_broken(url, name, prefetch, worker, &shutdown).await {
            Ok(()) => backoff = reconnect_backoff(),
            Err(error) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(
                    queue = worker.label(),
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "consumer lost RabbitMQ; reconnecting"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::info!(queue = worker.label(), "consumer stopped");
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        // A restarted broker is back within seconds; keep the gap short.
        .with_max_delay(Duration::from_secs(3))
        .without_max_times()
        .build()
}

async fn consume_until_broken<W: QueueWorker>(
    url: &str,
    name: &str,
    prefetch: u16,
    worker: &W,
    shutdown: &CancellationToken,
) -> Result<(), lapin::Error> {
    let connection = Connection::connect(url, connection_properties(name)).await?;
    let channel = connection.create_channel().await?;
    let queue = worker.declare(&channel).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    // Retries and dead letters go out on their own confirmed channel, so a
    // delivery is acked only once its next hop is safely stored.
    let publisher = Publisher::from_connection(&connection, worker.topology()).await?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            name.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(%queue, prefetch, "consuming");

    let failure: Arc<std::sync::Mutex<Option<lapin::Error>>> = Default::default();
    // The connection's own report that it broke. The delivery stream of a
    // dead connection did not always end while deliveries were in flight,
    // which once left a consumer waiting forever after a broker restart.
    let mut events = connection.events_listener();
    let stop_taking = {
        let failure = failure.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                Some(error) = async {
                    while let Some(event) = events.next().await {
                        if let lapin::Event::Error(error) = event {
                            return Some(error);
                        }
                    }
                    None
                } => {
                    failure.lock().expect("poisoned").replace(error);
                }
            }
        }
    };
    consumer
        .take_until(stop_taking)
        .take_while(|delivery| {
            let ok = delivery.is_ok();
            if let Err(error) = delivery {
                failure.lock().expect("poisoned").replace(error.clone());
            }
            futures::future::ready(ok)
        })
        .for_each_concurrent(prefetch as usize, |delivery| {
            let publisher = &publisher;
            let failure = failure.clone();
            async move {
                let Ok(delivery) = delivery else { return };
                // Every settle ends: on a dead channel an ack or a confirm
                // may never be answered, and the broker redelivers whatever
                // we leave unacked once the connection is gone.
                let settled =
                    tokio::time::timeout(SETTLE_LIMIT, worker.settle(delivery, publisher));
                let error = match settled.await {
                    Ok(Ok(())) => return,
                    Ok(Err(error)) => error,
                    Err(_) => {
                        tracing::error!(
                            limit_s = SETTLE_LIMIT.as_secs(),
                            "a delivery was not settled in time; reconnecting"
                        );
                        closed()
                    }
                };
                failure.lock().expect("poisoned").replace(error);
            }
        })
        .await;

    let _ = connection.close(200, "consumer stopping".into()).await;
    match failure.lock().expect("poisoned").take() {
        Some(error) if !shutdown.is_cancelled() => Err(error),
        _ if shutdown.is_cancelled() => Ok(()),
        // The stream ended without an error: the broker cancelled us.
        _ => Err(closed()),
    }
}

fn closed() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
        lapin::ConnectionState::Closed,
    ))
}

/// Handles one delivery and acks it only after its effect (or its retry or
/// dead letter) is durable.
async fn settle<H: Handler>(
    delivery: Delivery,
    settings: &ConsumerSettings,
    handler: &Arc<H>,
    publisher: &Publisher,
) -> Result<(), lapin::Error> {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let attempt = header_u32(&headers, ATTEMPT_HEADER).unwrap_or(1).max(1);

    let outcome = match RawEnvelope::parse(&delivery.data) {
        Err(error) => Err(HandleError::Permanent(error.to_string())),
        Ok(event) => {
            let span = tracing::info_span!(
                "event",
                event_type = %event.event_type,
                event_id = %event.event_id,
                correlation_id = %event.correlation_id,
                attempt,
            );
            handler.handle(event).instrument(span).await
        }
    };

    let next_hop = match outcome {
        Ok(()) => None,
        Err(HandleError::Permanent(reason)) => Some(dead_letter(
            &delivery,
            settings,
            &headers,
            attempt,
            &reason,
            "permanent",
        )),
        Err(HandleError::Transient(reason)) => {
            let failing_for = header_string(&headers, FIRST_FAILURE_HEADER)
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
                .and_then(|at| (Utc::now() - at.with_timezone(&Utc)).to_std().ok())
                .unwrap_or_default();
            match settings.policy.decide_now(attempt, failing_for) {
                RetryDecision::RetryAfter(delay) => {
                    tracing::warn!(attempt, %reason, delay_ms = delay.as_millis() as u64, "handler failed; retrying later");
                    Some(retry_later(
                        &delivery, settings, &headers, attempt, &reason, delay,
                    ))
                }
                RetryDecision::GiveUp => Some(dead_letter(
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
            }
        }
    };

    if let Some(message) = next_hop {
        match publisher.publish(message).await? {
            PublishOutcome::Confirmed => {}
            outcome => {
                // Not stored anywhere else yet: hand it back to the queue.
                tracing::error!(?outcome, "could not park a failed delivery; requeueing");
                return delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ());
            }
        }
    }
    fail::fail_point!("consumer.before_ack", |_| crate::fault::crash(
        "consumer.before_ack"
    ));
    delivery.ack(BasicAckOptions::default()).await.map(|_| ())
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
