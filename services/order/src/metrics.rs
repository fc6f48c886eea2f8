//! The order service's own gauges on `/metrics`.

use std::sync::Arc;

use chrono::Utc;
use futures::{FutureExt, future::BoxFuture};
use shared::http::{Gauge, GaugeSource};

use crate::{domain, store::OrderStore};

/// How long the oldest saga that has not ended has been running: an
/// operator alerts on it instead of polling the stuck-saga finder.
pub struct SagaGauges {
    pub store: Arc<OrderStore>,
}

impl GaugeSource for SagaGauges {
    fn gauges(&self) -> BoxFuture<'_, Vec<Gauge>> {
        async move {
            let oldest = match self.store.oldest_unfinished().await {
                Ok(oldest) => oldest,
                Err(error) => {
                    tracing::debug!(%error, "could not read the oldest unfinished saga");
                    return Vec::new();
                }
            };
            let age = oldest.map_or(0, |accepted| domain::age_seconds(accepted, Utc::now()));
            vec![Gauge {
                name: "saga_oldest_unfinished_age_seconds",
                help: "Seconds since the oldest saga that has not ended began (PENDING, or \
                       FAILED awaiting the inventory's release); 0 when none.",
                value: age as f64,
            }]
        }
        .boxed()
    }
}
