//! The fault-injection suite: the three services run as separate processes
//! under a steady order load while the suite breaks things for real, then
//! checks invariants over all three databases and the SMTP sink.
//!
//! Run by `./scripts/test.sh` (as part of `cargo test`) or alone with
//! `./scripts/chaos.sh`. It restarts the RabbitMQ application
//! (`rabbitmqctl stop_app` / `start_app`), runs its own `secantusd-rs` so
//! that it can stop the database, puts a switchable TCP proxy in front of
//! MailDev to take SMTP away, and for its last row moves the services to a
//! RabbitMQ cluster of three nodes of its own, to kill one. The services are this same test binary started
//! again with `CHAOS_SERVICE=order|inventory|notification`, so the test
//! needs no separate build; crashes at exact points use the `fail` crate's
//! fail points (see `shared::fault`).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use e2e_tests::{
    ADMIN_TOKEN, JWT_SECRET,
    broker_users::{BrokerUsers, management_url},
    customer_token, eventually_within, outcome_emails, rabbitmq_url,
};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};
use shared::{
    CancellationToken,
    broker::{Outgoing, PublishOutcome, Publisher, Topology},
};
use tokio::net::{TcpListener, TcpStream};

const SERVICES: [&str; 3] = ["inventory", "order", "notification"];
/// Orders per second while a fault is injected.
const RATE: u64 = 30;
/// How long a phase waits for its orders and emails after the fault: more
/// than the longest retry delay (60 s) plus the lease of a crashed sender's
/// notifications (60 s).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// After a broker restart, every queue has its consumer again within this.
const CONSUMERS_BACK_WITHIN: Duration = Duration::from_secs(10);
/// After a cluster node dies, every queue has its consumer again on the
/// others within this: the quorum queues elect new leaders first.
const CLUSTER_CONSUMERS_BACK_WITHIN: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test -- --list`: this binary has no libtest tests to list.
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Ok(service) = std::env::var("CHAOS_SERVICE") {
        return runtime.block_on(run_service(&service));
    }
    runtime.block_on(suite())
}

/// The child process: one service, exactly as its `main.rs` runs it, with
/// fail points armed from `FAILPOINTS`.
async fn run_service(service: &str) -> ExitCode {
    let _failpoints = fail::FailScenario::setup();
    let _telemetry = shared::telemetry::init(service);
    let running = match service {
        "order" => order_service::build(order_service::Config::from_env().unwrap()).await,
        "inventory" => {
            inventory_service::build(inventory_service::Config::from_env().unwrap()).await
        }
        "notification" => {
            notification_service::build(notification_service::Config::from_env().unwrap()).await
        }
        other => panic!("unknown service {other}"),
    };
    match running.expect("service starts").run_until_signal().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{service}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// One row of the results table.
struct Row {
    fault: String,
    sent: u64,
    accepted: usize,
    finished: usize,
    lost: usize,
    duplicated: usize,
    recover: Duration,
    note: String,
}

async fn suite() -> ExitCode {
    let mut chaos = Chaos::start().await;
    let mut rows = Vec::new();

    rows.extend(
        chaos
            .phase("baseline (no fault)", |_| Box::pin(async { String::new() }))
            .await,
    );
    rows.extend(
        chaos
            .phase("1. RabbitMQ restarted 10 times in a row", |c| {
                Box::pin(c.restart_rabbitmq(10))
            })
            .await,
    );
    rows.extend(
        chaos
            .phase("2a. inventory SIGKILLed, restarted", |c| {
                Box::pin(async move {
                    c.kill("inventory");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    c.spawn("inventory").await;
                    String::new()
                })
            })
            .await,
    );
    rows.extend(
        chaos
            .phase("2b. inventory crashed after write, before ack", |c| {
                Box::pin(c.crash_at("inventory", "consumer.before_ack=20*off->return"))
            })
            .await,
    );
    rows.extend(
        chaos
            .phase("3a. order crashed after write, before publish", |c| {
                Box::pin(c.crash_at("order", "relay.before_publish=10*off->return"))
            })
            .await,
    );
    rows.extend(
        chaos
            .phase(
                "3b. order crashed after publish, before outbox delete",
                |c| Box::pin(c.crash_at("order", "relay.after_publish=10*off->return")),
            )
            .await,
    );
    rows.extend(
        chaos
            .phase("4. MongoDB unavailable for 75 s", |c| {
                Box::pin(c.restart_mongodb(Duration::from_secs(75)))
            })
            .await,
    );
    rows.extend(
        chaos
            .phase("5a. SMTP unavailable for 3 minutes", |c| {
                Box::pin(async move {
                    c.smtp_up.store(false, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(180)).await;
                    let pending = c
                        .count(
                            "notification",
                            "notifications",
                            doc! { "status": "PENDING" },
                        )
                        .await;
                    let failed = c
                        .count("notification", "notifications", doc! { "status": "FAILED" })
                        .await;
                    c.smtp_up.store(true, Ordering::SeqCst);
                    if failed > 0 {
                        c.violation(format!(
                            "{failed} notifications FAILED during an SMTP outage"
                        ));
                    }
                    format!("{pending} PENDING while down, {failed} FAILED")
                })
            })
            .await,
    );
    rows.extend(
        chaos
            .phase(
                "5b. notification crashed after SMTP accepted, before SENT",
                |c| Box::pin(c.crash_at("notification", "sender.after_accept=20*off->return")),
            )
            .await,
    );
    rows.extend(
        chaos
            .phase(
                "9. inventory paused (SIGSTOP) past the saga deadline",
                |c| Box::pin(c.pause_inventory(Duration::from_secs(70))),
            )
            .await,
    );
    rows.extend(
        chaos
            .phase("6. duplicate events and poison messages", |c| {
                Box::pin(c.duplicates_and_poison())
            })
            .await,
    );
    rows.extend(
        chaos
            .phase(
                "10. rolling upgrade: an earlier inventory build beside the current one",
                |c| Box::pin(c.rolling_upgrade()),
            )
            .await,
    );
    if chaos.wants("7. ") {
        rows.push(chaos.unroutable().await);
    }
    if chaos.wants("8. ") {
        rows.push(chaos.oversell().await);
    }
    // Last: the services move to a cluster of their own for it.
    if chaos.wants("11. ") {
        chaos.move_to_cluster().await;
    }
    rows.extend(
        chaos
            .phase(
                "11. RabbitMQ cluster: the services' node SIGKILLed, restarted",
                |c| Box::pin(c.kill_cluster_node()),
            )
            .await,
    );

    chaos.stop().await;
    print_table(&rows);
    let violations = chaos.violations.lock().unwrap().clone();
    for violation in &violations {
        eprintln!("VIOLATION: {violation}");
    }
    let failed = violations.len() + rows.iter().map(|r| r.lost + r.duplicated).sum::<usize>();
    if failed == 0 {
        println!("chaos: every invariant held");
        ExitCode::SUCCESS
    } else {
        eprintln!("chaos: {failed} failures");
        ExitCode::FAILURE
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| {:<52} | {:>5} | {:>8} | {:>8} | {:>4} | {:>10} | {:>8} | note |",
        "fault", "sent", "accepted", "finished", "lost", "duplicated", "recover"
    );
    println!(
        "|{:-<54}|{:->7}|{:->10}|{:->10}|{:->6}|{:->12}|{:->10}|---|",
        "", "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<52} | {:>5} | {:>8} | {:>8} | {:>4} | {:>10} | {:>7.1}s | {} |",
            r.fault,
            r.sent,
            r.accepted,
            r.finished,
            r.lost,
            r.duplicated,
            r.recover.as_secs_f64(),
            r.note
        );
    }
    println!();
}

type FaultFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = String> + 'a>>;

struct Chaos {
    id: String,
    dir: PathBuf,
    http: reqwest::Client,
    mongo: mongodb::Client,
    mongo_port: u16,
    mongod: Option<Child>,
    smtp_port: u16,
    smtp_up: Arc<AtomicBool>,
    /// The broker the services are told of (`RABBITMQ_URL`): the shared one,
    /// then the nodes of `cluster`.
    broker: String,
    cluster: Option<Cluster>,
    /// Each service's own broker user on `broker`, with only what it needs:
    /// every fault below is healed within those permissions. (Their source
    /// check, AMQP_SOURCE_USERS, stays off: the rolling upgrade runs a build
    /// from before events carried their publisher's user-id.)
    broker_users: Option<BrokerUsers>,
    ports: HashMap<&'static str, u16>,
    children: HashMap<&'static str, Child>,
    /// Product id → stock it was created with.
    products: Vec<(String, i64)>,
    accepted: Vec<String>,
    /// Orders the saga deadline ended FAILED in the last phase.
    failed: AtomicU64,
    /// Second copies of one email (same Message-ID) since the last phase.
    redelivered: AtomicU64,
    violations: Arc<Mutex<Vec<String>>>,
    shutdown: CancellationToken,
}

impl Chaos {
    async fn start() -> Chaos {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        println!("chaos {id}: logs and database under {}", dir.display());

        let mongo_port = free_port();
        let mut chaos = Chaos {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            mongo: mongodb::Client::with_uri_str(format!("mongodb://127.0.0.1:{mongo_port}"))
                .await
                .unwrap(),
            mongo_port,
            mongod: None,
            smtp_port: 0,
            smtp_up: Arc::new(AtomicBool::new(true)),
            broker: rabbitmq_url(),
            cluster: None,
            broker_users: Some(BrokerUsers::add(&management_url(), &format!("c-{id}.")).await),
            ports: SERVICES.iter().map(|s| (*s, free_port())).collect(),
            children: HashMap::new(),
            products: Vec::new(),
            accepted: Vec::new(),
            failed: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            violations: Arc::default(),
            shutdown: CancellationToken::new(),
            id,
            dir,
        };
        chaos.start_mongodb().await;
        chaos.smtp_port = smtp_proxy(chaos.smtp_up.clone(), chaos.shutdown.clone()).await;
        for service in SERVICES {
            chaos.spawn(service).await;
        }
        for (stock, threshold) in [(100_000, 10), (100_000, 10), (100_000, 10), (40, 5)] {
            let id = chaos.create_product(stock, threshold).await;
            chaos.products.push((id, stock));
        }
        chaos.watch_stock();
        chaos
    }

    fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }

    fn db(&self, service: &str) -> mongodb::Database {
        self.mongo.database(&format!("c_{}_{service}", self.id))
    }

    async fn start_mongodb(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mongodb.log"))
            .unwrap();
        let child = Command::new("secantusd-rs")
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.mongo_port.to_string(),
            ])
            .arg("--storage-path")
            .arg(self.dir.join("mongodb"))
            .args(["--cache-size", "256M"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("secantusd-rs is on PATH (./scripts/test.sh installs it)");
        self.mongod = Some(child);
        wait_until(
            "the chaos MongoDB answers",
            Duration::from_secs(30),
            || async {
                TcpStream::connect(("127.0.0.1", self.mongo_port))
                    .await
                    .is_ok()
            },
        )
        .await;
        // As scripts/lib/infra.sh sets it on the database it starts: a
        // service killed mid-transaction must not hold what it wrote for
        // the default 60 s, the saga's deadline.
        let lifetime: i32 = std::env::var("TRANSACTION_LIFETIME_SECONDS")
            .expect("TRANSACTION_LIFETIME_SECONDS is exported by scripts/lib/infra.sh: run this through ./scripts/test.sh or ./scripts/chaos.sh")
            .parse()
            .unwrap();
        self.mongo
            .database("admin")
            .run_command(doc! { "setParameter": 1, "transactionLifetimeLimitSeconds": lifetime })
            .await
            .expect("setParameter transactionLifetimeLimitSeconds");
    }

    async fn stop_mongodb(&mut self) {
        if let Some(mut child) = self.mongod.take() {
            terminate(&mut child).await;
        }
    }

    /// Starts (or restarts) one service process and waits until it is
    /// ready.
    async fn spawn(&mut self, service: &'static str) {
        self.launch(service, None);
        let url = format!("{}/ready", self.url(service));
        let http = self.http.clone();
        wait_until(
            &format!("{service} ready"),
            Duration::from_secs(60),
            || async {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
    }

    /// Starts one service process; `failpoints` arms crashes.
    fn launch(&mut self, service: &'static str, failpoints: Option<&str>) {
        let mut command = self.command(
            service,
            std::env::current_exe().unwrap(),
            &format!("{service}.log"),
        );
        command
            .env("CHAOS_SERVICE", service)
            .env("PORT", self.ports[service].to_string());
        if let Some(failpoints) = failpoints {
            command.env("FAILPOINTS", failpoints);
        }
        let child = command.spawn().expect("the service process starts");
        self.children.insert(service, child);
    }

    /// `program` run as `service` of this stack (without its port), its
    /// output appended to `log` in the suite's directory.
    fn command(&self, service: &str, program: impl AsRef<std::ffi::OsStr>, log: &str) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .unwrap();
        let mut command = Command::new(program);
        command
            .env(
                "MONGODB_URI",
                format!("mongodb://127.0.0.1:{}", self.mongo_port),
            )
            .env("MONGODB_DATABASE", format!("c_{}_{service}", self.id))
            .env(
                "RABBITMQ_URL",
                self.broker_users
                    .as_ref()
                    .expect("the services' broker users")
                    .url(service, &self.broker),
            )
            .env(
                "AMQP_QUEUE_TYPE",
                if self.cluster.is_some() {
                    "quorum"
                } else {
                    "classic"
                },
            )
            .env("AMQP_NAMESPACE", format!("c-{}.", self.id))
            // Longer than the whole suite: a retry tier is only redeclared
            // when its service restarts.
            .env("AMQP_QUEUE_EXPIRES_MS", "3600000")
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("JWT_SECRET", JWT_SECRET)
            .env("INVENTORY_URL", self.url("inventory"))
            .env("SMTP_PORT", self.smtp_port.to_string())
            .env("ADMIN_EMAIL", format!("admin-{}@example.com", self.id))
            // Retries, dead letters and the saga deadline run on their
            // production defaults: the suite proves that they heal every
            // fault below without an operator.
            .env("RATE_LIMIT_PER_SECOND", "0")
            // Fault 8 sends 300 orders at once, all of which must be taken.
            .env("MAX_IN_FLIGHT_REQUESTS", "0")
            // One customer places the whole load.
            .env("ORDERS_PER_CUSTOMER_PER_MINUTE", "0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("FAILPOINTS")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        command
    }

    /// A rolling upgrade of the inventory under load: an instance built from
    /// an earlier commit (`PREVIOUS_INVENTORY_BIN`, whose consumer does not
    /// read `order.created` version 2) joins the current one on its queue;
    /// the current one is stopped for 10 s, so only the earlier build
    /// consumes and must hand back every version 2 it meets (transient, not
    /// dead-lettered); then the current one (the upgraded instance) starts
    /// again and takes them, and the earlier one is stopped.
    async fn rolling_upgrade(&mut self) -> String {
        let Ok(bin) = std::env::var("PREVIOUS_INVENTORY_BIN") else {
            self.violation(
                "PREVIOUS_INVENTORY_BIN is not set: ./scripts/test.sh and ./scripts/chaos.sh build the \
                 earlier inventory (scripts/lib/previous-build.sh)"
                    .into(),
            );
            return "not run".into();
        };
        let started = mongodb::bson::DateTime::now();
        let log = self.dir.join("inventory-previous.log");
        let mut previous = self
            .command("inventory", &bin, "inventory-previous.log")
            .env("PORT", free_port().to_string())
            .spawn()
            .expect("the earlier inventory starts");
        wait_until(
            "the earlier inventory consuming",
            Duration::from_secs(60),
            || {
                let log = log.clone();
                async move { std::fs::read_to_string(log).is_ok_and(|l| l.contains("consuming")) }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut current = self.children.remove("inventory").unwrap();
        terminate(&mut current).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        self.spawn("inventory").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        terminate(&mut previous).await;
        let handed_back = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("is newer than this consumer reads")
            .count();
        if handed_back == 0 {
            self.violation("the earlier inventory met no order.created version 2".into());
        }
        let dead = self
            .count(
                "inventory",
                "dead_letters",
                doc! { "eventType": "order.created", "deadAt": { "$gte": started } },
            )
            .await;
        if dead > 0 {
            self.violation(format!(
                "{dead} order.created dead-lettered during the rolling upgrade"
            ));
        }
        format!(
            "the earlier build alone for 10 s; it handed back {handed_back} version 2 deliveries, \
             {dead} dead-lettered"
        )
    }

    fn kill(&mut self, service: &str) {
        if let Some(mut child) = self.children.remove(service) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts `service` with a fail point, waits for the crash it causes,
    /// and starts it again clean.
    async fn crash_at(&mut self, service: &'static str, failpoints: &str) -> String {
        let mut old = self.children.remove(service).unwrap();
        terminate(&mut old).await;
        // Not waited for: with deliveries waiting in its queue, it may
        // reach the fail point before a probe sees it ready.
        self.launch(service, Some(failpoints));
        let child = self.children.get_mut(service).unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{service} never reached its fail point {failpoints}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.children.remove(service);
        self.spawn(service).await;
        format!("crashed at the fail point ({status})")
    }

    /// Restarts the broker `times` times in a row under load; after each,
    /// every queue of the stack must have its consumer again within 10 s,
    /// as the broker itself reports it.
    async fn restart_rabbitmq(&mut self, times: u32) -> String {
        let mut slowest = Duration::ZERO;
        for _ in 0..times {
            rabbitmqctl("stop_app");
            tokio::time::sleep(Duration::from_secs(1)).await;
            rabbitmqctl("start_app");
            let back = Instant::now();
            loop {
                let missing = self.queues_without_consumers().await;
                if missing.as_ref().is_some_and(Vec::is_empty) {
                    break;
                }
                if back.elapsed() > CONSUMERS_BACK_WITHIN {
                    self.violation(format!(
                        "queues without a consumer {}s after a broker restart: {missing:?}",
                        CONSUMERS_BACK_WITHIN.as_secs()
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            slowest = slowest.max(back.elapsed());
        }
        format!(
            "stop_app, 1 s, start_app, {times} times; consumers back within {:.1} s each",
            slowest.as_secs_f64()
        )
    }

    /// The stack's work and dead-letter queues that have no consumer, as
    /// the broker itself counts them now (a passive declare answers with
    /// the live count; the management API's figure lags by its 5 s
    /// statistics interval); `None` while the broker does not answer.
    async fn queues_without_consumers(&self) -> Option<Vec<String>> {
        // Bounded: a connect made while the broker boots can hang forever.
        tokio::time::timeout(Duration::from_secs(3), self.count_consumers())
            .await
            .ok()
            .flatten()
    }

    async fn count_consumers(&self) -> Option<Vec<String>> {
        let mut connection = None;
        for url in self.broker.split(',') {
            if let Ok(live) = lapin::Connection::connect(url, Default::default()).await {
                connection = Some(live);
                break;
            }
        }
        let connection = connection?;
        let mut missing = Vec::new();
        for service in SERVICES {
            for suffix in ["", ".dlq"] {
                let queue = format!("c-{}.{service}-service.events{suffix}", self.id);
                // A passive declare of a missing queue closes its channel.
                let channel = connection.create_channel().await.ok()?;
                let consumers = shared::broker::passive_declare(&channel, &queue)
                    .await
                    .map_or(0, |q| q.consumer_count());
                if consumers == 0 {
                    missing.push(queue);
                }
            }
        }
        let _ = connection.close(200, "checked".into()).await;
        Some(missing)
    }

    /// Starts a RabbitMQ cluster of three nodes and restarts the services
    /// on it, told of every node, with quorum queues.
    async fn move_to_cluster(&mut self) {
        let cluster = Cluster::start(&format!("chaos-{}", self.id));
        for service in SERVICES {
            if let Some(mut child) = self.children.remove(service) {
                terminate(&mut child).await;
            }
        }
        // The same users on the cluster (the local broker's go).
        self.broker_users = None;
        self.broker_users = Some(
            BrokerUsers::add(
                &format!("http://127.0.0.1:{}", cluster.base + 10_000),
                &format!("c-{}.", self.id),
            )
            .await,
        );
        self.broker = cluster.urls().join(",");
        self.cluster = Some(cluster);
        for service in SERVICES {
            self.spawn(service).await;
        }
    }

    /// SIGKILLs the node that holds the services' connections; every queue
    /// must have its consumer again on the others, and the node, started
    /// again 10 s later, must rejoin.
    async fn kill_cluster_node(&mut self) -> String {
        let cluster = self.cluster.as_ref().expect("move_to_cluster first");
        let namespace = format!("c-{}.", self.id);
        // The management API lists a connection within its statistics
        // interval (5 s).
        let mut holding = None;
        for _ in 0..30 {
            holding = cluster.node_holding(&self.http, &namespace).await;
            if holding.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let Some(node) = holding else {
            self.violation("no node of the cluster lists the services' connections".into());
            return "not run".into();
        };
        cluster.kill(node);
        let killed = Instant::now();
        let back = loop {
            let missing = self.queues_without_consumers().await;
            if missing.as_ref().is_some_and(Vec::is_empty) {
                break killed.elapsed();
            }
            if killed.elapsed() > CLUSTER_CONSUMERS_BACK_WITHIN {
                self.violation(format!(
                    "queues without a consumer {} s after their node died: {missing:?}",
                    CLUSTER_CONSUMERS_BACK_WITHIN.as_secs()
                ));
                break killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        let cluster = self.cluster.as_ref().unwrap();
        let moved_to = cluster.node_holding(&self.http, &namespace).await;
        cluster.restart(node);
        let running = cluster.running(node);
        if running != Cluster::NODES {
            self.violation(format!(
                "node {node} restarted and sees {running} of {} nodes running",
                Cluster::NODES
            ));
        }
        format!(
            "node {node} SIGKILLed; consumers on node {} within {:.1} s; restarted after 10 s, {running} of {} nodes running",
            moved_to.map_or("?".into(), |n| n.to_string()),
            back.as_secs_f64(),
            Cluster::NODES
        )
    }

    /// Freezes the inventory process (SIGSTOP) for `pause`, longer than the
    /// saga deadline, then lets it go on (SIGCONT): the orders of that
    /// window must end FAILED with their stock back, the later ones as usual.
    async fn pause_inventory(&mut self, pause: Duration) -> String {
        let pid = self.children["inventory"].id().to_string();
        let signal = |name: &str| {
            assert!(
                Command::new("kill")
                    .args([name, &pid])
                    .status()
                    .is_ok_and(|s| s.success()),
                "kill {name} {pid}"
            );
        };
        signal("-STOP");
        tokio::time::sleep(pause).await;
        signal("-CONT");
        format!("SIGSTOP for {} s, then SIGCONT", pause.as_secs())
    }

    async fn restart_mongodb(&mut self, down_for: Duration) -> String {
        self.stop_mongodb().await;
        tokio::time::sleep(down_for).await;
        // While it is down, writes are refused with 503 and nothing is 2xx.
        let (status, _) = post_order(
            &self.http,
            &format!("{}/api/orders", self.url("order")),
            &self.customer(),
            &self.products[0].0,
            1,
        )
        .await;
        self.start_mongodb().await;
        format!(
            "POST while down: {}",
            status.map_or("no answer".into(), |s| s.to_string())
        )
    }

    /// A real `order.created`, taken off the wire and published twice more,
    /// and poison messages for two queues, in the middle of the load.
    async fn duplicates_and_poison(&mut self) -> String {
        let connection = lapin::Connection::connect(&rabbitmq_url(), Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let tap = format!("c-{}.chaos-tap", self.id);
        channel
            .queue_declare(
                tap.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                tap.as_str().into(),
                format!("c-{}.e-commerce.events", self.id).as_str().into(),
                "order.created".into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        let original = loop {
            if let Some(message) = channel
                .basic_get(tap.as_str().into(), Default::default())
                .await
                .unwrap()
            {
                break message.delivery.data;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let publisher = Publisher::new(
            &rabbitmq_url(),
            "chaos",
            Topology::new(&format!("c-{}.", self.id)),
        );
        let event: Value = serde_json::from_slice(&original).unwrap();
        for (routing_key, body) in [
            ("order.created", original.clone()),
            ("order.created", b"{ poison".to_vec()),
            ("order.created", original.clone()),
            ("inventory.reserved", b"\xff\xfe not even utf-8".to_vec()),
        ] {
            let outcome = publisher
                .publish(Outgoing {
                    exchange: publisher.topology().events_exchange(),
                    routing_key: routing_key.into(),
                    payload: body,
                    headers: Default::default(),
                    message_id: event["eventId"].as_str().map(str::to_string),
                    correlation_id: None,
                    mandatory: true,
                })
                .await
                .unwrap();
            assert_eq!(outcome, PublishOutcome::Confirmed);
        }
        publisher.close().await;
        let _ = connection.close(200, "done".into()).await;
        // Both poison messages end up archived as dead letters.
        let http = self.http.clone();
        let urls = [self.url("inventory"), self.url("order")];
        wait_until(
            "both poison messages archived",
            Duration::from_secs(30),
            || async {
                let mut found = 0;
                for url in &urls {
                    let page: Value = http
                        .get(format!("{url}/admin/dead-letters?status=DEAD"))
                        .bearer_auth(ADMIN_TOKEN)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    found += page["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|d| {
                            d["payload"]
                                .as_str()
                                .is_some_and(|p| p.contains("poison") || p.contains("utf-8"))
                        })
                        .count();
                }
                found == 2
            },
        )
        .await;
        format!(
            "order.created {} sent 3 times; 2 poison messages dead-lettered",
            event["data"]["orderId"].as_str().unwrap_or("?")
        )
    }

    /// 7: a publish nobody can receive is reported, not silently confirmed.
    async fn unroutable(&mut self) -> Row {
        let started = Instant::now();
        let publisher = Publisher::new(
            &rabbitmq_url(),
            "chaos",
            Topology::new(&format!("c-{}.", self.id)),
        );
        let outcome = publisher
            .publish(Outgoing {
                exchange: publisher.topology().events_exchange(),
                routing_key: "order.nobody_listens".into(),
                payload: b"{}".to_vec(),
                headers: Default::default(),
                message_id: None,
                correlation_id: None,
                mandatory: true,
            })
            .await
            .unwrap();
        publisher.close().await;
        let noticed = outcome == PublishOutcome::Unroutable;
        if !noticed {
            self.violation(format!("an unroutable mandatory publish was {outcome:?}"));
        }
        Row {
            fault: "7. publish to a routing key with no queue".into(),
            sent: 1,
            accepted: 0,
            finished: 0,
            lost: usize::from(!noticed),
            duplicated: 0,
            recover: started.elapsed(),
            note: format!("broker answered {outcome:?}"),
        }
    }

    /// 8: hundreds of concurrent orders for the last few units.
    async fn oversell(&mut self) -> Row {
        let units = 5;
        let product = self.create_product(units, 0).await;
        self.products.push((product.clone(), units));
        let started = Instant::now();
        let posts = futures::future::join_all((0..300).map(|_| {
            let http = self.http.clone();
            let url = format!("{}/api/orders", self.url("order"));
            let email = self.customer();
            let product = product.clone();
            async move {
                let response = http
                    .post(url)
                    .bearer_auth(customer_token("oversell"))
                    .json(&json!({ "customerId": "oversell", "customerEmail": email,
                                   "items": [{ "productId": product, "quantity": 1 }] }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                response.json::<Value>().await.unwrap()["orderId"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        }))
        .await;
        self.accepted.extend(posts.iter().cloned());
        let (finished, lost, duplicated) = self.settle(&posts).await;
        let confirmed = self
            .count(
                "order",
                "orders",
                doc! { "_id": { "$in": &posts }, "status": "CONFIRMED" },
            )
            .await;
        if confirmed != units as u64 {
            self.violation(format!("{confirmed} orders confirmed for {units} units"));
        }
        Row {
            fault: "8. 300 concurrent orders for the last 5 units".into(),
            sent: 300,
            accepted: posts.len(),
            finished,
            lost,
            duplicated,
            recover: started.elapsed(),
            note: format!("{confirmed} CONFIRMED"),
        }
    }

    /// Steady load; the fault is injected 3 s in, the load goes on 3 s after
    /// it ends; then every accepted order must finish and be told.
    async fn phase<F>(&mut self, name: &str, fault: F) -> Option<Row>
    where
        F: for<'a> FnOnce(&'a mut Chaos) -> FaultFuture<'a>,
    {
        if !self.wants(name) {
            return None;
        }
        println!("chaos: {name}");
        let stop = CancellationToken::new();
        let sent = Arc::new(AtomicU64::new(0));
        let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
        let load = tokio::spawn(steady_load(
            self.http.clone(),
            format!("{}/api/orders", self.url("order")),
            self.products.iter().map(|(id, _)| id.clone()).collect(),
            self.customer(),
            sent.clone(),
            accepted.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut note = fault(self).await;
        let fault_ended = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
        load.await.unwrap();

        let ids = accepted.lock().unwrap().clone();
        self.accepted.extend(ids.iter().cloned());
        let (finished, lost, duplicated) = self.settle(&ids).await;
        let failed = self.failed.swap(0, Ordering::SeqCst);
        if failed > 0 {
            note = format!("{note}; {failed} FAILED at the saga deadline, their stock back");
        }
        let redelivered = self.redelivered.swap(0, Ordering::SeqCst);
        if redelivered > 0 {
            note = format!("{note}; {redelivered} SMTP redeliveries (same Message-ID)");
        }
        Some(Row {
            fault: name.into(),
            sent: sent.load(Ordering::SeqCst),
            accepted: ids.len(),
            finished,
            lost,
            duplicated,
            recover: fault_ended.elapsed(),
            note,
        })
    }
}

impl Chaos {
    /// Whether the row `name` runs: every row, unless `CHAOS_ONLY` lists
    /// row numbers (`CHAOS_ONLY=2a,11 ./scripts/chaos.sh`, for working on
    /// one); then only those, without the baseline.
    fn wants(&self, name: &str) -> bool {
        let Ok(only) = std::env::var("CHAOS_ONLY") else {
            return true;
        };
        let number = name.split_once(". ").map(|(number, _)| number);
        only.split(',')
            .any(|wanted| number.is_some_and(|n| n == wanted.trim()))
    }

    fn customer(&self) -> String {
        format!("chaos-{}@example.com", self.id)
    }

    fn violation(&self, what: String) {
        eprintln!("chaos: VIOLATION {what}");
        self.violations.lock().unwrap().push(what);
    }

    async fn count(&self, service: &str, collection: &str, filter: Document) -> u64 {
        self.db(service)
            .collection::<Document>(collection)
            .count_documents(filter)
            .await
            .unwrap()
    }

    async fn create_product(&self, stock: i64, threshold: i64) -> String {
        e2e_tests::create_product(
            &self.http,
            &self.url("inventory"),
            &format!("chaos-{}", self.id),
            stock,
            threshold,
            2.5,
        )
        .await
    }

    /// Samples every product's stock, so a moment below zero is caught
    /// even if it is repaired later.
    fn watch_stock(&self) {
        let products = self.db("inventory").collection::<Document>("products");
        let violations = self.violations.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                if let Ok(cursor) = products.find(doc! {}).await
                    && let Ok(all) = cursor.try_collect::<Vec<Document>>().await
                {
                    for product in all {
                        let lowest = num(&product, "stock").min(num(&product, "reserved"));
                        if lowest < 0 {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("negative stock: {product}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// Waits for `ids` to reach a final state (a FAILED one only once the
    /// inventory confirmed its release) and for one email each, with no
    /// operator's help, then checks the stock invariants and that no
    /// transient fault left a dead letter. Returns (finished, lost,
    /// duplicated effects).
    async fn settle(&mut self, ids: &[String]) -> (usize, usize, usize) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let orders = self.db("order").collection::<Document>("orders");
        let mut finished;
        loop {
            finished = orders
                .count_documents(doc! {
                    "_id": { "$in": ids },
                    "status": { "$in": ["CONFIRMED", "REJECTED", "FAILED"] },
                    "awaitingRelease": { "$ne": true },
                })
                .await
                .unwrap() as usize;
            if finished == ids.len() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let failed = orders
            .count_documents(doc! { "_id": { "$in": ids }, "status": "FAILED" })
            .await
            .unwrap();
        self.failed.fetch_add(failed, Ordering::SeqCst);
        for service in SERVICES {
            let transient = self
                .count(service, "dead_letters", doc! { "transient": true })
                .await;
            if transient > 0 {
                self.violation(format!(
                    "{transient} messages of {service} dead-lettered by a transient fault"
                ));
            }
        }
        let mut lost = ids.len() - finished;
        if lost > 0 {
            self.violation(format!("{lost} accepted orders never finished"));
        }

        // Exactly one outcome email per finished order.
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut per_order: HashMap<String, HashMap<String, usize>>;
        loop {
            per_order = outcome_emails(&self.customer(), &wanted).await;
            if per_order.len() >= finished || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let missing = finished.saturating_sub(per_order.len());
        if missing > 0 {
            self.violation(format!("{missing} finished orders got no email"));
            lost += missing;
        }
        let mut duplicated: usize = per_order.values().map(|ids| ids.len() - 1).sum();
        if duplicated > 0 {
            self.violation(format!(
                "{duplicated} orders got two different outcome emails"
            ));
        }
        let redelivered: usize = per_order
            .values()
            .map(|ids| ids.values().map(|copies| copies - 1).sum::<usize>())
            .sum();
        self.redelivered
            .fetch_add(redelivered as u64, Ordering::SeqCst);
        duplicated += self.check_stock().await;
        (finished, lost, duplicated)
    }

    /// Stock is conserved and held exactly by the confirmed orders.
    /// Returns the number of products or orders that break it.
    async fn check_stock(&self) -> usize {
        let mut held: HashMap<String, i64> = HashMap::new();
        let mut confirmed: HashSet<String> = HashSet::new();
        let mut cursor = self
            .db("order")
            .collection::<Document>("orders")
            .find(doc! { "status": "CONFIRMED" })
            .await
            .unwrap();
        while let Some(order) = cursor.try_next().await.unwrap() {
            confirmed.insert(order.get_str("_id").unwrap().to_string());
            for item in order.get_array("items").unwrap() {
                let item = item.as_document().unwrap();
                *held
                    .entry(item.get_str("productId").unwrap().to_string())
                    .or_default() += num(item, "quantity");
            }
        }
        let reserved: HashSet<String> = self
            .db("inventory")
            .collection::<Document>("reservations")
            .find(doc! { "status": "RESERVED" })
            .await
            .unwrap()
            .try_collect::<Vec<Document>>()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.get_str("_id").unwrap().to_string())
            .collect();
        let mut broken = confirmed.symmetric_difference(&reserved).count();
        if broken > 0 {
            self.violation(format!(
                "{broken} orders confirmed without a reservation or reserved without confirmation"
            ));
        }
        for (id, initial) in &self.products {
            let product = self
                .db("inventory")
                .collection::<Document>("products")
                .find_one(doc! { "_id": id })
                .await
                .unwrap()
                .unwrap();
            let (stock, reserved) = (num(&product, "stock"), num(&product, "reserved"));
            let by_orders = held.get(id).copied().unwrap_or(0);
            if stock + reserved != *initial || reserved != by_orders || stock < 0 {
                broken += 1;
                self.violation(format!(
                    "product {id}: initial {initial}, available {stock}, reserved {reserved}, held by confirmed orders {by_orders}"
                ));
            }
        }
        broken
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        for service in SERVICES {
            if let Some(mut child) = self.children.remove(service) {
                terminate(&mut child).await;
            }
        }
        self.stop_mongodb().await;
        self.cluster = None;
        if self.violations.lock().unwrap().is_empty() {
            let _ = std::fs::remove_dir_all(self.dir.join("mongodb"));
        }
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        for child in self.children.values_mut().chain(self.mongod.as_mut()) {
            let _ = child.kill();
        }
    }
}

fn num(document: &Document, key: &str) -> i64 {
    document
        .get_i64(key)
        .or_else(|_| document.get_i32(key).map(i64::from))
        .unwrap_or_else(|_| panic!("{key} is a number in {document}"))
}

async fn post_order(
    http: &reqwest::Client,
    url: &str,
    email: &str,
    product: &str,
    quantity: u32,
) -> (Option<u16>, Option<String>) {
    let Ok(response) = http
        .post(url)
        .bearer_auth(customer_token("chaos"))
        .json(&json!({ "customerId": "chaos", "customerEmail": email,
                       "items": [{ "productId": product, "quantity": quantity }] }))
        .send()
        .await
    else {
        return (None, None);
    };
    let status = response.status().as_u16();
    let id = if status == 202 {
        response
            .json::<Value>()
            .await
            .ok()
            .and_then(|b| b["orderId"].as_str().map(str::to_string))
    } else {
        None
    };
    (Some(status), id)
}

/// `RATE` orders a second, round-robin over `products`, until `stop`.
async fn steady_load(
    http: reqwest::Client,
    url: String,
    products: Vec<String>,
    email: String,
    sent: Arc<AtomicU64>,
    accepted: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (http, url, email, accepted) =
            (http.clone(), url.clone(), email.clone(), accepted.clone());
        let product = products[n % products.len()].clone();
        n += 1;
        sent.fetch_add(1, Ordering::SeqCst);
        in_flight.spawn(async move {
            // A 202 means the order is durable; anything else (503 while
            // the database is down, no answer while the service restarts)
            // must have written nothing, so it is not followed.
            if let (Some(202), Some(id)) = post_order(&http, &url, &email, &product, 1).await {
                accepted.lock().unwrap().push(id);
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// A TCP proxy in front of MailDev that refuses and cuts connections while
/// `up` is false: SMTP unavailable, as the notification service sees it.
async fn smtp_proxy(up: Arc<AtomicBool>, shutdown: CancellationToken) -> u16 {
    let target: u16 = std::env::var("SMTP_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1025);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted { Ok(c) => c, Err(_) => continue },
            };
            if !up.load(Ordering::SeqCst) {
                continue; // dropped: connection closed at once
            }
            let up = up.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = async { while up.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(50)).await } } => {}
                }
            });
        }
    });
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// [`eventually_within`] for a yes/no condition.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, timeout, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// SIGTERM, then SIGKILL if it has not exited within 20 s.
async fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A RabbitMQ cluster of three nodes on free ports of this machine
/// (`scripts/lib/rabbitmq-cluster.sh`), deleted with its data when dropped.
struct Cluster {
    name: String,
    /// Node i (1-3) takes AMQP on base + i - 1, its management API 10000
    /// above, its inter-node port 20000 above.
    base: u16,
}

impl Cluster {
    const NODES: usize = 3;

    fn start(name: &str) -> Cluster {
        let base = (20_000..30_000)
            .step_by(10)
            .find(|base| {
                (0..Self::NODES as u16)
                    .flat_map(|i| [base + i, base + i + 10_000, base + i + 20_000])
                    .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
            })
            .expect("free ports for three RabbitMQ nodes");
        let cluster = Cluster {
            name: name.into(),
            base,
        };
        cluster.script(&["start", name, &base.to_string(), &Self::NODES.to_string()]);
        cluster
    }

    fn urls(&self) -> Vec<String> {
        (0..Self::NODES as u16)
            .map(|i| format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.base + i))
            .collect()
    }

    /// The node (1-3) most of the connections named with `prefix` are on,
    /// as the nodes' management API lists them.
    async fn node_holding(&self, http: &reqwest::Client, prefix: &str) -> Option<usize> {
        let mut on: HashMap<String, usize> = HashMap::new();
        for i in 0..Self::NODES as u16 {
            let url = format!(
                "http://127.0.0.1:{}/api/connections",
                self.base + i + 10_000
            );
            let Ok(response) = http
                .get(url)
                .basic_auth("guest", Some("guest"))
                .send()
                .await
            else {
                continue;
            };
            let Ok(connections) = response.json::<Vec<Value>>().await else {
                continue;
            };
            for connection in connections {
                let named = connection["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with(prefix));
                if let (true, Some(node)) = (named, connection["node"].as_str()) {
                    *on.entry(node.to_string()).or_default() += 1;
                }
            }
            // Every node lists the whole cluster's connections.
            break;
        }
        let (node, _) = on.into_iter().max_by_key(|(_, count)| *count)?;
        // "chaos-<id>-<i>@host"
        let (name, _) = node.split_once('@')?;
        name.rsplit('-').next()?.parse().ok()
    }

    fn kill(&self, node: usize) {
        self.script(&["kill", &self.name, &node.to_string()]);
    }

    fn restart(&self, node: usize) {
        self.script(&[
            "restart",
            &self.name,
            &self.base.to_string(),
            &node.to_string(),
        ]);
    }

    /// How many nodes `node` sees running.
    fn running(&self, node: usize) -> usize {
        let output = Command::new("bash")
            .arg(Self::SCRIPT)
            .args(["running", &self.name, &node.to_string()])
            .output()
            .expect("rabbitmq-cluster.sh runs");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    const SCRIPT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/lib/rabbitmq-cluster.sh"
    );

    fn script(&self, args: &[&str]) {
        let status = Command::new("bash")
            .arg(Self::SCRIPT)
            .args(args)
            .status()
            .expect("rabbitmq-cluster.sh runs");
        assert!(status.success(), "rabbitmq-cluster.sh {args:?} failed");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.script(&["destroy", &self.name, &Self::NODES.to_string()]);
    }
}

fn rabbitmqctl(command: &str) {
    let ok = |mut c: Command| c.arg(command).status().is_ok_and(|s| s.success());
    let direct = Command::new("rabbitmqctl");
    let mut sudo = Command::new("sudo");
    sudo.args(["-n", "rabbitmqctl"]);
    assert!(ok(direct) || ok(sudo), "rabbitmqctl {command} failed");
}
