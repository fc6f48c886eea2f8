//! Products and reservations in MongoDB: named reads, and writes through the
//! shared unit of work, so each stock change commits with the events it
//! causes and each handled event with its inbox record (or, for
//! `order.created`, the reservation that is its own).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use futures::{TryStreamExt, future::BoxFuture};
use mongodb::{
    Collection, IndexModel,
    bson::{self, doc},
    options::IndexOptions,
};
use shared::{
    TaskTracker,
    events::{Cause, OrderCreated, OrderLine, RawEnvelope, first_attempt},
    history::{History, HistoryItem},
    http::history::HistorySource,
    store::{
        Batcher, OnDuplicate, PageRequest, Store, StoreError, UnitOfWork, WriteBatch, find_page,
        retry_on_conflict,
    },
};

use crate::{
    domain::{self, Prior, Product, ReleaseTarget, Reservation, ReservationStatus, SOURCE},
    error::Error,
    locks::ProductLocks,
};

const PRODUCTS: &str = "products";
const RESERVATIONS: &str = "reservations";

/// Orders decided in one transaction at most: a prefetch's worth.
const RESERVE_BATCH: usize = 64;

/// The collections, and the locks that queue stock changes per product.
#[derive(Clone)]
struct Inventory {
    store: Store,
    products: Collection<Product>,
    reservations: Collection<Reservation>,
    locks: Arc<ProductLocks>,
}

impl Inventory {
    async fn products(&self, ids: &[&str]) -> Result<Vec<Product>, StoreError> {
        Ok(self
            .products
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?)
    }

    /// Guarded writes for every product whose version moved since `read`.
    fn write_changed(
        unit: &mut UnitOfWork,
        read: &HashMap<String, i64>,
        products: &[Product],
    ) -> Result<(), StoreError> {
        for product in products {
            let read_version = read[&product.id];
            if product.version != read_version {
                unit.replace_versioned(PRODUCTS, "product", &product.id, read_version, product)?;
            }
        }
        Ok(())
    }
}

pub struct InventoryStore {
    inventory: Inventory,
    /// `order.created` events waiting for the next batch.
    reservations_in: Batcher<(RawEnvelope, OrderCreated)>,
}

impl InventoryStore {
    /// The store, its batch writer running on `tasks`.
    pub fn new(store: Store, tasks: &TaskTracker) -> Self {
        let inventory = Inventory {
            products: store.collection(PRODUCTS),
            reservations: store.collection(RESERVATIONS),
            locks: Arc::new(ProductLocks::new(1024)),
            store,
        };
        InventoryStore {
            reservations_in: Batcher::start(tasks, RESERVE_BATCH, ReserveStock(inventory.clone())),
            inventory,
        }
    }

    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let products = &self.inventory.products;
        products
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "sku": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await?;
        for keys in [
            doc! { "category": 1, "_id": -1 },
            doc! { "lowStockAlerted": 1, "_id": -1 },
        ] {
            products
                .create_index(IndexModel::builder().keys(keys).build())
                .await?;
        }
        Ok(())
    }

    /// The lines of an order's history kept in its reservation
    /// ([`Reservation::history`]).
    pub async fn history_lines(&self, order_id: &str) -> Result<Vec<HistoryItem>, StoreError> {
        let found = self
            .inventory
            .reservations
            .clone_with_type::<StoredRun>()
            .find_one(doc! { "_id": order_id })
            .projection(doc! { "_id": 1, "attempt": 1, "status": 1, "history": 1 })
            .await?;
        Ok(found.map(|run| run.history).unwrap_or_default())
    }

    pub async fn get(&self, product_id: &str) -> Result<Option<Product>, StoreError> {
        Ok(self
            .inventory
            .products
            .find_one(doc! { "_id": product_id })
            .await?)
    }

    /// The products in `category`, newest first, and the next page's cursor.
    pub async fn products_in_category(
        &self,
        category: &str,
        page: &PageRequest,
    ) -> Result<(Vec<Product>, Option<String>), StoreError> {
        let filter = doc! { "category": category };
        Ok(find_page(&self.inventory.products, filter, page, |p| p.id.clone()).await?)
    }

    /// The products at or below their low-stock threshold (alerted), newest
    /// first, and the next page's cursor.
    pub async fn low_stock_products(
        &self,
        page: &PageRequest,
    ) -> Result<(Vec<Product>, Option<String>), StoreError> {
        let filter = doc! { "lowStockAlerted": true };
        Ok(find_page(&self.inventory.products, filter, page, |p| p.id.clone()).await?)
    }

    /// Adds a product (sku unique).
    pub async fn create(&self, product: Product, correlation_id: &str) -> Result<Product, Error> {
        let change = domain::add_product(product, &Cause::request(SOURCE, correlation_id));
        let mut unit = UnitOfWork::new();
        unit.insert(PRODUCTS, [&change.product], OnDuplicate::Taken("sku"))?
            .emit(change.events);
        match self.inventory.store.commit(unit).await {
            Ok(()) => Ok(change.product),
            Err(StoreError::Taken(_)) => Err(Error::DuplicateSku(change.product.sku)),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the available stock (an admin count or restock).
    pub async fn set_stock(
        &self,
        product_id: &str,
        stock: i64,
        correlation_id: &str,
    ) -> Result<Product, Error> {
        let cause = &Cause::request(SOURCE, correlation_id);
        let _held = self.inventory.locks.lock([product_id]).await;
        retry_on_conflict(move || async move {
            let product = self
                .get(product_id)
                .await?
                .ok_or_else(|| Error::NotFound(product_id.to_string()))?;
            let change = domain::count_stock(&product, stock, cause, Utc::now());
            let mut unit = UnitOfWork::new();
            unit.replace_versioned(
                PRODUCTS,
                "product",
                product_id,
                product.version,
                &change.product,
            )?
            .emit(change.events);
            self.inventory.store.commit(unit).await?;
            Ok(change.product)
        })
        .await
    }

    /// `order.created`: holds every line or none, once per order. Orders
    /// arriving together are decided together, in one transaction.
    pub async fn reserve(&self, event: RawEnvelope, order: OrderCreated) -> Result<(), StoreError> {
        self.reservations_in.write((event, order)).await
    }

    /// `order.cancelled` or `order.failed`: gives back exactly what run
    /// `attempt` of the order held, once, and says so with
    /// `inventory.released` (its lines empty when nothing was held).
    pub async fn release(
        &self,
        event: &RawEnvelope,
        order_id: &str,
        attempt: u32,
    ) -> Result<(), StoreError> {
        let inventory = &self.inventory;
        let cause = &Cause::event(SOURCE, event);
        retry_on_conflict(move || async move {
            let now = Utc::now();
            let mut unit = UnitOfWork::new();
            unit.handled(event);
            let found = inventory
                .reservations
                .find_one(doc! { "_id": order_id })
                .await?;
            let reservation = match domain::release_target(found, attempt)
                .map_err(StoreError::Rule)?
            {
                ReleaseTarget::Held(reservation) => reservation,
                ReleaseTarget::NothingHeld => {
                    let released = domain::nothing_held(order_id, attempt, cause);
                    unit.record(history(order_id, event, &released, now))?
                        .emit([released]);
                    return inventory.store.commit(unit).await;
                }
                ReleaseTarget::EndedFirst { replaces } => {
                    // The end of the run overtook the run itself: make sure
                    // nothing is held for it later. If the run is decided
                    // meanwhile, the write conflicts and we read again.
                    let mut tombstone = domain::ended_before_reservation(order_id, attempt, now);
                    let released = domain::nothing_held(order_id, attempt, cause);
                    if let Some(earlier) = &replaces {
                        tombstone.history.clone_from(&earlier.history);
                    }
                    inventory.store.keep_in(
                        &mut tombstone.history,
                        history(order_id, event, &released, now),
                    );
                    match replaces {
                        None => unit.insert(
                            RESERVATIONS,
                            [&tombstone],
                            OnDuplicate::Conflict("reservation"),
                        )?,
                        Some(earlier) => unit.update(
                            RESERVATIONS,
                            "reservation",
                            doc! { "_id": order_id, "attempt": earlier.attempt },
                            bson::to_document(&tombstone)?,
                        ),
                    }
                    .emit([released]);
                    return inventory.store.commit(unit).await;
                }
            };
            let ids: Vec<&str> = reservation
                .lines
                .iter()
                .map(|l| l.product_id.as_str())
                .collect();
            let _held = inventory.locks.lock(&ids).await;
            let mut products = inventory.products(&ids).await?;
            let read: HashMap<String, i64> =
                products.iter().map(|p| (p.id.clone(), p.version)).collect();
            let handled = event;
            let (mut released, event) = domain::release(&reservation, &mut products, cause, now);
            inventory.store.keep_in(
                &mut released.history,
                history(order_id, handled, &event, now),
            );
            Inventory::write_changed(&mut unit, &read, &products)?;
            unit.update(
                RESERVATIONS,
                "reservation",
                doc! {
                    "_id": &reservation.order_id,
                    "status": bson::to_bson(&ReservationStatus::Reserved)?,
                    "attempt": reservation.attempt,
                },
                bson::to_document(&released)?,
            )
            .emit([event]);
            inventory.store.commit(unit).await
        })
        .await
    }
}

/// A stored reservation's run and status: what an `order.created` meets.
#[derive(serde::Deserialize)]
struct StoredRun {
    #[serde(rename = "_id")]
    order_id: String,
    #[serde(default = "shared::events::first_attempt")]
    attempt: u32,
    status: ReservationStatus,
    /// Its lines of the order's history, which a retried run's reservation
    /// carries on.
    #[serde(default)]
    history: Vec<HistoryItem>,
}

/// What handling `event` for `order_id` at `at` did here: it published
/// `released`.
fn history(
    order_id: &str,
    event: &RawEnvelope,
    released: &RawEnvelope,
    at: DateTime<Utc>,
) -> History {
    History::of(SOURCE, order_id)
        .handled(event, at)
        .published(std::slice::from_ref(released))
}

/// The inventory's lines of an order's history that are kept in its
/// reservation; the rare others are history records.
impl HistorySource for InventoryStore {
    fn items<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<HistoryItem>, StoreError>> {
        Box::pin(self.history_lines(order_id))
    }
}

/// `order.created` events that arrived together: decided as if one by one,
/// written as one unit of work.
struct ReserveStock(Inventory);

impl WriteBatch for ReserveStock {
    type Item = (RawEnvelope, OrderCreated);

    async fn write(&self, batch: &[(RawEnvelope, OrderCreated)]) -> Result<(), StoreError> {
        let product_ids: BTreeSet<&str> = batch
            .iter()
            .flat_map(|(_, order)| order.items.iter().map(|l| l.product_id.as_str()))
            .collect();
        let product_ids: Vec<&str> = product_ids.into_iter().collect();
        let _held = self.0.locks.lock(&product_ids).await;
        // No inbox records: the reservation, keyed by the order and written
        // for every decision (held, refused, or a tombstone for an order that
        // ended first), is the record that `order.created` was handled.
        //
        // A first run has no earlier run to replace, so anything stored for
        // its order means it was decided (or ended) already, and the
        // reservation's unique key says so. First runs, nearly every order,
        // are therefore decided without reading the reservations first: a
        // round trip per batch less. A conflict (that key, or a product
        // changed meanwhile) sends the batch through the read.
        if batch
            .iter()
            .all(|(_, order)| order.attempt == first_attempt())
        {
            match self.decide(batch, &product_ids, HashMap::new()).await {
                Err(StoreError::Conflict(_)) => {}
                decided => return decided,
            }
        }
        // Otherwise the reservations are read: a redelivery, or a run that
        // ended (cancelled, failed) before it arrived, finds its own and has
        // no effect; a run of a retried saga replaces its order's earlier
        // run. Two copies in one batch, or a decision that raced this one
        // (the order's end, or another instance), still meet the unique key:
        // a conflict, so the event goes again, finds the reservation, and
        // says so in the history.
        let order_ids: Vec<&str> = batch.iter().map(|(_, o)| o.order_id.as_str()).collect();
        let stored: HashMap<String, StoredRun> = self
            .0
            .reservations
            .clone_with_type::<StoredRun>()
            .find(doc! { "_id": { "$in": &order_ids } })
            .projection(doc! { "_id": 1, "attempt": 1, "status": 1, "history": 1 })
            .await?
            .map_ok(|run| (run.order_id.clone(), run))
            .try_collect()
            .await?;
        self.decide(batch, &product_ids, stored).await
    }
}

impl ReserveStock {
    /// Decides the batch's orders against `stored`, their reservations as
    /// read (or none), and writes the decisions, with the changes to the
    /// products `product_ids` (locked by the caller), as one unit of work.
    async fn decide(
        &self,
        batch: &[(RawEnvelope, OrderCreated)],
        product_ids: &[&str],
        mut stored: HashMap<String, StoredRun>,
    ) -> Result<(), StoreError> {
        let inventory = &self.0;
        let mut unit = UnitOfWork::new();
        let mut open = Vec::with_capacity(batch.len());
        let mut without_effect = Vec::new();
        for item @ (event, order) in batch {
            let run = stored
                .get(&order.order_id)
                .map(|run| (run.attempt, run.status));
            match domain::prior(run, order.attempt).map_err(StoreError::Rule)? {
                // Rare (a redelivery, or a run that ended first): said in
                // the order's history, which otherwise would not show it.
                Prior::Decided => without_effect.push(
                    History::of(SOURCE, &order.order_id).handled_without_effect(
                        event,
                        format!(
                            "no effect: run {} of this order was decided or ended before",
                            order.attempt
                        ),
                    ),
                ),
                Prior::Nothing => open.push((item, None)),
                Prior::EarlierRun { attempt } => open.push((item, Some(attempt))),
            }
        }
        if open.is_empty() {
            unit.record_all(without_effect)?;
            return inventory.store.commit(unit).await;
        }

        let mut products = inventory.products(product_ids).await?;
        let read: HashMap<String, i64> =
            products.iter().map(|p| (p.id.clone(), p.version)).collect();
        let lines: Vec<&[OrderLine]> = open.iter().map(|((_, o), _)| o.items.as_slice()).collect();
        let now = Utc::now();
        let decisions = domain::decide_reservations(&lines, &mut products, now);
        let mut reservations = Vec::with_capacity(open.len());
        for (((event, order), replaces), decision) in open.into_iter().zip(decisions) {
            let cause = Cause::event(SOURCE, event);
            let (mut reservation, events) =
                domain::reservation_outcome(order, decision, &cause, now);
            if let Some(earlier) = stored.remove(&order.order_id) {
                reservation.history = earlier.history;
            }
            inventory.store.keep_in(
                &mut reservation.history,
                History::of(SOURCE, &order.order_id)
                    .handled(event, now)
                    .published(&events),
            );
            unit.emit(events);
            match replaces {
                None => reservations.push(reservation),
                // Guarded by the earlier run: a concurrent decision conflicts.
                Some(earlier) => {
                    unit.update(
                        RESERVATIONS,
                        "reservation",
                        doc! { "_id": &reservation.order_id, "attempt": earlier },
                        bson::to_document(&reservation)?,
                    );
                }
            }
        }
        // The version guards fail if another instance changed a product
        // since the read; the batch then goes again one by one.
        Inventory::write_changed(&mut unit, &read, &products)?;
        unit.insert(
            RESERVATIONS,
            &reservations,
            OnDuplicate::Conflict("reservation"),
        )?
        .record_all(without_effect)?;
        inventory.store.commit(unit).await
    }
}
