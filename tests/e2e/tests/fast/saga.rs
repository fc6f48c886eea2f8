//! The saga end to end: all three services, RabbitMQ, MongoDB and MailDev.

use e2e_tests::{Stack, customer_token, emails_to, eventually};
use serde_json::{Value, json};
use shared::events::{Envelope, OrderConfirmed, OrderCreated, OrderLine, PricedLine};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_confirmed_at_the_inventory_price_and_the_customer_gets_one_email() {
    let stack = Stack::start().await;
    let product = stack.create_product(10, 0, 12.5).await;
    let email = stack.email("buyer");

    let response = stack.place_order(&email, &product, 2).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "PENDING");
    assert_eq!(
        location,
        format!("/api/orders/{}", order["orderId"].as_str().unwrap())
    );

    let order = stack.final_order(order["orderId"].as_str().unwrap()).await;
    assert_eq!(order["status"], "CONFIRMED");
    assert_eq!(order["totalAmount"], 25.0);
    assert_eq!(order["items"][0]["unitPrice"], 12.5);
    let product = stack.product(&product).await;
    assert_eq!(
        (product["stock"].as_i64(), product["reserved"].as_i64()),
        (Some(8), Some(2))
    );

    let mails = eventually("the confirmation email", || async {
        let mails = emails_to(&email).await;
        (!mails.is_empty()).then_some(mails)
    })
    .await;
    assert_eq!(mails.len(), 1);
    assert!(mails[0]["subject"].as_str().unwrap().contains("confirmed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_orders_for_ten_units_confirm_exactly_ten() {
    let stack = Stack::start().await;
    let product = stack.create_product(10, 0, 1.0).await;
    let email = stack.email("rush");

    let posts = (0..50).map(|_| stack.place_order(&email, &product, 1));
    let ids: Vec<String> = futures::future::join_all(posts)
        .await
        .into_iter()
        .inspect(|r| {
            assert_eq!(r.status(), 202);
        })
        .map(|r| async {
            r.json::<Value>().await.unwrap()["orderId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect::<futures::future::JoinAll<_>>()
        .await;

    let mut confirmed = 0;
    let mut rejected = 0;
    for id in &ids {
        match stack.final_order(id).await["status"].as_str().unwrap() {
            "CONFIRMED" => confirmed += 1,
            "REJECTED" => rejected += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((confirmed, rejected), (10, 40));
    let product = stack.product(&product).await;
    assert_eq!(
        (product["stock"].as_i64(), product["reserved"].as_i64()),
        (Some(0), Some(10))
    );
    // One email per order and outcome.
    eventually("fifty emails", || async {
        (emails_to(&email).await.len() >= 50).then_some(())
    })
    .await;
    assert_eq!(emails_to(&email).await.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_restores_exactly_the_held_stock_and_sends_one_email() {
    let stack = Stack::start().await;
    let product = stack.create_product(5, 0, 3.0).await;
    let email = stack.email("canceller");
    let order: Value = stack
        .place_order(&email, &product, 3)
        .await
        .json()
        .await
        .unwrap();
    let id = order["orderId"].as_str().unwrap().to_string();
    assert_eq!(stack.final_order(&id).await["status"], "CONFIRMED");
    assert_eq!(stack.product(&product).await["stock"], 2);

    let (status, cancelled) = stack.cancel(&id).await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["status"], "CANCELLED");

    let product = eventually("stock released", || async {
        let p = stack.product(&product).await;
        (p["stock"] == 5).then_some(p)
    })
    .await;
    assert_eq!(product["reserved"], 0);
    eventually("the cancellation email", || async {
        let mails = emails_to(&email).await;
        mails
            .iter()
            .any(|m| m["subject"].as_str().unwrap().contains("cancelled"))
            .then_some(())
    })
    .await;
    let cancellations = emails_to(&email)
        .await
        .into_iter()
        .filter(|m| m["subject"].as_str().unwrap().contains("cancelled"))
        .count();
    assert_eq!(cancellations, 1);

    // A second cancel is refused and releases nothing more.
    assert_eq!(stack.cancel(&id).await.0, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_has_one_effect() {
    // Prefetch 1: deliveries are handled in order, so once the marker's
    // effect shows, both copies before it have been handled.
    let stack = Stack::start_with(&[("PREFETCH", "1")]).await;
    let product = stack.create_product(10, 0, 1.0).await;
    let created = |order: &str, quantity| {
        serde_json::to_vec(&Envelope::new(
            "test",
            "corr-dup",
            None,
            OrderCreated {
                order_id: order.into(),
                customer_id: "c".into(),
                customer_email: "dup@example.com".into(),
                items: vec![OrderLine {
                    product_id: product.clone(),
                    quantity,
                }],
                attempt: 1,
            },
        ))
        .unwrap()
    };
    let twice = created("dup-order", 2);
    stack.publish_raw("order.created", &twice).await;
    stack.publish_raw("order.created", &twice).await;
    stack
        .publish_raw("order.created", &created("marker-order", 1))
        .await;

    let product = eventually("the marker's reservation", || async {
        let p = stack.product(&product).await;
        (p["reserved"].as_i64().unwrap() >= 3).then_some(p)
    })
    .await;
    assert_eq!(
        (product["stock"].as_i64(), product["reserved"].as_i64()),
        (Some(7), Some(3))
    );

    // The same for a customer email: one order.confirmed twice, one email.
    let email = stack.email("dup");
    let confirmed = |order: &str, to: &str| {
        serde_json::to_vec(&Envelope::new(
            "test",
            "corr-dup",
            None,
            OrderConfirmed {
                order_id: order.into(),
                customer_id: "c".into(),
                customer_email: to.into(),
                items: vec![PricedLine {
                    product_id: "p".into(),
                    quantity: 1,
                    unit_price_cents: 100,
                }],
                total_cents: 100,
            },
        ))
        .unwrap()
    };
    let twice = confirmed("dup-mail-order", &email);
    let marker_email = stack.email("dup-marker");
    stack.publish_raw("order.confirmed", &twice).await;
    stack.publish_raw("order.confirmed", &twice).await;
    stack
        .publish_raw(
            "order.confirmed",
            &confirmed("marker-mail-order", &marker_email),
        )
        .await;
    eventually("the marker email", || async {
        (!emails_to(&marker_email).await.is_empty()).then_some(())
    })
    .await;
    eventually("the duplicated email", || async {
        (!emails_to(&email).await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(emails_to(&email).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_requests_with_one_idempotency_key_make_one_order_and_the_others_theirs() {
    let stack = Stack::start().await;
    let product = stack.create_product(100, 0, 1.0).await;
    let email = stack.email("idem");
    let body = json!({ "customerId": "c-idem", "customerEmail": email, "items": [{ "productId": product, "quantity": 1 }] });
    let key = format!("key-{}", stack.id);
    // Ten requests without a key go in among them: creates that arrive
    // together share a transaction, and the key's collisions must not cost
    // the others their orders.
    let posts = (0..30).map(|i| {
        let request = stack
            .http
            .post(format!("{}/api/orders", stack.order))
            .bearer_auth(customer_token("c-idem"))
            .json(&body);
        let keyed = i % 3 != 0;
        let request = if keyed {
            request.header("Idempotency-Key", &key)
        } else {
            request
        };
        async move { (keyed, request.send().await) }
    });
    let mut keyed_ids = std::collections::HashSet::new();
    let mut unkeyed_ids = std::collections::HashSet::new();
    for (keyed, response) in futures::future::join_all(posts).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 202);
        let id = response.json::<Value>().await.unwrap()["orderId"]
            .as_str()
            .unwrap()
            .to_string();
        if keyed {
            keyed_ids.insert(id)
        } else {
            unkeyed_ids.insert(id)
        };
    }
    assert_eq!(keyed_ids.len(), 1, "{keyed_ids:?}");
    assert_eq!(unkeyed_ids.len(), 10, "{unkeyed_ids:?}");
    let page: Value = stack
        .customer_get_json(
            "c-idem",
            &format!("{}/api/customers/c-idem/orders", stack.order),
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 11);

    // The same key with another body is a conflict.
    let other = json!({ "customerId": "c-idem", "customerEmail": email, "items": [{ "productId": product, "quantity": 2 }] });
    let conflict = stack
        .http
        .post(format!("{}/api/orders", stack.order))
        .bearer_auth(customer_token("c-idem"))
        .header("Idempotency-Key", &key)
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_goes_to_the_dead_letter_queue_without_blocking_the_queue() {
    let stack = Stack::start().await;
    stack
        .publish_raw("order.created", b"{ this is not json")
        .await;
    let product = stack.create_product(3, 0, 1.0).await;
    let order: Value = stack
        .place_order(&stack.email("after-poison"), &product, 1)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        stack.final_order(order["orderId"].as_str().unwrap()).await["status"],
        "CONFIRMED"
    );
    let dead = stack.dead_letters(&stack.inventory, "DEAD", 1).await;
    assert_eq!(dead[0]["payload"], "{ this is not json");
    assert_eq!(dead[0]["routingKey"], "order.created");
    assert_eq!(
        dead[0]["attempts"], 1,
        "a permanent failure skips the retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_for_more_than_the_stock_is_rejected_with_the_reason() {
    let stack = Stack::start().await;
    let product = stack.create_product(1, 0, 1.0).await;
    let email = stack.email("greedy");
    let order: Value = stack
        .place_order(&email, &product, 2)
        .await
        .json()
        .await
        .unwrap();
    let order = stack.final_order(order["orderId"].as_str().unwrap()).await;
    assert_eq!(order["status"], "REJECTED");
    assert!(
        order["reason"]
            .as_str()
            .unwrap()
            .contains("requested 2, available 1"),
        "{order}"
    );
    assert_eq!(stack.product(&product).await["stock"], 1);
    eventually("the rejection email", || async {
        emails_to(&email)
            .await
            .iter()
            .any(|m| {
                m["subject"]
                    .as_str()
                    .unwrap()
                    .contains("could not be accepted")
            })
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throwaway_namespace_declares_its_queues_to_expire() {
    use lapin::types::{AMQPValue, FieldTable};
    // Stack sets AMQP_QUEUE_EXPIRES_MS=900000, so the broker drops this
    // test's queues once it is gone instead of recovering them at every boot.
    let stack = Stack::start().await;
    let expiring = || {
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongLongInt(900_000));
        args
    };
    stack
        .redeclare_queue("inventory-service.events.dlq", expiring())
        .await
        .expect("the DLQ was declared with x-expires = 900000");
    let without = stack
        .redeclare_queue("inventory-service.events.dlq", FieldTable::default())
        .await;
    assert!(
        without.is_err(),
        "a declare without x-expires must be refused"
    );
}
