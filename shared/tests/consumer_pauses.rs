//! Where a pause is kept and how instances learn of it, against the real
//! MongoDB-compatible server (`MONGODB_URI`), each test on a database of its
//! own. Two `ConsumerPauses` over one database are two instances of one
//! service; no consume loop runs, so the tests see what each instance asks
//! of its consumers.

use std::{sync::Arc, time::Instant};

use futures::TryStreamExt;
use mongodb::{
    Database,
    bson::{Document, doc},
};
use shared::{
    broker::consumer::{ConsumerRole, ConsumerState, ConsumerStatus, Consumers},
    pauses::{APPLY_WAIT, Applied, CONSUMER_PAUSES, ConsumerPauses, PauseError},
    store,
};
use uuid::Uuid;

const QUEUE: &str = "t.inventory-service.events";

fn mongodb_uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

async fn database() -> Database {
    let name = format!("pauses_test_{}", &Uuid::new_v4().simple().to_string()[..12]);
    store::connect(&mongodb_uri(), &name, "pauses-test")
        .await
        .unwrap()
}

/// One instance: its consumer of [`QUEUE`], as the service registers it.
fn instance(db: &Database) -> (ConsumerPauses, Arc<ConsumerState>) {
    let consumers = Consumers::default();
    let pauses = ConsumerPauses::new(db, consumers.clone());
    let state = consumers.register(QUEUE, ConsumerRole::Work);
    pauses.apply_known(&state);
    (pauses, state)
}

/// Stands in for the consume loop: applies what is asked, once.
fn follow(state: &ConsumerState) {
    if state.pause_requested() {
        state.paused();
    } else {
        state.resumed();
        state.connected();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_is_stored_by_queue_and_reaches_another_instance_and_a_restarted_one() {
    let db = database().await;
    let (first, first_state) = instance(&db);
    let (second, second_state) = instance(&db);
    first_state.connected();

    // The request waits for its own instance's consumer to be paused.
    let consume_loop = tokio::spawn({
        let state = first_state.clone();
        async move {
            state.until_pause_requested().await;
            follow(&state);
        }
    });
    assert_eq!(first.set(QUEUE, true).await.unwrap(), Applied::Now);
    consume_loop.await.unwrap();
    let stored: Vec<Document> = db
        .collection::<Document>(CONSUMER_PAUSES)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].get_str("_id").unwrap(), QUEUE);
    let paused_at = stored[0].get_datetime("pausedAt").unwrap().to_owned();

    // The other instance learns of it on its next read.
    assert!(!second_state.pause_requested());
    second.refresh().await.unwrap();
    assert!(second_state.pause_requested());

    // Pausing again keeps the first pause's time.
    second_state.paused();
    assert_eq!(second.set(QUEUE, true).await.unwrap(), Applied::Now);
    let again = db
        .collection::<Document>(CONSUMER_PAUSES)
        .find_one(doc! { "_id": QUEUE })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.get_datetime("pausedAt").unwrap(), &paused_at);

    // A restarted instance asks its consumer to pause before it starts.
    let restarted = ConsumerPauses::new(&db, Consumers::default());
    restarted.load().await.unwrap();
    let consumers = Consumers::default();
    let state = consumers.register(QUEUE, ConsumerRole::Work);
    restarted.apply_known(&state);
    assert!(state.pause_requested());

    // A resume through the second instance reaches the first.
    let consume_loop = tokio::spawn({
        let state = second_state.clone();
        async move {
            state.until_resume_requested().await;
            follow(&state);
        }
    });
    assert_eq!(second.set(QUEUE, false).await.unwrap(), Applied::Now);
    consume_loop.await.unwrap();
    assert_eq!(second_state.status(), ConsumerStatus::Consuming);
    assert_eq!(
        db.collection::<Document>(CONSUMER_PAUSES)
            .count_documents(doc! {})
            .await
            .unwrap(),
        0
    );
    first.refresh().await.unwrap();
    assert!(!first_state.pause_requested());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_consumer_is_still_settling_answers_that_it_pauses_later() {
    let db = database().await;
    let (pauses, state) = instance(&db);
    state.connected();
    let started = Instant::now();
    // Nothing applies it: the consumer is still settling what it holds.
    assert_eq!(pauses.set(QUEUE, true).await.unwrap(), Applied::Later);
    assert!(started.elapsed() >= APPLY_WAIT);
    assert!(state.pause_requested());
    assert_eq!(state.status(), ConsumerStatus::Consuming);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_queue_is_refused_and_nothing_is_stored() {
    let db = database().await;
    let (pauses, _) = instance(&db);
    let refused = pauses.set("t.no-such-queue", true).await;
    assert!(
        matches!(refused, Err(PauseError::UnknownQueue { ref queue, .. }) if queue == "t.no-such-queue"),
        "{refused:?}"
    );
    assert_eq!(
        db.collection::<Document>(CONSUMER_PAUSES)
            .count_documents(doc! {})
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_does_not_answer_each_consumer_keeps_what_it_was_asked() {
    // Nothing listens on port 1: every read fails after the driver's 2 s.
    let db = store::connect("mongodb://127.0.0.1:1", "pauses_test_down", "pauses-test")
        .await
        .unwrap();
    let (pauses, state) = instance(&db);
    state.request_pause(true);
    assert!(pauses.refresh().await.is_err());
    assert!(state.pause_requested());
}
