//! The inventory service's errors, and their one mapping to HTTP.

use shared::{
    http::{ApiError, FieldError},
    store::{MayConflict, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("product {0} not found")]
    NotFound(String),
    #[error("a product with sku {0} already exists")]
    DuplicateSku(String),
    #[error("invalid fields")]
    Invalid(Vec<FieldError>),
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
            Error::DuplicateSku(_) => ApiError::conflict(error.to_string()),
            Error::Invalid(fields) => ApiError::validation(fields),
            Error::Store(e) => e.into(),
        }
    }
}
