//! What can go wrong when a service reads or writes its collections, in the
//! shop's terms rather than the driver's. Each service wraps it in its own
//! error enum; the consumer loop and the HTTP layer each map it in one place
//! ([`crate::broker::outcome`], `ApiError::from`).

use mongodb::error::{ErrorKind, WriteFailure};

/// A failed read or write.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The event was handled before: its inbox record, or the natural key
    /// of its effect (a reservation keyed by order id), is already there.
    /// Acknowledge it and do nothing.
    #[error("the event was handled before")]
    AlreadyHandled,
    /// A unique value belongs to something else already (a sku, an
    /// Idempotency-Key). The string names the value.
    #[error("this {0} is already taken")]
    Taken(&'static str),
    /// A guarded write found the document changed since it was read: read
    /// again and decide again. The string names the document.
    #[error("the {0} changed while this change was being made")]
    Conflict(&'static str),
    /// A document the change needs does not exist.
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// A rule of the domain that no number of retries will satisfy.
    #[error("{0}")]
    Rule(String),
    /// The database is unreachable or busy, or a transaction kept
    /// colliding: worth another try later.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] mongodb::error::Error),
    /// Any other database failure: a bug or a corrupt document.
    #[error("database failure: {0}")]
    Database(#[source] mongodb::error::Error),
    /// The batch writer stopped (it panicked), so the write's fate is unknown.
    #[error("the batch writer stopped")]
    WriterGone,
}

impl StoreError {
    /// Whether the same write may succeed if tried again later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict(_) | StoreError::Unavailable(_) | StoreError::WriterGone
        )
    }

    /// Whether a guarded write lost a race with another change.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict(_))
    }
}

impl From<mongodb::error::Error> for StoreError {
    fn from(error: mongodb::error::Error) -> Self {
        if is_transient(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Database(error)
        }
    }
}

impl From<mongodb::bson::ser::Error> for StoreError {
    fn from(error: mongodb::bson::ser::Error) -> Self {
        StoreError::Database(error.into())
    }
}

/// A service error that may carry a lost race, so that a read-decide-write
/// can be run again (see [`retry_on_conflict`]).
pub trait MayConflict {
    fn is_conflict(&self) -> bool;
}

impl MayConflict for StoreError {
    fn is_conflict(&self) -> bool {
        StoreError::is_conflict(self)
    }
}

/// A guarded write rarely loses a race twice in a row; past this the caller
/// reports the contention instead of spinning.
const CONFLICT_ATTEMPTS: u32 = 5;

/// Runs a read-decide-write `attempt` again while its guarded write finds
/// the documents changed since they were read, up to a few times; the last
/// conflict is returned as it is.
pub async fn retry_on_conflict<T, E, F, Fut>(mut attempt: F) -> Result<T, E>
where
    E: MayConflict,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(error) if error.is_conflict() && tries < CONFLICT_ATTEMPTS => tries += 1,
            other => return other,
        }
    }
}

/// Whether a write failed on a unique index.
pub fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
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
pub(crate) fn only_duplicate_keys(error: &mongodb::error::Error) -> bool {
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

/// The positions of the documents an unordered insert refused.
pub(crate) fn failed_inserts(error: &mongodb::error::Error) -> Vec<usize> {
    match error.kind.as_ref() {
        ErrorKind::InsertMany(e) => e.write_errors.iter().flatten().map(|e| e.index).collect(),
        _ => Vec::new(),
    }
}

/// Whether retrying later may help: the server or network is unavailable,
/// or a transaction collided with another. Anything else is a bug or bad data.
pub fn is_transient(error: &mongodb::error::Error) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Lost,
        Refused,
    }

    impl MayConflict for Outcome {
        fn is_conflict(&self) -> bool {
            *self == Outcome::Lost
        }
    }

    #[tokio::test]
    async fn a_lost_race_is_run_again_and_other_failures_are_not() {
        let mut calls = 0;
        let won: Result<u32, Outcome> = retry_on_conflict(|| {
            calls += 1;
            let call = calls;
            async move {
                if call < 3 {
                    Err(Outcome::Lost)
                } else {
                    Ok(call)
                }
            }
        })
        .await;
        assert_eq!(won, Ok(3));

        let mut calls = 0;
        let refused: Result<(), Outcome> = retry_on_conflict(|| {
            calls += 1;
            async { Err(Outcome::Refused) }
        })
        .await;
        assert_eq!((refused, calls), (Err(Outcome::Refused), 1));
    }

    #[tokio::test]
    async fn contention_that_never_ends_is_reported_after_a_few_attempts() {
        let mut calls = 0;
        let lost: Result<(), Outcome> = retry_on_conflict(|| {
            calls += 1;
            async { Err(Outcome::Lost) }
        })
        .await;
        assert_eq!(lost, Err(Outcome::Lost));
        assert_eq!(calls, CONFLICT_ATTEMPTS);
    }

    #[test]
    fn only_races_and_outages_are_transient() {
        assert!(StoreError::Conflict("order").is_transient());
        assert!(StoreError::WriterGone.is_transient());
        assert!(!StoreError::Rule("no".into()).is_transient());
        assert!(!StoreError::Taken("sku").is_transient());
        assert!(!StoreError::AlreadyHandled.is_transient());
    }
}
