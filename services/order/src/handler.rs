//! The order service's reaction to the inventory's answers: event → domain
//! (inside the store's batch writer) → store.

use std::sync::Arc;

use shared::{
    broker::{HandleError, Handler, outcome},
    events::{Event, InventoryReservationFailed, InventoryReserved, RawEnvelope},
};

use crate::{domain::InventoryAnswer, store::OrderStore};

pub struct InventoryAnswers {
    pub store: Arc<OrderStore>,
}

impl Handler for InventoryAnswers {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let answer = match event.event_type.as_str() {
            InventoryReserved::TYPE => InventoryAnswer::Reserved(event.decode()?),
            InventoryReservationFailed::TYPE => InventoryAnswer::Failed(event.decode()?),
            other => {
                return Err(HandleError::Permanent(format!(
                    "order-service does not handle {other}"
                )));
            }
        };
        outcome(self.store.apply_inventory_answer(event, answer).await)
    }
}
