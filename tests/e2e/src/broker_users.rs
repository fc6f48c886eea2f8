//! Each service logged in to RabbitMQ as a broker user of its own, with
//! only the permissions `shared::broker::grants` derives, made by
//! `rabbitmq/users.sh` as `run.sh` and the production compose file make
//! them, for one namespace; deleted when dropped.

use serde_json::Value;
use shared::{broker::grants::Grant, registry};

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
    /// granted what it needs in `namespace`, made by `rabbitmq/users.sh` (as
    /// `run.sh` makes them) on the broker whose management API is at
    /// `management` (every node of a cluster shares its users).
    pub async fn add(management: &str, namespace: &str) -> BrokerUsers {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rabbitmq/users.sh");
        let mut command = tokio::process::Command::new("bash");
        command
            .arg(script)
            .env("RABBITMQ_MANAGEMENT_URL", management)
            .env("AMQP_NAMESPACE", namespace);
        for service in registry::all() {
            command.env(
                format!("RABBITMQ_{}_PASSWORD", service.name.to_uppercase()),
                PASSWORD,
            );
        }
        let output = command.output().await.expect("bash runs rabbitmq/users.sh");
        assert!(
            output.status.success(),
            "rabbitmq/users.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self::made_elsewhere(management, namespace)
    }

    /// The users `rabbitmq/users.sh` makes for `namespace` when something
    /// else runs it (`run.sh` under a test's `AMQP_NAMESPACE`): deleted when
    /// dropped, so a test leaves none behind.
    pub fn made_elsewhere(management: &str, namespace: &str) -> BrokerUsers {
        BrokerUsers {
            management: management.to_string(),
            users: registry::all()
                .iter()
                .map(|service| (service.name.clone(), format!("{namespace}{}", service.name)))
                .collect(),
        }
    }

    /// What the broker has granted `service`'s user, read back through the
    /// management API, as a [`Grant`].
    pub async fn granted(&self, service: &str) -> Grant {
        let user = self.user(service);
        let get = |path: String| async move {
            reqwest::Client::new()
                .get(format!("{}/api/{path}", self.management))
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .unwrap_or_else(|e| panic!("GET /api/{path}: {e}"))
                .json::<Value>()
                .await
                .unwrap()
        };
        let permissions = get(format!("permissions/%2F/{user}")).await;
        let topic = get(format!("topic-permissions/%2F/{user}")).await;
        let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
        Grant {
            user: user.to_string(),
            configure: text(&permissions["configure"]),
            write: text(&permissions["write"]),
            read: text(&permissions["read"]),
            topic_exchange: text(&topic[0]["exchange"]),
            topic_write: text(&topic[0]["write"]),
            topic_read: text(&topic[0]["read"]),
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
