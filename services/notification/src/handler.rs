//! Turns the saga's outcomes into notifications: event → domain → store.

use std::sync::Arc;

use chrono::Utc;
use shared::{
    broker::{HandleError, Handler, outcome},
    events::{Event, InventoryLow, OrderCancelled, OrderConfirmed, OrderRejected, RawEnvelope},
};

use crate::{domain, store::NotificationStore};

pub struct SagaOutcomes {
    pub store: Arc<NotificationStore>,
    pub admin_email: String,
}

impl Handler for SagaOutcomes {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let draft = match event.event_type.as_str() {
            OrderConfirmed::TYPE => domain::order_confirmed(&event.decode()?),
            OrderRejected::TYPE => domain::order_rejected(&event.decode()?),
            OrderCancelled::TYPE => domain::order_cancelled(&event.decode()?),
            InventoryLow::TYPE => domain::low_stock(
                &event.decode()?,
                &self.admin_email,
                &event.event_id.to_string(),
            ),
            other => {
                return Err(HandleError::Permanent(format!(
                    "notification-service does not handle {other}"
                )));
            }
        };
        let notification = draft.into_notification(&event.correlation_id, Utc::now());
        outcome(self.store.record_for_event(notification).await)
    }
}
