//! Fault injection for the chaos suite (`tests/e2e/tests/chaos.rs`).
//!
//! Fail points (the `fail` crate) sit where a crash is most dangerous:
//!
//! | point | where |
//! |---|---|
//! | `relay.before_publish` | an outbox batch is claimed but not yet published |
//! | `relay.after_publish` | the broker confirmed a batch that is still in the outbox |
//! | `consumer.before_ack` | a handler's effect is durable but the delivery is not acked |
//! | `sender.after_accept` | the SMTP server took an email that is not yet marked SENT |
//!
//! They compile to nothing unless the `fail/failpoints` feature is on, which
//! only the test crate turns on; release builds of the services have none.
//! The chaos suite arms them through the `FAILPOINTS` environment variable,
//! for example `FAILPOINTS=relay.before_publish=40*off->return` crashes on
//! the 41st batch.

/// Ends the process at once, without unwinding or any cleanup, as SIGKILL
/// would.
pub fn crash(point: &str) -> ! {
    eprintln!("fault injection: crashing at {point}");
    std::process::abort()
}

/// The `fail` crate, for [`crash_point!`] in crates that do not depend on it.
pub use fail;

/// A place where the chaos suite may crash the process: with
/// `FAILPOINTS=<name>=…` armed, ends it there (see [`crash`]); otherwise, and
/// in every build without the test feature, nothing.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        $crate::fault::fail::fail_point!($name, |_| $crate::fault::crash($name))
    };
}
