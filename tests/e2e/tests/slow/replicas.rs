//! Two instances of every service behind nginx (`REPLICAS=2
//! ./scripts/run.sh`), as separate processes sharing the broker's queues and
//! each service's database, with nothing coordinating them but those:
//!
//! - 50 concurrent orders of one unit for a stock of 10, reserved by both
//!   inventory instances, end with exactly 10 CONFIRMED;
//! - one instance of each service killed with SIGKILL under load loses no
//!   order, takes no unit twice, and what it had in hand (unacked
//!   deliveries, claimed outbox batches, claimed emails) is taken over;
//! - both order instances relay the outbox, and no event they publish has a
//!   second effect: one outcome email per order.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use crate::script::*;
use e2e_tests::{
    ADMIN_TOKEN, create_product, customer_token, eventually_within, outcome_emails, sample,
};
use serde_json::Value;

/// Orders placed while the instances are killed.
const UNDER_LOAD: usize = 80;
/// Placed before the kill, of those.
const BEFORE_KILL: usize = 20;
/// A killed notification instance's claimed emails wait for their lease (20
/// s when claimed at birth, 60 s when claimed by the poller) before the
/// other instance takes them.
const EMAILS_LIMIT: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_each_service_share_the_saga_and_ride_out_a_kill_of_one_of_each() {
    let _alone = crate::one_at_a_time().await;
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let ports = free_ports();
    let base = free_instance_base();
    let mut run = RunScript::start_with(
        &id,
        &ports,
        &[
            ("REPLICAS", "2".into()),
            ("INSTANCE_PORT_BASE", base.to_string()),
            // Every request of this test comes from one address; the
            // limiter would be testing itself.
            ("RATE_LIMIT_PER_SECOND", "0".into()),
            ("ORDERS_PER_CUSTOMER_PER_MINUTE", "0".into()),
        ],
    );
    let http = client();
    let [order, inventory, notification] = ports.urls(["order", "inventory", "notification"]);
    // Shown when the test fails, with run.sh's output.
    let started = std::time::Instant::now();
    let progress = |what: &str| eprintln!("{:6.1}s {what}", started.elapsed().as_secs_f64());
    run.wait_until_ready(&http, &ports).await;
    progress("two instances of each service ready behind nginx");

    // Contention: 50 at once for 10 units.
    let scarce = create_product(&http, &inventory, &format!("cat-{id}"), 10, 0, 5.0).await;
    let contended: Vec<String> = futures::future::join_all((0..50).map(|n| {
        let (http, order, id, scarce) = (&http, &order, &id, &scarce);
        async move { place_order_retrying(http, order, id, scarce, &format!("{id}-c{n}")).await }
    }))
    .await;
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for placed in &contended {
        *statuses
            .entry(final_status(&http, &order, placed).await)
            .or_default() += 1;
    }
    assert_eq!(
        statuses,
        HashMap::from([("CONFIRMED".into(), 10), ("REJECTED".into(), 40)]),
        "50 orders for 10 units"
    );
    assert_eq!(stock(&http, &inventory, &scarce).await, 0);
    progress("50 orders for 10 units: 10 confirmed");
    // Both inventory instances reserved: each has acked deliveries from the
    // shared queue.
    for i in [1, 2] {
        let metrics = http
            .get(format!("http://127.0.0.1:{}/metrics", base + 10 + i))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let handled = sample(
            &metrics,
            "shop_event_handling_duration_seconds_count",
            &[("event_type", "order.created"), ("outcome", "done")],
        );
        assert!(
            handled.is_some_and(|n| n > 0.0),
            "inventory-service-{i} handled none of the reservations:\n{metrics}"
        );
    }

    // Load, and one instance of each service killed in the middle of it.
    let plenty = create_product(&http, &inventory, &format!("cat-{id}"), 1000, 0, 5.0).await;
    let (placed_tx, mut placed_rx) = tokio::sync::mpsc::unbounded_channel();
    let load = {
        let (http, order, id, plenty) = (http.clone(), order.clone(), id.clone(), plenty.clone());
        tokio::spawn(async move {
            let mut clients = tokio::task::JoinSet::new();
            let mut pace = tokio::time::interval(Duration::from_millis(50));
            for n in 0..UNDER_LOAD {
                pace.tick().await;
                let (http, order, id, plenty) =
                    (http.clone(), order.clone(), id.clone(), plenty.clone());
                let placed_tx = placed_tx.clone();
                clients.spawn(async move {
                    let key = format!("{id}-l{n}");
                    let placed = place_order_retrying(&http, &order, &id, &plenty, &key).await;
                    let _ = placed_tx.send(placed);
                });
            }
            clients.join_all().await.len()
        })
    };
    let mut under_load = Vec::new();
    while under_load.len() < BEFORE_KILL {
        under_load.push(placed_rx.recv().await.expect("the load runs"));
    }
    for label in [
        "order-service-1",
        "inventory-service-1",
        "notification-service-1",
    ] {
        let pid = run.instance_pid(label).unwrap();
        assert!(signal(&pid.to_string(), "KILL"), "kill -9 {label} ({pid})");
    }
    progress("order-, inventory- and notification-service-1 killed");
    assert_eq!(
        load.await.unwrap(),
        UNDER_LOAD,
        "every client got an answer"
    );
    while let Ok(placed) = placed_rx.try_recv() {
        under_load.push(placed);
    }
    assert_eq!(under_load.len(), UNDER_LOAD);
    for placed in &under_load {
        assert_eq!(final_status(&http, &order, placed).await, "CONFIRMED");
    }
    assert_eq!(
        stock(&http, &inventory, &plenty).await,
        1000 - UNDER_LOAD as i64,
        "each confirmed order took its unit once"
    );
    let placed: HashSet<String> = contended.iter().chain(&under_load).cloned().collect();
    assert_eq!(
        placed.len(),
        50 + UNDER_LOAD,
        "a retried order is one order"
    );
    assert_eq!(
        customer_orders(&http, &order, &format!("c-{id}")).await,
        placed,
        "the customer has exactly the orders placed"
    );
    progress("every order under load confirmed, each unit taken once");

    // One outcome email per order. Once its notification is SENT nothing
    // sends it again, so the count below is final.
    let orders: Vec<&str> = contended
        .iter()
        .chain(&under_load)
        .map(String::as_str)
        .collect();
    for placed in &orders {
        eventually_within(
            &format!("the outcome email of order {placed} SENT"),
            EMAILS_LIMIT,
            || outcome_sent(&http, &notification, placed),
        )
        .await;
    }
    progress("every outcome notification SENT");
    let wanted: HashSet<&str> = orders.iter().copied().collect();
    let emails = outcome_emails(&format!("c-{id}@example.com"), &wanted).await;
    let mut redelivered = 0;
    for placed in &orders {
        let copies = emails.get(*placed).cloned().unwrap_or_default();
        assert_eq!(
            copies.len(),
            1,
            "order {placed}: {} outcome emails (Message-ID → copies: {copies:?})",
            copies.len()
        );
        redelivered += copies.values().sum::<usize>() - 1;
    }
    // A kill between the SMTP server's acceptance and the SENT mark sends
    // the same email (same Message-ID) again, which mail systems drop.
    progress(&format!(
        "one outcome email per order; {redelivered} SMTP redeliveries of one with its Message-ID"
    ));

    let status = run.interrupt().await;
    assert!(status.success(), "run.sh exited with {status}");
}

/// Every order of the customer, page by page.
async fn customer_orders(http: &reqwest::Client, order: &str, customer: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    let mut cursor = String::new();
    loop {
        let url = format!("{order}/api/customers/{customer}/orders?limit=100{cursor}");
        let page = get_json(http, &url, &customer_token(customer))
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            found.insert(item["orderId"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return found,
        }
    }
}

async fn stock(http: &reqwest::Client, inventory: &str, product: &str) -> i64 {
    let url = format!("{inventory}/api/products/{product}");
    // Product reads are public; a token does no harm.
    let product = get_json(http, &url, ADMIN_TOKEN).await.unwrap();
    product["stock"].as_i64().unwrap()
}

/// Whether the order's one outcome notification is SENT; panics if the
/// order has more than one.
async fn outcome_sent(http: &reqwest::Client, notification: &str, order: &str) -> Option<()> {
    let url = format!("{notification}/api/notifications?orderId={order}");
    let page = get_json(http, &url, ADMIN_TOKEN).await?;
    let outcomes: Vec<&Value> = page["items"]
        .as_array()?
        .iter()
        .filter(|n| n["kind"] != "ORDER_CANCELLED")
        .collect();
    assert!(outcomes.len() <= 1, "order {order}: {outcomes:?}");
    (outcomes.first()?["status"] == "SENT").then_some(())
}
