//! The backstop behind the consume loop: a consumer task that panics (a bug
//! outside the handler, whose panics the loop already turns into retries)
//! is logged and started again, instead of leaving the service without a
//! consumer while its HTTP side looks healthy. The deliveries it held were
//! not acked; its connection closes as the task unwinds and the broker
//! redelivers them.

use std::{
    any::Any,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::ConsumerState;

/// The first restart's delay; each quick panic after it doubles it.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A task that ran this long before it panicked starts the delays over.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// Runs the task `start` makes, on a task of its own, until `shutdown`;
/// starts a new one whenever it panics (or ends before shutdown). A paused
/// consumer's task does not end (it waits for its resume), so a pause is
/// never taken for a stop; one started again after a panic finds the pause
/// in `state` and stays paused.
pub async fn supervise<F, Fut>(state: Arc<ConsumerState>, shutdown: CancellationToken, start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    supervise_with(state, shutdown, start, FIRST_RESTART_DELAY).await
}

async fn supervise_with<F, Fut>(
    state: Arc<ConsumerState>,
    shutdown: CancellationToken,
    mut start: F,
    first_delay: Duration,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut delay = first_delay;
    loop {
        let began = Instant::now();
        let ended = tokio::spawn(start()).await;
        if shutdown.is_cancelled() {
            if let Err(error) = ended
                && error.is_panic()
            {
                tracing::error!(queue = state.queue(), panic = %panic_message(error.into_panic().as_ref()), "consumer panicked while stopping");
            }
            break;
        }
        match ended {
            Ok(()) => tracing::error!(
                queue = state.queue(),
                "consumer stopped without being asked to; starting it again"
            ),
            Err(error) if error.is_panic() => tracing::error!(
                queue = state.queue(),
                panic = %panic_message(error.into_panic().as_ref()),
                restart_in_ms = delay.as_millis() as u64,
                "consumer panicked; starting it again"
            ),
            // Cancelled: the runtime is going away.
            Err(_) => break,
        }
        state.disconnected();
        state.restarted();
        if began.elapsed() >= STABLE_RUN {
            delay = first_delay;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

/// The text a panic was raised with (`panic!("...")`), if it has one.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::broker::consumer::{ConsumerRole, ConsumerStatus};

    const QUICK: Duration = Duration::from_millis(10);

    #[tokio::test]
    async fn a_consumer_task_that_panics_is_started_again_until_shutdown() {
        let state = Arc::new(ConsumerState::new("q", ConsumerRole::Work));
        let shutdown = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let supervised = tokio::spawn(supervise_with(
            state.clone(),
            shutdown.clone(),
            {
                let (starts, shutdown) = (starts.clone(), shutdown.clone());
                move || {
                    let (starts, shutdown) = (starts.clone(), shutdown.clone());
                    async move {
                        // The first two runs die of a bug; the third runs until shutdown.
                        if starts.fetch_add(1, Ordering::SeqCst) < 2 {
                            panic!("bug in the consume loop");
                        }
                        shutdown.cancelled().await;
                    }
                }
            },
            QUICK,
        ));
        // 10 ms, then 20 ms of delay before the third start; the panic
        // hook's backtraces can take far longer than that.
        let deadline = Instant::now() + Duration::from_secs(10);
        while starts.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            tokio::time::sleep(QUICK).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(state.snapshot(Instant::now()).restarts, 2);
        assert!(!supervised.is_finished());
        shutdown.cancel();
        supervised.await.unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_paused_consumer_whose_task_panics_is_started_again_still_paused() {
        let state = Arc::new(ConsumerState::new("q", ConsumerRole::Work));
        state.request_pause(true);
        state.paused();
        let shutdown = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let supervised = tokio::spawn(supervise_with(
            state.clone(),
            shutdown.clone(),
            {
                let (starts, shutdown) = (starts.clone(), shutdown.clone());
                move || {
                    let (starts, shutdown) = (starts.clone(), shutdown.clone());
                    async move {
                        if starts.fetch_add(1, Ordering::SeqCst) == 0 {
                            panic!("bug while paused");
                        }
                        shutdown.cancelled().await;
                    }
                }
            },
            QUICK,
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while starts.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            tokio::time::sleep(QUICK).await;
        }
        let snapshot = state.snapshot(Instant::now());
        assert_eq!(snapshot.restarts, 1);
        // Not a disconnection: the outage clock did not start.
        assert_eq!(snapshot.status, ConsumerStatus::Paused);
        assert_eq!(snapshot.disconnected_since, None);
        assert!(state.pause_requested());
        shutdown.cancel();
        supervised.await.unwrap();
    }

    #[tokio::test]
    async fn a_task_that_ends_on_shutdown_is_not_restarted() {
        let state = Arc::new(ConsumerState::new("q", ConsumerRole::Work));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let starts = Arc::new(AtomicU32::new(0));
        supervise_with(
            state.clone(),
            shutdown,
            {
                let starts = starts.clone();
                move || {
                    starts.fetch_add(1, Ordering::SeqCst);
                    async {}
                }
            },
            QUICK,
        )
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(state.snapshot(Instant::now()).restarts, 0);
    }

    #[test]
    fn panic_messages_are_read_from_either_payload_type() {
        assert_eq!(panic_message(&"static text"), "static text");
        assert_eq!(panic_message(&String::from("formatted 7")), "formatted 7");
        assert_eq!(panic_message(&7u8), "a panic without a message");
    }
}
