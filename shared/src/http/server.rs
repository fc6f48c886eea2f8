//! Building the poem app around a service's API and serving it until the
//! shutdown signal.

use std::{
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use poem::{
    Endpoint, EndpointExt, IntoEndpoint, IntoResponse, PathPattern, Request, Response, Route,
    Server,
    http::{HeaderValue, Method, StatusCode, Uri, header},
    listener::TcpAcceptor,
    middleware::Cors,
};
use poem_openapi::{OpenApi, OpenApiService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    metrics::HttpMetrics,
    telemetry::{self, TRACEPARENT},
};

use super::{
    ApiError, Authenticator, ClientAddress, TrustedProxies, client,
    contract::{self, Contract},
    error::json_errors,
    host::{self, AllowedHosts},
    loadshed::{self, LoadShedder},
    ratelimit::{self, RateLimiter},
};

/// Largest request body accepted (64 KiB); larger ones get 413.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The correlation id of the current request: the caller's
/// `X-Correlation-Id`, or a fresh one. It travels into every event.
#[derive(Clone, Debug)]
pub struct CorrelationId(pub String);

/// `CORS_ALLOWED_ORIGINS`: the browser origins whose pages may call the
/// API. None: CORS is off. Once on, poem's `Cors` refuses a request from any
/// other origin, the Swagger UI's own POST and PUT included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

impl FromStr for AllowedOrigins {
    type Err = String;

    /// A comma-separated list of exact origins, `https://shop.example.com`.
    fn from_str(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| match is_origin(entry) {
                true => Ok(entry.to_string()),
                false => Err(format!(
                    "{entry:?} is not an origin as browsers send it: scheme://host[:port], \
                     http or https, lowercase, no path and no default port"
                )),
            })
            .collect::<Result<_, _>>()
            .map(AllowedOrigins)
    }
}

/// Whether `entry` is spelled the way a browser's `Origin` header would
/// spell it; any other spelling would never match one.
fn is_origin(entry: &str) -> bool {
    let Ok(uri) = entry.parse::<Uri>() else {
        return false;
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return false;
    };
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return false,
    };
    entry == format!("{scheme}://{authority}")
        && entry == entry.to_ascii_lowercase()
        && !authority.host().is_empty()
        && !authority.as_str().contains('@')
        && authority.port_u16() != Some(default_port)
}

/// Browsers on `origins` may call the API with the headers it reads and
/// read the headers it answers with. poem's `Cors` with no origin listed
/// would allow every origin, hence only ever built with some.
fn cors(origins: &AllowedOrigins) -> Cors {
    Cors::new()
        .allow_origins(origins.0.iter().map(String::as_str))
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([
            "authorization",
            "content-type",
            "idempotency-key",
            CORRELATION_HEADER,
            TRACEPARENT,
        ])
        .expose_headers(["location", "retry-after", CORRELATION_HEADER])
}

/// The policy of every page but Swagger UI's (the admin console's among
/// them, whose tab holds the admin token): this origin's own scripts,
/// styles and calls, nothing inline, nothing from elsewhere, no framing.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// Swagger UI's page runs its bundle and styles inline: a script or style
/// policy that let it work would have to allow inline code, which protects
/// nothing, so its policy only forbids framing. It holds no token of ours
/// unless one is typed into it.
pub const DOCS_CSP: &str = "frame-ancestors 'none'";

/// On every response, errors, docs and probes included. Nothing is kept
/// in a cache: the API's answers carry customers' data, a cached probe
/// would report an old state, and the docs and spec were never cacheable
/// anyway (no validators or freshness). The CSP is [`PAGE_CSP`], or
/// [`DOCS_CSP`] under `/docs`.
async fn security_headers<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let path = req.uri().path();
    let policy = if path == "/docs" || path.starts_with("/docs/") {
        DOCS_CSP
    } else {
        PAGE_CSP
    };
    let mut response = next.call(req).await?.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, policy),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

/// What stands between a client and a service's routes.
pub struct Edges {
    /// The tokens the routes accept.
    pub authenticator: Authenticator,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub load_shedder: Option<Arc<LoadShedder>>,
    /// Whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// The browser origins CORS lets in (none: CORS off).
    pub allowed_origins: AllowedOrigins,
    /// The names requests may reach the service by (`Host`).
    pub allowed_hosts: AllowedHosts,
    /// Where each request is timed and counted.
    pub metrics: HttpMetrics,
}

/// Wraps `api` and the service's other `routes` (pages outside the API,
/// at paths of their own) with its Swagger UI (`/docs`), its spec
/// (`/openapi.json`), and, from the outside in: security headers, CORS for
/// the allowed origins (if any), JSON errors, the client's address (behind
/// the trusted proxies), correlation ids, trace context, the request log
/// and its metrics, the host check, the rate limit, the body read (limited
/// in size and time), load shedding, and `Allow` on 405; plus the tokens
/// it accepts.
pub fn build_app<T: OpenApi + 'static>(
    api: T,
    routes: Route,
    title: &str,
    edges: Edges,
) -> impl Endpoint<Output = Response> + 'static {
    let Edges {
        authenticator,
        rate_limiter,
        load_shedder,
        trusted_proxies,
        allowed_origins,
        allowed_hosts,
        metrics,
    } = edges;
    let allowed_hosts = Arc::new(allowed_hosts);
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
    routes
        .nest("/", service)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .around(move |next, req| contract::allow_header(contract.clone(), next, req))
        .around(move |next, req| loadshed::shed(load_shedder.clone(), next, req))
        // Outside the shedding: a body that trickles in holds no permit.
        .around(read_body)
        // A type of its own for what is inside: each layer nests the type of
        // the one within, and the compiler gives up on a handler's future
        // nested that deep ("queries overflow the depth limit").
        .boxed()
        .around(move |next, req| ratelimit::limit(rate_limiter.clone(), next, req))
        .around(move |next, req| host::check(allowed_hosts.clone(), next, req))
        .around(move |next, req| correlate(metrics.clone(), next, req))
        .around(move |next, req| client::identify(trusted_proxies.clone(), next, req))
        .data(authenticator)
        .catch_all_error(json_errors)
        // Outside the JSON errors: poem's `Cors` turns errors from inside
        // into its own plain-text responses; its refusal (403) gets a
        // JSON body of its own just below.
        .with_if(!allowed_origins.0.is_empty(), cors(&allowed_origins))
        .catch_all_error(json_errors)
        .around(security_headers)
}

/// How long a request's body may take to arrive, once its headers have.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the whole body before the request goes on, at most
/// [`MAX_BODY_BYTES`] (413 past it) within [`BODY_READ_TIMEOUT`] (408): a
/// client that sends its body a byte at a time, or never, is turned away
/// instead of holding one of the requests in progress that load shedding
/// counts.
async fn read_body<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
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
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Err(too_large().into());
    }
    let body = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        req.take_body().into_bytes_limit(MAX_BODY_BYTES),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )
    })?
    .map_err(|_| too_large())?;
    req.set_body(body);
    next.call(req).await.map(IntoResponse::into_response)
}

/// Gives the request its correlation id (the caller's `X-Correlation-Id`,
/// or a fresh one), answers with it, logs the request in a span that names
/// the client as `client::identify` found it, and times it for `metrics`.
/// poem's own `Tracing` would log whatever `X-Forwarded-For` a client
/// sends as its address.
async fn correlate<E: Endpoint>(
    metrics: HttpMetrics,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    let id = req
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.set_data(CorrelationId(id.clone()));
    let client = req.data::<ClientAddress>().map(|client| client.0);
    let method = req.method().to_string();
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        client = client.map(tracing::field::display),
        method = %req.method(),
        uri = %req.original_uri(),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    // The caller's trace, if it sent one, continues here.
    let traceparent = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    telemetry::continue_trace(&span, traceparent);
    async move {
        let started = Instant::now();
        // An error becomes its JSON response here, so that it too carries
        // the correlation id.
        let (mut response, pattern) = match next.call(req).await {
            Ok(response) => {
                let response = response.into_response();
                tracing::info!(status = %response.status(), duration = ?started.elapsed(), "response");
                let pattern = response.data::<PathPattern>().cloned();
                (response, pattern)
            }
            Err(error) => {
                tracing::info!(status = %error.status(), error = %error, duration = ?started.elapsed(), "error");
                let pattern = error.data::<PathPattern>().cloned();
                (json_errors(error).await, pattern)
            }
        };
        metrics.record(
            &method,
            pattern.as_ref().map(|p| &*p.0),
            response.status().as_u16(),
            started.elapsed(),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowed_origin_is_spelled_as_a_browser_sends_it() {
        let parsed: AllowedOrigins = " https://shop.example, http://localhost:8080 ,"
            .parse()
            .unwrap();
        assert_eq!(parsed.0, ["https://shop.example", "http://localhost:8080"]);
        for bad in [
            "shop.example",
            "https://shop.example/",
            "https://shop.example/path",
            "https://Shop.example",
            "https://shop.example:443",
            "http://shop.example:80",
            "https://user@shop.example",
            "ftp://shop.example",
            "*",
        ] {
            let err = bad.parse::<AllowedOrigins>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
