//! A rolling upgrade: an instance of the inventory service built from an
//! earlier commit of this repository runs beside the current build, both
//! consuming one queue, while the current order service emits
//! `order.created` version 2, which the earlier build does not read. The
//! earlier build must treat it as transient (retried until an upgraded
//! instance takes it), and both must read the additive fields the other
//! side writes: nothing dead-lettered, nothing lost, stock exact.
//!
//! The earlier build is `PREVIOUS_INVENTORY_BIN`, which `./scripts/test.sh`
//! builds from the commit pinned in scripts/lib/previous-build.sh.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use e2e_tests::{ADMIN_TOKEN, Stack, eventually, eventually_within};
use serde_json::Value;

/// The earlier build, running as a process until dropped.
struct PreviousInventory {
    child: Child,
    log: std::path::PathBuf,
}

impl PreviousInventory {
    fn start(stack: &Stack) -> PreviousInventory {
        let bin = std::env::var("PREVIOUS_INVENTORY_BIN").expect(
            "PREVIOUS_INVENTORY_BIN names the earlier build of the inventory service; \
             ./scripts/test.sh builds it (scripts/lib/previous-build.sh)",
        );
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("previous-inventory-{}.log", stack.id));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&bin)
            .env_clear()
            .envs(stack.inventory_settings())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the earlier build {bin}: {e}"));
        PreviousInventory { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PreviousInventory {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_build_beside_the_current_one_on_one_queue_loses_and_dead_letters_nothing() {
    let _alone = crate::one_at_a_time().await;
    // Quick retries: the earlier build hands a version 2 back through the
    // delay queue, and either instance may take it next.
    let stack = Stack::start_with(&[("RETRY_BASE_MS", "50"), ("RETRY_CAP_MS", "200")]).await;
    let product = stack.create_product(100, 0, 1.5).await;
    let previous = PreviousInventory::start(&stack);
    eventually("the earlier build to consume", || async {
        previous.log().contains("consuming").then_some(())
    })
    .await;

    let mut orders = Vec::new();
    for _ in 0..30 {
        let response = stack
            .place_order(&stack.email("upgrade"), &product, 2)
            .await;
        assert_eq!(response.status(), 202);
        let order: Value = response.json().await.unwrap();
        orders.push(order["orderId"].as_str().unwrap().to_string());
    }
    for order in &orders {
        let decided = eventually_within("each order decided", Duration::from_secs(90), || async {
            let order = stack.order(order).await;
            (order["status"] != "PENDING").then_some(order)
        })
        .await;
        assert_eq!(decided["status"], "CONFIRMED", "{decided}");
    }
    // The earlier build met version 2 and handed it back instead of
    // dead-lettering it.
    let log = previous.log();
    let handed_back = log.matches("is newer than this consumer reads").count();
    assert!(
        handed_back > 0,
        "the earlier build never met a version 2 order.created; its log:\n{log}"
    );

    // Cancels are version 1 with a field the earlier build does not know:
    // whichever instance takes one gives the stock back.
    for order in &orders[..10] {
        let (status, body) = stack
            .admin_call(
                reqwest::Method::POST,
                &format!("{}/api/orders/{order}/cancel", stack.order),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let stock = eventually("the cancelled orders' stock back", || async {
        let p = stack.product(&product).await;
        (p["reserved"] == 40).then_some(p)
    })
    .await;
    assert_eq!(stock["stock"], 60, "{stock}");

    // Nothing dead-lettered by either build (both archive into one collection).
    let dead = stack
        .admin_get_json(&format!(
            "{}/admin/dead-letters?status=DEAD",
            stack.inventory
        ))
        .await;
    assert_eq!(dead["items"], serde_json::json!([]), "{dead}");

    // The current build's history says which orders waited for it.
    let mut retried = 0;
    for order in &orders {
        let history = stack
            .http
            .get(format!("{}/api/orders/{order}/history", stack.order))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        retried += history["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| {
                i["kind"] == "retried"
                    && i["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("is newer than this consumer reads"))
            })
            .count();
    }
    assert!(retried > 0, "no history shows a version 2 handed back");
}
