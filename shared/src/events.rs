//! The event contract between the services: one envelope, and one payload
//! type per routing key. Money in events is integer cents (`…Cents` fields) so
//! that no consumer ever rounds a float.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::{broker::Subscription, registry::Service};

/// Every message on the bus. `eventType` is also the routing key.
///
/// Read tolerantly: a field this build does not know is ignored, so a
/// producer may add one before every consumer is upgraded. That cannot hide
/// a mistake: every field a consumer relies on is still required, and one
/// that changes meaning gets a new `eventVersion` instead (see [`Event`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: u32,
    pub occurred_at: DateTime<Utc>,
    /// Follows one order from the HTTP request through every hop.
    pub correlation_id: String,
    /// The event that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// The service that emitted it.
    pub source: String,
    pub data: T,
    /// The W3C trace context of the span that caused it. Not part of the
    /// body: it travels in the outbox record and the AMQP `traceparent`
    /// header, where tracing tools look for it.
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// How this copy reached its consumer (attempt, earlier failures). Not
    /// part of the body: the consumer fills it from the AMQP headers.
    #[serde(skip)]
    pub delivery: DeliveryInfo,
}

/// What the broker's headers say about one delivery of an event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliveryInfo {
    /// 1 for the first attempt; more after transient failures.
    pub attempt: u32,
    /// When handling it first failed, if it did.
    pub first_failure_at: Option<DateTime<Utc>>,
    /// The last failure's error, if it failed before.
    pub last_error: Option<String>,
}

/// An envelope whose payload has not been interpreted yet.
pub type RawEnvelope = Envelope<serde_json::Value>;

/// A payload type and the routing key it travels under.
///
/// How an event evolves: a field added that old readers may ignore keeps
/// the version (payloads are read tolerantly; give the field a default for
/// the events already on the bus). A change old readers would misread bumps
/// `VERSION`, and [`Event::upcast`] brings the previous version's payload up
/// to date, so every consumer takes the current and the previous version.
/// A version newer than a consumer knows is a transient failure
/// ([`ContractError::NewerVersion`]): it is retried until an upgraded
/// instance takes it, so producers and consumers upgrade in any order.
pub trait Event: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    const VERSION: u32 = 1;

    /// The payload of version `VERSION - 1`, rewritten as this version
    /// reads it. Only events past version 1 have one.
    fn upcast(previous: serde_json::Value) -> Result<serde_json::Value, String> {
        let _ = previous;
        Err(format!(
            "{} has no version before {}",
            Self::TYPE,
            Self::VERSION
        ))
    }
}

impl<T: Event> Envelope<T> {
    /// A new event, `causation` being the event that led to it (if any).
    pub fn new(source: &str, correlation_id: &str, causation: Option<Uuid>, data: T) -> Self {
        Envelope {
            event_id: Uuid::now_v7(),
            event_type: T::TYPE.to_string(),
            event_version: T::VERSION,
            occurred_at: Utc::now(),
            correlation_id: correlation_id.to_string(),
            causation_id: causation,
            source: source.to_string(),
            data,
            traceparent: None,
            delivery: DeliveryInfo::default(),
        }
    }
}

impl<T: Event> Envelope<T> {
    /// The same event with its payload as plain JSON, so events of different
    /// types can travel together.
    pub(crate) fn into_raw(self) -> RawEnvelope {
        Envelope {
            event_id: self.event_id,
            event_type: self.event_type,
            event_version: self.event_version,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            source: self.source,
            data: serde_json::to_value(self.data).expect("events serialize"),
            traceparent: self.traceparent,
            delivery: self.delivery,
        }
    }
}

/// Where the next events come from and why: the emitting service, the
/// correlation id that follows the order, the event that caused them (none
/// for an HTTP request), and the trace they belong to. Domain functions
/// take one and return their events ready to be written.
#[derive(Clone, Debug)]
pub struct Cause {
    source: &'static str,
    correlation_id: String,
    causation_id: Option<Uuid>,
    traceparent: Option<String>,
}

impl Cause {
    /// Events caused by an HTTP request carrying `correlation_id`, in the
    /// trace of the current span (the request's).
    pub fn request(source: &'static str, correlation_id: &str) -> Self {
        Cause {
            source,
            correlation_id: correlation_id.to_string(),
            causation_id: None,
            traceparent: crate::telemetry::current_traceparent(),
        }
    }

    /// Events caused by handling `event`: same correlation, caused by it,
    /// in the trace its consumer continued.
    pub fn event(source: &'static str, event: &RawEnvelope) -> Self {
        Cause {
            source,
            correlation_id: event.correlation_id.clone(),
            causation_id: Some(event.event_id),
            traceparent: event.traceparent.clone(),
        }
    }

    /// The same cause in the trace of `traceparent`: for events of work
    /// done later, away from the span that asked for it (an email sent).
    pub fn in_trace(self, traceparent: Option<String>) -> Self {
        Cause {
            traceparent,
            ..self
        }
    }

    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// A new event with `data`, ready for a unit of work to emit.
    pub fn emit<T: Event>(&self, data: T) -> RawEnvelope {
        Envelope {
            traceparent: self.traceparent.clone(),
            ..Envelope::new(self.source, &self.correlation_id, self.causation_id, data)
        }
        .into_raw()
    }
}

/// Why a message can never be handled, whatever the number of attempts.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("message body is not an event envelope: {0}")]
    NotAnEnvelope(serde_json::Error),
    /// Older than the previous version, which is all a consumer upcasts.
    #[error(
        "{event_type} version {version} is too old (this consumer reads {oldest} to {current})"
    )]
    UnknownVersion {
        event_type: String,
        version: u32,
        oldest: u32,
        current: u32,
    },
    /// Made by a newer producer than this consumer: another instance, or
    /// this one once upgraded, will read it. Transient, not permanent.
    #[error("{event_type} version {version} is newer than this consumer reads ({current})")]
    NewerVersion {
        event_type: String,
        version: u32,
        current: u32,
    },
    #[error("{event_type} payload does not match the contract: {source}")]
    BadPayload {
        event_type: String,
        source: serde_json::Error,
    },
    #[error("{consumer} does not handle {event_type}")]
    NotSubscribed {
        event_type: String,
        consumer: &'static str,
    },
}

impl RawEnvelope {
    pub fn parse(body: &[u8]) -> Result<Self, ContractError> {
        serde_json::from_slice(body).map_err(ContractError::NotAnEnvelope)
    }

    /// Interprets the payload as `T`, checking the version first: the
    /// current one as it is, the previous one through [`Event::upcast`].
    pub fn decode<T: Event>(&self) -> Result<T, ContractError> {
        let bad_payload = |source| ContractError::BadPayload {
            event_type: self.event_type.clone(),
            source,
        };
        match self.event_version {
            v if v == T::VERSION => T::deserialize(&self.data).map_err(bad_payload),
            v if v > T::VERSION => Err(ContractError::NewerVersion {
                event_type: self.event_type.clone(),
                version: v,
                current: T::VERSION,
            }),
            v if v + 1 == T::VERSION && v >= 1 => {
                let upcast = T::upcast(self.data.clone())
                    .map_err(|reason| bad_payload(serde::de::Error::custom(reason)))?;
                T::deserialize(upcast).map_err(bad_payload)
            }
            v => Err(ContractError::UnknownVersion {
                event_type: self.event_type.clone(),
                version: v,
                oldest: T::VERSION.saturating_sub(1).max(1),
                current: T::VERSION,
            }),
        }
    }

    /// The order this event is about, if its payload names one.
    pub fn order_id(&self) -> Option<&str> {
        self.data.get("orderId").and_then(|id| id.as_str())
    }
}

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted; the inventory has not answered yet.
    Pending,
    /// Stock is held and prices are fixed.
    Confirmed,
    /// The inventory could not hold every line.
    Rejected,
    /// Handed to the carrier.
    Shipped,
    /// Received by the customer.
    Delivered,
    /// Cancelled by the customer; held stock was released.
    Cancelled,
    /// Processing gave up.
    Failed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Rejected => "REJECTED",
            OrderStatus::Shipped => "SHIPPED",
            OrderStatus::Delivered => "DELIVERED",
            OrderStatus::Cancelled => "CANCELLED",
            OrderStatus::Failed => "FAILED",
        }
    }
}

/// What a notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotificationKind {
    /// The customer's order is confirmed.
    OrderConfirmed,
    /// The customer's order could not be accepted.
    OrderRejected,
    /// The customer's order was cancelled.
    OrderCancelled,
    /// The customer's order could not be processed in time.
    OrderFailed,
    /// A product fell to its low-stock threshold (to the admin).
    LowStock,
    /// Sent by an admin through the API.
    Manual,
}

impl NotificationKind {
    /// The name the API and the events use.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::OrderConfirmed => "ORDER_CONFIRMED",
            NotificationKind::OrderRejected => "ORDER_REJECTED",
            NotificationKind::OrderCancelled => "ORDER_CANCELLED",
            NotificationKind::OrderFailed => "ORDER_FAILED",
            NotificationKind::LowStock => "LOW_STOCK",
            NotificationKind::Manual => "MANUAL",
        }
    }
}

/// A product and quantity asked for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: u32,
}

/// A line with the unit price the inventory held it at.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PricedLine {
    pub product_id: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// A line the inventory could not fill.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShortLine {
    pub product_id: String,
    pub requested: u32,
    /// Available stock when the reservation was tried; `None` for an unknown product.
    pub available: Option<i64>,
}

/// Starts a run of an order's saga. Version 2 added `attempt`: a version 1
/// reader would take a retried saga's `order.created` for a duplicate of
/// the first and never answer it, so the change needed a new version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub order_id: String,
    pub customer_id: String,
    pub customer_email: String,
    pub items: Vec<OrderLine>,
    /// Which run of the order's saga this starts: 1, then one more for each
    /// retry of the FAILED order.
    pub attempt: u32,
}

/// Version 1 of `order.created` always started the first run.
fn order_created_from_v1(mut v1: serde_json::Value) -> Result<serde_json::Value, String> {
    v1.as_object_mut()
        .ok_or("the payload is not an object")?
        .insert("attempt".into(), 1.into());
    Ok(v1)
}

/// The run of the saga of events (and documents) written before runs were
/// counted: `#[serde(default = "shared::events::first_attempt")]`.
pub fn first_attempt() -> u32 {
    1
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderConfirmed {
    pub order_id: String,
    pub customer_id: String,
    pub customer_email: String,
    pub items: Vec<PricedLine>,
    pub total_cents: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderRejected {
    pub order_id: String,
    pub customer_id: String,
    pub customer_email: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    pub order_id: String,
    pub customer_id: String,
    pub customer_email: String,
    /// `PENDING` or `CONFIRMED`.
    pub previous_status: OrderStatus,
    /// The run of the saga whose hold to release.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

/// The saga ran out of time: the order is FAILED, and whatever stock the
/// inventory holds for it must go back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderFailed {
    pub order_id: String,
    pub customer_id: String,
    pub customer_email: String,
    pub reason: String,
    /// The run of the saga that failed, whose hold to release.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatusChanged {
    pub order_id: String,
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub version: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReserved {
    pub order_id: String,
    pub lines: Vec<PricedLine>,
    /// The run of the saga this answers (its `order.created`'s).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReservationFailed {
    pub order_id: String,
    pub reason: String,
    pub short_lines: Vec<ShortLine>,
    /// The run of the saga this answers (its `order.created`'s).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReleased {
    pub order_id: String,
    pub lines: Vec<OrderLine>,
    /// The run of the saga whose hold was released.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryUpdated {
    pub product_id: String,
    pub stock: i64,
    pub reserved: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryLow {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub stock: i64,
    pub low_stock_threshold: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSent {
    pub notification_id: String,
    pub kind: NotificationKind,
    pub recipient: String,
    pub order_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationFailed {
    pub notification_id: String,
    pub kind: NotificationKind,
    pub recipient: String,
    pub order_id: Option<String>,
    pub last_error: String,
}

/// The contract's table: every event type and its routing key, in one place.
/// Bindings, dispatch and `mandatory` publishing all derive from it.
/// An event past version 1 names its version and the function that
/// upcasts its previous version: `Type = "key", version N upcast function;`.
macro_rules! contract {
    ($($ty:ident = $key:literal $(, version $version:literal upcast $upcast:path)?;)+) => {
        $(impl Event for $ty {
            const TYPE: &'static str = $key;
            $(
                const VERSION: u32 = $version;
                fn upcast(previous: serde_json::Value) -> Result<serde_json::Value, String> {
                    $upcast(previous)
                }
            )?
        })+

        /// Every routing key of the contract.
        pub const EVENT_TYPES: &[&str] = &[$($key),+];
    };
}

contract! {
    OrderCreated = "order.created", version 2 upcast order_created_from_v1;
    OrderConfirmed = "order.confirmed";
    OrderRejected = "order.rejected";
    OrderCancelled = "order.cancelled";
    OrderFailed = "order.failed";
    OrderStatusChanged = "order.status_changed";
    InventoryReserved = "inventory.reserved";
    InventoryReservationFailed = "inventory.reservation_failed";
    InventoryReleased = "inventory.released";
    InventoryUpdated = "inventory.updated";
    InventoryLow = "inventory.low";
    NotificationSent = "notification.sent";
    NotificationFailed = "notification.failed";
}

/// What one service consumes: a variant per event type, named after its
/// payload. `TYPES` are the routing keys its queue binds, `SUBSCRIPTION`
/// its work queue (`<service>.events`) with them; `decode` checks an
/// envelope against the contract and dispatches on its type, so a handler
/// matches exhaustively on what it may receive.
macro_rules! inbound {
    ($(#[$meta:meta])* $name:ident for $consumer:literal { $($ty:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum $name {
            $($ty($ty)),+
        }

        impl $name {
            /// The routing keys the consumer's queue binds.
            pub const TYPES: &'static [&'static str] = &[$(<$ty as Event>::TYPE),+];

            /// The consumer's work queue and the routing keys bound to it.
            pub const SUBSCRIPTION: Subscription = Subscription {
                queue: concat!($consumer, ".events"),
                routing_keys: Self::TYPES,
            };

            /// The payload of `event`, if this consumer handles its type.
            pub fn decode(event: &RawEnvelope) -> Result<Self, ContractError> {
                $(if event.event_type == <$ty as Event>::TYPE {
                    return event.decode::<$ty>().map($name::$ty);
                })+
                Err(ContractError::NotSubscribed {
                    event_type: event.event_type.clone(),
                    consumer: $consumer,
                })
            }
        }
    };
}

inbound! {
    /// The inventory's answers, for the order service.
    ToOrderService for "order-service" {
        InventoryReserved,
        InventoryReservationFailed,
        InventoryReleased,
    }
}

inbound! {
    /// Orders to reserve or release, for the inventory service.
    ToInventoryService for "inventory-service" { OrderCreated, OrderCancelled, OrderFailed }
}

inbound! {
    /// What a customer or the admin should hear about, for the notification service.
    ToNotificationService for "notification-service" {
        OrderConfirmed,
        OrderRejected,
        OrderCancelled,
        OrderFailed,
        InventoryLow,
    }
}

/// Every consumer of the contract, one for each service of
/// services/registry.txt (a test there checks both agree): the broker's
/// bindings, and which events are published `mandatory`.
pub(crate) const SUBSCRIPTIONS: &[Subscription] = &[
    ToOrderService::SUBSCRIPTION,
    ToInventoryService::SUBSCRIPTION,
    ToNotificationService::SUBSCRIPTION,
];

/// `service`'s subscription: the one whose work queue is named after it
/// (`inventory-service.events`). Only the registry's services are asked
/// for, and each has one (a test in `registry` checks it).
pub(crate) fn subscription_of(service: &Service) -> &'static Subscription {
    SUBSCRIPTIONS
        .iter()
        .find(|s| s.queue.strip_suffix(".events") == Some(service.service.as_str()))
        .unwrap_or_else(|| panic!("no consumer of the contract is {}", service.service))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created() -> Envelope<OrderCreated> {
        Envelope::new(
            "order",
            "corr-1",
            None,
            OrderCreated {
                order_id: "o1".into(),
                customer_id: "c1".into(),
                customer_email: "c1@example.com".into(),
                items: vec![OrderLine {
                    product_id: "p1".into(),
                    quantity: 2,
                }],
                attempt: 1,
            },
        )
    }

    #[test]
    fn an_envelope_round_trips_through_json_in_camel_case() {
        let json = serde_json::to_vec(&created()).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"eventType\":\"order.created\""), "{text}");
        assert!(text.contains("\"correlationId\":\"corr-1\""), "{text}");
        let raw = RawEnvelope::parse(&json).unwrap();
        assert_eq!(raw.decode::<OrderCreated>().unwrap(), created().data);
    }

    #[test]
    fn a_consumer_decodes_what_it_binds_and_refuses_the_rest() {
        let raw = created().into_raw();
        assert_eq!(
            ToInventoryService::decode(&raw).unwrap(),
            ToInventoryService::OrderCreated(created().data)
        );
        assert!(matches!(
            ToOrderService::decode(&raw),
            Err(ContractError::NotSubscribed {
                consumer: "order-service",
                ..
            })
        ));
        assert_eq!(
            ToInventoryService::TYPES,
            ["order.created", "order.cancelled", "order.failed"]
        );
        for key in ToNotificationService::TYPES {
            assert!(EVENT_TYPES.contains(key), "{key} is in the contract");
        }
    }

    #[test]
    fn statuses_and_kinds_travel_as_the_api_spells_them() {
        let changed = serde_json::to_value(OrderStatusChanged {
            order_id: "o1".into(),
            from: OrderStatus::Confirmed,
            to: OrderStatus::Shipped,
            version: 3,
        })
        .unwrap();
        assert_eq!(changed["from"], "CONFIRMED");
        assert_eq!(changed["to"], "SHIPPED");
        assert_eq!(
            serde_json::to_value(NotificationKind::LowStock).unwrap(),
            NotificationKind::LowStock.as_str()
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_not_an_envelope() {
        assert!(matches!(
            RawEnvelope::parse(b"{oops"),
            Err(ContractError::NotAnEnvelope(_))
        ));
    }

    #[test]
    fn a_newer_version_is_not_read_and_is_worth_retrying() {
        let mut raw = RawEnvelope::parse(&serde_json::to_vec(&created()).unwrap()).unwrap();
        raw.event_version = OrderCreated::VERSION + 1;
        raw.data = serde_json::json!({"reshaped": true});
        let refused = raw.decode::<OrderCreated>().unwrap_err();
        assert!(
            matches!(refused, ContractError::NewerVersion { .. }),
            "{refused:?}"
        );
        assert!(matches!(
            crate::broker::HandleError::from(refused),
            crate::broker::HandleError::Transient(_)
        ));
    }

    #[test]
    fn a_version_older_than_the_previous_one_is_refused_for_good() {
        let mut raw = RawEnvelope::parse(&serde_json::to_vec(&created()).unwrap()).unwrap();
        raw.event_version = 0;
        let refused = raw.decode::<OrderCreated>().unwrap_err();
        assert!(
            matches!(refused, ContractError::UnknownVersion { version: 0, .. }),
            "{refused:?}"
        );
        assert!(matches!(
            crate::broker::HandleError::from(refused),
            crate::broker::HandleError::Permanent(_)
        ));
    }

    /// A contract of its own, so its table does not hide the real one.
    mod versioned {
        use super::*;

        /// An event at version 2 whose version 1 called its field `name`.
        #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
        #[serde(rename_all = "camelCase")]
        pub(crate) struct Renamed {
            pub title: String,
            pub pages: u32,
        }

        fn renamed_from_v1(mut previous: serde_json::Value) -> Result<serde_json::Value, String> {
            let fields = previous.as_object_mut().ok_or("not an object")?;
            let name = fields.remove("name").ok_or("no name")?;
            fields.insert("title".into(), name);
            Ok(previous)
        }

        contract! {
            Renamed = "test.renamed", version 2 upcast renamed_from_v1;
        }
    }

    #[test]
    fn the_previous_version_is_upcast_and_the_current_one_read_as_it_is() {
        use versioned::{EVENT_TYPES, Renamed};
        let mut raw = Cause::request("test", "corr").emit(Renamed {
            title: "t".into(),
            pages: 3,
        });
        assert_eq!(raw.event_version, 2);
        assert_eq!(EVENT_TYPES, ["test.renamed"]);
        assert_eq!(raw.decode::<Renamed>().unwrap().title, "t");

        raw.event_version = 1;
        raw.data = serde_json::json!({"name": "old", "pages": 4});
        assert_eq!(
            raw.decode::<Renamed>().unwrap(),
            Renamed {
                title: "old".into(),
                pages: 4
            }
        );
        // A previous version the upcast cannot read is a bad payload.
        raw.data = serde_json::json!({"pages": 4});
        assert!(matches!(
            raw.decode::<Renamed>(),
            Err(ContractError::BadPayload { .. })
        ));
    }

    #[test]
    fn order_created_version_1_is_read_as_the_first_attempt() {
        let mut raw = created().into_raw();
        assert_eq!(raw.event_version, 2);
        raw.event_version = 1;
        raw.data.as_object_mut().unwrap().remove("attempt");
        assert_eq!(raw.decode::<OrderCreated>().unwrap(), created().data);
        // Version 2 needs it.
        raw.event_version = 2;
        assert!(matches!(
            raw.decode::<OrderCreated>(),
            Err(ContractError::BadPayload { .. })
        ));
    }

    #[test]
    fn answers_written_before_attempts_were_counted_belong_to_the_first() {
        let reserved: InventoryReserved =
            serde_json::from_value(serde_json::json!({"orderId": "o1", "lines": []})).unwrap();
        assert_eq!(reserved.attempt, 1);
    }

    #[test]
    fn fields_this_build_does_not_know_are_ignored_in_the_envelope_and_the_payload() {
        let mut json = serde_json::to_value(created()).unwrap();
        json["addedLater"] = serde_json::json!({"by": "a newer producer"});
        json["data"]["giftWrap"] = serde_json::json!(true);
        let raw = RawEnvelope::parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(raw.decode::<OrderCreated>().unwrap(), created().data);
        // A field the consumer needs is still required.
        json["data"].as_object_mut().unwrap().remove("customerId");
        let raw = RawEnvelope::parse(json.to_string().as_bytes()).unwrap();
        assert!(matches!(
            raw.decode::<OrderCreated>(),
            Err(ContractError::BadPayload { .. })
        ));
    }

    #[test]
    fn a_payload_of_the_wrong_shape_is_a_contract_error() {
        let mut raw = RawEnvelope::parse(&serde_json::to_vec(&created()).unwrap()).unwrap();
        raw.data = serde_json::json!({"orderId": 7});
        assert!(matches!(
            raw.decode::<OrderCreated>(),
            Err(ContractError::BadPayload { .. })
        ));
    }
}
