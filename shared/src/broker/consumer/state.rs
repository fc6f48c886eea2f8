//! What each consumer of a service is doing right now, for `/ready` and
//! `/metrics`: whether it holds a live channel, how many deliveries it has
//! in hand, when it last acked one and since when it is disconnected. A
//! consumer that stays disconnected past a grace period makes the service
//! unready; a short reconnect after a broker restart does not. An
//! operator's pause is asked for here too, and the consume loop reports
//! here when it has taken effect: a paused consumer is not a fault.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

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

/// What a consumer is doing, as the API says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "snake_case")]
pub enum ConsumerStatus {
    /// Taking deliveries on a live channel.
    Consuming,
    /// Stopped by an operator: no AMQP consumer, its messages wait in the queue.
    Paused,
    /// Without a channel: connecting, reconnecting, or stopping.
    Disconnected,
}

/// Where the consume loop is, with the moment it got there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Consuming,
    Disconnected(Instant, DateTime<Utc>),
    Paused(Instant, DateTime<Utc>),
}

impl Phase {
    fn status(self) -> ConsumerStatus {
        match self {
            Phase::Consuming => ConsumerStatus::Consuming,
            Phase::Disconnected(..) => ConsumerStatus::Disconnected,
            Phase::Paused(..) => ConsumerStatus::Paused,
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
    /// What the loop is doing; watched, so a pause request can wait until
    /// the loop has applied it.
    phase: watch::Sender<Phase>,
    /// Whether an operator wants it paused; watched by the loop.
    pause_requested: watch::Sender<bool>,
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
            phase: watch::Sender::new(Phase::Disconnected(now, Utc::now())),
            pause_requested: watch::Sender::new(false),
            session_started: Mutex::new(None),
        }
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub fn role(&self) -> ConsumerRole {
        self.role
    }

    /// It is consuming on a live channel.
    pub fn connected(&self) {
        self.phase.send_replace(Phase::Consuming);
        *self.session_started.lock().expect("poisoned") = Some(Instant::now());
    }

    /// How long ago the last session got its channel, if one did since the
    /// last call.
    pub(crate) fn take_session_age(&self) -> Option<Duration> {
        self.session_started
            .lock()
            .expect("poisoned")
            .take()
            .map(|started| started.elapsed())
    }

    /// It lost its channel (or is stopping). The first call of an outage
    /// starts the clock; later ones keep it. A paused consumer stays
    /// paused: it holds no channel by decision (its task may have been
    /// started again after a panic, and it comes back paused).
    pub fn disconnected(&self) {
        self.phase.send_if_modified(|phase| match phase {
            Phase::Consuming => {
                *phase = Phase::Disconnected(Instant::now(), Utc::now());
                true
            }
            Phase::Disconnected(..) | Phase::Paused(..) => false,
        });
    }

    /// Asks the consume loop to pause (`true`) or to consume again
    /// (`false`); true if that changed what was asked.
    pub fn request_pause(&self, paused: bool) -> bool {
        self.pause_requested.send_if_modified(|requested| {
            let changed = *requested != paused;
            *requested = paused;
            changed
        })
    }

    /// Whether a pause is asked for, applied or not.
    pub fn pause_requested(&self) -> bool {
        *self.pause_requested.borrow()
    }

    /// Returns once a pause is asked for (at once if it is).
    pub async fn until_pause_requested(&self) {
        let _ = self.pause_requested.subscribe().wait_for(|p| *p).await;
    }

    /// Returns once no pause is asked for (at once if none is).
    pub async fn until_resume_requested(&self) {
        let _ = self.pause_requested.subscribe().wait_for(|p| !*p).await;
    }

    /// The loop has stopped consuming because of a pause: the deliveries it
    /// had were settled and its AMQP consumer cancelled.
    pub fn paused(&self) {
        self.phase.send_if_modified(|phase| match phase {
            Phase::Paused(..) => false,
            _ => {
                *phase = Phase::Paused(Instant::now(), Utc::now());
                true
            }
        });
    }

    /// The loop leaves a pause and starts connecting: the outage clock
    /// starts now, not when the pause began.
    pub fn resumed(&self) {
        self.phase.send_if_modified(|phase| match phase {
            Phase::Paused(..) => {
                *phase = Phase::Disconnected(Instant::now(), Utc::now());
                true
            }
            _ => false,
        });
    }

    /// What it is doing now.
    pub fn status(&self) -> ConsumerStatus {
        self.phase.borrow().status()
    }

    /// Returns once `reached` says yes to what it is doing (at once if it
    /// does now).
    pub(crate) async fn until_status(&self, reached: impl Fn(ConsumerStatus) -> bool) {
        let _ = self
            .phase
            .subscribe()
            .wait_for(|phase| reached(phase.status()))
            .await;
    }

    /// A delivery is in hand until the returned guard drops, even if its
    /// handling unwinds.
    pub(crate) fn delivery_started(&self) -> InFlight<'_> {
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
    pub(crate) fn timed_out(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// What it looks like at `now`.
    pub fn snapshot(&self, now: Instant) -> ConsumerSnapshot {
        let phase = *self.phase.borrow();
        let (since, paused_since) = match phase {
            Phase::Consuming => (None, None),
            Phase::Disconnected(at, wall) => (Some((at, wall)), None),
            Phase::Paused(_, wall) => (None, Some(wall)),
        };
        let last_ack = match self.last_ack_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.started + Duration::from_millis(ms - 1)),
        };
        ConsumerSnapshot {
            queue: self.queue.clone(),
            role: self.role,
            status: phase.status(),
            connected: phase == Phase::Consuming,
            pause_requested: self.pause_requested(),
            paused_since,
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
pub(crate) struct InFlight<'a>(&'a ConsumerState);

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
    pub status: ConsumerStatus,
    /// Consuming on a live channel (`status` is `Consuming`).
    pub connected: bool,
    /// An operator asked for a pause (applied once `status` is `Paused`).
    pub pause_requested: bool,
    /// When the pause took effect; `None` unless paused.
    pub paused_since: Option<DateTime<Utc>>,
    pub in_flight: u64,
    /// Since its last ack; `None` if it has acked nothing since start.
    pub last_ack_age: Option<Duration>,
    /// When it lost its channel; `None` while consuming or paused.
    pub disconnected_since: Option<DateTime<Utc>>,
    /// How long it has been disconnected; `None` while consuming or paused.
    pub disconnected_for: Option<Duration>,
    pub restarts: u64,
    pub timeouts: u64,
}

impl ConsumerSnapshot {
    /// Disconnected for longer than `grace`: it is not coming back by
    /// itself soon, and the service should not count as ready. A paused
    /// consumer is not: an operator stopped it on purpose.
    pub(crate) fn is_stuck(&self, grace: Duration) -> bool {
        self.disconnected_for.is_some_and(|out| out > grace)
    }
}

/// The readiness rule: every consumer is connected or paused, or has been
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
        self.all().iter().map(|state| state.snapshot(now)).collect()
    }

    /// Every consumer, in the order they were registered.
    pub fn all(&self) -> Vec<Arc<ConsumerState>> {
        self.all.lock().expect("poisoned").clone()
    }

    /// The consumer of `queue`, if the service has one.
    pub(crate) fn of_queue(&self, queue: &str) -> Option<Arc<ConsumerState>> {
        self.all().into_iter().find(|state| state.queue() == queue)
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
    fn a_paused_consumer_stays_ready_however_long_it_is_paused() {
        let state = ConsumerState::new("q", ConsumerRole::Work);
        state.connected();
        state.request_pause(true);
        // Asked for, not yet applied: still consuming.
        let asked = state.snapshot(Instant::now());
        assert_eq!(
            (asked.status, asked.pause_requested, asked.connected),
            (ConsumerStatus::Consuming, true, true)
        );
        state.disconnected();
        state.paused();
        let paused = state.snapshot(Instant::now() + Duration::from_secs(3600));
        assert_eq!(paused.status, ConsumerStatus::Paused);
        assert!(!paused.connected);
        assert!(paused.paused_since.is_some());
        assert_eq!(
            (paused.disconnected_since, paused.disconnected_for),
            (None, None)
        );
        assert!(ready_at(&state, Duration::from_secs(3600)));
    }

    #[test]
    fn a_disconnect_reported_while_paused_leaves_it_paused() {
        // What the supervisor reports after the paused task panicked.
        let state = ConsumerState::new("q", ConsumerRole::Work);
        state.paused();
        let since = state.snapshot(Instant::now()).paused_since;
        state.disconnected();
        state.paused();
        let snapshot = state.snapshot(Instant::now());
        assert_eq!(snapshot.status, ConsumerStatus::Paused);
        assert_eq!(snapshot.paused_since, since);
        assert!(ready_at(&state, Duration::from_secs(3600)));
    }

    #[test]
    fn the_outage_clock_of_a_resumed_consumer_starts_at_the_resume() {
        let state = ConsumerState::new("q", ConsumerRole::Work);
        state.paused();
        std::thread::sleep(Duration::from_millis(5));
        let before_resume = Utc::now();
        state.resumed();
        let snapshot = state.snapshot(Instant::now());
        assert_eq!(snapshot.status, ConsumerStatus::Disconnected);
        assert!(snapshot.disconnected_since.unwrap() >= before_resume);
        assert_eq!(snapshot.paused_since, None);
        // Within the grace of the resume, however long the pause was.
        assert!(ready_at(&state, Duration::from_secs(10)));
        assert!(!ready_at(&state, Duration::from_secs(31)));
        // Resuming one that is not paused changes nothing.
        state.connected();
        state.resumed();
        assert_eq!(state.status(), ConsumerStatus::Consuming);
    }

    #[test]
    fn a_pause_request_says_whether_it_changed_anything() {
        let state = ConsumerState::new("q", ConsumerRole::Work);
        assert!(state.request_pause(true));
        assert!(!state.request_pause(true));
        assert!(state.pause_requested());
        assert!(state.request_pause(false));
        assert!(!state.pause_requested());
    }

    #[tokio::test]
    async fn a_waiter_for_the_paused_status_returns_once_the_loop_has_paused() {
        let state = Arc::new(ConsumerState::new("q", ConsumerRole::Work));
        state.connected();
        let waiter = tokio::spawn({
            let state = state.clone();
            async move {
                state
                    .until_status(|status| status == ConsumerStatus::Paused)
                    .await
            }
        });
        state.request_pause(true);
        state.until_pause_requested().await;
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        state.paused();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter saw the pause")
            .unwrap();
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
