//! Follows orders to their final state by listening to the events the
//! services publish anyway (`order.confirmed`, `order.rejected`,
//! `notification.sent`) on a private auto-delete queue: the load generator
//! adds no polling load to the system it measures.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};

/// When each order's outcome arrived, since the epoch.
pub type Outcomes = HashMap<String, Duration>;

/// How long connecting, declaring, binding and consuming may take together.
const SETUP_LIMIT: Duration = Duration::from_secs(20);

pub struct Follower {
    epoch: Instant,
    outcomes: Arc<Mutex<Outcomes>>,
    notifications: Arc<AtomicU64>,
    last_notification: Arc<Mutex<Option<Duration>>>,
    _connection: Connection,
}

impl Follower {
    /// Follows the outcomes on `namespace`'s exchange. Every step with the
    /// broker together has a time limit: a broker that takes the connection
    /// and then never answers (one still recovering from restarts) fails
    /// the run with a message instead of hanging it.
    pub async fn start(url: &str, namespace: &str) -> anyhow::Result<Follower> {
        tokio::time::timeout(SETUP_LIMIT, Self::subscribe(url, namespace))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "RabbitMQ at {url} did not finish setting up the follower within {} s",
                    SETUP_LIMIT.as_secs()
                )
            })?
    }

    async fn subscribe(url: &str, namespace: &str) -> anyhow::Result<Follower> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| anyhow::anyhow!("RabbitMQ at {url}: {e}"))?;
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let exchange = format!("{namespace}e-commerce.events");
        for key in ["order.confirmed", "order.rejected", "notification.sent"] {
            channel
                .queue_bind(
                    queue.name().clone(),
                    exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    anyhow::anyhow!("binding to {exchange} (are the services running?): {e}")
                })?;
        }
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "loadgen".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let epoch = Instant::now();
        let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
        let notifications = Arc::new(AtomicU64::new(0));
        let last_notification: Arc<Mutex<Option<Duration>>> = Arc::default();
        let (o, n, l) = (
            outcomes.clone(),
            notifications.clone(),
            last_notification.clone(),
        );
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let at = epoch.elapsed();
                let Ok(event) = serde_json::from_slice::<serde_json::Value>(&delivery.data) else {
                    continue;
                };
                match event["eventType"].as_str() {
                    Some("notification.sent") => {
                        n.fetch_add(1, Ordering::Relaxed);
                        *l.lock().expect("poisoned") = Some(at);
                    }
                    Some(_) => {
                        if let Some(order) = event["data"]["orderId"].as_str() {
                            o.lock()
                                .expect("poisoned")
                                .entry(order.to_string())
                                .or_insert(at);
                        }
                    }
                    None => {}
                }
            }
        });
        Ok(Follower {
            epoch,
            outcomes,
            notifications,
            last_notification,
            _connection: connection,
        })
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    pub fn outcomes(&self) -> Outcomes {
        self.outcomes.lock().expect("poisoned").clone()
    }

    /// How many of `ids` have no outcome yet.
    pub fn missing(&self, ids: &[String]) -> usize {
        let outcomes = self.outcomes.lock().expect("poisoned");
        ids.iter().filter(|id| !outcomes.contains_key(*id)).count()
    }

    pub fn notifications_sent(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }

    /// Waits until `expected` emails were sent; returns when the last one
    /// went, or `None` if they did not all go within `timeout`.
    pub async fn wait_for_notifications(
        &self,
        expected: u64,
        timeout: Duration,
    ) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        while self.notifications_sent() < expected {
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        *self.last_notification.lock().expect("poisoned")
    }
}
