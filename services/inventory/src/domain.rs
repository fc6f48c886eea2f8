//! Products, reservations and the stock rules. No I/O: each change is a
//! function from what was read to what to write and the events it emits.
//!
//! `inventory.updated` announces admin changes (a product added, a stock
//! count); the saga's own moves are told by `inventory.reserved` and
//! `inventory.released`. `inventory.low` goes out once per crossing of the
//! threshold, whatever moved the stock.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::events::{
    Cause, InventoryLow, InventoryReleased, InventoryReservationFailed, InventoryReserved,
    InventoryUpdated, OrderCreated, OrderLine, PricedLine, RawEnvelope, ShortLine,
};
use shared::history::HistoryItem;

/// The `source` of every event this service emits.
pub const SOURCE: &str = "inventory-service";

/// A product as stored. `stock` is what can still be sold; `reserved` is
/// held by confirmed orders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    #[serde(rename = "_id")]
    pub id: String,
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    pub category: String,
    pub price_cents: i64,
    pub stock: i64,
    pub reserved: i64,
    pub low_stock_threshold: i64,
    /// True from the moment stock falls to or below the threshold until it
    /// rises above it again: one alert per crossing.
    pub low_stock_alerted: bool,
    pub version: i64,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    /// Stock is held for the order.
    Reserved,
    /// Nothing was held: some line could not be filled.
    Rejected,
    /// Held stock went back on cancel.
    Released,
    /// The order ended (cancelled, or failed by the saga deadline) before
    /// its `order.created` arrived: nothing may be reserved later. The
    /// stored name predates failed orders.
    CancelledBeforeReservation,
}

/// What the inventory did for one order (keyed by order id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    #[serde(rename = "_id")]
    pub order_id: String,
    pub status: ReservationStatus,
    pub lines: Vec<PricedLine>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
    /// The run of the order's saga it belongs to. A retried saga's
    /// `order.created` replaces the reservation of the run before, which
    /// holds nothing by then.
    #[serde(default = "shared::events::first_attempt")]
    pub attempt: u32,
    /// The inventory's lines of the order's history ([`shared::history`]),
    /// kept in the reservation, which handling the order writes anyway: the
    /// history costs this service no document of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryItem>,
}

/// What an `order.created` meets in the reservation stored for its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prior {
    /// Nothing: the order is decided now.
    Nothing,
    /// A reservation of an earlier run that holds nothing any more: this
    /// run's decision replaces it.
    EarlierRun { attempt: u32 },
    /// This run (or a later one) was decided or ended already: a duplicate.
    Decided,
}

/// What `order.created` for run `attempt` meets, given the stored
/// reservation's run and status. An earlier run that still holds stock is a
/// broken saga (a retry goes out only after the release): refused, so an
/// operator sees it instead of stock taken twice.
pub fn prior(stored: Option<(u32, ReservationStatus)>, attempt: u32) -> Result<Prior, String> {
    match stored {
        None => Ok(Prior::Nothing),
        Some((stored, _)) if stored >= attempt => Ok(Prior::Decided),
        Some((stored, ReservationStatus::Reserved)) => Err(format!(
            "run {stored} of this order still holds stock; run {attempt} cannot start before it is released"
        )),
        Some((stored, _)) => Ok(Prior::EarlierRun { attempt: stored }),
    }
}

/// What releasing run `attempt` of an order finds to give back.
#[derive(Clone, Debug, PartialEq)]
pub enum ReleaseTarget {
    /// That run holds stock: give it back.
    Held(Reservation),
    /// That run holds nothing (refused, released before, or a later run
    /// was decided since).
    NothingHeld,
    /// That run was not decided yet: the end overtook the order. A
    /// tombstone for the run makes sure nothing is held later; it replaces
    /// the reservation of an earlier run, if one is stored.
    EndedFirst { replaces: Option<Reservation> },
}

/// What releasing run `attempt` finds in the stored reservation. An earlier
/// run that still holds stock is a broken saga, refused as in [`prior`].
pub fn release_target(stored: Option<Reservation>, attempt: u32) -> Result<ReleaseTarget, String> {
    let held = |r: &Reservation| r.status == ReservationStatus::Reserved;
    Ok(match stored {
        None => ReleaseTarget::EndedFirst { replaces: None },
        Some(r) if r.attempt < attempt && held(&r) => {
            return Err(format!(
                "run {} of this order still holds stock; run {attempt} cannot end before it is released",
                r.attempt
            ));
        }
        Some(r) if r.attempt < attempt => ReleaseTarget::EndedFirst { replaces: Some(r) },
        Some(r) if r.attempt == attempt && held(&r) => ReleaseTarget::Held(r),
        Some(_) => ReleaseTarget::NothingHeld,
    })
}

/// All lines or none: the priced lines to hold, or every line that falls short.
pub fn plan_reservation(
    lines: &[OrderLine],
    products: &[Product],
) -> Result<Vec<PricedLine>, Vec<ShortLine>> {
    let mut planned = Vec::with_capacity(lines.len());
    let mut short = Vec::new();
    for line in lines {
        match products.iter().find(|p| p.id == line.product_id) {
            None => short.push(ShortLine {
                product_id: line.product_id.clone(),
                requested: line.quantity,
                available: None,
            }),
            Some(product) if product.stock < i64::from(line.quantity) => short.push(ShortLine {
                product_id: line.product_id.clone(),
                requested: line.quantity,
                available: Some(product.stock),
            }),
            Some(product) => planned.push(PricedLine {
                product_id: product.id.clone(),
                quantity: line.quantity,
                unit_price_cents: product.price_cents,
            }),
        }
    }
    if short.is_empty() {
        Ok(planned)
    } else {
        Err(short)
    }
}

/// What the inventory decided for one order.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Every line is held. `alerts` are the products (as they stand right
    /// after this order) whose stock this order took to or below the threshold.
    Reserve {
        lines: Vec<PricedLine>,
        alerts: Vec<Product>,
    },
    /// Nothing is held.
    Reject(Vec<ShortLine>),
}

/// Decides orders one after another against `products`, all of each order
/// or none, so a later order sees what the earlier ones took: a batch of
/// orders decided together ends exactly as if they had come one by one.
/// Returns one decision per order and leaves `products` at the stock after
/// all of them.
pub fn decide_reservations(
    orders: &[&[OrderLine]],
    products: &mut [Product],
    now: DateTime<Utc>,
) -> Vec<Decision> {
    orders
        .iter()
        .map(|lines| match plan_reservation(lines, products) {
            Err(short) => Decision::Reject(short),
            Ok(planned) => {
                let mut alerts = Vec::new();
                for line in &planned {
                    let product = products
                        .iter_mut()
                        .find(|p| p.id == line.product_id)
                        .expect("planned from these products");
                    let quantity = i64::from(line.quantity);
                    product.reserved += quantity;
                    if product.set_stock(product.stock - quantity, now) {
                        alerts.push(product.clone());
                    }
                }
                Decision::Reserve {
                    lines: planned,
                    alerts,
                }
            }
        })
        .collect()
}

impl Product {
    /// Moves the available stock to `stock`, one version on, and keeps the
    /// low-stock flag: returns true when this move crossed to or below the
    /// threshold (alert once), and re-arms the alert when it rose above.
    pub fn set_stock(&mut self, stock: i64, now: DateTime<Utc>) -> bool {
        self.stock = stock;
        self.version += 1;
        self.updated_at = now;
        match low_stock_transition(stock, self.low_stock_threshold, self.low_stock_alerted) {
            LowStock::Alert => {
                self.low_stock_alerted = true;
                true
            }
            LowStock::Rearm => {
                self.low_stock_alerted = false;
                false
            }
            LowStock::Unchanged => false,
        }
    }
}

/// A product as it stands after a change, and the events the change emits.
#[derive(Clone, Debug, PartialEq)]
pub struct StockChange {
    pub product: Product,
    pub events: Vec<RawEnvelope>,
}

/// A new product: `inventory.updated`, and `inventory.low` at once if it
/// starts at or below its threshold.
pub fn add_product(mut product: Product, cause: &Cause) -> StockChange {
    product.low_stock_alerted = false;
    let alert =
        low_stock_transition(product.stock, product.low_stock_threshold, false) == LowStock::Alert;
    product.low_stock_alerted = alert;
    let events = admin_change_events(&product, alert, cause);
    StockChange { product, events }
}

/// An admin count or restock: `inventory.updated`, and `inventory.low` if
/// the new count crossed the threshold.
pub fn count_stock(
    product: &Product,
    stock: i64,
    cause: &Cause,
    now: DateTime<Utc>,
) -> StockChange {
    let mut product = product.clone();
    let alert = product.set_stock(stock, now);
    let events = admin_change_events(&product, alert, cause);
    StockChange { product, events }
}

fn admin_change_events(product: &Product, alert: bool, cause: &Cause) -> Vec<RawEnvelope> {
    let mut events = vec![cause.emit(InventoryUpdated {
        product_id: product.id.clone(),
        stock: product.stock,
        reserved: product.reserved,
    })];
    if alert {
        events.push(low_stock_alert(product, cause));
    }
    events
}

fn low_stock_alert(product: &Product, cause: &Cause) -> RawEnvelope {
    cause.emit(InventoryLow {
        product_id: product.id.clone(),
        sku: product.sku.clone(),
        name: product.name.clone(),
        stock: product.stock,
        low_stock_threshold: product.low_stock_threshold,
    })
}

/// What a decision about one order writes (its reservation, keyed by the
/// order) and emits: `inventory.reserved` (after an `inventory.low` per
/// product it took to the threshold) or `inventory.reservation_failed`.
pub fn reservation_outcome(
    order: &OrderCreated,
    decision: Decision,
    cause: &Cause,
    now: DateTime<Utc>,
) -> (Reservation, Vec<RawEnvelope>) {
    let (status, lines, events) = match decision {
        Decision::Reject(short) => {
            let failed = cause.emit(InventoryReservationFailed {
                order_id: order.order_id.clone(),
                reason: shortage_reason(&short).into(),
                short_lines: short,
                attempt: order.attempt,
            });
            (ReservationStatus::Rejected, Vec::new(), vec![failed])
        }
        Decision::Reserve { lines, alerts } => {
            let mut events: Vec<RawEnvelope> =
                alerts.iter().map(|p| low_stock_alert(p, cause)).collect();
            events.push(cause.emit(InventoryReserved {
                order_id: order.order_id.clone(),
                lines: lines.clone(),
                attempt: order.attempt,
            }));
            (ReservationStatus::Reserved, lines, events)
        }
    };
    let reservation = Reservation {
        order_id: order.order_id.clone(),
        status,
        lines,
        updated_at: now,
        attempt: order.attempt,
        history: Vec::new(),
    };
    (reservation, events)
}

/// The end of run `attempt` of an order that overtook the run itself:
/// nothing may be reserved for that run later.
pub fn ended_before_reservation(order_id: &str, attempt: u32, now: DateTime<Utc>) -> Reservation {
    Reservation {
        order_id: order_id.to_string(),
        status: ReservationStatus::CancelledBeforeReservation,
        lines: Vec::new(),
        updated_at: now,
        attempt,
        history: Vec::new(),
    }
}

/// `inventory.released` for a run of an order that held nothing.
pub fn nothing_held(order_id: &str, attempt: u32, cause: &Cause) -> RawEnvelope {
    cause.emit(InventoryReleased {
        order_id: order_id.to_string(),
        lines: Vec::new(),
        attempt,
    })
}

/// A cancelled or failed order gives back exactly what it held: each product of
/// `products` it held gets its lines back (re-arming its low-stock alert if
/// that lifts it over the threshold). Returns the released reservation and
/// `inventory.released`.
pub fn release(
    reservation: &Reservation,
    products: &mut [Product],
    cause: &Cause,
    now: DateTime<Utc>,
) -> (Reservation, RawEnvelope) {
    for line in &reservation.lines {
        // A product deleted since has nothing to take back.
        if let Some(product) = products.iter_mut().find(|p| p.id == line.product_id) {
            let quantity = i64::from(line.quantity);
            product.reserved -= quantity;
            product.set_stock(product.stock + quantity, now);
        }
    }
    let released = cause.emit(InventoryReleased {
        order_id: reservation.order_id.clone(),
        lines: reservation
            .lines
            .iter()
            .map(|l| OrderLine {
                product_id: l.product_id.clone(),
                quantity: l.quantity,
            })
            .collect(),
        attempt: reservation.attempt,
    });
    let reservation = Reservation {
        status: ReservationStatus::Released,
        updated_at: now,
        ..reservation.clone()
    };
    (reservation, released)
}

/// The reason given with a failed reservation.
pub fn shortage_reason(short: &[ShortLine]) -> &'static str {
    if short.iter().any(|s| s.available.is_none()) {
        "unknown product"
    } else {
        "insufficient stock"
    }
}

/// What a new stock level means for the low-stock alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowStock {
    /// Crossed to or below the threshold: alert once.
    Alert,
    /// Back above the threshold: the next crossing alerts again.
    Rearm,
    Unchanged,
}

pub fn low_stock_transition(stock: i64, threshold: i64, alerted: bool) -> LowStock {
    match (stock <= threshold, alerted) {
        (true, false) => LowStock::Alert,
        (false, true) => LowStock::Rearm,
        _ => LowStock::Unchanged,
    }
}

/// A price in major units (at most 2 decimals) as integer cents.
pub fn price_to_cents(price: f64) -> Result<i64, &'static str> {
    if !price.is_finite() || price < 0.0 {
        return Err("must be a non-negative number");
    }
    let cents = (price * 100.0).round();
    // `price * 100.0` is off by a few units in the last place, which grow
    // with the price: 2597870485.22 is 259787048522.00003 cents.
    let tolerance = (4.0 * f64::EPSILON * cents.abs()).max(1e-6);
    if (price * 100.0 - cents).abs() > tolerance {
        return Err("must have at most 2 decimals");
    }
    if cents > 1e13 {
        return Err("is too large");
    }
    Ok(cents as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: &str, stock: i64) -> Product {
        Product {
            id: id.into(),
            sku: format!("SKU-{id}"),
            name: id.into(),
            description: None,
            category: "c".into(),
            price_cents: 250,
            stock,
            reserved: 0,
            low_stock_threshold: 2,
            low_stock_alerted: false,
            version: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn line(id: &str, quantity: u32) -> OrderLine {
        OrderLine {
            product_id: id.into(),
            quantity,
        }
    }

    #[test]
    fn every_line_is_planned_when_all_are_in_stock() {
        let plan = plan_reservation(
            &[line("a", 2), line("b", 1)],
            &[product("a", 2), product("b", 5)],
        )
        .unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].unit_price_cents, 250);
    }

    #[test]
    fn one_short_line_fails_the_whole_order() {
        let short = plan_reservation(
            &[line("a", 3), line("b", 1)],
            &[product("a", 2), product("b", 5)],
        )
        .unwrap_err();
        assert_eq!(
            short,
            vec![ShortLine {
                product_id: "a".into(),
                requested: 3,
                available: Some(2)
            }]
        );
        assert_eq!(shortage_reason(&short), "insufficient stock");
    }

    #[test]
    fn an_unknown_product_is_short_with_no_availability() {
        let short = plan_reservation(&[line("zz", 1)], &[]).unwrap_err();
        assert_eq!(short[0].available, None);
        assert_eq!(shortage_reason(&short), "unknown product");
    }

    #[test]
    fn orders_decided_together_see_what_the_earlier_ones_took() {
        let mut products = vec![product("a", 5), product("b", 1)];
        let (first, second, third) = (
            [line("a", 2), line("b", 1)],
            [line("a", 2), line("b", 1)],
            [line("a", 3)],
        );
        let decisions = decide_reservations(&[&first, &second, &third], &mut products, Utc::now());

        // The first takes 2 of a (5 → 3) and the last b (an alert); the
        // second finds no b left; the third takes the 3 of a left (an alert).
        assert!(matches!(&decisions[0], Decision::Reserve { lines, alerts }
            if lines.len() == 2 && alerts.iter().map(|p| p.id.as_str()).eq(["b"])));
        assert_eq!(
            decisions[1],
            Decision::Reject(vec![ShortLine {
                product_id: "b".into(),
                requested: 1,
                available: Some(0)
            }])
        );
        assert!(matches!(&decisions[2], Decision::Reserve { alerts, .. }
            if alerts.len() == 1 && alerts[0].id == "a" && alerts[0].stock == 0));
        assert_eq!((products[0].stock, products[0].reserved), (0, 5));
        assert_eq!((products[1].stock, products[1].reserved), (0, 1));
        assert!(products.iter().all(|p| p.low_stock_alerted));
    }

    #[test]
    fn a_product_already_alerted_does_not_alert_again_in_a_batch() {
        let mut products = vec![product("a", 4)];
        let one = [line("a", 2)];
        let decisions = decide_reservations(&[&one, &one], &mut products, Utc::now());
        let alerts: Vec<usize> = decisions
            .iter()
            .map(|d| match d {
                Decision::Reserve { alerts, .. } => alerts.len(),
                Decision::Reject(_) => panic!("both fit"),
            })
            .collect();
        assert_eq!(alerts, vec![1, 0]);
    }

    fn cause() -> Cause {
        Cause::request(SOURCE, "corr")
    }

    #[test]
    fn a_reservation_bumps_each_product_once_per_order_and_alerts_only_on_the_crossing() {
        let mut products = vec![product("a", 4)];
        let one = [line("a", 1)];
        decide_reservations(&[&one, &one, &one], &mut products, Utc::now());
        assert_eq!(products[0].version, 4, "three changes after version 1");
        assert_eq!((products[0].stock, products[0].reserved), (1, 3));
    }

    #[test]
    fn a_reserved_order_emits_its_low_stock_alerts_then_inventory_reserved() {
        let mut products = vec![product("a", 3)];
        let order = OrderCreated {
            order_id: "o1".into(),
            customer_id: "c".into(),
            customer_email: "c@example.com".into(),
            items: vec![line("a", 2)],
            attempt: 1,
        };
        let decision = decide_reservations(&[&order.items], &mut products, Utc::now()).remove(0);
        let (reservation, events) = reservation_outcome(&order, decision, &cause(), Utc::now());
        assert_eq!(reservation.status, ReservationStatus::Reserved);
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, vec!["inventory.low", "inventory.reserved"]);
        assert_eq!(events[0].data["stock"], 1);
    }

    #[test]
    fn a_rejected_order_holds_nothing_and_says_why() {
        let order = OrderCreated {
            order_id: "o1".into(),
            customer_id: "c".into(),
            customer_email: "c@example.com".into(),
            items: vec![line("zz", 1)],
            attempt: 1,
        };
        let decision = decide_reservations(&[&order.items], &mut [], Utc::now()).remove(0);
        let (reservation, events) = reservation_outcome(&order, decision, &cause(), Utc::now());
        assert_eq!(reservation.status, ReservationStatus::Rejected);
        assert!(reservation.lines.is_empty());
        assert_eq!(events[0].event_type, "inventory.reservation_failed");
        assert_eq!(events[0].data["reason"], "unknown product");
    }

    #[test]
    fn a_release_gives_back_exactly_the_held_lines_and_re_arms_the_alert() {
        let mut products = vec![Product {
            reserved: 3,
            low_stock_alerted: true,
            ..product("a", 1)
        }];
        let reservation = Reservation {
            order_id: "o1".into(),
            status: ReservationStatus::Reserved,
            lines: vec![PricedLine {
                product_id: "a".into(),
                quantity: 3,
                unit_price_cents: 250,
            }],
            updated_at: Utc::now(),
            attempt: 1,
            history: Vec::new(),
        };
        let (released, event) = release(&reservation, &mut products, &cause(), Utc::now());
        assert_eq!(released.status, ReservationStatus::Released);
        assert_eq!((products[0].stock, products[0].reserved), (4, 0));
        assert!(!products[0].low_stock_alerted, "above the threshold again");
        assert_eq!(event.event_type, "inventory.released");
        assert_eq!(event.data["lines"][0]["quantity"], 3);
    }

    #[test]
    fn a_retried_run_replaces_an_earlier_run_that_holds_nothing_and_only_that() {
        use ReservationStatus::*;
        assert_eq!(prior(None, 1), Ok(Prior::Nothing));
        assert_eq!(prior(Some((1, Reserved)), 1), Ok(Prior::Decided));
        assert_eq!(prior(Some((2, Rejected)), 1), Ok(Prior::Decided));
        for nothing_held in [Rejected, Released, CancelledBeforeReservation] {
            assert_eq!(
                prior(Some((1, nothing_held)), 2),
                Ok(Prior::EarlierRun { attempt: 1 })
            );
        }
        assert!(prior(Some((1, Reserved)), 2).is_err(), "stock taken twice");
    }

    #[test]
    fn a_release_gives_back_only_what_its_own_run_holds() {
        let held = |attempt, status| Reservation {
            order_id: "o1".into(),
            status,
            lines: Vec::new(),
            updated_at: Utc::now(),
            attempt,
            history: Vec::new(),
        };
        let reserved = held(2, ReservationStatus::Reserved);
        let released = held(2, ReservationStatus::Released);
        assert_eq!(
            release_target(Some(reserved.clone()), 2),
            Ok(ReleaseTarget::Held(reserved.clone()))
        );
        assert_eq!(
            release_target(Some(reserved.clone()), 1),
            Ok(ReleaseTarget::NothingHeld),
            "a late release of run 1 leaves run 2's stock alone"
        );
        assert_eq!(
            release_target(Some(held(2, ReservationStatus::Released)), 2),
            Ok(ReleaseTarget::NothingHeld)
        );
        assert_eq!(
            release_target(Some(released.clone()), 3),
            Ok(ReleaseTarget::EndedFirst {
                replaces: Some(released)
            })
        );
        assert!(release_target(Some(reserved), 3).is_err(), "stock lost");
        assert_eq!(
            release_target(None, 1),
            Ok(ReleaseTarget::EndedFirst { replaces: None })
        );
    }

    #[test]
    fn admin_changes_announce_inventory_updated_and_the_crossing_once() {
        let added = add_product(product("a", 1), &cause());
        let types: Vec<&str> = added.events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, vec!["inventory.updated", "inventory.low"]);
        assert!(added.product.low_stock_alerted);

        let still_low = count_stock(&added.product, 0, &cause(), Utc::now());
        assert_eq!(
            still_low.events.len(),
            1,
            "no second alert below the threshold"
        );
        let restocked = count_stock(&still_low.product, 50, &cause(), Utc::now());
        assert!(!restocked.product.low_stock_alerted);
        assert_eq!(restocked.product.version, added.product.version + 2);
    }

    #[test]
    fn a_low_stock_alert_fires_once_per_crossing() {
        assert_eq!(low_stock_transition(2, 2, false), LowStock::Alert);
        assert_eq!(low_stock_transition(1, 2, true), LowStock::Unchanged);
        assert_eq!(low_stock_transition(3, 2, true), LowStock::Rearm);
        assert_eq!(low_stock_transition(3, 2, false), LowStock::Unchanged);
    }

    #[test]
    fn prices_become_cents_and_refuse_fractions_of_a_cent() {
        assert_eq!(price_to_cents(19.99), Ok(1999));
        assert_eq!(price_to_cents(0.1 + 0.2), Ok(30));
        assert_eq!(price_to_cents(5.0), Ok(500));
        assert_eq!(price_to_cents(2597870485.22), Ok(259787048522));
        assert_eq!(price_to_cents(99999999999.99), Ok(9999999999999));
        assert!(price_to_cents(1.005).is_err());
        assert!(price_to_cents(2597870485.225).is_err());
        assert!(price_to_cents(-1.0).is_err());
        assert!(price_to_cents(f64::NAN).is_err());
    }
}
