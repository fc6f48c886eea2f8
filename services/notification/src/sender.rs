//! Sends PENDING notifications by SMTP. A notification is recorded durably
//! before it is sent, so a crash never loses one; the window between the
//! SMTP accept and the SENT write can resend after a crash, and the stable
//! Message-ID lets a mail system drop that duplicate.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use failsafe::futures::CircuitBreaker;
use futures::StreamExt;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor, message::header::ContentType,
    transport::smtp::PoolConfig,
};
use shared::{
    CancellationToken,
    resilience::{Breaker, BreakerProbe, BreakerState, Breakers},
    retry::RetryPolicy,
};
use tracing::Instrument;

use crate::{
    domain::{self, AfterFailure, Notification, SendFailure},
    store::{self, Born, NotificationStore},
};

/// Emails on their way at once, each on its own pooled SMTP connection. A
/// send is mostly waiting for the SMTP server: with 16 the sender topped out
/// near 200 emails/s against MailDev with the CPU idle, and fell behind a
/// saga finishing 500 orders/s; with 64 it drains 7,500 emails in 9 s.
const SENDS_IN_FLIGHT: usize = 64;
/// Notifications claimed per round; a full batch means more are waiting.
const CLAIM_BATCH: usize = 256;

/// SMTP settings.
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    /// `SMTP_HOST`, default 127.0.0.1.
    pub host: String,
    /// `SMTP_PORT`, default 1025.
    pub port: u16,
    /// `NOTIFY_FROM`, default `shop@example.com`.
    pub from: String,
}

pub struct Sender {
    store: Arc<NotificationStore>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
    /// Backoff between deferred (4xx) sends.
    policy: RetryPolicy,
    /// `EMAIL_GIVE_UP_HOURS`: how long a notification waits for SMTP.
    give_up: chrono::Duration,
    breaker: Breaker,
    /// The breaker's state, to let one probe through when it half-opens.
    breaker_state: BreakerProbe,
    /// Held by the one send that probes a server the breaker gave up on;
    /// every other send waits its turn without using an attempt.
    probe: tokio::sync::Mutex<()>,
    name: String,
}

/// How soon a send refused by an open breaker or an unreachable server is
/// tried again: about when the breaker lets a probe through.
const OUTAGE_RETRY: Duration = Duration::from_secs(5);

impl Sender {
    /// A sender called `name` (the claim its store gives new notifications).
    pub fn new(
        store: Arc<NotificationStore>,
        name: String,
        smtp: &SmtpConfig,
        policy: RetryPolicy,
        give_up: Duration,
        breakers: &Breakers,
    ) -> anyhow::Result<Self> {
        let (breaker, breaker_state) = breakers.breaker_with_state("smtp", 3, OUTAGE_RETRY);
        // Pooled: a new SMTP session per email (connect, EHLO, QUIT) held
        // the sender near 50 emails/s against MailDev. A connection that
        // went stale is dropped by the pool and the send retried as usual.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port)
            .timeout(Some(Duration::from_secs(5)))
            .pool_config(PoolConfig::new().max_size(SENDS_IN_FLIGHT as u32))
            .build();
        Ok(Sender {
            store,
            transport,
            from: smtp.from.parse().map_err(|e| {
                anyhow::anyhow!("NOTIFY_FROM={:?} is not an email address: {e}", smtp.from)
            })?,
            policy,
            give_up: chrono::Duration::from_std(give_up).unwrap_or(chrono::Duration::MAX),
            breaker,
            breaker_state,
            probe: tokio::sync::Mutex::new(()),
            name,
        })
    }

    /// Sends what this instance recorded (`born`, already claimed) and what
    /// is due, until `shutdown`.
    pub async fn run(self, mut born: Born, shutdown: CancellationToken) {
        let wake = self.store.send_wake.clone();
        loop {
            let mut claimed = Vec::with_capacity(CLAIM_BATCH);
            let now = Utc::now();
            while claimed.len() < CLAIM_BATCH
                && let Ok(notification) = born.try_recv()
            {
                if store::still_ours(&notification, now) {
                    claimed.push(notification);
                }
            }
            if claimed.len() < CLAIM_BATCH {
                let room = (CLAIM_BATCH - claimed.len()) as i64;
                match self.store.claim_due(&self.name, room).await {
                    Ok(due) => claimed.extend(due),
                    Err(error) => {
                        tracing::warn!(%error, "could not read pending notifications");
                    }
                }
            }
            let full = claimed.len() == CLAIM_BATCH;
            futures::stream::iter(claimed)
                .for_each_concurrent(SENDS_IN_FLIGHT, |n| self.deliver(n))
                .await;
            if full {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tracing::info!("notification sender stopped");
    }

    async fn deliver(&self, notification: Notification) {
        let span = tracing::info_span!("notification", id = %notification.id, correlation_id = %notification.correlation_id);
        self.deliver_in_span(notification).instrument(span).await
    }

    async fn deliver_in_span(&self, notification: Notification) {
        let message = match self.message(&notification) {
            Ok(message) => message,
            Err(error) => {
                // A bad address never becomes good: fail at once.
                self.failed(&notification, SendFailure::Refused, &error)
                    .await;
                return;
            }
        };
        // While the breaker is not closed, one send at a time probes the
        // server; the others wait without using an attempt, instead of all
        // rushing a half-open breaker and each spending one.
        let _probing = match self.breaker_state.state() {
            BreakerState::Closed => None,
            _ => match self.probe.try_lock() {
                Ok(probing) => Some(probing),
                Err(_) => {
                    self.failed(&notification, SendFailure::Unreachable, "SMTP is down")
                        .await;
                    return;
                }
            },
        };
        // Only an unreachable server counts against the breaker: a refusal
        // or a deferral is the server answering.
        let sent = self
            .breaker
            .call_with(
                |error: &lettre::transport::smtp::Error| !error.is_response(),
                self.transport.send(message),
            )
            .await;
        match sent {
            Ok(_) => {
                shared::crash_point!("sender.after_accept");
                if let Err(error) = self.store.mark_sent(&notification).await {
                    // The lease expires and it is sent again, with the same
                    // Message-ID, so a mail system can drop the copy.
                    tracing::warn!(%error, "could not record the send; it will be sent again");
                }
            }
            Err(failsafe::Error::Rejected) => {
                self.failed(
                    &notification,
                    SendFailure::Unreachable,
                    "SMTP is down (circuit breaker open)",
                )
                .await
            }
            Err(failsafe::Error::Inner(error)) => {
                let failure = if error.is_permanent() {
                    SendFailure::Refused
                } else if error.is_transient() {
                    SendFailure::Deferred
                } else {
                    SendFailure::Unreachable
                };
                tracing::warn!(%error, ?failure, "SMTP send failed");
                self.failed(&notification, failure, &error.to_string())
                    .await
            }
        }
    }

    /// Records a failed send: PENDING again (using an attempt or not), or
    /// FAILED, as the domain decides.
    async fn failed(&self, notification: &Notification, failure: SendFailure, error: &str) {
        let now = Utc::now();
        let recorded =
            match domain::after_failure(notification.waiting_since(), now, self.give_up, failure) {
                AfterFailure::GiveUp => self.store.give_up(notification, error).await,
                AfterFailure::Retry { counts: true } => {
                    let delay = self
                        .policy
                        .jittered_delay(notification.attempts + 1)
                        .max(Duration::from_millis(200));
                    self.store
                        .retry_later(notification, error, now + delay, true)
                        .await
                }
                AfterFailure::Retry { counts: false } => {
                    self.store
                        .retry_later(notification, error, now + OUTAGE_RETRY, false)
                        .await
                }
            };
        if let Err(error) = recorded {
            // The lease expires and another pass picks it up.
            tracing::warn!(%error, "could not record the send outcome");
        }
    }

    fn message(&self, notification: &Notification) -> Result<Message, String> {
        let to = notification
            .recipient
            .parse()
            .map_err(|e| format!("recipient {:?}: {e}", notification.recipient))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&notification.subject)
            .message_id(Some(format!("<{}@e-commerce.local>", notification.id)))
            .header(ContentType::TEXT_PLAIN)
            .body(notification.body.clone())
            .map_err(|e| e.to_string())
    }
}
