//! The inventory service: products and stock, and the saga's reservations.

pub mod domain;
pub mod error;
pub mod handler;
pub mod http;
pub mod locks;
pub mod store;

use std::sync::Arc;

use shared::{
    config::{CommonConfig, ConfigError, Env},
    events::ToInventoryService,
    service::{RunningService, ServiceCore},
};

#[derive(Clone, Debug)]
pub struct Config {
    /// Settings every service shares.
    pub common: CommonConfig,
}

impl Config {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&Env::process())
    }

    /// From `env`, so that tests configure the service with a map.
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Config {
            common: CommonConfig::from_env(env, "inventory")?,
        })
    }
}

/// Builds the whole service; tests start it on port 0.
pub async fn build(config: Config) -> anyhow::Result<RunningService> {
    let core = ServiceCore::start(config.common).await?;
    let store = Arc::new(store::InventoryStore::new(core.store.clone(), &core.tasks));
    store.ensure_indexes().await?;
    core.spawn_consumer(
        ToInventoryService::SUBSCRIPTION,
        Arc::new(handler::OrderEvents {
            store: store.clone(),
        }),
    );
    core.with_history_source(store.clone())
        .serve(http::InventoryApi { store }, "Inventory service")
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = Config::from_lookup(&Env::from_lookup(|_| None)).unwrap();
        assert_eq!(config.common.port, 3002);
        assert_eq!(config.common.database, "inventory_service");
    }
}
