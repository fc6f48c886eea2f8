//! Pausing a consumer through the admin API, against the real broker and
//! database: the inventory's work queue paused, orders wait in it (PENDING)
//! while the service stays ready; the pause outlives a restart and reaches
//! a second instance; a resume through one instance reaches the other
//! within about 2 s, and every order is then confirmed, nothing
//! dead-lettered. An order cancelled while its reservation waits stays
//! cancelled when the reservation comes. Also the list, the 404 of an
//! unknown queue, and the routes as the admin console reaches them.

use std::time::Duration;

use e2e_tests::{Stack, eventually, eventually_within, rabbitmq_url, sample};
use reqwest::Method;
use serde_json::Value;

const ORDERS: usize = 4;

/// The consumer of `queue` in `GET /admin/consumers` on `service_url`.
async fn listed(stack: &Stack, service_url: &str, queue: &str) -> Value {
    let (status, body) = stack
        .admin_call(Method::GET, &format!("{service_url}/admin/consumers"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["consumers"]
        .as_array()
        .unwrap_or_else(|| panic!("no consumers in {body}"))
        .iter()
        .find(|c| c["queue"] == queue)
        .unwrap_or_else(|| panic!("{queue} is not listed in {body}"))
        .clone()
}

/// Waits until `service_url` lists the consumer of `queue` in `state`.
async fn until_state(stack: &Stack, service_url: &str, queue: &str, state: &str) -> Value {
    eventually(&format!("{queue} {state} at {service_url}"), || async {
        let consumer = listed(stack, service_url, queue).await;
        (consumer["state"] == state).then_some(consumer)
    })
    .await
}

/// `POST {service_url}/admin/consumers/{queue}/{action}`: status and body.
async fn act(stack: &Stack, service_url: &str, queue: &str, action: &str) -> (u16, Value) {
    stack
        .admin_call(
            Method::POST,
            &format!("{service_url}/admin/consumers/{queue}/{action}"),
            None,
        )
        .await
}

/// The broker's count of ready messages and of consumers on `queue`, or
/// none if it could not be had this time (each try on a connection of its
/// own, as a passive declare that fails closes its channel).
async fn queue_counts(queue: &str) -> Option<(u32, u32)> {
    let connection = lapin::Connection::connect(&rabbitmq_url(), Default::default())
        .await
        .ok()?;
    let channel = connection.create_channel().await.ok()?;
    let declared = shared::broker::passive_declare(&channel, queue).await;
    let _ = connection.close(200, "done".into()).await;
    let declared = declared.ok()?;
    Some((declared.message_count(), declared.consumer_count()))
}

/// `GET {service_url}{path}`: status and body.
async fn probe(stack: &Stack, service_url: &str, path: &str) -> (u16, Value) {
    let response = stack
        .http
        .get(format!("{service_url}{path}"))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_inventory_queue_holds_the_orders_through_a_restart_until_a_resume_confirms_them_all()
 {
    // No grace: a pause counted as a disconnection would make /ready 503.
    // A saga deadline far away: the orders wait for the resume, not for it.
    let stack = Stack::start_with(&[
        ("CONSUMER_READY_GRACE_SECONDS", "0"),
        ("SAGA_TIMEOUT_SECONDS", "600"),
    ])
    .await;
    let queue = stack.name("inventory-service.events");
    let product = stack.create_product(100, 0, 3.0).await;
    until_state(&stack, &stack.inventory, &queue, "consuming").await;
    let dlq = stack.name("inventory-service.events.dlq");
    until_state(&stack, &stack.inventory, &dlq, "consuming").await;

    let (status, paused) = act(&stack, &stack.inventory, &queue, "pause").await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["state"], "paused", "{paused}");
    assert_eq!(paused["pauseRequested"], true, "{paused}");
    assert_eq!(paused["inFlight"], 0, "{paused}");
    assert!(paused["pausedSince"].is_string(), "{paused}");
    // Again: the same answer, nothing else changes.
    let (status, again) = act(&stack, &stack.inventory, &queue, "pause").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["state"], "paused", "{again}");
    assert_eq!(again["pausedSince"], paused["pausedSince"], "{again}");

    let mut orders = Vec::new();
    for _ in 0..ORDERS {
        let response = stack.place_order(&stack.email("paused"), &product, 1).await;
        assert_eq!(response.status(), 202);
        let order: Value = response.json().await.unwrap();
        orders.push(order["orderId"].as_str().unwrap().to_string());
    }
    // Every order.created waits in the queue, ready, with no consumer on it.
    eventually(
        "the orders' events waiting in the inventory's queue",
        || async { (queue_counts(&queue).await == Some((ORDERS as u32, 0))).then_some(()) },
    )
    .await;
    for id in &orders {
        assert_eq!(stack.order(id).await["status"], "PENDING", "order {id}");
    }
    // Ready (the API serves), saying the consumer is paused; alive.
    let (status, ready) = probe(&stack, &stack.inventory, "/ready").await;
    assert_eq!(status, 200, "{ready}");
    let work = ready["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["queue"] == queue)
        .unwrap_or_else(|| panic!("{queue} not in {ready}"));
    assert_eq!(work["state"], "paused", "{ready}");
    assert_eq!(work["connected"], false, "{ready}");
    assert_eq!(work["disconnectedSince"], Value::Null, "{ready}");
    assert_eq!(probe(&stack, &stack.inventory, "/health").await.0, 200);
    let metrics = stack
        .get_text(&format!("{}/metrics", stack.inventory))
        .await;
    let labels = [("queue", queue.as_str()), ("role", "work")];
    assert_eq!(
        sample(&metrics, "shop_consumer_paused", &labels),
        Some(1.0),
        "{metrics}"
    );

    // A restart: the new process reads the pause before it would consume.
    stack.stop_inventory();
    eventually("the first inventory instance gone", || async {
        let gone = stack
            .http
            .get(format!("{}/health", stack.inventory))
            .send()
            .await
            .is_err();
        gone.then_some(())
    })
    .await;
    let restarted = stack.start_inventory_instance().await;
    until_state(&stack, &restarted.url, &queue, "paused").await;
    // Ready once its dead-letter archiver has connected; the paused
    // consumer does not hold it back.
    eventually("the restarted instance ready", || async {
        let (status, _) = probe(&stack, &restarted.url, "/ready").await;
        (status == 200).then_some(())
    })
    .await;
    assert_eq!(
        listed(&stack, &restarted.url, &queue).await["state"],
        "paused"
    );
    assert_eq!(queue_counts(&queue).await, Some((ORDERS as u32, 0)));
    for id in &orders {
        assert_eq!(stack.order(id).await["status"], "PENDING", "order {id}");
    }

    // A second instance starts paused too.
    let replica = stack.start_inventory_instance().await;
    until_state(&stack, &replica.url, &queue, "paused").await;
    assert_eq!(queue_counts(&queue).await, Some((ORDERS as u32, 0)));

    // Resumed through the replica: consuming there when it answers...
    let (status, resumed) = act(&stack, &replica.url, &queue, "resume").await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["state"], "consuming", "{resumed}");
    assert_eq!(resumed["pauseRequested"], false, "{resumed}");
    // ...and on the other instance within about 2 s (it reads once a second).
    eventually_within(
        "the restarted instance consuming again",
        Duration::from_secs(3),
        || async {
            let consumer = listed(&stack, &restarted.url, &queue).await;
            (consumer["state"] == "consuming").then_some(())
        },
    )
    .await;

    for id in &orders {
        assert_eq!(
            stack.final_order(id).await["status"],
            "CONFIRMED",
            "order {id}"
        );
    }
    for service_url in [&restarted.url, &stack.order] {
        let (status, letters) = stack
            .admin_call(
                Method::GET,
                &format!("{service_url}/admin/dead-letters"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{letters}");
        assert_eq!(letters["items"], Value::Array(vec![]), "{service_url}");
    }
    assert_eq!(queue_counts(&dlq).await.map(|(ready, _)| ready), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_while_the_inventory_is_paused_stays_cancelled_when_the_reservation_comes()
 {
    // The order service remembers the PENDING order it wrote, and the
    // cancel moves the stored one on; the late reservation must be decided
    // on the stored order, not on what was remembered. Prefetch 1: the
    // inventory decides order.created before it releases on
    // order.cancelled, so there is a reservation to come late.
    let stack = Stack::start_with(&[
        ("CONSUMER_READY_GRACE_SECONDS", "0"),
        ("SAGA_TIMEOUT_SECONDS", "600"),
        ("PREFETCH", "1"),
    ])
    .await;
    let queue = stack.name("inventory-service.events");
    let product = stack.create_product(5, 0, 2.0).await;
    until_state(&stack, &stack.inventory, &queue, "consuming").await;
    let (status, paused) = act(&stack, &stack.inventory, &queue, "pause").await;
    assert_eq!(status, 200, "{paused}");

    let response = stack.place_order(&stack.email("late"), &product, 2).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["orderId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, cancelled) = stack.cancel(&id).await;
    assert_eq!(status, 200, "{cancelled}");
    let (status, resumed) = act(&stack, &stack.inventory, &queue, "resume").await;
    assert_eq!(status, 200, "{resumed}");

    // The reservation is made, answered, and given back.
    let late = eventually(
        "the late reservation handled by the order service",
        || async {
            let (status, history) = stack
                .admin_call(
                    Method::GET,
                    &format!("{}/api/orders/{id}/history", stack.order),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{history}");
            history["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| {
                    i["service"] == "order-service"
                        && i["kind"] == "event_handled"
                        && i["eventType"] == "inventory.reserved"
                })
                .cloned()
        },
    )
    .await;
    assert_eq!(
        late["detail"], "no effect: the order is CANCELLED at attempt 1",
        "{late}"
    );
    eventually("the stock given back", || async {
        let p = stack.product(&product).await;
        (p["stock"] == 5 && p["reserved"] == 0).then_some(())
    })
    .await;
    assert_eq!(stack.order(&id).await["status"], "CANCELLED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_lists_its_consumers_and_a_queue_it_does_not_have_is_404_naming_it() {
    let stack = Stack::start().await;
    for (service_url, base) in [
        (&stack.order, "order-service.events"),
        (&stack.inventory, "inventory-service.events"),
        (&stack.notification, "notification-service.events"),
    ] {
        let work = until_state(&stack, service_url, &stack.name(base), "consuming").await;
        assert_eq!(work["role"], "work", "{work}");
        assert_eq!(work["pauseRequested"], false, "{work}");
        let dlq = stack.name(&format!("{base}.dlq"));
        let archiver = until_state(&stack, service_url, &dlq, "consuming").await;
        assert_eq!(archiver["role"], "dead_letters", "{archiver}");
    }

    for action in ["pause", "resume"] {
        let (status, body) = act(&stack, &stack.inventory, "no-such-queue", action).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "not_found", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("\"no-such-queue\""), "{message}");
        // It says which queues there are.
        assert!(
            message.contains(&stack.name("inventory-service.events")),
            "{message}"
        );
    }
    let queue = stack.name("inventory-service.events");
    let anonymous = stack
        .http
        .post(format!("{}/admin/consumers/{queue}/pause", stack.inventory))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // Refused, so still consuming.
    assert_eq!(
        listed(&stack, &stack.inventory, &queue).await["state"],
        "consuming"
    );

    // The admin console reaches the inventory's routes through the order
    // service's forwarder, as its Pause and Resume buttons do.
    let forwarded = format!("{}/admin/services/inventory", stack.order);
    let (status, paused) = act(&stack, &forwarded, &queue, "pause").await;
    assert_eq!(
        (status, &paused["state"]),
        (200, &Value::from("paused")),
        "{paused}"
    );
    let (status, resumed) = act(&stack, &forwarded, &queue, "resume").await;
    assert_eq!(
        (status, &resumed["state"]),
        (200, &Value::from("consuming")),
        "{resumed}"
    );
}
