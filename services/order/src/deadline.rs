//! The saga deadline, kept by a task: orders the saga has not finished
//! `SAGA_TIMEOUT_SECONDS` after they were accepted end FAILED (see
//! [`crate::domain::expire`]). Several instances may run it: the version
//! guard lets one of them fail each order, once.

use std::{sync::Arc, time::Duration};

use shared::CancellationToken;

use crate::store::OrderStore;

/// Looks for overdue orders until `shutdown`, often enough that an order
/// fails within a tenth of the timeout after its deadline (at most 5 s late).
pub async fn watch(store: Arc<OrderStore>, timeout: Duration, shutdown: CancellationToken) {
    let every = (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        match store.fail_overdue(timeout).await {
            Ok(0) => {}
            Ok(failed) => tracing::warn!(
                orders = failed,
                timeout_s = timeout.as_secs(),
                "saga deadline passed: orders FAILED, their stock released"
            ),
            Err(error) => tracing::warn!(%error, "could not check the saga deadline; trying again"),
        }
    }
    tracing::info!("saga deadline watch stopped");
}
