//! The inventory service's HTTP contract and low-stock alerts.

use e2e_tests::{ADMIN_TOKEN, Stack, emails_to, eventually};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_need_the_admin_token_a_unique_sku_and_a_price_in_cents() {
    let stack = Stack::start().await;
    let url = format!("{}/api/products", stack.inventory);
    let body = json!({ "sku": format!("SKU-{}", stack.id), "name": "Lamp", "category": "home", "price": 30.0, "stock": 3 });

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
    assert_eq!(
        stack
            .http
            .post(&url)
            .bearer_auth("wrong")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        stack
            .http
            .post(&url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let duplicate = stack
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 409);

    let fraction =
        json!({ "sku": "other", "name": "Lamp", "category": "home", "price": 1.005, "stock": 3 });
    let refused = stack
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&fraction)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["fields"][0]["field"],
        "price"
    );

    let negative =
        json!({ "sku": "neg", "name": "Lamp", "category": "home", "price": 1.0, "stock": -1 });
    let refused = stack
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&negative)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["fields"][0]["field"],
        "stock"
    );

    assert_eq!(
        stack
            .http
            .get(format!("{url}/missing"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_low_stock_email_goes_to_the_admin_per_crossing() {
    let stack = Stack::start().await;
    let product = stack.create_product(10, 3, 1.0).await;
    let admin = format!("admin-{}@example.com", stack.id);
    let set_stock = |stock: i64| {
        let url = format!("{}/api/products/{product}/stock", stack.inventory);
        let http = stack.http.clone();
        async move {
            let response = http
                .put(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({ "stock": stock }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    set_stock(2).await; // crosses: alert
    set_stock(1).await; // still low: no alert
    eventually("the first alert", || async {
        (!emails_to(&admin).await.is_empty()).then_some(())
    })
    .await;

    let low: Value = stack
        .admin_get_json(&format!("{}/api/products/low-stock", stack.inventory))
        .await;
    assert!(
        low["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["productId"] == product)
    );

    set_stock(8).await; // back above: re-armed
    set_stock(0).await; // crosses again: second alert
    eventually("the second alert", || async {
        (emails_to(&admin).await.len() >= 2).then_some(())
    })
    .await;
    assert_eq!(emails_to(&admin).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_are_listed_by_category() {
    let stack = Stack::start().await;
    let a = stack.create_product(1, 0, 1.0).await;
    let b = stack.create_product(1, 0, 1.0).await;
    let page: Value = stack
        .get_json(&format!(
            "{}/api/products/category/cat-{}",
            stack.inventory, stack.id
        ))
        .await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["productId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![b.as_str(), a.as_str()], "newest first");
}
