//! A circuit breaker per worker: stop proposing work to a worker that keeps failing, probe it
//! once in a while, and trust it again after one success.
//!
//! ```text
//! closed ──N consecutive failures──▶ open(until = now + backoff)
//! open ──now ≥ until──▶ half-open: one probe allowed
//! half-open ──success──▶ closed          half-open ──failure──▶ open(backoff × 2, capped)
//! ```
//!
//! Time is passed in, so every transition is exact in tests and replayable from event
//! timestamps. The state is serialisable (the router stores it per worker).

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// Breaker thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerPolicy {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// Open time after the first opening.
    pub base_backoff_ms: u64,
    /// Open time never grows beyond this.
    pub max_backoff_ms: u64,
    /// A probe that has not reported after this long no longer blocks another probe.
    pub probe_timeout_ms: u64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            base_backoff_ms: 5_000,
            max_backoff_ms: 300_000,
            probe_timeout_ms: 30_000,
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::milliseconds(i64::try_from(v).unwrap_or(i64::MAX))
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Breaker {
    /// Healthy; counting consecutive failures.
    Closed {
        /// Failures since the last success.
        failures: u32,
    },
    /// Refusing work until `until`; then half-open.
    Open {
        /// When a probe becomes allowed.
        #[serde(with = "time::serde::rfc3339")]
        until: OffsetDateTime,
        /// The open time that led here (doubles on each failed probe).
        backoff_ms: u64,
    },
    /// One probe allowed; its outcome closes or reopens the breaker.
    HalfOpen {
        /// The open time that led here.
        backoff_ms: u64,
        /// When the probe went out (`None`: not yet).
        #[serde(with = "time::serde::rfc3339::option")]
        probe_started: Option<OffsetDateTime>,
    },
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::Closed { failures: 0 }
    }
}

/// What the breaker allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admission {
    /// Any amount of work.
    Allow,
    /// Exactly one placement, as a probe.
    Probe,
    /// Nothing.
    Deny,
}

/// The coarse state at a moment, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Work flows.
    Closed,
    /// No work.
    Open,
    /// One probe.
    HalfOpen,
}

impl Breaker {
    /// The coarse state at `now` (an open breaker past its time reads as half-open).
    pub fn state(&self, now: OffsetDateTime) -> BreakerState {
        match self {
            Breaker::Closed { .. } => BreakerState::Closed,
            Breaker::Open { until, .. } if now < *until => BreakerState::Open,
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// What may be sent to the worker at `now`.
    pub fn admission(&self, now: OffsetDateTime, policy: &BreakerPolicy) -> Admission {
        match self {
            Breaker::Closed { .. } => Admission::Allow,
            Breaker::Open { until, .. } if now < *until => Admission::Deny,
            Breaker::Open { .. } => Admission::Probe,
            Breaker::HalfOpen {
                probe_started: None,
                ..
            } => Admission::Probe,
            Breaker::HalfOpen {
                probe_started: Some(at),
                ..
            } if now >= *at + ms(policy.probe_timeout_ms) => Admission::Probe,
            Breaker::HalfOpen { .. } => Admission::Deny,
        }
    }

    /// Takes the probe if one is allowed at `now` (half-open with no probe out); returns
    /// whether it was taken. Later calls are refused until the probe reports or times out.
    pub fn start_probe(&mut self, now: OffsetDateTime, policy: &BreakerPolicy) -> bool {
        if self.admission(now, policy) != Admission::Probe {
            return false;
        }
        let backoff_ms = match *self {
            Breaker::Open { backoff_ms, .. } | Breaker::HalfOpen { backoff_ms, .. } => backoff_ms,
            Breaker::Closed { .. } => return false,
        };
        *self = Breaker::HalfOpen {
            backoff_ms,
            probe_started: Some(now),
        };
        true
    }

    /// The worker did what was asked: close.
    pub fn record_success(&mut self) {
        *self = Breaker::Closed { failures: 0 };
    }

    /// The worker failed at `now`.
    pub fn record_failure(&mut self, now: OffsetDateTime, policy: &BreakerPolicy) {
        *self = match *self {
            Breaker::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= policy.failure_threshold.max(1) {
                    let backoff_ms = policy.base_backoff_ms.min(policy.max_backoff_ms);
                    Breaker::Open {
                        until: now + ms(backoff_ms),
                        backoff_ms,
                    }
                } else {
                    Breaker::Closed { failures }
                }
            }
            // A late failure of work sent before the breaker opened: no new information.
            open @ Breaker::Open { until, .. } if now < until => open,
            // The probe (or whatever was sent once it was allowed) failed: back off longer.
            Breaker::Open { backoff_ms, .. } | Breaker::HalfOpen { backoff_ms, .. } => {
                let backoff_ms = backoff_ms.saturating_mul(2).min(policy.max_backoff_ms);
                Breaker::Open {
                    until: now + ms(backoff_ms),
                    backoff_ms,
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-23 12:00 UTC);

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_threshold: 3,
            base_backoff_ms: 1_000,
            max_backoff_ms: 5_000,
            probe_timeout_ms: 10_000,
        }
    }

    fn at(ms: i64) -> OffsetDateTime {
        T0 + Duration::milliseconds(ms)
    }

    #[test]
    fn it_opens_after_n_consecutive_failures_and_a_success_resets_the_count() {
        let p = policy();
        let mut b = Breaker::default();
        b.record_failure(at(0), &p);
        b.record_failure(at(1), &p);
        b.record_success();
        b.record_failure(at(2), &p);
        b.record_failure(at(3), &p);
        assert_eq!(b.admission(at(3), &p), Admission::Allow);
        b.record_failure(at(4), &p);
        assert_eq!(
            b,
            Breaker::Open {
                until: at(1004),
                backoff_ms: 1000
            }
        );
        assert_eq!(b.admission(at(1003), &p), Admission::Deny);
        assert_eq!(b.state(at(1003)), BreakerState::Open);
    }

    #[test]
    fn after_the_backoff_exactly_one_probe_is_allowed() {
        let p = policy();
        let mut b = Breaker::Open {
            until: at(1000),
            backoff_ms: 1000,
        };
        assert!(!b.start_probe(at(999), &p));
        assert_eq!(b.state(at(1000)), BreakerState::HalfOpen);
        assert!(b.start_probe(at(1000), &p));
        assert!(!b.start_probe(at(1001), &p));
        assert_eq!(b.admission(at(1001), &p), Admission::Deny);
        // A probe that never reports stops blocking after the probe timeout.
        assert_eq!(b.admission(at(11_000), &p), Admission::Probe);
    }

    #[test]
    fn a_successful_probe_closes_the_breaker() {
        let p = policy();
        let mut b = Breaker::Open {
            until: at(1000),
            backoff_ms: 1000,
        };
        assert!(b.start_probe(at(1500), &p));
        b.record_success();
        assert_eq!(b, Breaker::Closed { failures: 0 });
        assert_eq!(b.admission(at(1501), &p), Admission::Allow);
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubled_backoff_up_to_the_cap() {
        let p = policy();
        let mut b = Breaker::Open {
            until: at(1000),
            backoff_ms: 1000,
        };
        let mut now = 1000;
        let mut seen = Vec::new();
        for _ in 0..5 {
            assert!(b.start_probe(at(now), &p));
            b.record_failure(at(now), &p);
            let Breaker::Open { until, backoff_ms } = b else {
                panic!("not open: {b:?}")
            };
            assert_eq!(until, at(now + backoff_ms as i64));
            seen.push(backoff_ms);
            now += backoff_ms as i64;
        }
        assert_eq!(seen, vec![2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn failures_arriving_while_open_do_not_extend_it() {
        let p = policy();
        let mut b = Breaker::Open {
            until: at(1000),
            backoff_ms: 1000,
        };
        b.record_failure(at(500), &p);
        assert_eq!(
            b,
            Breaker::Open {
                until: at(1000),
                backoff_ms: 1000
            }
        );
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let b = Breaker::HalfOpen {
            backoff_ms: 2000,
            probe_started: Some(at(5)),
        };
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.contains("\"state\":\"half_open\""), "{json}");
        assert_eq!(serde_json::from_str::<Breaker>(&json).unwrap(), b);
    }
}
