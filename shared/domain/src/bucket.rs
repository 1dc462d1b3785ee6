//! A token bucket: at most `capacity` actions in a burst, refilled at `per_minute`. Time is
//! passed in. The router limits preemptions with one, so a flood of real-time work cannot make
//! it thrash the batch fleet.

use time::OffsetDateTime;

/// A token bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: OffsetDateTime,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilled at `per_minute` tokens a minute.
    pub fn new(capacity: u32, per_minute: f64, now: OffsetDateTime) -> Self {
        Self {
            capacity: f64::from(capacity),
            per_second: (per_minute / 60.0).max(0.0),
            tokens: f64::from(capacity),
            updated: now,
        }
    }

    fn refill(&mut self, now: OffsetDateTime) {
        let elapsed = (now - self.updated).as_seconds_f64();
        if elapsed > 0.0 {
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
            self.updated = now;
        }
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: OffsetDateTime) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Takes `n` tokens if all of them are there; otherwise takes none.
    pub fn try_take(&mut self, n: u32, now: OffsetDateTime) -> bool {
        self.refill(now);
        let n = f64::from(n);
        // A tiny tolerance so that exact refills (e.g. 1 token after 60/per_minute s) count.
        if self.tokens + 1e-9 >= n {
            self.tokens = (self.tokens - n).max(0.0);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use time::Duration;

    const T0: OffsetDateTime = datetime!(2026-11-23 12:00 UTC);

    #[test]
    fn a_burst_is_capped_then_tokens_come_back_at_the_rate() {
        let mut b = TokenBucket::new(3, 6.0, T0); // one token every 10 s
        assert!(b.try_take(1, T0));
        assert!(b.try_take(2, T0));
        assert!(!b.try_take(1, T0));
        assert!(!b.try_take(1, T0 + Duration::seconds(9)));
        assert!(b.try_take(1, T0 + Duration::seconds(10)));
        assert!(!b.try_take(1, T0 + Duration::seconds(10)));
    }

    #[test]
    fn it_never_holds_more_than_its_capacity_and_takes_all_or_nothing() {
        let mut b = TokenBucket::new(2, 60.0, T0);
        let later = T0 + Duration::hours(1);
        assert_eq!(b.available(later), 2.0);
        assert!(!b.try_take(3, later));
        assert_eq!(b.available(later), 2.0);
        assert!(b.try_take(2, later));
    }

    #[test]
    fn a_zero_rate_never_refills() {
        let mut b = TokenBucket::new(1, 0.0, T0);
        assert!(b.try_take(1, T0));
        assert!(!b.try_take(1, T0 + Duration::days(1)));
    }
}
