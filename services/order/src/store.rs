//! Orders in MongoDB. Every change and the event it causes commit together.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use chrono::Utc;
use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Document, doc},
};
use shared::store::{PageRequest, find_page};
use shared::{
    events::{
        Envelope, InventoryReservationFailed, InventoryReserved, OrderCancelled, OrderConfirmed,
        OrderCreated, OrderLine, OrderRejected, OrderStatusChanged, PricedLine, RawEnvelope,
    },
    store::{
        GroupCommit, Outbox, OutboxRecord, Transaction, Written, is_duplicate_key,
        one_by_one_on_failure, record_all_in_inbox, stage_records, update_each,
    },
};

use crate::{
    domain::{self, Order, OrderStatus, RuleViolation, SagaStep},
    error::Error,
};

const SOURCE: &str = "order-service";

/// Marker: the Idempotency-Key is taken by an earlier request.
#[derive(Debug, Clone, Copy)]
struct KeyTaken;
/// Marker: the order changed between our read and our write.
#[derive(Debug, Clone, Copy)]
struct VersionMoved;
/// Marker: an event names an order we do not have.
#[derive(Debug, Clone)]
pub struct UnknownOrder(pub String);

/// The result of a create.
pub enum Created {
    New(Order),
    /// The same request was made before with this Idempotency-Key.
    Replayed(Order),
}

/// The inventory's answer to an `order.created`.
pub enum InventoryAnswer {
    Reserved(InventoryReserved),
    Failed(InventoryReservationFailed),
}

impl InventoryAnswer {
    fn order_id(&self) -> &str {
        match self {
            InventoryAnswer::Reserved(data) => &data.order_id,
            InventoryAnswer::Failed(data) => &data.order_id,
        }
    }

    fn decide(&self, order: &Order) -> Result<SagaStep, RuleViolation> {
        match self {
            InventoryAnswer::Reserved(data) => domain::on_reserved(order, &data.lines),
            InventoryAnswer::Failed(data) => Ok(domain::on_reservation_failed(
                order,
                &data.reason,
                &data.short_lines,
            )),
        }
    }
}

/// A create waiting for its batch: the order, its event, its Idempotency-Key
/// and the request's fingerprint.
type NewOrder = (Order, Envelope<OrderCreated>, Option<(String, String)>);
/// A filter naming an order at the version read, and the update to make.
type GuardedUpdate = (Document, Document);

/// Writes in one transaction at most: a prefetch's worth of answers, or as
/// many creates as requests may be in progress.
const BATCH: usize = 64;

pub struct OrderStore {
    db: Database,
    orders: Collection<Order>,
    keys: Collection<Document>,
    outbox: Outbox,
    creates: GroupCommit<NewOrder, Written>,
    answers: GroupCommit<(RawEnvelope, InventoryAnswer), Written>,
}

impl OrderStore {
    pub fn new(db: Database, outbox: Outbox) -> Arc<Self> {
        Arc::new_cyclic(|store: &Weak<Self>| OrderStore {
            orders: db.collection("orders"),
            keys: db.collection("idempotency_keys"),
            db,
            outbox,
            // Batches that fail as a whole (a taken Idempotency-Key, an
            // answer handled before) go again one by one.
            creates: GroupCommit::spawn_in(store, BATCH, |store, batch| async move {
                one_by_one_on_failure(&batch, |some| store.create_together(some)).await
            }),
            answers: GroupCommit::spawn_in(store, BATCH, |store, batch| async move {
                one_by_one_on_failure(&batch, |some| store.answer_together(some)).await
            }),
        })
    }

    pub async fn ensure_indexes(&self) -> Result<(), Error> {
        self.orders
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "customerId": 1, "_id": -1 })
                    .build(),
            )
            .await?;
        self.orders
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "status": 1, "_id": -1 })
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Stores a new PENDING order with its `order.created` event. With an
    /// Idempotency-Key, a repeat of the same request returns the first order
    /// and a different request under the same key is refused.
    pub async fn create(
        &self,
        order: Order,
        idempotency: Option<(String, String)>,
    ) -> Result<Created, Error> {
        let event = Envelope::new(
            SOURCE,
            &order.correlation_id,
            None,
            OrderCreated {
                order_id: order.id.clone(),
                customer_id: order.customer_id.clone(),
                customer_email: order.customer_email.clone(),
                items: order
                    .items
                    .iter()
                    .map(|i| OrderLine {
                        product_id: i.product_id.clone(),
                        quantity: i.quantity,
                    })
                    .collect(),
            },
        );
        let result = self
            .creates
            .write((order.clone(), event, idempotency.clone()))
            .await;
        match result {
            Ok(()) => Ok(Created::New(order)),
            Err(e) if e.get_custom::<KeyTaken>().is_some() => {
                let (key, fingerprint) = idempotency.expect("only keyed creates collide");
                let record = self
                    .keys
                    .find_one(doc! { "_id": &key })
                    .await?
                    .ok_or(Error::Contention)?;
                if record.get_str("fingerprint").ok() != Some(fingerprint.as_str()) {
                    return Err(Error::IdempotencyMismatch);
                }
                let order_id = record.get_str("orderId").unwrap_or_default().to_string();
                let order = self
                    .get(&order_id)
                    .await?
                    .ok_or(Error::NotFound(order_id))?;
                Ok(Created::Replayed(order))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates that arrived together, in one transaction.
    async fn create_together(&self, batch: &[NewOrder]) -> Written {
        let now = bson::DateTime::now();
        let keys: Vec<Document> = batch
            .iter()
            .filter_map(|(order, _, key)| {
                key.as_ref().map(|(key, fingerprint)| {
                    doc! { "_id": key, "orderId": &order.id, "fingerprint": fingerprint, "createdAt": now }
                })
            })
            .collect();
        let events: Vec<OutboxRecord> = batch
            .iter()
            .map(|(_, event, _)| self.outbox.record(event))
            .collect();
        let mut tx = Transaction::begin(&self.db).await?;
        loop {
            let session = tx.attempt().await?;
            let result = async {
                if !keys.is_empty()
                    && let Err(e) = self.keys.insert_many(&keys).session(&mut *session).await
                {
                    return Err(if is_duplicate_key(&e) {
                        mongodb::error::Error::custom(KeyTaken)
                    } else {
                        e
                    });
                }
                self.orders
                    .insert_many(batch.iter().map(|(order, _, _)| order))
                    .session(&mut *session)
                    .await?;
                stage_records(&self.db, session, &events).await
            }
            .await;
            if let Some(()) = tx.finish(result).await? {
                self.outbox.committed(events);
                return Ok(());
            }
        }
    }

    pub async fn get(&self, order_id: &str) -> Result<Option<Order>, Error> {
        Ok(self.orders.find_one(doc! { "_id": order_id }).await?)
    }

    /// A customer's orders, newest first, and the next page's cursor.
    pub async fn orders_of_customer(
        &self,
        customer_id: &str,
        page: &PageRequest,
    ) -> Result<(Vec<Order>, Option<String>), Error> {
        let filter = doc! { "customerId": customer_id };
        Ok(find_page(&self.orders, filter, page, |o| o.id.clone()).await?)
    }

    /// The orders in `status`, newest first, and the next page's cursor.
    pub async fn orders_in_status(
        &self,
        status: OrderStatus,
        page: &PageRequest,
    ) -> Result<(Vec<Order>, Option<String>), Error> {
        let filter = doc! { "status": status.as_str() };
        Ok(find_page(&self.orders, filter, page, |o| o.id.clone()).await?)
    }

    /// Cancels a PENDING or CONFIRMED order and emits `order.cancelled`.
    pub async fn cancel(&self, order_id: &str, correlation_id: &str) -> Result<Order, Error> {
        self.change(order_id, None, |order| {
            domain::check_cancellable(order.status)?;
            let event = Envelope::new(
                SOURCE,
                correlation_id,
                None,
                OrderCancelled {
                    order_id: order.id.clone(),
                    customer_id: order.customer_id.clone(),
                    customer_email: order.customer_email.clone(),
                    previous_status: order.status.as_str().into(),
                },
            );
            Ok((OrderStatus::Cancelled, event.into_raw()))
        })
        .await
    }

    /// An admin move along CONFIRMED→SHIPPED→DELIVERED.
    pub async fn set_status(
        &self,
        order_id: &str,
        to: OrderStatus,
        expected_version: Option<i64>,
        correlation_id: &str,
    ) -> Result<Order, Error> {
        self.change(order_id, expected_version, |order| {
            domain::check_admin_transition(order.status, to)?;
            let event = Envelope::new(
                SOURCE,
                correlation_id,
                None,
                OrderStatusChanged {
                    order_id: order.id.clone(),
                    from: order.status.as_str().into(),
                    to: to.as_str().into(),
                    version: order.version + 1,
                },
            );
            Ok((to, event.into_raw()))
        })
        .await
    }

    /// Read, decide, write with a version guard; a concurrent change makes us
    /// read again (a few times) rather than overwrite it.
    async fn change(
        &self,
        order_id: &str,
        expected_version: Option<i64>,
        decide: impl Fn(&Order) -> Result<(OrderStatus, RawEnvelope), RuleViolation>,
    ) -> Result<Order, Error> {
        for _ in 0..5 {
            let order = self
                .get(order_id)
                .await?
                .ok_or_else(|| Error::NotFound(order_id.into()))?;
            if let Some(expected) = expected_version
                && expected != order.version
            {
                return Err(Error::StaleVersion {
                    expected,
                    current: order.version,
                });
            }
            let (to, event) = decide(&order)?;
            let record = [self.outbox.record(&event)];
            let now = Utc::now();
            let mut tx = Transaction::begin(&self.db).await?;
            let result = loop {
                let session = tx.attempt().await?;
                let attempt = async {
                let updated = self
                    .orders
                    .update_one(
                        doc! { "_id": &order.id, "version": order.version },
                        doc! { "$set": { "status": to.as_str(), "updatedAt": bson::DateTime::from_chrono(now) },
                               "$inc": { "version": 1 } },
                    )
                    .session(&mut *session)
                    .await?;
                if updated.matched_count == 0 {
                    return Err(mongodb::error::Error::custom(VersionMoved));
                }
                stage_records(&self.db, session, &record).await
                }
                .await;
                match tx.finish(attempt).await {
                    Ok(Some(())) => break Ok(()),
                    Ok(None) => continue,
                    Err(e) => break Err(e),
                }
            };
            match result {
                Ok(()) => {
                    self.outbox.committed(record.into());
                    return Ok(Order {
                        status: to,
                        version: order.version + 1,
                        updated_at: now,
                        ..order
                    });
                }
                Err(e) if e.get_custom::<VersionMoved>().is_some() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contention)
    }

    /// Applies the inventory's answer to an order, once per event: the inbox
    /// record, the new state and the resulting event commit together.
    /// Answers arriving together commit together.
    pub async fn apply_inventory_answer(
        &self,
        event: RawEnvelope,
        answer: InventoryAnswer,
    ) -> Result<(), mongodb::error::Error> {
        self.answers.write((event, answer)).await
    }

    async fn answer_together(&self, batch: &[(RawEnvelope, InventoryAnswer)]) -> Written {
        let mut tx = Transaction::begin(&self.db).await?;
        loop {
            let session = tx.attempt().await?;
            let attempt = self.answer_attempt(session, batch).await;
            if let Some(events) = tx.finish(attempt).await? {
                self.outbox.committed(events);
                return Ok(());
            }
        }
    }

    /// Four round trips however many answers: inbox, the orders, one update
    /// command and the events. Returns the events staged.
    async fn answer_attempt(
        &self,
        session: &mut mongodb::ClientSession,
        batch: &[(RawEnvelope, InventoryAnswer)],
    ) -> Result<Vec<OutboxRecord>, mongodb::error::Error> {
        record_all_in_inbox(&self.db, session, batch.iter().map(|(event, _)| event)).await?;
        let ids: Vec<&str> = batch.iter().map(|(_, a)| a.order_id()).collect();
        let orders: HashMap<String, Order> = self
            .orders
            .find(doc! { "_id": { "$in": &ids } })
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .map_ok(|order| (order.id.clone(), order))
            .try_collect()
            .await?;
        let now = bson::DateTime::now();
        let mut updates = Vec::new();
        let mut events = Vec::new();
        for (event, answer) in batch {
            let order = orders.get(answer.order_id()).ok_or_else(|| {
                mongodb::error::Error::custom(UnknownOrder(answer.order_id().to_string()))
            })?;
            let step = answer
                .decide(order)
                .map_err(mongodb::error::Error::custom)?;
            if let Some((update, outcome)) = self.saga_write(order, event, step, now)? {
                updates.push(update);
                events.push(outcome);
            }
        }
        // Two answers for one order in a batch meet the same version: the
        // second matches nothing, and on its own it finds the order decided.
        let expected = updates.len() as u64;
        if update_each(&self.db, session, self.orders.name(), updates).await? != expected {
            return Err(mongodb::error::Error::custom(VersionMoved));
        }
        stage_records(&self.db, session, &events).await?;
        Ok(events)
    }

    /// What a saga step writes: the order's guarded update and the event it
    /// emits (`None` for a step that changes nothing).
    fn saga_write(
        &self,
        order: &Order,
        cause: &RawEnvelope,
        step: SagaStep,
        now: bson::DateTime,
    ) -> Result<Option<(GuardedUpdate, OutboxRecord)>, mongodb::error::Error> {
        let (set, outcome) = match step {
            SagaStep::Ignore => return Ok(None),
            SagaStep::Confirm { items, total_cents } => {
                let lines: Vec<PricedLine> = items
                    .iter()
                    .map(|i| PricedLine {
                        product_id: i.product_id.clone(),
                        quantity: i.quantity,
                        unit_price_cents: i.unit_price_cents.unwrap_or_default(),
                    })
                    .collect();
                let set = doc! {
                    "status": OrderStatus::Confirmed.as_str(),
                    "items": bson::to_bson(&items)?,
                    "totalCents": total_cents,
                    "updatedAt": now,
                };
                let confirmed = Envelope::new(
                    SOURCE,
                    &order.correlation_id,
                    Some(cause.event_id),
                    OrderConfirmed {
                        order_id: order.id.clone(),
                        customer_id: order.customer_id.clone(),
                        customer_email: order.customer_email.clone(),
                        items: lines,
                        total_cents,
                    },
                );
                (set, self.outbox.record(&confirmed))
            }
            SagaStep::Reject { reason } => {
                let set = doc! { "status": OrderStatus::Rejected.as_str(), "reason": &reason, "updatedAt": now };
                let rejected = Envelope::new(
                    SOURCE,
                    &order.correlation_id,
                    Some(cause.event_id),
                    OrderRejected {
                        order_id: order.id.clone(),
                        customer_id: order.customer_id.clone(),
                        customer_email: order.customer_email.clone(),
                        reason,
                    },
                );
                (set, self.outbox.record(&rejected))
            }
        };
        let guard = doc! { "_id": &order.id, "version": order.version };
        let update = doc! { "$set": set, "$inc": { "version": 1 } };
        Ok(Some(((guard, update), outcome)))
    }
}

/// Whether a failed `apply_inventory_answer` can never succeed.
pub fn is_permanent(error: &mongodb::error::Error) -> bool {
    error.get_custom::<RuleViolation>().is_some() || error.get_custom::<UnknownOrder>().is_some()
}
