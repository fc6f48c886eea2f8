//! The outbox against the real MongoDB-compatible server (`MONGODB_URI`)
//! and RabbitMQ (`RABBITMQ_URL`), each test on a database and a broker
//! namespace of its own: a commit's events are one record, the relay takes
//! out of it exactly what the broker confirmed, and records written before
//! records held several events are still published.

use std::time::Duration;

use futures::TryStreamExt;
use lapin::{Connection, ConnectionProperties, options::BasicGetOptions};
use mongodb::{
    Database,
    bson::{self, Document, doc},
};
use shared::{
    CancellationToken,
    broker::{Publisher, Topology, topology::QueueType},
    events::{Cause, InventoryReserved, OrderCancelled, OrderStatus, RawEnvelope, ToOrderService},
    resilience::Breakers,
    retry::RetryPolicy,
    store::{self, OutboxRelay, Store, UnitOfWork, outbox},
};
use uuid::Uuid;

mod common;
use common::rabbitmq_url;

fn mongodb_uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

/// A database and a namespace of their own, where only the order service's
/// queue exists: the inventory's events (`order.cancelled`) have no queue,
/// so the broker returns them unroutable.
struct Harness {
    db: Database,
    store: Store,
    relay: Option<OutboxRelay>,
    topology: Topology,
    broker: Connection,
}

impl Harness {
    async fn start() -> Harness {
        let name = format!("outbox_test_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let db = store::connect(&mongodb_uri(), &name, "outbox-test")
            .await
            .unwrap();
        outbox::ensure_outbox_indexes(&db).await.unwrap();
        let topology = Topology::new(&format!("{name}."))
            .with_queue_expiry(Some(Duration::from_secs(900)))
            .with_queue_type(QueueType::Classic);
        let broker = Connection::connect(&rabbitmq_url(), ConnectionProperties::default())
            .await
            .unwrap();
        topology
            .declare_subscription(
                &broker.create_channel().await.unwrap(),
                &ToOrderService::SUBSCRIPTION,
                &RetryPolicy::default(),
            )
            .await
            .unwrap();
        let publisher = Publisher::new(&rabbitmq_url(), &name, topology.clone());
        let breaker = Breakers::default().breaker("rabbitmq-publish", 3, Duration::from_secs(5));
        let (relay, outbox) = OutboxRelay::new(&db, publisher, breaker);
        Harness {
            store: Store::new(db.clone(), outbox),
            db,
            relay: Some(relay),
            topology,
            broker,
        }
    }

    fn start_relay(&mut self) -> CancellationToken {
        let shutdown = CancellationToken::new();
        tokio::spawn(self.relay.take().unwrap().run(shutdown.clone()));
        shutdown
    }

    async fn records(&self) -> Vec<Document> {
        self.db
            .collection::<Document>(outbox::OUTBOX)
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    /// The message ids waiting in the order service's queue, in order,
    /// once `count` are there.
    async fn delivered(&self, count: usize) -> Vec<String> {
        let channel = self.broker.create_channel().await.unwrap();
        let queue = self.topology.work_queue(&ToOrderService::SUBSCRIPTION);
        let mut ids = Vec::new();
        for _ in 0..200 {
            while let Some(message) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                ids.push(
                    message
                        .delivery
                        .properties
                        .message_id()
                        .clone()
                        .unwrap()
                        .to_string(),
                );
            }
            if ids.len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ids
    }

    /// Deletes the server has run on this test's outbox (its `top` counters).
    async fn outbox_deletes(&self) -> i64 {
        let top = self
            .db
            .client()
            .database("admin")
            .run_command(doc! { "top": 1 })
            .await
            .unwrap();
        let namespace = format!("{}.{}", self.db.name(), outbox::OUTBOX);
        top.get_document("totals")
            .unwrap()
            .get_document(&namespace)
            .and_then(|counters| counters.get_document("remove"))
            .map_or(0, |remove| match remove.get("count") {
                Some(bson::Bson::Int32(n)) => i64::from(*n),
                Some(bson::Bson::Int64(n)) => *n,
                other => panic!("top: remove count {other:?}"),
            })
    }

    async fn pending(&self) -> u64 {
        outbox::pending_count(&self.db).await.unwrap()
    }

    async fn finish(self) {
        self.db.drop().await.unwrap();
        let _ = self.broker.close(200, "done".into()).await;
    }
}

async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn cause() -> Cause {
    Cause::request("outbox-test", "corr-outbox-test")
}

fn reserved(order: &str) -> RawEnvelope {
    cause().emit(InventoryReserved {
        order_id: order.into(),
        lines: Vec::new(),
        attempt: 1,
    })
}

fn cancelled(order: &str) -> RawEnvelope {
    cause().emit(OrderCancelled {
        order_id: order.into(),
        customer_id: "c".into(),
        customer_email: "c@example.com".into(),
        previous_status: OrderStatus::Pending,
        attempt: 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commits_events_are_one_record_and_the_relay_removes_what_the_broker_took() {
    let mut harness = Harness::start().await;
    let events = [reserved("a"), reserved("b"), cancelled("c"), reserved("d")];
    let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let mut unit = UnitOfWork::new();
    unit.emit(events);
    harness.store.commit(unit).await.unwrap();

    let records = harness.records().await;
    assert_eq!(records.len(), 1, "one record per commit: {records:?}");
    assert_eq!(records[0].get_array("events").unwrap().len(), 4);
    assert_eq!(harness.pending().await, 4);

    let shutdown = harness.start_relay();
    // Published in the order emitted; `order.cancelled` found no queue.
    assert_eq!(
        harness.delivered(3).await,
        [ids[0].clone(), ids[1].clone(), ids[3].clone()]
    );
    let left = until("the confirmed events to leave the record", async || {
        harness
            .records()
            .await
            .into_iter()
            .find(|r| r.get_array("events").is_ok_and(|e| e.len() == 1))
    })
    .await;
    let kept = left.get_array("events").unwrap()[0].as_document().unwrap();
    assert_eq!(kept.get_str("id").unwrap(), ids[2]);
    assert_eq!(kept.get_str("routingKey").unwrap(), "order.cancelled");
    assert_eq!(
        left.get("claimedBy"),
        Some(&bson::Bson::Null),
        "handed back"
    );
    assert_eq!(harness.pending().await, 1);
    shutdown.cancel();
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_one_event_from_before_records_held_several_is_published_and_removed() {
    let mut harness = Harness::start().await;
    let event = reserved("old");
    let id = event.event_id.to_string();
    harness
        .db
        .collection::<Document>(outbox::OUTBOX)
        .insert_one(doc! {
            "_id": &id,
            "routingKey": &event.event_type,
            "payload": serde_json::to_string(&event).unwrap(),
            "correlationId": &event.correlation_id,
            "createdAt": bson::DateTime::now(),
            "notBefore": null,
            "claimedBy": null,
        })
        .await
        .unwrap();
    assert_eq!(harness.pending().await, 1);

    let shutdown = harness.start_relay();
    assert_eq!(harness.delivered(1).await, [id]);
    until("the old record to be removed", async || {
        harness.records().await.is_empty().then_some(())
    })
    .await;
    shutdown.cancel();
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_confirmed_one_after_another_are_deleted_in_one_statement() {
    let mut harness = Harness::start().await;
    // Far longer than the three commits below take, so that all three wait.
    harness.relay = harness
        .relay
        .take()
        .map(|relay| relay.with_delete_linger(Duration::from_secs(5)));
    let shutdown = harness.start_relay();
    let mut ids = Vec::new();
    for order in ["a", "b", "c"] {
        let event = reserved(order);
        ids.push(event.event_id.to_string());
        let mut unit = UnitOfWork::new();
        unit.emit([event]);
        harness.store.commit(unit).await.unwrap();
        // Each is published on its own before the next commit.
        assert_eq!(harness.delivered(1).await, [ids.last().unwrap().clone()]);
    }
    until("the confirmed records to be deleted", async || {
        harness.records().await.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        harness.outbox_deletes().await,
        1,
        "one delete for three records"
    );
    shutdown.cancel();
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_deletes_what_was_confirmed_without_waiting_out_the_linger() {
    let mut harness = Harness::start().await;
    harness.relay = harness
        .relay
        .take()
        .map(|relay| relay.with_delete_linger(Duration::from_secs(9)));
    let event = reserved("a");
    let id = event.event_id.to_string();
    let mut unit = UnitOfWork::new();
    unit.emit([event]);
    harness.store.commit(unit).await.unwrap();
    let relay = harness.relay.take().unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    assert_eq!(harness.delivered(1).await, [id]);
    shutdown.cancel();
    // Well inside the 9 s linger.
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the relay stopped without waiting out the linger")
        .unwrap();
    assert!(
        harness.records().await.is_empty(),
        "published, then deleted at shutdown"
    );
    harness.finish().await;
}
