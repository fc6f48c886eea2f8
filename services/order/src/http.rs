//! The order API.

use std::{borrow::Cow, sync::Arc};

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi, Tags,
    param::{Header, Path, Query},
    payload::Json,
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseFromParameter, ParseResult, Type},
};
use shared::{
    events::Cause,
    history::in_time_order,
    http::{
        AdminAuth, ApiError, ApiOrderStatus, CorrelationId, Cursor, CustomerAuth, EmailAddress,
        FieldError, Page, PageSize, Refused, ValidJson,
        error::{
            BadRequest, Conflict, Forbidden, NotFound, Unauthorized, Unprocessable,
            UnsupportedMediaType,
        },
        history::{LocalHistory, OrderHistory},
        page,
    },
    money::major_units,
};

use crate::{
    backlog::Backlog,
    domain::{self, Order, saga},
    error::Error,
    inventory::{InventoryClient, ProductCheck},
    limit::CustomerLimit,
    metrics::SagaMetrics,
    participants::Participants,
    store::{Created, OrderStore},
};

#[derive(Tags)]
enum Tag {
    /// Placing, reading, cancelling and advancing orders.
    Orders,
    /// Sagas that have not ended, for an operator.
    Sagas,
}

pub struct OrderApi {
    pub store: Arc<OrderStore>,
    pub inventory: Arc<InventoryClient>,
    /// Refuses new orders while the saga is this far behind (`None`: off).
    pub backlog: Option<Arc<Backlog>>,
    /// Counts the orders refused at admission.
    pub saga: SagaMetrics,
    /// Refuses a customer's orders past its limit a minute (`None`: off).
    pub customer_limit: Option<CustomerLimit>,
    /// This service's part of an order's history.
    pub history: LocalHistory,
    /// The other services, asked for their parts.
    pub participants: Participants,
}

/// A new order.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// The customer placing the order (1 to 128 characters).
    #[oai(validator(min_length = 1, max_length = 128))]
    pub customer_id: String,
    /// Where confirmation emails go (at most 254 characters).
    #[oai(validator(max_length = 254))]
    pub customer_email: EmailAddress,
    /// One line per product (1 to 100 lines). A product on more than one
    /// line is a 422 naming the later lines.
    #[oai(validator(min_items = 1, max_items = 100))]
    pub items: Vec<OrderLineRequest>,
}

/// A product and how many of it.
#[derive(Debug, Object, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderLineRequest {
    /// The inventory's product id (1 to 64 characters).
    #[oai(validator(min_length = 1, max_length = 64))]
    pub product_id: String,
    /// How many, 1 to 10,000.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
    pub quantity: u32,
}

/// An admin status change.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateStatusRequest {
    /// SHIPPED (from CONFIRMED) or DELIVERED (from SHIPPED); any other move
    /// is a 409.
    pub status: ApiOrderStatus,
    /// If given, the change applies only at this version (else 409).
    #[oai(nullable)]
    pub expected_version: Option<i64>,
}

/// The `Idempotency-Key` header: 1 to 200 characters. Its schema says so;
/// the handler checks it, so that a bad key is a `validation_failed` naming
/// the header like any other invalid field.
#[derive(Debug)]
pub struct IdempotencyKey(String);

impl Type for IdempotencyKey {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        "IdempotencyKey".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: Some(1),
            max_length: Some(MAX_IDEMPOTENCY_KEY),
            ..MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ParseFromParameter for IdempotencyKey {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(IdempotencyKey(value.to_string()))
    }
}

const MAX_IDEMPOTENCY_KEY: usize = 200;

/// An order line.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct OrderItemView {
    /// The inventory's product id.
    pub product_id: String,
    /// How many.
    pub quantity: u32,
    /// Unit price in major units, known once the order is confirmed.
    #[oai(nullable)]
    pub unit_price: Option<f64>,
}

/// An order.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct OrderView {
    /// The order's id (UUIDv7).
    pub order_id: String,
    /// The customer who placed it.
    pub customer_id: String,
    /// Where its emails go.
    pub customer_email: String,
    /// Its lines, in the order they were given.
    pub items: Vec<OrderItemView>,
    /// Total in major units, known once the order is confirmed.
    #[oai(nullable)]
    pub total_amount: Option<f64>,
    /// Where the order is in its life.
    pub status: ApiOrderStatus,
    /// Why the order was rejected, if it was.
    #[oai(nullable)]
    pub reason: Option<String>,
    /// Bumped by every change; use it as `expectedVersion`.
    pub version: i64,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Which run of its saga this is: 1, and one more each time an operator
    /// retried the FAILED order (`POST /admin/orders/{orderId}/retry`).
    pub attempt: u32,
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
            status: order.status.into(),
            reason: order.reason,
            version: order.version,
            created_at: order.created_at,
            updated_at: order.updated_at,
            attempt: order.attempt,
        }
    }
}

/// A saga that has not ended, and what it waits for.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct StuckSagaView {
    /// The order's id (UUIDv7).
    pub order_id: String,
    /// The customer who placed it.
    pub customer_id: String,
    /// PENDING, or FAILED while the inventory's release is awaited.
    pub status: ApiOrderStatus,
    /// Whole seconds since its saga began (the order was accepted, or last
    /// retried).
    pub age_seconds: u64,
    /// When the order was accepted.
    pub created_at: DateTime<Utc>,
    /// The step the saga waits for, naming the event that ends the wait.
    pub waiting_for: String,
}

impl StuckSagaView {
    /// The view of an order whose saga has not ended, as of `now`; `None` if
    /// it has.
    fn of(order: Order, now: DateTime<Utc>) -> Option<Self> {
        let step = domain::awaited_step(&order)?;
        Some(StuckSagaView {
            age_seconds: saga::age_seconds(saga::started_at(&order), now),
            waiting_for: step.describe().to_string(),
            order_id: order.id,
            customer_id: order.customer_id,
            status: order.status.into(),
            created_at: order.created_at,
        })
    }
}

/// How long a saga runs before the stuck-saga finder lists it by default.
const STUCK_AFTER_SECONDS: u64 = 60;

fn stuck_after_seconds() -> u64 {
    STUCK_AFTER_SECONDS
}

#[derive(ApiResponse)]
pub enum CreateOrderResponse {
    /// Accepted; the saga decides CONFIRMED or REJECTED shortly.
    #[oai(status = 202)]
    Accepted(
        Json<OrderView>,
        /// Where to poll the order.
        #[oai(header = "Location")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum OrderResponse {
    /// The order as it is now.
    #[oai(status = 200)]
    Ok(Json<OrderView>),
}

#[derive(ApiResponse)]
pub enum OrderPageResponse {
    /// A page of orders, newest first.
    #[oai(status = 200)]
    Ok(Json<Page<OrderView>>),
}

impl OrderApi {
    /// The order, if the caller may see it. Another customer's is not found,
    /// so that a customer cannot learn which order ids exist.
    async fn own_order(&self, auth: &CustomerAuth, order_id: &str) -> Result<Order, Error> {
        self.store
            .get(order_id)
            .await?
            .filter(|order| auth.0.acts_for(&order.customer_id))
            .ok_or_else(|| Error::NotFound(order_id.to_string()))
    }
}

#[derive(ApiResponse)]
pub enum HistoryResponse {
    /// The order's life in every service, oldest first.
    #[oai(status = 200)]
    Ok(Json<OrderHistory>),
}

#[derive(ApiResponse)]
pub enum StuckSagaPageResponse {
    /// A page of sagas that have not ended, oldest first.
    #[oai(status = 200)]
    Ok(Json<Page<StuckSagaView>>),
}

#[OpenApi(tag = "Tag::Orders")]
impl OrderApi {
    /// Place an order. Answers 202 at once; poll the order (or its Location)
    /// for the outcome. With `Idempotency-Key`, a retried request returns
    /// the same order and a different body under the same key gets 409.
    /// While the saga is too far behind (`MAX_SAGA_BACKLOG` orders open)
    /// a new order gets 503 `overloaded` with `Retry-After`. A customer
    /// orders for itself: `customerId` must be the token's `sub`.
    #[oai(path = "/api/orders", method = "post")]
    async fn create_order(
        &self,
        auth: CustomerAuth,
        body: ValidJson<CreateOrderRequest>,
        /// Makes a retried request safe: the same key and body return the
        /// first order.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<IdempotencyKey>>,
        correlation: Data<&CorrelationId>,
    ) -> Result<
        CreateOrderResponse,
        Refused<(
            BadRequest,
            Unauthorized,
            Forbidden,
            Conflict,
            UnsupportedMediaType,
            Unprocessable,
        )>,
    > {
        let request = body.0;
        if !auth.0.acts_for(&request.customer_id) {
            return Err(ApiError::forbidden(
                "customerId must be the customer the token was issued to (its sub)",
            )
            .into());
        }
        let product_ids: Vec<&str> = request
            .items
            .iter()
            .map(|i| i.product_id.as_str())
            .collect();
        // Well-formed but not something to process, like an unknown product
        // (a schema cannot say "each product once" of an array of objects).
        let duplicates = domain::duplicate_products(&product_ids);
        if !duplicates.is_empty() {
            return Err(ApiError {
                fields: duplicates
                    .into_iter()
                    .map(|i| FieldError {
                        field: format!("items[{i}].productId"),
                        message: "this product is already on an earlier line".into(),
                    })
                    .collect(),
                ..ApiError::unprocessable("a product is on more than one line")
            }
            .into());
        }
        let key = match idempotency_key.0.map(|key| key.0) {
            Some(key) if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY => {
                return Err(ApiError::validation(vec![FieldError {
                    field: "Idempotency-Key".into(),
                    message: "must be 1 to 200 characters".into(),
                }])
                .into());
            }
            other => other,
        };
        // The saga's admission first: it is in memory, and under overload it
        // refuses most requests, which must then cost the database nothing.
        if let Some(backlog) = &self.backlog
            && let Err(throttled) = backlog.admit()
        {
            self.saga.refused();
            return Err(ApiError::overloaded(format!(
                "the saga is behind: {} orders are open (limit {}), so new orders are admitted \
                 at {:.0}/s; retry in 1 s",
                throttled.open, throttled.limit, throttled.rate
            ))
            .into());
        }
        if let Some(limit) = &self.customer_limit {
            limit.check(&self.store, &request.customer_id).await?;
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
        let customer_email = request.customer_email.into_string();
        let fingerprint =
            domain::request_fingerprint(&request.customer_id, &customer_email, &items);
        let change = domain::place(
            uuid::Uuid::now_v7().to_string(),
            request.customer_id,
            customer_email,
            items,
            &Cause::request(domain::SOURCE, &correlation.0.0),
            Utc::now(),
        );
        let order = match self
            .store
            .create(change, key.map(|k| (k, fingerprint)))
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

    /// One of the caller's orders. Another customer's is 404, as if it did
    /// not exist.
    #[oai(path = "/api/orders/:order_id", method = "get")]
    async fn get_order(
        &self,
        auth: CustomerAuth,
        order_id: Path<String>,
    ) -> Result<OrderResponse, Refused<(Unauthorized, NotFound)>> {
        let order = self.own_order(&auth, &order_id).await?;
        Ok(OrderResponse::Ok(Json(order.into())))
    }

    /// Cancel one of the caller's orders, PENDING or CONFIRMED; its stock is
    /// released. Any other status is a 409; another customer's order is 404.
    #[oai(path = "/api/orders/:order_id/cancel", method = "post")]
    async fn cancel_order(
        &self,
        auth: CustomerAuth,
        order_id: Path<String>,
        correlation: Data<&CorrelationId>,
    ) -> Result<OrderResponse, Refused<(Unauthorized, NotFound, Conflict)>> {
        self.own_order(&auth, &order_id).await?;
        let order = self.store.cancel(&order_id, &correlation.0.0).await?;
        Ok(OrderResponse::Ok(Json(order.into())))
    }

    /// One of the caller's orders' history, assembled from every service:
    /// each event the saga published or handled (with retries before),
    /// each status change with its reason, each dead letter with its replay
    /// or discard, each email with its Message-ID and outcome, oldest
    /// first. Another customer's order is 404. A service that does not
    /// answer is listed in `incomplete` instead of failing the request.
    #[oai(path = "/api/orders/:order_id/history", method = "get")]
    async fn order_history(
        &self,
        auth: CustomerAuth,
        order_id: Path<String>,
    ) -> Result<HistoryResponse, Refused<(Unauthorized, NotFound)>> {
        self.own_order(&auth, &order_id).await?;
        let (own, (theirs, incomplete)) = tokio::join!(
            self.history.items(&order_id),
            self.participants.history(&order_id)
        );
        let mut items = own.map_err(Error::from)?;
        items.extend(theirs);
        Ok(HistoryResponse::Ok(Json(OrderHistory {
            order_id: order_id.0,
            items: in_time_order(items),
            incomplete,
        })))
    }

    /// Run a FAILED order's saga again (admin): PENDING, one attempt on,
    /// with a new deadline; it ends CONFIRMED or REJECTED like any order.
    /// Only once the inventory has confirmed it released what the last
    /// attempt held, so stock is taken at most once; the customer's
    /// confirmation email goes out at most once. Any other status, or a
    /// release still awaited, is 409 with the reason.
    #[oai(
        path = "/admin/orders/:order_id/retry",
        method = "post",
        tag = "Tag::Sagas"
    )]
    async fn retry_saga(
        &self,
        _admin: AdminAuth,
        order_id: Path<String>,
        correlation: Data<&CorrelationId>,
    ) -> Result<OrderResponse, Refused<(Unauthorized, NotFound, Conflict)>> {
        let order = self.store.retry(&order_id, &correlation.0.0).await?;
        tracing::info!(order_id = %order.id, attempt = order.attempt, "saga retried by an operator");
        Ok(OrderResponse::Ok(Json(order.into())))
    }

    /// Advance an order: CONFIRMED→SHIPPED→DELIVERED (admin).
    #[oai(path = "/api/orders/:order_id/status", method = "put")]
    async fn update_status(
        &self,
        _admin: AdminAuth,
        order_id: Path<String>,
        body: ValidJson<UpdateStatusRequest>,
        correlation: Data<&CorrelationId>,
    ) -> Result<
        OrderResponse,
        Refused<(
            BadRequest,
            Unauthorized,
            NotFound,
            Conflict,
            UnsupportedMediaType,
        )>,
    > {
        let order = self
            .store
            .set_status(
                &order_id,
                body.0.status.into(),
                body.0.expected_version,
                &correlation.0.0,
            )
            .await?;
        Ok(OrderResponse::Ok(Json(order.into())))
    }

    /// The caller's orders, newest first: a customer lists only its own
    /// (another customer id is 403).
    #[oai(path = "/api/customers/:customer_id/orders", method = "get")]
    async fn customer_orders(
        &self,
        auth: CustomerAuth,
        customer_id: Path<String>,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> Result<OrderPageResponse, Refused<(BadRequest, Unauthorized, Forbidden)>> {
        if !auth.0.acts_for(&customer_id) {
            return Err(ApiError::forbidden("a customer lists only its own orders").into());
        }
        let page = page::requested(limit.0, cursor.0);
        let found = self.store.orders_of_customer(&customer_id, &page).await?;
        Ok(OrderPageResponse::Ok(Json(Page::of(found))))
    }

    /// Orders in one status, newest first (admin).
    #[oai(path = "/api/orders/status/:status", method = "get")]
    async fn orders_by_status(
        &self,
        _admin: AdminAuth,
        status: Path<ApiOrderStatus>,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> Result<OrderPageResponse, Refused<(BadRequest, Unauthorized)>> {
        let page = page::requested(limit.0, cursor.0);
        let found = self.store.orders_in_status(status.0.into(), &page).await?;
        Ok(OrderPageResponse::Ok(Json(Page::of(found))))
    }

    /// Sagas that have not ended, oldest first (admin): orders still
    /// PENDING, and orders FAILED by the saga deadline whose held stock the
    /// inventory has not yet confirmed released, each with its age and the
    /// step it waits for.
    #[oai(path = "/admin/sagas/stuck", method = "get", tag = "Tag::Sagas")]
    async fn stuck_sagas(
        &self,
        _admin: AdminAuth,
        /// Only sagas that began at least this many seconds ago (0 to
        /// 315,360,000, ten years; default 60).
        #[oai(
            name = "olderThanSeconds",
            default = "stuck_after_seconds",
            validator(minimum(value = "0"), maximum(value = "315360000"))
        )]
        older_than_seconds: Query<u64>,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> Result<StuckSagaPageResponse, Refused<(BadRequest, Unauthorized)>> {
        let page = page::requested(limit.0, cursor.0);
        let older_than = std::time::Duration::from_secs(older_than_seconds.0);
        let (orders, next_cursor) = self.store.unfinished_page(older_than, &page).await?;
        let now = Utc::now();
        Ok(StuckSagaPageResponse::Ok(Json(Page {
            // The store lists only sagas that have not ended: none is dropped.
            items: orders
                .into_iter()
                .filter_map(|order| StuckSagaView::of(order, now))
                .collect(),
            next_cursor,
        })))
    }
}
