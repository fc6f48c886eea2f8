//! An order's history: what each service did for it, recorded in the same
//! transaction as the change itself, so the history says exactly what
//! happened: a change that rolled back left no line.
//!
//! What a service records: the events it handled (with the transient
//! failures before, read from the delivery's headers, so a retry costs no
//! write of its own while the database may be down), the events it
//! published, and the order's status changes with their reasons. Dead
//! letters, their replays and discards are read from the dead-letter
//! archive when a history is asked for.
//!
//! Where the lines live: in the document the change writes anyway (the
//! order, the reservation, the notification; [`crate::store::Store::keep_in`]),
//! at most [`MAX_LINES`] of them, for as long as that document; so the
//! saga's common path costs no document of its own. The rare lines of a
//! change that writes no such document (an event handled without effect, a
//! notification given up on) are records in `saga_history`
//! ([`crate::store::UnitOfWork::record`]), which expire
//! `HISTORY_RETENTION_DAYS` (30) after they were written, through a TTL
//! index. `HISTORY_RETENTION_DAYS=0` records no line at all.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::{Collection, Database, IndexModel, bson::doc, options::IndexOptions};
use serde::{Deserialize, Serialize};

use crate::{
    deadletter::{DeadLetter, DeadLetterStatus},
    events::{OrderStatus, RawEnvelope},
    http::ApiOrderStatus,
};

pub(crate) const HISTORY: &str = "saga_history";

/// The most records one order's history reads from one service: an order
/// makes a handful per service; the cap bounds an order replayed in a loop.
pub const MAX_RECORDS: i64 = 500;

/// The most lines a document keeps of its order's history (an order, a
/// reservation): a saga run adds a handful; an order retried again and
/// again keeps its latest.
pub(crate) const MAX_LINES: usize = 200;

/// What a line of an order's history says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, poem_openapi::Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum HistoryKind {
    /// The service handled an event about the order (`eventType`,
    /// `eventId`, `causationId`; `attempt` is the delivery attempt).
    EventHandled,
    /// Handling an event failed transiently before it succeeded: `attempt`
    /// is how many attempts failed, `detail` the last error, `at` the first
    /// failure.
    Retried,
    /// The service published an event about the order.
    EventPublished,
    /// The order moved `from` one status `to` another, for `detail`.
    StatusChanged,
    /// A consumer gave up on an event about the order (`deadLetterId`,
    /// `detail` the reason).
    DeadLettered,
    /// An operator (or the automatic redrive) sent a dead letter back.
    DeadLetterReplayed,
    /// An operator gave up on a dead letter (`detail` the note).
    DeadLetterDiscarded,
    /// An email about the order: `status` is its outcome (PENDING, SENT,
    /// FAILED), `messageId` its Message-ID, `detail` the last error.
    Email,
}

/// One thing that happened to an order, in one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, poem_openapi::Object)]
#[serde(rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct HistoryItem {
    /// When it happened.
    #[serde(with = "precise_time")]
    pub at: DateTime<Utc>,
    /// The service it happened in.
    pub service: String,
    /// What happened.
    pub kind: HistoryKind,
    /// The event's type, e.g. `order.created`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub event_type: Option<String>,
    /// The event's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub event_id: Option<String>,
    /// The id of the event that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub causation_id: Option<String>,
    /// The delivery attempt that handled an event, or the failed attempts
    /// before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub attempt: Option<u32>,
    /// The status before a status change (absent when the order was created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub from: Option<ApiOrderStatus>,
    /// The status after a status change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub to: Option<ApiOrderStatus>,
    /// Why: a status change's reason, a failure's error, a discard's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub detail: Option<String>,
    /// A dead letter's id (the admin routes under `/admin/dead-letters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub dead_letter_id: Option<String>,
    /// An email's outcome: PENDING, SENT or FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub status: Option<String>,
    /// An email's Message-ID header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub message_id: Option<String>,
    /// An email's recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub recipient: Option<String>,
}

impl HistoryItem {
    /// An item of `kind` at `at` in `service`, every detail empty.
    pub fn new(service: &str, kind: HistoryKind, at: DateTime<Utc>) -> Self {
        HistoryItem {
            at,
            service: service.to_string(),
            kind,
            event_type: None,
            event_id: None,
            causation_id: None,
            attempt: None,
            from: None,
            to: None,
            detail: None,
            dead_letter_id: None,
            status: None,
            message_id: None,
            recipient: None,
        }
    }

    fn of_event(service: &str, kind: HistoryKind, at: DateTime<Utc>, event: &RawEnvelope) -> Self {
        HistoryItem {
            event_type: Some(event.event_type.clone()),
            event_id: Some(event.event_id.to_string()),
            causation_id: event.causation_id.map(|id| id.to_string()),
            ..HistoryItem::new(service, kind, at)
        }
    }
}

/// An item's time, stored to the microsecond. A BSON date keeps
/// milliseconds, and the saga's hops between services take less than one:
/// an event handled within the millisecond it was published in would tie
/// with its publication, and the history could show it first. Items written
/// before (as BSON dates) are read as well.
mod precise_time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use mongodb::bson::Bson;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        match Bson::deserialize(deserializer)? {
            Bson::String(text) => DateTime::parse_from_rfc3339(&text)
                .map(|at| at.with_timezone(&Utc))
                .map_err(D::Error::custom),
            Bson::DateTime(at) => Ok(at.to_chrono()),
            other => Err(D::Error::custom(format!("a time, not {other}"))),
        }
    }
}

/// What one change of a service did for one order, to be recorded with it.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    order_id: String,
    service: &'static str,
    items: Vec<HistoryItem>,
}

impl History {
    pub fn of(service: &'static str, order_id: &str) -> Self {
        History {
            order_id: order_id.to_string(),
            service,
            items: Vec::new(),
        }
    }

    /// The service handled `event` at `at`, after the failed attempts its
    /// delivery reports. `at` is the time the handling decided on (the
    /// `now` its change and events were made with), so that the handling
    /// never reads as later than what it caused.
    pub fn handled(mut self, event: &RawEnvelope, at: DateTime<Utc>) -> Self {
        let delivery = &event.delivery;
        if delivery.attempt > 1 {
            self.items.push(HistoryItem {
                attempt: Some(delivery.attempt - 1),
                detail: delivery.last_error.clone(),
                ..HistoryItem::of_event(
                    self.service,
                    HistoryKind::Retried,
                    delivery.first_failure_at.unwrap_or(at),
                    event,
                )
            });
        }
        self.items.push(HistoryItem {
            attempt: (delivery.attempt > 0).then_some(delivery.attempt),
            ..HistoryItem::of_event(self.service, HistoryKind::EventHandled, at, event)
        });
        self
    }

    /// The service handled `event`, which changed nothing, for `why`.
    pub fn handled_without_effect(mut self, event: &RawEnvelope, why: String) -> Self {
        self = self.handled(event, Utc::now());
        if let Some(handled) = self.items.last_mut() {
            handled.detail = Some(why);
        }
        self
    }

    /// The service published `events`.
    pub fn published(mut self, events: &[RawEnvelope]) -> Self {
        self.items.extend(events.iter().map(|event| {
            HistoryItem::of_event(
                self.service,
                HistoryKind::EventPublished,
                event.occurred_at,
                event,
            )
        }));
        self
    }

    /// The order moved from `from` (`None`: it was just created) to `to`.
    pub fn status(
        mut self,
        from: Option<OrderStatus>,
        to: OrderStatus,
        reason: Option<String>,
        at: DateTime<Utc>,
    ) -> Self {
        self.items.push(HistoryItem {
            from: from.map(Into::into),
            to: Some(to.into()),
            detail: reason,
            ..HistoryItem::new(self.service, HistoryKind::StatusChanged, at)
        });
        self
    }

    /// Adds its lines to those a document keeps of its order's history,
    /// dropping the oldest past [`MAX_LINES`].
    pub(crate) fn append_to(self, lines: &mut Vec<HistoryItem>) {
        lines.extend(self.items);
        let over = lines.len().saturating_sub(MAX_LINES);
        lines.drain(..over);
    }

    /// The document it is stored as.
    pub(crate) fn into_record(self) -> HistoryRecord {
        HistoryRecord {
            id: uuid::Uuid::now_v7().to_string(),
            order_id: self.order_id,
            at: Utc::now(),
            items: self.items,
        }
    }
}

/// What one commit recorded for one order.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HistoryRecord {
    #[serde(rename = "_id")]
    id: String,
    order_id: String,
    /// When it was written; the TTL index expires it from here.
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    at: DateTime<Utc>,
    items: Vec<HistoryItem>,
}

/// A service's recorded part of the orders' histories.
#[derive(Clone)]
pub struct HistoryStore {
    records: Collection<HistoryRecord>,
}

impl HistoryStore {
    pub fn new(db: &Database) -> Self {
        HistoryStore {
            records: db.collection(HISTORY),
        }
    }

    /// The index an order's history is read by, and the TTL index that
    /// expires records `retention` after they were written.
    pub async fn ensure_indexes(&self, retention: Duration) -> Result<(), mongodb::error::Error> {
        self.records
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "orderId": 1, "at": 1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "at": 1 })
                    .options(IndexOptions::builder().expire_after(retention).build())
                    .build(),
            ])
            .await
            .map(drop)
    }

    /// What this service recorded for `order_id`, oldest first.
    pub async fn of_order(
        &self,
        order_id: &str,
    ) -> Result<Vec<HistoryItem>, mongodb::error::Error> {
        let records: Vec<HistoryRecord> = self
            .records
            .find(doc! { "orderId": order_id })
            .sort(doc! { "at": 1 })
            .limit(MAX_RECORDS)
            .await?
            .try_collect()
            .await?;
        Ok(records.into_iter().flat_map(|r| r.items).collect())
    }
}

/// The lines a service's dead letters of one order add to its history: each
/// death, and the replay or discard that settled it.
pub(crate) fn dead_letter_items(service: &str, letters: &[DeadLetter]) -> Vec<HistoryItem> {
    let mut items = Vec::new();
    for letter in letters {
        let about = |kind, at: mongodb::bson::DateTime| HistoryItem {
            event_type: letter.event_type.clone(),
            event_id: letter.message_id.clone(),
            dead_letter_id: Some(letter.id.clone()),
            ..HistoryItem::new(service, kind, at.to_chrono())
        };
        items.push(HistoryItem {
            attempt: Some(letter.attempts),
            detail: Some(letter.reason.clone()),
            status: Some(letter.status.as_str().to_string()),
            ..about(HistoryKind::DeadLettered, letter.dead_at)
        });
        if let Some(at) = letter.replayed_at {
            items.push(about(HistoryKind::DeadLetterReplayed, at));
        }
        if let (Some(at), DeadLetterStatus::Discarded) = (letter.discarded_at, letter.status) {
            items.push(HistoryItem {
                detail: letter.discard_note.clone(),
                ..about(HistoryKind::DeadLetterDiscarded, at)
            });
        }
    }
    items
}

/// Items from several sources in time order (stable: one source's items at
/// the same instant keep their order).
pub fn in_time_order(mut items: Vec<HistoryItem>) -> Vec<HistoryItem> {
    items.sort_by_key(|item| item.at);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Cause, DeliveryInfo, InventoryReleased};

    fn released() -> RawEnvelope {
        Cause::request("inventory-service", "corr").emit(InventoryReleased {
            order_id: "o1".into(),
            lines: Vec::new(),
            attempt: 1,
        })
    }

    #[test]
    fn a_handled_event_after_failures_records_the_retries_before_it() {
        let mut event = released();
        let first_failure = Utc::now() - chrono::Duration::seconds(30);
        event.delivery = DeliveryInfo {
            attempt: 3,
            first_failure_at: Some(first_failure),
            last_error: Some("database unavailable".into()),
        };
        let history = History::of("order-service", "o1").handled(&event, Utc::now());
        let [retried, handled] = history.items.as_slice() else {
            panic!("{:?}", history.items)
        };
        assert_eq!(retried.kind, HistoryKind::Retried);
        assert_eq!(retried.attempt, Some(2));
        assert_eq!(retried.at, first_failure);
        assert_eq!(retried.detail.as_deref(), Some("database unavailable"));
        assert_eq!(handled.kind, HistoryKind::EventHandled);
        assert_eq!(handled.attempt, Some(3));
        assert_eq!(handled.event_id, Some(event.event_id.to_string()));
        assert_eq!(handled.event_type.as_deref(), Some("inventory.released"));

        event.delivery = DeliveryInfo {
            attempt: 1,
            ..DeliveryInfo::default()
        };
        let first_time = History::of("order-service", "o1").handled(&event, Utc::now());
        assert_eq!(first_time.items.len(), 1, "no retry line");
    }

    #[test]
    fn published_events_and_status_changes_keep_their_own_times_and_causes() {
        let event = released();
        let at = Utc::now();
        let history = History::of("inventory-service", "o1")
            .published(std::slice::from_ref(&event))
            .status(
                Some(OrderStatus::Pending),
                OrderStatus::Failed,
                Some("late".into()),
                at,
            );
        assert_eq!(history.items[0].at, event.occurred_at);
        assert_eq!(history.items[0].kind, HistoryKind::EventPublished);
        assert_eq!(history.items[1].from, Some(ApiOrderStatus::Pending));
        assert_eq!(history.items[1].to, Some(ApiOrderStatus::Failed));
        let record = history.into_record();
        assert_eq!(record.order_id, "o1");
        assert_eq!(record.items.len(), 2);
    }

    #[test]
    fn an_items_time_is_stored_to_the_microsecond_and_old_millisecond_times_still_read() {
        let at = DateTime::parse_from_rfc3339("2026-12-06T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let item = HistoryItem::new("order-service", HistoryKind::EventHandled, at);
        let stored = bson::to_vec(&item).unwrap();
        let read: HistoryItem = bson::from_slice(&stored).unwrap();
        assert_eq!(read.at, at);

        let mut old = bson::to_document(&item).unwrap();
        old.insert("at", bson::DateTime::from_chrono(at));
        let read: HistoryItem = bson::from_slice(&bson::to_vec(&old).unwrap()).unwrap();
        assert_eq!(read.at.timestamp_millis(), at.timestamp_millis());
    }

    #[test]
    fn a_document_keeps_its_latest_lines() {
        let line = |n: i64| {
            HistoryItem::new(
                "order-service",
                HistoryKind::EventHandled,
                DateTime::from_timestamp(n, 0).unwrap(),
            )
        };
        let mut lines: Vec<HistoryItem> = (0..MAX_LINES as i64 - 1).map(line).collect();
        let mut more = History::of("order-service", "o1");
        more.items = vec![line(1000), line(1001)];
        more.append_to(&mut lines);
        assert_eq!(lines.len(), MAX_LINES);
        assert_eq!(lines[0].at, line(1).at, "the oldest dropped");
        assert_eq!(lines[MAX_LINES - 1].at, line(1001).at);
    }

    #[test]
    fn items_from_several_services_come_in_time_order() {
        let at = Utc::now();
        let item = |service: &str, seconds| {
            HistoryItem::new(
                service,
                HistoryKind::EventHandled,
                at + chrono::Duration::seconds(seconds),
            )
        };
        let sorted = in_time_order(vec![item("b", 2), item("a", 1), item("c", 2), item("d", 0)]);
        let services: Vec<&str> = sorted.iter().map(|i| i.service.as_str()).collect();
        assert_eq!(services, ["d", "a", "b", "c"]);
    }
}
