//! Dead-letter admin routes, rate limits, breaker states and metrics, on
//! the real services.

use e2e_tests::{Stack, customer_token, sample};
use reqwest::Method;
use serde_json::{Value, json};
use shared::events::{Envelope, OrderCancelled};

/// An `order.cancelled` event in a version no consumer reads any more (older
/// than the previous one): a permanent failure. (A newer version than a
/// consumer knows would be retried, waiting for an upgraded instance.)
fn retired_version_cancel(order_id: &str) -> Vec<u8> {
    let mut event = serde_json::to_value(Envelope::new(
        "test",
        "corr-dlq",
        None,
        OrderCancelled {
            order_id: order_id.into(),
            customer_id: "c".into(),
            customer_email: "dlq@example.com".into(),
            previous_status: shared::events::OrderStatus::Pending,
            attempt: 1,
        },
    ))
    .unwrap();
    event["eventVersion"] = json!(0);
    serde_json::to_vec(&event).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_through_the_handler_and_discarded_on_record() {
    let stack = Stack::start().await;
    let base = format!("{}/admin/dead-letters", stack.inventory);
    stack
        .publish_raw("order.cancelled", &retired_version_cancel("o-1"))
        .await;

    let dead = stack.dead_letters(&stack.inventory, "DEAD", 1).await;
    let first = &dead[0];
    assert_eq!(first["eventType"], "order.cancelled");
    assert_eq!(first["routingKey"], "order.cancelled");
    assert_eq!(first["attempts"], 1);
    assert!(
        first["queue"]
            .as_str()
            .unwrap()
            .ends_with("inventory-service.events")
    );
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("version 0 is too old"),
        "{first}"
    );
    assert!(first["firstFailureAt"].is_string() && first["lastFailureAt"].is_string());
    let first_id = first["deadLetterId"].as_str().unwrap();
    let (status, shown) = stack
        .admin_call(Method::GET, &format!("{base}/{first_id}"), None)
        .await;
    assert_eq!(
        (status, &shown["deadLetterId"]),
        (200, &first["deadLetterId"])
    );

    // Replay runs the normal handler, which refuses the version again: the
    // original is REPLAYED and a new dead letter records the second failure.
    let (status, replayed) = stack
        .admin_call(Method::POST, &format!("{base}/{first_id}/replay"), None)
        .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["status"], "REPLAYED");
    assert_eq!(replayed["replayCount"], 1);
    let again = stack.dead_letters(&stack.inventory, "DEAD", 1).await;
    assert_ne!(again[0]["deadLetterId"], first["deadLetterId"]);
    assert_eq!(again[0]["payload"], first["payload"]);
    let (status, _) = stack
        .admin_call(Method::POST, &format!("{base}/{first_id}/replay"), None)
        .await;
    assert_eq!(status, 409, "only DEAD letters replay");

    // Discarding keeps the record.
    let second_id = again[0]["deadLetterId"].as_str().unwrap();
    let (status, error) = stack
        .admin_call(
            Method::POST,
            &format!("{base}/{second_id}/discard"),
            Some(json!({ "note": "" })),
        )
        .await;
    assert_eq!(
        (status, &error["fields"][0]["field"]),
        (400, &json!("note"))
    );
    let (status, discarded) = stack
        .admin_call(
            Method::POST,
            &format!("{base}/{second_id}/discard"),
            Some(json!({ "note": "version 0 was retired long ago" })),
        )
        .await;
    assert_eq!(status, 200, "{discarded}");
    assert_eq!(discarded["status"], "DISCARDED");
    assert_eq!(discarded["discardNote"], "version 0 was retired long ago");
    assert!(discarded["discardedAt"].is_string());
    stack.dead_letters(&stack.inventory, "DISCARDED", 1).await;
    let (status, _) = stack
        .admin_call(
            Method::POST,
            &format!("{base}/{second_id}/discard"),
            Some(json!({ "note": "x" })),
        )
        .await;
    assert_eq!(status, 409);

    // Replay by filter takes only the matching ones.
    for order in ["o-2", "o-3"] {
        stack
            .publish_raw("order.cancelled", &retired_version_cancel(order))
            .await;
    }
    stack.publish_raw("order.created", b"not json").await;
    stack.dead_letters(&stack.inventory, "DEAD", 3).await;
    let (status, result) = stack
        .admin_call(
            Method::POST,
            &format!("{base}/replay"),
            Some(json!({ "eventType": "order.cancelled" })),
        )
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["replayed"], 2);
    stack.dead_letters(&stack.inventory, "REPLAYED", 3).await;
    // The two replays failed again; the unparseable one was left alone.
    stack.dead_letters(&stack.inventory, "DEAD", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_routes_need_the_token_and_name_unknown_ids() {
    let stack = Stack::start().await;
    let base = format!("{}/admin/dead-letters", stack.order);
    let anonymous = stack.http.get(&base).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let (status, body) = stack
        .admin_call(Method::POST, &format!("{base}/nope/replay"), None)
        .await;
    assert_eq!(status, 404);
    assert!(body["message"].as_str().unwrap().contains("nope"), "{body}");
    let (status, body) = stack
        .admin_call(
            Method::POST,
            &format!("{base}/replay"),
            Some(json!({ "colour": "red" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // serde would read a filter from an array of its fields; the spec says
    // a body is an object, and so does the answer.
    let (status, body) = stack
        .admin_call(Method::POST, &format!("{base}/replay"), Some(json!([null])))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("JSON object"),
        "{body}"
    );
    let (status, _) = stack
        .admin_call(Method::GET, &format!("{base}?status=LOST"), None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_a_client_gets_429_with_retry_after_but_probes_are_never_limited() {
    let stack =
        Stack::start_with(&[("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "3")]).await;
    let url = format!("{}/api/orders/nothing-here", stack.order);
    let get = || {
        stack
            .http
            .get(&url)
            .bearer_auth(customer_token("c-1"))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(get().await.unwrap().status(), 404);
    }
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");

    for path in ["/health", "/ready", "/metrics"].repeat(3) {
        let response = stack
            .http
            .get(format!("{}{path}", stack.order))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path} is never limited");
    }
    let metrics = stack.get_text(&format!("{}/metrics", stack.order)).await;
    assert_eq!(
        sample(&metrics, "shop_http_rate_limited_total", &[]),
        Some(1.0),
        "{metrics}"
    );
}

/// GET `url` as if through a proxy that says the client is `forwarded`;
/// the status and the error's message.
async fn get_forwarded(stack: &Stack, url: &str, forwarded: &str) -> (u16, String) {
    let response = stack
        .http
        .get(url)
        .bearer_auth(customer_token("c-1"))
        .header("x-forwarded-for", forwarded)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_it_names_has_its_own_limit() {
    // The test connects from 127.0.0.1, which plays the proxy.
    let stack = Stack::start_with(&[
        ("RATE_LIMIT_PER_SECOND", "1"),
        ("RATE_LIMIT_BURST", "2"),
        ("TRUSTED_PROXIES", "127.0.0.0/8"),
    ])
    .await;
    let url = format!("{}/api/orders/nothing-here", stack.order);
    for _ in 0..2 {
        assert_eq!(get_forwarded(&stack, &url, "203.0.113.1").await.0, 404);
    }
    let (status, message) = get_forwarded(&stack, &url, "203.0.113.1").await;
    assert_eq!(status, 429);
    assert!(message.contains("203.0.113.1"), "{message}");
    // Another client behind the same proxy has its own bucket.
    assert_eq!(get_forwarded(&stack, &url, "203.0.113.2").await.0, 404);
    // A client that writes its own header first is still the address the
    // proxy appended.
    let (status, message) = get_forwarded(&stack, &url, "198.51.100.1, 203.0.113.1").await;
    assert_eq!(status, 429);
    assert!(message.contains("203.0.113.1"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_a_forwarded_header_changes_nothing() {
    let stack =
        Stack::start_with(&[("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "2")]).await;
    let url = format!("{}/api/orders/nothing-here", stack.order);
    for client in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(get_forwarded(&stack, &url, client).await.0, 404);
    }
    let (status, message) = get_forwarded(&stack, &url, "203.0.113.3").await;
    assert_eq!(status, 429);
    assert!(message.contains("127.0.0.1"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics_report_every_circuit_breaker() {
    let stack = Stack::start().await;
    let order = stack.get_json(&format!("{}/ready", stack.order)).await;
    assert_eq!(order["breakers"]["inventory-http"], "closed", "{order}");
    assert_eq!(order["breakers"]["rabbitmq-publish"], "closed", "{order}");
    let notification = stack
        .get_json(&format!("{}/ready", stack.notification))
        .await;
    assert_eq!(notification["breakers"]["smtp"], "closed", "{notification}");

    let metrics = stack.get_text(&format!("{}/metrics", stack.order)).await;
    for (state, value) in [("closed", 1.0), ("open", 0.0), ("half_open", 0.0)] {
        let labels = [("breaker", "inventory-http"), ("state", state)];
        assert_eq!(
            sample(&metrics, "shop_circuit_breaker_state", &labels),
            Some(value),
            "{state}: {metrics}"
        );
    }
    for gauge in ["shop_outbox_pending", "shop_dead_letters_waiting"] {
        assert_eq!(
            sample(&metrics, gauge, &[]),
            Some(0.0),
            "{gauge}: {metrics}"
        );
    }
}
