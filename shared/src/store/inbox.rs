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
    let record = doc! {
        "_id": event.event_id.to_string(),
        "eventType": &event.event_type,
        "source": &event.source,
        "correlationId": &event.correlation_id,
        "handledAt": bson::DateTime::now(),
    };
    match db
        .collection::<bson::Document>(INBOX)
        .insert_one(record)
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
