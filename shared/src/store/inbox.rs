//! The inbox: one document per handled event id, written in the same
//! transaction as the handler's effect, so a redelivered event finds its id
//! already there and has no second effect.

use mongodb::{
    ClientSession, Database,
    bson::{self, doc},
    error::Error,
};

use super::is_duplicate_key;
use crate::events::RawEnvelope;

pub const INBOX: &str = "inbox";

/// Marker error: the event was handled before. Returned (as
/// `Error::custom(AlreadyHandled)`) from inside a transaction to abort it.
#[derive(Debug, Clone, Copy)]
pub struct AlreadyHandled;

/// Records `event` as handled inside `session`'s transaction. Call it first,
/// before the effect, so a duplicate aborts before doing any work.
pub async fn record_in_inbox(
    db: &Database,
    session: &mut ClientSession,
    event: &RawEnvelope,
) -> Result<(), Error> {
    record_all_in_inbox(db, session, [event]).await
}

/// Records several events as handled in one round trip. If any of them was
/// handled before, the whole transaction must abort (`AlreadyHandled`).
pub async fn record_all_in_inbox<'a>(
    db: &Database,
    session: &mut ClientSession,
    events: impl IntoIterator<Item = &'a RawEnvelope>,
) -> Result<(), Error> {
    let handled_at = bson::DateTime::now();
    let records: Vec<bson::Document> = events
        .into_iter()
        .map(|event| {
            doc! {
                "_id": event.event_id.to_string(),
                "eventType": &event.event_type,
                "source": &event.source,
                "correlationId": &event.correlation_id,
                "handledAt": handled_at,
            }
        })
        .collect();
    match db
        .collection::<bson::Document>(INBOX)
        .insert_many(records)
        .session(session)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if is_duplicate_key(&error) => Err(Error::custom(AlreadyHandled)),
        Err(error) => Err(error),
    }
}

/// Whether a transaction ended because its event had been handled already.
pub fn was_already_handled(error: &Error) -> bool {
    error.get_custom::<AlreadyHandled>().is_some()
}
