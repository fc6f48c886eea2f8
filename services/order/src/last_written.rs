//! The orders this instance last wrote that still wait for the inventory's
//! answer. The answer usually comes back to the instance that placed the
//! order, a few milliseconds later; finding the order here spares it a
//! read, one database round trip per order at low rates, where no two
//! answers share one.
//!
//! What is kept is only ever a guess at the stored order: another instance
//! or an admin may have moved it since. A change decided on it is written
//! under the order's version guard, which refuses if the order moved; a
//! "no effect" decided on it is not trusted at all ([`crate::store`] reads
//! the order and decides again in both cases).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use crate::domain::{Order, saga};

/// Orders kept at most. Each is taken out by its answer, so what is kept
/// is mostly the sagas waiting right now; past this many, the oldest go
/// first and their answers read them.
const CAPACITY: usize = 1024;

#[derive(Default)]
pub struct LastWritten {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    orders: HashMap<String, Order>,
    /// Ids in the order they were kept, to forget the oldest first. An id
    /// kept twice is here twice; its first turn forgets it early, which only
    /// costs a read.
    oldest_first: VecDeque<String>,
}

impl LastWritten {
    /// Keeps the orders that wait for an answer; forgets the others.
    pub fn keep<'a>(&self, orders: impl IntoIterator<Item = &'a Order>) {
        let mut kept = self.kept.lock().expect("never poisoned: no panics inside");
        for order in orders {
            if saga::awaited_step(order).is_none() {
                kept.orders.remove(&order.id);
                continue;
            }
            kept.orders.insert(order.id.clone(), order.clone());
            kept.oldest_first.push_back(order.id.clone());
            while kept.oldest_first.len() > CAPACITY {
                let oldest = kept.oldest_first.pop_front().expect("longer than CAPACITY");
                kept.orders.remove(&oldest);
            }
        }
    }

    /// Takes out those of `ids` that are kept: whatever becomes of the
    /// answer, the order's next writer keeps it again.
    pub fn take(&self, ids: &[&str]) -> HashMap<String, Order> {
        let mut kept = self.kept.lock().expect("never poisoned: no panics inside");
        ids.iter()
            .filter_map(|id| kept.orders.remove(*id))
            .map(|order| (order.id.clone(), order))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderStatus;

    fn order(id: &str, status: OrderStatus) -> Order {
        Order {
            id: id.into(),
            ..crate::domain::tests::order(status)
        }
    }

    #[test]
    fn an_order_waiting_for_an_answer_is_taken_once() {
        let last = LastWritten::default();
        last.keep([&order("a", OrderStatus::Pending)]);
        let taken = last.take(&["a", "b"]);
        assert_eq!(taken.keys().collect::<Vec<_>>(), ["a"]);
        assert!(last.take(&["a"]).is_empty(), "taken out");
    }

    #[test]
    fn an_order_that_waits_for_nothing_is_forgotten() {
        let last = LastWritten::default();
        last.keep([&order("a", OrderStatus::Pending)]);
        last.keep([&order("a", OrderStatus::Confirmed)]);
        assert!(last.take(&["a"]).is_empty());
        let awaiting_release = Order {
            awaiting_release: true,
            ..order("f", OrderStatus::Failed)
        };
        last.keep([&awaiting_release]);
        assert_eq!(last.take(&["f"]).len(), 1);
    }

    #[test]
    fn past_its_capacity_the_oldest_are_forgotten_first() {
        let last = LastWritten::default();
        let orders: Vec<Order> = (0..=CAPACITY)
            .map(|i| order(&i.to_string(), OrderStatus::Pending))
            .collect();
        last.keep(&orders);
        let newest = CAPACITY.to_string();
        assert!(last.take(&["0"]).is_empty(), "the oldest went");
        assert_eq!(last.take(&["1", &newest]).len(), 2);
    }
}
