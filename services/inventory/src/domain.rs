//! Products, reservations and the stock rules. No I/O.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::events::{OrderLine, PricedLine, ShortLine};

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
    /// The cancel arrived before the order: nothing may be reserved later.
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
pub fn decide_reservations(orders: &[&[OrderLine]], products: &mut [Product]) -> Vec<Decision> {
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
                    product.stock -= quantity;
                    product.reserved += quantity;
                    if low_stock_transition(
                        product.stock,
                        product.low_stock_threshold,
                        product.low_stock_alerted,
                    ) == LowStock::Alert
                    {
                        product.low_stock_alerted = true;
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
        let decisions = decide_reservations(&[&first, &second, &third], &mut products);

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
        let decisions = decide_reservations(&[&one, &one], &mut products);
        let alerts: Vec<usize> = decisions
            .iter()
            .map(|d| match d {
                Decision::Reserve { alerts, .. } => alerts.len(),
                Decision::Reject(_) => panic!("both fit"),
            })
            .collect();
        assert_eq!(alerts, vec![1, 0]);
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
