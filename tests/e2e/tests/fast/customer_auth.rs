//! Customers see and act on their own orders only, across the wire: a JWT's
//! `sub` is the customer, someone else's order is 404 (its existence does
//! not leak), acting for another customer is 403, a bad token is 401 with a
//! JSON body saying what is wrong with it, and the admin token acts for
//! anyone.

use e2e_tests::{ADMIN_TOKEN, JWT_SECRET, Stack, customer_token};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `method` `url` with `token` (none if `None`); the status and JSON body.
async fn call(
    stack: &Stack,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = stack.http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Places an order for `customer` with its own token; the order's id.
async fn order_of(stack: &Stack, customer: &str, product: &str) -> String {
    let (status, body) = call(
        stack,
        Method::POST,
        &format!("{}/api/orders", stack.order),
        Some(&customer_token(customer)),
        Some(
            json!({ "customerId": customer, "customerEmail": stack.email(customer),
                     "items": [{ "productId": product, "quantity": 1 }] }),
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["orderId"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_reads_lists_and_cancels_only_its_own_orders() {
    let stack = Stack::start().await;
    let product = stack.create_product(10, 0, 3.0).await;
    let alice = format!("alice-{}", stack.id);
    let bob = format!("bob-{}", stack.id);
    let (alice_token, bob_token) = (customer_token(&alice), customer_token(&bob));
    let order = order_of(&stack, &alice, &product).await;
    let url = format!("{}/api/orders/{order}", stack.order);

    let (status, body) = call(&stack, Method::GET, &url, Some(&alice_token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["customerId"], alice.as_str());

    // Bob gets what a missing order gets: he cannot tell it exists.
    let (status, theirs) = call(&stack, Method::GET, &url, Some(&bob_token), None).await;
    let missing = format!(
        "{}/api/orders/0190aaaa-0000-7000-8000-000000000000",
        stack.order
    );
    let (_, nothing) = call(&stack, Method::GET, &missing, Some(&bob_token), None).await;
    assert_eq!(status, 404, "{theirs}");
    assert_eq!(theirs["error"], nothing["error"]);
    let cancel = format!("{url}/cancel");
    let (status, _) = call(&stack, Method::POST, &cancel, Some(&bob_token), None).await;
    assert_eq!(status, 404);
    assert_eq!(stack.order(&order).await["customerId"], alice.as_str());
    assert_ne!(stack.order(&order).await["status"], "CANCELLED");

    // Listing: one's own, never another's.
    let alices = format!("{}/api/customers/{alice}/orders", stack.order);
    let (status, page) = call(&stack, Method::GET, &alices, Some(&alice_token), None).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (status, refusal) = call(&stack, Method::GET, &alices, Some(&bob_token), None).await;
    assert_eq!(status, 403, "{refusal}");
    assert_eq!(refusal["error"], "forbidden");

    // Ordering in someone else's name is refused and writes nothing.
    let (status, refusal) = call(
        &stack,
        Method::POST,
        &format!("{}/api/orders", stack.order),
        Some(&bob_token),
        Some(
            json!({ "customerId": alice, "customerEmail": stack.email("bob"),
                     "items": [{ "productId": product, "quantity": 1 }] }),
        ),
    )
    .await;
    assert_eq!(status, 403, "{refusal}");
    assert!(
        refusal["message"].as_str().unwrap().contains("sub"),
        "{refusal}"
    );
    let (_, page) = call(&stack, Method::GET, &alices, Some(&alice_token), None).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");

    // The notifications about her order are hers alone.
    stack.final_order(&order).await;
    let about = format!("{}/api/notifications?orderId={order}", stack.notification);
    let mine = e2e_tests::eventually("alice's confirmation recorded", || async {
        let (_, page) = call(&stack, Method::GET, &about, Some(&alice_token), None).await;
        let items = page["items"].as_array()?.clone();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(mine[0]["customerId"], alice.as_str());
    let (status, page) = call(&stack, Method::GET, &about, Some(&bob_token), None).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"], json!([]), "bob sees alice's notifications");
    let one = format!(
        "{}/api/notifications/{}",
        stack.notification,
        mine[0]["notificationId"].as_str().unwrap()
    );
    assert_eq!(
        call(&stack, Method::GET, &one, Some(&alice_token), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&stack, Method::GET, &one, Some(&bob_token), None)
            .await
            .0,
        404
    );

    // She cancels it herself; the admin token could have, for anyone.
    let (status, body) = call(&stack, Method::POST, &cancel, Some(&alice_token), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&stack, Method::GET, &url, Some(ADMIN_TOKEN), None).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("CANCELLED"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_expired_forged_and_malformed_tokens_are_401_with_the_reason() {
    let stack = Stack::start().await;
    let url = format!("{}/api/customers/c-1/orders", stack.order);
    let sign = |claims: Value, secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let later = chrono::Utc::now().timestamp() + 3600;
    let expired = sign(json!({ "sub": "c-1", "exp": 1_000_000 }), JWT_SECRET);
    let forged = sign(
        json!({ "sub": "c-1", "exp": later }),
        "someone-else's-secret-32-bytes-long",
    );
    let admin_in_disguise = sign(json!({ "sub": "c-1", "exp": later }), ADMIN_TOKEN);
    let not_yet = sign(
        json!({ "sub": "c-1", "exp": later + 3600, "nbf": later }),
        JWT_SECRET,
    );
    for (token, reason) in [
        (None, "Bearer token is required"),
        (Some(expired.as_str()), "expired"),
        (Some(forged.as_str()), "signature"),
        (Some(admin_in_disguise.as_str()), "signature"),
        (Some(not_yet.as_str()), "not valid yet"),
        (Some("not-a-jwt"), "well-formed JWT"),
    ] {
        let (status, body) = call(&stack, Method::GET, &url, token, None).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["error"], "unauthorized", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(reason),
            "{token:?}: {body}"
        );
    }
    // A customer's token is not an admin token.
    let (status, body) = call(
        &stack,
        Method::GET,
        &format!("{}/api/orders/status/PENDING", stack.order),
        Some(&customer_token("c-1")),
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("admin token"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_offers_both_bearer_schemes_for_swagger_ui() {
    let stack = Stack::start().await;
    let spec = stack
        .get_json(&format!("{}/openapi.json", stack.order))
        .await;
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["AdminAuth"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["CustomerAuth"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["CustomerAuth"]["bearerFormat"], "JWT", "{schemes}");
    let cancel = &spec["paths"]["/api/orders/{order_id}/cancel"]["post"];
    assert_eq!(
        cancel["security"],
        json!([{ "CustomerAuth": [] }]),
        "{cancel}"
    );
}
