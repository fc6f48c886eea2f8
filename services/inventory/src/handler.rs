//! The inventory's reaction to order events.

use std::sync::Arc;

use shared::{
    broker::{HandleError, Handler},
    events::{Event, OrderCancelled, OrderCreated, RawEnvelope},
    store::inbox::was_already_handled,
};

use crate::store::InventoryStore;

pub struct OrderEvents {
    pub store: Arc<InventoryStore>,
}

impl Handler for OrderEvents {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let permanent = |e: shared::events::ContractError| HandleError::Permanent(e.to_string());
        let result = match event.event_type.as_str() {
            OrderCreated::TYPE => {
                let order = event.decode::<OrderCreated>().map_err(permanent)?;
                self.store.reserve(event, order).await
            }
            OrderCancelled::TYPE => {
                let cancelled = event.decode::<OrderCancelled>().map_err(permanent)?;
                self.store.release(&event, &cancelled).await
            }
            other => {
                return Err(HandleError::Permanent(format!(
                    "inventory-service does not handle {other}"
                )));
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if was_already_handled(&e) => {
                tracing::info!("duplicate delivery ignored");
                Ok(())
            }
            // Database down, write conflicts beyond the in-place retries, a
            // stock guard that moved: all worth another try later.
            Err(e) => Err(HandleError::Transient(e.to_string())),
        }
    }
}
