//! The inbox: one document per handled event id, written in the same
//! transaction as the handler's effect (see [`super::UnitOfWork::handled`]),
//! so a redelivered event finds its id already there and has no second
//! effect.

use std::time::Duration;

use mongodb::{
    Database, IndexModel,
    bson::{self, Document, doc},
    options::IndexOptions,
};

use crate::events::RawEnvelope;

pub(crate) const INBOX: &str = "inbox";

/// Inbox records expire `retention` after they were written, so the inbox
/// does not grow for ever.
pub(crate) async fn ensure_inbox_indexes(
    db: &Database,
    retention: Duration,
) -> Result<(), mongodb::error::Error> {
    db.collection::<Document>(INBOX)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "handledAt": 1 })
                .options(IndexOptions::builder().expire_after(retention).build())
                .build(),
        )
        .await
        .map(drop)
}

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
