//! Turns the saga's outcomes into notifications: event → domain → store.

use std::sync::Arc;

use chrono::Utc;
use shared::{
    broker::{HandleError, Handler, outcome},
    events::{RawEnvelope, ToNotificationService as Outcome},
    history::History,
};

use crate::{domain, store::NotificationStore};

pub struct SagaOutcomes {
    pub store: Arc<NotificationStore>,
    pub admin_email: String,
}

impl Handler for SagaOutcomes {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let draft = match Outcome::decode(&event)? {
            Outcome::OrderConfirmed(data) => domain::order_confirmed(&data),
            Outcome::OrderRejected(data) => domain::order_rejected(&data),
            Outcome::OrderCancelled(data) => domain::order_cancelled(&data),
            Outcome::OrderFailed(data) => domain::order_failed(&data),
            Outcome::InventoryLow(data) => {
                domain::low_stock(&data, &self.admin_email, &event.event_id.to_string())
            }
        };
        let mut notification =
            draft.into_notification(&event.correlation_id, event.traceparent.clone(), Utc::now());
        if let Some(order_id) = &notification.order_id {
            let handled =
                History::of(domain::SOURCE, order_id).handled(&event, notification.created_at);
            self.store.keep_in(&mut notification.history, handled);
        }
        outcome(self.store.record_for_event(notification).await)
    }
}
