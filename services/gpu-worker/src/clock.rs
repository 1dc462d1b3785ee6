//! The report sequence: a strictly increasing microsecond clock. Report streams are not in the
//! event log, so their sequence is the worker's clock; the resource-manager's per-stream
//! dedup then survives worker restarts (the clock has moved on).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch, never repeating and never going back within a process.
#[derive(Debug, Default)]
pub struct MicrosClock {
    last: AtomicI64,
}

impl MicrosClock {
    /// A clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next sequence: the wall clock in µs, or one more than the last if that is later.
    pub fn next(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(1)
            .max(1);
        let prev = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        now.max(prev + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_strictly_increase_even_within_one_microsecond() {
        let c = MicrosClock::new();
        let seqs: Vec<i64> = (0..10_000).map(|_| c.next()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        assert!(seqs[0] > 1_600_000_000_000_000, "a wall-clock time in µs");
    }
}
