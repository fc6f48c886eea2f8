//! The transactional outbox. A state change stages its events in the same
//! transaction; the relay publishes them with confirms and deletes each one
//! only after the broker confirmed it. Several relays may run against one
//! database: each claims a batch with a lease before publishing, and a lease
//! left by a crashed relay expires.

use std::{sync::Arc, time::Duration};

use futures::TryStreamExt;
use lapin::types::FieldTable;
use mongodb::{
    ClientSession, Collection, Database, IndexModel,
    bson::{self, doc},
    error::Error,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use failsafe::futures::CircuitBreaker as _;

use crate::{
    broker::{Outgoing, PublishOutcome, Publisher, topology::has_subscriber},
    events::Envelope,
    resilience::Breaker,
};

pub const OUTBOX: &str = "outbox";

/// How long a claimed batch belongs to one relay: publishing a batch takes
/// milliseconds, so a lease still held after this was left by a crash.
const LEASE: Duration = Duration::from_secs(10);
/// How soon to look again at an event no queue took, or after a failure.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// An event waiting to be published.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxRecord {
    /// The event id; UUIDv7, so ids sort in creation order.
    #[serde(rename = "_id")]
    pub id: String,
    pub routing_key: String,
    /// The envelope exactly as it will be published.
    pub payload: String,
    pub correlation_id: String,
    pub created_at: bson::DateTime,
    /// Not before this time (a lease, or a back-off after a failure).
    pub not_before: Option<bson::DateTime>,
    pub claimed_by: Option<String>,
}

impl OutboxRecord {
    /// `event` as it will wait in the outbox.
    pub fn new<T: Serialize>(event: &Envelope<T>) -> Self {
        OutboxRecord {
            id: event.event_id.to_string(),
            routing_key: event.event_type.clone(),
            payload: serde_json::to_string(event).expect("events serialize"),
            correlation_id: event.correlation_id.clone(),
            created_at: bson::DateTime::now(),
            not_before: None,
            claimed_by: None,
        }
    }
}

/// Adds `event` to the outbox inside `session`'s transaction.
pub async fn stage_event<T: Serialize>(
    db: &Database,
    session: &mut ClientSession,
    event: &Envelope<T>,
) -> Result<(), Error> {
    stage_records(db, session, vec![OutboxRecord::new(event)]).await
}

/// Adds several events to the outbox inside `session`'s transaction, in one
/// round trip.
pub async fn stage_records(
    db: &Database,
    session: &mut ClientSession,
    records: Vec<OutboxRecord>,
) -> Result<(), Error> {
    if records.is_empty() {
        return Ok(());
    }
    db.collection::<OutboxRecord>(OUTBOX)
        .insert_many(records)
        .session(session)
        .await
        .map(|_| ())
}

pub async fn ensure_outbox_indexes(db: &Database) -> Result<(), Error> {
    db.collection::<OutboxRecord>(OUTBOX)
        .create_index(IndexModel::builder().keys(doc! { "notBefore": 1 }).build())
        .await
        .map(|_| ())
}

/// Publishes staged events. Writers call [`OutboxRelay::wake`] after a commit
/// so an event leaves within milliseconds; a slow poll catches what other
/// instances or a crash left behind.
pub struct OutboxRelay {
    outbox: Collection<OutboxRecord>,
    publisher: Arc<Publisher>,
    /// Opens when the broker keeps failing, so the relay stops reconnecting
    /// on every commit; events wait in the outbox until a trial succeeds.
    breaker: Breaker,
    wake: Arc<Notify>,
    instance: String,
    batch_size: i64,
    poll_interval: Duration,
}

impl OutboxRelay {
    pub fn new(
        db: &Database,
        publisher: Arc<Publisher>,
        breaker: Breaker,
        wake: Arc<Notify>,
    ) -> Self {
        OutboxRelay {
            outbox: db.collection(OUTBOX),
            publisher,
            breaker,
            wake,
            instance: uuid::Uuid::new_v4().to_string(),
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
        }
    }

    /// Runs until `shutdown`. A batch that has started is finished first, so
    /// nothing is left published but not deleted by a clean shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            // (how long to wait, whether a commit may cut the wait short)
            let (pause, wakeable) = match self.relay_batch().await {
                Ok(count) if count as i64 == self.batch_size => continue,
                Ok(_) => (self.poll_interval, true),
                // Commits keep coming; the breaker's trial call comes on a timer.
                Err(RelayError::BreakerOpen) => (RETRY_AFTER, false),
                Err(error) => {
                    tracing::warn!(%error, "outbox relay could not publish; will retry");
                    (RETRY_AFTER, true)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified(), if wakeable => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Claims, publishes and removes one batch; returns how many it handled.
    pub async fn relay_batch(&self) -> Result<usize, RelayError> {
        if !failsafe::CircuitBreaker::is_call_permitted(&self.breaker) {
            return Err(RelayError::BreakerOpen);
        }
        let now = bson::DateTime::now();
        let due = doc! { "$or": [ { "notBefore": null }, { "notBefore": { "$lte": now } } ] };
        let candidates: Vec<OutboxRecord> = self
            .outbox
            .find(due.clone())
            .sort(doc! { "_id": 1 })
            .limit(self.batch_size)
            .await?
            .try_collect()
            .await?;
        if candidates.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = candidates.iter().map(|r| r.id.as_str()).collect();
        let token = uuid::Uuid::new_v4().to_string();
        let lease_end =
            bson::DateTime::from_millis(now.timestamp_millis() + LEASE.as_millis() as i64);
        let mut claim_filter = due;
        claim_filter.insert("_id", doc! { "$in": &ids });
        let claimed = self
            .outbox
            .update_many(
                claim_filter,
                doc! { "$set": { "notBefore": lease_end, "claimedBy": format!("{}:{token}", self.instance) } },
            )
            .await?;
        // Another relay took some of them: publish only what we hold.
        let batch = if claimed.modified_count as usize == candidates.len() {
            candidates
        } else {
            self.outbox
                .find(doc! { "_id": { "$in": &ids }, "claimedBy": format!("{}:{token}", self.instance) })
                .sort(doc! { "_id": 1 })
                .await?
                .try_collect()
                .await?
        };

        let messages: Vec<Outgoing> = batch.iter().map(|r| self.message(r)).collect();
        fail::fail_point!("relay.before_publish", |_| crate::fault::crash(
            "relay.before_publish"
        ));
        let outcomes = match self
            .breaker
            .call(self.publisher.publish_all(&messages))
            .await
        {
            Ok(outcomes) => outcomes,
            Err(error) => {
                self.release(&batch).await;
                return Err(match error {
                    failsafe::Error::Inner(error) => error.into(),
                    failsafe::Error::Rejected => RelayError::BreakerOpen,
                });
            }
        };
        fail::fail_point!("relay.after_publish", |_| crate::fault::crash(
            "relay.after_publish"
        ));

        let mut done = Vec::new();
        let mut retry = Vec::new();
        for (record, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                PublishOutcome::Confirmed => done.push(record.id.as_str()),
                PublishOutcome::Unroutable => {
                    tracing::error!(
                        routing_key = %record.routing_key,
                        event_id = %record.id,
                        "event returned unroutable: no queue is bound for it; keeping it in the outbox"
                    );
                    retry.push(record.id.as_str());
                }
                PublishOutcome::Nacked => retry.push(record.id.as_str()),
            }
        }
        if !done.is_empty() {
            self.outbox
                .delete_many(doc! { "_id": { "$in": &done } })
                .await?;
        }
        if !retry.is_empty() {
            let later = bson::DateTime::from_millis(
                bson::DateTime::now().timestamp_millis() + RETRY_AFTER.as_millis() as i64,
            );
            self.outbox
                .update_many(
                    doc! { "_id": { "$in": &retry } },
                    doc! { "$set": { "notBefore": later, "claimedBy": null } },
                )
                .await?;
        }
        Ok(batch.len())
    }

    fn message(&self, record: &OutboxRecord) -> Outgoing {
        Outgoing {
            exchange: self.publisher.topology().events_exchange(),
            routing_key: record.routing_key.clone(),
            payload: record.payload.clone().into_bytes(),
            headers: FieldTable::default(),
            message_id: Some(record.id.clone()),
            correlation_id: Some(record.correlation_id.clone()),
            // Events a service depends on must reach a queue; the others are
            // for whoever listens.
            mandatory: has_subscriber(&record.routing_key),
        }
    }

    /// Gives a batch back after a failed publish so it goes out on the next try.
    async fn release(&self, batch: &[OutboxRecord]) {
        let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
        let _ = self
            .outbox
            .update_many(
                doc! { "_id": { "$in": ids } },
                doc! { "$set": { "notBefore": null, "claimedBy": null } },
            )
            .await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading or updating the outbox: {0}")]
    Database(#[from] Error),
    #[error("publishing to RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the publisher circuit breaker is open")]
    BreakerOpen,
}
