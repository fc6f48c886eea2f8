//! Building the poem app around a service's API and serving it until the
//! shutdown signal.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use poem::{
    Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route, Server,
    http::{HeaderValue, StatusCode},
    listener::TcpAcceptor,
};
use poem_openapi::{OpenApi, OpenApiService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    ApiError, Authenticator, ClientAddress, TrustedProxies, client,
    contract::{self, Contract},
    error::json_errors,
    loadshed::{self, LoadShedder},
    ratelimit::{self, RateLimiter},
};

/// Largest request body accepted (64 KiB); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The correlation id of the current request: the caller's
/// `X-Correlation-Id`, or a fresh one. It travels into every event.
#[derive(Clone, Debug)]
pub struct CorrelationId(pub String);

/// Wraps `api` with its Swagger UI (`/docs`), its spec (`/openapi.json`),
/// and, from the outside in: JSON errors, the client's address (behind
/// `trusted_proxies`), correlation ids and the request log, the rate limit,
/// load shedding, the body limit, and `Allow` on 405; plus the tokens it
/// accepts.
pub fn build_app<T: OpenApi + 'static>(
    api: T,
    title: &str,
    authenticator: Authenticator,
    rate_limiter: Option<Arc<RateLimiter>>,
    load_shedder: Option<Arc<LoadShedder>>,
    trusted_proxies: TrustedProxies,
) -> impl Endpoint<Output = Response> + 'static {
    let service = OpenApiService::new(api, title, env!("CARGO_PKG_VERSION"));
    let docs = service.swagger_ui();
    let contract = Contract::of(&service);
    let spec = {
        let contract = contract.clone();
        poem::endpoint::make_sync(move |_| {
            Response::builder()
                .content_type("application/json; charset=utf-8")
                .body(contract.spec().to_string())
        })
    };
    Route::new()
        .nest("/", service)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .around(move |next, req| contract::allow_header(contract.clone(), next, req))
        .around(limit_body)
        .around(move |next, req| loadshed::shed(load_shedder.clone(), next, req))
        .around(move |next, req| ratelimit::limit(rate_limiter.clone(), next, req))
        .around(correlate)
        .around(move |next, req| client::identify(trusted_proxies.clone(), next, req))
        .data(authenticator)
        .catch_all_error(json_errors)
}

async fn limit_body<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )
    };
    match declared {
        Some(length) if length > MAX_BODY_BYTES => return Err(too_large().into()),
        Some(_) => {}
        // No length given (chunked): read at most the limit.
        None => {
            let body = req
                .take_body()
                .into_bytes_limit(MAX_BODY_BYTES)
                .await
                .map_err(|_| too_large())?;
            req.set_body(body);
        }
    }
    next.call(req).await.map(IntoResponse::into_response)
}

/// Gives the request its correlation id (the caller's `X-Correlation-Id`,
/// or a fresh one), answers with it, and logs the request in a span that
/// names the client as `client::identify` found it. poem's own `Tracing`
/// would log whatever `X-Forwarded-For` a client sends as its address.
async fn correlate<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let id = req
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.set_data(CorrelationId(id.clone()));
    let client = req.data::<ClientAddress>().map(|client| client.0);
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        client = client.map(tracing::field::display),
        method = %req.method(),
        uri = %req.original_uri(),
    );
    async move {
        let started = Instant::now();
        let mut response = match next.call(req).await {
            Ok(response) => response.into_response(),
            Err(error) => {
                tracing::info!(status = %error.status(), error = %error, duration = ?started.elapsed(), "error");
                return Err(error);
            }
        };
        tracing::info!(status = %response.status(), duration = ?started.elapsed(), "response");
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(CORRELATION_HEADER, value);
        }
        Ok(response)
    }
    .instrument(span)
    .await
}

/// Binds the HTTP port (0 picks a free one, for tests).
pub async fn bind(address: &str, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((address, port)).await
}

/// Serves until `shutdown`, then lets in-flight requests finish (up to 10 s).
pub async fn serve<A>(
    listener: TcpListener,
    app: A,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    A: IntoEndpoint,
    A::Endpoint: 'static,
{
    Server::new_with_acceptor(TcpAcceptor::from_tokio(listener)?)
        .run_with_graceful_shutdown(
            app,
            shutdown.cancelled_owned(),
            Some(Duration::from_secs(10)),
        )
        .await
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
