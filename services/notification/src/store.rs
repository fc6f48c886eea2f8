//! Notifications in MongoDB: named reads, lease claims for the sender, and
//! state changes with their events through the shared unit of work.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use futures::{TryStreamExt, future::BoxFuture};
use mongodb::{
    Collection, IndexModel,
    bson::{self, Document, doc},
    options::IndexOptions,
};
use shared::{
    TaskTracker,
    history::{History, HistoryItem},
    http::history::HistorySource,
    store::{
        Batcher, PageRequest, Store, StoreError, UnitOfWork, WriteBatch, find_page, insert_new,
        retry_on_conflict,
    },
};
use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

use crate::{
    domain::{self, Notification, NotificationKind, NotificationStatus, SOURCE},
    error::Error,
};

const NOTIFICATIONS: &str = "notifications";
/// How long a sender holds a claimed notification.
const LEASE: Duration = Duration::from_secs(60);

/// Writes in one round trip (or transaction) at most: a prefetch's worth.
const BATCH: usize = 64;
/// How long an email's SENT mark waits for others to share its commit. At
/// 50 emails/s about five share one, where each paid a transaction (three
/// round trips) of its own. A crash meanwhile sends those emails again, as
/// one during the SMTP exchange would, with the same Message-ID.
const MARK_LINGER: Duration = Duration::from_millis(100);
/// FAILED notifications sent again per bulk retry, at most.
pub const MAX_RETRY_BATCH: i64 = 1000;

pub struct NotificationStore {
    store: Store,
    notifications: Collection<Notification>,
    /// Wakes the sender.
    pub send_wake: Arc<Notify>,
    recorded: Batcher<Notification>,
    sent: Batcher<Notification>,
    /// Where the SENT marks wait for their commit.
    tasks: TaskTracker,
}

/// Notifications recorded by this instance, handed to its sender in memory.
/// They are born claimed by it (see [`RecordNotifications`]), so no other
/// sender takes them while the lease lasts, and sending them costs no claim.
pub type Born = mpsc::Receiver<Notification>;

/// Notifications handed over and not yet taken by the sender, at most; past
/// this many, new ones are recorded due and unclaimed, and the sender's poll
/// takes them.
const HANDOVER: usize = 256;

/// How long a new notification is claimed by its own sender: short, because
/// if this process dies it is what the others wait before sending it.
const BORN_LEASE: Duration = Duration::from_secs(20);

/// What a send takes at most (the SMTP timeout), with room to spare.
const SEND_TIME: chrono::Duration = chrono::Duration::seconds(10);

/// Whether a handed-over notification is still this sender's to send: its
/// claim outlasts a send. One that waited too long in the hand-over (every
/// send timing out) is left to the poll, which takes it when the claim runs
/// out, so two sends never overlap.
pub fn still_ours(notification: &Notification, now: chrono::DateTime<Utc>) -> bool {
    notification.next_attempt_at - now > SEND_TIME
}

impl NotificationStore {
    /// The store, its batch writers running on `tasks`, and what it records
    /// for the sender named `sender`.
    pub fn new(store: Store, tasks: &TaskTracker, sender: &str) -> (Self, Born) {
        let notifications = store.collection(NOTIFICATIONS);
        let send_wake = Arc::new(Notify::new());
        let (born, born_rx) = mpsc::channel(HANDOVER);
        let this = NotificationStore {
            recorded: Batcher::start(
                tasks,
                BATCH,
                RecordNotifications {
                    notifications: notifications.clone(),
                    claimed_by: sender.to_owned(),
                    born,
                    send_wake: send_wake.clone(),
                },
            ),
            sent: Batcher::start_lingering(
                tasks,
                BATCH,
                MARK_LINGER,
                MarkSent {
                    store: store.clone(),
                },
            ),
            store,
            notifications,
            send_wake,
            tasks: tasks.clone(),
        };
        (this, born_rx)
    }

    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        self.notifications
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "dedupeKey": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await?;
        for keys in [
            doc! { "status": 1, "nextAttemptAt": 1 },
            doc! { "status": 1, "_id": -1 },
            doc! { "orderId": 1, "_id": -1 },
        ] {
            self.notifications
                .create_index(IndexModel::builder().keys(keys).build())
                .await?;
        }
        Ok(())
    }

    /// Records the notification an event calls for, once. The dedupe key is
    /// fixed by the event (order and outcome, or the alert's event id) and
    /// unique, so the insert is its own inbox: a redelivery meets the key and
    /// has no effect. One write instead of a transaction with an inbox record
    /// saves two round trips per order, and events arriving together share
    /// one insert.
    pub async fn record_for_event(&self, notification: Notification) -> Result<(), StoreError> {
        self.recorded.write(notification).await
    }

    pub async fn insert(&self, notification: &Notification) -> Result<(), StoreError> {
        self.notifications.insert_one(notification).await?;
        self.send_wake.notify_one();
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        Ok(self.notifications.find_one(doc! { "_id": id }).await?)
    }

    /// The notifications in `status`, newest first, and the next page's
    /// cursor.
    pub async fn notifications_in_status(
        &self,
        status: NotificationStatus,
        page: &PageRequest,
    ) -> Result<(Vec<Notification>, Option<String>), StoreError> {
        let filter = doc! { "status": status.as_str() };
        Ok(find_page(&self.notifications, filter, page, |n| n.id.clone()).await?)
    }

    /// The notifications about an order, newest first, and the next page's
    /// cursor; with `customer`, only if the order is theirs.
    pub async fn notifications_of_order(
        &self,
        order_id: &str,
        customer: Option<&str>,
        page: &PageRequest,
    ) -> Result<(Vec<Notification>, Option<String>), StoreError> {
        let mut filter = doc! { "orderId": order_id };
        if let Some(customer) = customer {
            filter.insert("customerId", customer);
        }
        Ok(find_page(&self.notifications, filter, page, |n| n.id.clone()).await?)
    }

    /// Claims up to `limit` due PENDING notifications for this sender. The
    /// notifications read are returned as they are unless another sender
    /// took some of them in between, as the outbox relay does.
    pub async fn claim_due(
        &self,
        sender: &str,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let now = bson::DateTime::now();
        let due = doc! { "status": NotificationStatus::Pending.as_str(), "nextAttemptAt": { "$lte": now } };
        let candidates: Vec<Notification> = self
            .notifications
            .find(due.clone())
            .sort(doc! { "nextAttemptAt": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let ids: Vec<&str> = candidates.iter().map(|n| n.id.as_str()).collect();
        let token = format!("{sender}:{}", uuid::Uuid::new_v4());
        let lease_end =
            bson::DateTime::from_millis(now.timestamp_millis() + LEASE.as_millis() as i64);
        let mut claim = due;
        claim.insert("_id", doc! { "$in": &ids });
        let claimed = self
            .notifications
            .update_many(
                claim,
                doc! { "$set": { "nextAttemptAt": lease_end, "claimedBy": &token } },
            )
            .await?;
        if claimed.modified_count as usize == candidates.len() {
            return Ok(candidates);
        }
        // By id first: claimedBy has no index, and a scan of every
        // notification ever sent took 30-50 ms per claim.
        Ok(self
            .notifications
            .find(doc! { "_id": { "$in": &ids }, "claimedBy": &token })
            .await?
            .try_collect()
            .await?)
    }

    /// The email went out: SENT, with `notification.sent`. Written in the
    /// background, so that the send's slot takes the next email at once
    /// while the mark waits up to [`MARK_LINGER`] to share a commit; a
    /// clean shutdown waits for it. If it fails, the claim runs out and the
    /// email is sent again, with the same Message-ID, so a mail system can
    /// drop the copy.
    pub fn mark_sent(self: &Arc<Self>, notification: Notification) {
        let store = self.clone();
        self.tasks.spawn(
            async move {
                if let Err(error) = store.sent.write(notification).await {
                    tracing::warn!(%error, "could not record the send; it will be sent again");
                }
            }
            .in_current_span(),
        );
    }

    /// PENDING again until `at`, with the error on record; `counts` says
    /// whether the failure used an attempt.
    pub async fn retry_later(
        &self,
        notification: &Notification,
        error: &str,
        at: chrono::DateTime<Utc>,
        counts: bool,
    ) -> Result<(), StoreError> {
        self.notifications
            .update_one(
                doc! { "_id": &notification.id },
                doc! { "$set": { "lastError": error, "nextAttemptAt": bson::DateTime::from_chrono(at), "claimedBy": null },
                       "$inc": { "attempts": i32::from(counts) } },
            )
            .await?;
        Ok(())
    }

    /// Sends a FAILED notification again ([`domain::retry`]) and wakes the
    /// sender. The write is guarded: only a notification still FAILED moves.
    pub async fn retry(&self, id: &str) -> Result<Notification, Error> {
        let again = retry_on_conflict(|| async {
            let notification = self
                .get(id)
                .await?
                .ok_or_else(|| Error::NotFound(id.to_string()))?;
            let again = domain::retry(&notification, Utc::now())?;
            let mut unit = UnitOfWork::new();
            unit.update(
                NOTIFICATIONS,
                "notification",
                still_failed(id),
                retried(&again),
            );
            self.store.commit(unit).await?;
            Ok::<_, Error>(again)
        })
        .await?;
        self.send_wake.notify_one();
        Ok(again)
    }

    /// Sends the FAILED notifications of `kind` (of any kind if `None`)
    /// again, oldest first, at most [`MAX_RETRY_BATCH`] per call, in one
    /// guarded write; wakes the sender. Returns their ids.
    pub async fn retry_failed(
        &self,
        kind: Option<NotificationKind>,
    ) -> Result<Vec<String>, StoreError> {
        let ids = retry_on_conflict(|| async {
            let mut filter = doc! { "status": NotificationStatus::Failed.as_str() };
            if let Some(kind) = kind {
                filter.insert("kind", kind.as_str());
            }
            let failed: Vec<Notification> = self
                .notifications
                .find(filter)
                .sort(doc! { "_id": 1 })
                .limit(MAX_RETRY_BATCH)
                .await?
                .try_collect()
                .await?;
            let now = Utc::now();
            let mut unit = UnitOfWork::new();
            let mut ids = Vec::with_capacity(failed.len());
            for notification in &failed {
                let again = domain::retry(notification, now)
                    .map_err(|refused| StoreError::Rule(refused.to_string()))?;
                unit.update(
                    NOTIFICATIONS,
                    "notification",
                    still_failed(&again.id),
                    retried(&again),
                );
                ids.push(again.id);
            }
            self.store.commit(unit).await?;
            Ok::<_, StoreError>(ids)
        })
        .await?;
        if !ids.is_empty() {
            self.send_wake.notify_one();
        }
        Ok(ids)
    }

    /// FAILED for good, with `notification.failed`.
    pub async fn give_up(
        &self,
        notification: &Notification,
        error: &str,
    ) -> Result<(), StoreError> {
        let failed = notification.failed_event(error);
        let mut unit = UnitOfWork::new();
        unit.update(
            NOTIFICATIONS,
            "notification",
            doc! { "_id": &notification.id },
            doc! { "$set": { "status": NotificationStatus::Failed.as_str(), "lastError": error, "claimedBy": null },
                   "$inc": { "attempts": 1 } },
        );
        // Rare (every attempt failed), so it takes a history record of its own.
        if let Some(order_id) = &notification.order_id {
            unit.record(History::of(SOURCE, order_id).published(std::slice::from_ref(&failed)))?;
        }
        unit.emit([failed]);
        self.store.commit(unit).await
    }

    /// Adds `history`'s lines to a notification's ([`Store::keep_in`]).
    pub fn keep_in(&self, lines: &mut Vec<HistoryItem>, history: History) {
        self.store.keep_in(lines, history);
    }

    /// This service's lines of an order's history: each of its
    /// notifications' ([`Notification::history_items`]).
    pub async fn history_of_order(&self, order_id: &str) -> Result<Vec<HistoryItem>, StoreError> {
        let notifications: Vec<Notification> = self
            .notifications
            .find(doc! { "orderId": order_id })
            .limit(shared::history::MAX_RECORDS)
            .await?
            .try_collect()
            .await?;
        Ok(notifications
            .iter()
            .flat_map(Notification::history_items)
            .collect())
    }
}

/// The notification service's lines of an order's history: its emails.
pub struct EmailHistory(pub Arc<NotificationStore>);

impl HistorySource for EmailHistory {
    fn items<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<HistoryItem>, StoreError>> {
        Box::pin(self.0.history_of_order(order_id))
    }
}

/// The guard of a retry: the notification is still FAILED.
fn still_failed(id: &str) -> Document {
    doc! { "_id": id, "status": NotificationStatus::Failed.as_str() }
}

/// What [`domain::retry`] changes, as an update: only those fields, so a
/// bulk retry stays small whatever the bodies.
fn retried(again: &Notification) -> Document {
    doc! { "$set": {
        "status": again.status.as_str(),
        "attempts": i64::from(again.attempts),
        "nextAttemptAt": bson::DateTime::from_chrono(again.next_attempt_at),
        "claimedBy": again.claimed_by.as_deref(),
        "retriedAt": again.retried_at.map(bson::DateTime::from_chrono),
    } }
}

/// New notifications that arrived together: one unordered insert.
struct RecordNotifications {
    notifications: Collection<Notification>,
    /// The claim new notifications are born with: this instance's sender.
    claimed_by: String,
    born: mpsc::Sender<Notification>,
    send_wake: Arc<Notify>,
}

impl WriteBatch for RecordNotifications {
    type Item = Notification;

    /// Inserts the notifications claimed by this instance's sender for a
    /// lease, and hands the new ones (not the redeliveries) to it: that
    /// saves the sender's claim, a write per notification. If this process
    /// dies before sending them, the lease runs out and any sender takes
    /// them, as with every claim. Those the handover has no room for are
    /// recorded due and unclaimed.
    async fn write(&self, batch: &[Notification]) -> Result<(), StoreError> {
        let mut places = Vec::with_capacity(batch.len());
        while places.len() < batch.len() {
            match self.born.try_reserve() {
                Ok(place) => places.push(place),
                Err(_) => break,
            }
        }
        let lease_end = Utc::now() + BORN_LEASE;
        let recorded: Vec<Notification> = batch
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if i < places.len() {
                    Notification {
                        claimed_by: Some(self.claimed_by.clone()),
                        next_attempt_at: lease_end,
                        ..n.clone()
                    }
                } else {
                    n.clone()
                }
            })
            .collect();
        let duplicates = insert_new(&self.notifications, &recorded).await?;
        for ((i, notification), place) in recorded.into_iter().enumerate().zip(places) {
            if !duplicates.contains(&i) {
                place.send(notification);
            }
        }
        self.send_wake.notify_one();
        Ok(())
    }
}

/// Marks sent emails SENT, with their `notification.sent` events, in one
/// unit: one statement for the whole batch.
struct MarkSent {
    store: Store,
}

impl WriteBatch for MarkSent {
    type Item = Notification;

    async fn write(&self, batch: &[Notification]) -> Result<(), StoreError> {
        let mut unit = UnitOfWork::new();
        unit.update_all(
            NOTIFICATIONS,
            "notification",
            batch.iter().map(|n| n.id.as_str()),
            doc! { "$set": { "status": NotificationStatus::Sent.as_str(), "sentAt": bson::DateTime::now(), "claimedBy": null },
                   "$inc": { "attempts": 1 } },
        )
        .emit(batch.iter().map(Notification::sent_event));
        self.store.commit(unit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Draft;

    #[test]
    fn a_handed_over_notification_is_sent_by_its_own_sender_only_while_its_claim_outlasts_a_send() {
        let now = Utc::now();
        let born = Notification {
            next_attempt_at: now + BORN_LEASE,
            ..Draft {
                kind: NotificationKind::OrderConfirmed,
                recipient: "c@example.com".into(),
                subject: "s".into(),
                body: "b".into(),
                order_id: Some("o1".into()),
                customer_id: Some("c1".into()),
                product_id: None,
                dedupe_key: "ORDER_CONFIRMED:o1".into(),
            }
            .into_notification("corr", None, now)
        };
        assert!(still_ours(&born, now));
        // It waited in the hand-over until its claim was nearly gone: the
        // poll takes it once the claim runs out.
        assert!(!still_ours(
            &born,
            now + BORN_LEASE - SEND_TIME.to_std().unwrap()
        ));
    }
}
