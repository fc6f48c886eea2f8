//! `/health` (the process is alive) and `/ready` (its database and broker
//! answer). Readiness names what is down so an operator knows where to look.

use std::{sync::Arc, time::Duration};

use mongodb::Database;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use crate::{broker::Publisher, store};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct HealthApi {
    pub service: &'static str,
    pub db: Database,
    pub publisher: Arc<Publisher>,
}

/// Liveness.
#[derive(Object)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
    /// Which service answered.
    pub service: String,
}

/// Readiness of each dependency.
#[derive(Object)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// `up`, or `down: <reason>`.
    pub mongodb: String,
    /// `up`, or `down: <reason>`.
    pub rabbitmq: String,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// MongoDB and RabbitMQ both answer.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// At least one dependency is down; the body says which.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

#[OpenApi(tag = "crate::http::health::Tag::Health")]
impl HealthApi {
    /// Liveness: answers as long as the process runs.
    #[oai(path = "/health", method = "get")]
    async fn health(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
            service: self.service.into(),
        })
    }

    /// Readiness: MongoDB and RabbitMQ are reachable.
    #[oai(path = "/ready", method = "get")]
    async fn ready(&self) -> ReadyResponse {
        let (mongo, rabbit) = tokio::join!(
            tokio::time::timeout(CHECK_TIMEOUT, store::ping(&self.db)),
            tokio::time::timeout(CHECK_TIMEOUT, self.publisher.check()),
        );
        let mongodb = describe(
            mongo
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
        );
        let rabbitmq = describe(
            rabbit
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
        );
        let ok = mongodb == "up" && rabbitmq == "up";
        let body = Readiness {
            status: if ok { "ready" } else { "unavailable" }.into(),
            mongodb,
            rabbitmq,
        };
        if ok {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::NotReady(Json(body))
        }
    }
}

fn describe(result: Result<(), String>) -> String {
    match result {
        Ok(()) => "up".into(),
        Err(reason) => format!("down: {reason}"),
    }
}

#[derive(poem_openapi::Tags)]
pub enum Tag {
    /// Liveness and readiness probes.
    Health,
}
