//! Sagas that end by themselves: the saga deadline fails an order nobody
//! answered, tells the customer once, and the inventory gives back whatever
//! it held for a failed order, even when the failure overtakes the order.

use std::time::Duration;

use e2e_tests::{Stack, customer_token, emails_to, eventually, eventually_within, mongodb_uri};
use mongodb::bson::{Document, doc};
use serde_json::Value;
use shared::events::{Cause, Event, OrderCreated, OrderFailed, OrderLine};

/// An envelope as another service would publish it.
fn envelope<T: Event>(data: T) -> Vec<u8> {
    serde_json::to_vec(&Cause::request("e2e", "corr-e2e").emit(data)).unwrap()
}

fn created(order_id: &str, product: &str, quantity: u32) -> Vec<u8> {
    envelope(OrderCreated {
        order_id: order_id.into(),
        customer_id: "c-1".into(),
        customer_email: "nobody@example.com".into(),
        items: vec![OrderLine {
            product_id: product.into(),
            quantity,
        }],
        attempt: 1,
    })
}

fn failed(order_id: &str) -> Vec<u8> {
    envelope(OrderFailed {
        order_id: order_id.into(),
        customer_id: "c-1".into(),
        customer_email: "nobody@example.com".into(),
        reason: "the order was not processed within 1 s".into(),
        attempt: 1,
    })
}

async fn stock(stack: &Stack, product: &str) -> (i64, i64) {
    let p = stack.product(product).await;
    (
        p["stock"].as_i64().unwrap(),
        p["reserved"].as_i64().unwrap(),
    )
}

/// A service killed in the middle of a transaction leaves it open on the
/// database, holding the documents it wrote, until the database's
/// transaction lifetime runs out (scripts/lib/infra.sh sets 10 s; mongod's
/// default, 60 s, is the saga's deadline). An order for the product such a
/// transaction holds still confirms, well before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_behind_a_transaction_a_killed_writer_left_open_confirms_before_the_deadline() {
    let stack = Stack::start().await;
    let product = stack.create_product(10, 0, 5.0).await;

    // What an inventory instance SIGKILLed mid-transaction leaves behind: a
    // write to the product in a transaction nobody will end. Forgetting
    // the session skips the driver's abort on drop, and the client lives
    // to the end of the test, so nothing ends it but the database.
    let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    client
        .database(&format!("t_{}_inventory", stack.id))
        .collection::<Document>("products")
        .update_one(
            doc! { "_id": &product },
            doc! { "$set": { "heldByAKilledWriter": true } },
        )
        .session(&mut session)
        .await
        .unwrap();
    std::mem::forget(session);

    let response = stack.place_order(&stack.email("held"), &product, 1).await;
    assert_eq!(response.status(), 202);
    let order_id = response.json::<Value>().await.unwrap()["orderId"]
        .as_str()
        .unwrap()
        .to_string();
    let order = eventually_within(
        &format!("order {order_id} decided before the 60 s deadline"),
        Duration::from_secs(45),
        || async {
            let order = stack.order(&order_id).await;
            (order["status"] != "PENDING").then_some(order)
        },
    )
    .await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(stock(&stack, &product).await, (9, 1), "reserved once");
    let held = client
        .database(&format!("t_{}_inventory", stack.id))
        .collection::<Document>("products")
        .count_documents(doc! { "heldByAKilledWriter": true })
        .await
        .unwrap();
    assert_eq!(
        held, 0,
        "the abandoned transaction was aborted, not committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_nobody_answers_fails_at_the_deadline_and_the_customer_is_told_once() {
    let stack = Stack::start_with(&[("SAGA_TIMEOUT_SECONDS", "2")]).await;
    let product = stack.create_product(10, 0, 5.0).await;
    stack.stop_inventory();
    let email = stack.email("late");
    let response = stack.place_order(&email, &product, 1).await;
    assert_eq!(
        response.status(),
        202,
        "accepted while the inventory is away"
    );
    let order_id = response.json::<Value>().await.unwrap()["orderId"]
        .as_str()
        .unwrap()
        .to_string();

    let order = stack.final_order(&order_id).await;
    assert_eq!(order["status"], "FAILED", "{order}");
    assert_eq!(order["reason"], "the order was not processed within 2 s");
    assert_eq!(order["version"], 2, "failed once");

    let mail = eventually("the failure email", || async {
        let mails = emails_to(&email).await;
        (!mails.is_empty()).then_some(mails)
    })
    .await;
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert!(
        mail[0]["subject"]
            .as_str()
            .unwrap()
            .contains("could not be processed"),
        "{}",
        mail[0]["subject"]
    );
    let notifications = stack
        .customer_get_json(
            "c-1",
            &format!(
                "{}/api/notifications?orderId={order_id}",
                stack.notification
            ),
        )
        .await;
    let kinds: Vec<&Value> = notifications["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["kind"])
        .collect();
    assert_eq!(kinds, vec!["ORDER_FAILED"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_gives_back_what_it_held_for_a_failed_order_and_holds_nothing_for_one_that_failed_first()
 {
    // One delivery at a time, so the order of publishing is the order of handling.
    let stack = Stack::start_with(&[("PREFETCH", "1")]).await;
    let product = stack.create_product(5, 0, 2.0).await;
    let held = format!("held-{}", stack.id);
    stack
        .publish_raw(OrderCreated::TYPE, &created(&held, &product, 2))
        .await;
    eventually("2 units held", || async {
        (stock(&stack, &product).await == (3, 2)).then_some(())
    })
    .await;

    stack.publish_raw(OrderFailed::TYPE, &failed(&held)).await;
    eventually("the 2 units back", || async {
        (stock(&stack, &product).await == (5, 0)).then_some(())
    })
    .await;

    // The failure overtakes its order: the late order.created holds nothing.
    let overtaken = format!("overtaken-{}", stack.id);
    let after = format!("after-{}", stack.id);
    stack
        .publish_raw(OrderFailed::TYPE, &failed(&overtaken))
        .await;
    stack
        .publish_raw(OrderCreated::TYPE, &created(&overtaken, &product, 3))
        .await;
    stack
        .publish_raw(OrderCreated::TYPE, &created(&after, &product, 1))
        .await;
    eventually("only the order after it holds stock", || async {
        (stock(&stack, &product).await == (4, 1)).then_some(())
    })
    .await;
}

/// The `expireAfterSeconds` of the index on `field` of `collection`.
async fn expires_after(db: &mongodb::Database, collection: &str, field: &str) -> Option<u64> {
    use futures::TryStreamExt;
    let indexes: Vec<mongodb::IndexModel> = db
        .collection::<mongodb::bson::Document>(collection)
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    indexes
        .iter()
        .find(|i| i.keys.contains_key(field))
        .and_then(|i| i.options.as_ref()?.expire_after)
        .map(|d| d.as_secs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_belongs_to_its_customer_and_kept_records_expire() {
    let stack = Stack::start().await;
    let product = stack.create_product(100, 0, 1.0).await;
    let key = format!("key-{}", stack.id);
    let post = |customer: &'static str| {
        let body = serde_json::json!({
            "customerId": customer,
            "customerEmail": stack.email(customer),
            "items": [{ "productId": product, "quantity": 1 }],
        });
        let request = stack
            .http
            .post(format!("{}/api/orders", stack.order))
            .bearer_auth(customer_token(customer))
            .header("Idempotency-Key", &key)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["orderId"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let first = post("c-a").await;
    assert_eq!(post("c-a").await, first, "the same customer's retry");
    let other = post("c-b").await;
    assert_ne!(other, first, "another customer's key is their own");

    let client = mongodb::Client::with_uri_str(e2e_tests::mongodb_uri())
        .await
        .unwrap();
    let order_db = client.database(&format!("t_{}_order", stack.id));
    let day = 24 * 3600;
    assert_eq!(
        expires_after(&order_db, "idempotency_keys", "createdAt").await,
        Some(day)
    );
    assert_eq!(
        expires_after(&order_db, "inbox", "handledAt").await,
        Some(7 * day)
    );
    for field in ["replayedAt", "discardedAt"] {
        assert_eq!(
            expires_after(&order_db, "dead_letters", field).await,
            Some(30 * day),
            "{field}"
        );
    }
}
