//! Starts the real services in-process, on port 0, against the real
//! RabbitMQ, MongoDB and MailDev, each test with its own databases and its
//! own AMQP namespace so tests run in parallel without crosstalk.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    time::Duration,
};

use serde_json::{Value, json};
use shared::{CancellationToken, config::Env};

pub mod broker_users;
use broker_users::BrokerUsers;

pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The services' `JWT_SECRET` in every test stack.
pub const JWT_SECRET: &str = "e2e-test-jwt-secret-at-least-32-bytes";

/// A bearer token for `customer`, valid for an hour.
pub fn customer_token(customer: &str) -> String {
    loadgen::customer_token(JWT_SECRET, customer, Duration::from_secs(3600))
}

pub fn mongodb_uri() -> String {
    std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}
pub fn rabbitmq_url() -> String {
    std::env::var("RABBITMQ_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}
pub fn maildev_url() -> String {
    std::env::var("MAILDEV_URL").unwrap_or_else(|_| "http://127.0.0.1:1080".into())
}

/// Three services sharing one namespace.
pub struct Stack {
    pub id: String,
    pub order: String,
    pub inventory: String,
    pub notification: String,
    pub http: reqwest::Client,
    shutdown: Vec<CancellationToken>,
    /// The test's settings for every service, for instances started later.
    extra: Vec<(&'static str, String)>,
    /// Each service's own broker user, if the stack was started with them.
    broker_users: Option<BrokerUsers>,
}

/// One more instance of a service of a stack; it stops when dropped.
pub struct Instance {
    pub url: String,
    shutdown: CancellationToken,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Stack {
    /// Settings for one service of this stack: the stack's, then the
    /// service's `own`, then the test's `extra`, each overriding the one
    /// before.
    fn env(
        id: &str,
        service: &str,
        users: Option<&BrokerUsers>,
        own: &[(&str, String)],
        extra: &[(&str, String)],
    ) -> Env<impl Fn(&str) -> Option<String> + use<>> {
        let map = Self::settings(id, service, users, own, extra);
        Env::from_lookup(move |k| map.get(k).cloned())
    }

    /// The settings [`Self::env`] reads, as a map.
    fn settings(
        id: &str,
        service: &str,
        users: Option<&BrokerUsers>,
        own: &[(&str, String)],
        extra: &[(&str, String)],
    ) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = HashMap::from([
            ("PORT".into(), "0".into()),
            ("MONGODB_URI".into(), mongodb_uri()),
            ("MONGODB_DATABASE".into(), format!("t_{id}_{service}")),
            ("RABBITMQ_URL".into(), rabbitmq_url()),
            ("AMQP_NAMESPACE".into(), format!("t-{id}.")),
            // The broker deletes this test's queues 15 minutes after it ends.
            ("AMQP_QUEUE_EXPIRES_MS".into(), "900000".into()),
            ("ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("JWT_SECRET".into(), JWT_SECRET.into()),
            // Short retry delays keep failing-path tests quick.
            ("RETRY_BASE_MS".into(), "200".into()),
            ("RETRY_CAP_MS".into(), "1000".into()),
            // Tests send bursts from one address; the limiter stays on but
            // out of the way (one test turns it down on purpose).
            ("RATE_LIMIT_PER_SECOND".into(), "100000".into()),
            // Likewise the load shedding: some tests send hundreds at once.
            ("MAX_IN_FLIGHT_REQUESTS".into(), "0".into()),
            // And the per-customer order limit: most tests order as one
            // customer (one test turns it on).
            ("ORDERS_PER_CUSTOMER_PER_MINUTE".into(), "0".into()),
        ]);
        if let Some(users) = users {
            map.insert("RABBITMQ_URL".into(), users.url(service, &rabbitmq_url()));
            map.insert("AMQP_SOURCE_USERS".into(), users.source_users());
        }
        for (k, v) in own.iter().chain(extra) {
            map.insert(k.to_string(), v.clone());
        }
        map
    }

    /// The settings of this stack's inventory service, for another instance
    /// of it started as a process (another build, say): same database, same
    /// queues, its own port.
    pub fn inventory_settings(&self) -> HashMap<String, String> {
        Self::settings(
            &self.id,
            "inventory",
            self.broker_users.as_ref(),
            &[],
            &self.extra,
        )
    }

    pub async fn start() -> Stack {
        Self::start_with(&[]).await
    }

    /// With extra settings for every service (e.g. `PREFETCH=1` to make
    /// delivery order observable).
    pub async fn start_with(extra: &[(&'static str, &str)]) -> Stack {
        Self::start_as(extra, false).await
    }

    /// Each service logged in to the broker as a user of its own, with only
    /// the permissions it needs, and taking events only from their sources'
    /// users (`AMQP_SOURCE_USERS`): the least-privilege setup.
    pub async fn start_with_own_broker_users() -> Stack {
        Self::start_as(&[], true).await
    }

    async fn start_as(extra: &[(&'static str, &str)], own_broker_users: bool) -> Stack {
        // The services log to stdout, which the test harness does not
        // capture: only when asked.
        if std::env::var_os("TEST_LOG").is_some() {
            // Kept for the whole test process.
            std::mem::forget(shared::telemetry::init("e2e"));
        }
        let extra: Vec<(&'static str, String)> =
            extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let mut shutdown = Vec::new();
        let broker_users = match own_broker_users {
            true => {
                Some(BrokerUsers::add(&broker_users::management_url(), &format!("t-{id}.")).await)
            }
            false => None,
        };
        let users = broker_users.as_ref();

        let env = Self::env(&id, "inventory", users, &[], &extra);
        let inventory = inventory_service::build(
            inventory_service::Config::from_lookup(&env).expect("valid inventory settings"),
        )
        .await
        .expect("inventory starts");
        let inventory_url = format!("http://127.0.0.1:{}", inventory.port());
        shutdown.push(inventory.shutdown_token());
        tokio::spawn(inventory.run_until_stopped());

        let mut own = vec![("ADMIN_EMAIL", format!("admin-{id}@example.com"))];
        // Where MailDev takes SMTP, if not on its default port.
        if let Ok(port) = std::env::var("SMTP_PORT") {
            own.push(("SMTP_PORT", port));
        }
        let env = Self::env(&id, "notification", users, &own, &extra);
        let notification = notification_service::build(
            notification_service::Config::from_lookup(&env).expect("valid notification settings"),
        )
        .await
        .expect("notification starts");
        let notification_url = format!("http://127.0.0.1:{}", notification.port());
        shutdown.push(notification.shutdown_token());
        tokio::spawn(notification.run_until_stopped());

        // The order service's admin console forwards to the other two.
        let own = [
            ("INVENTORY_URL", inventory_url.clone()),
            ("NOTIFICATION_URL", notification_url.clone()),
            ("INVENTORY_DOCS_URL", format!("{inventory_url}/docs")),
            ("NOTIFICATION_DOCS_URL", format!("{notification_url}/docs")),
        ];
        let env = Self::env(&id, "order", users, &own, &extra);
        let order = order_service::build(
            order_service::Config::from_lookup(&env).expect("valid order settings"),
        )
        .await
        .expect("order starts");
        let order_url = format!("http://127.0.0.1:{}", order.port());
        shutdown.push(order.shutdown_token());
        tokio::spawn(order.run_until_stopped());

        let stack = Stack {
            id,
            order: order_url,
            inventory: inventory_url,
            notification: notification_url,
            http: reqwest::Client::new(),
            shutdown,
            extra,
            broker_users,
        };
        // Consumers declare their queues on connect; wait until they have, so
        // no event is published before its queue exists.
        stack.wait_for_queues().await;
        stack
    }

    /// The services' own broker users, if the stack has them.
    pub fn broker_users(&self) -> Option<&BrokerUsers> {
        self.broker_users.as_ref()
    }

    /// Stops the inventory service (its HTTP API and its consumer), as if
    /// it had gone away; its queue stays and fills.
    pub fn stop_inventory(&self) {
        self.shutdown[0].cancel();
    }

    /// Starts the inventory service again after [`Self::stop_inventory`],
    /// on the same port and database: it takes what waited in its queue.
    pub async fn restart_inventory(&mut self) {
        let port = self.inventory.rsplit(':').next().unwrap().to_string();
        let inventory = self.build_inventory(&[("PORT", port)]).await;
        self.shutdown[0] = inventory.shutdown_token();
        tokio::spawn(inventory.run_until_stopped());
    }

    /// Another instance of this stack's inventory service: the same
    /// database, queues and settings, on a port of its own. Beside the
    /// first it is a replica; after [`Self::stop_inventory`], a restart.
    pub async fn start_inventory_instance(&self) -> Instance {
        let inventory = self.build_inventory(&[]).await;
        let instance = Instance {
            url: format!("http://127.0.0.1:{}", inventory.port()),
            shutdown: inventory.shutdown_token(),
        };
        tokio::spawn(inventory.run_until_stopped());
        instance
    }

    /// This stack's inventory service with `own` settings on top, built
    /// (a stopped instance may still be letting go of its port).
    async fn build_inventory(&self, own: &[(&str, String)]) -> shared::service::RunningService {
        let env = Self::env(
            &self.id,
            "inventory",
            self.broker_users.as_ref(),
            own,
            &self.extra,
        );
        let config =
            inventory_service::Config::from_lookup(&env).expect("valid inventory settings");
        eventually("the inventory to start", || {
            let config = config.clone();
            async move { inventory_service::build(config).await.ok() }
        })
        .await
    }

    async fn wait_for_queues(&self) {
        for queue in [
            "order-service.events",
            "inventory-service.events",
            "notification-service.events",
        ] {
            eventually(&format!("queue {queue} declared"), || {
                self.existing_queue(queue)
            })
            .await;
        }
    }

    /// This stack's name for an exchange or queue.
    pub fn name(&self, base: &str) -> String {
        format!("t-{}.{base}", self.id)
    }

    /// Whether the queue exists. A passive declare of a missing queue
    /// closes its channel, so each try has a connection of its own, and a
    /// time limit: a broker call once went unanswered here for over ten
    /// minutes, hanging the suite (the next try gets a new connection).
    async fn existing_queue(&self, queue: &str) -> Option<()> {
        let name = self.name(queue);
        let probe = async {
            let connection = lapin::Connection::connect(&rabbitmq_url(), Default::default())
                .await
                .ok()?;
            let channel = connection.create_channel().await.ok()?;
            let declared = shared::broker::passive_declare(&channel, &name).await;
            let _ = connection.close(200, "done".into()).await;
            declared.ok().map(|_| ())
        };
        tokio::time::timeout(Duration::from_secs(5), probe)
            .await
            .ok()
            .flatten()
    }

    /// Declares one of this stack's queues again with the given arguments.
    /// The broker refuses (PRECONDITION_FAILED) unless they are exactly the
    /// ones the queue was declared with, which makes this a probe for them.
    pub async fn redeclare_queue(
        &self,
        queue: &str,
        args: lapin::types::FieldTable,
    ) -> Result<(), lapin::Error> {
        let connection = connect_to_broker().await;
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                self.name(queue).as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map(drop);
        let _ = connection.close(200, "done".into()).await;
        declared
    }

    /// A customer email unique to this stack.
    pub fn email(&self, who: &str) -> String {
        format!("{who}-{}@example.com", self.id)
    }

    pub async fn create_product(&self, stock: i64, threshold: i64, price: f64) -> String {
        create_product(
            &self.http,
            &self.inventory,
            &format!("cat-{}", self.id),
            stock,
            threshold,
            price,
        )
        .await
    }

    /// GET `url` and decode the JSON body.
    pub async fn get_json(&self, url: &str) -> Value {
        self.get_json_as(self.http.get(url)).await
    }

    /// GET `url` with `customer`'s token and decode the JSON body.
    pub async fn customer_get_json(&self, customer: &str, url: &str) -> Value {
        self.get_json_as(self.http.get(url).bearer_auth(customer_token(customer)))
            .await
    }

    async fn get_json_as(&self, request: reqwest::RequestBuilder) -> Value {
        request.send().await.unwrap().json().await.unwrap()
    }

    /// GET `url` with the admin token and decode the JSON body.
    pub async fn admin_get_json(&self, url: &str) -> Value {
        self.admin_call(reqwest::Method::GET, url, None).await.1
    }

    /// GET `url` and return the body as text.
    pub async fn get_text(&self, url: &str) -> String {
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn product(&self, id: &str) -> Value {
        self.get_json(&format!("{}/api/products/{id}", self.inventory))
            .await
    }

    /// Places an order as customer `c-1`, with its token.
    pub async fn place_order(
        &self,
        email: &str,
        product: &str,
        quantity: u32,
    ) -> reqwest::Response {
        self.http
            .post(format!("{}/api/orders", self.order))
            .bearer_auth(customer_token("c-1"))
            .json(&json!({ "customerId": "c-1", "customerEmail": email, "items": [{ "productId": product, "quantity": quantity }] }))
            .send()
            .await
            .unwrap()
    }

    /// Cancels order `id` as customer `c-1`, who placed it with
    /// [`Self::place_order`]; returns the status and the decoded body.
    pub async fn cancel(&self, id: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/orders/{id}/cancel", self.order))
            .bearer_auth(customer_token("c-1"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// The order, read with the admin token (whoever placed it).
    pub async fn order(&self, id: &str) -> Value {
        self.admin_get_json(&format!("{}/api/orders/{id}", self.order))
            .await
    }

    /// `method` `url` with the admin token and an optional JSON body;
    /// returns the status and the decoded body.
    pub async fn admin_call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, url).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Waits until `service_url` has archived `count` dead letters in
    /// `status`, and returns them.
    pub async fn dead_letters(&self, service_url: &str, status: &str, count: usize) -> Vec<Value> {
        eventually(&format!("{count} {status} dead letters"), || async {
            let page = self
                .admin_get_json(&format!("{service_url}/admin/dead-letters?status={status}"))
                .await;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            (items.len() == count).then_some(items)
        })
        .await
    }

    /// Waits until the order leaves PENDING and returns it.
    pub async fn final_order(&self, id: &str) -> Value {
        eventually(&format!("order {id} decided"), || async {
            let order = self.order(id).await;
            (order["status"] != "PENDING").then_some(order)
        })
        .await
    }

    /// Publishes an envelope straight onto this stack's exchange.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let connection = connect_to_broker().await;
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(Default::default()).await.unwrap();
        channel
            .basic_publish(
                self.name("e-commerce.events").as_str().into(),
                routing_key.into(),
                Default::default(),
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let _ = connection.close(200, "done".into()).await;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for token in &self.shutdown {
            token.cancel();
        }
    }
}

/// A connection to the tests' RabbitMQ; panics if it is not reachable.
pub async fn connect_to_broker() -> lapin::Connection {
    lapin::Connection::connect(&rabbitmq_url(), Default::default())
        .await
        .expect("RabbitMQ is reachable")
}

/// Emails MailDev received for `address`.
pub async fn emails_to(address: &str) -> Vec<Value> {
    let all: Vec<Value> = reqwest::get(format!("{}/api/email", maildev_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all.into_iter()
        .filter(|m| {
            m["to"]
                .as_array()
                .is_some_and(|to| to.iter().any(|t| t["address"] == address))
        })
        .collect()
}

/// Order id → the outcome emails (confirmed, rejected or failed) it got, as
/// Message-ID → copies. The notification service gives each email one
/// stable Message-ID; a second copy of the same one is an SMTP redelivery
/// (the connection broke after the server took the message but before its
/// reply arrived), which mail systems drop by Message-ID. A second
/// Message-ID would be a second email.
pub async fn outcome_emails(
    address: &str,
    orders: &HashSet<&str>,
) -> HashMap<String, HashMap<String, usize>> {
    let mut counts: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for mail in emails_to(address).await {
        let subject = mail["subject"].as_str().unwrap_or_default();
        let Some(order) = subject
            .strip_prefix("Order ")
            .and_then(|s| s.split(' ').next())
        else {
            continue;
        };
        let outcome = subject.ends_with("confirmed")
            || subject.ends_with("could not be accepted")
            || subject.ends_with("could not be processed");
        if outcome && orders.contains(order) {
            let message_id = mail["headers"]["message-id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            *counts
                .entry(order.to_string())
                .or_default()
                .entry(message_id)
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Creates a product through the inventory API (admin) and returns its id.
pub async fn create_product(
    http: &reqwest::Client,
    inventory: &str,
    category: &str,
    stock: i64,
    threshold: i64,
    price: f64,
) -> String {
    let response = http
        .post(format!("{inventory}/api/products"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({
            "sku": format!("SKU-{}", uuid::Uuid::new_v4()),
            "name": "Test mug",
            "category": category,
            "price": price,
            "stock": stock,
            "lowStockThreshold": threshold,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["productId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The value of the one sample of `name` in Prometheus text whose labels
/// include every pair of `labels`; None if there is none. Two that match
/// fail the test: the labels asked for do not pick one series.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse().unwrap_or_else(|_| panic!("value of {line}")))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name}{labels:?} picks {} series:\n{text}",
        matching.len()
    );
    matching.first().copied()
}

/// Runs a tool off the test's runtime (the services answer on it): whether
/// it succeeded, and what it printed (stdout, then stderr).
pub async fn run_tool(mut command: std::process::Command) -> (bool, String) {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the tool does not run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Polls `check` until it yields a value, failing after 20 s. This waits for
/// an asynchronous outcome; it does not paper over a race.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, Duration::from_secs(20), check).await
}

/// [`eventually`] with its own time limit.
pub async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
