//! Per-key rate limits: a token bucket per key, in each gateway.
//!
//! A key with `rate_per_sec` r and `burst` b may send b requests at once, then r per second.
//! Buckets live in the gateway's memory, so each gateway allows a key its full rate: behind a
//! balancer that spreads a key's requests over N gateways, the key gets between r and N × r.
//! (The in-flight cap, which must hold exactly, is checked in the store instead.)

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use uuid::Uuid;

/// Buckets beyond this many are dropped (oldest use first is not tracked: all are dropped and
/// refill full), so keys that come and go cannot grow the map without bound.
const MAX_BUCKETS: usize = 100_000;

/// A key's bucket after a request: what the `RateLimit` headers report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// The burst (the bucket's size).
    pub burst: u32,
    /// Requests per second.
    pub rate: f64,
    /// Whole requests left now.
    pub remaining: u32,
    /// Until a refused request may be retried (zero when it was allowed).
    pub retry_after: Duration,
}

impl Quota {
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the burst, per the time the
    /// bucket takes to refill from empty.
    #[must_use]
    pub fn policy_header(&self) -> String {
        let window = (f64::from(self.burst) / self.rate).ceil().max(1.0);
        format!("\"default\";q={};w={window}", self.burst)
    }

    /// `RateLimit`: what is left, and seconds until the next request is allowed (when none
    /// is left) or until the bucket is full again.
    #[must_use]
    pub fn header(&self) -> String {
        let missing = f64::from(self.burst - self.remaining.min(self.burst));
        let reset = if self.remaining == 0 {
            self.retry_after_secs()
        } else {
            secs_up(missing / self.rate)
        };
        format!("\"default\";r={};t={reset}", self.remaining)
    }

    /// Whole seconds for `Retry-After` (at least 1).
    #[must_use]
    pub fn retry_after_secs(&self) -> u64 {
        secs_up(self.retry_after.as_secs_f64()).max(1)
    }
}

fn secs_up(secs: f64) -> u64 {
    // Saturating float-to-int cast of a small non-negative number.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = secs.ceil().max(0.0) as u64;
    whole
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Every key's bucket in this gateway.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

impl RateLimiter {
    /// Takes one request from key `id`'s bucket (`rate` per second, `burst` deep): `Ok` with
    /// what is left, or `Err` with when to retry.
    pub fn take(&self, id: Uuid, rate: f64, burst: u32) -> Result<Quota, Quota> {
        self.take_at(id, rate, burst, Instant::now())
    }

    fn take_at(&self, id: Uuid, rate: f64, burst: u32, now: Instant) -> Result<Quota, Quota> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&id) {
            buckets.clear();
        }
        let size = f64::from(burst);
        let bucket = buckets.entry(id).or_insert(Bucket {
            tokens: size,
            at: now,
        });
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refilled).min(size);
        bucket.at = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        // Whole tokens: a small non-negative number no larger than the burst.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let remaining = bucket.tokens.floor() as u32;
        let quota = Quota {
            burst,
            rate,
            remaining,
            retry_after: Duration::ZERO,
        };
        if allowed {
            return Ok(quota);
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
        Err(Quota {
            retry_after: wait,
            ..quota
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::default();
        let id = Uuid::now_v7();
        let start = Instant::now();
        for left in (0..5).rev() {
            assert_eq!(
                limiter.take_at(id, 5.0, 5, start).map(|q| q.remaining),
                Ok(left)
            );
        }
        let refused = limiter.take_at(id, 5.0, 5, start).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(200));
        assert_eq!(refused.retry_after_secs(), 1);
        assert_eq!(refused.policy_header(), "\"default\";q=5;w=1");
        assert_eq!(refused.header(), "\"default\";r=0;t=1");
        let later = start + Duration::from_millis(200);
        assert!(limiter.take_at(id, 5.0, 5, later).is_ok());
        assert!(limiter.take_at(id, 5.0, 5, later).is_err());
        let full = start + Duration::from_secs(10);
        let quota = limiter.take_at(id, 5.0, 5, full).unwrap();
        assert_eq!(
            (quota.remaining, quota.header()),
            (4, "\"default\";r=4;t=1".into())
        );
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(limiter.take_at(a, 1.0, 1, now).is_ok());
        assert!(limiter.take_at(a, 1.0, 1, now).is_err());
        assert!(limiter.take_at(b, 1.0, 1, now).is_ok());
    }
}
