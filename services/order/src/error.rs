//! The order service's errors, and their one mapping to HTTP.

use poem::http::StatusCode;
use shared::{
    http::{ApiError, FieldError},
    store::{MayConflict, StoreError},
};

use crate::domain::RuleViolation;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Rule(#[from] RuleViolation),
    #[error("order {0} not found")]
    NotFound(String),
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyMismatch,
    #[error("order is at version {current}, not {expected}")]
    StaleVersion { expected: i64, current: i64 },
    #[error("unknown products")]
    UnknownProducts(Vec<FieldError>),
    #[error("the order kept changing under this request; try again")]
    Contention,
    #[error(
        "this customer has placed {limit} orders within the last minute, the most allowed; \
         retry in {retry_after} s"
    )]
    TooManyOrders { limit: u32, retry_after: u64 },
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
            Error::Rule(rule) => ApiError::conflict(rule.to_string()),
            Error::NotFound(_) => ApiError::not_found(error.to_string()),
            Error::IdempotencyMismatch | Error::StaleVersion { .. } | Error::Contention => {
                ApiError::conflict(error.to_string())
            }
            Error::UnknownProducts(fields) => ApiError {
                fields,
                ..ApiError::unprocessable("some products do not exist")
            },
            Error::TooManyOrders { retry_after, .. } => ApiError {
                retry_after: Some(retry_after),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_orders",
                    error.to_string(),
                )
            },
            Error::Store(e) => e.into(),
        }
    }
}
