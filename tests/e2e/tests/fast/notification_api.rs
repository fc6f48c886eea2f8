//! The notification service's HTTP contract, with real SMTP delivery.

use e2e_tests::{ADMIN_TOKEN, Stack, emails_to, eventually};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_notification_is_sent_by_smtp_and_recorded_as_sent() {
    let stack = Stack::start().await;
    let to = stack.email("manual");
    let url = format!("{}/api/notifications", stack.notification);
    let body = json!({ "recipient": to, "subject": "Hello", "body": "Hi there" });
    assert_eq!(
        stack
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let accepted = stack
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let id = accepted.json::<Value>().await.unwrap()["notificationId"]
        .as_str()
        .unwrap()
        .to_string();

    let sent = eventually("SENT", || async {
        let n: Value = stack.admin_get_json(&format!("{url}/{id}")).await;
        (n["status"] == "SENT").then_some(n)
    })
    .await;
    assert_eq!(sent["kind"], "MANUAL");
    assert_eq!(sent["attempts"], 1);
    let mails = emails_to(&to).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["subject"], "Hello");

    let by_status: Value = stack.admin_get_json(&format!("{url}/status/SENT")).await;
    assert!(
        by_status["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["notificationId"] == id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_notification_requests_are_400_and_unknown_ids_404() {
    let stack = Stack::start().await;
    let url = format!("{}/api/notifications", stack.notification);
    let invalid = stack
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "recipient": "nobody", "subject": "", "body": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let error: Value = invalid.json().await.unwrap();
    let fields: Vec<&str> = error["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["recipient", "subject"]);

    // Listing needs an orderId.
    assert_eq!(
        stack
            .http
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        stack
            .http
            .get(format!("{url}/missing"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}
