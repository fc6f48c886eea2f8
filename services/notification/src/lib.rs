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
    config::{CommonConfig, ConfigError, Env, Secret},
    events::ToNotificationService,
    service::{RunningService, ServiceCore},
};

use crate::sender::{SmtpLogin, SmtpTls};

#[derive(Clone, Debug)]
pub struct Config {
    /// Settings every service shares.
    pub common: CommonConfig,
    /// `SMTP_HOST`, `SMTP_PORT`, `NOTIFY_FROM`, `SMTP_TLS`,
    /// `SMTP_TLS_INSECURE`, `SMTP_USERNAME` and `SMTP_PASSWORD`.
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
        let tls = env.parse("SMTP_TLS", SmtpTls::None)?;
        Ok(Config {
            common: CommonConfig::from_env(env, "notification")?,
            smtp: sender::SmtpConfig {
                host: env.string("SMTP_HOST", "127.0.0.1"),
                port: env.parse("SMTP_PORT", tls.default_port())?,
                from: env.checked("NOTIFY_FROM", "shop@example.com", |from| {
                    from.parse::<lettre::message::Mailbox>().map(drop)
                })?,
                tls,
                tls_insecure: env.parse("SMTP_TLS_INSECURE", false)?,
                login: smtp_login(env, tls)?,
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

/// `SMTP_USERNAME` and `SMTP_PASSWORD`: both or neither, and a password
/// only over TLS (lettre would send it in plain text otherwise).
fn smtp_login<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    tls: SmtpTls,
) -> Result<Option<SmtpLogin>, ConfigError> {
    let set = |name| Some(env.string(name, "")).filter(|value| !value.is_empty());
    let missing = |name: &str, other: &str| ConfigError {
        name: name.into(),
        value: String::new(),
        reason: format!("must be set when {other} is (set both or neither)"),
    };
    match (set("SMTP_USERNAME"), set("SMTP_PASSWORD")) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(missing("SMTP_PASSWORD", "SMTP_USERNAME")),
        (None, Some(_)) => Err(missing("SMTP_USERNAME", "SMTP_PASSWORD")),
        (Some(_), Some(_)) if tls == SmtpTls::None => Err(ConfigError {
            name: "SMTP_TLS".into(),
            value: "none".into(),
            reason: "would send SMTP_PASSWORD in plain text: use starttls or tls".into(),
        }),
        (Some(username), Some(password)) => Ok(Some(SmtpLogin {
            username,
            password: Secret::new(password),
        })),
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
        &core.metrics,
    )?;
    core.tasks.spawn(sender.run(born, core.shutdown.clone()));
    core.spawn_consumer(
        ToNotificationService::SUBSCRIPTION,
        Arc::new(handler::SagaOutcomes {
            store: store.clone(),
            admin_email: config.admin_email,
        }),
    );
    core.with_history_source(Arc::new(store::EmailHistory(store.clone())))
        .serve(http::NotificationApi { store }, "Notification service")
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
    fn smtp_is_plain_without_login_unless_asked_and_each_mode_has_its_port() {
        let plain = config(&[]).unwrap().smtp;
        assert_eq!(
            (plain.tls, plain.tls_insecure, plain.login.is_none()),
            (SmtpTls::None, false, true)
        );
        let port = |tls| config(&[("SMTP_TLS", tls)]).unwrap().smtp.port;
        assert_eq!((port("starttls"), port("tls")), (587, 465));
        let chosen = config(&[("SMTP_TLS", "starttls"), ("SMTP_PORT", "2525")]).unwrap();
        assert_eq!(chosen.smtp.port, 2525);
        let err = config(&[("SMTP_TLS", "ssl")]).unwrap_err();
        assert_eq!(err.name, "SMTP_TLS");
        assert!(err.reason.contains("none, starttls or tls"), "{err}");
        let err = config(&[("SMTP_TLS_INSECURE", "yes")]).unwrap_err();
        assert_eq!(err.name, "SMTP_TLS_INSECURE");
    }

    #[test]
    fn an_smtp_login_needs_both_username_and_password_and_tls() {
        let err = config(&[("SMTP_TLS", "starttls"), ("SMTP_USERNAME", "shop")]).unwrap_err();
        assert_eq!(err.name, "SMTP_PASSWORD");
        let err = config(&[("SMTP_TLS", "starttls"), ("SMTP_PASSWORD", "hunter2")]).unwrap_err();
        assert_eq!(err.name, "SMTP_USERNAME");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = config(&[("SMTP_USERNAME", "shop"), ("SMTP_PASSWORD", "hunter2")]).unwrap_err();
        assert_eq!(err.name, "SMTP_TLS");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let login = config(&[
            ("SMTP_TLS", "tls"),
            ("SMTP_USERNAME", "shop"),
            ("SMTP_PASSWORD", "hunter2"),
        ])
        .unwrap()
        .smtp
        .login
        .unwrap();
        assert_eq!(login.username, "shop");
    }

    #[test]
    fn the_smtp_password_never_shows_in_debug_output() {
        let config = config(&[
            ("SMTP_TLS", "starttls"),
            ("SMTP_USERNAME", "shop"),
            ("SMTP_PASSWORD", "hunter2"),
        ])
        .unwrap();
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password: ***"), "{shown}");
        assert!(shown.contains("shop"), "the username may show: {shown}");
    }

    #[test]
    fn a_sender_that_is_not_an_email_address_is_refused() {
        let err = config(&[("NOTIFY_FROM", "shop")]).unwrap_err();
        assert_eq!(err.name, "NOTIFY_FROM");
        assert!(config(&[("NOTIFY_FROM", "Shop <shop@example.com>")]).is_ok());
    }
}
