//! Per client address rate limiting (governor's GCRA), on every route but
//! the probes: a load balancer polling `/ready` must never be refused. The
//! address is the client's as `client::identify` found it, so behind a
//! proxy each client has its own bucket.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use poem::{Endpoint, IntoResponse, Request, Response, http::StatusCode};

use super::{ApiError, ClientAddress};

/// Paths that are never limited.
pub(crate) const UNLIMITED_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];
/// Every this many checks, forget the addresses whose bucket is full again,
/// so the map does not grow with every client ever seen.
const PRUNE_EVERY: u64 = 4096;

/// `RATE_LIMIT_PER_SECOND` and `RATE_LIMIT_BURST`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// The limiter of one service, and how many requests it refused.
pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
    refused: AtomicU64,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Arc<Self> {
        Arc::new(RateLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(limit.per_second).allow_burst(limit.burst),
            ),
            checks: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// `Err(seconds to wait)` when `address` is over its limit.
    fn check(&self, address: IpAddr) -> Result<(), u64> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&address).map_err(|not_until| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// The `around` middleware; `None` when limiting is off.
pub async fn limit<E: Endpoint>(
    limiter: Option<Arc<RateLimiter>>,
    next: E,
    req: Request,
) -> poem::Result<Response> {
    // Behind trusted proxies, the client they name (see `client`).
    let address = req.data::<ClientAddress>().map(|client| client.0);
    if let Some(limiter) = limiter
        && let Some(address) = address
        && !UNLIMITED_PATHS.contains(&req.uri().path())
        && let Err(wait) = limiter.check(address)
    {
        return Ok(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests from {address}; retry in {wait} s"),
        )
        .retry_after(wait));
    }
    next.call(req).await.map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_passes_then_the_address_waits_and_others_do_not() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check(a), Ok(()));
        }
        assert_eq!(limiter.check(a), Err(1));
        assert_eq!(limiter.check(b), Ok(()));
        assert_eq!(limiter.refused(), 1);
    }
}
