//! An order's history across the three services, and an operator's retry
//! of a FAILED saga, against the real broker, database and SMTP server.

use e2e_tests::{ADMIN_TOKEN, Stack, customer_token, emails_to, eventually};
use serde_json::{Value, json};

/// The order's history as `token` reads it: the status and the body.
async fn read_history(stack: &Stack, order_id: &str, token: &str) -> (u16, Value) {
    let response = stack
        .http
        .get(format!("{}/api/orders/{order_id}/history", stack.order))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Each line as `service kind subject`, the subject being the event type,
/// the status moved to, or the email's outcome.
fn lines(history: &Value) -> Vec<String> {
    history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let subject = match item["kind"].as_str().unwrap() {
                "status_changed" => item["to"].as_str().unwrap(),
                "email" => item["status"].as_str().unwrap(),
                _ => item["eventType"].as_str().unwrap_or("?"),
            };
            format!(
                "{} {} {subject}",
                item["service"].as_str().unwrap(),
                item["kind"].as_str().unwrap()
            )
        })
        .collect()
}

async fn placed(stack: &Stack, email: &str, product: &str) -> String {
    let response = stack.place_order(email, product, 2).await;
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["orderId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Whether `wanted` appear in `lines` in this order (others may come between).
fn in_order(lines: &[String], wanted: &[&str]) -> bool {
    let mut rest = lines.iter();
    wanted.iter().all(|w| rest.any(|line| line == w))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_history_tells_its_life_in_every_service_in_time_order() {
    let stack = Stack::start().await;
    let product = stack.create_product(10, 0, 4.5).await;
    let email = stack.email("history");
    let order_id = placed(&stack, &email, &product).await;
    assert_eq!(stack.final_order(&order_id).await["status"], "CONFIRMED");

    let saga = [
        "order-service status_changed PENDING",
        "order-service event_published order.created",
        "inventory-service event_handled order.created",
        "inventory-service event_published inventory.reserved",
        "order-service event_handled inventory.reserved",
        "order-service status_changed CONFIRMED",
        "order-service event_published order.confirmed",
        "notification-service event_handled order.confirmed",
    ];
    let sent = [
        "notification-service email SENT",
        "notification-service event_published notification.sent",
    ];
    // The email goes out a moment after the order is confirmed: wait for
    // its line, then read the whole life in order.
    let history = eventually("the email in the history", || async {
        let (status, history) = read_history(&stack, &order_id, &customer_token("c-1")).await;
        assert_eq!(status, 200, "{history}");
        lines(&history)
            .contains(&sent[1].to_string())
            .then_some(history)
    })
    .await;
    let life = lines(&history);
    assert!(in_order(&life, &saga), "{life:#?}");
    assert!(in_order(&life, &sent), "{life:#?}");
    assert_eq!(history["orderId"], order_id.as_str());
    assert_eq!(history["incomplete"], serde_json::json!([]), "{history}");

    let items = history["items"].as_array().unwrap();
    let times: Vec<&str> = items.iter().map(|i| i["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by_key(|at| chrono::DateTime::parse_from_rfc3339(at).unwrap());
    assert_eq!(times, sorted, "in time order");

    // Each hop names the event that caused it.
    let find = |service: &str, kind: &str, event_type: &str| {
        items
            .iter()
            .find(|i| i["service"] == service && i["kind"] == kind && i["eventType"] == event_type)
            .unwrap_or_else(|| panic!("{service} {kind} {event_type} in {history}"))
    };
    let created = find("order-service", "event_published", "order.created");
    let handled = find("inventory-service", "event_handled", "order.created");
    assert_eq!(handled["eventId"], created["eventId"]);
    assert_eq!(handled["attempt"], 1);
    let reserved = find("inventory-service", "event_published", "inventory.reserved");
    assert_eq!(reserved["causationId"], created["eventId"]);
    let confirmed = items
        .iter()
        .find(|i| i["kind"] == "status_changed" && i["to"] == "CONFIRMED")
        .unwrap();
    assert_eq!(confirmed["from"], "PENDING");

    // The email line is the email MailDev received.
    let email_line = items.iter().find(|i| i["kind"] == "email").unwrap();
    assert_eq!(email_line["recipient"], email.as_str());
    let mails = emails_to(&email).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    let message_id = mails[0]["messageId"]
        .as_str()
        .or_else(|| mails[0]["headers"]["message-id"].as_str())
        .expect("MailDev shows the Message-ID");
    assert_eq!(
        email_line["messageId"]
            .as_str()
            .unwrap()
            .trim_matches(['<', '>']),
        message_id.trim_matches(['<', '>'])
    );

    // A poison event about the order: the inventory (and the notification
    // service, which also takes order.cancelled) dead-letters it, and the
    // history shows it with the operator's discard.
    let poison = json!({
        "eventId": uuid::Uuid::now_v7(), "eventType": "order.cancelled", "eventVersion": 1,
        "occurredAt": chrono::Utc::now(), "correlationId": "poison", "source": "e2e",
        "data": { "orderId": order_id, "previousStatus": "NOT_A_STATUS" }
    });
    stack
        .publish_raw("order.cancelled", poison.to_string().as_bytes())
        .await;
    let dead = eventually("the poison event in the history", || async {
        let (_, history) = read_history(&stack, &order_id, ADMIN_TOKEN).await;
        history["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["kind"] == "dead_lettered" && i["service"] == "inventory-service")
            .cloned()
    })
    .await;
    assert_eq!(dead["eventType"], "order.cancelled");
    let letter = dead["deadLetterId"].as_str().unwrap();
    let (status, _) = stack
        .admin_call(
            reqwest::Method::POST,
            &format!("{}/admin/dead-letters/{letter}/discard", stack.inventory),
            Some(json!({ "note": "a test's poison" })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, history) = read_history(&stack, &order_id, ADMIN_TOKEN).await;
    let discarded = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "dead_letter_discarded")
        .unwrap_or_else(|| panic!("the discard in {history}"));
    assert_eq!(discarded["detail"], "a test's poison");

    // An admin reads any order's history; another customer none.
    let (status, by_admin) = read_history(&stack, &order_id, ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    assert!(by_admin["items"].as_array().unwrap().len() > items.len());
    let (status, body) = read_history(&stack, &order_id, &customer_token("c-2")).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = read_history(&stack, "no-such-order", ADMIN_TOKEN).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_does_not_answer_is_named_and_the_rest_of_the_history_still_comes() {
    let stack = Stack::start().await;
    let product = stack.create_product(10, 0, 1.0).await;
    let order_id = placed(&stack, &stack.email("partial"), &product).await;
    assert_eq!(stack.final_order(&order_id).await["status"], "CONFIRMED");
    stack.stop_inventory();

    let (status, history) = eventually("the inventory to be gone", || async {
        let (status, history) = read_history(&stack, &order_id, &customer_token("c-1")).await;
        (history["incomplete"].as_array().unwrap().len() == 1).then_some((status, history))
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(history["incomplete"][0]["service"], "inventory-service");
    let lines = lines(&history);
    assert!(
        lines.contains(&"order-service status_changed CONFIRMED".to_string()),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("inventory-service")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_saga_retried_by_an_operator_ends_confirmed_with_stock_taken_once() {
    let mut stack = Stack::start_with(&[("SAGA_TIMEOUT_SECONDS", "2")]).await;
    let product = stack.create_product(10, 0, 3.0).await;
    stack.stop_inventory();
    let email = stack.email("retried");
    let order_id = placed(&stack, &email, &product).await;
    let failed = stack.final_order(&order_id).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["attempt"], 1);

    let retry = format!("{}/admin/orders/{order_id}/retry", stack.order);
    // The inventory has not released what the first attempt may hold.
    let (status, refused) = stack.admin_call(reqwest::Method::POST, &retry, None).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("released"),
        "{refused}"
    );

    // Back, the inventory takes the first attempt's order.created and its
    // order.failed: whatever it held goes back, and the order may retry.
    stack.restart_inventory().await;
    let retried = eventually("the retry to be taken", || async {
        let (status, body) = stack.admin_call(reqwest::Method::POST, &retry, None).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(retried["status"], "PENDING", "{retried}");
    assert_eq!(retried["attempt"], 2);

    let confirmed = stack.final_order(&order_id).await;
    assert_eq!(confirmed["status"], "CONFIRMED", "{confirmed}");
    assert_eq!(confirmed["totalAmount"], 6.0);
    let product = stack.product(&product).await;
    assert_eq!(
        (&product["stock"], &product["reserved"]),
        (&serde_json::json!(8), &serde_json::json!(2)),
        "stock taken once: {product}"
    );

    // A confirmed order is not retried.
    let (status, refused) = stack.admin_call(reqwest::Method::POST, &retry, None).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("CONFIRMED"),
        "{refused}"
    );
    let (status, _) = stack
        .admin_call(
            reqwest::Method::POST,
            &format!("{}/admin/orders/no-such-order/retry", stack.order),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // One email for the failure and one for the confirmation.
    let subjects = eventually("both emails", || async {
        let mails = emails_to(&email).await;
        (mails.len() >= 2).then_some(mails)
    })
    .await;
    assert_eq!(subjects.len(), 2, "{subjects:?}");

    // The inventory's lines of the first run stay when the second run's
    // reservation replaces the first's: its order.failed, and its
    // order.created (which may come late, after a retry, and change nothing).
    let history = eventually("the retry in the history", || async {
        let (_, history) = read_history(&stack, &order_id, ADMIN_TOKEN).await;
        let life = lines(&history);
        let runs_handled = life
            .iter()
            .filter(|l| *l == "inventory-service event_handled order.created")
            .count();
        (in_order(
            &life,
            &[
                "order-service status_changed FAILED",
                "inventory-service event_handled order.failed",
                "order-service status_changed PENDING",
                "order-service event_published order.created",
                "order-service status_changed CONFIRMED",
            ],
        ) && runs_handled >= 2)
            .then_some(history)
    })
    .await;
    let retry_line = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "status_changed" && i["from"] == "FAILED")
        .unwrap();
    assert!(
        retry_line["detail"]
            .as_str()
            .unwrap()
            .contains("retried by an operator (attempt 2)"),
        "{retry_line}"
    );
}
