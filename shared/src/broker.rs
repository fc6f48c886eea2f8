//! RabbitMQ: the topology, a publisher with confirms, and the consumer loop
//! with delay-queue retries and dead letters.

pub mod backlog;
pub mod consumer;
pub mod publisher;
pub mod topology;

pub use backlog::Backlog;
pub use consumer::{HandleError, Handler, outcome, run_consumer};
pub use publisher::{Outgoing, PublishOutcome, Publisher};
pub use topology::{Subscription, Topology};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Properties every connection of ours announces, so the RabbitMQ UI shows
/// which service and role holds it.
pub(crate) fn connection_properties(name: &str) -> lapin::ConnectionProperties {
    lapin::ConnectionProperties::default().with_connection_name(LongString::from(name))
}

pub(crate) fn header_string(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(&ShortString::from(key))? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

pub(crate) fn header_u32(headers: &FieldTable, key: &str) -> Option<u32> {
    match headers.inner().get(&ShortString::from(key))? {
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

pub(crate) fn set_header(headers: &mut FieldTable, key: &str, value: AMQPValue) {
    headers.insert(ShortString::from(key), value);
}

pub(crate) fn text(value: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}
