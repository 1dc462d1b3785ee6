//! Keys recently seen, so that a tenant's requests do not each look its key up in PostgreSQL
//! (a round trip on every request's path, and one statement per request under load). Only
//! keys found are remembered, each for a fixed time from its lookup: a key created is usable
//! at once, and a key revoked in the database (`api_keys.revoked_at`) is refused by every
//! gateway within that time. Bounded: when full, it starts over empty.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Found keys (by SHA-256) and what they resolved to, each until its expiry.
#[derive(Debug)]
pub struct KeyCache<T> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<[u8; 32], (T, Instant)>,
}

impl<T: Clone> KeyCache<T> {
    /// Remembers keys for `ttl` (zero: never), at most `capacity` at a time.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: HashMap::new(),
        }
    }

    /// What `hash` resolved to, if looked up less than the time to live before `now`.
    pub fn get(&self, hash: &[u8; 32], now: Instant) -> Option<T> {
        self.entries
            .get(hash)
            .filter(|(_, expires)| now < *expires)
            .map(|(value, _)| value.clone())
    }

    /// Remembers that `hash` resolved to `value` at `now`.
    pub fn put(&mut self, hash: [u8; 32], value: T, now: Instant) {
        let Some(expires) = now.checked_add(self.ttl) else {
            return;
        };
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&hash) {
            self.entries.retain(|_, (_, expires)| now < *expires);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(hash, (value, expires));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_found_key_is_remembered_for_its_time_to_live_and_no_longer() {
        let t0 = Instant::now();
        let mut c = KeyCache::new(5 * S, 10);
        assert_eq!(c.get(&[1; 32], t0), None);
        c.put([1; 32], "tenant-a", t0);
        assert_eq!(c.get(&[1; 32], t0 + 4 * S), Some("tenant-a"));
        assert_eq!(
            c.get(&[1; 32], t0 + 5 * S),
            None,
            "expired: looked up again"
        );
        assert_eq!(c.get(&[2; 32], t0), None);
    }

    #[test]
    fn it_stays_within_its_capacity_dropping_expired_keys_first() {
        let t0 = Instant::now();
        let mut c = KeyCache::new(5 * S, 2);
        c.put([1; 32], 1, t0);
        c.put([2; 32], 2, t0 + 3 * S);
        // Full: the expired first key makes room, the live second stays.
        c.put([3; 32], 3, t0 + 6 * S);
        assert_eq!(c.get(&[2; 32], t0 + 6 * S), Some(2));
        assert_eq!(c.get(&[3; 32], t0 + 6 * S), Some(3));
        // Full of live keys: it starts over with the new one.
        c.put([4; 32], 4, t0 + 7 * S);
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.get(&[4; 32], t0 + 7 * S), Some(4));
    }

    #[test]
    fn a_zero_time_to_live_remembers_nothing() {
        let t0 = Instant::now();
        let mut c = KeyCache::new(Duration::ZERO, 10);
        c.put([1; 32], 1, t0);
        assert_eq!(c.get(&[1; 32], t0), None);
    }
}
