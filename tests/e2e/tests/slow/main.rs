//! The slow tier, run by `./scripts/test.sh` beside the fast one: what
//! crosses into other programs: `./scripts/run.sh` as users start it (one
//! instance or replicas behind nginx), an earlier build beside this one,
//! Chromium driving the admin console, schemathesis and the client
//! generators against the specs, promtool on `/metrics`, and an SMTP server
//! that requires STARTTLS and AUTH. (The fault-injection suite is its own
//! binary, `chaos.rs`, as it runs the services as processes of itself.)

mod admin_console;
mod api_contract;
mod generated_clients;
mod metrics;
mod replicas;
mod rolling_upgrade;
mod run_script;
mod script;
mod smtp_tls;
mod trace_context;
