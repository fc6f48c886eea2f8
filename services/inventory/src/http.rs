//! The inventory API.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi, Tags,
    param::{Path, Query},
    payload::Json,
};
use shared::{
    http::{
        AdminAuth, CorrelationId, Cursor, FieldError, Page, PageSize, Refused, ValidJson,
        error::{BadRequest, Conflict, NotFound, Unauthorized, UnsupportedMediaType},
        page,
    },
    money::major_units,
};

use crate::{
    domain::{self, Product},
    error::Error,
    store::InventoryStore,
};

#[derive(Tags)]
enum Tag {
    /// Products and stock.
    Products,
}

pub struct InventoryApi {
    pub store: Arc<InventoryStore>,
}

/// A new product.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProductRequest {
    /// Stock keeping unit, unique (1 to 64 characters).
    #[oai(validator(min_length = 1, max_length = 64))]
    pub sku: String,
    /// What the shop calls it (1 to 200 characters).
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    /// Longer text for the shop page (at most 2000 characters).
    #[oai(nullable, validator(max_length = 2000))]
    pub description: Option<String>,
    /// The category it is listed under (1 to 64 characters).
    #[oai(validator(min_length = 1, max_length = 64))]
    pub category: String,
    /// Unit price in major units: 0 or more, at most 2 decimals.
    #[oai(validator(
        minimum(value = "0"),
        maximum(value = "100000000000"),
        multiple_of = 0.01
    ))]
    pub price: f64,
    /// Units available to sell (0 to 1,000,000,000).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub stock: i64,
    /// An alert goes to the admin when stock falls to or below this
    /// (0 to 1,000,000,000; default 5).
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "1000000000"))
    )]
    pub low_stock_threshold: Option<i64>,
}

/// A stock count.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetStockRequest {
    /// The new available stock (0 to 1,000,000,000).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub stock: i64,
}

/// A product.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ProductView {
    /// The product's id (UUIDv7); orders name products by it.
    pub product_id: String,
    /// Stock keeping unit, unique.
    pub sku: String,
    /// What the shop calls it.
    pub name: String,
    /// Longer text for the shop page.
    #[oai(nullable)]
    pub description: Option<String>,
    /// The category it is listed under.
    pub category: String,
    /// Unit price in major units.
    pub price: f64,
    /// Available to sell.
    pub stock: i64,
    /// Held by confirmed orders.
    pub reserved: i64,
    /// An alert goes to the admin when stock falls to or below this.
    pub low_stock_threshold: i64,
    /// Bumped by every change.
    pub version: i64,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Product> for ProductView {
    fn from(p: Product) -> Self {
        ProductView {
            product_id: p.id,
            sku: p.sku,
            name: p.name,
            description: p.description,
            category: p.category,
            price: major_units(p.price_cents),
            stock: p.stock,
            reserved: p.reserved,
            low_stock_threshold: p.low_stock_threshold,
            version: p.version,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(ApiResponse)]
pub enum CreatedResponse {
    /// Added.
    #[oai(status = 201)]
    Created(
        Json<ProductView>,
        /// Where the product is.
        #[oai(header = "Location")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum ProductResponse {
    /// The product as it is now.
    #[oai(status = 200)]
    Ok(Json<ProductView>),
}

#[derive(ApiResponse)]
pub enum PageResponse {
    /// A page of products, newest first.
    #[oai(status = 200)]
    Ok(Json<Page<ProductView>>),
}

#[OpenApi(tag = "Tag::Products")]
impl InventoryApi {
    /// Add a product (admin). A duplicate sku gets 409.
    #[oai(path = "/api/products", method = "post")]
    async fn create_product(
        &self,
        _admin: AdminAuth,
        body: ValidJson<CreateProductRequest>,
        correlation: Data<&CorrelationId>,
    ) -> Result<CreatedResponse, Refused<(BadRequest, Unauthorized, Conflict, UnsupportedMediaType)>>
    {
        let request = body.0;
        let price_cents = domain::price_to_cents(request.price).map_err(|message| {
            Error::Invalid(vec![FieldError {
                field: "price".into(),
                message: message.into(),
            }])
        })?;
        let now = Utc::now();
        let product = Product {
            id: uuid::Uuid::now_v7().to_string(),
            sku: request.sku,
            name: request.name,
            description: request.description,
            category: request.category,
            price_cents,
            stock: request.stock,
            reserved: 0,
            low_stock_threshold: request.low_stock_threshold.unwrap_or(5),
            low_stock_alerted: false,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let product = self.store.create(product, &correlation.0.0).await?;
        let location = format!("/api/products/{}", product.id);
        Ok(CreatedResponse::Created(Json(product.into()), location))
    }

    /// One product, with its available and reserved stock.
    #[oai(path = "/api/products/:product_id", method = "get")]
    async fn get_product(
        &self,
        product_id: Path<String>,
    ) -> Result<ProductResponse, Refused<(NotFound,)>> {
        let product = self
            .store
            .get(&product_id)
            .await?
            .ok_or_else(|| Error::NotFound(product_id.0.clone()))?;
        Ok(ProductResponse::Ok(Json(product.into())))
    }

    /// Set the available stock (admin).
    #[oai(path = "/api/products/:product_id/stock", method = "put")]
    async fn set_stock(
        &self,
        _admin: AdminAuth,
        product_id: Path<String>,
        body: ValidJson<SetStockRequest>,
        correlation: Data<&CorrelationId>,
    ) -> Result<ProductResponse, Refused<(BadRequest, Unauthorized, NotFound, UnsupportedMediaType)>>
    {
        let product = self
            .store
            .set_stock(&product_id, body.0.stock, &correlation.0.0)
            .await?;
        Ok(ProductResponse::Ok(Json(product.into())))
    }

    /// Products in a category, newest first.
    #[oai(path = "/api/products/category/:category", method = "get")]
    async fn by_category(
        &self,
        category: Path<String>,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> Result<PageResponse, Refused<(BadRequest,)>> {
        let page = page::requested(limit.0, cursor.0);
        let found = self.store.products_in_category(&category, &page).await?;
        Ok(PageResponse::Ok(Json(Page::of(found))))
    }

    /// Products at or below their low-stock threshold (admin).
    #[oai(path = "/api/products/low-stock", method = "get")]
    async fn low_stock(
        &self,
        _admin: AdminAuth,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> Result<PageResponse, Refused<(BadRequest, Unauthorized)>> {
        let page = page::requested(limit.0, cursor.0);
        let found = self.store.low_stock_products(&page).await?;
        Ok(PageResponse::Ok(Json(Page::of(found))))
    }
}
