//! The inventory's reaction to order events: event → domain → store.

use std::sync::Arc;

use shared::{
    broker::{HandleError, Handler, outcome},
    events::{RawEnvelope, ToInventoryService},
};

use crate::store::InventoryStore;

pub struct OrderEvents {
    pub store: Arc<InventoryStore>,
}

impl Handler for OrderEvents {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let result = match ToInventoryService::decode(&event)? {
            ToInventoryService::OrderCreated(order) => self.store.reserve(event, order).await,
            // Cancelled, or failed by the saga deadline: the same compensation.
            ToInventoryService::OrderCancelled(cancelled) => {
                let (order_id, attempt) = (cancelled.order_id, cancelled.attempt);
                self.store.release(&event, &order_id, attempt).await
            }
            ToInventoryService::OrderFailed(failed) => {
                let (order_id, attempt) = (failed.order_id, failed.attempt);
                self.store.release(&event, &order_id, attempt).await
            }
        };
        outcome(result)
    }
}
