//! HTTP plumbing shared by the three APIs: JSON errors, request limits,
//! rate limits, correlation ids, admin auth, health, readiness and metrics,
//! dead-letter and consumer admin routes, paging, and serving with graceful
//! shutdown.

pub mod auth;
pub mod body;
pub mod client;
pub mod consumers;
pub mod contract;
pub mod deadletters;
pub mod enums;
pub mod error;
pub mod health;
pub mod history;
pub mod host;
pub(crate) mod limits;
pub mod loadshed;
pub mod page;
pub mod ratelimit;
pub mod server;

pub use auth::{AdminAuth, Authenticator, Caller, CustomerAuth, JwtSettings, require_admin};
pub use body::{EmailAddress, ValidJson};
pub use client::{ClientAddress, TrustedProxies};
pub use enums::{ApiNotificationKind, ApiOrderStatus};
pub use error::{ApiError, ErrorBody, FieldError, Refused};
pub use health::{Gauge, GaugeSource, HealthApi};
pub use page::{Cursor, Page, PageSize};
pub use server::{CorrelationId, Edges, bind, build_app, serve, wait_for_signal};
