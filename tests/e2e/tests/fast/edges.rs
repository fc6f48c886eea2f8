//! The HTTP edges across the wire: security headers on every response, and
//! CORS only for the origins `CORS_ALLOWED_ORIGINS` lists. (A 5xx without
//! the driver's text and the `/ready` cache are unit-tested in shared.)

use e2e_tests::{ADMIN_TOKEN, Stack};
use reqwest::{Method, Response};
use shared::http::server::{DOCS_CSP, PAGE_CSP};

const SHOP: &str = "https://shop.example";

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

fn assert_security_headers(what: &str, response: &Response) {
    let csp = if what == "the Swagger UI" {
        DOCS_CSP
    } else {
        PAGE_CSP
    };
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("content-security-policy", csp),
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

    // The admin console's page, whose tab keeps the admin token, runs
    // nothing but its own script (the browser test runs it under this).
    let console = get(format!("{}/admin/", stack.order)).await;
    assert_eq!(console.status(), 200);
    assert_security_headers("the admin console", &console);

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

/// A connection that sent a POST's headers, announcing a body it never
/// sends, once the service asked for that body (`100 Continue`): the
/// request has reached the body's read.
async fn body_never_sent(stack: &Stack) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = stack.order.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /api/orders HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = response_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 100"), "{answer}");
    stream
}

/// The next response head on `stream`, up to its blank line.
async fn response_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_never_arrive_hold_none_of_the_requests_in_progress_and_time_out() {
    use tokio::io::AsyncReadExt;
    let stack = Stack::start_with(&[("MAX_IN_FLIGHT_REQUESTS", "4")]).await;
    let mut slow = Vec::new();
    for _ in 0..8 {
        slow.push(body_never_sent(&stack).await);
    }
    // Twice the limit of requests in progress wait for their bodies, and a
    // request that has one is still served.
    let response = stack
        .http
        .get(format!("{}/api/orders/no-such-order", stack.order))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        404,
        "not shed: {:?}",
        response.text().await
    );

    // The body's read times out: 408, JSON, naming the wait.
    let head = response_head(&mut slow[0]).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("a sized body: {head}"));
    let mut body = vec![0u8; length];
    slow[0].read_exact(&mut body).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("did not arrive within 10 s"),
        "{body}"
    );
}

/// DNS rebinding: a page whose own name was re-pointed at the services is
/// same-origin to the browser, but its requests name its host. Those are
/// refused and write nothing; the names a client legitimately uses pass.
#[tokio::test]
async fn a_request_naming_a_host_not_allowed_is_refused_and_writes_nothing() {
    let stack = Stack::start_with(&[("ALLOWED_HOSTS", "shop.example.com")]).await;
    let product = stack.create_product(5, 0, 1.0).await;
    let order_as = |host: &'static str| {
        stack
            .http
            .post(format!("{}/api/orders", stack.order))
            .header("host", host)
            .bearer_auth(e2e_tests::customer_token("c-1"))
            .json(&serde_json::json!({
                "customerId": "c-1",
                "customerEmail": "c-1@example.com",
                "items": [{ "productId": product, "quantity": 1 }],
            }))
            .send()
    };

    let refused = order_as("rebind.attacker.example:3001").await.unwrap();
    assert_eq!(refused.status(), 400);
    assert_security_headers("a refused host", &refused);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "host_not_allowed", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("\"rebind.attacker.example:3001\""),
        "{body}"
    );
    let orders = stack
        .customer_get_json("c-1", &format!("{}/api/customers/c-1/orders", stack.order))
        .await;
    assert_eq!(orders["items"], serde_json::json!([]), "nothing written");

    for host in ["shop.example.com", "localhost:3001", "order-service:3001"] {
        let placed = order_as(host).await.unwrap();
        assert_eq!(placed.status(), 202, "as {host}");
    }
}
