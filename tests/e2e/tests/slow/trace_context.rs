//! One trace follows an order through the three services. The stack runs
//! as users run it (`./scripts/run.sh`, with `LOG_FORMAT=json` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a stand-in collector); an
//! order placed with a W3C `traceparent` leaves that trace id in the AMQP
//! headers of every event it causes, in the log lines of all three
//! services, and in the spans each service exports over OTLP/HTTP.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::script::*;
use e2e_tests::{create_product, customer_token, emails_to, eventually_within, rabbitmq_url};
use futures::StreamExt;
use lapin::{
    Connection,
    options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use poem::{EndpointExt, Route, handler, listener::TcpListener, post, web::Data};
use serde_json::{Value, json};

/// What the stand-in OTLP/HTTP collector received: one body per export.
type Exports = Arc<Mutex<Vec<Vec<u8>>>>;

#[handler]
fn collect(body: Vec<u8>, exports: Data<&Exports>) -> &'static str {
    exports.lock().unwrap().push(body);
    ""
}

/// Serves `POST /v1/traces` on a free port; returns its base URL.
async fn start_collector(exports: Exports) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let app = Route::new().at("/v1/traces", post(collect)).data(exports);
    tokio::spawn(poem::Server::new(TcpListener::bind(format!("127.0.0.1:{port}"))).run(app));
    format!("http://127.0.0.1:{port}")
}

fn hex(bytes: usize) -> String {
    let mut out = uuid::Uuid::new_v4().simple().to_string();
    out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    out.truncate(bytes * 2);
    out
}

fn bytes_of(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_sent_with_an_order_follows_it_through_every_event_log_and_exported_span() {
    let _alone = crate::one_at_a_time().await;
    let exports = Exports::default();
    let collector = start_collector(exports.clone()).await;
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let ports = free_ports();
    let mut run = RunScript::start_with(
        &id,
        &ports,
        &[
            ("LOG_FORMAT", "json".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
    );
    let http = client();
    let [order, inventory] = ports.urls(["order", "inventory"]);
    run.wait_until_ready(&http, &ports).await;

    // Every event of this stack, copied to a queue of the test's own.
    let connection = Connection::connect(&rabbitmq_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let tap = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            tap.name().as_str().into(),
            format!("t-{id}.e-commerce.events").as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut tapped = channel
        .basic_consume(
            tap.name().as_str().into(),
            "trace-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let product = create_product(&http, &inventory, &format!("cat-{id}"), 10, 0, 5.0).await;
    let trace = hex(16);
    let caller = format!("00-{trace}-{}-01", hex(8));
    let email = format!("c-{id}@example.com");
    let response = http
        .post(format!("{order}/api/orders"))
        .bearer_auth(customer_token(&format!("c-{id}")))
        .header("traceparent", &caller)
        .json(&json!({
            "customerId": format!("c-{id}"),
            "customerEmail": email,
            "items": [{ "productId": product, "quantity": 1 }],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let placed: Value = response.json().await.unwrap();
    let order_id = placed["orderId"].as_str().unwrap().to_string();
    let status = final_status(&http, &order, &order_id).await;
    assert_eq!(status, "CONFIRMED");

    // Each event of the saga carries the trace in its AMQP headers, each
    // from a span of its own.
    let expected = [
        "order.created",
        "inventory.reserved",
        "order.confirmed",
        "notification.sent",
    ];
    let mut seen = BTreeSet::new();
    let mut parents = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < expected.len() {
        let delivery = tokio::time::timeout_at(deadline, tapped.next())
            .await
            .unwrap_or_else(|_| panic!("only {seen:?} of {expected:?} seen"))
            .unwrap()
            .unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let body: Value = serde_json::from_slice(&delivery.data).unwrap();
        let kind = delivery.routing_key.to_string();
        // Only this order's events (the product's creation has none).
        if !body.to_string().contains(&order_id) || !expected.contains(&kind.as_str()) {
            continue;
        }
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let traceparent = match headers.inner().get("traceparent") {
            Some(AMQPValue::LongString(value)) => value.to_string(),
            other => panic!("{kind} has no traceparent header: {other:?}"),
        };
        assert!(
            traceparent.starts_with(&format!("00-{trace}-")),
            "{kind}: {traceparent}, not in trace {trace}"
        );
        assert_ne!(traceparent, caller, "{kind} came from a span of its own");
        parents.insert(traceparent);
        seen.insert(kind);
    }
    assert_eq!(parents.len(), expected.len(), "{parents:?}");
    assert!(
        !emails_to(&email).await.is_empty(),
        "the confirmation was sent before notification.sent"
    );

    // Each service logged lines in that trace, as JSON with the span's ids.
    for service in ["order-service", "inventory-service", "notification-service"] {
        let log = run.run_dir().join(format!("logs/{service}.log"));
        let traced = eventually_within(
            &format!("{service} logging in trace {trace}"),
            Duration::from_secs(10),
            || async {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<Value> = text
                    .lines()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .filter(|line: &Value| line["span"]["trace_id"] == trace.as_str())
                    .collect();
                (!lines.is_empty()).then_some(lines)
            },
        )
        .await;
        for line in &traced {
            let span_id = line["span"]["span_id"].as_str().unwrap_or_default();
            assert_eq!(span_id.len(), 16, "{service}: {line}");
        }
    }

    // And each exported its spans of that trace to the collector.
    let trace_bytes = bytes_of(&trace);
    for service in ["order-service", "inventory-service", "notification-service"] {
        eventually_within(
            &format!("{service} exporting spans of trace {trace}"),
            Duration::from_secs(10),
            || async {
                exports
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|body| contains(body, &trace_bytes) && contains(body, service.as_bytes()))
                    .then_some(())
            },
        )
        .await;
    }
    let _ = connection.close(200, "done".into()).await;
}
