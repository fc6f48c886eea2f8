//! The fast tier (`./scripts/test.sh --fast`): each service's HTTP API and
//! the saga, with the services started in this process on free ports
//! against the real RabbitMQ, MongoDB-compatible server and MailDev. One
//! binary, so a change links once; every test starts its own stack (own
//! databases and AMQP namespace), so they run in parallel.

mod admin_routes;
mod broker_users;
mod consumers;
mod customer_auth;
mod dead_letters;
mod docs;
mod edges;
mod failure_api;
mod history;
mod inventory_api;
mod loadgen_smoke;
mod notification_api;
mod order_api;
mod pause;
mod registry;
mod saga;
mod self_healing;
