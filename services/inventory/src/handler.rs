//! The inventory's reaction to order events: event → domain → store.

use std::sync::Arc;

use shared::{
    broker::{HandleError, Handler, outcome},
    events::{Event, OrderCancelled, OrderCreated, RawEnvelope},
};

use crate::store::InventoryStore;

pub struct OrderEvents {
    pub store: Arc<InventoryStore>,
}

impl Handler for OrderEvents {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let result = match event.event_type.as_str() {
            OrderCreated::TYPE => {
                let order = event.decode::<OrderCreated>()?;
                self.store.reserve(event, order).await
            }
            OrderCancelled::TYPE => {
                let cancelled = event.decode::<OrderCancelled>()?;
                self.store.release(&event, &cancelled).await
            }
            other => {
                return Err(HandleError::Permanent(format!(
                    "inventory-service does not handle {other}"
                )));
            }
        };
        outcome(result)
    }
}
