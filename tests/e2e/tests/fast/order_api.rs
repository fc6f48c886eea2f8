//! The order service's HTTP contract: bad input is a 4xx with a JSON body
//! naming the problem, and writes nothing.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use e2e_tests::{ADMIN_TOKEN, Stack, connect_to_broker, customer_token, eventually};
use futures::StreamExt;
use serde_json::{Value, json};

async fn post(stack: &Stack, body: &str) -> (u16, Value) {
    let response = stack
        .http
        .post(format!("{}/api/orders", stack.order))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn customer_orders(stack: &Stack, customer: &str) -> usize {
    let page: Value = stack
        .customer_get_json(
            customer,
            &format!("{}/api/customers/{customer}/orders", stack.order),
        )
        .await;
    page["items"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_order_returns_400_naming_every_invalid_field_and_writes_nothing() {
    let stack = Stack::start().await;
    let body = json!({
        "customerId": "bad-input",
        "customerEmail": "not-an-email",
        "items": [{ "productId": "p", "quantity": 0 }],
    });
    let (status, error) = post(&stack, &body.to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"], "validation_failed");
    let fields: Vec<&str> = error["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["customerEmail", "items[0].quantity"]);
    // Addresses that would aim the shop's mail relay inside its network.
    for internal in ["x@[127.0.0.1]", "x@mongodb"] {
        let body = json!({
            "customerId": "bad-input",
            "customerEmail": internal,
            "items": [{ "productId": "p", "quantity": 1 }],
        });
        let (status, error) = post(&stack, &body.to_string()).await;
        assert_eq!(status, 400, "{internal}: {error}");
        assert_eq!(error["fields"][0]["field"], "customerEmail", "{error}");
    }
    assert_eq!(customer_orders(&stack, "bad-input").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_unknown_fields_and_wrong_types_are_400_with_a_json_body() {
    let stack = Stack::start().await;
    for body in [
        "{ not json".to_string(),
        json!({ "customerId": "c", "customerEmail": "c@x.io", "items": [], "coupon": "FREE" }).to_string(),
        json!({ "customerId": "c", "customerEmail": "c@x.io", "items": [{ "productId": "p", "quantity": -1 }] }).to_string(),
    ] {
        let (status, error) = post(&stack, &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["error"], "bad_request", "{body}: {error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_64_kib_is_413() {
    let stack = Stack::start().await;
    let (status, error) = post(
        &stack,
        &format!("{{\"customerId\":\"{}\"}}", "x".repeat(70 * 1024)),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(error["error"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_product_is_422_naming_the_line_and_an_unknown_order_is_404() {
    let stack = Stack::start().await;
    let response = stack
        .place_order("x@example.com", "no-such-product", 1)
        .await;
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["fields"][0]["field"], "items[0].productId");

    let missing = stack
        .http
        .get(format!("{}/api/orders/nope", stack.order))
        .bearer_auth(customer_token("c-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_of_a_hundred_invented_products_is_refused_and_leaves_the_check_on() {
    // Each service takes 16 requests at once: a check that asked the
    // inventory about all 100 products at once was shed, its breaker
    // opened, and orders went through unchecked.
    let stack = Stack::start_with(&[("MAX_IN_FLIGHT_REQUESTS", "16")]).await;
    let items: Vec<Value> = (0..100)
        .map(|i| json!({ "productId": format!("invented-{i}"), "quantity": 1 }))
        .collect();
    let body =
        json!({ "customerId": "probe", "customerEmail": "probe@example.com", "items": items });
    let (status, error) = post(&stack, &body.to_string()).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["fields"][0]["field"], "items[0].productId", "{error}");

    // The next order's unknown product is still checked, not let through.
    let body = json!({
        "customerId": "probe", "customerEmail": "probe@example.com",
        "items": [{ "productId": "invented-again", "quantity": 1 }],
    });
    let (status, error) = post(&stack, &body.to_string()).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(customer_orders(&stack, "probe").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_status_moves_need_the_token_and_follow_the_lifecycle() {
    let stack = Stack::start().await;
    let product = stack.create_product(5, 0, 2.0).await;
    let order: Value = stack
        .place_order(&stack.email("ship"), &product, 1)
        .await
        .json()
        .await
        .unwrap();
    let id = order["orderId"].as_str().unwrap();
    let order = stack.final_order(id).await;
    assert_eq!(order["status"], "CONFIRMED");
    let url = format!("{}/api/orders/{id}/status", stack.order);

    let anonymous = stack
        .http
        .put(&url)
        .json(&json!({ "status": "SHIPPED" }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.json::<Value>().await.unwrap()["error"],
        "unauthorized"
    );

    let skip = stack
        .http
        .put(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "status": "DELIVERED" }))
        .send()
        .await
        .unwrap();
    assert_eq!(skip.status(), 409);

    let stale = stack
        .http
        .put(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "status": "SHIPPED", "expectedVersion": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);

    for next in ["SHIPPED", "DELIVERED"] {
        let moved = stack
            .http
            .put(&url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "status": next }))
            .send()
            .await
            .unwrap();
        assert_eq!(moved.status(), 200);
        assert_eq!(moved.json::<Value>().await.unwrap()["status"], next);
    }
    assert_eq!(stack.cancel(id).await.0, 409);

    let by_status: Value = stack
        .admin_get_json(&format!("{}/api/orders/status/DELIVERED", stack.order))
        .await;
    assert!(
        by_status["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["orderId"] == id)
    );
    let bad_status = stack
        .http
        .get(format!("{}/api/orders/status/LOST", stack.order))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_status.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_orders_page_with_a_cursor() {
    let stack = Stack::start().await;
    let product = stack.create_product(100, 0, 1.0).await;
    for _ in 0..5 {
        assert_eq!(
            stack
                .place_order(&stack.email("pager"), &product, 1)
                .await
                .status(),
            202
        );
    }
    let url = format!("{}/api/customers/c-1/orders", stack.order);
    let first: Value = stack
        .customer_get_json("c-1", &format!("{url}?limit=3"))
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let cursor = first["nextCursor"].as_str().unwrap();
    let second: Value = stack
        .customer_get_json("c-1", &format!("{url}?limit=3&cursor={cursor}"))
        .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 2);
    assert!(second["nextCursor"].is_null());
    let too_big = stack
        .http
        .get(format!("{url}?limit=101"))
        .bearer_auth(customer_token("c-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_docs_and_spec_answer() {
    let stack = Stack::start().await;
    for base in [&stack.order, &stack.inventory, &stack.notification] {
        let ready: Value = stack.get_json(&format!("{base}/ready")).await;
        assert_eq!(ready["status"], "ready", "{ready}");
        assert_eq!(
            stack
                .http
                .get(format!("{base}/health"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            stack
                .http
                .get(format!("{base}/docs"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let spec: Value = stack.get_json(&format!("{base}/openapi.json")).await;
        assert!(spec["paths"].as_object().unwrap().len() >= 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_503_naming_rabbitmq_when_the_broker_is_unreachable() {
    use shared::config::Env;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let settings = std::collections::HashMap::from([
        ("PORT", "0".to_string()),
        ("MONGODB_URI", e2e_tests::mongodb_uri()),
        ("MONGODB_DATABASE", format!("t_{id}_nobroker")),
        // Nothing listens on port 1.
        (
            "RABBITMQ_URL",
            "amqp://guest:guest@127.0.0.1:1/%2f".to_string(),
        ),
        ("INVENTORY_URL", "http://127.0.0.1:1".to_string()),
    ]);
    let env = Env::from_lookup(move |k| settings.get(k).cloned());
    let service = order_service::build(order_service::Config::from_lookup(&env).unwrap())
        .await
        .expect("starts without the broker and keeps retrying");
    let url = format!("http://127.0.0.1:{}/ready", service.port());
    let shutdown = service.shutdown_token();
    tokio::spawn(service.run_until_stopped());

    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["mongodb"], "up");
    // Down, without the driver's words (host, port, account) for whoever
    // probes.
    assert!(
        matches!(
            body["rabbitmq"].as_str(),
            Some("down: unreachable" | "down: timed out")
        ),
        "{body}"
    );
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
    shutdown.cancel();
}

/// Posts `customer`'s order of one `product` until one is refused; the
/// refusal and how many were accepted before it.
async fn order_until_refused(
    stack: &Stack,
    customer: &str,
    product: &str,
) -> (reqwest::Response, usize) {
    let body = json!({ "customerId": customer, "customerEmail": stack.email(customer),
                       "items": [{ "productId": product, "quantity": 1 }] })
    .to_string();
    let accepted = AtomicUsize::new(0);
    let refusal = eventually("an order refused", || async {
        let response = stack
            .http
            .post(format!("{}/api/orders", stack.order))
            .bearer_auth(customer_token(customer))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if response.status() == 202 {
            accepted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(response)
    })
    .await;
    (refusal, accepted.into_inner())
}

/// A 503 `overloaded` from the saga's back-pressure, checked.
async fn assert_overloaded(refusal: reqwest::Response, limit: u64) {
    assert_eq!(refusal.status(), 503);
    assert_eq!(refusal.headers()["retry-after"], "1");
    let error: Value = refusal.json().await.unwrap();
    assert_eq!(error["error"], "overloaded", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("(limit {limit})")) && message.contains("admitted at 0/s"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_orders_get_503_with_retry_after_while_the_saga_is_too_far_behind() {
    let stack = Stack::start_with(&[("MAX_SAGA_BACKLOG", "3")]).await;
    let product = stack.create_product(100, 0, 1.0).await;
    // Nobody takes order.created now: every accepted order waits in the queue.
    stack.stop_inventory();
    let (refusal, accepted) = order_until_refused(&stack, "c-backlog", &product).await;
    assert_overloaded(refusal, 3).await;
    // Nothing finishes, so nothing more is admitted once the backlog passes
    // a quarter of the limit (the sampler may lag a few admissions).
    assert!((1..40).contains(&accepted), "accepted {accepted}");
    assert_eq!(customer_orders(&stack, "c-backlog").await, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_a_consumer_holds_unacked_count_against_the_saga_backlog() {
    // What a deep prefetch does under load: the inventory's deliveries sit
    // in a consumer's hands, not in its queue. A gate counting the queue's
    // ready messages would see none waiting and admit every order.
    let stack = Stack::start_with(&[("MAX_SAGA_BACKLOG", "8")]).await;
    let product = stack.create_product(100, 0, 1.0).await;
    stack.stop_inventory();
    let connection = connect_to_broker().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = stack.name("inventory-service.events");
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "holds-without-acking".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let held = Arc::new(AtomicUsize::new(0));
    let holder = tokio::spawn({
        let held = held.clone();
        async move {
            let mut in_hand = Vec::new();
            while let Some(Ok(delivery)) = deliveries.next().await {
                in_hand.push(delivery);
                held.store(in_hand.len(), Ordering::Relaxed);
            }
        }
    });

    let (refusal, accepted) = order_until_refused(&stack, "c-held", &product).await;
    assert_overloaded(refusal, 8).await;
    assert!((3..40).contains(&accepted), "accepted {accepted}");
    // Every accepted order's event is in the holder's hands (or on its
    // way), none ready in the queue: only the open sagas were counted.
    eventually("every accepted order's event held", || async {
        (held.load(Ordering::Relaxed) == accepted).then_some(())
    })
    .await;
    let declared = shared::broker::passive_declare(&channel, &queue)
        .await
        .unwrap();
    assert_eq!(declared.message_count(), 0);
    holder.abort();
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_past_its_orders_per_minute_gets_429_and_nothing_is_stored() {
    let stack = Stack::start_with(&[("ORDERS_PER_CUSTOMER_PER_MINUTE", "3")]).await;
    let product = stack.create_product(100, 0, 1.0).await;
    let order_as = |customer: &str| {
        stack
            .http
            .post(format!("{}/api/orders", stack.order))
            .bearer_auth(customer_token(customer))
            .json(
                &json!({ "customerId": customer, "customerEmail": stack.email("limit"),
                           "items": [{ "productId": product, "quantity": 1 }] }),
            )
            .send()
    };
    for _ in 0..3 {
        assert_eq!(order_as("c-busy").await.unwrap().status(), 202);
    }
    let refused = order_as("c-busy").await.unwrap();
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&wait), "Retry-After {wait}");
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"], "too_many_orders", "{error}");
    assert_eq!(customer_orders(&stack, "c-busy").await, 3);
    // Another customer is not held back by this one.
    assert_eq!(order_as("c-calm").await.unwrap().status(), 202);

    // Limit checks arriving together share one read: in a burst mixing
    // customers, each is still judged on its own orders. Each calm customer
    // has one order already (so this one is read, not waved through as its
    // first in the minute) and orders once; the busy one is at its limit.
    let calm: Vec<String> = (0..5).map(|i| format!("c-calm-{i}")).collect();
    for customer in &calm {
        assert_eq!(order_as(customer).await.unwrap().status(), 202);
    }
    let burst = calm
        .iter()
        .map(String::as_str)
        .chain(["c-busy"; 4])
        .map(|customer| async move { (customer, order_as(customer).await.unwrap().status()) });
    for (customer, status) in futures::future::join_all(burst).await {
        let expected = if customer == "c-busy" { 429 } else { 202 };
        assert_eq!(status, expected, "{customer}");
    }
    assert_eq!(customer_orders(&stack, "c-busy").await, 3);
    for customer in &calm {
        assert_eq!(customer_orders(&stack, customer).await, 2, "{customer}");
    }
}
