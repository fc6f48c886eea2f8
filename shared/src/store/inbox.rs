//! The inbox: one document per handled event id, written in the same
//! transaction as the handler's effect (see [`super::UnitOfWork::handled`]),
//! so a redelivered event finds its id already there and has no second
//! effect.

use mongodb::bson::{self, Document, doc};

use crate::events::RawEnvelope;

pub const INBOX: &str = "inbox";

/// The inbox document recording `event` as handled.
pub(crate) fn inbox_record(event: &RawEnvelope) -> Document {
    doc! {
        "_id": event.event_id.to_string(),
        "eventType": &event.event_type,
        "source": &event.source,
        "correlationId": &event.correlation_id,
        "handledAt": bson::DateTime::now(),
    }
}
