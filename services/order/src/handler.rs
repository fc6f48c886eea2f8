//! The order service's reaction to the inventory's answers: event → domain
//! (inside the store's batch writer) → store.

use std::sync::Arc;

use shared::{
    broker::{HandleError, Handler, outcome},
    events::{RawEnvelope, ToOrderService},
};

use crate::store::OrderStore;

pub struct InventoryAnswers {
    pub store: Arc<OrderStore>,
}

impl Handler for InventoryAnswers {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let answer = ToOrderService::decode(&event)?;
        outcome(self.store.apply_inventory_answer(event, answer).await)
    }
}
