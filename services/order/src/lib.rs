//! The order service: takes orders over HTTP and keeps each order's state as
//! the saga moves it.

pub mod domain;
pub mod error;
pub mod handler;
pub mod http;
pub mod inventory;
pub mod store;

use std::sync::Arc;

use shared::{
    broker::topology::ORDER_SERVICE,
    config::{CommonConfig, ConfigError, Env},
    service::{RunningService, ServiceCore},
};

#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `INVENTORY_URL`, default `http://127.0.0.1:3002`.
    pub inventory_url: String,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let env = Env::process();
        Ok(Config {
            common: CommonConfig::from_env(&env, "order-service", 3001, "order_service")?,
            inventory_url: env.string("INVENTORY_URL", "http://127.0.0.1:3002"),
        })
    }
}

/// Builds the whole service; tests start it on port 0.
pub async fn build(config: Config) -> anyhow::Result<RunningService> {
    let core = ServiceCore::start(config.common).await?;
    let store = store::OrderStore::new(core.db.clone(), core.outbox.clone());
    store.ensure_indexes().await?;
    core.spawn_consumer(
        ORDER_SERVICE,
        Arc::new(handler::InventoryAnswers {
            store: store.clone(),
        }),
    );
    let api = http::OrderApi {
        store,
        inventory: Arc::new(inventory::InventoryClient::new(
            &config.inventory_url,
            &core.breakers,
        )),
    };
    core.serve(api, "Order service").await
}
