//! `./scripts/run.sh` as a user runs it, across the process boundary: the
//! real script on free ports, with its own run directory, databases and AMQP
//! namespace, beside whatever else uses the shared RabbitMQ, MongoDB and
//! MailDev. A service killed with SIGKILL comes back on its port while the
//! others keep answering, and Ctrl-C stops everything the script started
//! and nothing else.

use std::time::{Duration, Instant};

use crate::script::*;
use e2e_tests::{create_product, eventually_within};
use serde_json::Value;
use shared::CancellationToken;

/// A killed service must answer again within this.
const RESTART_LIMIT: Duration = Duration::from_secs(30);
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sh_restarts_a_killed_service_and_ctrl_c_stops_only_what_it_started() {
    let _alone = crate::one_at_a_time().await;
    let infrastructure = [
        ("RabbitMQ", 5672),
        ("MongoDB", env_port("MONGO_PORT", 27017)),
        ("SMTP", env_port("SMTP_PORT", 1025)),
    ];
    for (name, port) in infrastructure {
        assert!(
            port_open(port),
            "{name} must already run on {port} (./scripts/test.sh starts it)"
        );
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let ports = free_ports();
    let mut run = RunScript::start(&id, &ports);
    // Shown when the test fails, with run.sh's output.
    let started = Instant::now();
    let progress = |what: &str| eprintln!("{:6.1}s {what}", started.elapsed().as_secs_f64());
    let http = client();
    let [order, inventory, notification] = ports.urls(["order", "inventory", "notification"]);

    run.wait_until_ready(&http, &ports).await;
    progress("all three ready");
    let product = create_product(&http, &inventory, &format!("cat-{id}"), 100, 0, 5.0).await;
    let before = place_order(&http, &order, &id, &product).await;
    assert_eq!(final_status(&http, &order, &before).await, "CONFIRMED");
    progress("first order confirmed");

    let watch = Watch::start(&http, &[&order, &notification]);
    let killed = run.pid("inventory").expect("run.sh wrote inventory's pid");
    assert!(signal(&killed.to_string(), "KILL"), "kill -9 {killed}");
    progress("inventory killed");
    // Accepted unchecked while the inventory is down; the saga finishes it.
    let during = place_order(&http, &order, &id, &product).await;
    let restarted = eventually_within(
        "inventory-service restarted and ready on its port",
        RESTART_LIMIT,
        || async {
            let pid = run.pid("inventory").filter(|pid| *pid != killed)?;
            ready(&http, &inventory).await.then_some(pid)
        },
    )
    .await;
    progress("inventory ready again");
    let after = place_order(&http, &order, &id, &product).await;
    for placed in [&during, &after] {
        assert_eq!(final_status(&http, &order, placed).await, "CONFIRMED");
    }
    progress("both orders placed around the kill confirmed");
    let unanswered = watch.stop().await;
    assert!(
        unanswered.is_empty(),
        "order and notification must answer while inventory restarts: {unanswered:#?}"
    );
    let output = run.output();
    for line in [
        format!("inventory-service (pid {killed}) was killed by SIGKILL; restarting it in 1s"),
        format!("inventory-service restarted (pid {restarted})"),
    ] {
        assert!(output.contains(&line), "run.sh did not say {line:?}");
    }

    let status = run.interrupt().await;
    progress("run.sh exited after SIGINT");
    assert!(status.success(), "run.sh exited with {status}");
    for (_, port) in ports.iter() {
        assert!(!port_open(port), "port {port} still open after Ctrl-C");
    }
    for (name, port) in infrastructure {
        assert!(port_open(port), "{name} on {port} was stopped by run.sh");
    }
    let output = run.output();
    let stopping = output.find("==> Stopping").expect("run.sh says it stops");
    assert!(
        !output[stopping..].contains("restart"),
        "nothing restarts once run.sh stops"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sh_makes_its_own_secrets_and_token_sh_mints_tokens_the_services_take() {
    let _alone = crate::one_at_a_time().await;
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let ports = free_ports();
    let mut run = RunScript::start_without_secrets(&id, &ports);
    let http = client();
    let order = ports.url("order");
    run.wait_until_ready(&http, &ports).await;

    let admin = run.token("--admin");
    assert_eq!(admin.len(), 64, "32 random bytes in hex: {admin}");
    // Its closing lines, once the demo products are seeded.
    let printed = eventually_within(
        "run.sh's URLs and tokens",
        Duration::from_secs(30),
        || async {
            let output = run.output();
            output.contains("Token of customer c1").then_some(output)
        },
    )
    .await;
    assert!(printed.contains(&admin), "run.sh prints the admin token");
    let status = |url: String, token: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // The token.sh customer token (signed by its Python) is taken by the service.
    let mine = format!("{order}/api/customers/c-{id}/orders");
    assert_eq!(
        status(mine.clone(), run.token(&format!("c-{id}"))).await,
        200
    );
    assert_eq!(status(mine, run.token("someone-else")).await, 403);
    let admin_route = format!("{order}/api/orders/status/PENDING");
    assert_eq!(status(admin_route.clone(), admin.clone()).await, 200);
    // The old published development token is nothing here.
    assert_eq!(status(admin_route, "dev-admin-token".into()).await, 401);

    use std::os::unix::fs::PermissionsExt;
    let secrets = run.run_dir().join("dev-secrets.env");
    let mode = std::fs::metadata(&secrets).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{} is private", secrets.display());
    let status = run.interrupt().await;
    assert!(status.success(), "run.sh exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sh_with_two_replicas_serves_through_nginx_and_rides_out_a_killed_instance() {
    let _alone = crate::one_at_a_time().await;
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let ports = free_ports();
    let mut run = RunScript::start_with(
        &id,
        &ports,
        &[
            ("REPLICAS", "2".into()),
            ("INSTANCE_PORT_BASE", free_instance_base().to_string()),
        ],
    );
    let http = client();
    let [order, inventory] = ports.urls(["order", "inventory"]);
    run.wait_until_ready(&http, &ports).await;
    for label in shared::registry::all()
        .iter()
        .map(|service| &service.service)
    {
        for i in [1, 2] {
            assert!(
                run.instance_pid(&format!("{label}-{i}")).is_some(),
                "{label}-{i} runs"
            );
        }
    }
    let product = create_product(&http, &inventory, &format!("cat-{id}"), 100, 0, 5.0).await;
    // nginx passes the caller's correlation id through.
    let response = http
        .get(format!("{order}/health"))
        .header("x-correlation-id", format!("corr-{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-correlation-id"],
        format!("corr-{id}").as_str()
    );
    // nginx refuses a body over 64 KiB itself, in the services' shape.
    let response = http
        .post(format!("{order}/api/orders"))
        .header("content-type", "application/json")
        .body(vec![b' '; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], "payload_too_large", "{error}");

    // One order instance gone. A POST nginx had already sent to it is not
    // sent again (it may have had its effect): the client gets 503 with
    // Retry-After and retries with the same Idempotency-Key. Every other
    // request goes to the live instance.
    let killed = run.instance_pid("order-service-1").unwrap();
    assert!(signal(&killed.to_string(), "KILL"), "kill -9 {killed}");
    let mut placed = Vec::new();
    for n in 0..6 {
        let key = format!("{id}-{n}");
        placed.push(place_order_retrying(&http, &order, &id, &product, &key).await);
    }
    for id in &placed {
        assert_eq!(final_status(&http, &order, id).await, "CONFIRMED");
    }
    let mine: Value = http
        .get(format!("{order}/api/customers/c-{id}/orders"))
        .bearer_auth(e2e_tests::customer_token(&format!("c-{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        mine["items"].as_array().unwrap().len(),
        placed.len(),
        "a retried order is one order: {mine}"
    );

    let status = run.interrupt().await;
    assert!(status.success(), "run.sh exited with {status}");
    for (_, port) in ports.iter() {
        assert!(
            !port_open(port),
            "nginx's port {port} still open after Ctrl-C"
        );
    }
}

/// Probes services every 200 ms until stopped, and lists the probes that
/// got no 200 from `/ready`.
struct Watch {
    stop: CancellationToken,
    probes: tokio::task::JoinHandle<Vec<String>>,
}

impl Watch {
    fn start(http: &reqwest::Client, urls: &[&str]) -> Watch {
        let stop = CancellationToken::new();
        let (http, urls) = (http.clone(), urls.iter().map(|u| u.to_string()).collect());
        let probes = tokio::spawn(Self::probe(http, urls, stop.clone()));
        Watch { stop, probes }
    }

    async fn probe(
        http: reqwest::Client,
        urls: Vec<String>,
        stop: CancellationToken,
    ) -> Vec<String> {
        let mut unanswered = Vec::new();
        while !stop.is_cancelled() {
            for url in &urls {
                if !ready(&http, url).await {
                    unanswered.push(format!("{url}/ready at {:?}", Instant::now()));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unanswered
    }

    async fn stop(self) -> Vec<String> {
        self.stop.cancel();
        self.probes.await.unwrap()
    }
}
