//! Circuit breakers (failsafe) that report their state, so `/ready` and
//! `/metrics` can say which dependency a service has stopped calling.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use failsafe::{
    Config, StateMachine,
    backoff::{self, Constant},
    failure_policy::{ConsecutiveFailures, consecutive_failures},
};

/// A breaker that opens after `failures` consecutive failures and lets one
/// trial call through after `open_for`.
pub type Breaker = StateMachine<ConsecutiveFailures<Constant>, BreakerProbe>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// For `/metrics`: 1 open, 0.5 half-open, 0 closed.
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 0.5,
            BreakerState::Open => 1.0,
        }
    }
}

/// What a breaker last reported, readable from elsewhere.
#[derive(Clone, Debug)]
pub struct BreakerProbe {
    name: &'static str,
    state: Arc<AtomicU8>,
    rejected: Arc<AtomicU64>,
}

impl BreakerProbe {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Relaxed) {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Calls refused while open, since start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl failsafe::Instrument for BreakerProbe {
    fn on_call_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    fn on_open(&self) {
        self.state.store(1, Ordering::Relaxed);
        tracing::warn!(breaker = self.name, "circuit breaker opened");
    }

    fn on_half_open(&self) {
        self.state.store(2, Ordering::Relaxed);
        tracing::info!(
            breaker = self.name,
            "circuit breaker half-open: trying one call"
        );
    }

    fn on_closed(&self) {
        self.state.store(0, Ordering::Relaxed);
        tracing::info!(breaker = self.name, "circuit breaker closed");
    }
}

/// Every breaker of one service, for reporting.
#[derive(Clone, Default)]
pub struct Breakers {
    probes: Arc<Mutex<Vec<BreakerProbe>>>,
}

impl Breakers {
    /// A new breaker named `name`, registered for reporting.
    pub fn breaker(&self, name: &'static str, failures: u32, open_for: Duration) -> Breaker {
        self.breaker_with_state(name, failures, open_for).0
    }

    /// A new breaker, and its state for the caller to read.
    pub fn breaker_with_state(
        &self,
        name: &'static str,
        failures: u32,
        open_for: Duration,
    ) -> (Breaker, BreakerProbe) {
        let probe = BreakerProbe {
            name,
            state: Arc::default(),
            rejected: Arc::default(),
        };
        self.probes.lock().expect("poisoned").push(probe.clone());
        let breaker = Config::new()
            .failure_policy(consecutive_failures(failures, backoff::constant(open_for)))
            .instrument(probe.clone())
            .build();
        (breaker, probe)
    }

    pub fn snapshot(&self) -> Vec<BreakerProbe> {
        self.probes.lock().expect("poisoned").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use failsafe::futures::CircuitBreaker;

    #[tokio::test]
    async fn the_probe_follows_the_breaker_through_open_and_closed() {
        let breakers = Breakers::default();
        let breaker = breakers.breaker("smtp", 2, Duration::from_millis(50));
        let probe = breakers.snapshot().remove(0);
        assert_eq!(probe.state(), BreakerState::Closed);

        for _ in 0..2 {
            let _ = breaker.call(async { Err::<(), _>("down") }).await;
        }
        assert_eq!(probe.state(), BreakerState::Open);
        assert!(matches!(
            breaker.call(async { Ok::<_, &str>(()) }).await,
            Err(failsafe::Error::Rejected)
        ));
        assert_eq!(probe.rejected(), 1);

        tokio::time::sleep(Duration::from_millis(60)).await;
        breaker.call(async { Ok::<_, &str>(()) }).await.unwrap();
        assert_eq!(probe.state(), BreakerState::Closed);
    }
}
