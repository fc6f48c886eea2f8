//! MongoDB: connecting, the one way to write ([`UnitOfWork`] committed by
//! [`Store::commit`]), group commit ([`Batcher`]), the inbox, the outbox,
//! paging, and the store error every service shares ([`StoreError`]).

pub mod batch;
pub mod error;
pub mod inbox;
pub mod outbox;
pub mod page;
pub mod transact;

use std::time::Duration;

use mongodb::{Client, Collection, Database, bson::doc, options::ClientOptions};
use serde::Serialize;

pub use batch::{Batcher, ReadBatch, WriteBatch};
pub use error::{MayConflict, StoreError, is_duplicate_key, is_transient, retry_on_conflict};
pub use outbox::{Outbox, OutboxRecord, OutboxRelay, StagedEvent};
pub use page::{ListOrder, PageRequest, find_page, find_page_in};
pub use transact::{OnDuplicate, Store, UnitOfWork};

/// Connects lazily (the driver retries on its own) with short timeouts, so a
/// missing server shows up as a clear error instead of a long hang.
pub async fn connect(
    uri: &str,
    database: &str,
    app_name: &str,
) -> Result<Database, mongodb::error::Error> {
    let mut options = ClientOptions::parse(uri).await?;
    options.app_name = Some(app_name.to_string());
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.connect_timeout = Some(Duration::from_secs(2));
    let client = Client::with_options(options)?;
    Ok(client.database(database))
}

/// A count in a server's reply (`n` of a write, a `$sum`), which the server
/// sends as a 32- or 64-bit integer depending on its size; 0 if absent.
pub(crate) fn count_in(value: Option<&mongodb::bson::Bson>) -> u64 {
    match value {
        Some(mongodb::bson::Bson::Int32(n)) => (*n).max(0) as u64,
        Some(mongodb::bson::Bson::Int64(n)) => (*n).max(0) as u64,
        _ => 0,
    }
}

/// Round trip to the server, for readiness.
pub(crate) async fn ping(db: &Database) -> Result<(), mongodb::error::Error> {
    db.run_command(doc! { "ping": 1 }).await.map(|_| ())
}

/// Inserts what is new and skips what is there already, without a
/// transaction: for documents that are their own inbox (a unique key fixed
/// by the event), where a duplicate is a redelivery. Unordered, so every new
/// document goes in even if others were duplicates. Returns the positions of
/// the duplicates, which were not inserted.
pub async fn insert_new<T: Serialize + Send + Sync>(
    collection: &Collection<T>,
    documents: &[T],
) -> Result<Vec<usize>, StoreError> {
    match collection.insert_many(documents).ordered(false).await {
        Ok(_) => Ok(Vec::new()),
        Err(e) if error::only_duplicate_keys(&e) => {
            tracing::info!("duplicate delivery ignored");
            Ok(error::failed_inserts(&e))
        }
        Err(e) => Err(e.into()),
    }
}
