//! Exchange and queue names, and which queue listens to which routing key.
//!
//! ```text
//! publisher ──▶ e-commerce.events (topic) ──▶ <service>.events ──▶ consumer
//!                                                 ▲          │ transient failure
//!                     TTL expires, back to work   │          ▼
//!                                        <service>.events.retry.<ms> (one per tier)
//!  permanent failure / attempts used up:
//!   consumer ──▶ e-commerce.dlx (direct) ──▶ <service>.events.dlq
//! ```

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::{events::SUBSCRIPTIONS, retry::RetryPolicy};

/// A service's work queue and the routing keys bound to it (each service's
/// comes from the typed contract: `SUBSCRIPTION` of its inbound enum in
/// [`crate::events`]).
#[derive(Clone, Copy, Debug)]
pub struct Subscription {
    pub queue: &'static str,
    pub routing_keys: &'static [&'static str],
}

/// Whether some service consumes this routing key. Such events are published
/// `mandatory`: if the broker cannot route one (a queue was deleted), the
/// outbox keeps it and tries again instead of counting it as delivered.
pub(crate) fn has_subscriber(routing_key: &str) -> bool {
    SUBSCRIPTIONS
        .iter()
        .any(|s| s.routing_keys.contains(&routing_key))
}

/// The kind of queue we declare (`AMQP_QUEUE_TYPE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    /// A queue on one node: right for a single broker, which is what the
    /// dev setup and the tests run.
    #[default]
    Classic,
    /// A Raft-replicated queue: survives the loss of a minority of a
    /// cluster's nodes. What a RabbitMQ cluster in production should use.
    Quorum,
}

impl std::str::FromStr for QueueType {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            _ => Err("must be classic or quorum"),
        }
    }
}

/// Names of everything we declare, under an optional namespace prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    namespace: String,
    queue_expiry: Option<Duration>,
    queue_type: QueueType,
}

impl Topology {
    pub fn new(namespace: &str) -> Self {
        Topology {
            namespace: namespace.to_string(),
            queue_expiry: None,
            queue_type: QueueType::Classic,
        }
    }

    /// Queues are declared as this type. A queue keeps the type it was
    /// first declared with: switching an existing broker means deleting the
    /// queues (once drained) or moving to a new vhost.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Queues that nobody consumes or declares for this long are deleted by
    /// the broker (`x-expires`). Only for throwaway namespaces (tests,
    /// benchmarks): every durable queue left behind costs RabbitMQ time at
    /// each boot, and a few thousand of them kept it from starting at all.
    pub fn with_queue_expiry(mut self, expiry: Option<Duration>) -> Self {
        self.queue_expiry = expiry;
        self
    }

    /// Arguments every queue we declare carries.
    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(expiry) = self.queue_expiry {
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(expiry.as_millis() as i64),
            );
        }
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), string("quorum".into()));
            // A quorum queue dead-letters at most once by default: a message
            // on its way from a delay queue back to work, or from work to
            // the DLQ, would be lost if a node failed in between. At least
            // once needs reject-publish overflow; the queues have no length
            // limit, so nothing is ever rejected for it.
            args.insert(
                "x-dead-letter-strategy".into(),
                string("at-least-once".into()),
            );
            args.insert("x-overflow".into(), string("reject-publish".into()));
        }
        args
    }

    pub fn events_exchange(&self) -> String {
        format!("{}e-commerce.events", self.namespace)
    }

    pub(crate) fn dead_letter_exchange(&self) -> String {
        format!("{}e-commerce.dlx", self.namespace)
    }

    pub fn work_queue(&self, subscription: &Subscription) -> String {
        format!("{}{}", self.namespace, subscription.queue)
    }

    pub fn dead_letter_queue(&self, subscription: &Subscription) -> String {
        format!("{}.dlq", self.work_queue(subscription))
    }

    pub(crate) fn delay_queue(&self, subscription: &Subscription, tier: Duration) -> String {
        format!(
            "{}.retry.{}ms",
            self.work_queue(subscription),
            tier.as_millis()
        )
    }

    pub(crate) async fn declare_exchanges(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await
    }

    /// Declares the work queue with its bindings, its dead-letter queue and a
    /// delay queue per retry tier. Declarations are idempotent, so this runs
    /// on every (re)connect.
    pub async fn declare_subscription(
        &self,
        channel: &Channel,
        subscription: &Subscription,
        policy: &RetryPolicy,
    ) -> Result<(), lapin::Error> {
        self.declare_exchanges(channel).await?;
        let work = self.work_queue(subscription);
        let dlq = self.dead_letter_queue(subscription);
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };

        // A nack without requeue (which our consumer never sends on purpose)
        // still ends in the DLQ rather than vanishing.
        let mut work_args = self.queue_args();
        work_args.insert(
            "x-dead-letter-exchange".into(),
            string(self.dead_letter_exchange()),
        );
        work_args.insert("x-dead-letter-routing-key".into(), string(work.clone()));
        channel
            .queue_declare(work.as_str().into(), durable, work_args)
            .await?;
        for key in subscription.routing_keys {
            channel
                .queue_bind(
                    work.as_str().into(),
                    self.events_exchange().into(),
                    ShortString::from(*key),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }

        channel
            .queue_declare(dlq.as_str().into(), durable, self.queue_args())
            .await?;
        channel
            .queue_bind(
                dlq.as_str().into(),
                self.dead_letter_exchange().into(),
                work.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        for tier in policy.tiers() {
            let mut args = self.queue_args();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(tier.as_millis() as i64),
            );
            // The default exchange routes by queue name: back to the work queue.
            args.insert("x-dead-letter-exchange".into(), string(String::new()));
            args.insert("x-dead-letter-routing-key".into(), string(work.clone()));
            channel
                .queue_declare(
                    self.delay_queue(subscription, tier).as_str().into(),
                    durable,
                    args,
                )
                .await?;
        }
        Ok(())
    }
}

fn string(value: String) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace() {
        let t = Topology::new("t1.");
        assert_eq!(t.events_exchange(), "t1.e-commerce.events");
        assert_eq!(
            t.work_queue(&crate::events::ToInventoryService::SUBSCRIPTION),
            "t1.inventory-service.events"
        );
        assert_eq!(
            t.delay_queue(
                &crate::events::ToInventoryService::SUBSCRIPTION,
                Duration::from_secs(2)
            ),
            "t1.inventory-service.events.retry.2000ms"
        );
        assert_eq!(
            t.dead_letter_queue(&crate::events::ToInventoryService::SUBSCRIPTION),
            "t1.inventory-service.events.dlq"
        );
    }

    #[test]
    fn quorum_queues_say_so_and_dead_letter_at_least_once() {
        assert!(Topology::new("").queue_args().inner().is_empty());
        let quorum = Topology::new("")
            .with_queue_type(QueueType::Quorum)
            .queue_args();
        let arg = |name: &str| quorum.inner().get(name).cloned();
        assert_eq!(arg("x-queue-type"), Some(string("quorum".into())));
        assert_eq!(
            arg("x-dead-letter-strategy"),
            Some(string("at-least-once".into()))
        );
        assert_eq!("quorum".parse(), Ok(QueueType::Quorum));
        assert_eq!("classic".parse(), Ok(QueueType::Classic));
        assert!("mirrored".parse::<QueueType>().is_err());
    }

    #[test]
    fn saga_events_have_subscribers_and_audit_events_do_not() {
        assert!(has_subscriber("order.created"));
        assert!(has_subscriber("inventory.low"));
        assert!(!has_subscriber("notification.sent"));
        assert!(!has_subscriber("order.status_changed"));
    }
}
