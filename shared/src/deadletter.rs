//! Dead letters an operator can see, replay and discard.
//!
//! A consumer that gives up on a message publishes it to `e-commerce.dlx`,
//! which routes it to its queue's `<queue>.dlq`. Each service runs an
//! archiver on its DLQ that copies every dead letter, with the failure
//! headers, into its own `dead_letters` collection and only then acks it. The
//! collection is what the admin routes list and filter; the DLQ is only the
//! durable hand-over between the two.
//!
//! Replaying publishes the original body, ids and correlation id straight to
//! the work queue it died in, with the attempt count reset; the normal
//! handler runs, and its inbox still stops a second effect. The record is
//! marked `REPLAYED` only after the broker confirmed the copy, so a crash in
//! between can at worst replay twice, never lose the message. Discarding
//! keeps the record, marked `DISCARDED` with a note.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::TryStreamExt;
use lapin::{
    Channel,
    message::Delivery,
    types::{AMQPValue, FieldTable},
};
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Document, doc},
    error::Error,
    options::{IndexOptions, ReturnDocument},
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{
        Outgoing, PublishOutcome, Publisher, Subscription, Topology,
        consumer::{
            ATTEMPT_HEADER, Acks, ConsumerError, FAILURE_CLASS_HEADER, FIRST_FAILURE_HEADER,
            LAST_ERROR_HEADER, LAST_FAILURE_HEADER, ORIGINAL_QUEUE_HEADER,
            ORIGINAL_ROUTING_KEY_HEADER, QueueWorker, REASON_HEADER, REDRIVES_HEADER, Settled,
        },
        header_string, header_u32, set_header, text,
    },
    config::Redrive,
    events::RawEnvelope,
    retry::RetryPolicy,
    store::{self, PageRequest, find_page},
};

mod cause;

use cause::{BROKER_REASON_PREFIX, UNKNOWN_REASON};
pub use cause::{OrderReference, ReasonClass, order_reference};

pub const DEAD_LETTERS: &str = "dead_letters";
/// Header on a replayed copy naming the dead letter it came from.
pub(crate) const REPLAYED_FROM_HEADER: &str = "x-replayed-from";
/// At most this many dead letters are replayed by one filtered replay.
pub(crate) const MAX_REPLAY_BATCH: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, poem_openapi::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeadLetterStatus {
    /// Waiting for an operator.
    Dead,
    /// Sent back to its work queue.
    Replayed,
    /// Given up on by an operator; kept as a record.
    Discarded,
}

impl DeadLetterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterStatus::Dead => "DEAD",
            DeadLetterStatus::Replayed => "REPLAYED",
            DeadLetterStatus::Discarded => "DISCARDED",
        }
    }
}

/// One message a consumer gave up on.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// UUIDv7: newest first is descending `_id`.
    #[serde(rename = "_id")]
    pub id: String,
    /// The same dead letter archived twice (redelivered before its ack)
    /// has the same key; the unique index keeps one.
    pub dedupe_key: String,
    /// The work queue the message died in; replays go back there.
    pub queue: String,
    pub routing_key: String,
    pub message_id: Option<String>,
    /// The AMQP property, else the `correlationId` the body's JSON names.
    pub correlation_id: Option<String>,
    /// The order the body's JSON names (see [`order_reference`]); absent on
    /// dead letters archived before it was recorded, until backfilled.
    #[serde(default)]
    pub order_id: Option<String>,
    /// Read from the body when it parses as an event.
    pub event_type: Option<String>,
    pub reason: String,
    /// The class of `reason`, to group by; `other` on records archived
    /// before classes were, until backfilled.
    #[serde(default)]
    pub reason_class: ReasonClass,
    pub attempts: u32,
    pub first_failure_at: Option<String>,
    pub last_failure_at: Option<String>,
    pub last_error: Option<String>,
    /// The body as received (bytes that are not UTF-8 are replaced).
    pub payload: String,
    pub status: DeadLetterStatus,
    pub dead_at: bson::DateTime,
    pub replay_count: u32,
    pub replayed_at: Option<bson::DateTime>,
    pub discarded_at: Option<bson::DateTime>,
    pub discard_note: Option<String>,
    /// It died of a transient failure that outlasted the retry budget (an
    /// outage), so it is sent back by itself after a cool-down.
    #[serde(default)]
    pub transient: bool,
    /// How many times this message was already sent back by itself.
    #[serde(default)]
    pub redrives: u32,
}

/// Which dead letters a list, a filtered replay or a filtered discard
/// applies to: every given field must match.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterFilter {
    pub status: Option<DeadLetterStatus>,
    pub event_type: Option<String>,
    pub routing_key: Option<String>,
    pub message_id: Option<String>,
    pub order_id: Option<String>,
    pub correlation_id: Option<String>,
    /// `other` also matches records archived before classes were.
    pub reason_class: Option<ReasonClass>,
    pub queue: Option<String>,
    /// `Some(false)`: only bodies that did not parse as an event (no event
    /// type), the one group [`Self::event_type`] cannot name.
    pub has_event_type: Option<bool>,
}

impl DeadLetterFilter {
    fn to_document(&self) -> Document {
        let mut filter = Document::new();
        if let Some(status) = self.status {
            filter.insert("status", status.as_str());
        }
        match (&self.event_type, self.has_event_type) {
            // Asked for a type and for none: nothing can match.
            (Some(_), Some(false)) => {
                filter.insert("eventType", doc! { "$in": [] });
            }
            (Some(event_type), _) => {
                filter.insert("eventType", event_type);
            }
            (None, Some(true)) => {
                filter.insert("eventType", doc! { "$ne": null });
            }
            (None, Some(false)) => {
                filter.insert("eventType", bson::Bson::Null);
            }
            (None, None) => {}
        }
        let fields = [
            ("routingKey", &self.routing_key),
            ("messageId", &self.message_id),
            ("orderId", &self.order_id),
            ("correlationId", &self.correlation_id),
            ("queue", &self.queue),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                filter.insert(field, value);
            }
        }
        match self.reason_class {
            // `null` also matches a missing field.
            Some(ReasonClass::Other) => {
                filter.insert("reasonClass", doc! { "$in": ["other", null] });
            }
            Some(class) => {
                filter.insert("reasonClass", class.as_str());
            }
            None => {}
        }
        filter
    }
}

/// DEAD letters of one cause: one reason class, event type and queue.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetterGroup {
    pub reason_class: ReasonClass,
    /// None for bodies that did not parse as an event.
    pub event_type: Option<String>,
    pub queue: String,
    pub count: u64,
    pub oldest_dead_at: bson::DateTime,
    pub newest_dead_at: bson::DateTime,
    /// The reason of the newest one.
    pub sample_reason: String,
}

/// At most this many groups are listed, the largest first.
pub(crate) const MAX_GROUPS: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter {0}")]
    NotFound(String),
    #[error("dead letter {id} is {status:?}; only DEAD ones can be replayed or discarded")]
    NotDead {
        id: String,
        status: DeadLetterStatus,
    },
    #[error("the broker did not take the replayed message: {0}")]
    Broker(String),
    #[error(transparent)]
    Database(#[from] Error),
}

/// How long a replayed or discarded dead letter is kept on record.
pub(crate) const SETTLED_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

/// A service's archive of dead letters.
#[derive(Clone)]
pub struct DeadLetterStore {
    collection: Collection<DeadLetter>,
}

impl DeadLetterStore {
    pub fn new(db: &Database) -> Self {
        DeadLetterStore {
            collection: db.collection(DEAD_LETTERS),
        }
    }

    pub async fn ensure_indexes(&self) -> Result<(), Error> {
        self.collection
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "dedupeKey": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "status": 1, "_id": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "status": 1, "transient": 1, "deadAt": 1 })
                    .build(),
                // An order's or a request's dead letters, paged by `_id`.
                IndexModel::builder()
                    .keys(doc! { "orderId": 1, "_id": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "correlationId": 1, "_id": -1 })
                    .build(),
                // Settled letters are kept a while as a record, then expire;
                // DEAD ones have neither field and stay until settled.
                IndexModel::builder()
                    .keys(doc! { "replayedAt": 1 })
                    .options(
                        IndexOptions::builder()
                            .expire_after(SETTLED_RETENTION)
                            .build(),
                    )
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "discardedAt": 1 })
                    .options(
                        IndexOptions::builder()
                            .expire_after(SETTLED_RETENTION)
                            .build(),
                    )
                    .build(),
            ])
            .await
            .map(|_| ())
    }

    /// Stores `letter` unless it is already archived.
    pub async fn archive(&self, letter: &DeadLetter) -> Result<(), Error> {
        match self.collection.insert_one(letter).await {
            Ok(_) => Ok(()),
            Err(error) if store::is_duplicate_key(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }

    pub async fn get(&self, id: &str) -> Result<DeadLetter, DeadLetterError> {
        self.collection
            .find_one(doc! { "_id": id })
            .await?
            .ok_or_else(|| DeadLetterError::NotFound(id.to_string()))
    }

    /// Dead letters still waiting for an operator (`/metrics`).
    pub(crate) async fn dead_count(&self) -> Result<u64, Error> {
        self.collection
            .count_documents(doc! { "status": DeadLetterStatus::Dead.as_str() })
            .await
    }

    pub async fn page(
        &self,
        filter: &DeadLetterFilter,
        page: &PageRequest,
    ) -> Result<(Vec<DeadLetter>, Option<String>), Error> {
        find_page(&self.collection, filter.to_document(), page, |d| {
            d.id.clone()
        })
        .await
    }

    /// The dead letters of one order, whatever their status, oldest first,
    /// at most `limit` (none if it is not positive). For an order's history.
    pub async fn of_order(&self, order_id: &str, limit: i64) -> Result<Vec<DeadLetter>, Error> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        self.collection
            .find(doc! { "orderId": order_id })
            .sort(doc! { "_id": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    /// The DEAD letters grouped by cause (reason class, event type, queue),
    /// the largest groups first, at most [`MAX_GROUPS`]. A record without a
    /// class (archived before they were) counts as `other`.
    pub async fn dead_groups(&self) -> Result<Vec<DeadLetterGroup>, Error> {
        #[derive(Deserialize)]
        struct Key {
            #[serde(rename = "reasonClass")]
            reason_class: ReasonClass,
            #[serde(rename = "eventType")]
            event_type: Option<String>,
            queue: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Row {
            #[serde(rename = "_id")]
            key: Key,
            count: i64,
            oldest_dead_at: bson::DateTime,
            newest_dead_at: bson::DateTime,
            sample_reason: String,
        }
        let pipeline = [
            doc! { "$match": { "status": DeadLetterStatus::Dead.as_str() } },
            // Newest first, so each group's `$first` reason is its newest.
            doc! { "$sort": { "_id": -1 } },
            doc! { "$group": {
                "_id": {
                    "reasonClass": { "$ifNull": ["$reasonClass", ReasonClass::Other.as_str()] },
                    "eventType": { "$ifNull": ["$eventType", null] },
                    "queue": "$queue",
                },
                "count": { "$sum": 1 },
                "oldestDeadAt": { "$min": "$deadAt" },
                "newestDeadAt": { "$max": "$deadAt" },
                "sampleReason": { "$first": "$reason" },
            } },
            doc! { "$sort": { "count": -1, "newestDeadAt": -1 } },
            doc! { "$limit": MAX_GROUPS },
        ];
        let rows: Vec<Document> = self
            .collection
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        rows.into_iter()
            .map(|row| {
                let row: Row = bson::from_document(row).map_err(Error::from)?;
                Ok(DeadLetterGroup {
                    reason_class: row.key.reason_class,
                    event_type: row.key.event_type,
                    queue: row.key.queue,
                    count: row.count.max(0) as u64,
                    oldest_dead_at: row.oldest_dead_at,
                    newest_dead_at: row.newest_dead_at,
                    sample_reason: row.sample_reason,
                })
            })
            .collect()
    }

    /// Publishes one DEAD letter back to its work queue, then marks it.
    pub async fn replay(
        &self,
        id: &str,
        publisher: &Publisher,
    ) -> Result<DeadLetter, DeadLetterError> {
        let letter = self.get(id).await?;
        if letter.status != DeadLetterStatus::Dead {
            return Err(DeadLetterError::NotDead {
                id: letter.id,
                status: letter.status,
            });
        }
        self.replay_letter(letter, publisher).await
    }

    /// Replays every DEAD letter matching `filter` (oldest first, at most
    /// [`MAX_REPLAY_BATCH`]); returns the ones replayed.
    pub(crate) async fn replay_matching(
        &self,
        filter: &DeadLetterFilter,
        publisher: &Publisher,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let letters = self.dead_matching(filter).await?;
        let mut replayed = Vec::with_capacity(letters.len());
        for letter in letters {
            replayed.push(self.replay_letter(letter, publisher).await?);
        }
        Ok(replayed)
    }

    async fn replay_letter(
        &self,
        letter: DeadLetter,
        publisher: &Publisher,
    ) -> Result<DeadLetter, DeadLetterError> {
        self.send_back(letter, publisher, 0).await
    }

    /// Sends the DEAD letters of transient failures back to their queues,
    /// `redrive.after` after they died, at most `redrive.times` times per
    /// message; returns how many it sent. An outage longer than the retry
    /// budget thus heals without an operator, while a message that keeps
    /// dying stays dead for one to look at.
    pub(crate) async fn redrive_due(
        &self,
        redrive: Redrive,
        publisher: &Publisher,
    ) -> Result<usize, DeadLetterError> {
        let died_before = bson::DateTime::from_millis(
            bson::DateTime::now().timestamp_millis() - redrive.after.as_millis() as i64,
        );
        let due: Vec<DeadLetter> = self
            .collection
            .find(doc! {
                "status": DeadLetterStatus::Dead.as_str(),
                "transient": true,
                "redrives": { "$lt": redrive.times },
                "deadAt": { "$lte": died_before },
            })
            .sort(doc! { "_id": 1 })
            .limit(MAX_REPLAY_BATCH as i64)
            .await?
            .try_collect()
            .await?;
        let count = due.len();
        for letter in due {
            tracing::info!(dead_letter = %letter.id, redrives = letter.redrives + 1, "sending a dead letter back by itself");
            self.send_back(letter, publisher, 1).await?;
        }
        Ok(count)
    }

    /// Publishes `letter` back to its work queue, counting `redrive` more
    /// automatic sends, then marks it REPLAYED.
    async fn send_back(
        &self,
        letter: DeadLetter,
        publisher: &Publisher,
        redrive: u32,
    ) -> Result<DeadLetter, DeadLetterError> {
        let mut headers = FieldTable::default();
        set_header(&mut headers, REPLAYED_FROM_HEADER, text(letter.id.clone()));
        set_header(
            &mut headers,
            REDRIVES_HEADER,
            AMQPValue::LongUInt(letter.redrives + redrive),
        );
        // No attempt header: the replay starts again at attempt 1.
        let outcome = publisher
            .publish(Outgoing {
                exchange: String::new(),
                routing_key: letter.queue.clone(),
                payload: letter.payload.clone().into_bytes(),
                headers,
                message_id: letter.message_id.clone(),
                correlation_id: letter.correlation_id.clone(),
                mandatory: true,
            })
            .await
            .map_err(|e| DeadLetterError::Broker(e.to_string()))?;
        if outcome != PublishOutcome::Confirmed {
            return Err(DeadLetterError::Broker(format!(
                "queue {} did not take it ({outcome:?})",
                letter.queue
            )));
        }
        let now = bson::DateTime::now();
        let marked = self
            .collection
            .find_one_and_update(
                doc! { "_id": &letter.id, "status": DeadLetterStatus::Dead.as_str() },
                doc! {
                    "$set": { "status": DeadLetterStatus::Replayed.as_str(), "replayedAt": now },
                    "$inc": { "replayCount": 1 },
                },
            )
            .return_document(ReturnDocument::After)
            .await?;
        tracing::info!(dead_letter = %letter.id, queue = %letter.queue, "dead letter replayed");
        match marked {
            Some(letter) => Ok(letter),
            // Another replay or a discard got there between our read and
            // this write; the copy we published is harmless (inbox).
            None => self.get(&letter.id).await,
        }
    }

    /// Marks one DEAD letter as discarded, keeping it on record.
    pub async fn discard(&self, id: &str, note: &str) -> Result<DeadLetter, DeadLetterError> {
        let discarded = self
            .collection
            .find_one_and_update(
                doc! { "_id": id, "status": DeadLetterStatus::Dead.as_str() },
                doc! { "$set": {
                    "status": DeadLetterStatus::Discarded.as_str(),
                    "discardedAt": bson::DateTime::now(),
                    "discardNote": note,
                } },
            )
            .return_document(ReturnDocument::After)
            .await?;
        match discarded {
            Some(letter) => {
                tracing::info!(dead_letter = %id, %note, "dead letter discarded");
                Ok(letter)
            }
            // Unknown (404) or not DEAD (409): the read tells which.
            None => {
                let letter = self.get(id).await?;
                Err(DeadLetterError::NotDead {
                    id: letter.id,
                    status: letter.status,
                })
            }
        }
    }

    /// The DEAD letters matching `filter`, oldest first, at most
    /// [`MAX_REPLAY_BATCH`]: what a filtered replay or discard acts on.
    async fn dead_matching(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, Error> {
        let mut query = filter.to_document();
        query.insert("status", DeadLetterStatus::Dead.as_str());
        self.collection
            .find(query)
            .sort(doc! { "_id": 1 })
            .limit(MAX_REPLAY_BATCH as i64)
            .await?
            .try_collect()
            .await
    }

    /// Discards every DEAD letter matching `filter` with `note` (oldest
    /// first, at most [`MAX_REPLAY_BATCH`]); returns the ones discarded. One
    /// replayed or discarded meanwhile by someone else is left out.
    pub async fn discard_matching(
        &self,
        filter: &DeadLetterFilter,
        note: &str,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let letters = self.dead_matching(filter).await?;
        let mut discarded = Vec::with_capacity(letters.len());
        for letter in letters {
            // One conditional write each, so the answer is exactly what
            // this call changed.
            match self.discard(&letter.id, note).await {
                Ok(letter) => discarded.push(letter),
                Err(DeadLetterError::NotDead { .. } | DeadLetterError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(discarded)
    }

    /// Gives the dead letters archived before orders and reason classes
    /// were recorded both, from the payload and reason they kept (the same
    /// functions as at archive time); returns how many. Safe beside the
    /// archiver and another instance doing the same: each write only sets
    /// these fields, and only on a record still without a class.
    pub async fn backfill_causes(&self, shutdown: &CancellationToken) -> Result<u64, Error> {
        const BATCH: i64 = 200;
        let mut done = 0;
        while !shutdown.is_cancelled() {
            let older: Vec<DeadLetter> = self
                .collection
                .find(doc! { "reasonClass": { "$exists": false } })
                .limit(BATCH)
                .await?
                .try_collect()
                .await?;
            if older.is_empty() {
                break;
            }
            let mut written = 0;
            for letter in older {
                let named = order_reference(letter.payload.as_bytes());
                let mut set = doc! {
                    "reasonClass": ReasonClass::of(&letter.reason, letter.transient).as_str(),
                    "orderId": named.order_id,
                };
                if letter.correlation_id.is_none() {
                    set.insert("correlationId", named.correlation_id);
                }
                written += self
                    .collection
                    .update_one(
                        doc! { "_id": &letter.id, "reasonClass": { "$exists": false } },
                        doc! { "$set": set },
                    )
                    .await?
                    .modified_count;
            }
            done += written;
            // Another instance took this batch: it goes on with the rest.
            if written == 0 {
                break;
            }
        }
        Ok(done)
    }
}

/// Backfills once at startup ([`DeadLetterStore::backfill_causes`]); a
/// failure leaves the rest for the next start.
pub(crate) async fn backfill_causes_once(store: DeadLetterStore, shutdown: CancellationToken) {
    match store.backfill_causes(&shutdown).await {
        Ok(0) => {}
        Ok(count) => tracing::info!(
            count,
            "older dead letters given their order and reason class"
        ),
        Err(error) => {
            tracing::warn!(%error, "could not backfill older dead letters; the next start tries again")
        }
    }
}

/// Sends transient dead letters back as they come due, until `shutdown`.
/// Looks often enough that one is sent within a fifth of the cool-down after
/// it is due (at most 30 s late).
pub(crate) async fn redrive_until(
    store: DeadLetterStore,
    publisher: std::sync::Arc<Publisher>,
    redrive: Redrive,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let every = (redrive.after / 5).clamp(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        match store.redrive_due(redrive, &publisher).await {
            Ok(0) => {}
            Ok(sent) => tracing::warn!(
                sent,
                "dead letters of transient failures sent back to their queues"
            ),
            Err(error) => tracing::warn!(%error, "could not send dead letters back; trying again"),
        }
    }
}

/// Builds the archived record of a delivery from a DLQ.
pub(crate) fn dead_letter_from(delivery: &Delivery, dlq: &str) -> DeadLetter {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let property =
        |value: &Option<lapin::types::ShortString>| value.as_ref().map(|s| s.to_string());
    let message_id = property(delivery.properties.message_id());
    let last_failure_at = header_string(&headers, LAST_FAILURE_HEADER);
    let queue = header_string(&headers, ORIGINAL_QUEUE_HEADER)
        .unwrap_or_else(|| dlq.trim_end_matches(".dlq").to_string());
    let dedupe_key = match (&message_id, &last_failure_at) {
        (Some(id), Some(at)) => format!("{queue}|{id}|{at}"),
        // Without both, two archivings cannot be told apart from two deaths.
        _ => uuid::Uuid::new_v4().to_string(),
    };
    let payload = String::from_utf8_lossy(&delivery.data).into_owned();
    let named = order_reference(&delivery.data);
    let reason = header_string(&headers, REASON_HEADER)
        .or_else(|| broker_reason(&headers))
        .unwrap_or_else(|| UNKNOWN_REASON.into());
    let transient = header_string(&headers, FAILURE_CLASS_HEADER).as_deref() == Some("transient");
    DeadLetter {
        id: uuid::Uuid::now_v7().to_string(),
        dedupe_key,
        routing_key: header_string(&headers, ORIGINAL_ROUTING_KEY_HEADER)
            .unwrap_or_else(|| delivery.routing_key.to_string()),
        queue,
        message_id,
        correlation_id: property(delivery.properties.correlation_id()).or(named.correlation_id),
        order_id: named.order_id,
        event_type: RawEnvelope::parse(&delivery.data)
            .ok()
            .map(|event| event.event_type),
        reason_class: ReasonClass::of(&reason, transient),
        reason,
        attempts: header_u32(&headers, ATTEMPT_HEADER).unwrap_or(1),
        first_failure_at: header_string(&headers, FIRST_FAILURE_HEADER),
        last_failure_at,
        last_error: header_string(&headers, LAST_ERROR_HEADER),
        payload,
        status: DeadLetterStatus::Dead,
        dead_at: bson::DateTime::now(),
        replay_count: 0,
        replayed_at: None,
        discarded_at: None,
        discard_note: None,
        transient,
        redrives: header_u32(&headers, REDRIVES_HEADER).unwrap_or(0),
    }
}

/// The reason RabbitMQ itself recorded (`x-death`), for messages it
/// dead-lettered without our consumer (a reject, an expired TTL).
fn broker_reason(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    header_string(first, "reason").map(|reason| format!("{BROKER_REASON_PREFIX}{reason}"))
}

/// Consumes one service's DLQ into its `dead_letters` collection.
pub(crate) struct DeadLetterArchiver {
    pub topology: Topology,
    pub subscription: Subscription,
    pub policy: RetryPolicy,
    pub store: DeadLetterStore,
}

impl QueueWorker for DeadLetterArchiver {
    fn label(&self) -> &str {
        "dead-letter archiver"
    }

    fn topology(&self) -> &Topology {
        &self.topology
    }

    async fn declare(&self, channel: &Channel) -> Result<String, lapin::Error> {
        self.topology
            .declare_subscription(channel, &self.subscription, &self.policy)
            .await?;
        Ok(self.topology.dead_letter_queue(&self.subscription))
    }

    async fn settle(
        &self,
        delivery: Delivery,
        _: &Publisher,
        acks: &Acks,
    ) -> Result<Settled, ConsumerError> {
        let letter = dead_letter_from(
            &delivery,
            &self.topology.dead_letter_queue(&self.subscription),
        );
        let stored = (|| self.store.archive(&letter))
            .retry(
                ExponentialBuilder::default()
                    .with_jitter()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(6),
            )
            .when(store::is_transient)
            .await;
        match stored {
            Ok(()) => {
                tracing::warn!(
                    dead_letter = %letter.id,
                    queue = %letter.queue,
                    reason = %letter.reason,
                    "dead letter archived"
                );
                Ok(acks.ack(&delivery))
            }
            Err(error) => {
                // Still in the DLQ: it is archived on a later delivery.
                tracing::error!(%error, "could not archive a dead letter; leaving it in the DLQ");
                acks.requeue(&delivery).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_by_order_and_request_matches_those_fields_only() {
        let filter = DeadLetterFilter {
            status: Some(DeadLetterStatus::Dead),
            order_id: Some("o-1".into()),
            correlation_id: Some("corr-1".into()),
            ..DeadLetterFilter::default()
        };
        assert_eq!(
            filter.to_document(),
            doc! { "status": "DEAD", "orderId": "o-1", "correlationId": "corr-1" }
        );
    }

    #[test]
    fn the_class_other_also_matches_records_archived_before_classes_were() {
        let other = DeadLetterFilter {
            reason_class: Some(ReasonClass::Other),
            ..DeadLetterFilter::default()
        };
        assert_eq!(
            other.to_document(),
            doc! { "reasonClass": { "$in": ["other", null] } }
        );
        let rule = DeadLetterFilter {
            reason_class: Some(ReasonClass::Rule),
            ..DeadLetterFilter::default()
        };
        assert_eq!(rule.to_document(), doc! { "reasonClass": "rule" });
    }

    #[test]
    fn a_group_without_an_event_type_is_selected_by_has_event_type_false() {
        let filter = |event_type: Option<&str>, has_event_type| DeadLetterFilter {
            event_type: event_type.map(str::to_string),
            has_event_type,
            ..DeadLetterFilter::default()
        };
        assert_eq!(
            filter(None, Some(false)).to_document(),
            doc! { "eventType": null }
        );
        assert_eq!(
            filter(None, Some(true)).to_document(),
            doc! { "eventType": { "$ne": null } }
        );
        assert_eq!(
            filter(Some("order.created"), Some(true)).to_document(),
            doc! { "eventType": "order.created" }
        );
        // A type and no type at once: every field must match, so none does.
        assert_eq!(
            filter(Some("order.created"), Some(false)).to_document(),
            doc! { "eventType": { "$in": [] } }
        );
    }
}
