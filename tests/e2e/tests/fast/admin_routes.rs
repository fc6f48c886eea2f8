//! Operator routes: the stuck-saga finder and its gauge on the order
//! service, and sending FAILED notifications again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use e2e_tests::{Stack, emails_to, eventually, sample};
use reqwest::Method;
use serde_json::{Value, json};
use shared::events::{Cause, Event, InventoryReleased, InventoryReserved, OrderLine, PricedLine};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// An envelope as the inventory would publish it.
fn envelope<T: Event>(data: T) -> Vec<u8> {
    serde_json::to_vec(&Cause::request("e2e", "corr-e2e").emit(data)).unwrap()
}

async fn place(stack: &Stack, product: &str) -> String {
    let response = stack.place_order(&stack.email("stuck"), product, 1).await;
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["orderId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The stuck-saga finder's answer to `query`.
async fn stuck(stack: &Stack, query: &str) -> Value {
    let (status, page) = stack
        .admin_call(
            Method::GET,
            &format!("{}/admin/sagas/stuck?{query}", stack.order),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page
}

fn ids(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["orderId"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stuck_saga_finder_lists_orders_nobody_answered_oldest_first_with_the_step_they_wait_for()
 {
    let stack = Stack::start().await;
    let product = stack.create_product(10, 0, 5.0).await;
    stack.stop_inventory();
    let older = place(&stack, &product).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let younger = place(&stack, &product).await;

    let all = stuck(&stack, "olderThanSeconds=0").await;
    assert_eq!(ids(&all), vec![older.as_str(), younger.as_str()], "{all}");
    assert_eq!(all["nextCursor"], Value::Null);
    let first = &all["items"][0];
    assert_eq!(first["status"], "PENDING");
    assert_eq!(first["customerId"], "c-1");
    assert_eq!(
        first["waitingFor"],
        "the inventory's answer (inventory.reserved or inventory.reservation_failed)"
    );
    assert!(first["ageSeconds"].as_u64().unwrap() >= 2, "{first}");
    assert!(all["items"][1]["ageSeconds"].as_u64().unwrap() < 2, "{all}");
    assert_eq!(
        first["createdAt"],
        stack.order(&older).await["createdAt"],
        "{first}"
    );

    // Younger than N seconds: not listed; the default N is 60.
    assert_eq!(
        ids(&stuck(&stack, "olderThanSeconds=1").await),
        vec![older.as_str()]
    );
    assert!(ids(&stuck(&stack, "").await).is_empty());

    // A page at a time, oldest first.
    let page = stuck(&stack, "olderThanSeconds=0&limit=1").await;
    assert_eq!(ids(&page), vec![older.as_str()]);
    let cursor = page["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let next = stuck(
        &stack,
        &format!("olderThanSeconds=0&limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(ids(&next), vec![younger.as_str()]);
    assert_eq!(next["nextCursor"], Value::Null);

    // Admin only; an age below 0 or past ten years is a 400.
    let url = format!("{}/admin/sagas/stuck", stack.order);
    assert_eq!(stack.http.get(&url).send().await.unwrap().status(), 401);
    for query in ["olderThanSeconds=-1", "olderThanSeconds=315360001"] {
        let (status, body) = stack
            .admin_call(Method::GET, &format!("{url}?{query}"), None)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
    }

    // The inventory's answer ends the older saga: it is no longer listed.
    let reserved = envelope(InventoryReserved {
        order_id: older.clone(),
        lines: vec![PricedLine {
            product_id: product.clone(),
            quantity: 1,
            unit_price_cents: 500,
        }],
        attempt: 1,
    });
    stack.publish_raw(InventoryReserved::TYPE, &reserved).await;
    assert_eq!(stack.final_order(&older).await["status"], "CONFIRMED");
    assert_eq!(
        ids(&stuck(&stack, "olderThanSeconds=0").await),
        vec![younger.as_str()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_failed_by_the_deadline_is_listed_until_the_inventory_releases_its_hold() {
    let stack = Stack::start_with(&[("SAGA_TIMEOUT_SECONDS", "1")]).await;
    let product = stack.create_product(10, 0, 5.0).await;
    stack.stop_inventory();
    let order = place(&stack, &product).await;
    assert_eq!(stack.final_order(&order).await["status"], "FAILED");

    let page = stuck(&stack, "olderThanSeconds=0").await;
    assert_eq!(ids(&page), vec![order.as_str()], "{page}");
    assert_eq!(page["items"][0]["status"], "FAILED");
    assert_eq!(
        page["items"][0]["waitingFor"],
        "the inventory to release its hold (inventory.released)"
    );

    let released = envelope(InventoryReleased {
        order_id: order.clone(),
        lines: vec![OrderLine {
            product_id: product,
            quantity: 1,
        }],
        attempt: 1,
    });
    stack.publish_raw(InventoryReleased::TYPE, &released).await;
    eventually("the released order to leave the list", || async {
        ids(&stuck(&stack, "olderThanSeconds=0").await)
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_metrics_give_the_age_of_the_oldest_unfinished_saga() {
    const GAUGE: &str = "shop_saga_oldest_unfinished_age_seconds";
    let stack = Stack::start().await;
    let metrics = format!("{}/metrics", stack.order);
    let text = stack.get_text(&metrics).await;
    assert_eq!(sample(&text, GAUGE, &[]), Some(0.0), "none yet:\n{text}");
    assert!(text.contains(&format!("# TYPE {GAUGE} gauge\n")), "{text}");

    let product = stack.create_product(10, 0, 5.0).await;
    stack.stop_inventory();
    place(&stack, &product).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    place(&stack, &product).await;
    let text = stack.get_text(&metrics).await;
    let age = sample(&text, GAUGE, &[]).expect(GAUGE);
    assert!((2.0..60.0).contains(&age), "the older order's age:\n{text}");
}

/// An SMTP server that refuses every recipient for good (550), as a mail
/// server does for an address it will never take, until `accept` is set;
/// from then on it passes each new connection through to MailDev. The
/// notification service under test sends through it, so its notifications
/// fail for real and then go out for real, with no knob in the service.
async fn refusing_smtp(accept: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if accept.load(Ordering::SeqCst) {
                tokio::spawn(pass_to_maildev(client));
            } else {
                tokio::spawn(refuse_every_recipient(client));
            }
        }
    });
    port
}

async fn refuse_every_recipient(stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 refuser ESMTP\r\n").await;
    while let Ok(Some(line)) = lines.next_line().await {
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 refuser\r\n",
            "RCPT" => b"550 5.1.1 no such mailbox here\r\n",
            "DATA" => b"554 5.5.1 no valid recipients\r\n",
            "QUIT" => b"221 bye\r\n",
            _ => b"250 ok\r\n",
        };
        if write.write_all(reply).await.is_err() || verb == "QUIT" {
            return;
        }
    }
}

async fn pass_to_maildev(mut client: TcpStream) {
    let port: u16 = std::env::var("SMTP_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1025);
    if let Ok(mut maildev) = TcpStream::connect(("127.0.0.1", port)).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut maildev).await;
    }
}

/// Records a manual notification to `to` and returns its id.
async fn send_manual(stack: &Stack, to: &str) -> String {
    let (status, body) = stack
        .admin_call(
            Method::POST,
            &format!("{}/api/notifications", stack.notification),
            Some(json!({ "recipient": to, "subject": "Your invoice", "body": "Attached." })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["notificationId"].as_str().unwrap().to_string()
}

/// Waits until the notification is in `status` and returns it.
async fn notification_in(stack: &Stack, id: &str, status: &str) -> Value {
    eventually(&format!("notification {id} {status}"), || async {
        let n = stack
            .admin_get_json(&format!("{}/api/notifications/{id}", stack.notification))
            .await;
        (n["status"] == status).then_some(n)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_notification_goes_out_when_an_operator_sends_it_again() {
    let accept = Arc::new(AtomicBool::new(false));
    let smtp_port = refusing_smtp(accept.clone()).await.to_string();
    let stack = Stack::start_with(&[("SMTP_PORT", smtp_port.as_str())]).await;
    let first_to = stack.email("first");
    let second_to = stack.email("second");
    let first = send_manual(&stack, &first_to).await;
    let second = send_manual(&stack, &second_to).await;
    for id in [&first, &second] {
        let failed = notification_in(&stack, id, "FAILED").await;
        assert_eq!(failed["attempts"], 1, "a refusal fails at once: {failed}");
        assert!(
            failed["lastError"].as_str().unwrap().contains("550"),
            "{failed}"
        );
    }

    // The mail server takes the addresses now; the operator sends one again.
    accept.store(true, Ordering::SeqCst);
    let url = format!("{}/admin/notifications", stack.notification);
    let (status, again) = stack
        .admin_call(Method::POST, &format!("{url}/{first}/retry"), None)
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["notificationId"], first.as_str());
    assert_eq!(again["status"], "PENDING");
    assert_eq!(again["attempts"], 0);
    assert!(
        again["lastError"].as_str().unwrap().contains("550"),
        "the last error stays on record: {again}"
    );
    assert!(again["retriedAt"].is_string(), "{again}");
    let sent = notification_in(&stack, &first, "SENT").await;
    assert_eq!(sent["attempts"], 1, "{sent}");
    let mails = emails_to(&first_to).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0]["subject"], "Your invoice");

    // A SENT one is not sent again, an unknown one is not found, and only
    // an admin may ask.
    let (status, body) = stack
        .admin_call(Method::POST, &format!("{url}/{first}/retry"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = stack
        .admin_call(Method::POST, &format!("{url}/no-such-id/retry"), None)
        .await;
    assert_eq!(status, 404, "{body}");
    let anonymous = stack
        .http
        .post(format!("{url}/{second}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let anonymous = stack
        .http
        .post(format!("{url}/retry"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // In bulk: a filter on another kind takes nothing; an empty one takes
    // every FAILED notification, here the second.
    let bulk = format!("{url}/retry");
    let (status, body) = stack
        .admin_call(
            Method::POST,
            &bulk,
            Some(json!({ "kind": "ORDER_CONFIRMED" })),
        )
        .await;
    assert_eq!((status, &body["requeued"]), (200, &json!(0)), "{body}");
    let (status, body) = stack
        .admin_call(Method::POST, &bulk, Some(json!({ "kind": "NOT_A_KIND" })))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = stack.admin_call(Method::POST, &bulk, Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["requeued"], 1, "{body}");
    assert_eq!(body["notificationIds"], json!([second]));
    notification_in(&stack, &second, "SENT").await;
    assert_eq!(emails_to(&second_to).await.len(), 1);
    let (_, body) = stack
        .admin_call(Method::POST, &bulk, Some(json!({ "kind": "MANUAL" })))
        .await;
    assert_eq!(body["requeued"], 0, "none FAILED any more: {body}");
}
