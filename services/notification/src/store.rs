//! Notifications in MongoDB.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use futures::TryStreamExt;
use mongodb::{
    Collection, Database, IndexModel,
    bson::{self, Document, doc},
    error::Error as DbError,
    options::IndexOptions,
};
use shared::{
    events::{Envelope, NotificationFailed, NotificationSent},
    http::{PageRequest, find_page},
    store::{Transaction, is_duplicate_key, stage_event},
};
use tokio::sync::Notify;

use crate::{
    domain::{Notification, NotificationStatus},
    error::Error,
};

const SOURCE: &str = "notification-service";
/// How long a sender holds a claimed notification.
const LEASE: Duration = Duration::from_secs(60);

pub struct NotificationStore {
    db: Database,
    notifications: Collection<Notification>,
    /// Wakes the outbox relay.
    outbox_wake: Arc<Notify>,
    /// Wakes the sender.
    pub send_wake: Arc<Notify>,
}

impl NotificationStore {
    pub fn new(db: Database, outbox_wake: Arc<Notify>) -> Self {
        NotificationStore {
            notifications: db.collection("notifications"),
            db,
            outbox_wake,
            send_wake: Arc::new(Notify::new()),
        }
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
    /// saves two round trips per order.
    pub async fn record_for_event(&self, notification: Notification) -> Result<(), DbError> {
        match self.notifications.insert_one(&notification).await {
            Ok(_) => {
                self.send_wake.notify_one();
                Ok(())
            }
            Err(e) if is_duplicate_key(&e) => {
                tracing::info!(dedupe_key = %notification.dedupe_key, "duplicate delivery ignored");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub async fn insert(&self, notification: &Notification) -> Result<(), Error> {
        self.notifications.insert_one(notification).await?;
        self.send_wake.notify_one();
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<Notification>, Error> {
        Ok(self.notifications.find_one(doc! { "_id": id }).await?)
    }

    pub async fn page(
        &self,
        filter: Document,
        page: &PageRequest,
    ) -> Result<(Vec<Notification>, Option<String>), Error> {
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

    /// The email went out: SENT, with `notification.sent`.
    pub async fn mark_sent(&self, notification: &Notification) -> Result<(), DbError> {
        let now = bson::DateTime::now();
        let event = Envelope::new(
            SOURCE,
            &notification.correlation_id,
            None,
            NotificationSent {
                notification_id: notification.id.clone(),
                kind: format!("{:?}", notification.kind),
                recipient: notification.recipient.clone(),
                order_id: notification.order_id.clone(),
            },
        );
        self.finish(
            notification,
            doc! { "$set": { "status": NotificationStatus::Sent.as_str(), "sentAt": now, "claimedBy": null },
                   "$inc": { "attempts": 1 } },
            &event,
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
                    notification,
                    doc! { "$set": { "status": NotificationStatus::Failed.as_str(), "lastError": error, "claimedBy": null },
                           "$inc": { "attempts": 1 } },
                    &event,
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

    async fn finish<T: serde::Serialize>(
        &self,
        notification: &Notification,
        update: Document,
        event: &Envelope<T>,
    ) -> Result<(), DbError> {
        let mut tx = Transaction::begin(&self.db).await?;
        loop {
            let session = tx.attempt().await?;
            let attempt = async {
                self.notifications
                    .update_one(doc! { "_id": &notification.id }, update.clone())
                    .session(&mut *session)
                    .await?;
                stage_event(&self.db, session, event).await
            }
            .await;
            if let Some(()) = tx.finish(attempt).await? {
                self.outbox_wake.notify_one();
                return Ok(());
            }
        }
    }
}
