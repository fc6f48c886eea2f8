//! The inventory service: products and stock, and the saga's reservations.

pub mod domain;
pub mod error;
pub mod handler;
pub mod http;
pub mod locks;
pub mod store;

use std::sync::Arc;

use shared::{
    broker::topology::INVENTORY_SERVICE,
    config::{CommonConfig, ConfigError, Env},
    service::{RunningService, ServiceCore},
};

#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Config {
            common: CommonConfig::from_env(
                &Env::process(),
                "inventory-service",
                3002,
                "inventory_service",
            )?,
        })
    }
}

/// Builds the whole service; tests start it on port 0.
pub async fn build(config: Config) -> anyhow::Result<RunningService> {
    let core = ServiceCore::start(config.common).await?;
    let store = Arc::new(store::InventoryStore::new(core.store.clone(), &core.tasks));
    store.ensure_indexes().await?;
    core.spawn_consumer(
        INVENTORY_SERVICE,
        Arc::new(handler::OrderEvents {
            store: store.clone(),
        }),
    );
    core.serve(http::InventoryApi { store }, "Inventory service")
        .await
}
