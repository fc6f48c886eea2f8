//! Orders and the rules that move them. No I/O: the store and the handlers
//! ask these functions what to do.

use chrono::{DateTime, Utc};
use poem_openapi::Enum;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::events::{PricedLine, ShortLine};

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted; the inventory has not answered yet.
    Pending,
    /// Stock is held and prices are fixed.
    Confirmed,
    /// The inventory could not hold every line.
    Rejected,
    Shipped,
    Delivered,
    /// Cancelled by the customer; held stock was released.
    Cancelled,
    /// Processing gave up.
    Failed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Rejected => "REJECTED",
            OrderStatus::Shipped => "SHIPPED",
            OrderStatus::Delivered => "DELIVERED",
            OrderStatus::Cancelled => "CANCELLED",
            OrderStatus::Failed => "FAILED",
        }
    }
}

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
mod tests {
    use super::*;

    fn order(status: OrderStatus) -> Order {
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
}
