//! The notification service: emails the customer about each order outcome
//! and the admin about low stock.

pub mod domain;
pub mod error;
pub mod handler;
pub mod http;
pub mod sender;
pub mod store;

use std::sync::Arc;

use shared::{
    broker::topology::NOTIFICATION_SERVICE,
    config::{CommonConfig, ConfigError, Env},
    service::{RunningService, ServiceCore},
};

#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    pub smtp: sender::SmtpConfig,
    /// `ADMIN_EMAIL`: where low-stock alerts go.
    pub admin_email: String,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let env = Env::process();
        Ok(Config {
            common: CommonConfig::from_env(
                &env,
                "notification-service",
                3003,
                "notification_service",
            )?,
            smtp: sender::SmtpConfig {
                host: env.string("SMTP_HOST", "127.0.0.1"),
                port: env.parse("SMTP_PORT", 1025)?,
                from: env.string("NOTIFY_FROM", "shop@example.com"),
            },
            admin_email: env.string("ADMIN_EMAIL", "admin@example.com"),
        })
    }
}

/// Builds the whole service; tests start it on port 0.
pub async fn build(config: Config) -> anyhow::Result<RunningService> {
    let core = ServiceCore::start(config.common).await?;
    let store = Arc::new(store::NotificationStore::new(
        core.store.clone(),
        &core.tasks,
    ));
    store.ensure_indexes().await?;
    let sender = sender::Sender::new(
        store.clone(),
        &config.smtp,
        core.config.retry,
        &core.breakers,
    )?;
    core.tasks.spawn(sender.run(core.shutdown.clone()));
    core.spawn_consumer(
        NOTIFICATION_SERVICE,
        Arc::new(handler::SagaOutcomes {
            store: store.clone(),
            admin_email: config.admin_email,
        }),
    );
    core.serve(http::NotificationApi { store }, "Notification service")
        .await
}
