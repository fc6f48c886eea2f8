//! Back-pressure from the saga's queues to the front door. Accepting an
//! order costs one batched insert; carrying it through the saga costs far
//! more. Measured at 1,000 orders/s offered, the order service accepted 915/s
//! while the saga finished 575/s, so the queues grew without bound: seconds
//! of end-to-end latency, then (at 1,700/s) tens of thousands of orders still
//! unfinished after the load stopped. A sampler reads how many messages wait
//! in the saga's work queues; past a limit, new orders are refused with 503
//! and `Retry-After`, so what is accepted finishes within seconds.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use lapin::{Channel, Connection, options::QueueDeclareOptions, types::FieldTable};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::connection_properties;

/// How often the queues are sampled: the backlog can overshoot the limit by
/// about this long of admissions.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

pub struct Backlog {
    waiting: AtomicU64,
    limit: u64,
}

impl Backlog {
    /// Samples `queues` until `shutdown`. While the broker cannot be asked
    /// the backlog reads as empty: readiness reports the broker, and the
    /// outbox keeps what cannot be published.
    pub fn spawn(
        url: &str,
        queues: Vec<String>,
        limit: u64,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let backlog = Arc::new(Backlog {
            waiting: AtomicU64::new(0),
            limit,
        });
        tasks.spawn(sample(url.to_string(), queues, backlog.clone(), shutdown));
        backlog
    }

    /// Messages waiting at the last sample, if that is past the limit.
    pub fn over_limit(&self) -> Option<u64> {
        let waiting = self.waiting.load(Ordering::Relaxed);
        (waiting > self.limit).then_some(waiting)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

async fn sample(
    url: String,
    queues: Vec<String>,
    backlog: Arc<Backlog>,
    shutdown: CancellationToken,
) {
    // Kept between samples; dropped after any error (a passive declare of a
    // missing queue closes the channel) and opened again on the next tick.
    let mut link: Option<(Connection, Channel)> = None;
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        match count(&url, &queues, &mut link).await {
            Ok(waiting) => backlog.waiting.store(waiting, Ordering::Relaxed),
            Err(error) => {
                tracing::debug!(%error, "could not sample the saga's queues");
                backlog.waiting.store(0, Ordering::Relaxed);
                link = None;
            }
        }
    }
    if let Some((connection, _)) = link {
        let _ = connection.close(200, "stopping".into()).await;
    }
}

async fn count(
    url: &str,
    queues: &[String],
    link: &mut Option<(Connection, Channel)>,
) -> Result<u64, lapin::Error> {
    let channel = match link {
        Some((_, channel)) if channel.status().connected() => channel.clone(),
        _ => {
            let connection =
                Connection::connect(url, connection_properties("saga-backlog")).await?;
            let channel = connection.create_channel().await?;
            *link = Some((connection, channel.clone()));
            channel
        }
    };
    let mut waiting = 0;
    for queue in queues {
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        waiting += u64::from(declared.message_count());
    }
    Ok(waiting)
}
