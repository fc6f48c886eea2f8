//! The event contract's enums as the HTTP APIs show them. The contract
//! ([`crate::events`]) knows nothing of the HTTP framework; each enum here
//! mirrors one of its enums for poem-openapi, under the contract's name in
//! the spec, with the conversions both ways generated (`remote`): a variant
//! added on one side and not the other does not compile.

use poem_openapi::Enum;
use serde::{Deserialize, Serialize};

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[oai(
    remote = "crate::events::OrderStatus",
    rename = "OrderStatus",
    rename_all = "SCREAMING_SNAKE_CASE"
)]
pub enum ApiOrderStatus {
    Pending,
    Confirmed,
    Rejected,
    Shipped,
    Delivered,
    Cancelled,
    Failed,
}

/// What a notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[oai(
    remote = "crate::events::NotificationKind",
    rename = "NotificationKind",
    rename_all = "SCREAMING_SNAKE_CASE"
)]
pub enum ApiNotificationKind {
    OrderConfirmed,
    OrderRejected,
    OrderCancelled,
    OrderFailed,
    LowStock,
    Manual,
}
