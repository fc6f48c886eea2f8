//! The event contract between the services: one envelope, and one payload
//! type per routing key. Money in events is integer cents (`…Cents` fields) so
//! that no consumer ever rounds a float.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// Every message on the bus. `eventType` is also the routing key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
}

/// An envelope whose payload has not been interpreted yet.
pub type RawEnvelope = Envelope<serde_json::Value>;

/// A payload type and the routing key it travels under.
pub trait Event: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    const VERSION: u32 = 1;
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
        }
    }
}

impl<T: Event> Envelope<T> {
    /// The same event with its payload as plain JSON, so events of different
    /// types can travel together.
    pub fn into_raw(self) -> RawEnvelope {
        Envelope {
            event_id: self.event_id,
            event_type: self.event_type,
            event_version: self.event_version,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            source: self.source,
            data: serde_json::to_value(self.data).expect("events serialize"),
        }
    }
}

/// Where the next events come from and why: the emitting service, the
/// correlation id that follows the order, and the event that caused them
/// (none for an HTTP request). Domain functions take one and return their
/// events ready to be written.
#[derive(Clone, Debug)]
pub struct Cause {
    source: &'static str,
    correlation_id: String,
    causation_id: Option<Uuid>,
}

impl Cause {
    /// Events caused by an HTTP request carrying `correlation_id`.
    pub fn request(source: &'static str, correlation_id: &str) -> Self {
        Cause {
            source,
            correlation_id: correlation_id.to_string(),
            causation_id: None,
        }
    }

    /// Events caused by handling `event`: same correlation, caused by it.
    pub fn event(source: &'static str, event: &RawEnvelope) -> Self {
        Cause {
            source,
            correlation_id: event.correlation_id.clone(),
            causation_id: Some(event.event_id),
        }
    }

    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// A new event with `data`, ready for a unit of work to emit.
    pub fn emit<T: Event>(&self, data: T) -> RawEnvelope {
        Envelope::new(self.source, &self.correlation_id, self.causation_id, data).into_raw()
    }
}

/// Why a message can never be handled, whatever the number of attempts.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("message body is not an event envelope: {0}")]
    NotAnEnvelope(serde_json::Error),
    #[error("{event_type} version {version} is not supported (expected {expected})")]
    UnknownVersion {
        event_type: String,
        version: u32,
        expected: u32,
    },
    #[error("{event_type} payload does not match the contract: {source}")]
    BadPayload {
        event_type: String,
        source: serde_json::Error,
    },
}

impl RawEnvelope {
    pub fn parse(body: &[u8]) -> Result<Self, ContractError> {
        serde_json::from_slice(body).map_err(ContractError::NotAnEnvelope)
    }

    /// Interprets the payload as `T`, checking the version first.
    pub fn decode<T: Event>(&self) -> Result<T, ContractError> {
        if self.event_version != T::VERSION {
            return Err(ContractError::UnknownVersion {
                event_type: self.event_type.clone(),
                version: self.event_version,
                expected: T::VERSION,
            });
        }
        T::deserialize(&self.data).map_err(|source| ContractError::BadPayload {
            event_type: self.event_type.clone(),
            source,
        })
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

macro_rules! event {
    ($ty:ident, $key:literal) => {
        impl Event for $ty {
            const TYPE: &'static str = $key;
        }
    };
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub order_id: String,
    pub customer_id: String,
    pub customer_email: String,
    pub items: Vec<OrderLine>,
}
event!(OrderCreated, "order.created");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderConfirmed {
    pub order_id: String,
    pub customer_id: String,
    pub customer_email: String,
    pub items: Vec<PricedLine>,
    pub total_cents: i64,
}
event!(OrderConfirmed, "order.confirmed");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderRejected {
    pub order_id: String,
    pub customer_id: String,
    pub customer_email: String,
    pub reason: String,
}
event!(OrderRejected, "order.rejected");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    pub order_id: String,
    pub customer_id: String,
    pub customer_email: String,
    /// `PENDING` or `CONFIRMED`.
    pub previous_status: String,
}
event!(OrderCancelled, "order.cancelled");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatusChanged {
    pub order_id: String,
    pub from: String,
    pub to: String,
    pub version: i64,
}
event!(OrderStatusChanged, "order.status_changed");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReserved {
    pub order_id: String,
    pub lines: Vec<PricedLine>,
}
event!(InventoryReserved, "inventory.reserved");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReservationFailed {
    pub order_id: String,
    pub reason: String,
    pub short_lines: Vec<ShortLine>,
}
event!(InventoryReservationFailed, "inventory.reservation_failed");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReleased {
    pub order_id: String,
    pub lines: Vec<OrderLine>,
}
event!(InventoryReleased, "inventory.released");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryUpdated {
    pub product_id: String,
    pub stock: i64,
    pub reserved: i64,
}
event!(InventoryUpdated, "inventory.updated");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryLow {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub stock: i64,
    pub low_stock_threshold: i64,
}
event!(InventoryLow, "inventory.low");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSent {
    pub notification_id: String,
    pub kind: String,
    pub recipient: String,
    pub order_id: Option<String>,
}
event!(NotificationSent, "notification.sent");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationFailed {
    pub notification_id: String,
    pub kind: String,
    pub recipient: String,
    pub order_id: Option<String>,
    pub last_error: String,
}
event!(NotificationFailed, "notification.failed");

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
    fn a_body_that_is_not_json_is_not_an_envelope() {
        assert!(matches!(
            RawEnvelope::parse(b"{oops"),
            Err(ContractError::NotAnEnvelope(_))
        ));
    }

    #[test]
    fn an_unknown_version_is_refused_before_the_payload_is_read() {
        let mut raw = RawEnvelope::parse(&serde_json::to_vec(&created()).unwrap()).unwrap();
        raw.event_version = 2;
        assert!(matches!(
            raw.decode::<OrderCreated>(),
            Err(ContractError::UnknownVersion { version: 2, .. })
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
