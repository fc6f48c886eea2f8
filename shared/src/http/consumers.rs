//! Admin routes over a service's consumers: list them, pause one, resume
//! one. See [`crate::pauses`] for where a pause is kept and how every
//! instance of the service applies it.

use std::time::Instant;

use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};

use super::{
    AdminAuth, ApiError, Refused,
    error::{NotFound, Unauthorized},
    health::ConsumerReadiness,
};
use crate::{
    broker::consumer::Consumers,
    pauses::{Applied, ConsumerPauses, PauseError},
};

pub(crate) struct ConsumerApi {
    pub consumers: Consumers,
    pub pauses: ConsumerPauses,
}

/// This instance's consumers.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub(crate) struct ConsumerList {
    /// Each consumer of the service's queues on this instance, the work
    /// queue's and the dead-letter archiver's, as `/ready` lists them.
    pub consumers: Vec<ConsumerReadiness>,
}

#[derive(ApiResponse)]
pub(crate) enum ConsumerListResponse {
    /// This instance's consumers, as of now.
    #[oai(status = 200)]
    Ok(Json<ConsumerList>),
}

#[derive(ApiResponse)]
pub(crate) enum PauseResponse {
    /// The pause is stored and this instance's consumer is paused: the
    /// deliveries it had were settled and acked, the rest wait in the queue.
    /// Also the answer for a consumer already paused.
    #[oai(status = 200)]
    Paused(Json<ConsumerReadiness>),
    /// The pause is stored, but this instance's consumer was still settling
    /// the deliveries it had after 5 s; it pauses once they are done.
    #[oai(status = 202)]
    Pausing(Json<ConsumerReadiness>),
}

#[derive(ApiResponse)]
pub(crate) enum ResumeResponse {
    /// The pause is removed and this instance's consumer is consuming
    /// again. Also the answer for a consumer that was not paused.
    #[oai(status = 200)]
    Consuming(Json<ConsumerReadiness>),
    /// The pause is removed, but this instance's consumer had not got its
    /// channel back after 5 s (the broker is away); it consumes once it has.
    #[oai(status = 202)]
    Resuming(Json<ConsumerReadiness>),
}

impl From<PauseError> for ApiError {
    fn from(error: PauseError) -> Self {
        match error {
            PauseError::UnknownQueue { .. } => ApiError::not_found(error.to_string()),
            PauseError::Database(e) => ApiError::database(&e),
        }
    }
}

impl ConsumerApi {
    /// The consumer of `queue` as of now.
    fn view(&self, queue: &str) -> Result<ConsumerReadiness, PauseError> {
        let state = self.pauses.consumer(queue)?;
        Ok(state.snapshot(Instant::now()).into())
    }
}

#[OpenApi(tag = "Tag::Consumers")]
impl ConsumerApi {
    /// This instance's consumers: each one's queue, role, state (consuming,
    /// paused, disconnected), deliveries in hand and last ack (admin).
    #[oai(path = "/admin/consumers", method = "get")]
    async fn list(
        &self,
        _admin: AdminAuth,
    ) -> Result<ConsumerListResponse, Refused<(Unauthorized,)>> {
        let consumers = self.consumers.snapshot(Instant::now());
        Ok(ConsumerListResponse::Ok(Json(ConsumerList {
            consumers: consumers.into_iter().map(Into::into).collect(),
        })))
    }

    /// Pause the consumer of `queue` on every instance of the service
    /// (admin): it settles and acks the deliveries in hand, cancels its
    /// AMQP consumer, and the queue's messages wait until it is resumed.
    /// Stored in the service's database, so it outlives a restart; other
    /// instances apply it within about 2 s. `/ready` stays 200.
    #[oai(path = "/admin/consumers/:queue/pause", method = "post")]
    async fn pause(
        &self,
        _admin: AdminAuth,
        /// The queue's full name, with the namespace prefix (as listed).
        queue: Path<String>,
    ) -> Result<PauseResponse, Refused<(Unauthorized, NotFound)>> {
        let applied = self.pauses.set(&queue, true).await?;
        let view = Json(self.view(&queue)?);
        Ok(match applied {
            Applied::Now => PauseResponse::Paused(view),
            Applied::Later => PauseResponse::Pausing(view),
        })
    }

    /// Resume the consumer of `queue` on every instance of the service
    /// (admin): the pause is removed and it consumes again, here at once,
    /// on the other instances within about 2 s.
    #[oai(path = "/admin/consumers/:queue/resume", method = "post")]
    async fn resume(
        &self,
        _admin: AdminAuth,
        /// The queue's full name, with the namespace prefix (as listed).
        queue: Path<String>,
    ) -> Result<ResumeResponse, Refused<(Unauthorized, NotFound)>> {
        let applied = self.pauses.set(&queue, false).await?;
        let view = Json(self.view(&queue)?);
        Ok(match applied {
            Applied::Now => ResumeResponse::Consuming(view),
            Applied::Later => ResumeResponse::Resuming(view),
        })
    }
}

#[derive(poem_openapi::Tags)]
enum Tag {
    /// The service's consumers, and pausing one while something downstream is wrong.
    Consumers,
}
