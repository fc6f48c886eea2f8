//! What starting a service means, once for all three: connect to MongoDB
//! (waiting a little, then failing with a clear message), run the outbox
//! relay, the consumers and the watch on their pauses, serve HTTP, and stop
//! every task on one signal.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use mongodb::Database;
use poem_openapi::OpenApi;
use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    broker::{
        Handler, Publisher, Subscription, Topology,
        consumer::{ConsumerRole, ConsumerSettings, Consumers, run_worker, supervise},
        run_consumer,
    },
    config::{CommonConfig, redacted},
    deadletter::{DeadLetterArchiver, DeadLetterStore, backfill_causes_once, redrive_until},
    history::HistoryStore,
    http::{
        self, GaugeSource, HealthApi,
        consumers::ConsumerApi,
        deadletters::DeadLetterApi,
        history::{HistoryApi, HistorySource, LocalHistory},
        loadshed::LoadShedder,
        ratelimit::RateLimiter,
    },
    metrics::Metrics,
    pauses::ConsumerPauses,
    resilience::Breakers,
    store::{self, OutboxRelay, Store, inbox::ensure_inbox_indexes, outbox::ensure_outbox_indexes},
};

/// How long startup waits for MongoDB before giving up.
const STARTUP_WAIT: Duration = Duration::from_secs(30);

/// A service's connections and background tasks, before HTTP is served.
pub struct ServiceCore {
    pub config: CommonConfig,
    pub db: Database,
    pub publisher: Arc<Publisher>,
    /// The database and outbox every write of the service goes through.
    pub store: Store,
    /// Every circuit breaker of the service, reported by `/ready`.
    pub breakers: Breakers,
    pub dead_letters: DeadLetterStore,
    /// Every consumer of the service, reported by `/ready` and `/metrics`.
    pub consumers: Consumers,
    /// The operators' pauses of those consumers, read from the database.
    pub pauses: ConsumerPauses,
    /// The service's Prometheus registry, where its own code counts too.
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// The service's own gauges for `/metrics` ([`Self::with_gauges`]).
    gauges: Option<Arc<dyn GaugeSource>>,
    /// Pages served beside the API ([`Self::with_routes`]).
    routes: Option<poem::Route>,
    /// History lines kept outside the history records
    /// ([`Self::with_history_source`]).
    history_source: Option<Arc<dyn HistorySource>>,
}

impl ServiceCore {
    pub async fn start(config: CommonConfig) -> anyhow::Result<Self> {
        let mongodb_uri = config.mongodb_uri.expose();
        let db = store::connect(mongodb_uri, &config.database, config.service)
            .await
            .with_context(|| {
                format!(
                    "MONGODB_URI={} is not a usable MongoDB URI",
                    redacted(mongodb_uri)
                )
            })?;
        wait_for_mongodb(&db, &redacted(mongodb_uri)).await?;
        ensure_outbox_indexes(&db)
            .await
            .context("creating outbox indexes")?;
        ensure_inbox_indexes(&db, config.inbox_retention)
            .await
            .context("creating inbox indexes")?;
        if let Some(retention) = config.history_retention {
            HistoryStore::new(&db)
                .ensure_indexes(retention)
                .await
                .context("creating history indexes")?;
        }
        let dead_letters = DeadLetterStore::new(&db);
        dead_letters
            .ensure_indexes()
            .await
            .context("creating dead-letter indexes")?;

        let consumers = Consumers::default();
        let pauses = ConsumerPauses::new(&db, consumers.clone());
        // Before any consumer starts: a restarted instance of a paused
        // queue must not take a single delivery.
        pauses.load().await.context("reading the consumer pauses")?;

        let breakers = Breakers::default();
        let topology = Topology::new(&config.amqp_namespace)
            .with_queue_expiry(config.queue_expiry)
            .with_queue_type(config.queue_type);
        let publisher = Publisher::new(
            config.rabbitmq_url.expose(),
            &connection_name(&config, "publisher"),
            topology,
        );
        let (relay, outbox) = OutboxRelay::new(
            &db,
            publisher.clone(),
            breakers.breaker("rabbitmq-publish", 3, Duration::from_secs(5)),
        );
        let core = ServiceCore {
            store: Store::new(db.clone(), outbox)
                .recording_history(config.history_retention.is_some()),
            db,
            publisher,
            breakers,
            dead_letters,
            consumers,
            pauses,
            metrics: Metrics::new(config.service),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            gauges: None,
            routes: None,
            history_source: None,
            config,
        };
        core.tasks.spawn(relay.run(core.shutdown.clone()));
        // Off the startup path: older dead letters get their order and class.
        core.tasks.spawn(backfill_causes_once(
            core.dead_letters.clone(),
            core.shutdown.clone(),
        ));
        core.tasks
            .spawn(core.pauses.clone().poll_until(core.shutdown.clone()));
        if let Some(redrive) = core.config.redrive {
            core.tasks.spawn(redrive_until(
                core.dead_letters.clone(),
                core.publisher.clone(),
                redrive,
                core.shutdown.clone(),
            ));
        }
        Ok(core)
    }

    /// Consumes `subscription` with `handler` until shutdown, and archives
    /// its dead letters for the admin routes. Each of the two runs on a task
    /// that is started again if it panics.
    pub fn spawn_consumer<H: Handler>(&self, subscription: Subscription, handler: Arc<H>) {
        let topology = self.publisher.topology().clone();
        let archiver = Arc::new(DeadLetterArchiver {
            topology: topology.clone(),
            subscription,
            policy: self.config.retry,
            store: self.dead_letters.clone(),
        });
        let state = self.consumers.register(
            topology.dead_letter_queue(&subscription),
            ConsumerRole::DeadLetters,
        );
        self.pauses.apply_known(&state);
        let url = self.config.rabbitmq_url.expose().to_string();
        let name = connection_name(&self.config, "dead-letters");
        let shutdown = self.shutdown.clone();
        self.tasks
            .spawn(supervise(state.clone(), shutdown.clone(), move || {
                let (archiver, url, name, state, shutdown) = (
                    archiver.clone(),
                    url.clone(),
                    name.clone(),
                    state.clone(),
                    shutdown.clone(),
                );
                async move {
                    run_worker(&url, &name, 16, archiver.as_ref(), &state, shutdown).await;
                }
            }));

        let settings = ConsumerSettings {
            url: self.config.rabbitmq_url.expose().to_string(),
            name: connection_name(&self.config, "consumer"),
            topology: topology.clone(),
            subscription,
            policy: self.config.retry,
            prefetch: self.config.prefetch,
            metrics: self.metrics.events.clone(),
            senders: self.config.senders.clone(),
        };
        let state = self
            .consumers
            .register(topology.work_queue(&subscription), ConsumerRole::Work);
        self.pauses.apply_known(&state);
        let shutdown = self.shutdown.clone();
        self.tasks
            .spawn(supervise(state.clone(), shutdown.clone(), move || {
                run_consumer(
                    settings.clone(),
                    handler.clone(),
                    state.clone(),
                    shutdown.clone(),
                )
            }));
    }

    /// Adds the service's own gauges to `/metrics`, beside the shared ones.
    pub fn with_gauges(mut self, source: Arc<dyn GaugeSource>) -> Self {
        self.gauges = Some(source);
        self
    }

    /// Adds the lines of an order's history that `source` keeps (the
    /// notification service's emails) to this service's part.
    pub fn with_history_source(mut self, source: Arc<dyn HistorySource>) -> Self {
        self.history_source = Some(source);
        self
    }

    /// What this service records of an order's history: its history
    /// records and dead letters (the source added by
    /// [`Self::with_history_source`] joins them when the API is served).
    pub fn local_history(&self) -> LocalHistory {
        LocalHistory {
            service: self.config.service,
            records: self.store.history(),
            dead_letters: self.dead_letters.clone(),
            extra: None,
        }
    }

    /// Serves `routes` (at their own paths, outside the OpenAPI spec)
    /// beside the API: the order service's admin console.
    pub fn with_routes(mut self, routes: poem::Route) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Says at startup which tokens the API takes, so that a missing one is
    /// noticed before the first 401.
    fn log_security_settings(&self) {
        let config = &self.config;
        match config.admin_tokens.len() {
            0 => tracing::warn!("ADMIN_TOKEN is not set: every admin route answers 401"),
            1 => tracing::info!("admin routes take the ADMIN_TOKEN"),
            n => tracing::info!("admin routes take any of the {n} tokens in ADMIN_TOKEN"),
        }
        match &config.jwt {
            Some(jwt) => tracing::info!(
                key = jwt.describe(),
                issuer = jwt.issuer.as_deref(),
                audience = jwt.audience.as_deref(),
                "customer routes take JWTs"
            ),
            None => tracing::warn!(
                "no JWT_SECRET or JWT_PUBLIC_KEY_FILE: customer routes take only an admin token"
            ),
        }
    }

    fn health_api(
        &mut self,
        rate_limiter: Option<Arc<RateLimiter>>,
        load_shedder: Option<Arc<LoadShedder>>,
    ) -> HealthApi {
        HealthApi {
            service: self.config.service,
            db: self.db.clone(),
            publisher: self.publisher.clone(),
            breakers: self.breakers.clone(),
            consumers: self.consumers.clone(),
            consumer_ready_grace: self.config.consumer_ready_grace,
            rate_limiter,
            load_shedder,
            metrics: self.metrics.clone(),
            // Taken, not shared: a gauge source may hold the service's
            // stores, whose batch writers end only when the last handle
            // goes, and the core lives until the tasks are waited for.
            gauges: self.gauges.take(),
            last_check: Default::default(),
        }
    }

    /// Binds the port and serves `api` (with health, metrics, dead-letter
    /// and consumer admin routes, docs and spec).
    pub async fn serve<T: OpenApi + 'static>(
        mut self,
        api: T,
        title: &str,
    ) -> anyhow::Result<RunningService> {
        let listener = http::bind(&self.config.bind_address, self.config.port)
            .await
            .with_context(|| {
                format!("binding {}:{}", self.config.bind_address, self.config.port)
            })?;
        let port = listener.local_addr()?.port();
        let rate_limiter = self.config.rate_limit.map(RateLimiter::new);
        let load_shedder = self.config.max_in_flight.map(LoadShedder::new);
        let dead_letters = DeadLetterApi {
            store: self.dead_letters.clone(),
            publisher: self.publisher.clone(),
        };
        let history = HistoryApi {
            local: LocalHistory {
                // Taken, not shared, as the gauges are: a source may hold
                // the service's stores, whose batch writers end only when
                // their last handle goes, and the core outlives its tasks.
                extra: self.history_source.take(),
                ..self.local_history()
            },
        };
        let consumers = ConsumerApi {
            consumers: self.consumers.clone(),
            pauses: self.pauses.clone(),
        };
        let app = http::build_app(
            (
                api,
                self.health_api(rate_limiter.clone(), load_shedder.clone()),
                dead_letters,
                history,
                consumers,
            ),
            self.routes.take().unwrap_or_default(),
            title,
            http::Edges {
                authenticator: http::Authenticator::new(
                    self.config.admin_tokens.clone(),
                    self.config.jwt.clone(),
                ),
                rate_limiter,
                load_shedder,
                trusted_proxies: self.config.trusted_proxies.clone(),
                allowed_origins: self.config.cors_allowed_origins.clone(),
                allowed_hosts: self.config.allowed_hosts.clone(),
                metrics: self.metrics.http.clone(),
            },
        );
        let server = tokio::spawn(http::serve(listener, app, self.shutdown.clone()));
        let base = format!("http://{}:{port}", self.config.bind_address);
        tracing::info!(
            service = self.config.service,
            api = %base,
            swagger_ui = %format!("{base}/docs"),
            openapi = %format!("{base}/openapi.json"),
            database = %self.config.database,
            "listening"
        );
        self.log_security_settings();
        Ok(RunningService {
            port,
            server,
            core: self,
        })
    }
}

/// The name a connection of this service announces to the broker (its UI
/// and management API list it): the namespace, the service, the role. The
/// namespace keeps the stacks that share a broker apart.
fn connection_name(config: &CommonConfig, role: &str) -> String {
    format!("{}{}-{role}", config.amqp_namespace, config.service)
}

async fn wait_for_mongodb(db: &Database, uri: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
    loop {
        match store::ping(db).await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "MongoDB at {uri} is not answering yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => anyhow::bail!(
                "MongoDB at {uri} did not answer within {}s ({error}). Is it running? \
                 ./scripts/run.sh starts one.",
                STARTUP_WAIT.as_secs()
            ),
        }
    }
}

/// A service that is serving.
pub struct RunningService {
    port: u16,
    server: JoinHandle<std::io::Result<()>>,
    core: ServiceCore,
}

impl RunningService {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The signal that stops the server and every background task.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.core.shutdown.clone()
    }

    /// Runs until the shutdown token fires, then waits for the HTTP server
    /// to drain and every consumer and relay to finish what it holds.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self.server.await.context("HTTP server task panicked")?;
        self.core.shutdown.cancel();
        self.core.tasks.close();
        self.core.tasks.wait().await;
        self.core.publisher.close().await;
        tracing::info!(service = self.core.config.service, "stopped");
        served.context("HTTP server failed")
    }

    /// Runs until SIGINT or SIGTERM.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let shutdown = self.shutdown_token();
        tokio::spawn(async move {
            http::wait_for_signal().await;
            tracing::info!("shutdown signal received; draining");
            shutdown.cancel();
        });
        self.run_until_stopped().await
    }
}
