//! Admin routes over a service's dead letters: list, show, replay one,
//! replay all matching a filter, discard one. See [`crate::deadletter`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use validator::Validate;

use super::{
    AdminAuth, ApiError, Cursor, Page, PageSize, Refused, ValidJson,
    error::{BadRequest, Conflict, NotFound, Refusals, Unauthorized, UnsupportedMediaType},
    page,
};
use crate::{
    broker::Publisher,
    deadletter::{
        DeadLetter, DeadLetterError, DeadLetterFilter, DeadLetterStatus, DeadLetterStore,
    },
};

pub struct DeadLetterApi {
    pub store: DeadLetterStore,
    pub publisher: Arc<Publisher>,
}

/// A message a consumer gave up on, with why and when.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DeadLetterView {
    /// The dead letter's id (UUIDv7).
    pub dead_letter_id: String,
    /// DEAD until an operator replays or discards it.
    pub status: DeadLetterStatus,
    /// The work queue it died in; a replay goes back there.
    pub queue: String,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// The event type, e.g. `order.created`, when the body parses as an event.
    #[oai(nullable)]
    pub event_type: Option<String>,
    /// The event id (AMQP message id).
    #[oai(nullable)]
    pub message_id: Option<String>,
    /// The correlation id of the request that caused the event.
    #[oai(nullable)]
    pub correlation_id: Option<String>,
    /// Why the consumer gave up (e.g. `rejected`, `expired`).
    pub reason: String,
    /// Attempts made before it was dead-lettered.
    pub attempts: u32,
    /// When handling it first failed (RFC 3339), if recorded.
    #[oai(nullable)]
    pub first_failure_at: Option<String>,
    /// When handling it last failed (RFC 3339), if recorded.
    #[oai(nullable)]
    pub last_failure_at: Option<String>,
    /// The last handler error, if recorded.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// The message body as received.
    pub payload: String,
    /// When it was archived here.
    pub dead_at: DateTime<Utc>,
    /// How many times it was sent back to its work queue.
    pub replay_count: u32,
    /// When it was last replayed.
    #[oai(nullable)]
    pub replayed_at: Option<DateTime<Utc>>,
    /// When it was discarded.
    #[oai(nullable)]
    pub discarded_at: Option<DateTime<Utc>>,
    /// The operator's reason for discarding it.
    #[oai(nullable)]
    pub discard_note: Option<String>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        DeadLetterView {
            dead_letter_id: d.id,
            status: d.status,
            queue: d.queue,
            routing_key: d.routing_key,
            event_type: d.event_type,
            message_id: d.message_id,
            correlation_id: d.correlation_id,
            reason: d.reason,
            attempts: d.attempts,
            first_failure_at: d.first_failure_at,
            last_failure_at: d.last_failure_at,
            last_error: d.last_error,
            payload: d.payload,
            dead_at: d.dead_at.to_chrono(),
            replay_count: d.replay_count,
            replayed_at: d.replayed_at.map(|t| t.to_chrono()),
            discarded_at: d.discarded_at.map(|t| t.to_chrono()),
            discard_note: d.discard_note,
        }
    }
}

/// Which DEAD letters to replay. Every given field must match; an empty
/// filter replays every DEAD letter (up to 1000 per call).
#[derive(Debug, Default, Object, Validate, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayFilter {
    /// Only this event type, e.g. `order.created`.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    #[validate(length(min = 1, max = 200))]
    pub event_type: Option<String>,
    /// Only this original routing key.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    #[validate(length(min = 1, max = 200))]
    pub routing_key: Option<String>,
    /// Only this event id.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    #[validate(length(min = 1, max = 200))]
    pub message_id: Option<String>,
}

/// What a filtered replay did.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ReplayResult {
    /// How many dead letters were sent back to their work queues.
    pub replayed: u32,
    /// Their ids, oldest first.
    pub dead_letter_ids: Vec<String>,
}

/// Why a dead letter is given up on.
#[derive(Debug, Object, Validate, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscardRequest {
    /// The operator's reason, kept on the record (1 to 1000 characters).
    #[oai(validator(min_length = 1, max_length = 1000))]
    #[validate(length(min = 1, max = 1000))]
    pub note: String,
}

#[derive(ApiResponse)]
pub enum DeadLetterResponse {
    /// The dead letter.
    #[oai(status = 200)]
    Ok(Json<DeadLetterView>),
}

#[derive(ApiResponse)]
pub enum DeadLetterPageResponse {
    /// A page of dead letters, newest first.
    #[oai(status = 200)]
    Ok(Json<Page<DeadLetterView>>),
}

#[derive(ApiResponse)]
pub enum ReplayResponse {
    /// What was replayed.
    #[oai(status = 200)]
    Ok(Json<ReplayResult>),
}

impl From<DeadLetterError> for ApiError {
    fn from(error: DeadLetterError) -> Self {
        match error {
            DeadLetterError::NotFound(_) => ApiError::not_found(error.to_string()),
            DeadLetterError::NotDead { .. } => ApiError::conflict(error.to_string()),
            // The broker's own words go to the log, not to the client.
            DeadLetterError::Broker(reason) => {
                tracing::warn!(%reason, "a replayed dead letter was not taken by the broker");
                ApiError::unavailable(
                    "the broker did not take the replayed message; it is still DEAD, retry in a second",
                )
            }
            DeadLetterError::Database(e) => ApiError::database(&e),
        }
    }
}

impl<R: Refusals> From<DeadLetterError> for Refused<R> {
    fn from(error: DeadLetterError) -> Self {
        ApiError::from(error).into()
    }
}

#[OpenApi(tag = "Tag::DeadLetters")]
impl DeadLetterApi {
    /// This service's dead letters, newest first (admin).
    #[oai(path = "/admin/dead-letters", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        _admin: AdminAuth,
        /// Only this status (DEAD, REPLAYED or DISCARDED).
        status: Query<Option<DeadLetterStatus>>,
        /// Only this event type, e.g. `order.created`.
        #[oai(name = "eventType")]
        event_type: Query<Option<String>>,
        /// Only this original routing key.
        #[oai(name = "routingKey")]
        routing_key: Query<Option<String>>,
        /// Only this event id.
        #[oai(name = "messageId")]
        message_id: Query<Option<String>>,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> Result<DeadLetterPageResponse, Refused<(BadRequest, Unauthorized)>> {
        let filter = DeadLetterFilter {
            status: status.0,
            event_type: event_type.0,
            routing_key: routing_key.0,
            message_id: message_id.0,
        };
        let found = self
            .store
            .page(&filter, &page::requested(limit.0, cursor.0))
            .await
            .map_err(|e| ApiError::database(&e))?;
        Ok(DeadLetterPageResponse::Ok(Json(Page::of(found))))
    }

    /// One dead letter (admin).
    #[oai(path = "/admin/dead-letters/:dead_letter_id", method = "get")]
    async fn get(
        &self,
        _admin: AdminAuth,
        dead_letter_id: Path<String>,
    ) -> Result<DeadLetterResponse, Refused<(Unauthorized, NotFound)>> {
        let letter = self.store.get(&dead_letter_id).await?;
        Ok(DeadLetterResponse::Ok(Json(letter.into())))
    }

    /// Send one DEAD letter back to its work queue (admin). The normal
    /// handler runs again; its inbox prevents a second effect. Only DEAD
    /// letters replay (else 409); 503 if the broker does not take it.
    #[oai(path = "/admin/dead-letters/:dead_letter_id/replay", method = "post")]
    async fn replay(
        &self,
        _admin: AdminAuth,
        dead_letter_id: Path<String>,
    ) -> Result<DeadLetterResponse, Refused<(Unauthorized, NotFound, Conflict)>> {
        let letter = self.store.replay(&dead_letter_id, &self.publisher).await?;
        Ok(DeadLetterResponse::Ok(Json(letter.into())))
    }

    /// Replay every DEAD letter matching the filter, oldest first, up to
    /// 1000 per call (admin).
    #[oai(path = "/admin/dead-letters/replay", method = "post")]
    async fn replay_matching(
        &self,
        _admin: AdminAuth,
        body: ValidJson<ReplayFilter>,
    ) -> Result<ReplayResponse, Refused<(BadRequest, Unauthorized, UnsupportedMediaType)>> {
        let filter = DeadLetterFilter {
            status: Some(DeadLetterStatus::Dead),
            event_type: body.0.event_type,
            routing_key: body.0.routing_key,
            message_id: body.0.message_id,
        };
        let replayed = self.store.replay_matching(&filter, &self.publisher).await?;
        Ok(ReplayResponse::Ok(Json(ReplayResult {
            replayed: replayed.len() as u32,
            dead_letter_ids: replayed.into_iter().map(|d| d.id).collect(),
        })))
    }

    /// Give up on one DEAD letter; it stays on record as DISCARDED (admin).
    /// Only DEAD letters can be discarded (else 409).
    #[oai(path = "/admin/dead-letters/:dead_letter_id/discard", method = "post")]
    async fn discard(
        &self,
        _admin: AdminAuth,
        dead_letter_id: Path<String>,
        body: ValidJson<DiscardRequest>,
    ) -> Result<
        DeadLetterResponse,
        Refused<(
            BadRequest,
            Unauthorized,
            NotFound,
            Conflict,
            UnsupportedMediaType,
        )>,
    > {
        let letter = self.store.discard(&dead_letter_id, &body.0.note).await?;
        Ok(DeadLetterResponse::Ok(Json(letter.into())))
    }
}

#[derive(poem_openapi::Tags)]
enum Tag {
    /// Messages a consumer gave up on, and what an operator does with them.
    DeadLetters,
}
