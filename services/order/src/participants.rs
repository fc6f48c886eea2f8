//! The other services' parts of an order's history, asked over HTTP
//! (`GET /admin/orders/{id}/history` on each) when a history is assembled.
//! A participant that is down or slow leaves its part out and is named in
//! the answer's `incomplete`, so a history is never a 5xx.

use std::time::Duration;

use futures::future::join_all;
use poem_openapi::types::ParseFromJSON;
use shared::{
    config::Secret,
    history::HistoryItem,
    http::history::{MissingPart, OrderHistory},
    telemetry,
};

use crate::inventory::urlencode;

/// How long a participant may take to give its part.
const PART_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Participants {
    http: reqwest::Client,
    /// Each participant's name and base URL.
    services: Vec<(&'static str, String)>,
    /// The admin token the parts are asked with; without one they cannot be.
    token: Option<Secret>,
}

impl Participants {
    pub fn new(services: Vec<(&'static str, String)>, token: Option<Secret>) -> Self {
        Participants {
            http: reqwest::Client::builder()
                .timeout(PART_TIMEOUT)
                .build()
                .expect("a reqwest client"),
            services: services
                .into_iter()
                .map(|(name, url)| (name, url.trim_end_matches('/').to_string()))
                .collect(),
            token,
        }
    }

    /// Every participant's lines of the order's history, asked together,
    /// and the participants that could not give theirs.
    pub async fn history(&self, order_id: &str) -> (Vec<HistoryItem>, Vec<MissingPart>) {
        let parts = join_all(
            self.services
                .iter()
                .map(|(name, url)| async move { (*name, self.part(url, order_id).await) }),
        )
        .await;
        let mut items = Vec::new();
        let mut missing = Vec::new();
        for (service, part) in parts {
            match part {
                Ok(part) => items.extend(part),
                Err(reason) => {
                    tracing::warn!(service, %reason, order_id, "a part of an order's history is missing");
                    missing.push(MissingPart {
                        service: service.to_string(),
                        reason,
                    });
                }
            }
        }
        (items, missing)
    }

    async fn part(&self, base_url: &str, order_id: &str) -> Result<Vec<HistoryItem>, String> {
        let token = self
            .token
            .as_ref()
            .ok_or("no ADMIN_TOKEN is set, so the order service cannot ask for it")?;
        let url = format!("{base_url}/admin/orders/{}/history", urlencode(order_id));
        let mut request = self.http.get(&url).bearer_auth(token.expose());
        if let Some(traceparent) = telemetry::current_traceparent() {
            request = request.header(telemetry::TRACEPARENT, traceparent);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("did not answer: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("answered something that is not JSON: {e}"))?;
        OrderHistory::parse_from_json(Some(body))
            .map(|part| part.items)
            .map_err(|e| format!("answered something that is not a history: {}", e.message()))
    }
}
