//! What the order, inventory and notification services have in common, so that
//! each service is mostly its domain: configuration, telemetry, the event
//! envelope, the RabbitMQ machinery (topology, confirmed publishing, consumers
//! with retries and dead letters), MongoDB helpers (outbox, inbox,
//! transactions, dead letters), operators' pauses of consumers, circuit
//! breakers and the HTTP plumbing (errors, health, metrics, rate limits,
//! admin auth, paging), and the registry of the services themselves.

pub mod broker;
pub mod config;
pub mod deadletter;
pub mod events;
pub mod fault;
pub mod history;
pub mod http;
pub mod metrics;
pub mod money;
pub mod pauses;
pub mod registry;
pub mod resilience;
pub mod retry;
pub mod runtime;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod testing;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;
