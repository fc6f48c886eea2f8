//! Load shedding: a bound on requests in progress. Past it a request gets
//! 503 with `Retry-After` at once instead of queueing for a database
//! connection. Measured at 1,000 orders/s against a stack that carries about
//! 150: unbounded admission let POST latency grow to seconds, transactions
//! ran past their deadline, the saga's own consumers waited behind the
//! queue of requests, and finished orders fell to 3/s. With the bound, what
//! is admitted finishes at the rate the stack carries and the rest is told
//! when to come back.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use poem::{Endpoint, IntoResponse, Request, Response, error::ResponseError};
use tokio::sync::Semaphore;

use super::{ApiError, ratelimit::UNLIMITED_PATHS};

pub struct LoadShedder {
    permits: Arc<Semaphore>,
    limit: usize,
    shed: AtomicU64,
}

impl LoadShedder {
    pub fn new(max_in_flight: usize) -> Arc<Self> {
        Arc::new(LoadShedder {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            limit: max_in_flight,
            shed: AtomicU64::new(0),
        })
    }

    /// Requests refused so far.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

/// The `around` middleware; `None` when shedding is off. The probes are
/// never shed, like they are never rate limited.
pub async fn shed<E: Endpoint>(
    shedder: Option<Arc<LoadShedder>>,
    next: E,
    req: Request,
) -> poem::Result<Response> {
    // Held until the response is built; `None` for the probes and when off.
    let _permit = match shedder {
        Some(shedder) if !UNLIMITED_PATHS.contains(&req.uri().path()) => {
            match shedder.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    shedder.shed.fetch_add(1, Ordering::Relaxed);
                    return Ok(ApiError::overloaded(format!(
                        "{} requests are already in progress; retry in 1 s",
                        shedder.limit
                    ))
                    .as_response());
                }
            }
        }
        _ => None,
    };
    next.call(req).await.map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::{
        EndpointExt, Route, handler,
        http::{Method, StatusCode, header::RETRY_AFTER},
    };
    use tokio::sync::{mpsc, oneshot};

    fn request(path: &str) -> Request {
        Request::builder()
            .method(Method::GET)
            .uri(path.parse().unwrap())
            .finish()
    }

    #[tokio::test]
    async fn past_the_bound_a_request_gets_503_with_retry_after_but_probes_pass() {
        let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
        let (release_tx, release) = oneshot::channel::<()>();
        let release = std::sync::Mutex::new(Some(release));
        let shedder = LoadShedder::new(1);

        #[handler]
        fn ready() -> &'static str {
            "ready"
        }
        let slow = poem::endpoint::make(move |_| {
            let entered_tx = entered_tx.clone();
            let release = release.lock().unwrap().take();
            async move {
                entered_tx.send(()).unwrap();
                if let Some(release) = release {
                    let _ = release.await;
                }
                "done"
            }
        });
        let app = Arc::new(Route::new().at("/slow", slow).at("/ready", ready).around({
            let shedder = shedder.clone();
            move |next, req| shed(Some(shedder.clone()), next, req)
        }));

        let first = tokio::spawn({
            let app = app.clone();
            async move { app.call(request("/slow")).await.unwrap() }
        });
        entered.recv().await.unwrap();

        let refused = app.call(request("/slow")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[RETRY_AFTER], "1");
        let body = refused.into_body().into_string().await.unwrap();
        assert!(body.contains("\"overloaded\""), "{body}");
        assert_eq!(shedder.shed(), 1);

        let probe = app.call(request("/ready")).await.unwrap();
        assert_eq!(probe.status(), StatusCode::OK, "probes are never shed");

        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().status(), StatusCode::OK);
        let again = app.call(request("/slow")).await.unwrap();
        assert_eq!(again.status(), StatusCode::OK, "the permit came back");
    }
}
