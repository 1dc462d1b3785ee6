//! Typed configuration for the `hcp` binary.

use hcp_bus::KafkaSettings;
use hcp_db::DatabaseSettings;
use hcp_telemetry::TelemetrySettings;
use serde::Deserialize;

/// Compiled-in defaults (`config/default.toml`).
pub const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// All settings.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Service name for traces and logs.
    pub service_name: String,
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Admin HTTP server.
    pub admin: AdminSettings,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Shutdown.
    pub shutdown: ShutdownSettings,
    /// The spine demo.
    pub spine: SpineSettings,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// Bind host (loopback by default).
    pub host: String,
    /// Port; 0 picks a free one.
    pub port: u16,
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    /// How long in-flight work may take to drain after a stop signal.
    pub drain_deadline_ms: u64,
}

/// `[spine]`.
#[derive(Debug, Clone, Deserialize)]
pub struct SpineSettings {
    /// Demo workloads started per second (0 disables).
    pub workloads_per_second: f64,
    /// ERCOT price CSV to replay (missing file disables the replay).
    pub market_csv: String,
    /// Price column in that CSV.
    pub market_column: String,
    /// CSV rows replayed per second.
    pub market_rows_per_second: f64,
    /// Seconds between status lines.
    pub report_every_s: u64,
}

impl Settings {
    /// Loads defaults, then `HCP_CONFIG`, then `HCP_*` environment variables.
    pub fn load() -> Result<Self, hcp_runtime::ConfigError> {
        hcp_runtime::load(DEFAULTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_defaults_parse() {
        let s: Settings =
            hcp_runtime::config::from_figment(figment_defaults()).expect("defaults parse");
        assert_eq!(s.kafka.fetch_wait_max_ms, 10);
        assert_eq!(s.kafka.session_timeout_ms, 6000);
        assert_eq!(s.admin.host, "127.0.0.1");
    }

    fn figment_defaults() -> hcp_runtime::config::Figment {
        use hcp_runtime::config::Format as _;
        hcp_runtime::config::Figment::new().merge(hcp_runtime::config::Toml::string(DEFAULTS))
    }
}
