//! The order service's reaction to the inventory's answers.

use std::sync::Arc;

use shared::{
    broker::{HandleError, Handler},
    events::{Event, InventoryReservationFailed, InventoryReserved, RawEnvelope},
    store::inbox::was_already_handled,
};

use crate::store::{InventoryAnswer, OrderStore, is_permanent};

pub struct InventoryAnswers {
    pub store: Arc<OrderStore>,
}

impl Handler for InventoryAnswers {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let permanent = |e: shared::events::ContractError| HandleError::Permanent(e.to_string());
        let answer = match event.event_type.as_str() {
            InventoryReserved::TYPE => {
                InventoryAnswer::Reserved(event.decode().map_err(permanent)?)
            }
            InventoryReservationFailed::TYPE => {
                InventoryAnswer::Failed(event.decode().map_err(permanent)?)
            }
            other => {
                return Err(HandleError::Permanent(format!(
                    "order-service does not handle {other}"
                )));
            }
        };
        let result = self.store.apply_inventory_answer(event, answer).await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if was_already_handled(&e) => {
                tracing::info!("duplicate delivery ignored");
                Ok(())
            }
            Err(e) if is_permanent(&e) => Err(HandleError::Permanent(e.to_string())),
            Err(e) => Err(HandleError::Transient(e.to_string())),
        }
    }
}
