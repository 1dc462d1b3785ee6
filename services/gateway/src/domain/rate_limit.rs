//! Token buckets per tenant. In memory, per gateway instance: with N instances behind a load
//! balancer a tenant gets up to N times its limit, which is the accepted trade for no shared
//! state on the request path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hcp_events::Tier;

use crate::config::{RateLimit, TierLimits};

/// A token bucket: `burst` tokens at most, refilled continuously at `per_second`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        let capacity = f64::from(limit.burst.max(1));
        Self {
            capacity,
            per_second: limit.per_second.max(0.0),
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.per_second <= 0.0 {
            return Err(Duration::from_secs(3600));
        }
        Err(Duration::from_secs_f64(
            (1.0 - self.tokens) / self.per_second,
        ))
    }
}

/// Refused by the rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a request may succeed (at least 1): the `Retry-After` value.
    pub retry_after_s: u64,
}

/// One bucket per tenant, sized by its tier.
#[derive(Debug)]
pub struct RateLimiter {
    limits: TierLimits,
    buckets: Mutex<HashMap<String, (Tier, TokenBucket)>>,
}

impl RateLimiter {
    /// A limiter with these per-tier limits.
    pub fn new(limits: TierLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Charges one request to `tenant_id`. A tenant whose tier changed gets a fresh bucket of
    /// the new size.
    pub fn check(&self, tenant_id: &str, tier: Tier, now: Instant) -> Result<(), Limited> {
        let Ok(mut buckets) = self.buckets.lock() else {
            // A panic while holding the lock: fail open rather than refuse everyone.
            return Ok(());
        };
        let entry = buckets
            .entry(tenant_id.to_owned())
            .or_insert_with(|| (tier, TokenBucket::new(self.limits.of(tier), now)));
        if entry.0 != tier {
            *entry = (tier, TokenBucket::new(self.limits.of(tier), now));
        }
        entry.1.try_take(now).map_err(|wait| Limited {
            retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_refuses_until_it_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(2.0, 3), t0);
        for _ in 0..3 {
            assert_eq!(b.try_take(t0), Ok(()));
        }
        let wait = b.try_take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.try_take(t1), Ok(()));
        assert!(b.try_take(t1).is_err());
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(limit(100.0, 2), t0);
        let later = t0 + Duration::from_secs(60);
        assert!(b.try_take(later).is_ok());
        assert!(b.try_take(later).is_ok());
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn tenants_have_their_own_buckets_and_retry_after_is_whole_seconds() {
        let limits = TierLimits {
            enterprise: limit(100.0, 100),
            pro: limit(10.0, 10),
            free: limit(0.25, 1),
        };
        let rl = RateLimiter::new(limits);
        let now = Instant::now();
        assert!(rl.check("a", Tier::Free, now).is_ok());
        assert_eq!(
            rl.check("a", Tier::Free, now),
            Err(Limited { retry_after_s: 4 })
        );
        assert!(rl.check("b", Tier::Free, now).is_ok());
        // Upgraded: a fresh, bigger bucket.
        assert!(rl.check("a", Tier::Pro, now).is_ok());
    }
}
