//! The notification service's errors, and their one mapping to HTTP.

use shared::{
    http::ApiError,
    store::{MayConflict, StoreError},
};

use crate::domain::NotRetryable;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("notification {0} not found")]
    NotFound(String),
    #[error(transparent)]
    NotRetryable(#[from] NotRetryable),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MayConflict for Error {
    fn is_conflict(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_conflict())
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::NotFound(_) => ApiError::not_found(error.to_string()),
            Error::NotRetryable(_) => ApiError::conflict(error.to_string()),
            Error::Store(e) => e.into(),
        }
    }
}
