//! What each consumer of a service is doing right now, for `/ready` and
//! `/metrics`: whether it holds a live channel, how many deliveries it has
//! in hand, when it last acked one and since when it is disconnected. A
//! consumer that stays disconnected past a grace period makes the service
//! unready; a short reconnect after a broker restart does not.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

/// Which of a service's queues a consumer works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "snake_case")]
pub enum ConsumerRole {
    /// The service's work queue: the events it reacts to.
    Work,
    /// The archiver that copies the work queue's dead letters into MongoDB.
    DeadLetters,
}

impl ConsumerRole {
    /// As the API and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerRole::Work => "work",
            ConsumerRole::DeadLetters => "dead_letters",
        }
    }
}

/// One consumer's live state, updated by its consume loop.
#[derive(Debug)]
pub struct ConsumerState {
    queue: String,
    role: ConsumerRole,
    /// The clock's origin for `last_ack_ms`.
    started: Instant,
    in_flight: AtomicU64,
    /// Milliseconds after `started` of the last ack, plus one; 0 for none.
    last_ack_ms: AtomicU64,
    restarts: AtomicU64,
    timeouts: AtomicU64,
    /// When it lost (or had not yet got) its channel; `None` exactly while
    /// it is connected.
    disconnected_since: Mutex<Option<(Instant, DateTime<Utc>)>>,
    /// When its current or last session got its channel, until the consume
    /// loop takes it to decide its reconnect backoff.
    session_started: Mutex<Option<Instant>>,
}

impl ConsumerState {
    /// A consumer that has not connected yet: disconnected since now, so
    /// one that never manages to connect fails readiness after the grace.
    pub fn new(queue: impl Into<String>, role: ConsumerRole) -> Self {
        let now = Instant::now();
        ConsumerState {
            queue: queue.into(),
            role,
            started: now,
            in_flight: AtomicU64::new(0),
            last_ack_ms: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            disconnected_since: Mutex::new(Some((now, Utc::now()))),
            session_started: Mutex::new(None),
        }
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// It is consuming on a live channel.
    pub fn connected(&self) {
        *self.disconnected_since.lock().expect("poisoned") = None;
        *self.session_started.lock().expect("poisoned") = Some(Instant::now());
    }

    /// How long ago the last session got its channel, if one did since the
    /// last call.
    pub fn take_session_age(&self) -> Option<Duration> {
        self.session_started
            .lock()
            .expect("poisoned")
            .take()
            .map(|started| started.elapsed())
    }

    /// It lost its channel (or is stopping). The first call of an outage
    /// starts the clock; later ones keep it.
    pub fn disconnected(&self) {
        self.disconnected_since
            .lock()
            .expect("poisoned")
            .get_or_insert_with(|| (Instant::now(), Utc::now()));
    }

    /// A delivery is in hand until the returned guard drops, even if its
    /// handling unwinds.
    pub fn delivery_started(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// A delivery was acked just now.
    pub fn acked(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ack_ms.store(ms + 1, Ordering::Relaxed);
    }

    /// Its task panicked and was started again.
    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// A broker step took longer than its limit, and it reconnects.
    pub fn timed_out(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// What it looks like at `now`.
    pub fn snapshot(&self, now: Instant) -> ConsumerSnapshot {
        let since = *self.disconnected_since.lock().expect("poisoned");
        let last_ack = match self.last_ack_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.started + Duration::from_millis(ms - 1)),
        };
        ConsumerSnapshot {
            queue: self.queue.clone(),
            role: self.role,
            connected: since.is_none(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            last_ack_age: last_ack.map(|at| now.saturating_duration_since(at)),
            disconnected_since: since.map(|(_, at)| at),
            disconnected_for: since.map(|(at, _)| now.saturating_duration_since(at)),
            restarts: self.restarts.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
        }
    }
}

/// One delivery in hand; dropping it ends that.
pub struct InFlight<'a>(&'a ConsumerState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A consumer's state at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerSnapshot {
    pub queue: String,
    pub role: ConsumerRole,
    pub connected: bool,
    pub in_flight: u64,
    /// Since its last ack; `None` if it has acked nothing since start.
    pub last_ack_age: Option<Duration>,
    pub disconnected_since: Option<DateTime<Utc>>,
    /// How long it has been disconnected; `None` while connected.
    pub disconnected_for: Option<Duration>,
    pub restarts: u64,
    pub timeouts: u64,
}

impl ConsumerSnapshot {
    /// Disconnected for longer than `grace`: it is not coming back by
    /// itself soon, and the service should not count as ready.
    pub fn is_stuck(&self, grace: Duration) -> bool {
        self.disconnected_for.is_some_and(|out| out > grace)
    }
}

/// The readiness rule: every consumer is connected, or has been
/// disconnected for at most `grace`.
pub fn consumers_ready(consumers: &[ConsumerSnapshot], grace: Duration) -> bool {
    !consumers.iter().any(|consumer| consumer.is_stuck(grace))
}

/// Every consumer of a service, for the probes.
#[derive(Clone, Debug, Default)]
pub struct Consumers {
    all: Arc<Mutex<Vec<Arc<ConsumerState>>>>,
}

impl Consumers {
    /// Starts tracking a consumer of `queue`.
    pub fn register(&self, queue: impl Into<String>, role: ConsumerRole) -> Arc<ConsumerState> {
        let state = Arc::new(ConsumerState::new(queue, role));
        self.all.lock().expect("poisoned").push(state.clone());
        state
    }

    /// Each consumer at `now`, in the order they were registered.
    pub fn snapshot(&self, now: Instant) -> Vec<ConsumerSnapshot> {
        let all = self.all.lock().expect("poisoned").clone();
        all.iter().map(|state| state.snapshot(now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn ready_at(state: &ConsumerState, later: Duration) -> bool {
        consumers_ready(&[state.snapshot(Instant::now() + later)], GRACE)
    }

    #[test]
    fn a_new_consumer_is_disconnected_with_nothing_acked() {
        let state = ConsumerState::new("q", ConsumerRole::Work);
        let snapshot = state.snapshot(Instant::now());
        assert!(!snapshot.connected);
        assert_eq!(snapshot.in_flight, 0);
        assert_eq!(snapshot.last_ack_age, None);
        assert!(snapshot.disconnected_since.is_some());
    }

    #[test]
    fn a_consumer_that_never_connects_fails_readiness_after_the_grace() {
        let before = Instant::now();
        let state = ConsumerState::new("q", ConsumerRole::Work);
        let ready = |at: Instant| consumers_ready(&[state.snapshot(at)], GRACE);
        assert!(ready(before + Duration::from_secs(5)));
        // Exactly the grace (or a hair under) is still fine; past it, not.
        assert!(ready(before + GRACE));
        assert!(!ready(before + GRACE + Duration::from_millis(500)));
    }

    #[test]
    fn a_connected_consumer_is_ready_however_long_it_runs() {
        let state = ConsumerState::new("q", ConsumerRole::Work);
        state.connected();
        assert!(ready_at(&state, Duration::from_secs(3600)));
        let snapshot = state.snapshot(Instant::now());
        assert!(snapshot.connected);
        assert_eq!(snapshot.disconnected_since, None);
        assert_eq!(snapshot.disconnected_for, None);
    }

    #[test]
    fn the_outage_clock_starts_at_the_first_disconnect_and_stops_on_reconnect() {
        let state = ConsumerState::new("q", ConsumerRole::Work);
        state.connected();
        state.disconnected();
        let first = state.snapshot(Instant::now()).disconnected_since;
        std::thread::sleep(Duration::from_millis(5));
        // A second report of the same outage does not restart its clock.
        state.disconnected();
        assert_eq!(state.snapshot(Instant::now()).disconnected_since, first);
        assert!(ready_at(&state, Duration::from_secs(10)));
        assert!(!ready_at(&state, Duration::from_secs(31)));
        state.connected();
        assert!(ready_at(&state, Duration::from_secs(31)));
    }

    #[test]
    fn one_stuck_consumer_is_enough_to_be_unready() {
        let work = ConsumerState::new("q", ConsumerRole::Work);
        work.connected();
        let archiver = ConsumerState::new("q.dlq", ConsumerRole::DeadLetters);
        let later = Instant::now() + Duration::from_secs(60);
        let snapshots = [work.snapshot(later), archiver.snapshot(later)];
        assert!(!consumers_ready(&snapshots, GRACE));
        assert!(consumers_ready(&snapshots[..1], GRACE));
        assert!(consumers_ready(&[], GRACE));
    }

    #[test]
    fn in_flight_counts_deliveries_in_hand_and_acks_are_timed() {
        let state = ConsumerState::new("q", ConsumerRole::Work);
        let first = state.delivery_started();
        let second = state.delivery_started();
        assert_eq!(state.snapshot(Instant::now()).in_flight, 2);
        drop(first);
        state.acked();
        let age = state
            .snapshot(Instant::now() + Duration::from_secs(2))
            .last_ack_age
            .unwrap();
        assert!(
            age >= Duration::from_secs(2) && age < Duration::from_secs(3),
            "{age:?}"
        );
        drop(second);
        assert_eq!(state.snapshot(Instant::now()).in_flight, 0);
    }

    #[test]
    fn in_flight_is_released_when_handling_unwinds() {
        let state = ConsumerState::new("q", ConsumerRole::Work);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _in_hand = state.delivery_started();
            panic!("handler bug");
        }));
        assert!(unwound.is_err());
        assert_eq!(state.snapshot(Instant::now()).in_flight, 0);
    }
}
