//! Each service's part of an order's history, for an operator and for the
//! order service, which assembles the parts (`GET /api/orders/{id}/history`).
//! See [`crate::history`].

use std::sync::Arc;

use futures::future::BoxFuture;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};

use super::{
    AdminAuth, ApiError, Refused,
    error::{NotFound, Unauthorized},
};
use crate::{
    deadletter::DeadLetterStore,
    history::{HistoryItem, HistoryStore, dead_letter_items, in_time_order},
    store::StoreError,
};

/// Lines of an order's history a service keeps outside its history records
/// (the notification service's emails).
pub trait HistorySource: Send + Sync {
    fn items<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<HistoryItem>, StoreError>>;
}

/// What one service knows of an order's history.
#[derive(Clone)]
pub struct LocalHistory {
    pub service: &'static str,
    pub records: HistoryStore,
    pub dead_letters: DeadLetterStore,
    pub extra: Option<Arc<dyn HistorySource>>,
}

impl LocalHistory {
    /// This service's lines of the order's history, in time order.
    pub async fn items(&self, order_id: &str) -> Result<Vec<HistoryItem>, StoreError> {
        let mut items = self.records.of_order(order_id).await?;
        let letters = self
            .dead_letters
            .of_order(order_id, crate::history::MAX_RECORDS)
            .await?;
        items.extend(dead_letter_items(self.service, &letters));
        if let Some(extra) = &self.extra {
            items.extend(extra.items(order_id).await?);
        }
        Ok(in_time_order(items))
    }
}

/// A service whose part of a history could not be read.
#[derive(Clone, Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct MissingPart {
    /// The service, e.g. `inventory-service`.
    pub service: String,
    /// Why its part is missing (it did not answer, or answered an error).
    pub reason: String,
}

/// An order's life, in time order.
#[derive(Clone, Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct OrderHistory {
    /// The order's id.
    pub order_id: String,
    /// What happened, oldest first, in every service asked.
    pub items: Vec<HistoryItem>,
    /// Services whose part could not be read: the history lacks what they
    /// did. Empty when it is complete.
    pub incomplete: Vec<MissingPart>,
}

#[derive(ApiResponse)]
pub(crate) enum OrderHistoryResponse {
    /// The order's history as this service knows it.
    #[oai(status = 200)]
    Ok(Json<OrderHistory>),
}

/// The route over [`LocalHistory`], on every service.
pub(crate) struct HistoryApi {
    pub local: LocalHistory,
}

#[OpenApi(tag = "Tag::History")]
impl HistoryApi {
    /// What this service did for an order (admin): the events it handled
    /// (with the failed attempts before), published and dead-lettered, the
    /// status changes it made, and its emails, oldest first. The order
    /// service's `GET /api/orders/{orderId}/history` assembles every
    /// service's part; an order this service never saw has an empty one.
    #[oai(path = "/admin/orders/:order_id/history", method = "get")]
    async fn history(
        &self,
        _admin: AdminAuth,
        order_id: Path<String>,
    ) -> Result<OrderHistoryResponse, Refused<(Unauthorized, NotFound)>> {
        let items = self.local.items(&order_id).await.map_err(ApiError::from)?;
        Ok(OrderHistoryResponse::Ok(Json(OrderHistory {
            order_id: order_id.0,
            items,
            incomplete: Vec::new(),
        })))
    }
}

#[derive(poem_openapi::Tags)]
enum Tag {
    /// What happened to an order, service by service.
    History,
}
