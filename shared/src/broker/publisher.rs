//! Publishing with publisher confirms over one long-lived channel, reconnecting
//! lazily after the broker goes away.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::Mutex;

use super::{Topology, connect, limited, senders::broker_user};

/// One message to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub headers: FieldTable,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Ask the broker to return the message if no queue is bound.
    pub mandatory: bool,
}

/// A queue's depth as the broker counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueueDepth {
    pub queue: String,
    /// Messages ready for delivery (not those delivered and not yet acked).
    pub messages: u32,
    pub consumers: u32,
}

/// What the broker said about one message.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored by the broker (persisted to every queue it was routed to).
    Confirmed,
    /// Confirmed, but no queue was bound (only reported for `mandatory`).
    Unroutable,
    /// The broker refused it.
    Nacked,
}

/// The longest opening a connection may take, and each step after it
/// (channel, confirm mode, exchanges): the link is locked meanwhile, so a
/// broker that stops answering must not hold every publish behind it.
const CONNECT_LIMIT: Duration = Duration::from_secs(15);
const STEP_LIMIT: Duration = Duration::from_secs(10);

struct Link {
    connection: Connection,
    channel: Channel,
}

/// A lazily connected, self-healing publisher.
pub struct Publisher {
    url: String,
    name: String,
    /// The broker user it logs in as, in every message's `user-id`, which
    /// the broker vouches for (see [`super::senders`]).
    user: String,
    topology: Topology,
    link: Mutex<Option<Link>>,
}

impl Publisher {
    /// A publisher to `url`: one AMQP URL, or a cluster's nodes separated by
    /// commas. It connects on first use.
    pub fn new(url: &str, name: &str, topology: Topology) -> Arc<Self> {
        Arc::new(Publisher {
            url: url.to_string(),
            name: name.to_string(),
            user: broker_user(url),
            topology,
            link: Mutex::new(None),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A connected confirm-mode channel, reconnecting if the last one died.
    async fn channel(&self) -> Result<Channel, lapin::Error> {
        let mut link = self.link.lock().await;
        if let Some(existing) = link.as_ref()
            && existing.channel.status().connected()
        {
            return Ok(existing.channel.clone());
        }
        *link = None;
        let connection = connect(&self.url, &self.name, CONNECT_LIMIT).await?;
        let channel = limited("opening a channel", STEP_LIMIT, connection.create_channel()).await?;
        limited(
            "selecting confirm mode",
            STEP_LIMIT,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        limited(
            "declaring the exchanges",
            STEP_LIMIT,
            self.topology.declare_exchanges(&channel),
        )
        .await?;
        tracing::info!(publisher = %self.name, "connected to RabbitMQ");
        *link = Some(Link {
            connection,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Whether the broker is reachable (connecting if need be).
    pub async fn check(&self) -> Result<(), lapin::Error> {
        self.channel().await.map(|_| ())
    }

    /// How many messages are ready in each of `queues`, and how many
    /// consumers each has, as the broker counts them (`/metrics`). A queue
    /// not declared yet is left out. Each is asked on a channel of its own:
    /// the broker closes the channel that asks after a missing queue.
    pub(crate) async fn queue_depths(
        &self,
        queues: &[String],
    ) -> Result<Vec<QueueDepth>, lapin::Error> {
        self.channel().await?;
        // Opened under the lock (one quick round trip each), used after it,
        // so a scrape holds up no publish for longer than that.
        let channels = {
            let link = self.link.lock().await;
            let Some(link) = link.as_ref() else {
                // Closed since: the next scrape asks again.
                return Ok(Vec::new());
            };
            let mut channels = Vec::with_capacity(queues.len());
            for _ in queues {
                channels.push(
                    limited(
                        "opening a channel",
                        STEP_LIMIT,
                        link.connection.create_channel(),
                    )
                    .await?,
                );
            }
            channels
        };
        let depths = join_all(
            queues
                .iter()
                .zip(channels)
                .map(|(queue, channel)| async move {
                    let declared = channel
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..Default::default()
                            },
                            FieldTable::default(),
                        )
                        .await;
                    if declared.is_ok() {
                        let _ = channel.close(200, "counted".into()).await;
                    }
                    declared.map(|declared| QueueDepth {
                        queue: queue.clone(),
                        messages: declared.message_count(),
                        consumers: declared.consumer_count(),
                    })
                }),
        )
        .await;
        Ok(depths.into_iter().filter_map(Result::ok).collect())
    }

    /// Publishes every message, with all confirms in flight at once, and
    /// reports each message's outcome in order. An error means the channel
    /// failed; which messages made it is then unknown, so callers retry all.
    pub(crate) async fn publish_all(
        &self,
        messages: &[Outgoing],
    ) -> Result<Vec<PublishOutcome>, lapin::Error> {
        let channel = self.channel().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("application/json"))
                .with_user_id(ShortString::from(self.user.as_str()))
                .with_headers(message.headers.clone());
            if let Some(id) = &message.message_id {
                properties = properties.with_message_id(ShortString::from(id.as_str()));
            }
            if let Some(id) = &message.correlation_id {
                properties = properties.with_correlation_id(ShortString::from(id.as_str()));
            }
            let confirm = channel
                .basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: message.mandatory,
                        ..Default::default()
                    },
                    &message.payload,
                    properties,
                )
                .await;
            match confirm {
                Ok(confirm) => confirms.push(confirm),
                Err(error) => {
                    self.forget(&channel).await;
                    return Err(error);
                }
            }
        }
        let mut outcomes = Vec::with_capacity(messages.len());
        for confirmation in join_all(confirms).await {
            match confirmation {
                Ok(Confirmation::Ack(None)) => outcomes.push(PublishOutcome::Confirmed),
                Ok(Confirmation::Ack(Some(_))) => outcomes.push(PublishOutcome::Unroutable),
                Ok(Confirmation::Nack(_)) => outcomes.push(PublishOutcome::Nacked),
                // Confirm mode is always on for this channel.
                Ok(Confirmation::NotRequested) => outcomes.push(PublishOutcome::Confirmed),
                Err(error) => {
                    self.forget(&channel).await;
                    return Err(error);
                }
            }
        }
        Ok(outcomes)
    }

    pub async fn publish(&self, message: Outgoing) -> Result<PublishOutcome, lapin::Error> {
        let mut outcomes = self.publish_all(std::slice::from_ref(&message)).await?;
        Ok(outcomes.pop().unwrap_or(PublishOutcome::Nacked))
    }

    /// Drops a failed channel so the next call reconnects.
    async fn forget(&self, failed: &Channel) {
        let mut link = self.link.lock().await;
        if link.as_ref().is_some_and(|l| l.channel.id() == failed.id()) {
            *link = None;
        }
    }

    /// Drops the connection, so the next call opens a new one: for a
    /// caller whose publish got no answer in time. Dropping it closes it.
    pub async fn reset(&self) {
        if self.link.lock().await.take().is_some() {
            tracing::warn!(publisher = %self.name, "dropping a RabbitMQ connection that stopped answering");
        }
    }

    /// Closes the connection (at shutdown, after the last publish).
    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.take() {
            let _ = tokio::time::timeout(STEP_LIMIT, link.connection.close(200, "shutdown".into()))
                .await;
        }
    }
}
