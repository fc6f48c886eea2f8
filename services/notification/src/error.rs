//! The notification service's errors, and their one mapping to HTTP.

use shared::{
    http::{ApiError, Refused, error::Refusals},
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("notification {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::NotFound(_) => ApiError::not_found(error.to_string()),
            Error::Store(e) => e.into(),
        }
    }
}

impl<R: Refusals> From<Error> for Refused<R> {
    fn from(error: Error) -> Self {
        ApiError::from(error).into()
    }
}
