//! Settings: the common service settings plus the `[resource_manager]` section.

use std::time::Duration;

use hcp_service::{CommonSettings, HasCommon};
use serde::Deserialize;

/// This service's compiled-in defaults (layered over the common ones).
pub const DEFAULTS: &str = include_str!("../config.toml");

/// Everything the resource-manager binary reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Database, Kafka, admin, telemetry, shutdown.
    #[serde(flatten)]
    pub common: CommonSettings,
    /// `[resource_manager]`.
    pub resource_manager: RmSettings,
}

impl HasCommon for Settings {
    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

/// `[resource_manager]`: health timings.
#[derive(Debug, Clone, Deserialize)]
pub struct RmSettings {
    /// How often the health sweep runs, ms.
    pub sweep_interval_ms: u64,
    /// Silence after which a healthy worker is declared lost, ms.
    pub worker_timeout_ms: u64,
    /// How long a worker's heartbeats may omit a run it has acknowledged (reported started)
    /// before it is requeued, ms.
    pub restart_grace_ms: u64,
    /// How long a start may go unacknowledged before it is taken as lost and requeued, ms.
    /// Commands delayed by load stay on their way far longer than the restart grace; only a
    /// start that never arrives should reach this.
    pub start_ack_timeout_ms: u64,
    /// A heartbeat that repeats the last stored one (same inventory, same runs, nothing
    /// pending) within this long is not written: the worker's row and
    /// `last_seen` are refreshed at most this often. Keep it well under `worker_timeout_ms`,
    /// which is judged on the stored `last_seen`. 0 stores every heartbeat.
    pub heartbeat_store_ms: u64,
}

impl Default for RmSettings {
    fn default() -> Self {
        Self {
            sweep_interval_ms: 1_000,
            worker_timeout_ms: 5_000,
            restart_grace_ms: 10_000,
            start_ack_timeout_ms: 300_000,
            heartbeat_store_ms: 2_000,
        }
    }
}

impl RmSettings {
    /// The sweep interval.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(1))
    }

    /// The worker timeout.
    pub fn worker_timeout(&self) -> Duration {
        Duration::from_millis(self.worker_timeout_ms)
    }

    /// How often an unchanged heartbeat is stored.
    pub fn heartbeat_store(&self) -> Duration {
        Duration::from_millis(self.heartbeat_store_ms)
    }

    /// The restart grace and the start acknowledgement timeout.
    pub fn grace(&self) -> crate::domain::Grace {
        crate::domain::Grace {
            restart: Duration::from_millis(self.restart_grace_ms),
            start_ack: Duration::from_millis(self.start_ack_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hcp_runtime::config::{from_figment, Figment, Format, Toml};

    #[test]
    fn the_defaults_layer_over_the_common_ones() {
        let f = Figment::new()
            .merge(Toml::string(hcp_service::COMMON_DEFAULTS))
            .merge(Toml::string(DEFAULTS));
        let s: Settings = from_figment(f).unwrap();
        assert_eq!(s.common.service_name, "hcp-resource-manager");
        assert_eq!(s.common.admin.port, 9103);
        assert_eq!(s.resource_manager.sweep_interval(), Duration::from_secs(1));
        assert_eq!(s.resource_manager.worker_timeout(), Duration::from_secs(5));
        assert_eq!(s.resource_manager.grace().restart, Duration::from_secs(10));
        assert_eq!(
            s.resource_manager.grace().start_ack,
            Duration::from_secs(300)
        );
    }
}
