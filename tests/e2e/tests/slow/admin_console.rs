//! The admin console (`/admin/` on the order service) in a real browser:
//! `tests/browser/console.test.mjs` drives Debian's Chromium through
//! playwright-core against a stack started here. `./scripts/test.sh`
//! installs Chromium and the script's packages; without them these tests
//! fail and say what is missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use e2e_tests::{ADMIN_TOKEN, Stack, eventually};
use reqwest::Method;
use serde_json::{Value, json};
use shared::events::{Envelope, OrderCancelled, OrderStatus};

/// What running the browser script takes: node, the script's packages
/// (`npm ci` in tests/browser) and Chromium.
struct BrowserTest {
    dir: PathBuf,
    chromium: String,
}

impl BrowserTest {
    /// Fails, saying how to install it, when something is missing.
    fn installed() -> Self {
        let dir = std::env::var_os("CONSOLE_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../browser"));
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let node = Command::new("node").arg("--version").output();
        assert!(
            node.is_ok_and(|out| out.status.success()),
            "node is not installed: the admin console's browser test needs it \
             (./scripts/test.sh installs it; or apt-get install nodejs npm)"
        );
        assert!(
            dir.join("node_modules/playwright-core/package.json")
                .is_file(),
            "playwright-core is not installed in {}: run `npm ci` there \
             (./scripts/test.sh does)",
            dir.display()
        );
        assert!(
            Path::new(&chromium).is_file(),
            "Chromium is not at {chromium}: apt-get install chromium (./scripts/test.sh does), \
             or set CHROMIUM to the browser"
        );
        BrowserTest { dir, chromium }
    }

    /// Runs the script with `vars`, printing its steps (the harness shows
    /// them when the test fails), and fails the test unless it exits 0.
    async fn run(&self, name: &str, vars: Vec<(&'static str, String)>) {
        let failure_screenshot = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("admin-console-{name}-failure.png"));
        let mut command = Command::new("node");
        command
            .arg(self.dir.join("console.test.mjs"))
            .current_dir(&self.dir)
            .env("CHROMIUM", &self.chromium)
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("FAILURE_SCREENSHOT", &failure_screenshot)
            .envs(vars);
        // Blocking, but off the runtime's workers: the services under test
        // run on them.
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("node runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("{stdout}{stderr}");
        assert!(
            output.status.success(),
            "the browser test ({name}) failed with {}:\n{stdout}{stderr}",
            output.status
        );
    }
}

/// An `order.cancelled` event in a version nobody speaks: the inventory
/// dead-letters it at once.
fn retired_version_cancel(order_id: &str) -> Vec<u8> {
    let mut event = serde_json::to_value(Envelope::new(
        "test",
        "corr-console",
        None,
        OrderCancelled {
            order_id: order_id.into(),
            customer_id: "c".into(),
            customer_email: "console@example.com".into(),
            previous_status: OrderStatus::Pending,
            attempt: 1,
        },
    ))
    .unwrap();
    event["eventVersion"] = json!(0);
    serde_json::to_vec(&event).unwrap()
}

/// Where the named screenshot goes: `CONSOLE_SCREENSHOT` (the picture
/// in docs/operations.md, when test.sh is asked for it), else the scratch directory.
fn screenshot_path(name: &str) -> String {
    std::env::var("CONSOLE_SCREENSHOT").unwrap_or_else(|_| scratch_screenshot(name))
}

/// Under the test's scratch directory, whatever `CONSOLE_SCREENSHOT` says.
fn scratch_screenshot(name: &str) -> String {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("admin-console-{name}.png"))
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_shows_a_dead_letter_and_replays_it_in_the_browser() {
    let _alone = crate::one_at_a_time().await;
    let browser = BrowserTest::installed();
    let stack = Stack::start().await;
    let low = stack.create_product(2, 5, 3.5).await;
    stack
        .publish_raw("order.cancelled", &retired_version_cancel("o-console"))
        .await;
    let dead = stack.dead_letters(&stack.inventory, "DEAD", 1).await;
    let id = dead[0]["deadLetterId"].as_str().unwrap().to_string();

    // The console's page and the API's admin routes answer side by side,
    // and the forwarder shows the inventory's dead letter as the inventory does.
    let page = stack
        .http
        .get(format!("{}/admin/", stack.order))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/admin/console.js"));
    let (status, own) = stack
        .admin_call(
            Method::GET,
            &format!("{}/admin/dead-letters", stack.order),
            None,
        )
        .await;
    assert_eq!((status, &own["items"]), (200, &json!([])), "{own}");
    let (status, forwarded) = stack
        .admin_call(
            Method::GET,
            &format!(
                "{}/admin/services/inventory/admin/dead-letters?status=DEAD",
                stack.order
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{forwarded}");
    assert_eq!(forwarded["items"][0]["deadLetterId"], id.as_str());

    browser
        .run(
            "replay",
            vec![
                ("CONSOLE_URL", format!("{}/admin/", stack.order)),
                ("CONSOLE_TEST_MODE", "replay".into()),
                ("DEAD_LETTER_ID", id.clone()),
                ("LOW_STOCK_PRODUCT_ID", low),
                ("EXPECT_IN_PAYLOAD", "\"eventVersion\": 0".into()),
                ("CONSOLE_SCREENSHOT", screenshot_path("replay")),
            ],
        )
        .await;

    // The click really replayed it: the inventory has it REPLAYED, once.
    let (status, letter) = stack
        .admin_call(
            Method::GET,
            &format!("{}/admin/dead-letters/{id}", stack.inventory),
            None,
        )
        .await;
    assert_eq!(status, 200, "{letter}");
    assert_eq!(letter["status"], "REPLAYED", "{letter}");
    assert_eq!(letter["replayCount"], 1, "{letter}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_names_the_service_it_cannot_reach() {
    let _alone = crate::one_at_a_time().await;
    let browser = BrowserTest::installed();
    let stack = Stack::start().await;
    stack.stop_inventory();
    let health = format!("{}/health", stack.inventory);
    eventually("the inventory to stop listening", || async {
        stack.http.get(&health).send().await.is_err().then_some(())
    })
    .await;

    let (status, error) = stack
        .admin_call(
            Method::GET,
            &format!("{}/admin/services/inventory/ready", stack.order),
            None,
        )
        .await;
    assert_eq!(status, 502, "{error}");
    assert_eq!(error["error"], "bad_gateway");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("the inventory service at {}/", stack.inventory)),
        "{message}"
    );
    // Not without the admin token, even to a service that is down.
    let refused = stack
        .http
        .get(format!("{}/admin/services/inventory/ready", stack.order))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    browser
        .run(
            "outage",
            vec![
                ("CONSOLE_URL", format!("{}/admin/", stack.order)),
                ("CONSOLE_TEST_MODE", "outage".into()),
                ("CONSOLE_SCREENSHOT", scratch_screenshot("outage")),
            ],
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_shows_an_orders_timeline_and_retries_its_failed_saga() {
    let _alone = crate::one_at_a_time().await;
    let browser = BrowserTest::installed();
    let mut stack = Stack::start_with(&[("SAGA_TIMEOUT_SECONDS", "2")]).await;
    let product = stack.create_product(5, 0, 2.0).await;
    stack.stop_inventory();
    let response = stack
        .place_order(&stack.email("console-retry"), &product, 1)
        .await;
    assert_eq!(response.status(), 202);
    let order_id = response.json::<Value>().await.unwrap()["orderId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(stack.final_order(&order_id).await["status"], "FAILED");
    // Back, the inventory releases the first attempt's hold: the saga may
    // be retried once the stuck-saga finder no longer lists the order.
    stack.restart_inventory().await;
    eventually("the release to be confirmed", || async {
        let stuck = stack
            .admin_get_json(&format!(
                "{}/admin/sagas/stuck?olderThanSeconds=0",
                stack.order
            ))
            .await;
        (!stuck["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["orderId"] == order_id.as_str()))
        .then_some(())
    })
    .await;

    browser
        .run(
            "retry",
            vec![
                (
                    "CONSOLE_URL",
                    format!("{}/admin/#order?orderId={order_id}", stack.order),
                ),
                ("CONSOLE_TEST_MODE", "retry".into()),
                ("ORDER_ID", order_id.clone()),
                ("CONSOLE_SCREENSHOT", scratch_screenshot("retry")),
            ],
        )
        .await;

    // The click really retried it: attempt 2 ends CONFIRMED.
    let order = stack.final_order(&order_id).await;
    assert_eq!(order["attempt"], 2, "{order}");
    assert_eq!(order["status"], "CONFIRMED", "{order}");
}
