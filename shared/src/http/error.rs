//! One JSON error shape for every failure. Services map their own error enums
//! into [`ApiError`]; whatever poem or poem-openapi reject on their own (bad
//! JSON, a bad parameter, a missing token, an unknown route) is turned into
//! the same shape by [`json_errors`]. [`Refused`] declares in the spec which
//! of these statuses each operation can answer.

use std::marker::PhantomData;

use poem::{Response, error::ResponseError, http::StatusCode};
use poem_openapi::{
    ApiResponse, Object,
    registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::Type,
};

/// The content type of every error body.
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The body of every error response.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `validation_failed`, `not_found`.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// One entry per failing field (validation errors only); absent otherwise.
    #[oai(default, skip_serializing_if_is_empty)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

/// A field that failed validation.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize, PartialEq)]
#[oai(rename_all = "camelCase")]
pub struct FieldError {
    /// Path of the field in the request, e.g. `items[0].quantity`.
    pub field: String,
    /// Why it was refused.
    pub message: String,
}

/// An error on its way to becoming an HTTP response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<FieldError>,
    /// Seconds for a `Retry-After` header (refusals under load).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
            retry_after: None,
        }
    }

    /// 503: the service is past what it can carry; come back in a second.
    pub fn overloaded(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn validation(fields: Vec<FieldError>) -> Self {
        let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        ApiError {
            message: format!("invalid fields: {}", names.join(", ")),
            fields,
            ..Self::new(StatusCode::BAD_REQUEST, "validation_failed", "")
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }

    /// 503: a dependency is unreachable; retrying in a second may help.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// A failure of ours. The cause is logged; the client gets no internals.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed to handle the request; see its logs",
        )
    }

    /// A database failure: 503 when retrying may help (the server is
    /// unreachable, a write conflicted), else a 500 of ours. Either way the
    /// driver's text goes to the log only: it names hosts, replica sets and
    /// server versions.
    pub fn database(error: &mongodb::error::Error) -> Self {
        if crate::store::is_transient(error) {
            tracing::warn!(%error, "database unavailable");
            Self::unavailable("the database is unavailable; retry in a second")
        } else {
            Self::internal(error)
        }
    }

    /// This error as a response telling the client when to come back
    /// (`Retry-After`, at least 1 s): rate limits and load shedding.
    pub fn retry_after(mut self, seconds: u64) -> Response {
        self.retry_after = Some(seconds);
        self.as_response()
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code.to_string(),
            message: self.message.clone(),
            fields: self.fields.clone(),
        }
    }
}

/// The one mapping of store failures to HTTP.
impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        use crate::store::StoreError as E;
        match error {
            E::NotFound { .. } => Self::not_found(error.to_string()),
            E::Taken(_) | E::Conflict(_) | E::Rule(_) | E::AlreadyHandled => {
                Self::conflict(error.to_string())
            }
            E::Unavailable(e) => Self::database(&e),
            E::WriterGone => Self::unavailable(error.to_string()),
            E::Database(e) => Self::internal(&e),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let body = serde_json::to_vec(&self.body()).expect("error bodies serialize");
        let mut response = Response::builder()
            .status(self.status)
            .content_type(CONTENT_TYPE)
            .body(body);
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                poem::http::header::RETRY_AFTER,
                poem::http::HeaderValue::from(seconds.max(1)),
            );
        }
        response
    }
}

/// A status an operation may refuse a request with, beside those every API
/// route may answer. Listed in the operation's [`Refused`].
pub(crate) trait Refusal {
    const STATUS: u16;
    /// The spec's description of the response.
    const WHEN: &'static str;
}

macro_rules! refusals {
    ($($(#[$doc:meta])* $name:ident = $status:literal, $when:literal;)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl Refusal for $name {
            const STATUS: u16 = $status;
            const WHEN: &'static str = $when;
        }
    )*};
}

refusals! {
    /// 400: bad JSON, a parameter that does not parse, or invalid fields.
    BadRequest = 400, "The request is malformed: JSON that does not parse or a parameter \
        out of its range (`bad_request`), or fields that break their rules, each named in \
        `fields` (`validation_failed`).";
    /// 401: no bearer token, or one this route does not take.
    Unauthorized = 401, "The bearer token is missing, or not one this route takes: \
        expired, forged or malformed, or a customer's on an admin route (`unauthorized`); \
        the message says which.";
    /// 403: a customer acting for another customer.
    Forbidden = 403, "The token's customer may not act for the customer the request \
        names (`forbidden`).";
    /// 404: no such resource.
    NotFound = 404, "No such resource (`not_found`).";
    /// 409: the resource's state or version does not allow this.
    Conflict = 409, "The request conflicts with the resource's current state (`conflict`).";
    /// 415: a body that is not JSON.
    UnsupportedMediaType = 415, "The body is not `application/json` \
        (`unsupported_media_type`).";
    /// 422: well-formed and valid, but not something to process as it stands.
    Unprocessable = 422, "The request is valid but cannot be processed as it stands (it \
        names things that do not exist, or names one twice); each such field is named in \
        `fields` (`unprocessable`).";
}

/// What every API route may answer, whatever the operation: the body limit,
/// the rate limit, a failure of ours, and overload or an unreachable
/// dependency (load shedding, the saga's backlog, the database).
const EVERY_ROUTE: [(u16, &str); 4] = [
    (413, "The body is over 64 KiB (`payload_too_large`)."),
    (
        429,
        "Too many requests from this address (`rate_limited`), or, on `POST /api/orders`, \
         too many orders from this customer within a minute (`too_many_orders`); retry after \
         `Retry-After` seconds.",
    ),
    (
        500,
        "A failure of ours (`internal_error`); the body carries no internals, the logs do.",
    ),
    (
        503,
        "The service is overloaded (`overloaded`) or a dependency is unreachable \
         (`unavailable`); retry after `Retry-After` seconds.",
    ),
];

/// A set of [`Refusal`]s: `()`, `(A,)`, `(A, B)`, … up to six.
pub trait Refusals: Send + Sync + 'static {
    /// Status and description of each.
    fn statuses() -> Vec<(u16, &'static str)>;
}

macro_rules! refusal_sets {
    ($(($($r:ident),*))*) => {$(
        impl<$($r: Refusal + Send + Sync + 'static),*> Refusals for ($($r,)*) {
            fn statuses() -> Vec<(u16, &'static str)> {
                vec![$(($r::STATUS, $r::WHEN)),*]
            }
        }
    )*};
}

refusal_sets! {
    ()
    (A)
    (A, B)
    (A, B, C)
    (A, B, C, D)
    (A, B, C, D, E)
    (A, B, C, D, E, F)
}

/// The error half of an operation's result: an [`ApiError`] that the spec
/// declares, with an [`ErrorBody`], under each status of `R` and of every
/// API route (413, 429, 500, 503; 429 and 503 with `Retry-After`). The
/// status sent is the error's own, mapped once in this module.
pub struct Refused<R: Refusals = ()>(pub ApiError, PhantomData<fn() -> R>);

/// Any error with its mapping to HTTP (a service's own, the store's, an
/// [`ApiError`] itself) is a refusal, so a handler takes `?` on each.
impl<R: Refusals, E: Into<ApiError>> From<E> for Refused<R> {
    fn from(error: E) -> Self {
        Refused(error.into(), PhantomData)
    }
}

impl<R: Refusals> From<Refused<R>> for poem::Error {
    fn from(refused: Refused<R>) -> Self {
        refused.0.into()
    }
}

impl<R: Refusals> ApiResponse for Refused<R> {
    fn meta() -> MetaResponses {
        let mut statuses = R::statuses();
        statuses.extend(EVERY_ROUTE);
        statuses.sort_by_key(|(status, _)| *status);
        MetaResponses {
            responses: statuses
                .into_iter()
                .map(|(status, description)| MetaResponse {
                    description,
                    status: Some(status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: CONTENT_TYPE,
                        schema: ErrorBody::schema_ref(),
                    }],
                    headers: match status {
                        429 | 503 => vec![MetaHeader {
                            name: "Retry-After".into(),
                            description: Some("Seconds to wait before trying again.".into()),
                            required: true,
                            deprecated: false,
                            schema: u64::schema_ref(),
                        }],
                        _ => Vec::new(),
                    },
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

/// `catch_all_error` handler: every error leaves as JSON.
pub(crate) async fn json_errors(error: poem::Error) -> Response {
    if error.is::<ApiError>() {
        return error.into_response();
    }
    let status = error.status();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        s if s.is_server_error() => "internal_error",
        _ => "error",
    };
    let message = match status {
        StatusCode::UNAUTHORIZED => {
            "an Authorization: Bearer token is required (a customer JWT or the admin token)"
                .to_string()
        }
        StatusCode::NOT_FOUND if error.to_string() == "not found" => "no such route".to_string(),
        s if s.is_server_error() => {
            tracing::error!(%error, "internal error");
            "the server failed to handle the request; see its logs".to_string()
        }
        _ => error.to_string(),
    };
    ApiError::new(status, code, message).as_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_failure_answers_without_the_drivers_text() {
        use crate::store::StoreError;
        let driver = || {
            mongodb::error::Error::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "db-0.internal:27017 refused the connection",
            ))
        };
        let unavailable = ApiError::from(StoreError::Unavailable(driver()));
        assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            unavailable.message,
            "the database is unavailable; retry in a second"
        );
        let failed = ApiError::from(StoreError::Database(driver()));
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        for error in [unavailable, failed] {
            let body = serde_json::to_string(&error.body()).unwrap();
            assert!(!body.contains("db-0"), "{body}");
        }
    }
}
