//! Back-pressure from the saga to the front door. Accepting an order costs
//! one batched insert; carrying it through the saga costs far more.
//! Measured at 1,000 orders/s offered, the order service accepted 915/s
//! while the saga finished 575/s, so the saga fell behind without bound:
//! seconds of end-to-end latency, then (at 1,700/s) tens of thousands of
//! orders still unfinished after the load stopped.
//!
//! A sampler counts the sagas still open (orders PENDING), and the service
//! counts the inventory answers it applies. [`Admission`] turns the two into
//! a rate: new orders are admitted at about the rate the saga finishes them,
//! through a token bucket, so refusals (503 with `Retry-After`) are spread
//! evenly instead of a gate that opens and closes with every sample (which
//! swung accepted orders between 0 and 1,200/s in the benchmark).
//!
//! Open sagas, not queue depths: an open order may be an event not yet
//! relayed, a message waiting, one a consumer holds (up to `PREFETCH` per
//! consumer), or one being handled, on any instance. Counting only the
//! messages waiting (as this gate first did) hid the rest, so a deeper
//! prefetch let more work in and the end-to-end p99 rose from 1.7 s to
//! 4.3 s under overload. One indexed count, shared by every instance, sees
//! all of it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use shared::{CancellationToken, TaskTracker};

use crate::store::OrderStore;

/// How often the open sagas are counted: the backlog can overshoot by about
/// this long of admissions.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// How many admissions the bucket holds at most, in time at the admitted
/// rate: short, so that refusals are spread over the second instead of
/// coming in runs after a burst.
const BURST: Duration = Duration::from_millis(50);

/// The admission law, without I/O or clocks of its own.
///
/// With `limit` L and d sagas open:
/// - d ≤ L/4: everything is admitted (an idle or keeping-up stack never
///   refuses a burst);
/// - L/4 < d: orders are admitted at `finishing × 2 × (1 − d/L)`, where
///   `finishing` is the measured rate at which the saga ends steps. That is
///   1.5× at L/4, exactly the finishing rate at L/2 and nothing at L, so
///   under overload the backlog settles near L/2 and never passes L (give or
///   take one sample of lag).
#[derive(Debug)]
pub struct Admission {
    limit: u64,
    open: u64,
    /// Saga steps finished per second, smoothed over samples.
    finishing: f64,
    /// Admissions per second; `None` while everything is admitted.
    rate: Option<f64>,
    tokens: f64,
    refilled: Instant,
}

/// Why an order was not admitted, for the 503's message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    pub open: u64,
    pub limit: u64,
    /// Admissions per second at the moment.
    pub rate: f64,
}

impl Admission {
    pub fn new(limit: u64, now: Instant) -> Self {
        Admission {
            limit,
            open: 0,
            finishing: 0.0,
            rate: None,
            tokens: 0.0,
            refilled: now,
        }
    }

    /// Takes a sample: `open` sagas now, `finished` saga steps ended over
    /// the last `elapsed`.
    pub fn observe(&mut self, open: u64, finished: u64, elapsed: Duration, now: Instant) {
        let seconds = elapsed.as_secs_f64();
        if seconds > 0.0 {
            // Half the weight on the newest sample: a change in capacity
            // shows within a second, one noisy sample does not swing it.
            self.finishing = 0.5 * self.finishing + 0.5 * (finished as f64 / seconds);
        }
        self.open = open;
        let limit = self.limit.max(1) as f64;
        let depth = open as f64 / limit;
        if depth <= 0.25 {
            self.rate = None;
            return;
        }
        let rate = self.finishing * 2.0 * (1.0 - depth).max(0.0);
        if self.rate.is_none() {
            // Throttling starts with what a burst may hold, not with nothing.
            self.tokens = rate * BURST.as_secs_f64();
            self.refilled = now;
        } else {
            self.refill(now);
        }
        self.rate = Some(rate);
    }

    /// Admits one order, or says why not.
    pub fn admit(&mut self, now: Instant) -> Result<(), Throttled> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Throttled {
            open: self.open,
            limit: self.limit,
            rate,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        if let Some(rate) = self.rate {
            let burst = (rate * BURST.as_secs_f64()).max(1.0);
            self.tokens = (self.tokens + rate * elapsed).min(burst);
        }
    }
}

/// The sampler and the admission it feeds, shared by the request handlers
/// and the consumer that applies the inventory's answers.
pub struct Backlog {
    admission: Mutex<Admission>,
    finished: AtomicU64,
}

impl Backlog {
    /// Counts the open sagas in `store` until `shutdown`. While the database
    /// cannot be asked the backlog reads as empty: readiness reports the
    /// database, and an order cannot be stored then anyway.
    pub fn spawn(
        store: Arc<OrderStore>,
        limit: u64,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let backlog = Arc::new(Backlog {
            admission: Mutex::new(Admission::new(limit, Instant::now())),
            finished: AtomicU64::new(0),
        });
        tasks.spawn(sample(store, backlog.clone(), shutdown));
        backlog
    }

    /// Counts one saga step finished (an inventory answer applied): what
    /// the admitted rate follows.
    pub fn finished_one(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// Admits one new order, or says how far behind the saga is.
    pub fn admit(&self) -> Result<(), Throttled> {
        self.lock().admit(Instant::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Admission> {
        // The admission holds plain numbers: a panic elsewhere leaves them
        // usable.
        self.admission
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn sample(store: Arc<OrderStore>, backlog: Arc<Backlog>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let open = match store.open_sagas().await {
            Ok(open) => open,
            Err(error) => {
                tracing::debug!(%error, "could not count the open sagas");
                0
            }
        };
        let now = Instant::now();
        let finished = backlog.finished.swap(0, Ordering::Relaxed);
        backlog
            .lock()
            .observe(open, finished, now.duration_since(last), now);
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// An admission that has seen the saga finish `finishing` steps a second
    /// for a while, with `open` sagas now.
    fn settled(limit: u64, open: u64, finishing: u64, start: Instant) -> (Admission, Instant) {
        let mut admission = Admission::new(limit, start);
        let mut now = start;
        for _ in 0..20 {
            now += SAMPLE_EVERY;
            admission.observe(open, finishing / 5, SAMPLE_EVERY, now);
        }
        (admission, now)
    }

    /// Offers one order every millisecond for `span`; the admitted count and
    /// the longest run of refusals in a row.
    fn offer(admission: &mut Admission, mut now: Instant, span: Duration) -> (u32, u32) {
        let (mut admitted, mut run, mut longest) = (0, 0, 0);
        for _ in 0..span.as_millis() {
            now += MS;
            match admission.admit(now) {
                Ok(()) => {
                    admitted += 1;
                    run = 0;
                }
                Err(_) => {
                    run += 1;
                    longest = longest.max(run);
                }
            }
        }
        (admitted, longest)
    }

    #[test]
    fn a_stack_keeping_up_admits_every_burst() {
        let start = Instant::now();
        let (mut admission, now) = settled(500, 125, 10, start);
        let (admitted, _) = offer(&mut admission, now, 1000 * MS);
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn at_half_the_limit_orders_are_admitted_at_the_finishing_rate_and_refusals_spread_evenly() {
        let start = Instant::now();
        let (mut admission, now) = settled(500, 250, 400, start);
        let (admitted, longest_refused_run) = offer(&mut admission, now, 1000 * MS);
        // 400/s finishing, offered 1,000/s: about 400 admitted, never a long
        // gap (a gate that opens and closes per sample refuses 200 in a row).
        assert!((380..=420).contains(&admitted), "admitted {admitted}");
        assert!(
            longest_refused_run <= 3,
            "{longest_refused_run} refused in a row"
        );
    }

    #[test]
    fn the_further_past_half_the_limit_the_fewer_are_admitted() {
        let start = Instant::now();
        let admitted_at = |open| {
            let (mut admission, now) = settled(500, open, 400, start);
            offer(&mut admission, now, 1000 * MS).0
        };
        let (light, half, heavy) = (admitted_at(150), admitted_at(250), admitted_at(450));
        assert!(light > half && half > heavy, "{light} {half} {heavy}");
        // 2 × (1 − 0.9) × 400/s = 80/s
        assert!((70..=90).contains(&heavy), "heavy {heavy}");
    }

    #[test]
    fn at_the_limit_or_with_nothing_finishing_nothing_is_admitted() {
        let start = Instant::now();
        let (mut full, now) = settled(500, 500, 400, start);
        let refusal = full.admit(now + MS).unwrap_err();
        assert_eq!(
            refusal,
            Throttled {
                open: 500,
                limit: 500,
                rate: 0.0
            }
        );
        let (mut stalled, now) = settled(500, 200, 0, start);
        assert_eq!(offer(&mut stalled, now, 1000 * MS).0, 0);
    }

    #[test]
    fn the_admitted_rate_follows_a_change_in_capacity_within_a_second() {
        let start = Instant::now();
        let (mut admission, mut now) = settled(500, 250, 400, start);
        for _ in 0..5 {
            now += SAMPLE_EVERY;
            admission.observe(250, 800 / 5, SAMPLE_EVERY, now);
        }
        let (admitted, _) = offer(&mut admission, now, 1000 * MS);
        // About 790/s, plus the 40 a full bucket holds at the start.
        assert!((750..=830).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn when_the_backlog_drains_the_gate_opens_again() {
        let start = Instant::now();
        let (mut admission, mut now) = settled(500, 400, 100, start);
        assert!(offer(&mut admission, now, 100 * MS).0 < 100);
        now += 100 * MS + SAMPLE_EVERY;
        admission.observe(10, 20, SAMPLE_EVERY, now);
        assert_eq!(offer(&mut admission, now, 100 * MS).0, 100);
    }
}
