//! The transactional outbox. A state change stages its events in the same
//! transaction; the relay publishes them with confirms and deletes them only
//! after the broker confirmed them. Several relays may run against one
//! database: each publishes only what it holds a lease on, and a lease left
//! by a crashed relay expires.
//!
//! A commit's events travel as one outbox document ([`OutboxRecord`]), not
//! one each: the database charges per document written (an index entry per
//! index, a page write), so a batched commit of 64 orders costs one insert
//! and one delete where it cost 64 of each.
//!
//! A record is born leased to its own process's relay, and the unit of work
//! hands it over in memory after the commit ([`Outbox::committed`]), so the
//! usual path costs the insert and one delete per relay batch: no read, no
//! claim. The relay's poll takes what is left in the database: records whose
//! process died before publishing them (after the lease), records handed
//! back after a failed publish, and records that did not fit the hand-over
//! queue.
//!
//! Confirmed records are deleted together, up to [`DELETE_LINGER`] after
//! the first: at ordinary rates a relay batch holds one commit, and one
//! delete per commit was a fifth of the database's work per order
//! (bench/BUDGET.md, "Wakeups per order"). Their lease keeps every relay
//! from taking them meanwhile; a crash before the delete publishes them
//! again once the lease ends, as a crash between publish and delete always
//! could, and consumers drop the duplicates by event id.

use std::{sync::Arc, time::Duration};

use futures::TryStreamExt;
use lapin::types::FieldTable;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, doc},
    error::Error,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use failsafe::futures::CircuitBreaker as _;

use super::count_in;
use crate::{
    broker::{Outgoing, PublishOutcome, Publisher, set_header, text, topology::has_subscriber},
    events::Envelope,
    resilience::Breaker,
    telemetry::TRACEPARENT,
};

pub const OUTBOX: &str = "outbox";

/// How long a claimed batch belongs to one relay: publishing a batch takes
/// milliseconds, so a lease still held after this was left by a crash.
const LEASE: Duration = Duration::from_secs(10);
/// Committed records waiting in memory for the relay. Past this, records
/// wait out their lease in the database instead (load shedding keeps us far
/// below).
const HANDOVER_RECORDS: usize = 4096;
/// How soon to look again at an event no queue took, or after a failure.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long a confirmed record may wait for others to be deleted with; far
/// inside [`LEASE`], so that no relay publishes it again meanwhile.
const DELETE_LINGER: Duration = Duration::from_millis(250);

/// Events written but not yet confirmed by the broker (`/metrics`).
pub async fn pending_count(db: &Database) -> Result<u64, Error> {
    let total = db
        .collection::<bson::Document>(OUTBOX)
        .aggregate([doc! {
            // A record from before records held several events holds one.
            "$group": { "_id": null, "events": { "$sum": { "$size": { "$ifNull": ["$events", [0]] } } } }
        }])
        .await?
        .try_next()
        .await?;
    Ok(total.map_or(0, |total| count_in(total.get("events"))))
}

/// How long the oldest event not yet confirmed has waited (`/metrics`);
/// None when there is none. Ids are UUIDv7, so the smallest is the oldest.
pub(crate) async fn oldest_age(db: &Database) -> Result<Option<Duration>, Error> {
    #[derive(Deserialize)]
    struct Created {
        #[serde(rename = "createdAt")]
        at: bson::DateTime,
    }
    // Only its time: the record itself holds a whole commit's payloads.
    let oldest = db
        .collection::<Created>(OUTBOX)
        .find_one(doc! {})
        .sort(doc! { "_id": 1 })
        .projection(doc! { "createdAt": 1 })
        .await?;
    Ok(oldest.map(|created| {
        let waited = bson::DateTime::now().timestamp_millis() - created.at.timestamp_millis();
        Duration::from_millis(waited.max(0) as u64)
    }))
}

/// The events of one commit, waiting to be published.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxRecord {
    /// UUIDv7, so ids sort in creation order.
    #[serde(rename = "_id")]
    pub id: String,
    /// In the order they were emitted; published in that order.
    pub events: Vec<StagedEvent>,
    pub created_at: bson::DateTime,
    /// Not before this time (a lease, or a back-off after a failure).
    pub not_before: Option<bson::DateTime>,
    pub claimed_by: Option<String>,
}

/// An event as it will be published.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagedEvent {
    /// The event id, published as the message id.
    pub id: String,
    pub routing_key: String,
    /// The envelope exactly as it will be published.
    pub payload: String,
    pub correlation_id: String,
    /// The W3C trace context the event was caused in, published as its
    /// `traceparent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A record as the relay reads it: this version's, or one written by a
/// version from before records held several events, so an upgrade loses
/// none of those.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Commit(OutboxRecord),
    Event(SingleEvent),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SingleEvent {
    /// The event id.
    #[serde(rename = "_id")]
    id: String,
    routing_key: String,
    payload: String,
    correlation_id: String,
    #[serde(default)]
    traceparent: Option<String>,
    created_at: bson::DateTime,
    not_before: Option<bson::DateTime>,
    claimed_by: Option<String>,
}

impl From<Stored> for OutboxRecord {
    fn from(stored: Stored) -> Self {
        match stored {
            Stored::Commit(record) => record,
            Stored::Event(e) => OutboxRecord {
                events: vec![StagedEvent {
                    id: e.id.clone(),
                    routing_key: e.routing_key,
                    payload: e.payload,
                    correlation_id: e.correlation_id,
                    traceparent: e.traceparent,
                }],
                id: e.id,
                created_at: e.created_at,
                not_before: e.not_before,
                claimed_by: e.claimed_by,
            },
        }
    }
}

/// How a writer stages events for this process's relay. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    relay: String,
    handover: mpsc::Sender<OutboxRecord>,
}

impl Outbox {
    /// `events` as they wait in the outbox: one record, leased to this
    /// process's relay. `None` for no events.
    pub(crate) fn record<T: Serialize>(&self, events: &[Envelope<T>]) -> Option<OutboxRecord> {
        if events.is_empty() {
            return None;
        }
        let now = bson::DateTime::now();
        Some(OutboxRecord {
            id: uuid::Uuid::now_v7().to_string(),
            events: events
                .iter()
                .map(|event| StagedEvent {
                    id: event.event_id.to_string(),
                    routing_key: event.event_type.clone(),
                    payload: serde_json::to_string(event).expect("events serialize"),
                    correlation_id: event.correlation_id.clone(),
                    traceparent: event.traceparent.clone(),
                })
                .collect(),
            created_at: now,
            not_before: Some(lease_from(now)),
            claimed_by: Some(self.relay.clone()),
        })
    }

    /// Hands a record whose transaction committed to the relay. If the
    /// relay is far behind, it stays in the database and the relay's poll
    /// takes it once its lease runs out.
    pub(crate) fn committed(&self, record: OutboxRecord) {
        if self.handover.try_send(record).is_err() {
            tracing::debug!("outbox hand-over full; the relay's poll will take these");
        }
    }
}

fn lease_from(now: bson::DateTime) -> bson::DateTime {
    bson::DateTime::from_millis(now.timestamp_millis() + LEASE.as_millis() as i64)
}

pub async fn ensure_outbox_indexes(db: &Database) -> Result<(), Error> {
    db.collection::<OutboxRecord>(OUTBOX)
        .create_index(IndexModel::builder().keys(doc! { "notBefore": 1 }).build())
        .await
        .map(|_| ())
}

/// Publishes staged events: those handed over by this process's writers at
/// once, and on a slow poll whatever other instances or a crash left behind.
pub struct OutboxRelay {
    /// Read as [`Stored`], so that records of either shape are published.
    outbox: Collection<Stored>,
    publisher: Arc<Publisher>,
    /// Opens when the broker keeps failing, so the relay stops reconnecting
    /// on every commit; events wait in the outbox until a trial succeeds.
    breaker: Breaker,
    handover: mpsc::Receiver<OutboxRecord>,
    instance: String,
    /// Events per publish, at most (a record's events are never split).
    batch_size: usize,
    /// Records per poll of the database.
    poll_records: usize,
    poll_interval: Duration,
    delete_linger: Duration,
}

impl OutboxRelay {
    /// The relay, and the [`Outbox`] through which writers feed it.
    pub fn new(db: &Database, publisher: Arc<Publisher>, breaker: Breaker) -> (Self, Outbox) {
        let instance = uuid::Uuid::new_v4().to_string();
        let (handover, received) = mpsc::channel(HANDOVER_RECORDS);
        let outbox = Outbox {
            relay: format!("{instance}:handover"),
            handover,
        };
        let relay = OutboxRelay {
            outbox: db.collection(OUTBOX),
            publisher,
            breaker,
            handover: received,
            instance,
            batch_size: 256,
            poll_records: 64,
            poll_interval: Duration::from_millis(500),
            delete_linger: DELETE_LINGER,
        };
        (relay, outbox)
    }

    /// How long confirmed records wait to be deleted together (default
    /// [`DELETE_LINGER`]); under [`LEASE`], or another relay may publish
    /// them again meanwhile.
    pub fn with_delete_linger(mut self, linger: Duration) -> Self {
        assert!(linger < LEASE, "a delete linger must end inside the lease");
        self.delete_linger = linger;
        self
    }

    /// Runs until `shutdown`. A batch that has started is finished first,
    /// and what was confirmed is deleted before it returns, so nothing is
    /// left published but not deleted by a clean shutdown; what is still in
    /// the hand-over queue is released for the next instance.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // The first poll at once: events an earlier run left behind.
        let next_poll = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(next_poll);
        let mut confirmed = Confirmed::default();
        let flush_at = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(flush_at);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut flush_at, if !confirmed.ids.is_empty() => {
                    self.delete(&mut confirmed).await;
                }
                Some(first) = self.handover.recv() => {
                    let mut events = first.events.len();
                    let mut batch = vec![first];
                    while events < self.batch_size
                        && let Ok(more) = self.handover.try_recv()
                    {
                        events += more.events.len();
                        batch.push(more);
                    }
                    match self.publish(batch).await {
                        Ok(ids) => confirmed.add(ids, self.delete_linger, flush_at.as_mut()),
                        // Handed back already; the poll's trial call decides when to try again.
                        Err(RelayError::BreakerOpen) => {}
                        Err(error) => tracing::warn!(%error, "outbox relay could not publish; the poll will retry"),
                    }
                }
                _ = &mut next_poll => {
                    let pause = match self.relay_batch().await {
                        Ok(ids) => {
                            let full = ids.len() == self.poll_records;
                            confirmed.add(ids, self.delete_linger, flush_at.as_mut());
                            if full { Duration::ZERO } else { self.poll_interval }
                        }
                        Err(RelayError::BreakerOpen) => RETRY_AFTER,
                        Err(error) => {
                            tracing::warn!(%error, "outbox relay could not publish; will retry");
                            RETRY_AFTER
                        }
                    };
                    next_poll.as_mut().reset(tokio::time::Instant::now() + pause);
                }
            }
            // Under load the linger never ends before a batch's worth waits.
            if confirmed.ids.len() >= self.batch_size {
                self.delete(&mut confirmed).await;
            }
        }
        self.delete(&mut confirmed).await;
        self.handover.close();
        let mut left = Vec::new();
        while let Ok(record) = self.handover.try_recv() {
            left.push(record);
        }
        if !left.is_empty() {
            self.release(&left).await;
        }
        tracing::info!("outbox relay stopped");
    }

    /// Deletes the confirmed records in one statement. If that fails they
    /// stay, leased: published again when the lease ends, and dropped by
    /// their consumers as duplicates.
    async fn delete(&self, confirmed: &mut Confirmed) {
        let ids = std::mem::take(&mut confirmed.ids);
        if ids.is_empty() {
            return;
        }
        if let Err(error) = self
            .outbox
            .delete_many(doc! { "_id": { "$in": &ids } })
            .await
        {
            tracing::warn!(%error, records = ids.len(), "could not delete published outbox records; they will be published again after their lease");
        }
    }

    /// Claims and publishes one batch of what is due in the database;
    /// returns the ids of the records the broker took, to be deleted.
    async fn relay_batch(&self) -> Result<Vec<String>, RelayError> {
        if !failsafe::CircuitBreaker::is_call_permitted(&self.breaker) {
            return Err(RelayError::BreakerOpen);
        }
        let now = bson::DateTime::now();
        let due = doc! { "$or": [ { "notBefore": null }, { "notBefore": { "$lte": now } } ] };
        let candidates = self.read(due.clone(), Some(self.poll_records)).await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = candidates.iter().map(|r| r.id.as_str()).collect();
        let token = format!("{}:{}", self.instance, uuid::Uuid::new_v4());
        let mut claim_filter = due;
        claim_filter.insert("_id", doc! { "$in": &ids });
        let claimed = self
            .outbox
            .update_many(
                claim_filter,
                doc! { "$set": { "notBefore": lease_from(now), "claimedBy": &token } },
            )
            .await?;
        // Another relay took some of them: publish only what we hold.
        let batch = if claimed.modified_count as usize == candidates.len() {
            candidates
        } else {
            self.read(doc! { "_id": { "$in": &ids }, "claimedBy": &token }, None)
                .await?
        };
        self.publish(batch).await
    }

    /// The records `filter` matches, oldest first, at most `limit`.
    async fn read(
        &self,
        filter: bson::Document,
        limit: Option<usize>,
    ) -> Result<Vec<OutboxRecord>, Error> {
        let mut find = self.outbox.find(filter).sort(doc! { "_id": 1 });
        if let Some(limit) = limit {
            find = find.limit(limit as i64);
        }
        find.await?.map_ok(OutboxRecord::from).try_collect().await
    }

    /// Publishes a batch this relay holds and puts back for later what the
    /// broker did not confirm; returns the ids of the records it confirmed
    /// whole, to be deleted.
    async fn publish(&self, batch: Vec<OutboxRecord>) -> Result<Vec<String>, RelayError> {
        let messages: Vec<Outgoing> = batch
            .iter()
            .flat_map(|r| &r.events)
            .map(|e| self.message(e))
            .collect();
        crate::crash_point!("relay.before_publish");
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
        crate::crash_point!("relay.after_publish");

        let mut outcomes = outcomes.into_iter();
        let mut done = Vec::new();
        let mut retry = Vec::new();
        for record in &batch {
            let mut unconfirmed = Vec::new();
            for event in &record.events {
                // One outcome per message, in order; a missing one is no confirm.
                let outcome = outcomes.next().unwrap_or(PublishOutcome::Nacked);
                if !confirmed(event, &outcome) {
                    unconfirmed.push(event);
                }
            }
            if unconfirmed.is_empty() {
                done.push(record.id.clone());
            } else {
                retry.push((record.id.as_str(), unconfirmed));
            }
        }
        // Rare (a nack, no queue bound): only what was not confirmed stays.
        let later = bson::DateTime::from_millis(
            bson::DateTime::now().timestamp_millis() + RETRY_AFTER.as_millis() as i64,
        );
        for (id, events) in retry {
            self.outbox
                .update_one(
                    doc! { "_id": id },
                    doc! { "$set": {
                        "events": bson::to_bson(&events).map_err(mongodb::error::Error::from)?,
                        "notBefore": later,
                        "claimedBy": null,
                    } },
                )
                .await?;
        }
        Ok(done)
    }

    fn message(&self, event: &StagedEvent) -> Outgoing {
        let mut headers = FieldTable::default();
        if let Some(traceparent) = &event.traceparent {
            set_header(&mut headers, TRACEPARENT, text(traceparent.as_str()));
        }
        Outgoing {
            exchange: self.publisher.topology().events_exchange(),
            routing_key: event.routing_key.clone(),
            payload: event.payload.clone().into_bytes(),
            headers,
            message_id: Some(event.id.clone()),
            correlation_id: Some(event.correlation_id.clone()),
            // Events a service depends on must reach a queue; the others are
            // for whoever listens.
            mandatory: has_subscriber(&event.routing_key),
        }
    }

    /// Gives records back (a failed publish, a shutdown) so the next poll,
    /// here or in another instance, takes it at once.
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

/// Records the broker confirmed, waiting to be deleted together.
#[derive(Default)]
struct Confirmed {
    ids: Vec<String>,
}

impl Confirmed {
    /// Adds `ids`; the first to wait sets when they are all deleted.
    fn add(
        &mut self,
        ids: Vec<String>,
        linger: Duration,
        flush_at: std::pin::Pin<&mut tokio::time::Sleep>,
    ) {
        if self.ids.is_empty() && !ids.is_empty() {
            flush_at.reset(tokio::time::Instant::now() + linger);
        }
        self.ids.extend(ids);
    }
}

/// Whether the broker took `event` for good; logs why not if it did not.
fn confirmed(event: &StagedEvent, outcome: &PublishOutcome) -> bool {
    match outcome {
        PublishOutcome::Confirmed => true,
        PublishOutcome::Unroutable => {
            tracing::error!(
                routing_key = %event.routing_key,
                event_id = %event.id,
                "event returned unroutable: no queue is bound for it; keeping it in the outbox"
            );
            false
        }
        PublishOutcome::Nacked => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("reading or updating the outbox: {0}")]
    Database(#[from] Error),
    #[error("publishing to RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the publisher circuit breaker is open")]
    BreakerOpen,
}
