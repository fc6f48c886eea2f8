//! The async runtime a service runs on, sized by `WORKER_THREADS`.
//!
//! One thread is the default because it is the cheaper choice at every
//! rate measured on a 2-core machine shared with the broker and the
//! database (bench/BUDGET.md, "Wakeups per order"): a multi-threaded
//! runtime hands a woken task to whichever worker is idle, so each
//! delivery, database answer and HTTP request costs extra thread wakeups
//! and cross-core hops that a service using a fraction of a core never
//! earns back. Give a service more threads when it alone has several cores.

/// The runtime for `worker_threads` threads: tokio's current-thread
/// runtime for 1 (every task on the thread that calls `block_on`), its
/// work-stealing runtime for more. Blocking work (`spawn_blocking`, DNS)
/// has its own pool either way.
pub fn build(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_runs_every_task_on_the_caller() {
        let runtime = build(1).unwrap();
        let caller = std::thread::current().id();
        let spawned_on = runtime.block_on(async {
            tokio::spawn(async { std::thread::current().id() })
                .await
                .unwrap()
        });
        assert_eq!(spawned_on, caller);
    }

    #[test]
    fn more_threads_get_a_pool_of_that_size() {
        let runtime = build(3).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 3);
    }
}
