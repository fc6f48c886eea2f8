//! What the broker tests share: where RabbitMQ is, an event to publish,
//! and a bounded wait.

#![allow(dead_code)] // each test binary uses its own part

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lapin::{
    Connection,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions},
    types::FieldTable,
};
use shared::{
    CancellationToken,
    broker::{
        HandleError, Handler, Outgoing, PublishOutcome, Publisher, Senders, Topology,
        consumer::{ConsumerRole, ConsumerSettings, ConsumerState},
        run_consumer,
        topology::QueueType,
    },
    events::{RawEnvelope, ToOrderService},
    metrics::EventMetrics,
    retry::RetryPolicy,
};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub fn rabbitmq_url() -> String {
    std::env::var("RABBITMQ_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Retries a test can wait for: a 100 ms first delay, a 5 s budget.
pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_secs(5),
        base: Duration::from_millis(100),
        cap: Duration::from_millis(200),
    }
}

/// An `inventory.reserved` event with `id`, for the default exchange: the
/// caller sets the routing key to the queue.
pub fn event(id: Uuid) -> Outgoing {
    let body = serde_json::json!({
        "eventId": id,
        "eventType": "inventory.reserved",
        "eventVersion": 1,
        "occurredAt": chrono::Utc::now(),
        "correlationId": format!("corr-{id}"),
        "causationId": null,
        "source": "shared-broker-test",
        "data": {},
    });
    Outgoing {
        exchange: String::new(),
        routing_key: String::new(),
        payload: serde_json::to_vec(&body).unwrap(),
        headers: FieldTable::default(),
        message_id: Some(id.to_string()),
        correlation_id: Some(format!("corr-{id}")),
        mandatory: true,
    }
}

pub async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A handler that records the id of every event it is given.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Uuid>>);

impl Handler for Recorder {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        self.0.lock().unwrap().push(event.event_id);
        Ok(())
    }
}

/// The order service's consumer, on a namespace of its own, running
/// `handler`; and a publisher straight to its work queue.
pub struct Running {
    pub topology: Topology,
    pub queue: String,
    pub state: Arc<ConsumerState>,
    pub metrics: EventMetrics,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    pub publisher: Arc<Publisher>,
}

impl Running {
    /// Starts the consumer and waits until it consumes.
    pub async fn start<H: Handler>(
        test: &str,
        queue_type: QueueType,
        policy: RetryPolicy,
        prefetch: u16,
        handler: Arc<H>,
    ) -> Running {
        let address = rabbitmq_url();
        Self::start_at(
            &address,
            Senders::default(),
            test,
            queue_type,
            policy,
            prefetch,
            handler,
        )
        .await
    }

    /// [`Running::start`] with the consumer and the publisher given the
    /// broker `address` (one URL, or several nodes' separated by commas),
    /// and the consumer checking event sources with `senders`.
    pub async fn start_at<H: Handler>(
        address: &str,
        senders: Senders,
        test: &str,
        queue_type: QueueType,
        policy: RetryPolicy,
        prefetch: u16,
        handler: Arc<H>,
    ) -> Running {
        let namespace = format!("t-{}.", &Uuid::new_v4().simple().to_string()[..12]);
        let topology = Topology::new(&namespace)
            .with_queue_expiry(Some(Duration::from_secs(900)))
            .with_queue_type(queue_type);
        let queue = topology.work_queue(&ToOrderService::SUBSCRIPTION);
        let state = Arc::new(ConsumerState::new(queue.clone(), ConsumerRole::Work));
        let shutdown = CancellationToken::new();
        let metrics = EventMetrics::default();
        let task = tokio::spawn(run_consumer(
            ConsumerSettings {
                url: address.to_string(),
                name: format!("{namespace}{test}"),
                topology: topology.clone(),
                subscription: ToOrderService::SUBSCRIPTION,
                policy,
                prefetch,
                metrics: metrics.clone(),
                senders,
            },
            handler,
            state.clone(),
            shutdown.clone(),
        ));
        wait_for("the consumer connected", || {
            state.snapshot(Instant::now()).connected.then_some(())
        })
        .await;
        let publisher = Publisher::new(address, test, topology.clone());
        Running {
            topology,
            queue,
            state,
            metrics,
            shutdown,
            task,
            publisher,
        }
    }

    /// The first message in the work queue's dead-letter queue, acked,
    /// waiting up to 20 s for one.
    pub async fn take_dead_letter(&self) -> BasicGetMessage {
        let connection = Connection::connect(&rabbitmq_url(), Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let dlq = self
            .topology
            .dead_letter_queue(&ToOrderService::SUBSCRIPTION);
        let deadline = Instant::now() + Duration::from_secs(20);
        let dead = loop {
            assert!(Instant::now() < deadline, "nothing reached {dlq}");
            if let Some(dead) = channel
                .basic_get(dlq.as_str().into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                break dead;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        dead.ack(BasicAckOptions::default()).await.unwrap();
        let _ = connection.close(200, "done".into()).await;
        dead
    }

    /// Publishes the event `id` to the work queue, confirmed.
    pub async fn publish(&self, id: Uuid) {
        let mut message = event(id);
        message.routing_key = self.queue.clone();
        assert_eq!(
            self.publisher.publish(message).await.unwrap(),
            PublishOutcome::Confirmed
        );
    }
}
