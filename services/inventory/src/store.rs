//! Products and reservations in MongoDB. Each stock change commits with the
//! events it causes; each handled event commits with its inbox record.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Weak},
};

use chrono::Utc;
use futures::TryStreamExt;
use mongodb::{
    ClientSession, Collection, Database, IndexModel,
    bson::{self, Document, doc},
    error::Error as DbError,
    options::IndexOptions,
};
use shared::store::{PageRequest, find_page};
use shared::{
    events::{
        Envelope, InventoryLow, InventoryReleased, InventoryReservationFailed, InventoryReserved,
        InventoryUpdated, OrderCancelled, OrderCreated, OrderLine, RawEnvelope,
    },
    store::{
        GroupCommit, Outbox, OutboxRecord, Transaction, Written, is_duplicate_key,
        one_by_one_on_failure, record_all_in_inbox, record_in_inbox, stage_records, update_each,
    },
};

use crate::{
    domain::{self, Decision, LowStock, Product, Reservation, ReservationStatus},
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
    outbox: Outbox,
    locks: ProductLocks,
    /// `order.created` events waiting for the next batch.
    reservations_in: GroupCommit<(RawEnvelope, OrderCreated), Written>,
}

/// Orders decided in one transaction at most: a prefetch's worth.
const RESERVE_BATCH: usize = 64;

impl InventoryStore {
    pub fn new(db: Database, outbox: Outbox) -> Arc<Self> {
        Arc::new_cyclic(|store: &Weak<Self>| InventoryStore {
            products: db.collection("products"),
            reservations: db.collection("reservations"),
            db,
            outbox,
            locks: ProductLocks::new(1024),
            reservations_in: GroupCommit::spawn_in(
                store,
                RESERVE_BATCH,
                // A batch that fails as a whole (an event handled before, a
                // stock guard that moved) goes again one by one.
                |store, batch| async move {
                    one_by_one_on_failure(&batch, |some| store.reserve_together(some)).await
                },
            ),
        })
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

    /// The products in `category`, newest first, and the next page's cursor.
    pub async fn products_in_category(
        &self,
        category: &str,
        page: &PageRequest,
    ) -> Result<(Vec<Product>, Option<String>), Error> {
        let filter = doc! { "category": category };
        Ok(find_page(&self.products, filter, page, |p| p.id.clone()).await?)
    }

    /// The products at or below their low-stock threshold (alerted), newest
    /// first, and the next page's cursor.
    pub async fn low_stock_products(
        &self,
        page: &PageRequest,
    ) -> Result<(Vec<Product>, Option<String>), Error> {
        let filter = doc! { "lowStockAlerted": true };
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
        let events = self.stock_events(&product, alert, correlation_id, None);
        let mut tx = Transaction::begin(&self.db).await?;
        loop {
            let session = tx.attempt().await?;
            let attempt = async {
                self.products
                    .insert_one(&product)
                    .session(&mut *session)
                    .await?;
                stage_records(&self.db, session, &events).await
            }
            .await;
            match tx.finish(attempt).await {
                Ok(Some(())) => break,
                Ok(None) => continue,
                Err(e) if is_duplicate_key(&e) => return Err(Error::DuplicateSku(product.sku)),
                Err(e) => return Err(e.into()),
            }
        }
        self.outbox.committed(events);
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
                let events = self.stock_events(&updated, transition == LowStock::Alert, correlation_id, None);
                stage_records(&self.db, session, &events).await?;
                Ok(Some((updated, events)))
            }
            .await;
            if let Some(product) = tx.finish(attempt).await? {
                break product;
            }
        };
        let (product, events) = product.ok_or_else(|| Error::NotFound(product_id.to_string()))?;
        self.outbox.committed(events);
        Ok(product)
    }

    /// `order.created`: holds every line or none, once per order. Orders
    /// arriving together are decided together, in one transaction (see
    /// [`GroupCommit`]).
    pub async fn reserve(&self, event: RawEnvelope, order: OrderCreated) -> Result<(), DbError> {
        self.reservations_in.write((event, order)).await
    }

    async fn reserve_together(&self, batch: &[(RawEnvelope, OrderCreated)]) -> Written {
        let product_ids: BTreeSet<&str> = batch
            .iter()
            .flat_map(|(_, order)| order.items.iter().map(|l| l.product_id.as_str()))
            .collect();
        let _held = self.locks.lock(&product_ids).await;
        let mut tx = Transaction::begin(&self.db).await?;
        loop {
            let session = tx.attempt().await?;
            let attempt = self.reserve_attempt(session, batch, &product_ids).await;
            if let Some(events) = tx.finish(attempt).await? {
                self.outbox.committed(events);
                return Ok(());
            }
        }
    }

    /// A fixed number of round trips however many orders: inbox, the
    /// decided orders, the products, one update command, the reservations
    /// and the events. Returns the events staged.
    async fn reserve_attempt(
        &self,
        session: &mut ClientSession,
        batch: &[(RawEnvelope, OrderCreated)],
        product_ids: &BTreeSet<&str>,
    ) -> Result<Vec<OutboxRecord>, DbError> {
        record_all_in_inbox(&self.db, session, batch.iter().map(|(event, _)| event)).await?;
        let order_ids: Vec<&str> = batch.iter().map(|(_, o)| o.order_id.as_str()).collect();
        // Already decided, or cancelled before it arrived: no effect.
        let decided: HashSet<String> = self
            .reservations
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$in": &order_ids } })
            .projection(doc! { "_id": 1 })
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .try_filter_map(|d| async move { Ok(d.get_str("_id").ok().map(str::to_string)) })
            .try_collect()
            .await?;
        let open: Vec<&(RawEnvelope, OrderCreated)> = batch
            .iter()
            .filter(|(_, order)| !decided.contains(&order.order_id))
            .collect();
        if open.is_empty() {
            return Ok(Vec::new());
        }
        let mut products: Vec<Product> = self
            .products
            .find(doc! { "_id": { "$in": product_ids.iter().collect::<Vec<_>>() } })
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .try_collect()
            .await?;
        let before: HashMap<String, (i64, i64)> = products
            .iter()
            .map(|p| (p.id.clone(), (p.version, p.stock)))
            .collect();
        let lines: Vec<&[OrderLine]> = open.iter().map(|(_, o)| o.items.as_slice()).collect();
        let decisions = domain::decide_reservations(&lines, &mut products);

        let now = Utc::now();
        let mut reservations = Vec::with_capacity(open.len());
        let mut events = Vec::with_capacity(open.len());
        for ((event, order), decision) in open.into_iter().zip(decisions) {
            let (causation, correlation) = (Some(event.event_id), &event.correlation_id);
            let (status, lines) = match decision {
                Decision::Reject(short) => {
                    events.push(self.outbox.record(&Envelope::new(
                        SOURCE,
                        correlation,
                        causation,
                        InventoryReservationFailed {
                            order_id: order.order_id.clone(),
                            reason: domain::shortage_reason(&short).into(),
                            short_lines: short,
                        },
                    )));
                    (ReservationStatus::Rejected, Vec::new())
                }
                Decision::Reserve { lines, alerts } => {
                    for product in &alerts {
                        events.extend(self.stock_events(product, true, correlation, causation));
                    }
                    events.push(self.outbox.record(&Envelope::new(
                        SOURCE,
                        correlation,
                        causation,
                        InventoryReserved {
                            order_id: order.order_id.clone(),
                            lines: lines.clone(),
                        },
                    )));
                    (ReservationStatus::Reserved, lines)
                }
            };
            reservations.push(Reservation {
                order_id: order.order_id.clone(),
                status,
                lines,
                updated_at: now,
            });
        }

        // One guarded update per product whose stock moved. The version
        // guard fails if another instance changed it since the read, and the
        // stock guard makes negative stock impossible even if isolation were
        // weaker than we assume.
        let updates: Vec<(Document, Document)> = products
            .iter()
            .filter_map(|p| {
                let (version, stock) = before[&p.id];
                let taken = stock - p.stock;
                (taken != 0).then(|| {
                    (
                        doc! { "_id": &p.id, "version": version, "stock": { "$gte": taken } },
                        doc! { "$inc": { "stock": -taken, "reserved": taken, "version": 1 },
                        "$set": { "lowStockAlerted": p.low_stock_alerted,
                                  "updatedAt": bson::DateTime::from_chrono(now) } },
                    )
                })
            })
            .collect();
        let expected = updates.len() as u64;
        if update_each(&self.db, session, self.products.name(), updates).await? != expected {
            return Err(DbError::custom(StockMoved));
        }
        self.reservations
            .insert_many(&reservations)
            .session(&mut *session)
            .await?;
        stage_records(&self.db, session, &events).await?;
        Ok(events)
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
            if let Some(events) = tx.finish(attempt).await? {
                self.outbox.committed(events);
                return Ok(());
            }
        }
    }

    async fn release_attempt(
        &self,
        session: &mut ClientSession,
        event: &RawEnvelope,
        cancelled: &OrderCancelled,
    ) -> Result<Vec<OutboxRecord>, DbError> {
        record_in_inbox(&self.db, session, event).await?;
        let now = Utc::now();
        let existing = self
            .reservations
            .find_one(doc! { "_id": &cancelled.order_id })
            .session(&mut *session)
            .await?;
        let reservation = match existing {
            Some(r) if r.status == ReservationStatus::Reserved => r,
            Some(_) => return Ok(Vec::new()),
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
                return Ok(Vec::new());
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
        let events = vec![self.outbox.record(&released)];
        stage_records(&self.db, session, &events).await?;
        Ok(events)
    }

    /// `inventory.updated`, and `inventory.low` when the stock just crossed.
    fn stock_events(
        &self,
        product: &Product,
        alert: bool,
        correlation_id: &str,
        causation: Option<uuid::Uuid>,
    ) -> Vec<OutboxRecord> {
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
        let mut events = vec![self.outbox.record(&updated)];
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
            events.push(self.outbox.record(&low));
        }
        events
    }
}
