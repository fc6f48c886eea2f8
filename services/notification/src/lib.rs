//! The notification service: emails the customer about each order outcome
//! and the admin about low stock.

pub mod domain;
pub mod error;
pub mod handler;
pub mod http;
pub mod sender;
pub mod store;

use std::{sync::Arc, time::Duration};

use shared::{
    broker::topology::NOTIFICATION_SERVICE,
    config::{CommonConfig, ConfigError, Env},
    service::{RunningService, ServiceCore},
};

#[derive(Clone, Debug)]
pub struct Config {
    /// Settings every service shares.
    pub common: CommonConfig,
    /// `SMTP_HOST`, `SMTP_PORT` and `NOTIFY_FROM`.
    pub smtp: sender::SmtpConfig,
    /// `ADMIN_EMAIL`: where low-stock alerts go.
    pub admin_email: String,
    /// `EMAIL_GIVE_UP_HOURS` (default 24): how long a notification waits
    /// through an SMTP outage before it is FAILED.
    pub email_give_up: Duration,
}

impl Config {
    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&Env::process())
    }

    /// From `env`, so that tests configure the service with a map.
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Config {
            common: CommonConfig::from_env(
                env,
                "notification-service",
                3003,
                "notification_service",
            )?,
            smtp: sender::SmtpConfig {
                host: env.string("SMTP_HOST", "127.0.0.1"),
                port: env.parse("SMTP_PORT", 1025)?,
                from: env.checked("NOTIFY_FROM", "shop@example.com", |from| {
                    from.parse::<lettre::message::Mailbox>().map(drop)
                })?,
            },
            admin_email: env.string("ADMIN_EMAIL", "admin@example.com"),
            email_give_up: Duration::from_secs(
                3600 * env.parse_checked("EMAIL_GIVE_UP_HOURS", 24u64, |hours| match hours {
                    0 => Err("must be at least 1"),
                    _ => Ok(()),
                })?,
            ),
        })
    }
}

/// Builds the whole service; tests start it on port 0.
pub async fn build(config: Config) -> anyhow::Result<RunningService> {
    let core = ServiceCore::start(config.common).await?;
    let sender_name = format!("sender-{}", uuid::Uuid::new_v4());
    let (store, born) =
        store::NotificationStore::new(core.store.clone(), &core.tasks, &sender_name);
    let store = Arc::new(store);
    store.ensure_indexes().await?;
    let sender = sender::Sender::new(
        store.clone(),
        sender_name,
        &config.smtp,
        core.config.retry,
        config.email_give_up,
        &core.breakers,
    )?;
    core.tasks.spawn(sender.run(born, core.shutdown.clone()));
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
        assert_eq!(config.common.port, 3003);
        assert_eq!(config.common.database, "notification_service");
        assert_eq!(
            (
                config.smtp.host.as_str(),
                config.smtp.port,
                config.smtp.from.as_str()
            ),
            ("127.0.0.1", 1025, "shop@example.com")
        );
        assert_eq!(config.admin_email, "admin@example.com");
    }

    #[test]
    fn an_smtp_port_that_is_not_a_number_names_the_variable() {
        let err = config(&[("SMTP_PORT", "mail")]).unwrap_err();
        assert_eq!(err.name, "SMTP_PORT");
    }

    #[test]
    fn a_sender_that_is_not_an_email_address_is_refused() {
        let err = config(&[("NOTIFY_FROM", "shop")]).unwrap_err();
        assert_eq!(err.name, "NOTIFY_FROM");
        assert!(config(&[("NOTIFY_FROM", "Shop <shop@example.com>")]).is_ok());
    }
}
