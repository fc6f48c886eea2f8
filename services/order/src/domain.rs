//! Orders and the rules that move them. No I/O: each change is a function
//! from the order as read to the order as it stands after, with the events
//! the change emits; the store only writes what these functions return.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::events::{
    Cause, OrderCancelled, OrderConfirmed, OrderCreated, OrderFailed, OrderLine, OrderRejected,
    OrderStatusChanged, PricedLine, RawEnvelope, ShortLine,
};
#[cfg(test)]
use shared::events::{InventoryReservationFailed, InventoryReserved};
pub use shared::events::{OrderStatus, ToOrderService as SagaAnswer};
use shared::history::HistoryItem;

pub mod saga;
pub use saga::{AwaitedStep, awaited_step};

/// The `source` of every event this service emits.
pub const SOURCE: &str = "order-service";

/// A line of an order; the unit price is known once the order is confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    pub product_id: String,
    pub quantity: u32,
    pub unit_price_cents: Option<i64>,
}

/// An order as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    #[serde(rename = "_id")]
    pub id: String,
    pub customer_id: String,
    pub customer_email: String,
    pub items: Vec<OrderItem>,
    pub total_cents: Option<i64>,
    pub status: OrderStatus,
    pub reason: Option<String>,
    /// Bumped by every change; guards against lost updates.
    pub version: i64,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
    pub correlation_id: String,
    /// FAILED by the saga deadline, and the inventory has not yet confirmed
    /// that it gave back what it held: flagged for an operator until then.
    #[serde(default)]
    pub awaiting_release: bool,
    /// Which run of the saga this is: 1, and one more each time an
    /// operator retries the FAILED order. Every saga event carries it, so an
    /// answer to an earlier run moves nothing.
    #[serde(default = "shared::events::first_attempt")]
    pub attempt: u32,
    /// When the current run of the saga began (its deadline counts from
    /// here): the order's creation, or its last retry. Absent on orders
    /// written before retries existed, whose saga began at `created_at`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub saga_started_at: Option<DateTime<Utc>>,
    /// The order service's lines of the order's history
    /// ([`shared::history`]), kept in the order, which every step of its
    /// saga rewrites anyway: the history costs this service no document of
    /// its own. Lists leave them out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryItem>,
}

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleViolation {
    #[error("an order in status {0} cannot be cancelled (only PENDING or CONFIRMED)")]
    NotCancellable(&'static str),
    #[error("an order cannot move from {from} to {to} (allowed: CONFIRMED→SHIPPED→DELIVERED)")]
    IllegalTransition {
        from: &'static str,
        to: &'static str,
    },
    #[error("the inventory's lines do not match the order: {0}")]
    LinesMismatch(String),
    #[error("the order total overflows")]
    TotalOverflow,
    #[error("the inventory priced {product} at {cents} cents: a price cannot be negative")]
    NegativePrice { product: String, cents: i64 },
    #[error("only a FAILED order's saga can be retried; this order is {0}")]
    NotRetryable(&'static str),
    #[error(
        "the inventory has not yet confirmed that it released what it held for this order's \
         last attempt; retry once it has (GET /admin/sagas/stuck shows what the saga waits for)"
    )]
    CompensationPending,
}

/// An order as it stands after a change, and the events the change emits.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub order: Order,
    pub events: Vec<RawEnvelope>,
}

impl Order {
    /// This order moved to `status` (other fields as `with` sets them), one
    /// version on.
    fn moved(
        &self,
        status: OrderStatus,
        now: DateTime<Utc>,
        with: impl FnOnce(&mut Order),
    ) -> Order {
        let mut next = Order {
            status,
            version: self.version + 1,
            updated_at: now,
            ..self.clone()
        };
        with(&mut next);
        next
    }
}

/// A new PENDING order for `items` (product id, quantity), and its
/// `order.created`.
pub fn place(
    id: String,
    customer_id: String,
    customer_email: String,
    items: Vec<(String, u32)>,
    cause: &Cause,
    now: DateTime<Utc>,
) -> Change {
    let order = Order {
        id,
        customer_id,
        customer_email,
        items: items
            .into_iter()
            .map(|(product_id, quantity)| OrderItem {
                product_id,
                quantity,
                unit_price_cents: None,
            })
            .collect(),
        total_cents: None,
        status: OrderStatus::Pending,
        reason: None,
        version: 1,
        created_at: now,
        updated_at: now,
        correlation_id: cause.correlation_id().to_string(),
        awaiting_release: false,
        attempt: 1,
        saga_started_at: Some(now),
        history: Vec::new(),
    };
    let created = created_event(&order, cause);
    Change {
        order,
        events: vec![created],
    }
}

/// The `order.created` that starts a run of the order's saga.
fn created_event(order: &Order, cause: &Cause) -> RawEnvelope {
    cause.emit(OrderCreated {
        order_id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        customer_email: order.customer_email.clone(),
        items: order
            .items
            .iter()
            .map(|i| OrderLine {
                product_id: i.product_id.clone(),
                quantity: i.quantity,
            })
            .collect(),
        attempt: order.attempt,
    })
}

/// An operator runs a FAILED order's saga again: PENDING, one attempt on,
/// with a new deadline from `now`, and the `order.created` of the new
/// attempt. Only once the last attempt's compensation is done (the
/// inventory confirmed its release): then nothing is held for the order,
/// so the new attempt takes stock at most once.
pub fn retry(order: &Order, cause: &Cause, now: DateTime<Utc>) -> Result<Change, RuleViolation> {
    if order.status != OrderStatus::Failed {
        return Err(RuleViolation::NotRetryable(order.status.as_str()));
    }
    if order.awaiting_release {
        return Err(RuleViolation::CompensationPending);
    }
    let next = order.moved(OrderStatus::Pending, now, |o| {
        o.attempt += 1;
        o.saga_started_at = Some(now);
        o.reason = None;
        o.items.iter_mut().for_each(|i| i.unit_price_cents = None);
        o.total_cents = None;
    });
    let created = created_event(&next, cause);
    Ok(Change {
        order: next,
        events: vec![created],
    })
}

/// The customer cancels: `order.cancelled`, which releases held stock.
pub fn cancel(order: &Order, cause: &Cause, now: DateTime<Utc>) -> Result<Change, RuleViolation> {
    check_cancellable(order.status)?;
    let cancelled = cause.emit(OrderCancelled {
        order_id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        customer_email: order.customer_email.clone(),
        previous_status: order.status,
        attempt: order.attempt,
    });
    Ok(Change {
        order: order.moved(OrderStatus::Cancelled, now, |_| {}),
        events: vec![cancelled],
    })
}

/// An admin moves the order on (CONFIRMED→SHIPPED→DELIVERED):
/// `order.status_changed`.
pub fn advance(
    order: &Order,
    to: OrderStatus,
    cause: &Cause,
    now: DateTime<Utc>,
) -> Result<Change, RuleViolation> {
    check_admin_transition(order.status, to)?;
    let changed = cause.emit(OrderStatusChanged {
        order_id: order.id.clone(),
        from: order.status,
        to,
        version: order.version + 1,
    });
    Ok(Change {
        order: order.moved(to, now, |_| {}),
        events: vec![changed],
    })
}

/// The saga deadline: an order still waiting for the inventory's answer
/// `timeout` after its saga began becomes FAILED with `order.failed`, which
/// makes the inventory give back whatever it holds for it (or hold nothing
/// if its answer is still to come) and the customer hear about it. Until the
/// inventory confirms the release, the order stays flagged
/// (`awaiting_release`). `None` if the order has moved on or still has time.
pub fn expire(
    order: &Order,
    timeout: chrono::Duration,
    cause: &Cause,
    now: DateTime<Utc>,
) -> Option<Change> {
    if !saga::awaits_answer(order.status) || now - saga::started_at(order) < timeout {
        return None;
    }
    let reason = format!(
        "the order was not processed within {} s",
        timeout.num_seconds()
    );
    let failed = cause.emit(OrderFailed {
        order_id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        customer_email: order.customer_email.clone(),
        reason: reason.clone(),
        attempt: order.attempt,
    });
    Some(Change {
        order: order.moved(OrderStatus::Failed, now, |o| {
            o.reason = Some(reason);
            o.awaiting_release = true;
        }),
        events: vec![failed],
    })
}

/// What the inventory's answer does to the order: CONFIRMED with
/// `order.confirmed`, REJECTED with `order.rejected`, or nothing (`None`)
/// if the order has moved on.
pub fn on_inventory_answer(
    order: &Order,
    answer: &SagaAnswer,
    cause: &Cause,
    now: DateTime<Utc>,
) -> Result<Option<Change>, RuleViolation> {
    // An answer to an earlier attempt of a retried saga moves nothing.
    if saga::attempt_of(answer) != order.attempt {
        return Ok(None);
    }
    let step = match answer {
        SagaAnswer::InventoryReserved(data) => on_reserved(order, &data.lines)?,
        SagaAnswer::InventoryReservationFailed(data) => {
            on_reservation_failed(order, &data.reason, &data.short_lines)
        }
        // The compensation of a FAILED order is done: clear its flag.
        SagaAnswer::InventoryReleased(_) if order.awaiting_release => {
            return Ok(Some(Change {
                order: order.moved(order.status, now, |o| o.awaiting_release = false),
                events: Vec::new(),
            }));
        }
        // A cancel's release needs no answer.
        SagaAnswer::InventoryReleased(_) => SagaStep::Ignore,
    };
    Ok(match step {
        SagaStep::Ignore => None,
        SagaStep::Confirm { items, total_cents } => {
            let confirmed = cause.emit(OrderConfirmed {
                order_id: order.id.clone(),
                customer_id: order.customer_id.clone(),
                customer_email: order.customer_email.clone(),
                items: items
                    .iter()
                    .map(|i| PricedLine {
                        product_id: i.product_id.clone(),
                        quantity: i.quantity,
                        unit_price_cents: i.unit_price_cents.unwrap_or_default(),
                    })
                    .collect(),
                total_cents,
            });
            Some(Change {
                order: order.moved(OrderStatus::Confirmed, now, |o| {
                    o.items = items;
                    o.total_cents = Some(total_cents);
                }),
                events: vec![confirmed],
            })
        }
        SagaStep::Reject { reason } => {
            let rejected = cause.emit(OrderRejected {
                order_id: order.id.clone(),
                customer_id: order.customer_id.clone(),
                customer_email: order.customer_email.clone(),
                reason: reason.clone(),
            });
            Some(Change {
                order: order.moved(OrderStatus::Rejected, now, |o| o.reason = Some(reason)),
                events: vec![rejected],
            })
        }
    })
}

pub fn check_cancellable(status: OrderStatus) -> Result<(), RuleViolation> {
    match status {
        OrderStatus::Pending | OrderStatus::Confirmed => Ok(()),
        other => Err(RuleViolation::NotCancellable(other.as_str())),
    }
}

/// The only moves an admin can make: CONFIRMED→SHIPPED→DELIVERED.
pub fn check_admin_transition(from: OrderStatus, to: OrderStatus) -> Result<(), RuleViolation> {
    match (from, to) {
        (OrderStatus::Confirmed, OrderStatus::Shipped)
        | (OrderStatus::Shipped, OrderStatus::Delivered) => Ok(()),
        _ => Err(RuleViolation::IllegalTransition {
            from: from.as_str(),
            to: to.as_str(),
        }),
    }
}

/// What the inventory's answer does to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaStep {
    Confirm {
        items: Vec<OrderItem>,
        total_cents: i64,
    },
    Reject {
        reason: String,
    },
    /// The order has moved on (cancelled, or already decided): nothing to do.
    Ignore,
}

/// `inventory.reserved`: confirm a pending order at the inventory's prices.
pub fn on_reserved(order: &Order, lines: &[PricedLine]) -> Result<SagaStep, RuleViolation> {
    if order.status != OrderStatus::Pending {
        return Ok(SagaStep::Ignore);
    }
    let mut items = Vec::with_capacity(order.items.len());
    let mut total: i64 = 0;
    for item in &order.items {
        let line = lines
            .iter()
            .find(|l| l.product_id == item.product_id)
            .ok_or_else(|| RuleViolation::LinesMismatch(format!("{} missing", item.product_id)))?;
        if line.quantity != item.quantity {
            return Err(RuleViolation::LinesMismatch(format!(
                "{}: ordered {}, reserved {}",
                item.product_id, item.quantity, line.quantity
            )));
        }
        // A price below zero is never the inventory's (its API refuses
        // one), so it is refused here too rather than confirmed at a credit.
        if line.unit_price_cents < 0 {
            return Err(RuleViolation::NegativePrice {
                product: line.product_id.clone(),
                cents: line.unit_price_cents,
            });
        }
        let line_total = line
            .unit_price_cents
            .checked_mul(i64::from(item.quantity))
            .ok_or(RuleViolation::TotalOverflow)?;
        total = total
            .checked_add(line_total)
            .ok_or(RuleViolation::TotalOverflow)?;
        items.push(OrderItem {
            unit_price_cents: Some(line.unit_price_cents),
            ..item.clone()
        });
    }
    if lines.len() != order.items.len() {
        return Err(RuleViolation::LinesMismatch("extra lines".into()));
    }
    Ok(SagaStep::Confirm {
        items,
        total_cents: total,
    })
}

/// `inventory.reservation_failed`: reject a pending order with a reason a
/// customer can read.
pub fn on_reservation_failed(order: &Order, reason: &str, short: &[ShortLine]) -> SagaStep {
    if order.status != OrderStatus::Pending {
        return SagaStep::Ignore;
    }
    let details: Vec<String> = short
        .iter()
        .map(|line| match line.available {
            Some(available) => format!(
                "{}: requested {}, available {}",
                line.product_id, line.requested, available
            ),
            None => format!("{}: unknown product", line.product_id),
        })
        .collect();
    let reason = if details.is_empty() {
        reason.to_string()
    } else {
        format!("{reason} ({})", details.join("; "))
    };
    SagaStep::Reject { reason }
}

/// A digest of what was asked, to tell a retried request from a different
/// one sent with the same Idempotency-Key.
pub fn request_fingerprint(
    customer_id: &str,
    customer_email: &str,
    items: &[(String, u32)],
) -> String {
    let mut hasher = Sha256::new();
    let canonical = serde_json::json!({
        "customerId": customer_id,
        "customerEmail": customer_email,
        "items": items.iter().map(|(p, q)| serde_json::json!([p, q])).collect::<Vec<_>>(),
    });
    hasher.update(canonical.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

/// The customer order limit's window: `ORDERS_PER_CUSTOMER_PER_MINUTE`
/// counts the orders placed within it.
pub const ORDER_LIMIT_WINDOW: chrono::Duration = chrono::Duration::minutes(1);

/// The smallest UUIDv7 (as stored: lowercase, hyphenated) of an order placed
/// at `at` or later. Order ids are UUIDv7, whose text sorts by time, so the
/// orders placed since `at` are those with `_id >= uuid_v7_floor(at)`.
pub fn uuid_v7_floor(at: DateTime<Utc>) -> String {
    let ms = at.timestamp_millis().max(0) as u64;
    format!(
        "{:08x}-{:04x}-7000-8000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}

/// Seconds until a customer over the limit may order again: when the
/// `limit`-th newest order in the window, placed at `placed_at`, leaves it.
/// At least 1.
pub fn order_limit_retry_after(placed_at: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let leaves = placed_at + ORDER_LIMIT_WINDOW;
    (leaves - now).num_seconds().max(0) as u64 + 1
}

/// When an order with this UUIDv7 id was placed.
pub fn placed_at(order_id: &str) -> Option<DateTime<Utc>> {
    let (seconds, nanos) = uuid::Uuid::parse_str(order_id)
        .ok()?
        .get_timestamp()?
        .to_unix();
    DateTime::from_timestamp(seconds as i64, nanos)
}

/// Indexes of lines that repeat an earlier line's product.
pub fn duplicate_products(product_ids: &[&str]) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    product_ids
        .iter()
        .enumerate()
        .filter(|(_, id)| !seen.insert(**id))
        .map(|(index, _)| index)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::events::Event;

    /// An order of two lines in `status`, at version 1 of its first run.
    pub(crate) fn order(status: OrderStatus) -> Order {
        Order {
            id: "o1".into(),
            customer_id: "c1".into(),
            customer_email: "c1@example.com".into(),
            items: vec![
                OrderItem {
                    product_id: "a".into(),
                    quantity: 2,
                    unit_price_cents: None,
                },
                OrderItem {
                    product_id: "b".into(),
                    quantity: 1,
                    unit_price_cents: None,
                },
            ],
            total_cents: None,
            status,
            reason: None,
            version: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            correlation_id: "corr".into(),
            awaiting_release: false,
            attempt: 1,
            saga_started_at: None,
            history: Vec::new(),
        }
    }

    fn priced(product: &str, quantity: u32, cents: i64) -> PricedLine {
        PricedLine {
            product_id: product.into(),
            quantity,
            unit_price_cents: cents,
        }
    }

    #[test]
    fn a_reservation_confirms_a_pending_order_at_the_inventory_prices() {
        let step = on_reserved(
            &order(OrderStatus::Pending),
            &[priced("b", 1, 999), priced("a", 2, 1050)],
        )
        .unwrap();
        let SagaStep::Confirm { items, total_cents } = step else {
            panic!("{step:?}")
        };
        assert_eq!(total_cents, 2 * 1050 + 999);
        assert_eq!(items[0].unit_price_cents, Some(1050));
        assert_eq!(items[1].unit_price_cents, Some(999));
    }

    #[test]
    fn a_late_reservation_does_not_move_a_cancelled_order() {
        assert_eq!(
            on_reserved(
                &order(OrderStatus::Cancelled),
                &[priced("a", 2, 1), priced("b", 1, 1)]
            )
            .unwrap(),
            SagaStep::Ignore
        );
    }

    #[test]
    fn a_reservation_that_does_not_match_the_order_is_a_violation() {
        assert!(matches!(
            on_reserved(
                &order(OrderStatus::Pending),
                &[priced("a", 3, 1), priced("b", 1, 1)]
            ),
            Err(RuleViolation::LinesMismatch(_))
        ));
        assert!(matches!(
            on_reserved(&order(OrderStatus::Pending), &[priced("a", 2, 1)]),
            Err(RuleViolation::LinesMismatch(_))
        ));
    }

    #[test]
    fn a_total_that_overflows_is_refused() {
        assert_eq!(
            on_reserved(
                &order(OrderStatus::Pending),
                &[priced("a", 2, i64::MAX), priced("b", 1, 1)]
            ),
            Err(RuleViolation::TotalOverflow)
        );
    }

    #[test]
    fn a_negative_price_is_refused() {
        assert_eq!(
            on_reserved(
                &order(OrderStatus::Pending),
                &[priced("a", 2, 100), priced("b", 1, -1)]
            ),
            Err(RuleViolation::NegativePrice {
                product: "b".into(),
                cents: -1
            })
        );
    }

    #[test]
    fn a_failed_reservation_rejects_with_the_short_lines_in_the_reason() {
        let step = on_reservation_failed(
            &order(OrderStatus::Pending),
            "insufficient stock",
            &[ShortLine {
                product_id: "a".into(),
                requested: 2,
                available: Some(1),
            }],
        );
        assert_eq!(
            step,
            SagaStep::Reject {
                reason: "insufficient stock (a: requested 2, available 1)".into()
            }
        );
        assert_eq!(
            on_reservation_failed(&order(OrderStatus::Confirmed), "x", &[]),
            SagaStep::Ignore
        );
    }

    fn reserved(lines: Vec<PricedLine>) -> SagaAnswer {
        SagaAnswer::InventoryReserved(InventoryReserved {
            order_id: "o1".into(),
            lines,
            attempt: 1,
        })
    }

    /// `inventory.released` of attempt 1 that held nothing.
    fn released_nothing() -> SagaAnswer {
        SagaAnswer::InventoryReleased(shared::events::InventoryReleased {
            order_id: "o1".into(),
            lines: vec![],
            attempt: 1,
        })
    }

    #[test]
    fn a_new_order_is_pending_at_version_one_and_announces_itself() {
        let cause = Cause::request(SOURCE, "corr-9");
        let change = place(
            "o9".into(),
            "c1".into(),
            "c1@example.com".into(),
            vec![("a".into(), 2)],
            &cause,
            Utc::now(),
        );
        assert_eq!(change.order.status, OrderStatus::Pending);
        assert_eq!(change.order.version, 1);
        assert_eq!(change.order.correlation_id, "corr-9");
        let [created] = change.events.as_slice() else {
            panic!("{:?}", change.events)
        };
        assert_eq!(created.event_type, "order.created");
        assert_eq!(created.correlation_id, "corr-9");
        assert_eq!(created.data["items"][0]["quantity"], 2);
    }

    #[test]
    fn a_reservation_confirms_one_version_on_and_emits_order_confirmed_caused_by_it() {
        let answer_event = Cause::request("inventory-service", "corr").emit(InventoryReserved {
            order_id: "o1".into(),
            lines: vec![],
            attempt: 1,
        });
        let cause = Cause::event(SOURCE, &answer_event);
        let answer = reserved(vec![priced("a", 2, 100), priced("b", 1, 50)]);
        let change = on_inventory_answer(&order(OrderStatus::Pending), &answer, &cause, Utc::now())
            .unwrap()
            .expect("a pending order moves");
        assert_eq!(change.order.status, OrderStatus::Confirmed);
        assert_eq!(change.order.version, 2);
        assert_eq!(change.order.total_cents, Some(250));
        assert_eq!(change.events[0].event_type, "order.confirmed");
        assert_eq!(change.events[0].causation_id, Some(answer_event.event_id));
        assert_eq!(change.events[0].data["totalCents"], 250);

        let late = on_inventory_answer(&order(OrderStatus::Cancelled), &answer, &cause, Utc::now());
        assert_eq!(late, Ok(None));
    }

    #[test]
    fn a_failed_reservation_rejects_with_order_rejected() {
        let answer = SagaAnswer::InventoryReservationFailed(InventoryReservationFailed {
            order_id: "o1".into(),
            reason: "insufficient stock".into(),
            short_lines: vec![],
            attempt: 1,
        });
        let cause = Cause::request(SOURCE, "corr");
        let change = on_inventory_answer(&order(OrderStatus::Pending), &answer, &cause, Utc::now())
            .unwrap()
            .unwrap();
        assert_eq!(change.order.status, OrderStatus::Rejected);
        assert_eq!(change.order.reason.as_deref(), Some("insufficient stock"));
        assert_eq!(change.events[0].event_type, "order.rejected");
    }

    #[test]
    fn a_pending_order_past_the_deadline_fails_once_and_waits_for_its_release() {
        let cause = Cause::request(SOURCE, "corr");
        let timeout = chrono::Duration::seconds(60);
        let mut pending = order(OrderStatus::Pending);
        pending.created_at = Utc::now() - chrono::Duration::seconds(61);
        let now = Utc::now();
        assert_eq!(
            expire(&pending, chrono::Duration::seconds(120), &cause, now),
            None,
            "still has time"
        );
        let failed = expire(&pending, timeout, &cause, now).expect("past the deadline");
        assert_eq!(failed.order.status, OrderStatus::Failed);
        assert_eq!(failed.order.version, 2);
        assert!(failed.order.awaiting_release);
        assert_eq!(failed.events[0].event_type, "order.failed");
        assert_eq!(
            failed.events[0].data["reason"],
            "the order was not processed within 60 s"
        );
        assert_eq!(
            expire(&failed.order, timeout, &cause, now),
            None,
            "only once"
        );
        let mut confirmed = order(OrderStatus::Confirmed);
        confirmed.created_at = pending.created_at;
        assert_eq!(expire(&confirmed, timeout, &cause, now), None);

        // A late reservation does not resurrect it; the release clears the flag.
        let late = reserved(vec![priced("a", 2, 1), priced("b", 1, 1)]);
        assert_eq!(
            on_inventory_answer(&failed.order, &late, &cause, now),
            Ok(None)
        );
        let released = released_nothing();
        let cleared = on_inventory_answer(&failed.order, &released, &cause, now)
            .unwrap()
            .expect("the flag clears");
        assert!(!cleared.order.awaiting_release);
        assert_eq!(cleared.order.status, OrderStatus::Failed);
        assert!(cleared.events.is_empty());
        assert_eq!(
            on_inventory_answer(&cleared.order, &released, &cause, now),
            Ok(None)
        );
    }

    #[test]
    fn an_unfinished_saga_waits_for_the_inventorys_answer_or_its_release() {
        let cause = Cause::request(SOURCE, "corr");
        let pending = order(OrderStatus::Pending);
        assert_eq!(awaited_step(&pending), Some(AwaitedStep::InventoryAnswer));
        let step = AwaitedStep::InventoryAnswer.describe();
        assert!(step.contains(InventoryReserved::TYPE), "{step}");
        assert!(step.contains(InventoryReservationFailed::TYPE), "{step}");

        let failed = expire(&pending, chrono::Duration::zero(), &cause, Utc::now())
            .expect("past a deadline of 0")
            .order;
        assert_eq!(awaited_step(&failed), Some(AwaitedStep::InventoryRelease));
        let step = AwaitedStep::InventoryRelease.describe();
        assert!(
            step.contains(shared::events::InventoryReleased::TYPE),
            "{step}"
        );

        let released = released_nothing();
        let cleared = on_inventory_answer(&failed, &released, &cause, Utc::now())
            .unwrap()
            .expect("the flag clears");
        assert_eq!(awaited_step(&cleared.order), None, "released: ended");
        for status in [
            OrderStatus::Confirmed,
            OrderStatus::Rejected,
            OrderStatus::Cancelled,
            OrderStatus::Shipped,
            OrderStatus::Delivered,
        ] {
            assert_eq!(awaited_step(&order(status)), None, "{status:?}");
        }
    }

    #[test]
    fn a_failed_order_whose_release_is_done_runs_its_saga_again_with_a_new_deadline() {
        let cause = Cause::request(SOURCE, "corr");
        let timeout = chrono::Duration::seconds(60);
        let mut pending = order(OrderStatus::Pending);
        pending.created_at = Utc::now() - chrono::Duration::hours(2);
        let failed = expire(&pending, timeout, &cause, Utc::now()).unwrap().order;
        assert_eq!(
            retry(&failed, &cause, Utc::now()),
            Err(RuleViolation::CompensationPending),
            "not before the release"
        );
        let released = released_nothing();
        let failed = on_inventory_answer(&failed, &released, &cause, Utc::now())
            .unwrap()
            .unwrap()
            .order;

        let now = Utc::now();
        let retried = retry(&failed, &cause, now).expect("a released FAILED order retries");
        assert_eq!(retried.order.status, OrderStatus::Pending);
        assert_eq!(retried.order.attempt, 2);
        assert_eq!(retried.order.version, failed.version + 1);
        assert_eq!(retried.order.reason, None);
        assert_eq!(saga::started_at(&retried.order), now);
        let [created] = retried.events.as_slice() else {
            panic!("{:?}", retried.events)
        };
        assert_eq!(created.event_type, "order.created");
        assert_eq!(created.data["attempt"], 2);
        assert_eq!(
            expire(
                &retried.order,
                timeout,
                &cause,
                now + chrono::Duration::seconds(30)
            ),
            None,
            "the deadline counts from the retry, not from the order's creation"
        );
        assert!(expire(&retried.order, timeout, &cause, now + timeout).is_some());

        for status in [
            OrderStatus::Pending,
            OrderStatus::Confirmed,
            OrderStatus::Rejected,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(
                retry(&order(status), &cause, now),
                Err(RuleViolation::NotRetryable(status.as_str()))
            );
        }
    }

    #[test]
    fn an_answer_to_an_earlier_attempt_moves_nothing() {
        let cause = Cause::request(SOURCE, "corr");
        let mut retried = order(OrderStatus::Pending);
        retried.attempt = 2;
        let stale = reserved(vec![priced("a", 2, 1), priced("b", 1, 1)]);
        assert_eq!(saga::attempt_of(&stale), 1);
        assert_eq!(
            on_inventory_answer(&retried, &stale, &cause, Utc::now()),
            Ok(None)
        );
        let SagaAnswer::InventoryReserved(mut current) = stale else {
            unreachable!()
        };
        current.attempt = 2;
        let confirmed = on_inventory_answer(
            &retried,
            &SagaAnswer::InventoryReserved(current),
            &cause,
            Utc::now(),
        )
        .unwrap()
        .expect("its own attempt's answer moves it");
        assert_eq!(confirmed.order.status, OrderStatus::Confirmed);
    }

    #[test]
    fn the_saga_waits_for_an_answer_only_while_pending_and_ends_once() {
        use saga::SagaEnd;
        assert!(saga::awaits_answer(OrderStatus::Pending));
        let pending = order(OrderStatus::Pending);
        for (to, end) in [
            (OrderStatus::Confirmed, Some(SagaEnd::Confirmed)),
            (OrderStatus::Rejected, Some(SagaEnd::Rejected)),
            (OrderStatus::Failed, Some(SagaEnd::Failed)),
            (OrderStatus::Cancelled, Some(SagaEnd::Cancelled)),
            (OrderStatus::Pending, None),
        ] {
            assert!(!saga::awaits_answer(to) || to == OrderStatus::Pending);
            assert_eq!(saga::ended_by(&pending, &order(to)), end, "{to:?}");
        }
        assert_eq!(
            saga::ended_by(
                &order(OrderStatus::Confirmed),
                &order(OrderStatus::Cancelled)
            ),
            None,
            "a cancel after the saga ended ends nothing"
        );
    }

    #[test]
    fn a_sagas_age_is_whole_seconds_since_it_was_accepted() {
        let accepted = Utc::now();
        let later = accepted + chrono::Duration::milliseconds(2_900);
        assert_eq!(saga::age_seconds(accepted, later), 2);
        let earlier = accepted - chrono::Duration::seconds(5);
        assert_eq!(saga::age_seconds(accepted, earlier), 0);
    }

    #[test]
    fn a_cancel_and_an_admin_move_each_emit_their_event() {
        let cause = Cause::request(SOURCE, "corr");
        let cancelled = cancel(&order(OrderStatus::Confirmed), &cause, Utc::now()).unwrap();
        assert_eq!(cancelled.order.status, OrderStatus::Cancelled);
        assert_eq!(cancelled.events[0].data["previousStatus"], "CONFIRMED");
        assert!(cancel(&order(OrderStatus::Shipped), &cause, Utc::now()).is_err());

        let shipped = advance(
            &order(OrderStatus::Confirmed),
            OrderStatus::Shipped,
            &cause,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(shipped.order.version, 2);
        assert_eq!(shipped.events[0].event_type, "order.status_changed");
        assert_eq!(shipped.events[0].data["version"], 2);
    }

    #[test]
    fn only_pending_and_confirmed_orders_can_be_cancelled() {
        assert!(check_cancellable(OrderStatus::Pending).is_ok());
        assert!(check_cancellable(OrderStatus::Confirmed).is_ok());
        for status in [
            OrderStatus::Shipped,
            OrderStatus::Delivered,
            OrderStatus::Rejected,
            OrderStatus::Cancelled,
        ] {
            assert!(check_cancellable(status).is_err(), "{status:?}");
        }
    }

    #[test]
    fn admins_only_move_orders_forward_through_shipping() {
        use OrderStatus::*;
        assert!(check_admin_transition(Confirmed, Shipped).is_ok());
        assert!(check_admin_transition(Shipped, Delivered).is_ok());
        for (from, to) in [
            (Pending, Shipped),
            (Confirmed, Delivered),
            (Delivered, Shipped),
            (Shipped, Cancelled),
            (Confirmed, Confirmed),
        ] {
            assert!(check_admin_transition(from, to).is_err(), "{from:?}→{to:?}");
        }
    }

    #[test]
    fn the_fingerprint_changes_with_the_request_and_only_with_it() {
        let items = vec![("a".to_string(), 1)];
        let one = request_fingerprint("c", "c@x.io", &items);
        assert_eq!(one, request_fingerprint("c", "c@x.io", &items));
        assert_ne!(
            one,
            request_fingerprint("c", "c@x.io", &[("a".to_string(), 2)])
        );
        assert_ne!(one, request_fingerprint("d", "c@x.io", &items));
    }

    #[test]
    fn repeated_products_are_found() {
        assert_eq!(duplicate_products(&["a", "b", "a", "a"]), vec![2, 3]);
        assert!(duplicate_products(&["a", "b"]).is_empty());
    }

    #[test]
    fn the_uuid_v7_floor_sorts_between_the_orders_before_and_after_it() {
        let at = Utc::now();
        let before = uuid::Uuid::now_v7().to_string();
        let floor = uuid_v7_floor(at + chrono::Duration::milliseconds(5));
        std::thread::sleep(std::time::Duration::from_millis(10));
        let after = uuid::Uuid::now_v7().to_string();
        assert!(before < floor, "{before} < {floor}");
        assert!(floor < after, "{floor} < {after}");
        assert_eq!(
            placed_at(&floor).map(|t| t.timestamp_millis()),
            Some((at + chrono::Duration::milliseconds(5)).timestamp_millis())
        );
    }

    #[test]
    fn a_limited_customer_may_order_again_when_its_oldest_counted_order_leaves_the_window() {
        let now = Utc::now();
        let placed = now - chrono::Duration::seconds(50);
        assert_eq!(order_limit_retry_after(placed, now), 11);
        // Already out of the window by the time we answer: come back at once.
        assert_eq!(
            order_limit_retry_after(now - chrono::Duration::seconds(70), now),
            1
        );
        assert_eq!(placed_at("not-a-uuid"), None);
    }
}
