//! The HTTP edges across the wire: security headers on every response, and
//! CORS only for the origins `CORS_ALLOWED_ORIGINS` lists. (A 5xx without
//! the driver's text and the `/ready` cache are unit-tested in shared.)

use e2e_tests::{ADMIN_TOKEN, Stack};
use reqwest::{Method, Response};

const SHOP: &str = "https://shop.example";

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

fn assert_security_headers(what: &str, response: &Response) {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("content-security-policy", "frame-ancestors 'none'"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(header(response, name), Some(value), "{name} on {what}");
    }
}

/// `OPTIONS /api/orders` as a browser sends it before a cross-origin POST.
async fn preflight(stack: &Stack, origin: &str) -> Response {
    stack
        .http
        .request(Method::OPTIONS, format!("{}/api/orders", stack.order))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_the_docs_still_render() {
    let stack = Stack::start().await;
    let get = |url: String| {
        let request = stack.http.get(url).bearer_auth(ADMIN_TOKEN);
        async move { request.send().await.unwrap() }
    };

    let api = get(format!("{}/api/products/category/x", stack.inventory)).await;
    assert_eq!(api.status(), 200);
    assert_security_headers("an API answer", &api);

    let missing = get(format!(
        "{}/api/orders/{}",
        stack.order,
        uuid::Uuid::new_v4()
    ))
    .await;
    assert_eq!(missing.status(), 404);
    assert_security_headers("a 404", &missing);
    assert!(
        header(&missing, "x-correlation-id").is_some(),
        "an error has its correlation id too"
    );
    let unauthorized = stack
        .http
        .get(format!("{}/api/orders/status/PENDING", stack.order))
        .header("x-correlation-id", "edges-401")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(header(&unauthorized, "x-correlation-id"), Some("edges-401"));
    let no_route = get(format!("{}/no-such-route", stack.order)).await;
    assert_eq!(no_route.status(), 404);
    assert_security_headers("an unknown route", &no_route);

    let docs = get(format!("{}/docs", stack.notification)).await;
    assert_eq!(docs.status(), 200);
    assert_security_headers("the Swagger UI", &docs);
    assert!(docs.text().await.unwrap().contains("SwaggerUIBundle({"));

    for path in ["/openapi.json", "/health", "/ready"] {
        let response = get(format!("{}{path}", stack.order)).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_security_headers(path, &response);
    }
}

#[tokio::test]
async fn without_allowed_origins_a_preflight_gets_no_cors_headers() {
    let stack = Stack::start().await;

    // What any OPTIONS gets: 405, naming the methods the path has.
    let response = preflight(&stack, SHOP).await;
    assert_eq!(response.status(), 405);
    assert_eq!(header(&response, "allow"), Some("POST"));
    assert_eq!(header(&response, "access-control-allow-origin"), None);

    let response = stack
        .http
        .get(format!("{}/health", stack.order))
        .header("origin", SHOP)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn a_listed_origin_may_call_the_api_from_a_browser_and_another_may_not() {
    let stack = Stack::start_with(&[("CORS_ALLOWED_ORIGINS", SHOP)]).await;

    let allowed = preflight(&stack, SHOP).await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(header(&allowed, "access-control-allow-origin"), Some(SHOP));
    let methods = header(&allowed, "access-control-allow-methods").unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let headers = header(&allowed, "access-control-allow-headers").unwrap();
    for name in [
        "authorization",
        "content-type",
        "idempotency-key",
        "x-correlation-id",
    ] {
        assert!(headers.contains(name), "{name} not in {headers}");
    }
    assert_security_headers("a preflight", &allowed);

    let refused = preflight(&stack, "https://evil.example").await;
    assert_eq!(refused.status(), 403);
    assert_eq!(header(&refused, "access-control-allow-origin"), None);
    assert_security_headers("a refused preflight", &refused);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");

    let simple = stack
        .http
        .get(format!("{}/api/products/category/x", stack.inventory))
        .header("origin", SHOP)
        .send()
        .await
        .unwrap();
    assert_eq!(simple.status(), 200);
    assert_eq!(header(&simple, "access-control-allow-origin"), Some(SHOP));
    let exposed = header(&simple, "access-control-expose-headers").unwrap();
    for name in ["x-correlation-id", "location", "retry-after"] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }
}
