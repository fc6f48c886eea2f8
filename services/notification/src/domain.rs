//! Notifications and what they say. No I/O.

use chrono::{DateTime, Utc};
use poem_openapi::Enum;
use serde::{Deserialize, Serialize};
pub use shared::events::NotificationKind;
use shared::{
    events::{
        Cause, Event, InventoryLow, NotificationFailed, NotificationSent, OrderCancelled,
        OrderConfirmed, OrderFailed, OrderRejected, RawEnvelope,
    },
    history::{HistoryItem, HistoryKind},
};

/// The `source` of every event this service emits.
pub const SOURCE: &str = "notification-service";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotificationStatus {
    /// Recorded; the email has not gone out yet (or will be retried).
    Pending,
    Sent,
    /// Every attempt failed.
    Failed,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "PENDING",
            NotificationStatus::Sent => "SENT",
            NotificationStatus::Failed => "FAILED",
        }
    }
}

/// A notification as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[serde(rename = "_id")]
    pub id: String,
    pub kind: NotificationKind,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub status: NotificationStatus,
    pub attempts: u32,
    pub order_id: Option<String>,
    /// The customer the order belongs to: only they (and an admin) may read
    /// it. Absent on alerts, manual emails, and records written before it
    /// was kept, which only an admin reads.
    #[serde(default)]
    pub customer_id: Option<String>,
    pub product_id: Option<String>,
    /// Unique: one notification per order and outcome (or per alert event).
    pub dedupe_key: String,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub sent_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Not sent before this time (back-off, or another sender's lease).
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub next_attempt_at: DateTime<Utc>,
    pub claimed_by: Option<String>,
    pub correlation_id: String,
    /// The W3C trace context it was recorded in: its send, and the events
    /// that report it, belong to that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    /// When an operator last sent it again after it FAILED.
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub retried_at: Option<DateTime<Utc>>,
    /// The order history's lines of the event that made it (handled, with
    /// the failed attempts before), kept with it instead of in a record of
    /// their own: the order's history costs this service no extra write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryItem>,
}

/// What a notification will say, before it is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub kind: NotificationKind,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub order_id: Option<String>,
    pub customer_id: Option<String>,
    pub product_id: Option<String>,
    pub dedupe_key: String,
}

impl Draft {
    /// The notification, to be recorded `now` in the request or event
    /// followed by `correlation_id`, in the trace of `traceparent`.
    pub fn into_notification(
        self,
        correlation_id: &str,
        traceparent: Option<String>,
        now: DateTime<Utc>,
    ) -> Notification {
        Notification {
            id: uuid::Uuid::now_v7().to_string(),
            kind: self.kind,
            recipient: self.recipient,
            subject: self.subject,
            body: self.body,
            status: NotificationStatus::Pending,
            attempts: 0,
            order_id: self.order_id,
            customer_id: self.customer_id,
            product_id: self.product_id,
            dedupe_key: self.dedupe_key,
            sent_at: None,
            last_error: None,
            next_attempt_at: now,
            claimed_by: None,
            correlation_id: correlation_id.to_string(),
            traceparent,
            created_at: now,
            retried_at: None,
            history: Vec::new(),
        }
    }
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn order_key(kind: &str, order_id: &str) -> String {
    format!("{kind}:{order_id}")
}

pub fn order_confirmed(event: &OrderConfirmed) -> Draft {
    let lines: Vec<String> = event
        .items
        .iter()
        .map(|l| {
            format!(
                "  {} x {} at {}",
                l.quantity,
                l.product_id,
                money(l.unit_price_cents)
            )
        })
        .collect();
    Draft {
        kind: NotificationKind::OrderConfirmed,
        recipient: event.customer_email.clone(),
        subject: format!("Order {} confirmed", event.order_id),
        body: format!(
            "Your order {} is confirmed.\n\n{}\n\nTotal: {}\n",
            event.order_id,
            lines.join("\n"),
            money(event.total_cents)
        ),
        order_id: Some(event.order_id.clone()),
        customer_id: Some(event.customer_id.clone()),
        product_id: None,
        dedupe_key: order_key("ORDER_CONFIRMED", &event.order_id),
    }
}

pub fn order_rejected(event: &OrderRejected) -> Draft {
    Draft {
        kind: NotificationKind::OrderRejected,
        recipient: event.customer_email.clone(),
        subject: format!("Order {} could not be accepted", event.order_id),
        body: format!(
            "We could not accept your order {}: {}.\n",
            event.order_id, event.reason
        ),
        order_id: Some(event.order_id.clone()),
        customer_id: Some(event.customer_id.clone()),
        product_id: None,
        dedupe_key: order_key("ORDER_REJECTED", &event.order_id),
    }
}

pub fn order_cancelled(event: &OrderCancelled) -> Draft {
    Draft {
        kind: NotificationKind::OrderCancelled,
        recipient: event.customer_email.clone(),
        subject: format!("Order {} cancelled", event.order_id),
        body: format!("Your order {} has been cancelled.\n", event.order_id),
        order_id: Some(event.order_id.clone()),
        customer_id: Some(event.customer_id.clone()),
        product_id: None,
        dedupe_key: order_key("ORDER_CANCELLED", &event.order_id),
    }
}

pub fn order_failed(event: &OrderFailed) -> Draft {
    Draft {
        kind: NotificationKind::OrderFailed,
        recipient: event.customer_email.clone(),
        subject: format!("Order {} could not be processed", event.order_id),
        body: format!(
            "We could not process your order {} ({}). Nothing was charged and no stock is held for it; please place it again.\n",
            event.order_id, event.reason
        ),
        order_id: Some(event.order_id.clone()),
        customer_id: Some(event.customer_id.clone()),
        product_id: None,
        dedupe_key: order_key("ORDER_FAILED", &event.order_id),
    }
}

/// `alert_id` is the event id: each crossing is its own alert.
pub fn low_stock(event: &InventoryLow, admin_email: &str, alert_id: &str) -> Draft {
    Draft {
        kind: NotificationKind::LowStock,
        recipient: admin_email.to_string(),
        subject: format!("Low stock: {} ({})", event.name, event.sku),
        body: format!(
            "{} ({}) is down to {} units (threshold {}).\n",
            event.name, event.sku, event.stock, event.low_stock_threshold
        ),
        order_id: None,
        customer_id: None,
        product_id: Some(event.product_id.clone()),
        dedupe_key: format!("LOW_STOCK:{alert_id}"),
    }
}

impl Notification {
    /// Its events are caused by sending it, in the trace it was recorded in.
    fn cause(&self) -> Cause {
        Cause::request(SOURCE, &self.correlation_id).in_trace(self.traceparent.clone())
    }

    /// `notification.sent`, once the SMTP server took the email. Its id is
    /// fixed by the notification ([`Self::sent_event_id`]).
    pub fn sent_event(&self) -> RawEnvelope {
        RawEnvelope {
            event_id: self.sent_event_id(),
            ..self.cause().emit(NotificationSent {
                notification_id: self.id.clone(),
                kind: self.kind,
                recipient: self.recipient.clone(),
                order_id: self.order_id.clone(),
            })
        }
    }

    /// The id of the `notification.sent` that reports this notification: a
    /// notification is sent once, so its report has one id, known without
    /// being stored (the SENT mark is one statement for a whole batch).
    /// The notification's own UUIDv7 bytes as a UUIDv8, which no UUIDv7
    /// event id can equal.
    pub fn sent_event_id(&self) -> uuid::Uuid {
        let notification = uuid::Uuid::parse_str(&self.id).unwrap_or_default();
        uuid::Uuid::new_v8(*notification.as_bytes())
    }

    /// The email's Message-ID header: the notification's id, so a resend
    /// after a crash carries the same one and mail systems drop the copy.
    pub fn message_id(&self) -> String {
        format!("<{}@e-commerce.local>", self.id)
    }

    /// This notification's lines of its order's history: the event it was
    /// made for, and the email with its outcome, Message-ID and report.
    pub fn history_items(&self) -> Vec<HistoryItem> {
        let mut items = self.history.clone();
        let at = match self.status {
            NotificationStatus::Sent => self.sent_at.unwrap_or(self.created_at),
            _ => self.waiting_since(),
        };
        items.push(HistoryItem {
            status: Some(self.status.as_str().to_string()),
            message_id: Some(self.message_id()),
            recipient: Some(self.recipient.clone()),
            detail: self.last_error.clone(),
            attempt: Some(self.attempts),
            event_type: Some(self.kind.as_str().to_string()),
            ..HistoryItem::new(SOURCE, HistoryKind::Email, at)
        });
        if self.status == NotificationStatus::Sent {
            items.push(HistoryItem {
                event_type: Some(NotificationSent::TYPE.to_string()),
                event_id: Some(self.sent_event_id().to_string()),
                ..HistoryItem::new(SOURCE, HistoryKind::EventPublished, at)
            });
        }
        items
    }

    /// Since when it has waited to go out: since it was recorded, or since an
    /// operator last sent it again.
    pub fn waiting_since(&self) -> DateTime<Utc> {
        self.retried_at.unwrap_or(self.created_at)
    }

    /// `notification.failed`, when sending gives up.
    pub fn failed_event(&self, last_error: &str) -> RawEnvelope {
        self.cause().emit(NotificationFailed {
            notification_id: self.id.clone(),
            kind: self.kind,
            recipient: self.recipient.clone(),
            order_id: self.order_id.clone(),
            last_error: last_error.to_string(),
        })
    }
}

/// How a send failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// The SMTP server refused the message for good (5xx), or the address
    /// cannot be used: no retry will change that.
    Refused,
    /// The server answered "not now" (4xx).
    Deferred,
    /// The server could not be reached (refused connection, timeout, TLS)
    /// or is known to be down (the breaker is open): it is the server's
    /// outage, not the message's fault.
    Unreachable,
}

/// What happens to a notification after a failed send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// FAILED, with `notification.failed`.
    GiveUp,
    /// PENDING again; `counts` says whether the failure used an attempt.
    Retry { counts: bool },
}

/// A notification waits through an SMTP outage of any length up to
/// `give_up` (EMAIL_GIVE_UP_HOURS) after it began waiting (see
/// [`Notification::waiting_since`]), without using its attempts; only a
/// refusal by the server gives up at once.
pub fn after_failure(
    waiting_since: DateTime<Utc>,
    now: DateTime<Utc>,
    give_up: chrono::Duration,
    failure: SendFailure,
) -> AfterFailure {
    match failure {
        SendFailure::Refused => AfterFailure::GiveUp,
        _ if now - waiting_since >= give_up => AfterFailure::GiveUp,
        SendFailure::Deferred => AfterFailure::Retry { counts: true },
        SendFailure::Unreachable => AfterFailure::Retry { counts: false },
    }
}

/// Why an operator cannot send a notification again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("notification {id} is {}: only a FAILED one can be sent again", .status.as_str())]
pub struct NotRetryable {
    pub id: String,
    pub status: NotificationStatus,
}

/// An operator sends a FAILED notification again, once what made it fail
/// is fixed: PENDING and due at once, its attempts reset and its wait
/// through an SMTP outage started over (`retried_at`); the last error stays
/// on record until a send replaces it. A PENDING one is on its way already
/// and a SENT one went out: both are refused.
pub fn retry(
    notification: &Notification,
    now: DateTime<Utc>,
) -> Result<Notification, NotRetryable> {
    if notification.status != NotificationStatus::Failed {
        return Err(NotRetryable {
            id: notification.id.clone(),
            status: notification.status,
        });
    }
    Ok(Notification {
        status: NotificationStatus::Pending,
        attempts: 0,
        next_attempt_at: now,
        claimed_by: None,
        retried_at: Some(now),
        ..notification.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::events::PricedLine;

    #[test]
    fn a_confirmation_lists_lines_and_total_in_major_units() {
        let draft = order_confirmed(&OrderConfirmed {
            order_id: "o1".into(),
            customer_id: "c".into(),
            customer_email: "c@example.com".into(),
            items: vec![PricedLine {
                product_id: "p".into(),
                quantity: 2,
                unit_price_cents: 1005,
            }],
            total_cents: 2010,
        });
        assert_eq!(draft.recipient, "c@example.com");
        assert!(draft.body.contains("2 x p at 10.05"), "{}", draft.body);
        assert!(draft.body.contains("Total: 20.10"), "{}", draft.body);
        assert_eq!(draft.dedupe_key, "ORDER_CONFIRMED:o1");
    }

    #[test]
    fn each_outcome_of_an_order_has_its_own_dedupe_key() {
        let cancelled = order_cancelled(&OrderCancelled {
            order_id: "o1".into(),
            customer_id: "c".into(),
            customer_email: "c@example.com".into(),
            previous_status: shared::events::OrderStatus::Confirmed,
            attempt: 1,
        });
        let rejected = order_rejected(&OrderRejected {
            order_id: "o1".into(),
            customer_id: "c".into(),
            customer_email: "c@example.com".into(),
            reason: "insufficient stock".into(),
        });
        assert_ne!(cancelled.dedupe_key, rejected.dedupe_key);
        assert!(rejected.body.contains("insufficient stock"));
    }

    #[test]
    fn a_failed_order_tells_the_customer_why_under_its_own_key() {
        let draft = order_failed(&OrderFailed {
            order_id: "o1".into(),
            customer_id: "c".into(),
            customer_email: "c@example.com".into(),
            reason: "the order was not processed within 60 s".into(),
            attempt: 1,
        });
        assert_eq!(draft.kind, NotificationKind::OrderFailed);
        assert_eq!(draft.recipient, "c@example.com");
        assert_eq!(draft.dedupe_key, "ORDER_FAILED:o1");
        assert!(draft.subject.contains("could not be processed"));
        assert!(draft.body.contains("within 60 s"), "{}", draft.body);
    }

    #[test]
    fn a_sent_notification_tells_its_orders_history_the_email_and_its_report() {
        let mut notification = order_rejected(&OrderRejected {
            order_id: "o1".into(),
            customer_id: "c".into(),
            customer_email: "c@example.com".into(),
            reason: "insufficient stock".into(),
        })
        .into_notification("corr", None, Utc::now());
        let pending = notification.history_items();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].status.as_deref(), Some("PENDING"));

        notification.status = NotificationStatus::Sent;
        notification.sent_at = Some(Utc::now());
        let sent = notification.history_items();
        let [email, report] = sent.as_slice() else {
            panic!("{sent:?}")
        };
        assert_eq!(email.kind, HistoryKind::Email);
        assert_eq!(email.status.as_deref(), Some("SENT"));
        assert_eq!(
            email.message_id.as_deref(),
            Some(format!("<{}@e-commerce.local>", notification.id).as_str())
        );
        assert_eq!(email.recipient.as_deref(), Some("c@example.com"));
        assert_eq!(report.kind, HistoryKind::EventPublished);
        assert_eq!(
            report.event_id,
            Some(notification.sent_event().event_id.to_string())
        );
    }

    #[test]
    fn low_stock_alerts_go_to_the_admin() {
        let draft = low_stock(
            &InventoryLow {
                product_id: "p".into(),
                sku: "S".into(),
                name: "Mug".into(),
                stock: 1,
                low_stock_threshold: 2,
            },
            "admin@example.com",
            "e1",
        );
        assert_eq!(draft.recipient, "admin@example.com");
        assert_eq!(draft.dedupe_key, "LOW_STOCK:e1");
    }

    #[test]
    fn sent_and_failed_events_name_the_kind_as_the_api_does() {
        let notification = order_rejected(&OrderRejected {
            order_id: "o1".into(),
            customer_id: "c".into(),
            customer_email: "c@example.com".into(),
            reason: "insufficient stock".into(),
        })
        .into_notification("corr", None, Utc::now());
        let sent = notification.sent_event();
        assert_eq!(sent.event_type, "notification.sent");
        assert_eq!(sent.data["kind"], "ORDER_REJECTED");
        assert_eq!(sent.correlation_id, "corr");
        let failed = notification.failed_event("550 no such user");
        assert_eq!(failed.data["kind"], "ORDER_REJECTED");
        // The report of a send has one id, whoever sends it.
        assert_eq!(sent.event_id, notification.sent_event().event_id);
        assert_eq!(sent.event_id, notification.sent_event_id());
        assert_ne!(sent.event_id.to_string(), notification.id);
        assert_eq!(sent.event_id.get_version_num(), 8);
        assert_eq!(failed.data["lastError"], "550 no such user");
    }

    #[test]
    fn an_outage_uses_no_attempt_and_only_the_give_up_time_or_a_refusal_ends_the_wait() {
        let day = chrono::Duration::hours(24);
        let recorded = Utc::now();
        let soon = recorded + chrono::Duration::minutes(3);
        assert_eq!(
            after_failure(recorded, soon, day, SendFailure::Unreachable),
            AfterFailure::Retry { counts: false }
        );
        assert_eq!(
            after_failure(recorded, soon, day, SendFailure::Deferred),
            AfterFailure::Retry { counts: true }
        );
        assert_eq!(
            after_failure(recorded, soon, day, SendFailure::Refused),
            AfterFailure::GiveUp
        );
        let late = recorded + day;
        assert_eq!(
            after_failure(recorded, late, day, SendFailure::Unreachable),
            AfterFailure::GiveUp
        );
    }

    #[test]
    fn only_a_failed_notification_is_sent_again_at_once_with_a_fresh_wait() {
        let recorded = Utc::now() - chrono::Duration::hours(30);
        let mut failed = order_rejected(&OrderRejected {
            order_id: "o1".into(),
            customer_id: "c".into(),
            customer_email: "c@example.com".into(),
            reason: "insufficient stock".into(),
        })
        .into_notification("corr", None, recorded);
        failed.status = NotificationStatus::Failed;
        failed.attempts = 5;
        failed.last_error = Some("550 no such user".into());
        failed.claimed_by = Some("sender-1".into());

        let now = Utc::now();
        let again = retry(&failed, now).unwrap();
        assert_eq!(again.status, NotificationStatus::Pending);
        assert_eq!(again.attempts, 0);
        assert_eq!(again.next_attempt_at, now, "due at once");
        assert_eq!(again.claimed_by, None);
        assert_eq!(again.last_error.as_deref(), Some("550 no such user"));
        assert_eq!(
            (again.id.as_str(), again.created_at),
            (failed.id.as_str(), recorded)
        );
        // An outage right after the retry waits again instead of giving up
        // at once for a notification recorded more than a day ago.
        assert_eq!(again.waiting_since(), now);
        assert_eq!(
            after_failure(
                again.waiting_since(),
                now,
                chrono::Duration::hours(24),
                SendFailure::Unreachable
            ),
            AfterFailure::Retry { counts: false }
        );

        for status in [NotificationStatus::Pending, NotificationStatus::Sent] {
            let refused = retry(
                &Notification {
                    status,
                    ..failed.clone()
                },
                now,
            )
            .unwrap_err();
            assert_eq!(refused.status, status);
            assert!(
                refused.to_string().contains("only a FAILED one"),
                "{refused}"
            );
        }
    }
}
