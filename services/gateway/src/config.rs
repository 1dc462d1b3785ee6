//! Typed settings: the common service settings plus `[gateway]`.

use hcp_events::Tier;
use hcp_service::{CommonSettings, HasCommon};
use secrecy::SecretString;
use serde::Deserialize;

/// The gateway's compiled-in defaults (`services/gateway/config.toml`), layered over
/// [`hcp_service::COMMON_DEFAULTS`].
pub const DEFAULTS: &str = include_str!("../config.toml");

/// All settings.
#[derive(Debug, Deserialize)]
pub struct Settings {
    /// Database, Kafka, admin server, telemetry, shutdown.
    #[serde(flatten)]
    pub common: CommonSettings,
    /// `[gateway]`.
    pub gateway: GatewaySettings,
}

impl HasCommon for Settings {
    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

impl Settings {
    /// The compiled-in defaults alone (no file, no environment): a starting point for tests
    /// and tools, which then set what differs.
    pub fn defaults() -> Result<Self, hcp_runtime::ConfigError> {
        use hcp_runtime::config::{Figment, Format, Toml};
        hcp_runtime::config::from_figment(
            Figment::new()
                .merge(Toml::string(hcp_service::COMMON_DEFAULTS))
                .merge(Toml::string(DEFAULTS)),
        )
    }
}

/// `[gateway]`.
#[derive(Debug, Deserialize)]
pub struct GatewaySettings {
    /// REST bind host.
    pub host: String,
    /// REST port; 0 picks a free one.
    pub port: u16,
    /// Bootstrap admin key. Never printed; only its hash is kept after start.
    pub admin_key: SecretString,
    /// Largest accepted request body, bytes.
    pub max_body_bytes: usize,
    /// Per-tier token buckets.
    pub rate_limits: TierLimits,
    /// The Kafka intake.
    pub intake: IntakeSettings,
    /// How long a tenant's API key, once found, is trusted without looking it up again, ms
    /// (0: every request looks it up). A key revoked in the database is refused within this.
    #[serde(default = "default_key_cache_ms")]
    pub key_cache_ms: u64,
    /// Fleet description (`config/fleet.example.toml` format) that `/api/v1/profitability`
    /// values; relative to the working directory.
    #[serde(default = "default_fleet_file")]
    pub fleet_file: std::path::PathBuf,
    /// Market series of the energy price `/api/v1/profitability` uses ($/MWh), as the
    /// optimizer's `price_series`.
    #[serde(default = "default_energy_series")]
    pub energy_series: String,
}

fn default_key_cache_ms() -> u64 {
    5_000
}

fn default_fleet_file() -> std::path::PathBuf {
    "config/fleet.example.toml".into()
}

fn default_energy_series() -> String {
    "ercot.dam.LZ_WEST".into()
}

/// One tier's token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once (bucket size).
    pub burst: u32,
}

/// `[gateway.rate_limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct TierLimits {
    /// Enterprise tenants.
    pub enterprise: RateLimit,
    /// Pro tenants.
    pub pro: RateLimit,
    /// Free tenants.
    pub free: RateLimit,
}

impl TierLimits {
    /// The limit of a tier.
    pub fn of(&self, tier: Tier) -> RateLimit {
        match tier {
            Tier::Enterprise => self.enterprise,
            Tier::Pro => self.pro,
            Tier::Free => self.free,
        }
    }
}

/// `[gateway.intake]`.
#[derive(Debug, Clone, Deserialize)]
pub struct IntakeSettings {
    /// Most requests handled in one transaction.
    pub max_batch: usize,
    /// How long to keep gathering a batch after its first message, ms.
    pub batch_linger_ms: u64,
    /// Wait before retrying a batch that failed on the database, ms.
    pub retry_backoff_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn the_compiled_in_defaults_parse_and_name_the_gateway() {
        let s = Settings::defaults().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.common.service_name, "hcp-gateway");
        assert_eq!(s.common.admin.port, 9101);
        assert_eq!(s.gateway.port, 8080);
        assert_eq!(s.gateway.admin_key.expose_secret(), "hcp-dev-admin-key");
        assert!(s.gateway.rate_limits.free.per_second < s.gateway.rate_limits.pro.per_second);
        assert!(s.gateway.rate_limits.pro.burst < s.gateway.rate_limits.enterprise.burst);
    }

    #[test]
    fn the_admin_key_never_prints() {
        let s = Settings::defaults().unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{s:?}").contains("hcp-dev-admin-key"));
    }
}
