//! The order service's reaction to the saga participants' answers: event →
//! domain (inside the store's batch writer) → store.

use std::sync::Arc;

use shared::{
    broker::{HandleError, Handler, outcome},
    events::{RawEnvelope, ToOrderService},
};

use crate::{backlog::Backlog, store::OrderStore};

pub struct SagaAnswers {
    pub store: Arc<OrderStore>,
    /// Told of every answer applied: the saga's finishing rate, which new
    /// orders are admitted at when it falls behind.
    pub backlog: Option<Arc<Backlog>>,
}

impl Handler for SagaAnswers {
    async fn handle(&self, event: RawEnvelope) -> Result<(), HandleError> {
        let answer = ToOrderService::decode(&event)?;
        let applied = outcome(self.store.apply_inventory_answer(event, answer).await);
        if applied.is_ok()
            && let Some(backlog) = &self.backlog
        {
            backlog.finished_one();
        }
        applied
    }
}
