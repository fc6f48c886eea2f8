//! Publishing with publisher confirms over one long-lived channel, reconnecting
//! lazily after the broker goes away.

use std::sync::Arc;

use futures::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::Mutex;

use super::{Topology, connection_properties};

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

struct Link {
    /// Owned when this publisher opened it; `None` when it borrows a
    /// consumer's connection.
    connection: Option<Connection>,
    channel: Channel,
}

/// A lazily connected, self-healing publisher.
pub struct Publisher {
    url: String,
    name: String,
    topology: Topology,
    link: Mutex<Option<Link>>,
}

impl Publisher {
    pub fn new(url: &str, name: &str, topology: Topology) -> Arc<Self> {
        Arc::new(Publisher {
            url: url.to_string(),
            name: name.to_string(),
            topology,
            link: Mutex::new(None),
        })
    }

    /// A publisher on a channel of an existing connection (a consumer's, for
    /// its retries and dead letters). It does not reconnect by itself: the
    /// consumer reconnects and builds a new one.
    pub async fn from_connection(
        connection: &Connection,
        topology: &Topology,
    ) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            url: String::new(),
            name: String::new(),
            topology: topology.clone(),
            link: Mutex::new(Some(Link {
                connection: None,
                channel,
            })),
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
        let connection = Connection::connect(&self.url, connection_properties(&self.name)).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.topology.declare_exchanges(&channel).await?;
        tracing::info!(publisher = %self.name, "connected to RabbitMQ");
        *link = Some(Link {
            connection: Some(connection),
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Whether the broker is reachable (connecting if need be).
    pub async fn check(&self) -> Result<(), lapin::Error> {
        self.channel().await.map(|_| ())
    }

    /// Publishes every message, with all confirms in flight at once, and
    /// reports each message's outcome in order. An error means the channel
    /// failed; which messages made it is then unknown, so callers retry all.
    pub async fn publish_all(
        &self,
        messages: &[Outgoing],
    ) -> Result<Vec<PublishOutcome>, lapin::Error> {
        let channel = self.channel().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("application/json"))
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

    /// Closes the connection (at shutdown, after the last publish).
    pub async fn close(&self) {
        if let Some(link) = self.link.lock().await.take()
            && let Some(connection) = link.connection
        {
            let _ = connection.close(200, "shutdown".into()).await;
        }
    }
}
