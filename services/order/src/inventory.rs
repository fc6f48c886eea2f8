//! The order service's HTTP check that ordered products exist, behind a
//! circuit breaker. When the inventory is slow or down the breaker opens and
//! orders are accepted unchecked: the saga rejects unknown products anyway,
//! so a customer never sees a 5xx because of the inventory.

use std::{collections::HashSet, sync::RwLock, time::Duration};

use failsafe::futures::CircuitBreaker;
use futures::future::join_all;
use shared::{
    resilience::{Breaker, Breakers},
    telemetry,
};

/// Product look-ups one order's check has in flight at once.
const LOOKUPS_AT_ONCE: usize = 8;

/// What the inventory said about a set of products.
#[derive(Debug, PartialEq, Eq)]
pub enum ProductCheck {
    AllKnown,
    /// These products do not exist.
    Unknown(Vec<String>),
    /// The inventory could not be asked; the saga will decide.
    Unavailable(String),
}

pub struct InventoryClient {
    base_url: String,
    http: reqwest::Client,
    /// Products are never deleted, so a product seen once stays valid and
    /// the hot path makes no HTTP call for it.
    known: RwLock<HashSet<String>>,
    breaker: Breaker,
}

impl InventoryClient {
    pub fn new(base_url: &str, breakers: &Breakers) -> Self {
        InventoryClient {
            base_url: base_url.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("a reqwest client"),
            known: RwLock::new(HashSet::new()),
            breaker: breakers.breaker("inventory-http", 5, Duration::from_secs(10)),
        }
    }

    pub async fn check(&self, product_ids: &[&str]) -> ProductCheck {
        let unseen: Vec<&str> = {
            let known = self.known.read().expect("poisoned");
            product_ids
                .iter()
                .copied()
                .filter(|id| !known.contains(*id))
                .collect()
        };
        if unseen.is_empty() {
            return ProductCheck::AllKnown;
        }
        // A few at a time, and no further than the first unknown ones: an
        // order of 100 invented products asked all at once took the
        // inventory's in-flight limit, and the refusals opened the breaker,
        // so that order and every order for 10 s went through unchecked.
        let mut unknown = Vec::new();
        for ids in unseen.chunks(LOOKUPS_AT_ONCE) {
            let lookups = join_all(ids.iter().map(|id| self.exists(id))).await;
            for (id, found) in ids.iter().zip(lookups) {
                match found {
                    Ok(true) => {
                        self.known.write().expect("poisoned").insert(id.to_string());
                    }
                    Ok(false) => unknown.push(id.to_string()),
                    Err(reason) => return ProductCheck::Unavailable(reason),
                }
            }
            if !unknown.is_empty() {
                break;
            }
        }
        if unknown.is_empty() {
            ProductCheck::AllKnown
        } else {
            ProductCheck::Unknown(unknown)
        }
    }

    async fn exists(&self, product_id: &str) -> Result<bool, String> {
        let url = format!("{}/api/products/{}", self.base_url, urlencode(product_id));
        let call = async {
            let mut request = self.http.get(&url);
            // The inventory's answer is part of the request's trace.
            if let Some(traceparent) = telemetry::current_traceparent() {
                request = request.header(telemetry::TRACEPARENT, traceparent);
            }
            let response = request.send().await?;
            // 404 is an answer, not a failure of the inventory.
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(false);
            }
            response.error_for_status().map(|_| true)
        };
        match self.breaker.call(call).await {
            Ok(found) => Ok(found),
            Err(failsafe::Error::Rejected) => Err("inventory circuit breaker is open".into()),
            Err(failsafe::Error::Inner(e)) => Err(format!("inventory check failed: {e}")),
        }
    }
}

pub(crate) fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
