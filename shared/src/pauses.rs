//! An operator's pause of a consumer, for a downstream outage or a bad
//! deploy: its messages wait in the queue until it is resumed.
//!
//! A pause is a document in the service's own `consumer_pauses` collection,
//! keyed by queue, so it holds for every instance of the service and
//! survives a restart. Each instance reads the pauses of its queues once a
//! second (one read on `_id`; the server has no oplog, so no change
//! streams) and asks its consumers to pause or resume accordingly; the
//! consume loop applies that (see `broker::consumer`). A request through
//! the admin API writes first, then applies at once on the instance that
//! took it, so it answers with the pause in effect there.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::TryStreamExt;
use mongodb::{
    Collection, Database,
    bson::{self, doc},
    error::Error,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    broker::consumer::{ConsumerState, ConsumerStatus, Consumers},
    store,
};

pub const CONSUMER_PAUSES: &str = "consumer_pauses";
/// How often each instance reads the pauses.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long a request waits for this instance's consumer to get where it
/// asked (its deliveries in hand settled, or its channel open again).
pub const APPLY_WAIT: Duration = Duration::from_secs(5);

/// One paused queue. Present: paused; absent: consuming.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PauseRecord {
    /// The queue's name, with the namespace prefix.
    #[serde(rename = "_id")]
    pub queue: String,
    /// When it was first paused (a repeated pause keeps it).
    pub paused_at: bson::DateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("this service has no consumer of queue {queue:?}; its queues are {known}")]
    UnknownQueue { queue: String, known: String },
    #[error(transparent)]
    Database(#[from] Error),
}

/// Where a request left this instance's consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It got there within [`APPLY_WAIT`].
    Now,
    /// Stored, and asked for; it gets there once its deliveries in hand
    /// are settled (a pause) or the broker takes its consumer (a resume).
    Later,
}

/// The pauses of one service's consumers.
#[derive(Clone)]
pub struct ConsumerPauses {
    collection: Collection<PauseRecord>,
    consumers: Consumers,
    /// The queues read as paused last time, for a consumer registered
    /// after the read (at startup, before it first connects).
    known: Arc<Mutex<HashSet<String>>>,
    /// Held over a read and its application, and over a request's write
    /// and its application: a read from before a request never undoes it.
    applying: Arc<tokio::sync::Mutex<()>>,
}

impl ConsumerPauses {
    pub fn new(db: &Database, consumers: Consumers) -> Self {
        ConsumerPauses {
            collection: db.collection(CONSUMER_PAUSES),
            consumers,
            known: Default::default(),
            applying: Default::default(),
        }
    }

    /// Reads every stored pause (at startup: none of the service's consumers
    /// is registered yet, and each asks [`Self::apply_known`] as it is).
    pub async fn load(&self) -> Result<(), Error> {
        let _applying = self.applying.lock().await;
        let paused = self.read(doc! {}).await?;
        *self.known.lock().expect("poisoned") = paused;
        Ok(())
    }

    /// Asks a newly registered consumer for what the last read said, before
    /// it first connects: a restarted instance never consumes a paused queue.
    pub fn apply_known(&self, state: &ConsumerState) {
        let paused = self.known.lock().expect("poisoned").contains(state.queue());
        state.request_pause(paused);
    }

    /// Reads the pauses of this instance's queues and applies them.
    pub async fn refresh(&self) -> Result<(), Error> {
        let _applying = self.applying.lock().await;
        let consumers = self.consumers.all();
        let queues: Vec<&str> = consumers.iter().map(|c| c.queue()).collect();
        let paused = self.read(doc! { "_id": { "$in": &queues } }).await?;
        for change in changes(&consumers, &paused) {
            tracing::info!(
                queue = change.queue,
                paused = change.paused,
                "consumer pause read from the database"
            );
            change.state.request_pause(change.paused);
        }
        *self.known.lock().expect("poisoned") = paused;
        Ok(())
    }

    /// Refreshes every [`POLL_EVERY`] until `shutdown`. While the database
    /// does not answer, each consumer keeps what it was last asked.
    pub(crate) async fn poll_until(self, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
            match self.refresh().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("consumer pauses are read again");
                }
                Ok(()) => {}
                // Once per outage, not once a second.
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "could not read the consumer pauses; each consumer keeps its state");
                }
                Err(_) => {}
            }
        }
    }

    /// Stores a pause of `queue` (or removes it), asks this instance's
    /// consumer for it, and waits up to [`APPLY_WAIT`] for it to be paused
    /// (or consuming again). Repeating either is harmless.
    pub async fn set(&self, queue: &str, paused: bool) -> Result<Applied, PauseError> {
        let state = self.consumer(queue)?;
        {
            let _applying = self.applying.lock().await;
            if paused {
                self.store_pause(queue).await?;
            } else {
                self.collection.delete_one(doc! { "_id": queue }).await?;
            }
            if state.request_pause(paused) {
                tracing::info!(queue, paused, "consumer pause asked for through the API");
            }
        }
        let target = if paused {
            ConsumerStatus::Paused
        } else {
            ConsumerStatus::Consuming
        };
        let reached = tokio::time::timeout(APPLY_WAIT, state.until_status(|s| s == target)).await;
        Ok(if reached.is_ok() {
            Applied::Now
        } else {
            Applied::Later
        })
    }

    /// The consumer of `queue` on this instance.
    pub fn consumer(&self, queue: &str) -> Result<Arc<ConsumerState>, PauseError> {
        consumer_of(&self.consumers, queue)
    }

    async fn store_pause(&self, queue: &str) -> Result<(), Error> {
        let upsert = self
            .collection
            .update_one(
                doc! { "_id": queue },
                doc! { "$setOnInsert": { "pausedAt": bson::DateTime::now() } },
            )
            .upsert(true)
            .await;
        match upsert {
            // Two upserts at once: the other one stored it.
            Err(error) if store::is_duplicate_key(&error) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn read(&self, filter: bson::Document) -> Result<HashSet<String>, Error> {
        self.collection
            .clone_with_type::<bson::Document>()
            .find(filter)
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect::<Vec<bson::Document>>()
            .await
            .map(|found| {
                found
                    .iter()
                    .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
                    .collect()
            })
    }
}

/// The consumer of `queue`, or an error naming the queues there are.
fn consumer_of(consumers: &Consumers, queue: &str) -> Result<Arc<ConsumerState>, PauseError> {
    consumers
        .of_queue(queue)
        .ok_or_else(|| PauseError::UnknownQueue {
            queue: queue.to_string(),
            known: consumers
                .all()
                .iter()
                .map(|c| c.queue().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A consumer whose pause a read changes.
struct Change<'a> {
    state: &'a ConsumerState,
    queue: &'a str,
    paused: bool,
}

/// What a read of the paused queues changes for `consumers`.
fn changes<'a>(consumers: &'a [Arc<ConsumerState>], paused: &HashSet<String>) -> Vec<Change<'a>> {
    consumers
        .iter()
        .filter_map(|state| {
            let wanted = paused.contains(state.queue());
            (wanted != state.pause_requested()).then_some(Change {
                state,
                queue: state.queue(),
                paused: wanted,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::consumer::ConsumerRole;

    fn registered(queues: &[&str]) -> Consumers {
        let consumers = Consumers::default();
        for queue in queues {
            consumers.register(*queue, ConsumerRole::Work);
        }
        consumers
    }

    fn set(queues: &[&str]) -> HashSet<String> {
        queues.iter().map(|q| q.to_string()).collect()
    }

    #[test]
    fn a_read_changes_only_the_consumers_whose_pause_it_contradicts() {
        let consumers = registered(&["a", "b", "c"]);
        let all = consumers.all();
        all[1].request_pause(true);
        all[2].request_pause(true);
        let read = set(&["a", "c", "elsewhere"]);
        let changed: Vec<(&str, bool)> = changes(&all, &read)
            .iter()
            .map(|c| (c.queue, c.paused))
            .collect();
        assert_eq!(changed, vec![("a", true), ("b", false)]);
        // A read that agrees with what is asked changes nothing.
        assert!(changes(&all, &set(&["b", "c"])).is_empty());
    }

    #[test]
    fn a_queue_is_found_by_its_full_name_and_an_unknown_one_is_named_with_those_there_are() {
        let consumers = registered(&[
            "t.inventory-service.events",
            "t.inventory-service.events.dlq",
        ]);
        let found = consumer_of(&consumers, "t.inventory-service.events.dlq").unwrap();
        assert_eq!(found.queue(), "t.inventory-service.events.dlq");
        let Err(error) = consumer_of(&consumers, "inventory-service.events") else {
            panic!("a queue without its namespace was found");
        };
        assert_eq!(
            error.to_string(),
            "this service has no consumer of queue \"inventory-service.events\"; its queues are \
             t.inventory-service.events, t.inventory-service.events.dlq"
        );
    }
}
