//! Configuration from environment variables, with documented defaults.
//!
//! Parsing goes through a lookup function rather than `std::env` directly so
//! that the rules are unit-tested without touching the process environment.

use std::time::Duration;

use std::num::NonZeroU32;

use crate::{
    broker::{self, DEFAULT_HEARTBEAT_SECONDS, Senders, topology::QueueType, with_heartbeat},
    http::{
        JwtSettings, TrustedProxies, host::AllowedHosts, ratelimit::RateLimit,
        server::AllowedOrigins,
    },
    retry::RetryPolicy,
};

/// A setting that must not reach a log: `Debug` shows `***`, and the value
/// is only had through [`Secret::expose`], where it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A URL with its password replaced by `***`, for logs and messages; also
/// a RabbitMQ cluster's nodes, several URLs separated by commas (a MongoDB
/// URI's commas, between its hosts, stay inside the one URL).
pub(crate) fn redacted(address: &str) -> String {
    address
        .split(',')
        .map(|part| {
            if part.contains("://") {
                redacted_one(part)
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn redacted_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first '/', '?' or '#'; credentials before
    // its last '@'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials
                .split_once(':')
                .map_or(credentials, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// `APP_ENV`: `production` turns every development default that would be a
/// hole (a known admin token, no customer-token key, default broker or
/// database credentials) into a refusal to start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppEnv {
    #[default]
    Development,
    Production,
}

impl std::str::FromStr for AppEnv {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "development" => Ok(AppEnv::Development),
            "production" => Ok(AppEnv::Production),
            _ => Err("must be development or production"),
        }
    }
}

/// Admin tokens that anyone who has read this repository knows.
const KNOWN_DEV_TOKENS: [&str; 3] = ["dev-admin-token", "test-admin-token", "changeme"];
/// The shortest admin token or JWT secret production accepts: 256 bits of
/// a random token's worth of characters.
const MIN_SECRET_LEN: usize = 32;

/// A variable that is set but cannot be used. Startup stops with this message.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {name}={shown:?}: {reason}", shown = redacted(.value))]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// EX_USAGE from sysexits.h: the program was started the wrong way, so
/// restarting it unchanged will not help.
const EX_USAGE: i32 = 64;

impl ConfigError {
    /// Ends the process over a bad configuration: this one line on stderr
    /// (telemetry may not be set up yet) and exit code 64. For `main`, as
    /// `Config::from_env().unwrap_or_else(|error| error.exit())`.
    pub fn exit(self) -> ! {
        eprintln!("{self}");
        std::process::exit(EX_USAGE)
    }
}

/// Reads variables through `lookup`, falling back to defaults.
pub struct Env<F: Fn(&str) -> Option<String>> {
    lookup: F,
}

impl Env<fn(&str) -> Option<String>> {
    /// The process environment.
    pub fn process() -> Self {
        Env {
            lookup: |name| std::env::var(name).ok().filter(|v| !v.is_empty()),
        }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn from_lookup(lookup: F) -> Self {
        Env { lookup }
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        (self.lookup)(name).unwrap_or_else(|| default.to_string())
    }

    /// A string setting that must pass `check` (say, parse as a URL) to be
    /// usable, so that a bad one stops startup instead of failing later.
    pub fn checked<E: std::fmt::Display>(
        &self,
        name: &str,
        default: &str,
        check: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<String, ConfigError> {
        let value = self.string(name, default);
        match check(&value) {
            Ok(()) => Ok(value),
            Err(e) => Err(ConfigError {
                name: name.to_string(),
                reason: e.to_string(),
                value,
            }),
        }
    }

    /// [`Env::parse`], then `check` on the value; its error is the reason.
    pub fn parse_checked<T, E: std::fmt::Display>(
        &self,
        name: &str,
        default: T,
        check: impl FnOnce(&T) -> Result<(), E>,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + std::fmt::Display,
        T::Err: std::fmt::Display,
    {
        let value = self.parse(name, default)?;
        match check(&value) {
            Ok(()) => Ok(value),
            Err(e) => Err(ConfigError {
                name: name.to_string(),
                value: value.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        match (self.lookup)(name) {
            None => Ok(default),
            Some(value) => value.trim().parse().map_err(|e: T::Err| ConfigError {
                name: name.to_string(),
                reason: e.to_string(),
                value,
            }),
        }
    }

    /// A duration in milliseconds.
    pub(crate) fn millis(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse(name, default.as_millis() as u64)
            .map(Duration::from_millis)
    }
}

/// When dead letters of transient failures go back to their queue by
/// themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redrive {
    /// How long after it died.
    pub after: Duration,
    /// How many times one message is sent back at most.
    pub times: u32,
}

/// Settings every service shares.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    /// Service name, used in logs, event `source` and queue names.
    pub service: &'static str,
    /// HTTP port (`PORT`); 0 picks a free one.
    pub port: u16,
    /// Address to bind (`BIND_ADDRESS`, default 127.0.0.1; 0.0.0.0 in containers).
    pub bind_address: String,
    /// `MONGODB_URI`, default `mongodb://127.0.0.1:27017`. It may carry a
    /// password: log it through [`redacted`].
    pub mongodb_uri: Secret,
    /// `MONGODB_DATABASE`: the database this service owns.
    pub database: String,
    /// `RABBITMQ_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`,
    /// with `heartbeat=<AMQP_HEARTBEAT_SECONDS>` added to its query (default
    /// 30; 0 adds nothing) unless it names a heartbeat itself. Every
    /// connection of the service opens this URL. It carries a password: log
    /// it through [`redacted`].
    pub rabbitmq_url: Secret,
    /// `AMQP_NAMESPACE`: prefix for every exchange and queue name, so that
    /// several stacks (or parallel tests) share one broker without crosstalk.
    pub amqp_namespace: String,
    /// `AMQP_QUEUE_EXPIRES_MS`: unset (the default) keeps queues forever;
    /// set for throwaway namespaces so the broker deletes their queues once
    /// unused for that long. Must outlast the longest life of a retry tier
    /// queue without a redeclare, i.e. the life of the stack.
    pub queue_expiry: Option<Duration>,
    /// `AMQP_QUEUE_TYPE`: `classic` (the default, for a single broker) or
    /// `quorum` (for a RabbitMQ cluster: the queues are replicated).
    pub queue_type: QueueType,
    /// `AMQP_SOURCE_USERS`: the broker user of each event source; with it,
    /// consumers refuse events their claimed source did not publish.
    pub senders: Senders,
    /// `APP_ENV` [development].
    pub app_env: AppEnv,
    /// `ADMIN_TOKEN`: bearer tokens for admin routes, comma-separated so an
    /// old one keeps working while clients move to its successor. None set:
    /// every admin route refuses.
    pub admin_tokens: Vec<Secret>,
    /// `JWT_SECRET` (HS256) or `JWT_PUBLIC_KEY_FILE` (RS256/EdDSA, PEM),
    /// with `JWT_ISSUER` and `JWT_AUDIENCE`: how customer tokens are
    /// verified. None: customer routes take only an admin token.
    pub jwt: Option<JwtSettings>,
    /// `PREFETCH`: unacknowledged deliveries a consumer works on at once.
    pub prefetch: u16,
    /// `RETRY_BUDGET_SECONDS` (180): how long after its first failure a
    /// message is retried; `RETRY_BASE_MS`, `RETRY_CAP_MS`: its backoff.
    pub retry: RetryPolicy,
    /// `DEAD_LETTER_REDRIVE_AFTER_SECONDS` (300) and `DEAD_LETTER_REDRIVES`
    /// (3): a dead letter of a transient failure goes back to its queue by
    /// itself this long after it died, this many times over; 0 redrives
    /// turns it off.
    pub redrive: Option<Redrive>,
    /// `RATE_LIMIT_PER_SECOND` (default 100) and `RATE_LIMIT_BURST` (default
    /// 200) per client address; a rate of 0 turns limiting off.
    pub rate_limit: Option<RateLimit>,
    /// `TRUSTED_PROXIES` (default none): comma-separated CIDRs or addresses
    /// of the proxies in front (nginx, an ingress) whose `X-Forwarded-For`
    /// names the client for rate limits and logs.
    pub trusted_proxies: TrustedProxies,
    /// `CORS_ALLOWED_ORIGINS` (default none: CORS off): comma-separated
    /// exact origins (`https://shop.example.com`) whose pages may call the API.
    pub cors_allowed_origins: AllowedOrigins,
    /// `ALLOWED_HOSTS` (default none): comma-separated names clients reach
    /// the services by (`shop.example.com`, `.example.com`, `*`), besides
    /// addresses, `localhost` and one-label names, which are always
    /// answered; a request naming another host gets 400 (DNS rebinding).
    pub allowed_hosts: AllowedHosts,
    /// `MAX_IN_FLIGHT_REQUESTS` (default 64): requests in progress at once;
    /// past it, 503 with Retry-After. 0 turns shedding off.
    pub max_in_flight: Option<usize>,
    /// `INBOX_RETENTION_DAYS` (default 7): how long a handled event's inbox
    /// record is kept. A redelivery older than that is no longer recognised
    /// by its id (the effects' own guards still hold).
    pub inbox_retention: Duration,
    /// `HISTORY_RETENTION_DAYS` (default 30): how long the lines of an
    /// order's history kept apart from its documents are kept (a TTL index
    /// expires them; those kept in the order, reservation or notification
    /// last as long as it). 0 records none (the benchmark measures the
    /// history's cost so).
    pub history_retention: Option<Duration>,
    /// `CONSUMER_READY_GRACE_SECONDS` (default 30): `/ready` answers 503
    /// while a consumer has been disconnected for longer than this, so a
    /// reconnect after a broker restart does not flap readiness.
    pub consumer_ready_grace: Duration,
    /// `WORKER_THREADS` (default 1): threads of the service's async runtime
    /// (see [`crate::runtime`]).
    pub worker_threads: usize,
}

impl CommonConfig {
    /// The settings of the service `name` has in services/registry.txt,
    /// whose port and database are the defaults of `PORT` and
    /// `MONGODB_DATABASE`.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        name: &str,
    ) -> Result<Self, ConfigError> {
        let registered = crate::registry::service(name);
        let retry = RetryPolicy {
            budget: Duration::from_secs(env.parse("RETRY_BUDGET_SECONDS", 180)?),
            base: env.millis("RETRY_BASE_MS", Duration::from_secs(1))?,
            cap: env.millis("RETRY_CAP_MS", Duration::from_secs(60))?,
        };
        if retry.base.is_zero() || retry.cap < retry.base {
            return Err(ConfigError {
                name: "RETRY_CAP_MS".into(),
                value: retry.cap.as_millis().to_string(),
                reason: "the base delay must be positive and the cap at least the base".into(),
            });
        }
        let prefetch: u16 = env.parse("PREFETCH", 64)?;
        if prefetch == 0 {
            return Err(ConfigError {
                name: "PREFETCH".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let app_env = env.parse("APP_ENV", AppEnv::Development)?;
        let per_second: u32 = env.parse("RATE_LIMIT_PER_SECOND", 100)?;
        let burst: u32 = env.parse("RATE_LIMIT_BURST", per_second.saturating_mul(2))?;
        let rate_limit = match (NonZeroU32::new(per_second), NonZeroU32::new(burst)) {
            (None, _) => None,
            (Some(per_second), Some(burst)) => Some(RateLimit { per_second, burst }),
            (Some(_), None) => {
                return Err(ConfigError {
                    name: "RATE_LIMIT_BURST".into(),
                    value: "0".into(),
                    reason: "must be at least 1 (set RATE_LIMIT_PER_SECOND=0 to turn limiting off)"
                        .into(),
                });
            }
        };
        let config = CommonConfig {
            service: &registered.service,
            port: env.parse("PORT", registered.port)?,
            bind_address: env.string("BIND_ADDRESS", "127.0.0.1"),
            mongodb_uri: Secret(env.checked(
                "MONGODB_URI",
                "mongodb://127.0.0.1:27017",
                |uri| {
                    // The kind alone: the whole error's text is a struct dump.
                    mongodb::options::ConnectionString::parse(uri)
                        .map(drop)
                        .map_err(|e| e.kind)
                },
            )?),
            database: env.string("MONGODB_DATABASE", &registered.database),
            // Checked here: the services start without the broker and keep
            // reconnecting, which for a malformed URL would be forever.
            rabbitmq_url: {
                let address = env.checked(
                    "RABBITMQ_URL",
                    "amqp://guest:guest@127.0.0.1:5672/%2f",
                    |address| {
                        if broker::nodes(address).next().is_none() {
                            return Err("names no URL".to_string());
                        }
                        broker::nodes(address)
                            .try_for_each(|url| url.parse::<lapin::uri::AMQPUri>().map(drop))
                    },
                )?;
                let heartbeat = env.parse("AMQP_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS)?;
                Secret(
                    broker::nodes(&address)
                        .map(|url| with_heartbeat(url, heartbeat))
                        .collect::<Result<Vec<_>, _>>()
                        .expect("RABBITMQ_URL was checked above")
                        .join(","),
                )
            },
            amqp_namespace: env.string("AMQP_NAMESPACE", ""),
            queue_expiry: match env.parse::<u64>("AMQP_QUEUE_EXPIRES_MS", 0)? {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            queue_type: env.parse("AMQP_QUEUE_TYPE", QueueType::Classic)?,
            senders: env.parse("AMQP_SOURCE_USERS", Senders::default())?,
            app_env,
            admin_tokens: env
                .string("ADMIN_TOKEN", "")
                .split(',')
                .map(str::trim)
                .filter(|token| !token.is_empty())
                .map(Secret::new)
                .collect(),
            jwt: jwt_settings(env)?,
            prefetch,
            retry,
            rate_limit,
            trusted_proxies: env.parse("TRUSTED_PROXIES", TrustedProxies::default())?,
            cors_allowed_origins: env.parse("CORS_ALLOWED_ORIGINS", AllowedOrigins::default())?,
            allowed_hosts: env.parse("ALLOWED_HOSTS", AllowedHosts::default())?,
            max_in_flight: Some(env.parse("MAX_IN_FLIGHT_REQUESTS", 64usize)?).filter(|n| *n > 0),
            redrive: match env.parse("DEAD_LETTER_REDRIVES", 3u32)? {
                0 => None,
                times => Some(Redrive {
                    after: Duration::from_secs(
                        env.parse("DEAD_LETTER_REDRIVE_AFTER_SECONDS", 300)?,
                    ),
                    times,
                }),
            },
            inbox_retention: Duration::from_secs(
                24 * 3600
                    * env.parse_checked("INBOX_RETENTION_DAYS", 7u64, |days| match days {
                        0 => Err("must be at least 1"),
                        _ => Ok(()),
                    })?,
            ),
            history_retention: match env.parse("HISTORY_RETENTION_DAYS", 30u64)? {
                0 => None,
                days => Some(Duration::from_secs(24 * 3600 * days)),
            },
            consumer_ready_grace: Duration::from_secs(
                env.parse("CONSUMER_READY_GRACE_SECONDS", 30)?,
            ),
            worker_threads: env.parse_checked("WORKER_THREADS", 1usize, |n| match n {
                0 => Err("must be at least 1"),
                _ => Ok(()),
            })?,
        };
        if app_env == AppEnv::Production {
            config.refuse_development_defaults()?;
        }
        Ok(config)
    }

    /// With `APP_ENV=production`: the first setting that would leave a
    /// development default in place, as the error that stops startup.
    fn refuse_development_defaults(&self) -> Result<(), ConfigError> {
        let refuse = |name: &str, value: &str, reason: &str| {
            Err(ConfigError {
                name: name.into(),
                value: value.into(),
                reason: format!("{reason} (APP_ENV=production)"),
            })
        };
        if self.admin_tokens.is_empty() {
            return refuse("ADMIN_TOKEN", "", "must be set");
        }
        for token in &self.admin_tokens {
            if KNOWN_DEV_TOKENS.contains(&token.expose()) {
                return refuse("ADMIN_TOKEN", "***", "is a published development token");
            }
            if token.expose().len() < MIN_SECRET_LEN {
                return refuse(
                    "ADMIN_TOKEN",
                    "***",
                    &format!("each token must be at least {MIN_SECRET_LEN} characters"),
                );
            }
        }
        // The inventory service has no customer routes.
        if self.jwt.is_none() && self.service != "inventory-service" {
            return refuse(
                "JWT_SECRET",
                "",
                "customer tokens need a key: set JWT_SECRET or JWT_PUBLIC_KEY_FILE",
            );
        }
        if !self.allowed_hosts.is_set() {
            return refuse(
                "ALLOWED_HOSTS",
                "",
                "must be set: the names clients reach the services by (shop.example.com), or * for any",
            );
        }
        // Without them, any token the key's owner (an identity provider,
        // say) issued for another application would be taken as this shop's.
        if let Some(jwt) = &self.jwt {
            if jwt.issuer.is_none() {
                return refuse(
                    "JWT_ISSUER",
                    "",
                    "must be set: without it a token issued by anyone holding the key is accepted",
                );
            }
            if jwt.audience.is_none() {
                return refuse(
                    "JWT_AUDIENCE",
                    "",
                    "must be set: without it a token issued for another application is accepted",
                );
            }
        }
        let broker = redacted(self.rabbitmq_url.expose());
        let guest = broker::nodes(self.rabbitmq_url.expose()).any(|url| {
            url.parse::<lapin::uri::AMQPUri>().is_ok_and(|uri| {
                uri.authority.userinfo.username == "guest"
                    || uri.authority.userinfo.password == "guest"
            })
        });
        if guest {
            return refuse(
                "RABBITMQ_URL",
                &broker,
                "uses RabbitMQ's default guest account",
            );
        }
        let database = self.mongodb_uri.expose();
        // Parsed already at startup (`MONGODB_URI` is checked), so this holds.
        let has_credentials = mongodb::options::ConnectionString::parse(database)
            .is_ok_and(|uri| uri.credential.is_some());
        if !has_credentials {
            return refuse(
                "MONGODB_URI",
                &redacted(database),
                "has no credentials: production MongoDB runs with authentication",
            );
        }
        Ok(())
    }
}

/// The customer-token settings, if a key is configured.
fn jwt_settings<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<Option<JwtSettings>, ConfigError> {
    let secret = env.string("JWT_SECRET", "");
    let file = env.string("JWT_PUBLIC_KEY_FILE", "");
    let error = |name: &str, value: &str, reason: &str| ConfigError {
        name: name.into(),
        value: value.into(),
        reason: reason.into(),
    };
    let mut settings = match (secret.is_empty(), file.is_empty()) {
        (true, true) => return Ok(None),
        (false, false) => {
            return Err(error(
                "JWT_PUBLIC_KEY_FILE",
                &file,
                "set JWT_SECRET or JWT_PUBLIC_KEY_FILE, not both",
            ));
        }
        (false, true) if secret.len() < MIN_SECRET_LEN => {
            return Err(error(
                "JWT_SECRET",
                "***",
                &format!("must be at least {MIN_SECRET_LEN} characters for HS256"),
            ));
        }
        (false, true) => JwtSettings::secret(&Secret(secret)),
        (true, false) => {
            let pem = std::fs::read(&file).map_err(|e| {
                error(
                    "JWT_PUBLIC_KEY_FILE",
                    &file,
                    &format!("cannot read it: {e}"),
                )
            })?;
            JwtSettings::public_key(&pem, &file)
                .map_err(|reason| error("JWT_PUBLIC_KEY_FILE", &file, reason))?
        }
    };
    settings.issuer = Some(env.string("JWT_ISSUER", "")).filter(|s| !s.is_empty());
    settings.audience = Some(env.string("JWT_AUDIENCE", "")).filter(|s| !s.is_empty());
    Ok(Some(settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(move |k| map.get(k).cloned())
    }

    /// The order service's common settings from `pairs`.
    fn common(pairs: &[(&str, &str)]) -> Result<CommonConfig, ConfigError> {
        CommonConfig::from_env(&env(pairs), "order")
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = common(&[]).unwrap();
        assert_eq!(config.port, 3001);
        assert_eq!(config.database, "order_service");
        assert_eq!(config.retry.budget, Duration::from_secs(180));
        assert_eq!(
            config.redrive,
            Some(Redrive {
                after: Duration::from_secs(300),
                times: 3
            })
        );
        assert_eq!(config.retry.base, Duration::from_secs(1));
        assert_eq!(config.retry.cap, Duration::from_secs(60));
    }

    #[test]
    fn queues_never_expire_unless_asked() {
        let keep = common(&[]).unwrap();
        assert_eq!(keep.queue_expiry, None);
        let throwaway = common(&[("AMQP_QUEUE_EXPIRES_MS", "60000")]).unwrap();
        assert_eq!(throwaway.queue_expiry, Some(Duration::from_secs(60)));
    }

    const STRONG_TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";
    const STRONG_SECRET: &str = "0123456789abcdef0123456789abcdef-jwt";

    /// Settings a production deployment passes with.
    fn production() -> Vec<(&'static str, &'static str)> {
        vec![
            ("APP_ENV", "production"),
            ("ADMIN_TOKEN", STRONG_TOKEN),
            ("JWT_SECRET", STRONG_SECRET),
            ("JWT_ISSUER", "https://id.example.com/"),
            ("JWT_AUDIENCE", "shop"),
            ("ALLOWED_HOSTS", "shop.example.com"),
            (
                "MONGODB_URI",
                "mongodb://orders:s3cret@db-0,db-1/?replicaSet=rs0",
            ),
            ("RABBITMQ_URL", "amqp://orders:s3cret@rabbit/%2f"),
        ]
    }

    /// The production settings with `name` set to `value` ("" removes it).
    fn production_with(
        name: &'static str,
        value: &'static str,
    ) -> Result<CommonConfig, ConfigError> {
        let mut pairs: Vec<_> = production()
            .into_iter()
            .filter(|(k, _)| *k != name)
            .collect();
        if !value.is_empty() {
            pairs.push((name, value));
        }
        common(&pairs)
    }

    #[test]
    fn production_starts_with_real_secrets() {
        let config = common(&production()).unwrap();
        assert_eq!(config.app_env, AppEnv::Production);
        assert_eq!(config.admin_tokens.len(), 1);
        assert!(config.jwt.is_some());
    }

    #[test]
    fn production_refuses_every_development_default() {
        for (name, value, reason) in [
            ("ADMIN_TOKEN", "", "must be set"),
            (
                "ADMIN_TOKEN",
                "dev-admin-token",
                "published development token",
            ),
            ("ADMIN_TOKEN", "short-token", "at least 32 characters"),
            ("JWT_SECRET", "", "customer tokens need a key"),
            ("JWT_ISSUER", "", "issued by anyone holding the key"),
            (
                "ALLOWED_HOSTS",
                "",
                "the names clients reach the services by",
            ),
            ("JWT_AUDIENCE", "", "issued for another application"),
            (
                "RABBITMQ_URL",
                "amqp://guest:guest@rabbit/%2f",
                "guest account",
            ),
            ("RABBITMQ_URL", "", "guest account"),
            (
                "RABBITMQ_URL",
                "amqp://orders:s3cret@rabbit-0/%2f,amqp://guest:guest@rabbit-1/%2f",
                "guest account",
            ),
            (
                "MONGODB_URI",
                "mongodb://db-0/?replicaSet=rs0",
                "no credentials",
            ),
            ("MONGODB_URI", "", "no credentials"),
        ] {
            let err = production_with(name, value).unwrap_err();
            assert_eq!(err.name, name, "{name}={value:?}: {err}");
            assert!(err.to_string().contains(reason), "{name}={value:?}: {err}");
            assert!(err.to_string().contains("APP_ENV=production"), "{err}");
        }
        // A token being rotated out is held to the same rules.
        let rotating = "0123456789abcdef0123456789abcdef-admin,dev-admin-token";
        assert_eq!(
            production_with("ADMIN_TOKEN", rotating).unwrap_err().name,
            "ADMIN_TOKEN"
        );
    }

    #[test]
    fn development_starts_without_any_secret() {
        let config = common(&[]).unwrap();
        assert_eq!(config.app_env, AppEnv::Development);
        assert!(config.admin_tokens.is_empty());
        assert!(config.jwt.is_none());
    }

    #[test]
    fn admin_tokens_are_a_comma_separated_list_for_rotation() {
        let config = common(&[("ADMIN_TOKEN", " old-token , new-token ,")]).unwrap();
        let tokens: Vec<&str> = config.admin_tokens.iter().map(Secret::expose).collect();
        assert_eq!(tokens, ["old-token", "new-token"]);
    }

    #[test]
    fn a_jwt_key_is_one_strong_secret_or_one_readable_public_key() {
        let err = common(&[("JWT_SECRET", "too-short")]).unwrap_err();
        assert_eq!(err.name, "JWT_SECRET");
        assert!(
            !err.to_string().contains("too-short"),
            "the secret leaked: {err}"
        );
        let err = common(&[
            ("JWT_SECRET", STRONG_SECRET),
            ("JWT_PUBLIC_KEY_FILE", "/k.pem"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let err = common(&[("JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem")]).unwrap_err();
        assert_eq!(err.name, "JWT_PUBLIC_KEY_FILE");
        assert!(err.to_string().contains("cannot read it"), "{err}");
        let config =
            common(&[("JWT_SECRET", STRONG_SECRET), ("JWT_ISSUER", "https://id")]).unwrap();
        assert_eq!(config.jwt.unwrap().issuer.as_deref(), Some("https://id"));
    }

    #[test]
    fn the_configuration_debug_shows_no_secret() {
        let config = common(&production()).unwrap();
        let shown = format!("{config:?}");
        for secret in [STRONG_TOKEN, STRONG_SECRET, "s3cret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("admin_tokens: [***]"), "{shown}");
    }

    #[test]
    fn redacted_urls_keep_everything_but_the_password() {
        assert_eq!(
            redacted("mongodb://orders:s3cret@db-0:27017,db-1/?replicaSet=rs0"),
            "mongodb://orders:***@db-0:27017,db-1/?replicaSet=rs0"
        );
        assert_eq!(
            redacted("amqp://user:p@ss@rabbit/%2f"),
            "amqp://user:***@rabbit/%2f"
        );
        assert_eq!(
            redacted("amqp://a:one@rabbit-0/%2f, amqp://b:two@rabbit-1:5673/%2f"),
            "amqp://a:***@rabbit-0/%2f, amqp://b:***@rabbit-1:5673/%2f"
        );
        assert_eq!(redacted("mongodb://db-0/?w=1"), "mongodb://db-0/?w=1");
        assert_eq!(redacted("not a url"), "not a url");
    }

    #[test]
    fn queues_are_classic_unless_quorum_is_asked_for() {
        assert_eq!(common(&[]).unwrap().queue_type, QueueType::Classic);
        let cluster = common(&[("AMQP_QUEUE_TYPE", "quorum")]).unwrap();
        assert_eq!(cluster.queue_type, QueueType::Quorum);
        let err = common(&[("AMQP_QUEUE_TYPE", "mirrored")]).unwrap_err();
        assert_eq!(err.name, "AMQP_QUEUE_TYPE");
        assert!(err.to_string().contains("classic or quorum"), "{err}");
    }

    #[test]
    fn a_port_that_is_not_a_number_names_the_variable() {
        let err = common(&[("PORT", "http")]).unwrap_err();
        assert_eq!(err.name, "PORT");
        assert!(err.to_string().contains("PORT=\"http\""), "{err}");
    }

    #[test]
    fn trusted_proxies_are_none_unless_listed_and_a_bad_entry_names_the_variable() {
        let none = common(&[]).unwrap();
        assert_eq!(none.trusted_proxies, TrustedProxies::default());
        let listed = common(&[("TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")]).unwrap();
        assert_ne!(listed.trusted_proxies, TrustedProxies::default());
        let err = common(&[("TRUSTED_PROXIES", "10.0.0.0/8,nginx")]).unwrap_err();
        assert_eq!(err.name, "TRUSTED_PROXIES");
        assert!(err.to_string().contains("\"nginx\""), "{err}");
    }

    #[test]
    fn cors_is_off_unless_origins_are_listed_and_a_bad_entry_names_the_variable() {
        assert_eq!(
            common(&[]).unwrap().cors_allowed_origins,
            AllowedOrigins::default()
        );
        let listed = "https://shop.example, http://localhost:8080";
        assert_eq!(
            common(&[("CORS_ALLOWED_ORIGINS", listed)])
                .unwrap()
                .cors_allowed_origins,
            listed.parse().unwrap()
        );
        let err =
            common(&[("CORS_ALLOWED_ORIGINS", "https://shop.example,shop.example")]).unwrap_err();
        assert_eq!(err.name, "CORS_ALLOWED_ORIGINS");
        assert!(
            err.to_string()
                .contains("\"shop.example\" is not an origin"),
            "{err}"
        );
    }

    #[test]
    fn allowed_hosts_are_none_unless_listed_and_a_bad_entry_names_the_variable() {
        assert!(!common(&[]).unwrap().allowed_hosts.is_set());
        let listed = common(&[("ALLOWED_HOSTS", "shop.example.com")]).unwrap();
        assert!(listed.allowed_hosts.allows("shop.example.com:443"));
        let err = common(&[("ALLOWED_HOSTS", "https://shop.example.com")]).unwrap_err();
        assert_eq!(err.name, "ALLOWED_HOSTS");
        assert!(err.to_string().contains("not a host name"), "{err}");
    }

    #[test]
    fn rate_limits_default_to_twice_the_rate_as_burst_and_zero_turns_them_off() {
        let config = common(&[("RATE_LIMIT_PER_SECOND", "50")]).unwrap();
        let limit = config.rate_limit.unwrap();
        assert_eq!((limit.per_second.get(), limit.burst.get()), (50, 100));
        let off = common(&[("RATE_LIMIT_PER_SECOND", "0")]).unwrap();
        assert_eq!(off.rate_limit, None);
        let err = common(&[("RATE_LIMIT_BURST", "0")]).unwrap_err();
        assert_eq!(err.name, "RATE_LIMIT_BURST");
    }

    #[test]
    fn broker_and_database_urls_that_do_not_parse_name_their_variable() {
        let err = common(&[("RABBITMQ_URL", "localhost:5672")]).unwrap_err();
        assert_eq!(err.name, "RABBITMQ_URL");
        let err = common(&[("MONGODB_URI", "localhost:27017")]).unwrap_err();
        assert_eq!(err.name, "MONGODB_URI");
        assert!(err.reason.contains("no scheme"), "{err}");
    }

    #[test]
    fn the_broker_url_asks_for_a_heartbeat_unless_told_otherwise() {
        let url = |pairs: &[(&str, &str)]| common(pairs).unwrap().rabbitmq_url.expose().to_string();
        assert_eq!(
            url(&[]),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=30"
        );
        assert_eq!(
            url(&[("AMQP_HEARTBEAT_SECONDS", "10")]),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"
        );
        assert_eq!(
            url(&[("AMQP_HEARTBEAT_SECONDS", "0")]),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            url(&[("RABBITMQ_URL", "amqp://rabbit/%2f?heartbeat=7")]),
            "amqp://rabbit/%2f?heartbeat=7"
        );
        let err = common(&[("AMQP_HEARTBEAT_SECONDS", "70000")]).unwrap_err();
        assert_eq!(err.name, "AMQP_HEARTBEAT_SECONDS");
    }

    #[test]
    fn event_sources_are_checked_only_when_their_broker_users_are_given() {
        assert!(!common(&[]).unwrap().senders.is_checking());
        let config = common(&[("AMQP_SOURCE_USERS", "order-service=order")]).unwrap();
        assert!(config.senders.is_checking());
        let err = common(&[("AMQP_SOURCE_USERS", "order-service")]).unwrap_err();
        assert_eq!(err.name, "AMQP_SOURCE_USERS");
        assert!(err.to_string().contains("source=user"), "{err}");
    }

    #[test]
    fn a_cluster_is_its_nodes_urls_separated_by_commas_each_checked() {
        let config = common(&[(
            "RABBITMQ_URL",
            "amqp://a:pw@rabbit-0/%2f, amqp://a:pw@rabbit-1/%2f?heartbeat=5,",
        )])
        .unwrap();
        assert_eq!(
            config.rabbitmq_url.expose(),
            "amqp://a:pw@rabbit-0/%2f?heartbeat=30,amqp://a:pw@rabbit-1/%2f?heartbeat=5"
        );
        let err =
            common(&[("RABBITMQ_URL", "amqp://a:pw@rabbit-0/%2f,rabbit-1:5672")]).unwrap_err();
        assert_eq!(err.name, "RABBITMQ_URL");
        // The message names the bad value, without the good node's password.
        let message = err.to_string();
        assert!(message.contains("rabbit-1:5672"), "{message}");
        assert!(!message.contains("pw"), "{message}");
        let err = common(&[("RABBITMQ_URL", " , ")]).unwrap_err();
        assert!(err.to_string().contains("names no URL"), "{err}");
    }

    #[test]
    fn consumers_get_thirty_seconds_to_reconnect_before_readiness_fails() {
        let config = common(&[]).unwrap();
        assert_eq!(config.consumer_ready_grace, Duration::from_secs(30));
        let config = common(&[("CONSUMER_READY_GRACE_SECONDS", "1")]).unwrap();
        assert_eq!(config.consumer_ready_grace, Duration::from_secs(1));
    }

    #[test]
    fn a_cap_below_the_base_is_refused() {
        let err = common(&[("RETRY_BASE_MS", "5000"), ("RETRY_CAP_MS", "100")]).unwrap_err();
        assert_eq!(err.name, "RETRY_CAP_MS");
    }
}
