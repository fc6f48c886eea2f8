//! The order service's reaction to the inventory's answers.

use std::sync::Arc;

use shared::{
    broker::{HandleError, Handler},
    events::{Event, InventoryReservationFailed, InventoryReserved, RawEnvelope},
    store::inbox::was_already_handled,
};

use crate::{
    domain,
    store::{OrderStore, is_permanent},
};

pub struct InventoryAnswers {
    pub store: Arc<OrderStore>,
}

impl Handler for InventoryAnswers {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let permanent = |e: shared::events::ContractError| HandleError::Permanent(e.to_string());
        let result = match event.event_type.as_str() {
            InventoryReserved::TYPE => {
                let data = event.decode::<InventoryReserved>().map_err(permanent)?;
                self.store
                    .apply_inventory_answer(&event, &data.order_id, |order| {
                        domain::on_reserved(order, &data.lines)
                    })
                    .await
            }
            InventoryReservationFailed::TYPE => {
                let data = event
                    .decode::<InventoryReservationFailed>()
                    .map_err(permanent)?;
                self.store
                    .apply_inventory_answer(&event, &data.order_id, |order| {
                        Ok(domain::on_reservation_failed(
                            order,
                            &data.reason,
                            &data.short_lines,
                        ))
                    })
                    .await
            }
            other => {
                return Err(HandleError::Permanent(format!(
                    "order-service does not handle {other}"
                )));
            }
        };
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
