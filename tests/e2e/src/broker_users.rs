//! Each service logged in to RabbitMQ as a broker user of its own, with
//! only the permissions `shared::broker::grants` derives, as `run.sh`, the
//! production compose file and the Kubernetes manifests set them up. Made
//! through the management API for one namespace; deleted when dropped.

use serde_json::json;
use shared::{broker::Topology, registry};

/// Every test user's password: the users live as long as their test.
const PASSWORD: &str = "e2e-broker-user";

pub struct BrokerUsers {
    management: String,
    /// (service's short name, its broker user)
    users: Vec<(String, String)>,
}

/// The management API the tests' users are made through
/// (`RABBITMQ_MANAGEMENT_URL`, default the local broker's).
pub fn management_url() -> String {
    std::env::var("RABBITMQ_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
}

impl BrokerUsers {
    /// A user `<namespace><service>` for every service of the registry,
    /// granted what it needs in `namespace`, on the broker whose management
    /// API is at `management` (every node of a cluster shares its users).
    pub async fn add(management: &str, namespace: &str) -> BrokerUsers {
        let topology = Topology::new(namespace);
        let http = reqwest::Client::new();
        let mut users = Vec::new();
        for service in registry::all() {
            let user = format!("{namespace}{}", service.name);
            let grant = topology.grant(service, &user);
            for (path, body) in [
                (
                    format!("users/{user}"),
                    json!({"password": PASSWORD, "tags": ""}),
                ),
                (
                    format!("permissions/%2F/{user}"),
                    json!({"configure": grant.configure, "write": grant.write, "read": grant.read}),
                ),
                (
                    format!("topic-permissions/%2F/{user}"),
                    json!({"exchange": grant.topic_exchange, "write": grant.topic_write, "read": grant.topic_read}),
                ),
            ] {
                let response = http
                    .put(format!("{management}/api/{path}"))
                    .basic_auth("guest", Some("guest"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("RabbitMQ's management API at {management}: {e}"));
                assert!(
                    response.status().is_success(),
                    "PUT /api/{path}: {}",
                    response.status()
                );
            }
            users.push((service.name.clone(), user));
        }
        BrokerUsers {
            management: management.to_string(),
            users,
        }
    }

    /// The broker user of `service` (`order`).
    pub fn user(&self, service: &str) -> &str {
        self.users
            .iter()
            .find(|(name, _)| name == service)
            .map(|(_, user)| user.as_str())
            .unwrap_or_else(|| panic!("no service {service}"))
    }

    /// `broker` (one URL or a cluster's, comma-separated) logged in as
    /// `service`'s user.
    pub fn url(&self, service: &str, broker: &str) -> String {
        let user = self.user(service);
        broker
            .split(',')
            .map(|node| {
                let address = node.trim().trim_start_matches("amqp://");
                let host = address.split_once('@').map_or(address, |(_, host)| host);
                format!("amqp://{user}:{PASSWORD}@{host}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `AMQP_SOURCE_USERS` for these users.
    pub fn source_users(&self) -> String {
        self.users
            .iter()
            .map(|(name, user)| format!("{}={user}", registry::service(name).service))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for BrokerUsers {
    fn drop(&mut self) {
        let management = self.management.clone();
        let users: Vec<String> = self.users.iter().map(|(_, user)| user.clone()).collect();
        // Drop cannot await, and may run inside a runtime: a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let http = reqwest::Client::new();
                for user in users {
                    let _ = http
                        .delete(format!("{management}/api/users/{user}"))
                        .basic_auth("guest", Some("guest"))
                        .send()
                        .await;
                }
            });
        })
        .join();
    }
}
