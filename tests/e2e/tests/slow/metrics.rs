//! `/metrics` of every service, after one order went through the saga:
//! `promtool check metrics` (Debian's `prometheus` package; `PROMTOOL`
//! names another binary) finds nothing wrong with the classic text format,
//! a scraper that asks for OpenMetrics gets it, the counts and histograms
//! saw that order, and the metric names are exactly those the alert rules
//! and the dashboard were written against (deploy/monitoring/metrics.txt).

use std::{
    collections::BTreeSet,
    io::Write,
    process::{Command, Stdio},
};

use e2e_tests::{Stack, emails_to, eventually, sample};
use reqwest::header::{ACCEPT, CONTENT_TYPE};

/// `promtool check metrics` on `text`: what it printed, if it complained.
fn promtool_complaints(text: &str) -> Option<String> {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{promtool} did not start ({e}): ./scripts/test.sh installs it")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (!output.status.success() || !said.trim().is_empty()).then_some(said)
}

/// Each metric family's name and type, from the `# TYPE` lines of the
/// classic format (where a counter's family name ends in `_total`).
fn families(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// The families the monitoring files may use: `NAME TYPE LABEL...` a line,
/// `#` comments.
fn documented_families() -> BTreeSet<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/monitoring/metrics.txt"
    );
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .filter(|(name, _)| name.starts_with("shop_"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exposes_well_formed_metrics_that_saw_an_order_through_the_saga() {
    let _alone = crate::one_at_a_time().await;
    let stack = Stack::start().await;
    let product = stack.create_product(10, 0, 5.0).await;
    let email = stack.email("metrics");
    let placed = stack.place_order(&email, &product, 1).await;
    assert_eq!(placed.status(), 202);
    let order: serde_json::Value = placed.json().await.unwrap();
    let id = order["orderId"].as_str().unwrap();
    assert_eq!(stack.final_order(id).await["status"], "CONFIRMED");
    eventually("the confirmation email", || async {
        (!emails_to(&email).await.is_empty()).then_some(())
    })
    .await;
    // And a message nobody can read, which the inventory dead-letters.
    stack.publish_raw("order.created", b"not an event").await;
    let inventory_metrics = format!("{}/metrics", stack.inventory);
    eventually("the dead letter counted and archived", || async {
        let text = stack.get_text(&inventory_metrics).await;
        let dead = [("event_type", "unreadable"), ("class", "permanent")];
        (sample(&text, "shop_dead_letters_total", &dead) == Some(1.0)
            && sample(&text, "shop_dead_letters_waiting", &[]) == Some(1.0))
        .then_some(())
    })
    .await;

    let scrape = |url: String, accept: Option<&'static str>| {
        let http = stack.http.clone();
        async move {
            let mut request = http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let kind = response.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_string();
            (kind, response.text().await.unwrap())
        }
    };
    let mut exposed = BTreeSet::new();
    let mut texts = Vec::new();
    for base in [&stack.order, &stack.inventory, &stack.notification] {
        let url = format!("{base}/metrics");
        let (kind, text) = scrape(url.clone(), None).await;
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        if let Some(complaints) = promtool_complaints(&text) {
            panic!("promtool check metrics on {url}:\n{complaints}\n{text}");
        }
        exposed.extend(families(&text));

        let (kind, openmetrics) = scrape(
            url,
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        )
        .await;
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        // There a counter's family is named without its `_total`.
        assert!(
            openmetrics.contains("# TYPE shop_http_requests counter\n"),
            "{openmetrics}"
        );
        texts.push(text);
    }
    let [order, inventory, _] = &texts[..] else {
        unreachable!()
    };

    // The order: accepted, then confirmed, its saga timed, its POST timed.
    for outcome in ["accepted", "confirmed"] {
        assert_eq!(
            sample(order, "shop_orders_total", &[("outcome", outcome)]),
            Some(1.0),
            "{outcome}: {order}"
        );
    }
    assert_eq!(
        sample(
            order,
            "shop_saga_duration_seconds_count",
            &[("outcome", "confirmed")]
        ),
        Some(1.0),
        "{order}"
    );
    let post = [
        ("method", "POST"),
        ("route", "/api/orders"),
        ("status_class", "2xx"),
    ];
    assert_eq!(
        sample(order, "shop_http_request_duration_seconds_count", &post),
        Some(1.0),
        "{order}"
    );
    // Its reservation and its answer, each handled once.
    let handled = |text: &str, event_type: &str| {
        sample(
            text,
            "shop_event_handling_duration_seconds_count",
            &[("event_type", event_type), ("outcome", "done")],
        )
    };
    assert_eq!(
        handled(inventory, "order.created"),
        Some(1.0),
        "{inventory}"
    );
    assert_eq!(handled(order, "inventory.reserved"), Some(1.0), "{order}");
    assert_eq!(
        sample(
            inventory,
            "shop_event_handling_duration_seconds_count",
            &[("event_type", "unreadable"), ("outcome", "dead_letter")]
        ),
        Some(1.0),
        "{inventory}"
    );
    // Its email: sent, and the SMTP conversation timed. Counted a moment
    // after MailDev has it, so asked until then.
    let notifications = format!("{}/metrics", stack.notification);
    let notification = eventually("the email counted", || async {
        let text = scrape(notifications.clone(), None).await.1;
        sample(&text, "shop_emails_total", &[("outcome", "sent")])
            .is_some_and(|sent| sent >= 1.0)
            .then_some(text)
    })
    .await;
    assert_eq!(
        sample(&notification, "shop_emails_total", &[("outcome", "sent")]),
        sample(
            &notification,
            "shop_smtp_send_duration_seconds_count",
            &[("outcome", "sent")]
        ),
        "{notification}"
    );
    assert_eq!(
        sample(
            &notification,
            "shop_circuit_breaker_state",
            &[("breaker", "smtp"), ("state", "closed")]
        ),
        Some(1.0),
        "{notification}"
    );

    // The monitoring files speak of exactly what the services expose. A
    // family appears with its first series; this run never retries an
    // event (shared's consumer_panics test counts retries).
    let documented = documented_families();
    let undocumented: Vec<_> = exposed.difference(&documented).collect();
    let missing: Vec<_> = documented
        .difference(&exposed)
        .filter(|(name, _)| name != "shop_event_retries_total")
        .collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "exposed but not in deploy/monitoring/metrics.txt: {undocumented:?}; \
         listed there but exposed by no service: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_client_invents_mints_no_series() {
    let _alone = crate::one_at_a_time().await;
    let stack = Stack::start().await;
    let invented = reqwest::Method::from_bytes(b"PRBXYZ").unwrap();
    for _ in 0..2 {
        let response = stack
            .http
            .request(invented.clone(), format!("{}/health", stack.order))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    }
    let text = stack.get_text(&format!("{}/metrics", stack.order)).await;
    assert!(!text.contains("PRBXYZ"), "{text}");
    let counted = sample(
        &text,
        "shop_http_request_duration_seconds_count",
        &[("method", "OTHER")],
    );
    assert_eq!(counted, Some(2.0), "{text}");
}
