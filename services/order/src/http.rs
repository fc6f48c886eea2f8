//! The order API.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi, Tags,
    param::{Header, Path, Query},
    payload::Json,
};
use shared::{
    broker::Backlog,
    http::{
        AdminAuth, ApiError, CorrelationId, Cursor, FieldError, Page, PageSize, page, validate,
    },
    money::major_units,
};
use validator::Validate;

use crate::{
    domain::{self, Order, OrderItem, OrderStatus},
    error::Error,
    inventory::{InventoryClient, ProductCheck},
    store::{Created, OrderStore},
};

#[derive(Tags)]
enum Tag {
    /// Placing, reading, cancelling and advancing orders.
    Orders,
}

pub struct OrderApi {
    pub store: Arc<OrderStore>,
    pub inventory: Arc<InventoryClient>,
    /// Refuses new orders while the saga is this far behind (`None`: off).
    pub backlog: Option<Arc<Backlog>>,
}

/// A new order.
#[derive(Debug, Object, Validate, serde::Serialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// The customer placing the order.
    #[validate(length(min = 1, max = 128))]
    pub customer_id: String,
    /// Where confirmation emails go.
    #[validate(email, length(max = 254))]
    pub customer_email: String,
    /// One line per product (1 to 100 lines, each product once).
    #[validate(length(min = 1, max = 100), nested)]
    pub items: Vec<OrderLineRequest>,
}

/// A product and how many of it.
#[derive(Debug, Object, Validate, serde::Serialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderLineRequest {
    /// The inventory's product id.
    #[validate(length(min = 1, max = 64))]
    pub product_id: String,
    /// 1 to 10,000.
    #[validate(range(min = 1, max = 10000))]
    pub quantity: u32,
}

/// An admin status change.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateStatusRequest {
    /// SHIPPED (from CONFIRMED) or DELIVERED (from SHIPPED).
    pub status: OrderStatus,
    /// If given, the change applies only at this version (else 409).
    pub expected_version: Option<i64>,
}

/// An order line.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct OrderItemView {
    pub product_id: String,
    pub quantity: u32,
    /// Unit price in major units, known once the order is confirmed.
    pub unit_price: Option<f64>,
}

/// An order.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    pub customer_id: String,
    pub customer_email: String,
    pub items: Vec<OrderItemView>,
    /// Total in major units, known once the order is confirmed.
    pub total_amount: Option<f64>,
    pub status: OrderStatus,
    /// Why the order was rejected, if it was.
    pub reason: Option<String>,
    /// Bumped by every change; use it as `expectedVersion`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Order> for OrderView {
    fn from(order: Order) -> Self {
        OrderView {
            order_id: order.id,
            customer_id: order.customer_id,
            customer_email: order.customer_email,
            items: order
                .items
                .into_iter()
                .map(|i| OrderItemView {
                    product_id: i.product_id,
                    quantity: i.quantity,
                    unit_price: i.unit_price_cents.map(major_units),
                })
                .collect(),
            total_amount: order.total_cents.map(major_units),
            status: order.status,
            reason: order.reason,
            version: order.version,
            created_at: order.created_at,
            updated_at: order.updated_at,
        }
    }
}

#[derive(ApiResponse)]
pub enum CreateOrderResponse {
    /// Accepted; the saga decides CONFIRMED or REJECTED shortly.
    #[oai(status = 202)]
    Accepted(Json<OrderView>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum OrderResponse {
    #[oai(status = 200)]
    Ok(Json<OrderView>),
}

#[derive(ApiResponse)]
pub enum OrderPageResponse {
    #[oai(status = 200)]
    Ok(Json<Page<OrderView>>),
}

#[OpenApi(tag = "Tag::Orders")]
impl OrderApi {
    /// Place an order. Answers 202 at once; poll the order (or its Location)
    /// for the outcome. With `Idempotency-Key`, a retried request returns
    /// the same order and a different body under the same key gets 409.
    /// While the saga is too far behind (`MAX_SAGA_BACKLOG` messages waiting)
    /// a new order gets 503 `overloaded` with `Retry-After`.
    #[oai(path = "/api/orders", method = "post")]
    async fn create_order(
        &self,
        body: Json<CreateOrderRequest>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        correlation: Data<&CorrelationId>,
    ) -> poem::Result<CreateOrderResponse> {
        let request = body.0;
        validate(&request)?;
        let product_ids: Vec<&str> = request
            .items
            .iter()
            .map(|i| i.product_id.as_str())
            .collect();
        let duplicates = domain::duplicate_products(&product_ids);
        if !duplicates.is_empty() {
            return Err(ApiError::validation(
                duplicates
                    .into_iter()
                    .map(|i| FieldError {
                        field: format!("items[{i}].productId"),
                        message: "this product is already on an earlier line".into(),
                    })
                    .collect(),
            )
            .into());
        }
        let key = match idempotency_key.0 {
            Some(key) if key.is_empty() || key.len() > 200 => {
                return Err(ApiError::validation(vec![FieldError {
                    field: "Idempotency-Key".into(),
                    message: "must be 1 to 200 characters".into(),
                }])
                .into());
            }
            other => other,
        };
        if let Some(backlog) = &self.backlog
            && let Some(waiting) = backlog.over_limit()
        {
            return Err(ApiError::overloaded(format!(
                "{waiting} saga messages are waiting (limit {}); retry in 1 s",
                backlog.limit()
            ))
            .into());
        }

        match self.inventory.check(&product_ids).await {
            ProductCheck::AllKnown => {}
            ProductCheck::Unknown(unknown) => {
                let fields = product_ids
                    .iter()
                    .enumerate()
                    .filter(|(_, id)| unknown.iter().any(|u| u == *id))
                    .map(|(i, id)| FieldError {
                        field: format!("items[{i}].productId"),
                        message: format!("no product {id}"),
                    })
                    .collect();
                return Err(Error::UnknownProducts(fields).into());
            }
            ProductCheck::Unavailable(reason) => {
                tracing::warn!(%reason, "accepting the order unchecked; the saga will decide");
            }
        }

        let items: Vec<(String, u32)> = request
            .items
            .iter()
            .map(|i| (i.product_id.clone(), i.quantity))
            .collect();
        let fingerprint =
            domain::request_fingerprint(&request.customer_id, &request.customer_email, &items);
        let now = Utc::now();
        let order = Order {
            id: uuid::Uuid::now_v7().to_string(),
            customer_id: request.customer_id,
            customer_email: request.customer_email,
            items: items
                .into_iter()
                .map(|(product_id, quantity)| OrderItem {
                    product_id,
                    quantity,
                    unit_price_cents: None,
                })
                .collect(),
            total_cents: None,
            status: OrderStatus::Pending,
            reason: None,
            version: 1,
            created_at: now,
            updated_at: now,
            correlation_id: correlation.0.0.clone(),
        };
        let order = match self
            .store
            .create(order, key.map(|k| (k, fingerprint)))
            .await?
        {
            Created::New(order) => {
                tracing::info!(order_id = %order.id, "order accepted");
                order
            }
            Created::Replayed(order) => order,
        };
        let location = format!("/api/orders/{}", order.id);
        Ok(CreateOrderResponse::Accepted(Json(order.into()), location))
    }

    /// One order.
    #[oai(path = "/api/orders/:order_id", method = "get")]
    async fn get_order(&self, order_id: Path<String>) -> poem::Result<OrderResponse> {
        let order = self
            .store
            .get(&order_id)
            .await?
            .ok_or_else(|| Error::NotFound(order_id.0.clone()))?;
        Ok(OrderResponse::Ok(Json(order.into())))
    }

    /// Cancel a PENDING or CONFIRMED order; its stock is released.
    #[oai(path = "/api/orders/:order_id/cancel", method = "post")]
    async fn cancel_order(
        &self,
        order_id: Path<String>,
        correlation: Data<&CorrelationId>,
    ) -> poem::Result<OrderResponse> {
        let order = self.store.cancel(&order_id, &correlation.0.0).await?;
        Ok(OrderResponse::Ok(Json(order.into())))
    }

    /// Advance an order: CONFIRMED→SHIPPED→DELIVERED (admin).
    #[oai(path = "/api/orders/:order_id/status", method = "put")]
    async fn update_status(
        &self,
        _admin: AdminAuth,
        order_id: Path<String>,
        body: Json<UpdateStatusRequest>,
        correlation: Data<&CorrelationId>,
    ) -> poem::Result<OrderResponse> {
        let order = self
            .store
            .set_status(
                &order_id,
                body.status,
                body.expected_version,
                &correlation.0.0,
            )
            .await?;
        Ok(OrderResponse::Ok(Json(order.into())))
    }

    /// A customer's orders, newest first.
    #[oai(path = "/api/customers/:customer_id/orders", method = "get")]
    async fn customer_orders(
        &self,
        customer_id: Path<String>,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> poem::Result<OrderPageResponse> {
        let page = page::requested(limit.0, cursor.0);
        let found = self.store.orders_of_customer(&customer_id, &page).await?;
        Ok(OrderPageResponse::Ok(Json(Page::of(found))))
    }

    /// Orders in one status, newest first (admin).
    #[oai(path = "/api/orders/status/:status", method = "get")]
    async fn orders_by_status(
        &self,
        _admin: AdminAuth,
        status: Path<OrderStatus>,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> poem::Result<OrderPageResponse> {
        let page = page::requested(limit.0, cursor.0);
        let found = self.store.orders_in_status(status.0, &page).await?;
        Ok(OrderPageResponse::Ok(Json(Page::of(found))))
    }
}
