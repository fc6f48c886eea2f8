//! Notifications in MongoDB.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use chrono::Utc;
use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Document, doc},
    error::Error as DbError,
    options::IndexOptions,
};
use shared::store::{PageRequest, find_page};
use shared::{
    events::{Envelope, NotificationFailed, NotificationSent},
    store::{
        GroupCommit, Outbox, OutboxRecord, Transaction, Written, one_by_one_on_failure,
        only_duplicate_keys, stage_records,
    },
};
use tokio::sync::Notify;

use crate::{
    domain::{Notification, NotificationStatus},
    error::Error,
};

const SOURCE: &str = "notification-service";
/// How long a sender holds a claimed notification.
const LEASE: Duration = Duration::from_secs(60);

/// Writes in one round trip (or transaction) at most: a prefetch's worth.
const BATCH: usize = 64;

pub struct NotificationStore {
    db: Database,
    notifications: Collection<Notification>,
    outbox: Outbox,
    /// Wakes the sender.
    pub send_wake: Arc<Notify>,
    recorded: GroupCommit<Notification, Written>,
    sent: GroupCommit<Notification, Written>,
}

impl NotificationStore {
    pub fn new(db: Database, outbox: Outbox) -> Arc<Self> {
        Arc::new_cyclic(|store: &Weak<Self>| NotificationStore {
            notifications: db.collection("notifications"),
            db,
            outbox,
            send_wake: Arc::new(Notify::new()),
            // A batch that fails as a whole goes again one by one.
            recorded: GroupCommit::spawn_in(store, BATCH, |store, batch| async move {
                one_by_one_on_failure(&batch, |some| store.record_together(some)).await
            }),
            sent: GroupCommit::spawn_in(store, BATCH, |store, batch| async move {
                one_by_one_on_failure(&batch, |some| store.mark_sent_together(some)).await
            }),
        })
    }

    pub async fn ensure_indexes(&self) -> Result<(), Error> {
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
    pub async fn record_for_event(&self, notification: Notification) -> Result<(), DbError> {
        self.recorded.write(notification).await
    }

    async fn record_together(&self, batch: &[Notification]) -> Result<(), DbError> {
        // Unordered: every new one is written even if others are duplicates.
        match self.notifications.insert_many(batch).ordered(false).await {
            Ok(_) => {}
            Err(e) if only_duplicate_keys(&e) => {
                tracing::info!("duplicate delivery ignored");
            }
            Err(e) => return Err(e),
        }
        self.send_wake.notify_one();
        Ok(())
    }

    pub async fn insert(&self, notification: &Notification) -> Result<(), Error> {
        self.notifications.insert_one(notification).await?;
        self.send_wake.notify_one();
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<Notification>, Error> {
        Ok(self.notifications.find_one(doc! { "_id": id }).await?)
    }

    /// The notifications in `status`, newest first, and the next page's
    /// cursor.
    pub async fn notifications_in_status(
        &self,
        status: NotificationStatus,
        page: &PageRequest,
    ) -> Result<(Vec<Notification>, Option<String>), Error> {
        let filter = doc! { "status": status.as_str() };
        Ok(find_page(&self.notifications, filter, page, |n| n.id.clone()).await?)
    }

    /// The notifications about one order, newest first, and the next page's
    /// cursor.
    pub async fn notifications_of_order(
        &self,
        order_id: &str,
        page: &PageRequest,
    ) -> Result<(Vec<Notification>, Option<String>), Error> {
        let filter = doc! { "orderId": order_id };
        Ok(find_page(&self.notifications, filter, page, |n| n.id.clone()).await?)
    }

    /// Claims up to `limit` due PENDING notifications for this sender. The
    /// notifications read are returned as they are unless another sender
    /// took some of them in between, as the outbox relay does.
    pub async fn claim_due(&self, sender: &str, limit: i64) -> Result<Vec<Notification>, DbError> {
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
        self.notifications
            .find(doc! { "_id": { "$in": &ids }, "claimedBy": &token })
            .await?
            .try_collect()
            .await
    }

    /// The email went out: SENT, with `notification.sent`. Sends that end
    /// together are recorded in one transaction.
    pub async fn mark_sent(&self, notification: &Notification) -> Result<(), DbError> {
        self.sent.write(notification.clone()).await
    }

    async fn mark_sent_together(&self, batch: &[Notification]) -> Result<(), DbError> {
        let events = batch
            .iter()
            .map(|notification| {
                self.outbox.record(&Envelope::new(
                    SOURCE,
                    &notification.correlation_id,
                    None,
                    NotificationSent {
                        notification_id: notification.id.clone(),
                        kind: format!("{:?}", notification.kind),
                        recipient: notification.recipient.clone(),
                        order_id: notification.order_id.clone(),
                    },
                ))
            })
            .collect();
        let now = bson::DateTime::now();
        self.finish(
            batch,
            doc! { "$set": { "status": NotificationStatus::Sent.as_str(), "sentAt": now, "claimedBy": null },
                   "$inc": { "attempts": 1 } },
            events,
        )
        .await
    }

    /// A send failed: try again at `retry_at`, or (if `None`) give up as FAILED.
    pub async fn mark_failed_attempt(
        &self,
        notification: &Notification,
        error: &str,
        retry_at: Option<chrono::DateTime<Utc>>,
    ) -> Result<(), DbError> {
        match retry_at {
            Some(at) => {
                self.notifications
                    .update_one(
                        doc! { "_id": &notification.id },
                        doc! { "$set": { "lastError": error, "nextAttemptAt": bson::DateTime::from_chrono(at), "claimedBy": null },
                               "$inc": { "attempts": 1 } },
                    )
                    .await?;
                Ok(())
            }
            None => {
                let event = Envelope::new(
                    SOURCE,
                    &notification.correlation_id,
                    None,
                    NotificationFailed {
                        notification_id: notification.id.clone(),
                        kind: format!("{:?}", notification.kind),
                        recipient: notification.recipient.clone(),
                        order_id: notification.order_id.clone(),
                        last_error: error.to_string(),
                    },
                );
                self.finish(
                    std::slice::from_ref(notification),
                    doc! { "$set": { "status": NotificationStatus::Failed.as_str(), "lastError": error, "claimedBy": null },
                           "$inc": { "attempts": 1 } },
                    vec![self.outbox.record(&event)],
                )
                .await
            }
        }
    }

    /// Puts a claimed notification back untouched (the SMTP breaker is open).
    pub async fn postpone(
        &self,
        notification: &Notification,
        until: chrono::DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.notifications
            .update_one(
                doc! { "_id": &notification.id },
                doc! { "$set": { "nextAttemptAt": bson::DateTime::from_chrono(until), "claimedBy": null } },
            )
            .await
            .map(|_| ())
    }

    /// Settles claimed notifications with their events, atomically.
    async fn finish(
        &self,
        notifications: &[Notification],
        update: Document,
        events: Vec<OutboxRecord>,
    ) -> Result<(), DbError> {
        let ids: Vec<&str> = notifications.iter().map(|n| n.id.as_str()).collect();
        let mut tx = Transaction::begin(&self.db).await?;
        loop {
            let session = tx.attempt().await?;
            let attempt = async {
                self.notifications
                    .update_many(doc! { "_id": { "$in": &ids } }, update.clone())
                    .session(&mut *session)
                    .await?;
                stage_records(&self.db, session, &events).await
            }
            .await;
            if let Some(()) = tx.finish(attempt).await? {
                self.outbox.committed(events);
                return Ok(());
            }
        }
    }
}
