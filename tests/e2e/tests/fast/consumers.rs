//! Consumers that report their state and come back: `/ready` lists each
//! consumer of a service, a consumer whose connection the broker closes
//! reconnects by itself (and the saga carries on), and one kept away longer
//! than `CONSUMER_READY_GRACE_SECONDS` makes the service unready until it
//! is back. Connections are closed through RabbitMQ's management API, found
//! by the name each service announces, which carries the stack's namespace:
//! only this test's connections are touched.

use std::time::Duration;

use e2e_tests::{Stack, eventually, eventually_within, sample};
use serde_json::Value;

fn management_url() -> String {
    std::env::var("RABBITMQ_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
}

/// The broker's view of every open connection that announced `name`.
/// Every caller polls, so a listing the management API could not give
/// (it has answered with an empty body while a connection it was listing
/// closed) counts as none found this time.
async fn broker_connections(http: &reqwest::Client, name: &str) -> Vec<Value> {
    let response = http
        .get(format!("{}/api/connections", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("the RabbitMQ management API answers");
    let status = response.status();
    let all: Vec<Value> = match response.json().await {
        Ok(all) if status.is_success() => all,
        outcome => {
            eprintln!("listing connections failed ({status}): {outcome:?}; polling again");
            return Vec::new();
        }
    };
    all.into_iter()
        .filter(|c| c["client_properties"]["connection_name"] == name)
        .collect()
}

/// Closes every connection that announced `name`; how many it closed.
async fn close_broker_connections(http: &reqwest::Client, name: &str) -> usize {
    let connections = broker_connections(http, name).await;
    for connection in &connections {
        let id = connection["name"].as_str().unwrap();
        let response = http
            .delete(format!(
                "{}/api/connections/{}",
                management_url(),
                urlencode(id)
            ))
            .basic_auth("guest", Some("guest"))
            .header("X-Reason", "closed by the consumers test")
            .send()
            .await
            .unwrap();
        // 404: it went away by itself meanwhile.
        assert!(
            response.status().is_success() || response.status() == 404,
            "closing {id}: {}",
            response.status()
        );
    }
    connections.len()
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/ready`'s status code and body.
async fn ready(stack: &Stack, service_url: &str) -> (u16, Value) {
    let response = stack
        .http
        .get(format!("{service_url}/ready"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The entry of `/ready`'s `consumers` for `role`.
fn consumer<'a>(body: &'a Value, role: &str) -> &'a Value {
    body["consumers"]
        .as_array()
        .unwrap_or_else(|| panic!("no consumers in {body}"))
        .iter()
        .find(|c| c["role"] == role)
        .unwrap_or_else(|| panic!("no {role} consumer in {body}"))
}

fn order_consumer_connection(stack: &Stack) -> String {
    format!("t-{}.order-service-consumer", stack.id)
}

/// Places an order for a fresh product and waits for its outcome.
async fn order_outcome(stack: &Stack) -> Value {
    let product = stack.create_product(10, 1, 4.5).await;
    let response = stack.place_order(&stack.email("after"), &product, 1).await;
    assert_eq!(response.status(), 202);
    let order: Value = response.json().await.unwrap();
    stack.final_order(order["orderId"].as_str().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_lists_each_consumer_connected_with_nothing_in_flight_on_a_fresh_stack() {
    let stack = Stack::start().await;
    for (service_url, queue) in [
        (&stack.order, "order-service.events"),
        (&stack.inventory, "inventory-service.events"),
        (&stack.notification, "notification-service.events"),
    ] {
        let body = eventually(&format!("every consumer of {queue} connected"), || async {
            let (status, body) = ready(&stack, service_url).await;
            let consumers = body["consumers"].as_array()?;
            (status == 200 && consumers.iter().all(|c| c["connected"] == true)).then_some(body)
        })
        .await;
        assert_eq!(body["status"], "ready");
        assert_eq!(body["consumers"].as_array().unwrap().len(), 2, "{body}");
        let work = consumer(&body, "work");
        assert_eq!(work["queue"], format!("t-{}.{queue}", stack.id), "{body}");
        let archiver = consumer(&body, "dead_letters");
        assert_eq!(archiver["queue"], format!("t-{}.{queue}.dlq", stack.id));
        for c in [work, archiver] {
            assert_eq!(c["inFlight"], 0, "{body}");
            assert_eq!(c["disconnectedSince"], Value::Null, "{body}");
            assert_eq!(c["disconnectedSeconds"], Value::Null, "{body}");
            assert_eq!(c["lastAckAgeSeconds"], Value::Null, "{body}");
            assert_eq!(c["restarts"], 0, "{body}");
        }
    }
    let metrics = stack.get_text(&format!("{}/metrics", stack.order)).await;
    let queue = format!("t-{}.order-service.events", stack.id);
    let labels = [("queue", queue.as_str()), ("role", "work")];
    assert_eq!(
        sample(&metrics, "shop_consumer_connected", &labels),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "shop_consumer_in_flight", &labels),
        Some(0.0),
        "{metrics}"
    );
    // No ack yet, so no age: absent rather than a made-up value.
    assert_eq!(
        sample(&metrics, "shop_consumer_last_ack_age_seconds", &labels),
        None,
        "{metrics}"
    );
    // The broker agrees: one consumer on the queue.
    assert_eq!(
        sample(
            &metrics,
            "shop_queue_consumers",
            &[("queue", queue.as_str())]
        ),
        Some(1.0),
        "{metrics}"
    );

    // Heartbeats are on by default, at 30 s (RabbitMQ alone would pick 60).
    let connections = eventually("the order consumer's connection listed", || async {
        let found = broker_connections(&stack.http, &order_consumer_connection(&stack)).await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(connections[0]["timeout"], 30, "{}", connections[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_connection_is_closed_comes_back_without_flapping_readiness() {
    let stack = Stack::start().await;
    let name = order_consumer_connection(&stack);
    eventually("the order consumer connected", || async {
        let (_, body) = ready(&stack, &stack.order).await;
        (consumer(&body, "work")["connected"] == true).then_some(())
    })
    .await;

    // Keep closing it until /ready has seen it down: it reconnects within
    // a few hundred milliseconds, which one poll could miss.
    let (status, down) = eventually("the order consumer seen disconnected", || async {
        close_broker_connections(&stack.http, &name).await;
        let (status, body) = ready(&stack, &stack.order).await;
        (consumer(&body, "work")["connected"] == false).then_some((status, body))
    })
    .await;
    let work = consumer(&down, "work");
    assert!(work["disconnectedSince"].is_string(), "{down}");
    assert!(work["disconnectedSeconds"].is_number(), "{down}");
    // Within the grace (30 s by default) a reconnect does not fail readiness.
    assert_eq!(status, 200, "{down}");
    assert_eq!(down["status"], "ready");

    let back = eventually_within(
        "the order consumer connected again",
        Duration::from_secs(10),
        || async {
            let (status, body) = ready(&stack, &stack.order).await;
            (status == 200 && consumer(&body, "work")["connected"] == true).then_some(body)
        },
    )
    .await;
    assert_eq!(consumer(&back, "work")["disconnectedSince"], Value::Null);

    assert_eq!(order_outcome(&stack).await["status"], "CONFIRMED");
    // The consumer acked the inventory's answer.
    let (_, body) = ready(&stack, &stack.order).await;
    assert!(
        consumer(&body, "work")["lastAckAgeSeconds"].is_number(),
        "{body}"
    );
    let metrics = stack.get_text(&format!("{}/metrics", stack.order)).await;
    let queue = format!("t-{}.order-service.events", stack.id);
    let labels = [("queue", queue.as_str()), ("role", "work")];
    assert!(
        sample(&metrics, "shop_consumer_last_ack_age_seconds", &labels).is_some(),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_kept_away_longer_than_the_grace_makes_the_service_unready_until_it_is_back() {
    // No grace: any time away is past it. (The rule at the boundary of a
    // real grace is unit-tested with a clock in consumer/state.rs; here the
    // broker's own close of the connection drives it.)
    let stack = Stack::start_with(&[("CONSUMER_READY_GRACE_SECONDS", "0")]).await;
    let name = order_consumer_connection(&stack);
    eventually("the order consumer connected", || async {
        let (_, body) = ready(&stack, &stack.order).await;
        (consumer(&body, "work")["connected"] == true).then_some(())
    })
    .await;

    // Close its connection until /ready is asked while it is away.
    let body = eventually_within(
        "/ready answering 503 over the order consumer",
        Duration::from_secs(30),
        || async {
            close_broker_connections(&stack.http, &name).await;
            let (status, body) = ready(&stack, &stack.order).await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert_eq!(body["status"], "unavailable");
    // Only the consumer is at fault: the database and the broker answer.
    assert_eq!(body["mongodb"], "up");
    assert_eq!(body["rabbitmq"], "up");
    let work = consumer(&body, "work");
    assert_eq!(work["connected"], false, "{body}");
    // Since when, and for how long (0.0 if /ready was asked within the
    // millisecond of the disconnect).
    assert!(work["disconnectedSince"].is_string(), "{body}");
    assert!(
        work["disconnectedSeconds"].as_f64().unwrap() >= 0.0,
        "{body}"
    );

    // Left alone, it reconnects and the service is ready again.
    eventually("/ready answering 200 again", || async {
        let (status, body) = ready(&stack, &stack.order).await;
        (status == 200 && consumer(&body, "work")["connected"] == true).then_some(())
    })
    .await;
    assert_eq!(order_outcome(&stack).await["status"], "CONFIRMED");
}
