//! MongoDB helpers: connecting, transactions, the inbox and the outbox.

pub mod inbox;
pub mod outbox;

use std::time::Duration;

use mongodb::{
    Client, ClientSession, Database,
    bson::doc,
    error::{Error, ErrorKind, WriteFailure},
    options::ClientOptions,
};

pub use inbox::{AlreadyHandled, record_in_inbox};
pub use outbox::{OutboxRelay, stage_event};

/// Connects lazily (the driver retries on its own) with short timeouts, so a
/// missing server shows up as a clear error instead of a long hang.
pub async fn connect(uri: &str, database: &str, app_name: &str) -> Result<Database, Error> {
    let mut options = ClientOptions::parse(uri).await?;
    options.app_name = Some(app_name.to_string());
    options.server_selection_timeout = Some(Duration::from_secs(3));
    options.connect_timeout = Some(Duration::from_secs(3));
    let client = Client::with_options(options)?;
    Ok(client.database(database))
}

/// Round trip to the server, for readiness.
pub async fn ping(db: &Database) -> Result<(), Error> {
    db.run_command(doc! { "ping": 1 }).await.map(|_| ())
}

/// Whether a write failed on a unique index.
pub fn is_duplicate_key(error: &Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|e| e.code == 11000)),
        _ => false,
    }
}

/// Whether retrying later may help: the server or network is unavailable,
/// or a transaction collided with another. Anything else is a bug or bad data.
pub fn is_transient(error: &Error) -> bool {
    error.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
        || error.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
        || matches!(
            error.kind.as_ref(),
            ErrorKind::ServerSelection { .. }
                | ErrorKind::Io(_)
                | ErrorKind::ConnectionPoolCleared { .. }
                | ErrorKind::Transaction { .. }
        )
        || matches!(error.kind.as_ref(), ErrorKind::Command(e) if e.code == 112 /* WriteConflict */)
}

/// Runs `body` in a multi-document transaction, retrying it on transient
/// transaction errors (write conflicts) as the driver's convenient API does.
/// To leave with an outcome other than a commit, return
/// `Err(Error::custom(..))` and inspect it with `Error::get_custom`.
pub async fn transaction<R, F>(db: &Database, body: F) -> Result<R, Error>
where
    F: for<'s> AsyncFnMut(&'s mut ClientSession) -> Result<R, Error>,
{
    let mut session = db.client().start_session().await?;
    session.start_transaction().and_run2(body).await
}
