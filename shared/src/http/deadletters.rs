//! Admin routes over a service's dead letters: list (by order, by cause, …),
//! show, replay one, replay or discard all matching a filter, discard one,
//! and the DEAD ones grouped by cause. See [`crate::deadletter`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};

use super::{
    AdminAuth, ApiError, Cursor, Page, PageSize, Refused, ValidJson,
    error::{BadRequest, Conflict, NotFound, Unauthorized, UnsupportedMediaType},
    page,
};
use crate::{
    broker::Publisher,
    deadletter::{
        DeadLetter, DeadLetterError, DeadLetterFilter, DeadLetterGroup, DeadLetterStatus,
        DeadLetterStore, ReasonClass,
    },
};

pub(crate) struct DeadLetterApi {
    pub store: DeadLetterStore,
    pub publisher: Arc<Publisher>,
}

/// A message a consumer gave up on, with why and when.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub(crate) struct DeadLetterView {
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
    /// The correlation id of the request that caused the event (the AMQP
    /// property, else the body's `correlationId`).
    #[oai(nullable)]
    pub correlation_id: Option<String>,
    /// The order the body names (`data.orderId`, else a top-level
    /// `orderId`), even when it did not parse as an event; null if none (or
    /// archived before orders were recorded, until the startup backfill).
    #[oai(nullable)]
    pub order_id: Option<String>,
    /// Why the consumer gave up (e.g. `rejected`, `expired`).
    pub reason: String,
    /// The reason's class, what `/admin/dead-letters/groups` groups by.
    pub reason_class: ReasonClass,
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
            order_id: d.order_id,
            reason: d.reason,
            reason_class: d.reason_class,
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
#[derive(Debug, Default, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReplayFilter {
    /// Only this event type, e.g. `order.created`.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub event_type: Option<String>,
    /// Only this original routing key.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub routing_key: Option<String>,
    /// Only this event id.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub message_id: Option<String>,
    /// Only the dead letters of this order.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub order_id: Option<String>,
    /// Only those of this correlation id.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub correlation_id: Option<String>,
    /// Only this reason class (`other` includes records archived before classes were).
    #[oai(nullable)]
    pub reason_class: Option<ReasonClass>,
    /// Only those that died in this work queue.
    #[oai(nullable, validator(min_length = 1, max_length = 255))]
    pub queue: Option<String>,
    /// `false`: only bodies that did not parse as an event (no event type),
    /// the group `eventType` cannot name; `true`: only events.
    #[oai(nullable)]
    pub has_event_type: Option<bool>,
}

impl ReplayFilter {
    /// The DEAD letters this body selects.
    fn dead(self) -> DeadLetterFilter {
        DeadLetterFilter {
            status: Some(DeadLetterStatus::Dead),
            event_type: self.event_type,
            routing_key: self.routing_key,
            message_id: self.message_id,
            order_id: self.order_id,
            correlation_id: self.correlation_id,
            reason_class: self.reason_class,
            queue: self.queue,
            has_event_type: self.has_event_type,
        }
    }
}

/// What a filtered replay did.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub(crate) struct ReplayResult {
    /// How many dead letters were sent back to their work queues.
    pub replayed: u32,
    /// Their ids, oldest first.
    pub dead_letter_ids: Vec<String>,
}

/// Why a dead letter is given up on.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DiscardRequest {
    /// The operator's reason, kept on the record (1 to 1000 characters).
    #[oai(validator(min_length = 1, max_length = 1000))]
    pub note: String,
}

/// Which DEAD letters to give up on, and why. Every given filter field must
/// match, as in a filtered replay; an empty filter discards every DEAD letter
/// (up to 1000 per call).
#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DiscardFilter {
    /// The operator's reason, kept on each record (1 to 1000 characters).
    #[oai(validator(min_length = 1, max_length = 1000))]
    pub note: String,
    /// Only this event type, e.g. `order.created`.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub event_type: Option<String>,
    /// Only this original routing key.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub routing_key: Option<String>,
    /// Only this event id.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub message_id: Option<String>,
    /// Only the dead letters of this order.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub order_id: Option<String>,
    /// Only those of this correlation id.
    #[oai(nullable, validator(min_length = 1, max_length = 200))]
    pub correlation_id: Option<String>,
    /// Only this reason class (`other` includes records archived before classes were).
    #[oai(nullable)]
    pub reason_class: Option<ReasonClass>,
    /// Only those that died in this work queue.
    #[oai(nullable, validator(min_length = 1, max_length = 255))]
    pub queue: Option<String>,
    /// `false`: only bodies that did not parse as an event (no event type);
    /// `true`: only events.
    #[oai(nullable)]
    pub has_event_type: Option<bool>,
}

impl DiscardFilter {
    /// The note, and the DEAD letters this body selects.
    fn split(self) -> (String, DeadLetterFilter) {
        let filter = ReplayFilter {
            event_type: self.event_type,
            routing_key: self.routing_key,
            message_id: self.message_id,
            order_id: self.order_id,
            correlation_id: self.correlation_id,
            reason_class: self.reason_class,
            queue: self.queue,
            has_event_type: self.has_event_type,
        };
        (self.note, filter.dead())
    }
}

/// What a filtered discard did.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub(crate) struct DiscardResult {
    /// How many dead letters were marked DISCARDED.
    pub discarded: u32,
    /// Their ids, oldest first.
    pub dead_letter_ids: Vec<String>,
}

/// DEAD letters of one cause. Replay or discard them all with the filter
/// `{reasonClass, queue, eventType}` (`hasEventType: false` when
/// `eventType` is null).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub(crate) struct DeadLetterGroupView {
    /// Why they died, in a word (`other` includes records archived before
    /// classes were).
    pub reason_class: ReasonClass,
    /// Their event type; null for bodies that did not parse as an event.
    #[oai(nullable)]
    pub event_type: Option<String>,
    /// The work queue they died in.
    pub queue: String,
    /// How many are DEAD.
    pub count: u64,
    /// When the oldest was archived.
    pub oldest_dead_at: DateTime<Utc>,
    /// When the newest was archived.
    pub newest_dead_at: DateTime<Utc>,
    /// The newest one's reason.
    pub sample_reason: String,
}

impl From<DeadLetterGroup> for DeadLetterGroupView {
    fn from(g: DeadLetterGroup) -> Self {
        DeadLetterGroupView {
            reason_class: g.reason_class,
            event_type: g.event_type,
            queue: g.queue,
            count: g.count,
            oldest_dead_at: g.oldest_dead_at.to_chrono(),
            newest_dead_at: g.newest_dead_at.to_chrono(),
            sample_reason: g.sample_reason,
        }
    }
}

/// The DEAD letters by cause.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub(crate) struct DeadLetterGroups {
    /// The largest groups first (at most 500).
    pub groups: Vec<DeadLetterGroupView>,
}

#[derive(ApiResponse)]
pub(crate) enum DeadLetterGroupsResponse {
    /// The DEAD letters grouped by cause.
    #[oai(status = 200)]
    Ok(Json<DeadLetterGroups>),
}

#[derive(ApiResponse)]
pub(crate) enum DiscardMatchingResponse {
    /// What was discarded.
    #[oai(status = 200)]
    Ok(Json<DiscardResult>),
}

#[derive(ApiResponse)]
pub(crate) enum DeadLetterResponse {
    /// The dead letter.
    #[oai(status = 200)]
    Ok(Json<DeadLetterView>),
}

#[derive(ApiResponse)]
pub(crate) enum DeadLetterPageResponse {
    /// A page of dead letters, newest first.
    #[oai(status = 200)]
    Ok(Json<Page<DeadLetterView>>),
}

#[derive(ApiResponse)]
pub(crate) enum ReplayResponse {
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
        /// Only the dead letters of this order.
        #[oai(name = "orderId")]
        order_id: Query<Option<String>>,
        /// Only those of this correlation id.
        #[oai(name = "correlationId")]
        correlation_id: Query<Option<String>>,
        /// Only this reason class.
        #[oai(name = "reasonClass")]
        reason_class: Query<Option<ReasonClass>>,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> Result<DeadLetterPageResponse, Refused<(BadRequest, Unauthorized)>> {
        let filter = DeadLetterFilter {
            status: status.0,
            event_type: event_type.0,
            routing_key: routing_key.0,
            message_id: message_id.0,
            order_id: order_id.0,
            correlation_id: correlation_id.0,
            reason_class: reason_class.0,
            ..DeadLetterFilter::default()
        };
        let found = self
            .store
            .page(&filter, &page::requested(limit.0, cursor.0))
            .await
            .map_err(|e| ApiError::database(&e))?;
        Ok(DeadLetterPageResponse::Ok(Json(Page::of(found))))
    }

    /// The DEAD letters grouped by cause: reason class, event type and
    /// queue, each with its count, oldest and newest, and a sample reason;
    /// the largest groups first, at most 500 (admin).
    #[oai(path = "/admin/dead-letters/groups", method = "get")]
    async fn groups(
        &self,
        _admin: AdminAuth,
    ) -> Result<DeadLetterGroupsResponse, Refused<(Unauthorized,)>> {
        let groups = self
            .store
            .dead_groups()
            .await
            .map_err(|e| ApiError::database(&e))?;
        Ok(DeadLetterGroupsResponse::Ok(Json(DeadLetterGroups {
            groups: groups.into_iter().map(Into::into).collect(),
        })))
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
        let replayed = self
            .store
            .replay_matching(&body.0.dead(), &self.publisher)
            .await?;
        Ok(ReplayResponse::Ok(Json(ReplayResult {
            replayed: replayed.len() as u32,
            dead_letter_ids: replayed.into_iter().map(|d| d.id).collect(),
        })))
    }

    /// Give up on every DEAD letter matching the filter, oldest first, up to
    /// 1000 per call; each stays on record as DISCARDED with the note
    /// (admin). Call again while `discarded` is 1000.
    #[oai(path = "/admin/dead-letters/discard", method = "post")]
    async fn discard_matching(
        &self,
        _admin: AdminAuth,
        body: ValidJson<DiscardFilter>,
    ) -> Result<DiscardMatchingResponse, Refused<(BadRequest, Unauthorized, UnsupportedMediaType)>>
    {
        let (note, filter) = body.0.split();
        let discarded = self.store.discard_matching(&filter, &note).await?;
        Ok(DiscardMatchingResponse::Ok(Json(DiscardResult {
            discarded: discarded.len() as u32,
            dead_letter_ids: discarded.into_iter().map(|d| d.id).collect(),
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
