//! Sends PENDING notifications by SMTP. A notification is recorded durably
//! before it is sent, so a crash never loses one; the window between the
//! SMTP accept and the SENT write can resend after a crash, and the stable
//! Message-ID lets a mail system drop that duplicate.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use chrono::Utc;
use failsafe::futures::CircuitBreaker;
use futures::StreamExt;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::header::ContentType,
    transport::smtp::{
        PoolConfig,
        authentication::Credentials,
        client::{Tls, TlsParameters},
    },
};
use prometheus_client::metrics::{counter::Counter, family::Family};
use shared::{
    CancellationToken,
    config::Secret,
    metrics::{self, DurationFamily, Metrics, Outcome},
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
/// How often the sender polls for due notifications: when idle, and while
/// new ones are handed to it in memory (a round with none handed over
/// polls at once).
const POLL_EVERY: Duration = Duration::from_secs(1);

/// SMTP settings.
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    /// `SMTP_HOST`, default 127.0.0.1.
    pub host: String,
    /// `SMTP_PORT`, default [`SmtpTls::default_port`].
    pub port: u16,
    /// `NOTIFY_FROM`, default `shop@example.com`.
    pub from: String,
    /// `SMTP_TLS`, default none.
    pub tls: SmtpTls,
    /// `SMTP_TLS_INSECURE`: accept any certificate (a local test server's
    /// self-signed one), default false.
    pub tls_insecure: bool,
    /// `SMTP_USERNAME` and `SMTP_PASSWORD`, default none (no AUTH).
    pub login: Option<SmtpLogin>,
}

/// How the connection to the SMTP server is secured (`SMTP_TLS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text, for a local relay or MailDev.
    None,
    /// Plain text upgraded by STARTTLS before anything else is sent; a
    /// server that does not offer it is refused, so a man in the middle
    /// cannot strip it and read the login.
    StartTls,
    /// TLS from the first byte (implicit TLS, "SMTPS").
    Tls,
}

impl SmtpTls {
    /// The port each mode is usually served on: MailDev's 1025, the
    /// submission port 587 and the submissions port 465.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 1025,
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

impl std::str::FromStr for SmtpTls {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::StartTls),
            "tls" => Ok(SmtpTls::Tls),
            _ => Err("expected none, starttls or tls"),
        }
    }
}

/// The login for AUTH (`SMTP_USERNAME`, `SMTP_PASSWORD`).
#[derive(Clone, Debug)]
pub struct SmtpLogin {
    pub username: String,
    /// Shown as `***` by `Debug`.
    pub password: Secret,
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
    metrics: EmailMetrics,
}

/// Sends and their outcomes, for `/metrics`.
struct EmailMetrics {
    /// SMTP conversations that took place (not those an open breaker
    /// refused), by `sent` or `failed`.
    smtp: DurationFamily<Outcome>,
    /// Notifications by what a send attempt made of them: `sent`,
    /// `deferred` (tried again later) or `failed` (given up).
    emails: Family<Outcome, Counter>,
}

impl EmailMetrics {
    fn new(registry: &Metrics) -> Self {
        let metrics = EmailMetrics {
            smtp: metrics::durations(),
            emails: Family::default(),
        };
        registry.register_seconds(
            "smtp_send_duration",
            "SMTP sends from connection to the server's answer, by sent or failed.",
            metrics.smtp.clone(),
        );
        registry.register(
            "emails",
            "Send attempts by what became of the notification: sent, deferred (tried again \
             later) or failed (given up).",
            metrics.emails.clone(),
        );
        metrics
    }

    fn count(&self, outcome: &'static str) {
        self.emails.get_or_create(&Outcome { outcome }).inc();
    }
}

/// How soon a send refused by an open breaker or an unreachable server is
/// tried again: about when the breaker lets a probe through.
const OUTAGE_RETRY: Duration = Duration::from_secs(5);

/// Replies that refuse the service's login rather than the message (RFC
/// 4954): 530 authentication required (or STARTTLS first), 534 mechanism
/// too weak, 535 credentials invalid, 538 encryption required.
const LOGIN_REFUSED: [u16; 4] = [530, 534, 535, 538];

/// The transport for `smtp`: secured and logged in as configured, pooled.
fn transport(smtp: &SmtpConfig) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    // What lettre's `starttls_relay` and `relay` build, with our port and
    // the option to accept a test server's self-signed certificate.
    let parameters = || {
        TlsParameters::builder(smtp.host.clone())
            .dangerous_accept_invalid_certs(smtp.tls_insecure)
            .build()
            .context("setting up TLS for SMTP")
    };
    let tls = match smtp.tls {
        SmtpTls::None => Tls::None,
        SmtpTls::StartTls => Tls::Required(parameters()?),
        SmtpTls::Tls => Tls::Wrapper(parameters()?),
    };
    if smtp.tls_insecure {
        tracing::warn!(
            host = %smtp.host,
            "SMTP_TLS_INSECURE=true: the SMTP server's certificate is not checked, so \
             anyone in between can read the login and the emails; for a local test \
             server only"
        );
    }
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
        .tls(tls)
        .port(smtp.port)
        .timeout(Some(Duration::from_secs(5)))
        // Pooled: a new SMTP session per email (connect, EHLO, QUIT) held
        // the sender near 50 emails/s against MailDev. A connection that
        // went stale is dropped by the pool and the send retried as usual.
        // STARTTLS and AUTH happen once per connection, not per email.
        .pool_config(PoolConfig::new().max_size(SENDS_IN_FLIGHT as u32));
    if let Some(login) = &smtp.login {
        builder = builder.credentials(Credentials::new(
            login.username.clone(),
            login.password.expose().to_owned(),
        ));
    }
    Ok(builder.build())
}

/// Whether the server refused the service's login rather than the message.
fn login_refused(error: &lettre::transport::smtp::Error) -> bool {
    error
        .status()
        .is_some_and(|code| LOGIN_REFUSED.contains(&u16::from(code)))
}

/// What a failed send means for the notification.
fn classify(error: &lettre::transport::smtp::Error) -> SendFailure {
    // A refused login is permanent for SMTP but not for the email: an
    // operator fixes SMTP_USERNAME, SMTP_PASSWORD or SMTP_TLS and every
    // email waiting should then go out, so it waits as through an outage
    // (no attempt used, up to EMAIL_GIVE_UP_HOURS) instead of FAILED at
    // once. It still counts against the breaker, so a wrong password is
    // tried by one send every few seconds, not by 64 at once, which a
    // provider might take for an attack on the account.
    if login_refused(error) {
        SendFailure::Unreachable
    } else if error.is_permanent() {
        SendFailure::Refused
    } else if error.is_transient() {
        SendFailure::Deferred
    } else {
        SendFailure::Unreachable
    }
}

impl Sender {
    /// A sender called `name` (the claim its store gives new notifications).
    pub fn new(
        store: Arc<NotificationStore>,
        name: String,
        smtp: &SmtpConfig,
        policy: RetryPolicy,
        give_up: Duration,
        breakers: &Breakers,
        registry: &Metrics,
    ) -> anyhow::Result<Self> {
        let (breaker, breaker_state) = breakers.breaker_with_state("smtp", 3, OUTAGE_RETRY);
        Ok(Sender {
            store,
            transport: transport(smtp)?,
            from: smtp.from.parse().map_err(|e| {
                anyhow::anyhow!("NOTIFY_FROM={:?} is not an email address: {e}", smtp.from)
            })?,
            policy,
            give_up: chrono::Duration::from_std(give_up).unwrap_or(chrono::Duration::MAX),
            breaker,
            breaker_state,
            probe: tokio::sync::Mutex::new(()),
            name,
            metrics: EmailMetrics::new(registry),
        })
    }

    /// Sends what this instance recorded (`born`, already claimed) and what
    /// is due, until `shutdown`.
    pub async fn run(self, mut born: Born, shutdown: CancellationToken) {
        let wake = self.store.send_wake.clone();
        let mut polled: Option<std::time::Instant> = None;
        // The last poll took all it had room for: more may be due.
        let mut more_due = false;
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
            // What is due besides (retries, notifications recorded without
            // a hand-over, claims run out) is polled for when nothing was
            // handed over or the last poll was full, and else at most once
            // per POLL_EVERY: at low rates every email wakes the sender, and
            // a poll per wake was a query per email.
            let poll_due = claimed.is_empty()
                || more_due
                || polled.is_none_or(|at| at.elapsed() >= POLL_EVERY);
            if poll_due && claimed.len() < CLAIM_BATCH {
                polled = Some(std::time::Instant::now());
                let room = CLAIM_BATCH - claimed.len();
                match self.store.claim_due(&self.name, room as i64).await {
                    Ok(due) => {
                        more_due = due.len() == room;
                        claimed.extend(due);
                    }
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
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
        tracing::info!("notification sender stopped");
    }

    async fn deliver(&self, notification: Notification) {
        let span = tracing::info_span!(
            "notification",
            id = %notification.id,
            correlation_id = %notification.correlation_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        // The send is a span of the trace the notification was recorded in.
        shared::telemetry::continue_trace(&span, notification.traceparent.as_deref());
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
        let started = std::time::Instant::now();
        let sent = self
            .breaker
            .call_with(
                |error: &lettre::transport::smtp::Error| !error.is_response(),
                self.transport.send(message),
            )
            .await;
        let took = |outcome| {
            metrics::observe(
                &self.metrics.smtp.get_or_create(&Outcome { outcome }),
                started.elapsed(),
            )
        };
        match sent {
            Ok(_) => {
                took("sent");
                self.metrics.count("sent");
                tracing::info!("email sent");
                shared::crash_point!("sender.after_accept");
                self.store.mark_sent(notification);
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
                took("failed");
                let failure = classify(&error);
                tracing::warn!(%error, ?failure, "SMTP send failed");
                let recorded = if login_refused(&error) {
                    format!(
                        "SMTP authentication refused (check SMTP_USERNAME, SMTP_PASSWORD \
                         and SMTP_TLS): {error}"
                    )
                } else {
                    error.to_string()
                };
                self.failed(&notification, failure, &recorded).await
            }
        }
    }

    /// Records a failed send: PENDING again (using an attempt or not), or
    /// FAILED, as the domain decides.
    async fn failed(&self, notification: &Notification, failure: SendFailure, error: &str) {
        let now = Utc::now();
        let decided =
            domain::after_failure(notification.waiting_since(), now, self.give_up, failure);
        self.metrics.count(match decided {
            AfterFailure::GiveUp => "failed",
            AfterFailure::Retry { .. } => "deferred",
        });
        let recorded = match decided {
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
            .message_id(Some(notification.message_id()))
            .header(ContentType::TEXT_PLAIN)
            .body(notification.body.clone())
            .map_err(|e| e.to_string())
    }
}
