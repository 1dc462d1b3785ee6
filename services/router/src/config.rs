//! Typed settings: the common ones plus `[router]` (see `config.toml` for every key).

use std::time::Duration;

use hcp_domain::breaker::BreakerPolicy;
use hcp_service::{CommonSettings, HasCommon};
use serde::Deserialize;

/// Compiled-in defaults, layered over the common ones.
pub const DEFAULTS: &str = include_str!("../config.toml");

/// All settings of `hcp-router`.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Database, Kafka, admin server, telemetry, shutdown.
    #[serde(flatten)]
    pub common: CommonSettings,
    /// The router's own section.
    pub router: RouterConfig,
}

impl HasCommon for Settings {
    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

/// `[router]`.
#[derive(Debug, Clone, Deserialize)]
pub struct RouterConfig {
    /// Placement pass interval, ms.
    pub tick_ms: u64,
    /// Shortest gap between passes when the consumer wakes the loop early, ms.
    pub min_gap_ms: u64,
    /// Rejected placements before the workload fails.
    pub max_attempts: u32,
    /// Backoff after the first rejection, ms (doubles per attempt).
    pub backoff_base_ms: u64,
    /// Backoff cap, ms.
    pub backoff_max_ms: u64,
    /// How long an unanswered proposal blocks re-proposing, ms.
    pub proposal_timeout_ms: u64,
    /// Placements (or proposals) written per transaction.
    pub propose_chunk: usize,
    /// Place directly through the allocation ledger (one step, no proposal hop); `false`
    /// proposes and lets the resource-manager answer (ADR 0004's handshake).
    pub place_directly: bool,
    /// Take submissions from the event store as they commit, ahead of the consumer (one broker
    /// hop sooner; the consumer still applies whatever this passes over).
    pub follow_log: bool,
    /// Preemption refill rate.
    pub preemptions_per_minute: f64,
    /// Preemptions allowed in a burst.
    pub preemption_burst: u32,
    /// A workload preempted less than this ago is not preempted again, s.
    pub victim_cooldown_s: u64,
    /// How long unfinished preemptions block new ones for the same workload, ms.
    pub preemption_timeout_ms: u64,
    /// Real-time workloads considered for preemption per pass.
    pub max_preemptions_per_tick: usize,
    /// Ended workloads are purged after this long, s.
    pub purge_after_s: u64,
    /// Per-worker circuit breakers.
    pub breaker: BreakerPolicy,
}

impl RouterConfig {
    /// Backoff before attempt `attempts + 1` after `attempts` rejections.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let ms = self
            .backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.backoff_max_ms);
        Duration::from_millis(ms)
    }

    /// The pass interval.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms.max(1))
    }

    /// Loads the compiled-in defaults only (tests start from these and adjust).
    pub fn defaults() -> Result<Self, hcp_runtime::ConfigError> {
        use hcp_runtime::config::{Figment, Format, Toml};
        #[derive(Deserialize)]
        struct Only {
            router: RouterConfig,
        }
        let only: Only =
            hcp_runtime::config::from_figment(Figment::new().merge(Toml::string(DEFAULTS)))?;
        Ok(only.router)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_defaults_parse_with_the_common_ones() {
        let s: Settings = hcp_runtime::load_layered(&[hcp_service::COMMON_DEFAULTS, DEFAULTS])
            .expect("defaults parse");
        assert_eq!(s.common.service_name, "hcp-router");
        assert_eq!(s.common.admin.port, 9102);
        assert_eq!(s.router.tick_ms, 50);
        assert_eq!(s.router.breaker.failure_threshold, 3);
    }

    #[test]
    fn backoff_doubles_per_attempt_up_to_the_cap() {
        let c = RouterConfig::defaults().unwrap();
        let got: Vec<u64> = (1..=8).map(|a| c.backoff(a).as_millis() as u64).collect();
        assert_eq!(got, vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }
}
