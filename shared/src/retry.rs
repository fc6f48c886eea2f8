//! Exponential backoff with full jitter, quantised onto RabbitMQ delay-queue
//! tiers, on a time budget: a message that keeps failing transiently is
//! retried until the budget has passed since its first failure, whatever
//! the number of attempts. The budget outlasts anything a crash can leave
//! behind (the database expires an orphaned transaction's locks after 60 s),
//! so a transient fault never ends in a dead letter on its own.
//!
//! A message that failed transiently waits in a queue whose TTL dead-letters
//! it back to the work queue. Per-message TTLs would block behind the head of
//! the queue, so each service has a fixed set of tiers (base, 2·base, 4·base,
//! … up to the cap) and a retry picks the smallest tier at least as long as its
//! jittered delay.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long after its first failure a message is still retried.
    pub budget: Duration,
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Upper bound of any delay.
    pub cap: Duration,
}

/// What to do after a transient failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay (one of [`RetryPolicy::tiers`]).
    RetryAfter(Duration),
    /// The budget is spent: dead-letter.
    GiveUp,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(180),
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay tiers: base·2^k below the cap, then the cap itself.
    pub(crate) fn tiers(&self) -> Vec<Duration> {
        let mut tiers = Vec::new();
        let mut tier = self.base;
        while tier < self.cap {
            tiers.push(tier);
            tier = tier.saturating_mul(2);
        }
        tiers.push(self.cap);
        tiers
    }

    /// The exponential ceiling for the retry after attempt `attempt`.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }

    /// After attempt `attempt` (1-based) failed, `failing_for` after the
    /// message first failed. `unit` is a uniform random number in [0, 1):
    /// full jitter picks a delay uniformly below the ceiling, then rounds it
    /// up to a tier.
    pub fn decide(&self, attempt: u32, failing_for: Duration, unit: f64) -> RetryDecision {
        if failing_for >= self.budget {
            return RetryDecision::GiveUp;
        }
        let jittered = self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0));
        let tier = self
            .tiers()
            .into_iter()
            .find(|tier| *tier >= jittered)
            .unwrap_or(self.cap);
        RetryDecision::RetryAfter(tier)
    }

    /// The same decision with a fresh random number.
    pub(crate) fn decide_now(&self, attempt: u32, failing_for: Duration) -> RetryDecision {
        self.decide(attempt, failing_for, rand::random::<f64>())
    }

    /// A plain jittered delay (for in-process retries such as SMTP sends).
    pub fn jittered_delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn tiers_double_from_the_base_and_end_at_the_cap() {
        let secs: Vec<u64> = policy().tiers().iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60]);
    }

    #[test]
    fn the_ceiling_grows_exponentially_and_stops_at_the_cap() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_secs(1));
        assert_eq!(p.ceiling(3), Duration::from_secs(4));
        assert_eq!(p.ceiling(10), Duration::from_secs(60));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(60));
    }

    const FRESH: Duration = Duration::ZERO;

    #[test]
    fn failures_are_retried_until_the_budget_is_spent_whatever_the_attempts() {
        let p = policy();
        assert!(matches!(
            p.decide(40, Duration::from_secs(179), 0.5),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(
            p.decide(2, Duration::from_secs(180), 0.5),
            RetryDecision::GiveUp
        );
        assert_eq!(
            p.decide(1, Duration::from_secs(600), 0.5),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn a_jittered_delay_rounds_up_to_the_next_tier() {
        // Attempt 3: ceiling 4 s; 0.6 of it is 2.4 s, which waits in the 4 s tier.
        assert_eq!(
            policy().decide(3, FRESH, 0.6),
            RetryDecision::RetryAfter(Duration::from_secs(4))
        );
        // A tiny jitter still waits in the shortest tier rather than spinning.
        assert_eq!(
            policy().decide(3, FRESH, 0.0),
            RetryDecision::RetryAfter(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_decision_never_exceeds_the_cap() {
        for attempt in 1..4 {
            for step in 0..=10 {
                let p = policy();
                match p.decide(attempt + 5, FRESH, step as f64 / 10.0) {
                    RetryDecision::RetryAfter(d) => assert!(d <= p.cap),
                    RetryDecision::GiveUp => panic!("the budget remains"),
                }
            }
        }
    }
}
