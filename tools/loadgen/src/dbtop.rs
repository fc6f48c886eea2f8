//! The database's share of the profile: the server's `top` counters (count
//! and time per collection and operation), its transaction counters and its
//! documents written, read before and after each stage. Both MongoDB and secantusd-rs keep them, so
//! the numbers come without tracing every statement.

use std::collections::BTreeMap;

use anyhow::Context;
use mongodb::{Client, bson::Document};
use serde::Serialize;

/// The operations `top` counts, as it names them.
const OPERATIONS: [&str; 6] = [
    "insert", "queries", "update", "remove", "getmore", "commands",
];

pub struct DbProbe {
    client: Client,
    /// Only databases whose names start with this (the bench run's own).
    prefix: String,
}

/// Counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// (collection, operation) → (count, microseconds).
    ops: BTreeMap<(String, String), (i64, i64)>,
    committed: i64,
    aborted: i64,
    /// Documents inserted, updated and deleted (`metrics.document`).
    written: i64,
}

/// One collection and operation, per finished order.
#[derive(Clone, Debug, Serialize)]
pub struct DbRow {
    /// `<service database suffix>.<collection>`, e.g. `order.outbox`.
    pub collection: String,
    pub operation: String,
    pub per_order: f64,
    /// Server time per operation, waiting for locks and the disk included:
    /// under saturation this is mostly queueing.
    pub server_us_per_op: f64,
    /// Share of all server time spent on the run's databases.
    pub share: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DbProfile {
    pub operations_per_order: f64,
    pub commits_per_order: f64,
    pub aborts_per_order: f64,
    /// Documents inserted, updated or deleted per order: what issue 13's
    /// "a third of the writes" counts.
    pub documents_written_per_order: f64,
    pub rows: Vec<DbRow>,
}

impl DbProbe {
    pub async fn connect(uri: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = Client::with_uri_str(uri)
            .await
            .with_context(|| format!("MongoDB at {uri}"))?;
        Ok(DbProbe {
            client,
            prefix: prefix.to_string(),
        })
    }

    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let admin = self.client.database("admin");
        let top = admin
            .run_command(mongodb::bson::doc! { "top": 1 })
            .await
            .context("the top command")?;
        let mut ops = BTreeMap::new();
        for (namespace, counters) in top.get_document("totals").context("top: no totals")? {
            let Some(rest) = namespace.strip_prefix(&self.prefix) else {
                continue;
            };
            let Some(counters) = counters.as_document() else {
                continue;
            };
            for operation in OPERATIONS {
                let (count, micros) = counter(counters, operation);
                if count > 0 {
                    ops.insert((rest.to_string(), operation.to_string()), (count, micros));
                }
            }
        }
        let status = admin
            .run_command(mongodb::bson::doc! { "serverStatus": 1 })
            .await
            .context("serverStatus")?;
        let transactions = status.get_document("transactions").ok();
        let number = |name: &str| {
            transactions
                .and_then(|t| t.get(name))
                .and_then(as_i64)
                .unwrap_or(0)
        };
        let documents = status
            .get_document("metrics")
            .and_then(|m| m.get_document("document"))
            .ok();
        let written = ["inserted", "updated", "deleted"]
            .iter()
            .map(|name| {
                documents
                    .and_then(|d| d.get(*name))
                    .and_then(as_i64)
                    .unwrap_or(0)
            })
            .sum();
        Ok(Snapshot {
            ops,
            committed: number("totalCommitted"),
            aborted: number("totalAborted"),
            written,
        })
    }
}

fn as_i64(value: &mongodb::bson::Bson) -> Option<i64> {
    match value {
        mongodb::bson::Bson::Int32(n) => Some(i64::from(*n)),
        mongodb::bson::Bson::Int64(n) => Some(*n),
        mongodb::bson::Bson::Double(n) => Some(*n as i64),
        _ => None,
    }
}

fn counter(counters: &Document, operation: &str) -> (i64, i64) {
    let Ok(entry) = counters.get_document(operation) else {
        return (0, 0);
    };
    let field = |name| entry.get(name).and_then(as_i64).unwrap_or(0);
    (field("count"), field("time"))
}

/// What happened between two snapshots, per finished order. The transaction
/// counters are server-wide: run the bench on a server nothing else uses.
pub fn profile(before: &Snapshot, after: &Snapshot, finished: usize) -> DbProfile {
    if finished == 0 {
        return DbProfile::default();
    }
    let orders = finished as f64;
    let deltas: Vec<((String, String), i64, i64)> = after
        .ops
        .iter()
        .map(|(key, (count, micros))| {
            let (count_before, micros_before) = before.ops.get(key).copied().unwrap_or((0, 0));
            (key.clone(), count - count_before, micros - micros_before)
        })
        .filter(|(_, count, _)| *count > 0)
        .collect();
    let total_micros: i64 = deltas.iter().map(|(_, _, micros)| micros).sum();
    let mut rows: Vec<DbRow> = deltas
        .iter()
        .map(|((collection, operation), count, micros)| DbRow {
            collection: collection.clone(),
            operation: operation.clone(),
            per_order: *count as f64 / orders,
            server_us_per_op: *micros as f64 / *count as f64,
            share: *micros as f64 / total_micros.max(1) as f64,
        })
        .collect();
    rows.sort_by(|a, b| b.share.total_cmp(&a.share));
    DbProfile {
        operations_per_order: deltas
            .iter()
            .map(|(_, count, _)| *count as f64)
            .sum::<f64>()
            / orders,
        commits_per_order: (after.committed - before.committed) as f64 / orders,
        aborts_per_order: (after.aborted - before.aborted) as f64 / orders,
        documents_written_per_order: (after.written - before.written) as f64 / orders,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(
        ops: &[(&str, &str, i64, i64)],
        committed: i64,
        aborted: i64,
        written: i64,
    ) -> Snapshot {
        Snapshot {
            ops: ops
                .iter()
                .map(|(c, o, n, t)| ((c.to_string(), o.to_string()), (*n, *t)))
                .collect(),
            committed,
            aborted,
            written,
        }
    }

    #[test]
    fn the_profile_is_the_difference_per_order_sorted_by_time() {
        let before = snapshot(&[("order.orders", "insert", 10, 1_000)], 5, 0, 40);
        let after = snapshot(
            &[
                ("order.orders", "insert", 110, 11_000),
                ("order.outbox", "insert", 200, 30_000),
                ("inventory.inbox", "insert", 0, 0),
            ],
            305,
            50,
            640,
        );
        let p = profile(&before, &after, 100);
        assert_eq!(p.operations_per_order, 3.0);
        assert_eq!((p.commits_per_order, p.aborts_per_order), (3.0, 0.5));
        assert_eq!(p.documents_written_per_order, 6.0);
        assert_eq!(
            p.rows.len(),
            2,
            "operations that did not happen are left out"
        );
        assert_eq!(p.rows[0].collection, "order.outbox");
        assert_eq!(p.rows[0].per_order, 2.0);
        assert_eq!(p.rows[0].server_us_per_op, 150.0);
        assert_eq!(p.rows[0].share, 0.75);
        assert_eq!(p.rows[1].server_us_per_op, 100.0);
    }

    #[test]
    fn no_finished_order_gives_an_empty_profile() {
        let p = profile(&Snapshot::default(), &Snapshot::default(), 0);
        assert!(p.rows.is_empty());
        assert_eq!(p.operations_per_order, 0.0);
    }
}
