//! The slow tier, run by `./scripts/test.sh` beside the fast one: what
//! crosses into other programs: `./scripts/run.sh` as users start it (one
//! instance or replicas behind nginx), an earlier build beside this one,
//! Chromium driving the admin console, schemathesis and the client
//! generators against the specs, promtool on `/metrics`, and an SMTP server
//! that requires STARTTLS and AUTH. (The fault-injection suite is its own
//! binary, `chaos.rs`, as it runs the services as processes of itself.)

/// Taken first by every test here, so they run one at a time: each drives
/// whole stacks of processes (a dozen, with replicas), a browser or a
/// fuzzer, and its time limits (the saga's 60 s deadline among them) hold
/// when it has the machine's cores. Two at once on two cores made the
/// replicas test's killed instances leave orders FAILED at the deadline.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

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
