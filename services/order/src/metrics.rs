//! The order service's own counters: how sagas end and how long they take,
//! and orders refused at admission. (The age of the oldest saga still open
//! is a gauge the store reads on each scrape: `OrderStore`'s
//! `GaugeSource`.)

use prometheus_client::metrics::{counter::Counter, family::Family};
use shared::metrics::{self, DurationFamily, Metrics, Outcome};

use crate::domain::{
    Order, OrderStatus,
    saga::{self, SagaEnd},
};

/// Orders by what became of them, counted where each change commits.
#[derive(Clone)]
pub struct SagaMetrics {
    orders: Family<Outcome, Counter>,
    duration: DurationFamily<Outcome>,
    refused: Counter,
}

impl SagaMetrics {
    pub fn new(registry: &Metrics) -> Self {
        let saga = SagaMetrics {
            orders: Family::default(),
            duration: metrics::durations(),
            refused: Counter::default(),
        };
        registry.register(
            "orders",
            "Orders accepted, and how their sagas ended (confirmed, rejected, failed) or \
             were cancelled.",
            saga.orders.clone(),
        );
        registry.register_seconds(
            "saga_duration",
            "Sagas from the order's acceptance to its confirmation, rejection or failure.",
            saga.duration.clone(),
        );
        registry.register(
            "saga_admission_refused",
            "Orders refused with 503 because too many sagas were open (MAX_SAGA_BACKLOG).",
            saga.refused.clone(),
        );
        saga
    }

    pub fn accepted(&self, orders: u64) {
        self.count("accepted", orders);
    }

    pub fn refused(&self) {
        self.refused.inc();
    }

    /// `before` became `after` in a committed change: counts the end of a
    /// saga's wait ([`saga::ended_by`]), timed from when its run began, and
    /// every cancellation (of a CONFIRMED order too).
    pub fn changed(&self, before: &Order, after: &Order) {
        let ended = saga::ended_by(before, after);
        if after.status == OrderStatus::Cancelled && before.status != OrderStatus::Cancelled {
            self.count(SagaEnd::Cancelled.as_str(), 1);
        }
        let Some(end) = ended.filter(|end| *end != SagaEnd::Cancelled) else {
            return;
        };
        let outcome = end.as_str();
        self.count(outcome, 1);
        if let Ok(took) = (after.updated_at - saga::started_at(after)).to_std() {
            metrics::observe(&self.duration.get_or_create(&Outcome { outcome }), took);
        }
    }

    fn count(&self, outcome: &'static str, orders: u64) {
        self.orders
            .get_or_create(&Outcome { outcome })
            .inc_by(orders);
    }
}
