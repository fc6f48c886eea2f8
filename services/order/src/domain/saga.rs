//! The saga's states, in one place: which orders are open, what an open
//! saga waits for, and which change ends it. The deadline, admission, the
//! metrics, the stuck-saga finder and the history read these instead of
//! spelling `status == PENDING` each in its own way.

use chrono::{DateTime, Utc};

use super::{Order, OrderStatus, SagaAnswer};

/// The statuses of an order whose saga waits for a participant's answer:
/// what admission counts as open sagas and the deadline fails.
pub const AWAITING_ANSWER: &[OrderStatus] = &[OrderStatus::Pending];

/// Whether an order in `status` waits for a participant's answer.
pub fn awaits_answer(status: OrderStatus) -> bool {
    AWAITING_ANSWER.contains(&status)
}

/// The step a saga that has not ended waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwaitedStep {
    /// PENDING: the inventory has not answered `order.created` yet.
    InventoryAnswer,
    /// FAILED by the saga deadline: the inventory has not yet confirmed that
    /// it gave back what it held.
    InventoryRelease,
}

impl AwaitedStep {
    /// The step in an operator's words, naming the event that ends the wait.
    pub fn describe(self) -> &'static str {
        match self {
            AwaitedStep::InventoryAnswer => {
                "the inventory's answer (inventory.reserved or inventory.reservation_failed)"
            }
            AwaitedStep::InventoryRelease => {
                "the inventory to release its hold (inventory.released)"
            }
        }
    }
}

/// What the order's saga waits for; `None` once the saga has ended (the
/// order was decided, cancelled, or failed and released).
pub fn awaited_step(order: &Order) -> Option<AwaitedStep> {
    if awaits_answer(order.status) {
        Some(AwaitedStep::InventoryAnswer)
    } else if order.awaiting_release {
        Some(AwaitedStep::InventoryRelease)
    } else {
        None
    }
}

/// How a saga's wait for an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SagaEnd {
    Confirmed,
    Rejected,
    /// Past the deadline (its compensation may still be under way).
    Failed,
    Cancelled,
}

impl SagaEnd {
    /// As the metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaEnd::Confirmed => "confirmed",
            SagaEnd::Rejected => "rejected",
            SagaEnd::Failed => "failed",
            SagaEnd::Cancelled => "cancelled",
        }
    }
}

/// The end of the saga's wait that the change from `before` to `after`
/// made, if it made one.
pub fn ended_by(before: &Order, after: &Order) -> Option<SagaEnd> {
    if !awaits_answer(before.status) || awaits_answer(after.status) {
        return None;
    }
    match after.status {
        OrderStatus::Confirmed => Some(SagaEnd::Confirmed),
        OrderStatus::Rejected => Some(SagaEnd::Rejected),
        OrderStatus::Failed => Some(SagaEnd::Failed),
        OrderStatus::Cancelled => Some(SagaEnd::Cancelled),
        _ => None,
    }
}

/// Why `order` came to its status from `from`, for its history: the order's
/// own reason (a rejection, the deadline), or the operator's retry, which
/// clears the reason the order shows.
pub fn status_reason(from: Option<OrderStatus>, order: &Order) -> Option<String> {
    match (from, order.status) {
        (Some(OrderStatus::Failed), OrderStatus::Pending) => Some(format!(
            "saga retried by an operator (attempt {})",
            order.attempt
        )),
        _ => order.reason.clone(),
    }
}

/// When the current run of the order's saga began: its deadline and its
/// age count from here.
pub fn started_at(order: &Order) -> DateTime<Utc> {
    order.saga_started_at.unwrap_or(order.created_at)
}

/// A saga's age: whole seconds since it began (0 for a clock that went
/// back).
pub fn age_seconds(started_at: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    u64::try_from((now - started_at).num_seconds()).unwrap_or(0)
}

/// The run of the saga an answer belongs to.
pub fn attempt_of(answer: &SagaAnswer) -> u32 {
    match answer {
        SagaAnswer::InventoryReserved(data) => data.attempt,
        SagaAnswer::InventoryReservationFailed(data) => data.attempt,
        SagaAnswer::InventoryReleased(data) => data.attempt,
    }
}

/// The order an answer is about.
pub fn answered_order(answer: &SagaAnswer) -> &str {
    match answer {
        SagaAnswer::InventoryReserved(data) => &data.order_id,
        SagaAnswer::InventoryReservationFailed(data) => &data.order_id,
        SagaAnswer::InventoryReleased(data) => &data.order_id,
    }
}
