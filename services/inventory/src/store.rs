//! Products and reservations in MongoDB. Each stock change commits with the
//! events it causes; each handled event commits with its inbox record.

use std::sync::Arc;

use chrono::Utc;
use futures::TryStreamExt;
use mongodb::{
    ClientSession, Collection, Database, IndexModel,
    bson::{self, Document, doc},
    error::Error as DbError,
    options::IndexOptions,
};
use shared::{
    events::{
        Envelope, InventoryLow, InventoryReleased, InventoryReservationFailed, InventoryReserved,
        InventoryUpdated, OrderCancelled, OrderCreated, OrderLine, RawEnvelope,
    },
    http::{PageRequest, find_page},
    store::{Transaction, is_duplicate_key, record_in_inbox, stage_event},
};
use tokio::sync::Notify;

use crate::{
    domain::{self, LowStock, Product, Reservation, ReservationStatus},
    error::Error,
    locks::ProductLocks,
};

const SOURCE: &str = "inventory-service";

/// Marker: a conditional stock update matched nothing (a concurrent change).
#[derive(Debug, Clone, Copy)]
pub struct StockMoved;

pub struct InventoryStore {
    db: Database,
    products: Collection<Product>,
    reservations: Collection<Reservation>,
    wake: Arc<Notify>,
    locks: ProductLocks,
}

impl InventoryStore {
    pub fn new(db: Database, wake: Arc<Notify>) -> Self {
        InventoryStore {
            products: db.collection("products"),
            reservations: db.collection("reservations"),
            db,
            wake,
            locks: ProductLocks::new(1024),
        }
    }

    pub async fn ensure_indexes(&self) -> Result<(), Error> {
        self.products
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "sku": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await?;
        self.products
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "category": 1, "_id": -1 })
                    .build(),
            )
            .await?;
        self.products
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "lowStockAlerted": 1, "_id": -1 })
                    .build(),
            )
            .await?;
        Ok(())
    }

    pub async fn get(&self, product_id: &str) -> Result<Option<Product>, Error> {
        Ok(self.products.find_one(doc! { "_id": product_id }).await?)
    }

    pub async fn page(
        &self,
        filter: Document,
        page: &PageRequest,
    ) -> Result<(Vec<Product>, Option<String>), Error> {
        Ok(find_page(&self.products, filter, page, |p| p.id.clone()).await?)
    }

    /// Adds a product (sku unique). A product created at or below its
    /// threshold alerts at once.
    pub async fn create(
        &self,
        mut product: Product,
        correlation_id: &str,
    ) -> Result<Product, Error> {
        let alert = domain::low_stock_transition(product.stock, product.low_stock_threshold, false)
            == LowStock::Alert;
        product.low_stock_alerted = alert;
        let mut tx = Transaction::begin(&self.db).await?;
        loop {
            let session = tx.attempt().await?;
            let attempt = async {
                self.products
                    .insert_one(&product)
                    .session(&mut *session)
                    .await?;
                self.stage_stock_events(session, &product, alert, correlation_id, None)
                    .await
            }
            .await;
            match tx.finish(attempt).await {
                Ok(Some(())) => break,
                Ok(None) => continue,
                Err(e) if is_duplicate_key(&e) => return Err(Error::DuplicateSku(product.sku)),
                Err(e) => return Err(e.into()),
            }
        }
        self.wake.notify_one();
        Ok(product)
    }

    /// Sets the available stock (an admin count or restock).
    pub async fn set_stock(
        &self,
        product_id: &str,
        stock: i64,
        correlation_id: &str,
    ) -> Result<Product, Error> {
        let _held = self.locks.lock([product_id]).await;
        let mut tx = Transaction::begin(&self.db).await?;
        let product = loop {
            let session = tx.attempt().await?;
            let attempt = async {
                let Some(product) = self
                    .products
                    .find_one(doc! { "_id": product_id })
                    .session(&mut *session)
                    .await?
                else {
                    return Ok(None);
                };
                let transition = domain::low_stock_transition(stock, product.low_stock_threshold, product.low_stock_alerted);
                let alerted = match transition {
                    LowStock::Alert => true,
                    LowStock::Rearm => false,
                    LowStock::Unchanged => product.low_stock_alerted,
                };
                let now = Utc::now();
                self.products
                    .update_one(
                        doc! { "_id": product_id },
                        doc! { "$set": { "stock": stock, "lowStockAlerted": alerted, "updatedAt": bson::DateTime::from_chrono(now) },
                               "$inc": { "version": 1 } },
                    )
                    .session(&mut *session)
                    .await?;
                let updated = Product { stock, low_stock_alerted: alerted, version: product.version + 1, updated_at: now, ..product };
                self.stage_stock_events(session, &updated, transition == LowStock::Alert, correlation_id, None)
                    .await?;
                Ok(Some(updated))
            }
            .await;
            if let Some(product) = tx.finish(attempt).await? {
                break product;
            }
        };
        let product = product.ok_or_else(|| Error::NotFound(product_id.to_string()))?;
        self.wake.notify_one();
        Ok(product)
    }

    /// `inventory.updated`, and `inventory.low` when the stock just crossed.
    async fn stage_stock_events(
        &self,
        session: &mut ClientSession,
        product: &Product,
        alert: bool,
        correlation_id: &str,
        causation: Option<uuid::Uuid>,
    ) -> Result<(), DbError> {
        let updated = Envelope::new(
            SOURCE,
            correlation_id,
            causation,
            InventoryUpdated {
                product_id: product.id.clone(),
                stock: product.stock,
                reserved: product.reserved,
            },
        );
        stage_event(&self.db, session, &updated).await?;
        if alert {
            let low = Envelope::new(
                SOURCE,
                correlation_id,
                causation,
                InventoryLow {
                    product_id: product.id.clone(),
                    sku: product.sku.clone(),
                    name: product.name.clone(),
                    stock: product.stock,
                    low_stock_threshold: product.low_stock_threshold,
                },
            );
            stage_event(&self.db, session, &low).await?;
        }
        Ok(())
    }

    /// `order.created`: holds every line or none, once per order.
    pub async fn reserve(&self, event: &RawEnvelope, order: &OrderCreated) -> Result<(), DbError> {
        let _held = self
            .locks
            .lock(order.items.iter().map(|l| &l.product_id))
            .await;
        let mut tx = Transaction::begin(&self.db).await?;
        loop {
            let session = tx.attempt().await?;
            let attempt = self.reserve_attempt(session, event, order).await;
            if let Some(()) = tx.finish(attempt).await? {
                self.wake.notify_one();
                return Ok(());
            }
        }
    }

    async fn reserve_attempt(
        &self,
        session: &mut ClientSession,
        event: &RawEnvelope,
        order: &OrderCreated,
    ) -> Result<(), DbError> {
        record_in_inbox(&self.db, session, event).await?;
        if self
            .reservations
            .find_one(doc! { "_id": &order.order_id })
            .session(&mut *session)
            .await?
            .is_some()
        {
            // Already decided, or cancelled before it arrived: no effect.
            return Ok(());
        }
        // Sorted, so concurrent orders touch products in the same order.
        let mut lines: Vec<OrderLine> = order.items.clone();
        lines.sort_by(|a, b| a.product_id.cmp(&b.product_id));
        let ids: Vec<&str> = lines.iter().map(|l| l.product_id.as_str()).collect();
        let products: Vec<Product> = self
            .products
            .find(doc! { "_id": { "$in": &ids } })
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .try_collect()
            .await?;
        let now = Utc::now();
        match domain::plan_reservation(&lines, &products) {
            Err(short) => {
                let reservation = Reservation {
                    order_id: order.order_id.clone(),
                    status: ReservationStatus::Rejected,
                    lines: Vec::new(),
                    updated_at: now,
                };
                self.reservations
                    .insert_one(&reservation)
                    .session(&mut *session)
                    .await?;
                let failed = Envelope::new(
                    SOURCE,
                    &event.correlation_id,
                    Some(event.event_id),
                    InventoryReservationFailed {
                        order_id: order.order_id.clone(),
                        reason: domain::shortage_reason(&short).into(),
                        short_lines: short,
                    },
                );
                stage_event(&self.db, session, &failed).await
            }
            Ok(planned) => {
                for line in &planned {
                    let product = products
                        .iter()
                        .find(|p| p.id == line.product_id)
                        .expect("planned from these");
                    let quantity = i64::from(line.quantity);
                    let stock = product.stock - quantity;
                    let transition = domain::low_stock_transition(
                        stock,
                        product.low_stock_threshold,
                        product.low_stock_alerted,
                    );
                    let held = self
                        .products
                        .update_one(
                            // The stock guard makes negative stock impossible even
                            // if isolation were weaker than we assume.
                            doc! { "_id": &product.id, "stock": { "$gte": quantity }, "version": product.version },
                            doc! { "$inc": { "stock": -quantity, "reserved": quantity, "version": 1 },
                                   "$set": { "lowStockAlerted": product.low_stock_alerted || transition == LowStock::Alert,
                                             "updatedAt": bson::DateTime::from_chrono(now) } },
                        )
                        .session(&mut *session)
                        .await?;
                    if held.matched_count == 0 {
                        return Err(DbError::custom(StockMoved));
                    }
                    if transition == LowStock::Alert {
                        let after = Product {
                            stock,
                            reserved: product.reserved + quantity,
                            ..product.clone()
                        };
                        self.stage_stock_events(
                            session,
                            &after,
                            true,
                            &event.correlation_id,
                            Some(event.event_id),
                        )
                        .await?;
                    }
                }
                let reservation = Reservation {
                    order_id: order.order_id.clone(),
                    status: ReservationStatus::Reserved,
                    lines: planned.clone(),
                    updated_at: now,
                };
                self.reservations
                    .insert_one(&reservation)
                    .session(&mut *session)
                    .await?;
                let reserved = Envelope::new(
                    SOURCE,
                    &event.correlation_id,
                    Some(event.event_id),
                    InventoryReserved {
                        order_id: order.order_id.clone(),
                        lines: planned,
                    },
                );
                stage_event(&self.db, session, &reserved).await
            }
        }
    }

    /// `order.cancelled`: gives back exactly what was held, once. Not under
    /// the product locks (the lines are only known inside the transaction):
    /// cancels are rare, and a conflict with a reservation is retried in place.
    pub async fn release(
        &self,
        event: &RawEnvelope,
        cancelled: &OrderCancelled,
    ) -> Result<(), DbError> {
        let mut tx = Transaction::begin(&self.db).await?;
        loop {
            let session = tx.attempt().await?;
            let attempt = self.release_attempt(session, event, cancelled).await;
            if let Some(()) = tx.finish(attempt).await? {
                self.wake.notify_one();
                return Ok(());
            }
        }
    }

    async fn release_attempt(
        &self,
        session: &mut ClientSession,
        event: &RawEnvelope,
        cancelled: &OrderCancelled,
    ) -> Result<(), DbError> {
        record_in_inbox(&self.db, session, event).await?;
        let now = Utc::now();
        let existing = self
            .reservations
            .find_one(doc! { "_id": &cancelled.order_id })
            .session(&mut *session)
            .await?;
        let reservation = match existing {
            Some(r) if r.status == ReservationStatus::Reserved => r,
            Some(_) => return Ok(()),
            None => {
                // The cancel overtook the order: make sure nothing is held later.
                let tombstone = Reservation {
                    order_id: cancelled.order_id.clone(),
                    status: ReservationStatus::CancelledBeforeReservation,
                    lines: Vec::new(),
                    updated_at: now,
                };
                self.reservations
                    .insert_one(&tombstone)
                    .session(&mut *session)
                    .await?;
                return Ok(());
            }
        };
        for line in &reservation.lines {
            let quantity = i64::from(line.quantity);
            let Some(product) = self
                .products
                .find_one(doc! { "_id": &line.product_id })
                .session(&mut *session)
                .await?
            else {
                continue;
            };
            let stock = product.stock + quantity;
            let alerted = match domain::low_stock_transition(
                stock,
                product.low_stock_threshold,
                product.low_stock_alerted,
            ) {
                LowStock::Rearm => false,
                _ => product.low_stock_alerted,
            };
            self.products
                .update_one(
                    doc! { "_id": &product.id },
                    doc! { "$inc": { "stock": quantity, "reserved": -quantity, "version": 1 },
                           "$set": { "lowStockAlerted": alerted, "updatedAt": bson::DateTime::from_chrono(now) } },
                )
                .session(&mut *session)
                .await?;
        }
        self.reservations
            .update_one(
                doc! { "_id": &reservation.order_id },
                doc! { "$set": { "status": bson::to_bson(&ReservationStatus::Released)?, "updatedAt": bson::DateTime::from_chrono(now) } },
            )
            .session(&mut *session)
            .await?;
        let released = Envelope::new(
            SOURCE,
            &event.correlation_id,
            Some(event.event_id),
            InventoryReleased {
                order_id: reservation.order_id.clone(),
                lines: reservation
                    .lines
                    .iter()
                    .map(|l| OrderLine {
                        product_id: l.product_id.clone(),
                        quantity: l.quantity,
                    })
                    .collect(),
            },
        );
        stage_event(&self.db, session, &released).await
    }
}
