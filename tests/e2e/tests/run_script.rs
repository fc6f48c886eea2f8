//! `./scripts/run.sh` as a user runs it, across the process boundary: the
//! real script on free ports, with its own run directory, databases and AMQP
//! namespace, beside whatever else uses the shared RabbitMQ, MongoDB and
//! MailDev. A service killed with SIGKILL comes back on its port while the
//! others keep answering, and Ctrl-C stops everything the script started
//! and nothing else.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use e2e_tests::{ADMIN_TOKEN, create_product, eventually_within};
use serde_json::{Value, json};
use shared::CancellationToken;

/// run.sh builds the services before it starts them: seconds when cargo
/// test has left the dependencies compiled, minutes in a cold target
/// directory.
const STARTUP_LIMIT: Duration = Duration::from_secs(900);
/// A killed service must answer again within this.
const RESTART_LIMIT: Duration = Duration::from_secs(30);
/// What else cargo sets for a test besides `CARGO_PKG_*` and
/// `CARGO_MANIFEST_*`.
const CARGO_TEST_VARIABLES: [&str; 5] = [
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sh_restarts_a_killed_service_and_ctrl_c_stops_only_what_it_started() {
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
    let mut run = RunScript::start(&id, ports);
    // Shown when the test fails, with run.sh's output.
    let started = Instant::now();
    let progress = |what: &str| eprintln!("{:6.1}s {what}", started.elapsed().as_secs_f64());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let [order, inventory, notification] = ports.map(|port| format!("http://127.0.0.1:{port}"));

    run.wait_until_ready(&http, &[&order, &inventory, &notification])
        .await;
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
    for port in ports {
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

/// `./scripts/run.sh` in a process group of its own, so that the test can
/// signal it and everything it started, as a terminal's Ctrl-C does. Dropped,
/// it kills the group: a failed test leaves nothing running, and prints the
/// script's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sh_with_two_replicas_serves_through_nginx_and_rides_out_a_killed_instance() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let ports = free_ports();
    let mut run = RunScript::start_with(
        &id,
        ports,
        &[
            ("REPLICAS", "2".into()),
            ("INSTANCE_PORT_BASE", free_instance_base().to_string()),
        ],
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let [order, inventory, notification] = ports.map(|port| format!("http://127.0.0.1:{port}"));
    run.wait_until_ready(&http, &[&order, &inventory, &notification])
        .await;
    for label in ["order-service", "inventory-service", "notification-service"] {
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
    for port in ports {
        assert!(
            !port_open(port),
            "nginx's port {port} still open after Ctrl-C"
        );
    }
}

struct RunScript {
    child: Child,
    dir: PathBuf,
}

impl RunScript {
    fn start(id: &str, ports: [u16; 3]) -> RunScript {
        Self::start_with(id, ports, &[])
    }

    /// run.sh with `extra` variables set as well.
    fn start_with(
        id: &str,
        [order, inventory, notification]: [u16; 3],
        extra: &[(&str, String)],
    ) -> RunScript {
        let (target_dir, profile) = build_location();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("run-script-{id}"));
        fs::create_dir_all(&dir).unwrap();
        let output = fs::File::create(dir.join("output")).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/run.sh");
        // As from a terminal, where Ctrl-C is live. A test run started as a
        // background job of a non-interactive shell inherits SIGINT ignored,
        // and bash can neither trap nor reset a signal ignored on entry, so
        // the script would never see the Ctrl-C this test sends.
        let mut command = Command::new("env");
        command.args(["--default-signal=INT", script]);
        // Cargo sets these for this test. Seen by the cargo in run.sh, they
        // would count as a changed environment for the build scripts that
        // read them (ring's), so each build would redo the other's work.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || CARGO_TEST_VARIABLES.contains(&&*name)
            {
                command.env_remove(&*name);
            }
        }
        let child = command
            .env("ORDER_PORT", order.to_string())
            .env("INVENTORY_PORT", inventory.to_string())
            .env("NOTIFICATION_PORT", notification.to_string())
            .env("BUILD_PROFILE", profile)
            .env("CARGO_TARGET_DIR", target_dir)
            .env("RUN_DIR", dir.join("run"))
            .env("MONGODB_DATABASE_PREFIX", format!("t_{id}_"))
            .env("AMQP_NAMESPACE", format!("t-{id}."))
            // The broker deletes this test's queues 15 minutes after it ends.
            .env("AMQP_QUEUE_EXPIRES_MS", "900000")
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("ADMIN_EMAIL", format!("admin-{id}@example.com"))
            .env_remove("MONGODB_DATABASE")
            .envs(extra.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .process_group(0)
            .spawn()
            .expect("scripts/run.sh starts");
        RunScript { child, dir }
    }

    /// What run.sh printed so far, stdout and stderr together.
    fn output(&self) -> String {
        fs::read_to_string(self.dir.join("output")).unwrap_or_default()
    }

    /// The pid run.sh recorded for the service's current process.
    fn pid(&self, service: &str) -> Option<u32> {
        self.instance_pid(&format!("{service}-service"))
    }

    /// The pid run.sh recorded for an instance (`order-service-2`).
    fn instance_pid(&self, label: &str) -> Option<u32> {
        let file = self.dir.join(format!("run/{label}.pid"));
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    async fn wait_until_ready(&mut self, http: &reqwest::Client, urls: &[&str]) {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("run.sh exited with {status} before the services were ready");
            }
            let mut all = true;
            for url in urls {
                all &= ready(http, url).await;
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "services not ready in time");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGINT to the whole group, as Ctrl-C in a terminal sends it; waits
    /// for run.sh to exit.
    async fn interrupt(&mut self) -> ExitStatus {
        assert!(signal(&format!("-{}", self.child.id()), "INT"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "run.sh still runs 60s after SIGINT"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RunScript {
    fn drop(&mut self) {
        // The whole group, even if run.sh itself has exited: what it
        // started must not outlive the test.
        signal(&format!("-{}", self.child.id()), "KILL");
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- output of scripts/run.sh (logs in {}) ----\n{}",
                self.dir.join("run/logs").display(),
                self.output()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
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

/// Where `cargo test` built this test: run.sh builds the services there,
/// with the same profile, so that the dependencies are already compiled.
fn build_location() -> (PathBuf, String) {
    // <target>/<profile>/deps/run_script-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let profile = profile_dir.file_name().unwrap().to_string_lossy().into();
    (profile_dir.parent().unwrap().to_path_buf(), profile)
}

async fn ready(http: &reqwest::Client, url: &str) -> bool {
    match http.get(format!("{url}/ready")).send().await {
        Ok(response) => response.status() == 200,
        Err(_) => false,
    }
}

/// A POST of one unit of `product` for this test's customer.
fn order_request(
    http: &reqwest::Client,
    order: &str,
    id: &str,
    product: &str,
) -> reqwest::RequestBuilder {
    http.post(format!("{order}/api/orders")).json(&json!({
        "customerId": format!("c-{id}"),
        "customerEmail": format!("c-{id}@example.com"),
        "items": [{ "productId": product, "quantity": 1 }],
    }))
}

async fn place_order(http: &reqwest::Client, order: &str, id: &str, product: &str) -> String {
    let response = order_request(http, order, id, product)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let order: Value = response.json().await.unwrap();
    order["orderId"].as_str().unwrap().to_string()
}

/// Places an order as a careful client does behind a proxy: with an
/// Idempotency-Key, retrying after a 503 (nginx's answer when the instance
/// it had sent the request to died) until it is accepted.
async fn place_order_retrying(
    http: &reqwest::Client,
    order: &str,
    id: &str,
    product: &str,
    key: &str,
) -> String {
    for _ in 0..5 {
        let response = order_request(http, order, id, product)
            .header("idempotency-key", key)
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            202 | 200 => {
                let order: Value = response.json().await.unwrap();
                return order["orderId"].as_str().unwrap().to_string();
            }
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => panic!(
                "POST /api/orders answered {other}: {}",
                response.text().await.unwrap()
            ),
        }
    }
    panic!("order {key} still refused after 5 tries")
}

/// The order's status once it has left PENDING.
async fn final_status(http: &reqwest::Client, order: &str, id: &str) -> String {
    eventually_within(
        &format!("order {id} decided"),
        Duration::from_secs(60),
        || async {
            let order: Value = http
                .get(format!("{order}/api/orders/{id}"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let status = order["status"].as_str()?;
            (status != "PENDING").then(|| status.to_string())
        },
    )
    .await
}

/// `kill -SIGNAL TARGET`: a pid, or minus a process group id. False if
/// nothing got it.
fn signal(target: &str, signal: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A base for run.sh's INSTANCE_PORT_BASE: base+1 to base+29 are free now.
fn free_instance_base() -> u16 {
    (200..400)
        .map(|hundreds| hundreds * 100)
        .find(|base| (1..30).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("a free range of 30 ports between 20000 and 40000")
}

/// Three ports nothing listens on now.
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    [0, 1, 2].map(|i| listeners[i].local_addr().unwrap().port())
}

fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn env_port(name: &str, default: u16) -> u16 {
    std::env::var(name)
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(default)
}
