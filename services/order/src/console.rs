//! The admin console: a page in the browser at `/admin/` over the admin
//! APIs of all three services. Its files (`services/order/console/`) are
//! built into the binary, so nothing else is needed at run time. The page
//! talks to this origin only (no CORS): it reaches every other service of
//! the registry (the inventory, the notification service) through the
//! forwarder here, `/admin/services/{name}/{path}`, which sends the request
//! on to that service's configured base URL and nowhere else.

use std::{sync::Arc, time::Duration};

use poem::{
    Body, EndpointExt, Request, Response, Route,
    error::ResponseError,
    get, handler,
    http::{HeaderValue, Method, StatusCode, header},
    web::{Data, Redirect},
};
use reqwest::Url;
use serde::Serialize;
use shared::{
    config::{ConfigError, Env},
    http::{ApiError, CorrelationId, require_admin},
};

use crate::Peer;

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/console.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");

/// Where the forwarded routes live; the service's name and its path follow.
const FORWARD_PREFIX: &str = "/admin/services/";

/// How long a forwarded request may take before the console gets a 502.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// The links the console shows beside its own data and the services' Swagger
/// UIs ([`Peer::docs`]), as the operator's browser reaches them. Each
/// variable is a URL, or `none` for no link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleLinks {
    /// `RABBITMQ_UI_URL` [`http://127.0.0.1:15672`]: RabbitMQ's management UI.
    pub rabbitmq_ui: Option<String>,
    /// `MAILDEV_UI_URL` [`http://127.0.0.1:1080`]: MailDev, where a
    /// development stack's emails land.
    pub maildev_ui: Option<String>,
}

impl ConsoleLinks {
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let link = |name, default| {
            let value = env.checked(name, default, link_or_none)?;
            Ok((value != "none").then_some(value))
        };
        Ok(ConsoleLinks {
            rabbitmq_ui: link("RABBITMQ_UI_URL", "http://127.0.0.1:15672")?,
            maildev_ui: link("MAILDEV_UI_URL", "http://127.0.0.1:1080")?,
        })
    }
}

/// An http(s) URL, or `none`.
pub(crate) fn link_or_none(value: &str) -> Result<(), String> {
    const EXPECTED: &str = "must be an http:// or https:// URL, or none for no link";
    if value == "none" {
        return Ok(());
    }
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(()),
        Ok(_) => Err(EXPECTED.to_string()),
        Err(e) => Err(format!("{e}: {EXPECTED}")),
    }
}

/// The console's page, its settings and the forwarder, at their own paths
/// beside the API (see `ServiceCore::with_routes`).
pub fn routes(peers: &[Peer], links: &ConsoleLinks) -> anyhow::Result<Route> {
    let forwarder = Arc::new(Forwarder {
        http: reqwest::Client::builder()
            .timeout(UPSTREAM_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            // A redirect is answered to the console as it is, never
            // followed: the forwarder goes nowhere but the peers' base URLs.
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        bases: peers
            .iter()
            .map(|peer| Ok((peer.name, Url::parse(&peer.url)?)))
            .collect::<anyhow::Result<_>>()?,
    });
    let settings = Arc::new(
        serde_json::to_string(&ConsoleSettings::of(peers, links))
            .expect("the console's settings serialize"),
    );
    Ok(Route::new()
        .at("/admin", get(to_console))
        .at("/admin/", get(page("text/html; charset=utf-8", INDEX_HTML)))
        .at(
            "/admin/console.js",
            get(page("text/javascript; charset=utf-8", CONSOLE_JS)),
        )
        .at(
            "/admin/console.css",
            get(page("text/css; charset=utf-8", CONSOLE_CSS)),
        )
        .at(
            "/admin/console/config.json",
            get(poem::endpoint::make_sync(move |_| {
                Response::builder()
                    .content_type("application/json; charset=utf-8")
                    .body(settings.as_str().to_owned())
            })),
        )
        .at("/admin/services/:service/*path", forward.data(forwarder)))
}

#[handler]
fn to_console() -> Redirect {
    Redirect::see_other("/admin/")
}

fn page(content_type: &'static str, body: &'static str) -> impl poem::Endpoint<Output = Response> {
    poem::endpoint::make_sync(move |_| Response::builder().content_type(content_type).body(body))
}

/// What the page needs to know besides the data: where each service's API
/// is from this origin, and the links to show. No secrets.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsoleSettings {
    services: Vec<ServiceEntry>,
    links: Vec<Link>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceEntry {
    /// Its registry name: `order`, `inventory`, ...
    name: &'static str,
    /// Prefix of the service's routes from this origin: empty for the order
    /// service itself, the forwarder's path for the others.
    api: String,
    /// Its Swagger UI, if the browser can reach it.
    docs: Option<String>,
}

#[derive(Debug, Serialize)]
struct Link {
    label: &'static str,
    url: String,
}

impl ConsoleSettings {
    fn of(peers: &[Peer], links: &ConsoleLinks) -> Self {
        let this = ServiceEntry {
            name: "order",
            api: String::new(),
            docs: Some("/docs".into()),
        };
        let forwarded = peers.iter().map(|peer| ServiceEntry {
            name: peer.name,
            api: format!("{FORWARD_PREFIX}{}", peer.name),
            docs: peer.docs.clone(),
        });
        ConsoleSettings {
            services: std::iter::once(this).chain(forwarded).collect(),
            links: [
                ("RabbitMQ management", &links.rabbitmq_ui),
                ("MailDev", &links.maildev_ui),
            ]
            .into_iter()
            .filter_map(|(label, url)| url.clone().map(|url| Link { label, url }))
            .collect(),
        }
    }
}

/// Which service, base URL and URL a request to the forwarder goes to, from
/// its path and query: only the peers' configured base URLs (`bases`, by
/// name), only their API, admin and probe routes, and no segment that could
/// climb out of the base path.
pub fn upstream_url<'a>(
    path: &str,
    query: Option<&str>,
    bases: &'a [(&'static str, Url)],
) -> Result<(&'static str, &'a Url, Url), ApiError> {
    let rest = path.strip_prefix(FORWARD_PREFIX).unwrap_or_default();
    let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let Some((upstream, base)) = bases.iter().find(|(peer, _)| *peer == name) else {
        let names: Vec<&str> = bases.iter().map(|(peer, _)| *peer).collect();
        return Err(ApiError::not_found(format!(
            "no service {name:?} behind the console: it reaches {}",
            names.join(", ")
        )));
    };
    if !forwardable(rest) {
        return Err(ApiError::not_found(format!(
            "/{rest} is not forwarded to the {upstream} service: only its /api/, /admin/, \
             /ready, /health and /metrics routes are"
        )));
    }
    let mut url = base.clone();
    url.set_path(&format!("{}/{rest}", base.path().trim_end_matches('/')));
    url.set_query(query.filter(|q| !q.is_empty()));
    url.set_fragment(None);
    Ok((upstream, base, url))
}

/// Whether the console may reach `path` (below the service's base URL).
fn forwardable(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    let allowed = matches!(
        segments.as_slice(),
        ["ready" | "health" | "metrics"] | ["api" | "admin", _, ..]
    );
    allowed && segments.iter().all(|segment| plain_segment(segment))
}

/// Not empty, not `.` or `..` (spelled plainly or percent-encoded, which
/// URL parsers treat alike), no encoded slash or backslash, and only
/// characters a path segment needs no escaping for.
fn plain_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    let dots = lower.replace("%2e", ".");
    !segment.is_empty()
        && dots != "."
        && dots != ".."
        && !lower.contains("%2f")
        && !lower.contains("%5c")
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%:@!$&'()*+,;=".contains(&b))
}

struct Forwarder {
    http: reqwest::Client,
    /// Each peer's name and base URL.
    bases: Vec<(&'static str, Url)>,
}

/// Headers the console sends that the upstream needs.
const FORWARDED_REQUEST_HEADERS: [header::HeaderName; 3] =
    [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT];
/// Headers of the upstream's answer the console reads.
const FORWARDED_RESPONSE_HEADERS: [header::HeaderName; 3] =
    [header::CONTENT_TYPE, header::RETRY_AFTER, header::ALLOW];

/// Sends the request on to the service its path names, with its method,
/// query, body, `Authorization`, `Content-Type` and correlation id, and
/// answers with the service's status and body; 502 naming the service when
/// it cannot be reached. The caller must hold an admin token here already,
/// so that the forwarder opens nothing the services' own routes would not.
#[handler]
async fn forward(
    req: &Request,
    body: Body,
    Data(forwarder): Data<&Arc<Forwarder>>,
) -> poem::Result<Response> {
    require_admin(req)?;
    if ![Method::GET, Method::HEAD, Method::POST, Method::PUT].contains(req.method()) {
        let mut response = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "the console forwards GET, HEAD, POST and PUT, not {}",
                req.method()
            ),
        )
        .as_response();
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT"),
        );
        return Ok(response);
    }
    let (upstream, base, url) =
        upstream_url(req.uri().path(), req.uri().query(), &forwarder.bases)?;
    let mut request = forwarder.http.request(req.method().clone(), url);
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = req.headers().get(&name) {
            request = request.header(name, value.clone());
        }
    }
    if let Some(id) = req.data::<CorrelationId>() {
        request = request.header(shared::http::server::CORRELATION_HEADER, id.0.as_str());
    }
    let body = body.into_bytes().await?;
    if !body.is_empty() {
        request = request.body(body);
    }
    let unreachable = |error: reqwest::Error| {
        let why = if error.is_timeout() {
            format!("no answer within {} s", UPSTREAM_TIMEOUT.as_secs())
        } else if error.is_connect() {
            "could not connect".to_string()
        } else {
            error.to_string()
        };
        tracing::warn!(service = upstream, %base, %error, "the console's forwarded request failed");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!("the {upstream} service at {base} could not be reached: {why}"),
        )
    };
    let answer = request.send().await.map_err(unreachable)?;
    let mut response = Response::builder().status(answer.status());
    for name in FORWARDED_RESPONSE_HEADERS {
        if let Some(value) = answer.headers().get(&name) {
            response = response.header(name, value.clone());
        }
    }
    let body = answer.bytes().await.map_err(unreachable)?;
    Ok(response.body(body))
}

#[cfg(test)]
mod tests {
    use poem::Endpoint;
    use shared::{config::Secret, http::Authenticator};

    use super::*;
    use crate::Config;

    fn bases() -> [(&'static str, Url); 2] {
        [
            (
                "inventory",
                Url::parse("http://inventory.internal:3002").unwrap(),
            ),
            (
                "notification",
                Url::parse("http://10.0.0.7:3003/notification/").unwrap(),
            ),
        ]
    }

    fn target(path: &str, query: Option<&str>) -> Result<String, ApiError> {
        upstream_url(path, query, &bases()).map(|(_, _, url)| url.to_string())
    }

    #[test]
    fn the_forwarder_reaches_the_two_services_api_admin_and_probe_routes() {
        for (path, query, expected) in [
            (
                "/admin/services/inventory/api/products/low-stock",
                Some("limit=5"),
                "http://inventory.internal:3002/api/products/low-stock?limit=5",
            ),
            (
                "/admin/services/notification/admin/dead-letters/0193-ab/replay",
                None,
                "http://10.0.0.7:3003/notification/admin/dead-letters/0193-ab/replay",
            ),
            (
                "/admin/services/notification/api/notifications/status/FAILED",
                Some("cursor=abc%3D&limit=20"),
                "http://10.0.0.7:3003/notification/api/notifications/status/FAILED?cursor=abc%3D&limit=20",
            ),
            (
                "/admin/services/inventory/ready",
                Some(""),
                "http://inventory.internal:3002/ready",
            ),
            (
                "/admin/services/inventory/metrics",
                None,
                "http://inventory.internal:3002/metrics",
            ),
        ] {
            assert_eq!(target(path, query).unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn the_forwarder_refuses_other_services_other_routes_and_paths_that_climb() {
        for path in [
            "/admin/services/order/api/orders",
            "/admin/services/payments/api/x",
            "/admin/services//api/products",
            "/admin/services/inventory",
            "/admin/services/inventory/",
            "/admin/services/inventory/docs",
            "/admin/services/inventory/openapi.json",
            "/admin/services/inventory/api",
            "/admin/services/inventory/api/",
            "/admin/services/inventory/ready/x",
            "/admin/services/inventory/api/../../etc/passwd",
            "/admin/services/inventory/api/%2e%2e/x",
            "/admin/services/inventory/api/.%2E/x",
            "/admin/services/inventory/api/./x",
            "/admin/services/inventory/api//x",
            "/admin/services/inventory/api/a%2Fb",
            "/admin/services/inventory/api/a%5cb",
            "/admin/services/inventory/api/a\\b",
            "/admin/services/inventory/api/x#frag",
            "/admin/services/inventory/api/x?y",
        ] {
            let refused = target(path, None).unwrap_err();
            assert_eq!(refused.status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn whatever_the_path_and_query_the_request_stays_on_the_configured_host() {
        let [(_, inventory), _] = bases();
        for (path, query) in [
            ("/admin/services/inventory/api/@evil.example", None),
            ("/admin/services/inventory/api/x:80", Some("@evil.example")),
            ("/admin/services/inventory/api/x", Some("//evil.example/")),
            ("/admin/services/inventory/api/x", Some("#http://evil/")),
        ] {
            let Ok(url) = target(path, query) else {
                continue;
            };
            let url = Url::parse(&url).unwrap();
            assert_eq!(
                (url.scheme(), url.host_str(), url.port()),
                (inventory.scheme(), inventory.host_str(), inventory.port()),
                "{path} {query:?}"
            );
            assert!(url.path().starts_with("/api/"), "{url}");
        }
    }

    #[test]
    fn a_link_is_an_http_url_or_none() {
        let env = |pairs: Vec<(&'static str, &'static str)>| {
            ConsoleLinks::from_lookup(&Env::from_lookup(move |name| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }))
        };
        let links = env(vec![]).unwrap();
        assert_eq!(links.rabbitmq_ui.as_deref(), Some("http://127.0.0.1:15672"));
        assert_eq!(links.maildev_ui.as_deref(), Some("http://127.0.0.1:1080"));
        let links = env(vec![("MAILDEV_UI_URL", "none")]).unwrap();
        assert_eq!(links.maildev_ui, None);
        let peers = Config::from_lookup(&Env::from_lookup(|_| None))
            .unwrap()
            .peers;
        let settings = serde_json::to_value(ConsoleSettings::of(&peers, &links)).unwrap();
        assert_eq!(settings["links"].as_array().unwrap().len(), 1, "{settings}");
        let services: Vec<(&str, &str, &str)> = settings["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let field = |name| s[name].as_str().unwrap();
                (field("name"), field("api"), field("docs"))
            })
            .collect();
        assert_eq!(
            services,
            [
                ("order", "", "/docs"),
                (
                    "inventory",
                    "/admin/services/inventory",
                    "http://127.0.0.1:3002/docs"
                ),
                (
                    "notification",
                    "/admin/services/notification",
                    "http://127.0.0.1:3003/docs"
                ),
            ]
        );
        for bad in ["javascript:alert(1)", "127.0.0.1:15672", ""] {
            let err = env(vec![("RABBITMQ_UI_URL", bad)]);
            if bad.is_empty() {
                // Empty is unset in the process environment; a map says so itself.
                continue;
            }
            assert_eq!(err.unwrap_err().name, "RABBITMQ_UI_URL", "{bad}");
        }
    }

    /// The console's routes beside a stand-in for the OpenAPI service,
    /// nested at "/" as `build_app` nests it: poem's router must send the
    /// API's `/admin/...` routes to the API and the console's to the console.
    fn app() -> impl poem::Endpoint {
        let config = Config::from_lookup(&Env::from_lookup(|name| match name {
            // Nothing listens on port 9 (discard): the forwarder's 502.
            "INVENTORY_URL" => Some("http://127.0.0.1:9".to_string()),
            _ => None,
        }))
        .unwrap();
        let api = Route::new()
            .at(
                "/admin/dead-letters",
                get(poem::endpoint::make_sync(|_| "api: dead letters")),
            )
            .at(
                "/admin/sagas/stuck",
                get(poem::endpoint::make_sync(|_| "api: stuck")),
            );
        routes(&config.peers, &config.console)
            .unwrap()
            .nest("/", api)
            .data(Authenticator::new(vec![Secret::new("admin-token")], None))
    }

    /// `method` `uri` with `token`: the status, a header's value and the body.
    async fn send(
        method: Method,
        uri: &str,
        token: Option<&str>,
        header: &str,
    ) -> (StatusCode, Option<String>, String) {
        let mut request = Request::builder().method(method).uri_str(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = app().get_response(request.finish()).await;
        let status = response.status();
        let value = response
            .headers()
            .get(header)
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.into_body().into_string().await.unwrap();
        (status, value, body)
    }

    #[tokio::test]
    async fn the_console_and_the_apis_admin_routes_live_side_by_side() {
        let (status, content_type, body) = send(Method::GET, "/admin/", None, "content-type").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("text/html; charset=utf-8"));
        assert!(body.contains("/admin/console.js"), "{body}");
        for (path, expected) in [
            ("/admin/console.js", "text/javascript; charset=utf-8"),
            ("/admin/console.css", "text/css; charset=utf-8"),
            (
                "/admin/console/config.json",
                "application/json; charset=utf-8",
            ),
        ] {
            let (status, content_type, _) = send(Method::GET, path, None, "content-type").await;
            assert_eq!(
                (status, content_type.as_deref()),
                (StatusCode::OK, Some(expected)),
                "{path}"
            );
        }
        for (path, expected) in [
            ("/admin/dead-letters", "api: dead letters"),
            ("/admin/sagas/stuck", "api: stuck"),
        ] {
            let (status, _, body) = send(Method::GET, path, None, "content-type").await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, expected),
                "{path}"
            );
        }
        let (status, location, _) = send(Method::GET, "/admin", None, "location").await;
        assert_eq!(
            (status, location.as_deref()),
            (StatusCode::SEE_OTHER, Some("/admin/"))
        );
    }

    #[tokio::test]
    async fn the_forwarder_wants_the_admin_token_and_names_a_service_it_cannot_reach() {
        let url = "/admin/services/inventory/ready";
        for token in [None, Some("wrong")] {
            let (status, _, body) = send(Method::GET, url, token, "allow").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        }
        let (status, _, body) = send(Method::GET, url, Some("admin-token"), "allow").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "bad_gateway");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("the inventory service at http://127.0.0.1:9/ could not be reached"),
            "{message}"
        );
        let (status, allow, _) = send(Method::DELETE, url, Some("admin-token"), "allow").await;
        assert_eq!(
            (status, allow.as_deref()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("GET, HEAD, POST, PUT"))
        );
        let (status, _, _) = send(
            Method::GET,
            "/admin/services/inventory/docs",
            Some("admin-token"),
            "allow",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
