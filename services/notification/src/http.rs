//! The notification API.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi, Tags,
    param::{Path, Query},
    payload::Json,
};
use shared::http::{
    AdminAuth, ApiNotificationKind, CorrelationId, Cursor, CustomerAuth, EmailAddress, Page,
    PageSize, Refused, ValidJson,
    error::{BadRequest, Conflict, NotFound, Unauthorized, UnsupportedMediaType},
    page,
};

use crate::{
    domain::{Draft, Notification, NotificationKind, NotificationStatus},
    error::Error,
    store::NotificationStore,
};

#[derive(Tags)]
enum Tag {
    /// Emails sent to customers and the admin.
    Notifications,
}

pub struct NotificationApi {
    pub store: Arc<NotificationStore>,
}

/// A manual email.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendRequest {
    /// Who gets it (at most 254 characters).
    #[oai(validator(max_length = 254))]
    pub recipient: EmailAddress,
    /// The subject line (1 to 200 characters).
    #[oai(validator(min_length = 1, max_length = 200))]
    pub subject: String,
    /// The plain-text body (1 to 20,000 characters).
    #[oai(validator(min_length = 1, max_length = 20000))]
    pub body: String,
}

/// A notification and its delivery state.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct NotificationView {
    /// The notification's id (UUIDv7).
    pub notification_id: String,
    /// What it is about.
    pub kind: ApiNotificationKind,
    /// Who gets it.
    pub recipient: String,
    /// The subject line.
    pub subject: String,
    /// Whether it went out.
    pub status: NotificationStatus,
    /// SMTP attempts made so far.
    pub attempts: u32,
    /// The order it is about, if any.
    #[oai(nullable)]
    pub order_id: Option<String>,
    /// The customer whose order it is about, if any.
    #[oai(nullable)]
    pub customer_id: Option<String>,
    /// The product it is about (low-stock alerts).
    #[oai(nullable)]
    pub product_id: Option<String>,
    /// When the SMTP server took it.
    #[oai(nullable)]
    pub sent_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed, if it did.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When an operator last sent it again after it FAILED.
    #[oai(nullable)]
    pub retried_at: Option<DateTime<Utc>>,
}

impl From<Notification> for NotificationView {
    fn from(n: Notification) -> Self {
        NotificationView {
            notification_id: n.id,
            kind: n.kind.into(),
            recipient: n.recipient,
            subject: n.subject,
            status: n.status,
            attempts: n.attempts,
            order_id: n.order_id,
            customer_id: n.customer_id,
            product_id: n.product_id,
            sent_at: n.sent_at,
            last_error: n.last_error,
            created_at: n.created_at,
            retried_at: n.retried_at,
        }
    }
}

/// Which FAILED notifications to send again. An empty filter (`{}`) takes
/// every FAILED one (up to 1000 per call).
#[derive(Debug, Default, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryFilter {
    /// Only notifications of this kind, e.g. `ORDER_CONFIRMED`.
    #[oai(nullable)]
    pub kind: Option<ApiNotificationKind>,
}

/// What a bulk retry did.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RetryResult {
    /// How many FAILED notifications went back to PENDING.
    pub requeued: u32,
    /// Their ids, oldest first.
    pub notification_ids: Vec<String>,
}

#[derive(ApiResponse)]
pub enum AcceptedResponse {
    /// Recorded; it is sent shortly.
    #[oai(status = 202)]
    Accepted(
        Json<NotificationView>,
        /// Where to follow its delivery.
        #[oai(header = "Location")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum NotificationResponse {
    /// The notification as it is now.
    #[oai(status = 200)]
    Ok(Json<NotificationView>),
}

#[derive(ApiResponse)]
pub enum PageResponse {
    /// A page of notifications, newest first.
    #[oai(status = 200)]
    Ok(Json<Page<NotificationView>>),
}

#[derive(ApiResponse)]
pub enum RetryResponse {
    /// What was sent again.
    #[oai(status = 200)]
    Ok(Json<RetryResult>),
}

#[OpenApi(tag = "Tag::Notifications")]
impl NotificationApi {
    /// Send an email (admin).
    #[oai(path = "/api/notifications", method = "post")]
    async fn send(
        &self,
        _admin: AdminAuth,
        body: ValidJson<SendRequest>,
        correlation: Data<&CorrelationId>,
    ) -> Result<AcceptedResponse, Refused<(BadRequest, Unauthorized, UnsupportedMediaType)>> {
        let id = uuid::Uuid::now_v7().to_string();
        let notification = Draft {
            kind: NotificationKind::Manual,
            recipient: body.0.recipient.into_string(),
            subject: body.0.subject,
            body: body.0.body,
            order_id: None,
            customer_id: None,
            product_id: None,
            dedupe_key: format!("MANUAL:{id}"),
        }
        .into_notification(
            &correlation.0.0,
            shared::telemetry::current_traceparent(),
            Utc::now(),
        );
        self.store.insert(&notification).await?;
        let location = format!("/api/notifications/{}", notification.id);
        Ok(AcceptedResponse::Accepted(
            Json(notification.into()),
            location,
        ))
    }

    /// One notification about one of the caller's orders (an admin: any).
    /// Anyone else's is 404, as if it did not exist.
    #[oai(path = "/api/notifications/:notification_id", method = "get")]
    async fn get(
        &self,
        auth: CustomerAuth,
        notification_id: Path<String>,
    ) -> Result<NotificationResponse, Refused<(Unauthorized, NotFound)>> {
        let n = self
            .store
            .get(&notification_id)
            .await?
            .filter(|n| match auth.0.customer() {
                None => true,
                customer => n.customer_id.as_deref() == customer,
            })
            .ok_or_else(|| Error::NotFound(notification_id.0.clone()))?;
        Ok(NotificationResponse::Ok(Json(n.into())))
    }

    /// Notifications in one status (admin).
    #[oai(path = "/api/notifications/status/:status", method = "get")]
    async fn by_status(
        &self,
        _admin: AdminAuth,
        status: Path<NotificationStatus>,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> Result<PageResponse, Refused<(BadRequest, Unauthorized)>> {
        let page = page::requested(limit.0, cursor.0);
        let found = self.store.notifications_in_status(status.0, &page).await?;
        Ok(PageResponse::Ok(Json(Page::of(found))))
    }

    /// The notifications about one of the caller's orders (an admin: any
    /// order). About another customer's order the page is empty.
    #[oai(path = "/api/notifications", method = "get")]
    async fn by_order(
        &self,
        auth: CustomerAuth,
        /// The order's id.
        #[oai(name = "orderId")]
        order_id: Query<String>,
        limit: Query<Option<PageSize>>,
        cursor: Query<Option<Cursor>>,
    ) -> Result<PageResponse, Refused<(BadRequest, Unauthorized)>> {
        let page = page::requested(limit.0, cursor.0);
        let found = self
            .store
            .notifications_of_order(&order_id, auth.0.customer(), &page)
            .await?;
        Ok(PageResponse::Ok(Json(Page::of(found))))
    }

    /// Send a FAILED notification again (admin), once what made it fail is
    /// fixed: PENDING and due at once, its attempts reset; `lastError` stays
    /// until a send replaces it. Only a FAILED one (else 409).
    #[oai(path = "/admin/notifications/:notification_id/retry", method = "post")]
    async fn retry(
        &self,
        _admin: AdminAuth,
        notification_id: Path<String>,
    ) -> Result<NotificationResponse, Refused<(Unauthorized, NotFound, Conflict)>> {
        let notification = self.store.retry(&notification_id).await?;
        tracing::info!(notification_id = %notification.id, "FAILED notification sent again");
        Ok(NotificationResponse::Ok(Json(notification.into())))
    }

    /// Send every FAILED notification matching the filter again, oldest
    /// first, up to 1000 per call (admin); call again for more.
    #[oai(path = "/admin/notifications/retry", method = "post")]
    async fn retry_matching(
        &self,
        _admin: AdminAuth,
        body: ValidJson<RetryFilter>,
    ) -> Result<RetryResponse, Refused<(BadRequest, Unauthorized, UnsupportedMediaType)>> {
        let ids = self.store.retry_failed(body.0.kind.map(Into::into)).await?;
        tracing::info!(count = ids.len(), kind = ?body.0.kind, "FAILED notifications sent again");
        Ok(RetryResponse::Ok(Json(RetryResult {
            requeued: ids.len() as u32,
            notification_ids: ids,
        })))
    }
}
