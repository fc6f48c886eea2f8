//! The order service: takes orders over HTTP and keeps each order's state as
//! the saga moves it.

pub mod backlog;
pub mod console;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod handler;
pub mod http;
pub mod inventory;
mod last_written;
pub mod limit;
pub mod metrics;
pub mod participants;
pub mod store;

use std::{sync::Arc, time::Duration};

use backlog::Backlog;
use shared::{
    config::{CommonConfig, ConfigError, Env},
    events::ToOrderService,
    http::{
        GaugeSource,
        history::{HistorySource, LocalHistory},
    },
    registry,
    service::{RunningService, ServiceCore},
};

#[derive(Clone, Debug)]
pub struct Config {
    /// Settings every service shares.
    pub common: CommonConfig,
    /// Every other service of services/registry.txt, as this one reaches
    /// it (see [`Peer`]).
    pub peers: Vec<Peer>,
    /// The admin console's links (see [`console::ConsoleLinks`]).
    pub console: console::ConsoleLinks,
    /// `MAX_SAGA_BACKLOG` (default 500): sagas open (orders PENDING) at
    /// which no new order is admitted; past a quarter of it they are
    /// admitted at the rate the saga finishes them ([`backlog::Admission`]),
    /// the rest get 503 with Retry-After. 0 turns it off.
    pub max_saga_backlog: Option<u64>,
    /// `SAGA_TIMEOUT_SECONDS` (default 60): an order still PENDING this long
    /// after it was accepted becomes FAILED and its held stock goes back.
    pub saga_timeout: Duration,
    /// `ORDERS_PER_CUSTOMER_PER_MINUTE` (default 30): orders one customer
    /// may place within a minute (see [`limit`]); past it, 429 with
    /// Retry-After and nothing stored. 0 turns it off.
    pub orders_per_customer_per_minute: Option<u32>,
}

impl Config {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&Env::process())
    }

    /// From `env`, so that tests configure the service with a map.
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Config {
            common: CommonConfig::from_env(env, "order")?,
            peers: registry::all()
                .iter()
                .filter(|service| service.name != "order")
                .map(|service| Peer::from_lookup(env, service))
                .collect::<Result<_, _>>()?,
            console: console::ConsoleLinks::from_lookup(env)?,
            max_saga_backlog: Some(env.parse("MAX_SAGA_BACKLOG", 500u64)?).filter(|n| *n > 0),
            saga_timeout: Duration::from_secs(env.parse_checked(
                "SAGA_TIMEOUT_SECONDS",
                60u64,
                |seconds| match seconds {
                    0 => Err("must be at least 1"),
                    _ => Ok(()),
                },
            )?),
            orders_per_customer_per_minute: Some(
                env.parse("ORDERS_PER_CUSTOMER_PER_MINUTE", 30u32)?,
            )
            .filter(|n| *n > 0),
        })
    }

    /// The peer the registry names `name`; the registry is compiled in, so
    /// only a name missing from it fails, and that is a bug.
    pub fn peer(&self, name: &str) -> &Peer {
        self.peers
            .iter()
            .find(|peer| peer.name == name)
            .unwrap_or_else(|| panic!("services/registry.txt has no service {name:?}"))
    }
}

/// Another service of the registry, as the order service reaches it: the
/// product check asks the inventory, an order's history asks every peer,
/// and the admin console forwards to each and links to its Swagger UI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its registry name: `inventory`.
    pub name: &'static str,
    /// What it is called elsewhere: `inventory-service`.
    pub service: &'static str,
    /// `<NAME>_URL` (`INVENTORY_URL`), default `http://127.0.0.1:<its port>`:
    /// its base URL from here.
    pub url: String,
    /// `<NAME>_DOCS_URL` (`INVENTORY_DOCS_URL`), default
    /// `http://127.0.0.1:<its port>/docs`: its Swagger UI as the operator's
    /// browser reaches it, for the console's link; `none` hides the link.
    pub docs: Option<String>,
}

impl Peer {
    fn from_lookup<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        service: &'static registry::Service,
    ) -> Result<Self, ConfigError> {
        let variable = |suffix: &str| format!("{}_{suffix}", service.name.to_uppercase());
        let local = format!("http://127.0.0.1:{}", service.port);
        let docs = env.checked(
            &variable("DOCS_URL"),
            &format!("{local}/docs"),
            console::link_or_none,
        )?;
        Ok(Peer {
            name: &service.name,
            service: &service.service,
            url: env.checked(&variable("URL"), &local, http_url)?,
            docs: (docs != "none").then_some(docs),
        })
    }
}

fn http_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(()),
        Ok(_) => Err("must be an http:// or https:// URL".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Builds the whole service; tests start it on port 0.
pub async fn build(config: Config) -> anyhow::Result<RunningService> {
    let inventory_url = config.peer("inventory").url.clone();
    let core = ServiceCore::start(config.common).await?;
    let saga = metrics::SagaMetrics::new(&core.metrics);
    let store = Arc::new(store::OrderStore::new(
        core.store.clone(),
        &core.tasks,
        saga.clone(),
    ));
    store.ensure_indexes().await?;
    core.tasks.spawn(deadline::watch(
        store.clone(),
        config.saga_timeout,
        core.shutdown.clone(),
    ));
    let backlog = config
        .max_saga_backlog
        .map(|limit| Backlog::spawn(store.clone(), limit, core.shutdown.clone(), &core.tasks));
    core.spawn_consumer(
        ToOrderService::SUBSCRIPTION,
        Arc::new(handler::SagaAnswers {
            store: store.clone(),
            backlog: backlog.clone(),
        }),
    );
    let own_lines: Arc<dyn HistorySource> = store.clone();
    let gauges: Arc<dyn GaugeSource> = store.clone();
    let api = http::OrderApi {
        backlog,
        saga,
        store,
        customer_limit: config
            .orders_per_customer_per_minute
            .map(limit::CustomerLimit::new),
        inventory: Arc::new(inventory::InventoryClient::new(
            &inventory_url,
            &core.breakers,
        )),
        history: LocalHistory {
            extra: Some(own_lines.clone()),
            ..core.local_history()
        },
        participants: participants::Participants::new(
            config
                .peers
                .iter()
                .map(|peer| (peer.service, peer.url.clone()))
                .collect(),
            core.config.admin_tokens.first().cloned(),
        ),
    };
    core.with_gauges(gauges)
        .with_history_source(own_lines)
        .with_routes(console::routes(&config.peers, &config.console)?)
        .serve(api, "Order service")
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let pairs = pairs.to_vec();
        Config::from_lookup(&Env::from_lookup(move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }))
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = config(&[]).unwrap();
        assert_eq!(config.common.port, 3001);
        assert_eq!(config.common.database, "order_service");
        let peers: Vec<_> = config
            .peers
            .iter()
            .map(|peer| (peer.name, peer.url.as_str(), peer.docs.as_deref()))
            .collect();
        assert_eq!(
            peers,
            [
                (
                    "inventory",
                    "http://127.0.0.1:3002",
                    Some("http://127.0.0.1:3002/docs")
                ),
                (
                    "notification",
                    "http://127.0.0.1:3003",
                    Some("http://127.0.0.1:3003/docs")
                ),
            ]
        );
        assert_eq!(config.max_saga_backlog, Some(500));
        assert_eq!(config.orders_per_customer_per_minute, Some(30));
        let off = self::config(&[("ORDERS_PER_CUSTOMER_PER_MINUTE", "0")]).unwrap();
        assert_eq!(off.orders_per_customer_per_minute, None);
    }

    #[test]
    fn a_saga_backlog_of_zero_turns_the_check_off() {
        assert_eq!(
            config(&[("MAX_SAGA_BACKLOG", "0")])
                .unwrap()
                .max_saga_backlog,
            None
        );
        let err = config(&[("MAX_SAGA_BACKLOG", "-1")]).unwrap_err();
        assert_eq!(err.name, "MAX_SAGA_BACKLOG");
    }

    #[test]
    fn an_inventory_url_without_http_is_refused() {
        let err = config(&[("INVENTORY_URL", "localhost:3002")]).unwrap_err();
        assert_eq!(err.name, "INVENTORY_URL");
        assert!(config(&[("INVENTORY_URL", "https://inventory:8443/")]).is_ok());
        let err = config(&[("NOTIFICATION_URL", "notification:3003")]).unwrap_err();
        assert_eq!(err.name, "NOTIFICATION_URL");
        let err = config(&[("INVENTORY_DOCS_URL", "javascript:alert(1)")]).unwrap_err();
        assert_eq!(err.name, "INVENTORY_DOCS_URL");
        let hidden = config(&[("NOTIFICATION_DOCS_URL", "none")]).unwrap();
        assert_eq!(hidden.peer("notification").docs, None);
    }
}
