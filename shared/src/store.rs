//! MongoDB helpers: connecting, transactions, paging, the inbox and the
//! outbox.

pub mod group;
pub mod inbox;
pub mod outbox;
pub mod page;

use std::time::Duration;

use mongodb::{
    Client, ClientSession, Database,
    bson::{Bson, Document, doc},
    error::{Error, ErrorKind, WriteFailure},
    options::ClientOptions,
};

pub use group::{GroupCommit, WriterGone, Written, one_by_one_on_failure};
pub use inbox::{AlreadyHandled, record_all_in_inbox, record_in_inbox};
pub use outbox::{Outbox, OutboxRecord, OutboxRelay, stage_records};
pub use page::{PageRequest, find_page};

/// Connects lazily (the driver retries on its own) with short timeouts, so a
/// missing server shows up as a clear error instead of a long hang.
pub async fn connect(uri: &str, database: &str, app_name: &str) -> Result<Database, Error> {
    let mut options = ClientOptions::parse(uri).await?;
    options.app_name = Some(app_name.to_string());
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.connect_timeout = Some(Duration::from_secs(2));
    let client = Client::with_options(options)?;
    Ok(client.database(database))
}

/// Round trip to the server, for readiness.
pub async fn ping(db: &Database) -> Result<(), Error> {
    db.run_command(doc! { "ping": 1 }).await.map(|_| ())
}

/// Several single-document updates as one `update` command: one round trip
/// inside `session`'s transaction instead of one per document. Returns how
/// many documents matched their filter, so guarded updates can tell that one
/// of them lost its race.
pub async fn update_each(
    db: &Database,
    session: &mut ClientSession,
    collection: &str,
    updates: impl IntoIterator<Item = (Document, Document)>,
) -> Result<u64, Error> {
    let statements: Vec<Document> = updates
        .into_iter()
        .map(|(filter, update)| doc! { "q": filter, "u": update })
        .collect();
    if statements.is_empty() {
        return Ok(0);
    }
    let reply = db
        .run_command(doc! { "update": collection, "updates": statements, "ordered": true })
        .session(session)
        .await?;
    if let Ok(errors) = reply.get_array("writeErrors")
        && !errors.is_empty()
    {
        return Err(Error::custom(UpdateRefused(format!("{errors:?}"))));
    }
    Ok(match reply.get("n") {
        Some(Bson::Int32(n)) => *n as u64,
        Some(Bson::Int64(n)) => *n as u64,
        _ => 0,
    })
}

/// A statement of an [`update_each`] command was refused by the server.
#[derive(Debug, Clone)]
pub struct UpdateRefused(pub String);

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

/// Whether every write that failed failed on a unique index (an unordered
/// `insert_many` whose other documents went in).
pub fn only_duplicate_keys(error: &Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::InsertMany(e) => {
            e.write_concern_error.is_none()
                && e.write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|e| e.code == 11000))
        }
        _ => is_duplicate_key(error),
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

/// Runs a multi-document transaction, retrying it on transient transaction
/// errors (write conflicts) the way the driver's convenient API does, but
/// without an async closure (whose lifetimes trip a compiler bug inside
/// poem handlers):
///
/// ```ignore
/// let mut tx = Transaction::begin(&db).await?;
/// let value = loop {
///     let session = tx.attempt().await?;
///     let result = async { /* writes with .session(&mut *session) */ }.await;
///     if let Some(value) = tx.finish(result).await? { break value; }
/// };
/// ```
///
/// To leave with an outcome other than a commit, return
/// `Err(Error::custom(..))` and inspect it with `Error::get_custom`.
pub struct Transaction {
    session: ClientSession,
    attempts: u32,
    started: std::time::Instant,
}

/// Transient conflicts are retried this many times before giving up.
const MAX_TRANSACTION_ATTEMPTS: u32 = 20;
/// ... and for at most this long, so that with the database gone a request
/// gets its 503 in seconds instead of waiting out every attempt.
const MAX_TRANSACTION_TIME: Duration = Duration::from_secs(4);

impl Transaction {
    pub async fn begin(db: &Database) -> Result<Self, Error> {
        Ok(Transaction {
            session: db.client().start_session().await?,
            attempts: 0,
            started: std::time::Instant::now(),
        })
    }

    /// Starts the next attempt and lends its session.
    pub async fn attempt(&mut self) -> Result<&mut ClientSession, Error> {
        self.attempts += 1;
        self.session.start_transaction().await?;
        Ok(&mut self.session)
    }

    /// Commits after a successful body (`Some(value)`), or aborts. Returns
    /// `None` when the attempt hit a transient conflict and should run again.
    pub async fn finish<R>(&mut self, result: Result<R, Error>) -> Result<Option<R>, Error> {
        let in_time = self.started.elapsed() < MAX_TRANSACTION_TIME;
        let retry = |e: &Error, attempts| {
            e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
                && attempts < MAX_TRANSACTION_ATTEMPTS
                && in_time
        };
        match result {
            Ok(value) => loop {
                match self.session.commit_transaction().await {
                    Ok(()) => return Ok(Some(value)),
                    Err(e)
                        if e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT)
                            && self.attempts < MAX_TRANSACTION_ATTEMPTS =>
                    {
                        self.attempts += 1;
                    }
                    Err(e) if retry(&e, self.attempts) => {
                        backoff_a_little(self.attempts).await;
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                }
            },
            Err(e) => {
                let _ = self.session.abort_transaction().await;
                if retry(&e, self.attempts) {
                    backoff_a_little(self.attempts).await;
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// A short jittered pause so colliding transactions do not collide again.
async fn backoff_a_little(attempt: u32) {
    let ceiling_ms = (2u64 << attempt.min(6)).min(100);
    let pause = std::time::Duration::from_millis(rand::random::<u64>() % (ceiling_ms + 1));
    tokio::time::sleep(pause).await;
}
