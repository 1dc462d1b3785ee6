//! Settings: the common service settings plus the `[optimizer]` section.

use std::path::PathBuf;
use std::time::Duration;

use hcp_service::{CommonSettings, HasCommon};
use serde::Deserialize;

/// This service's compiled-in defaults (layered over the common ones).
pub const DEFAULTS: &str = include_str!("../config.toml");

/// Everything the optimizer binary reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Database, Kafka, admin, telemetry, shutdown.
    #[serde(flatten)]
    pub common: CommonSettings,
    /// `[optimizer]`.
    pub optimizer: OptimizerSettings,
    /// `[telemetry_ingest]`: the telemetry store's ingest, which this process runs (ASIC
    /// batches and GPU samples into the time-series tables, rollups, retention).
    #[serde(default)]
    pub telemetry_ingest: hcp_tsdb::IngestSettings,
}

impl HasCommon for Settings {
    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

/// `[optimizer]`.
#[derive(Debug, Clone, Deserialize)]
pub struct OptimizerSettings {
    /// The fleet and site description (TOML, as `hcp backtest` reads it).
    pub fleet_file: PathBuf,
    /// The electricity price series whose new intervals open a decision, e.g.
    /// `ercot.dam.LZ_WEST`. Its last dot-separated part is the load zone demand-response
    /// events are matched against.
    pub price_series: String,
    /// Length of one price interval, minutes: converts minimum on/off hours to intervals.
    pub interval_minutes: u32,
    /// Carbon price, $/t CO2eq (used in eco mode only).
    pub carbon_price_usd_per_t: f64,
    /// Eco mode: maximise profit minus carbon cost.
    pub eco_mode: bool,
    /// Re-emit an unchanged decision after this many intervals (0 = never).
    pub heartbeat_intervals: u32,
    /// Observations kept as the policy's past.
    pub history_intervals: u32,
    /// How often deadlines are checked, ms.
    pub sweep_interval_ms: u64,
    /// Tolerance of a normal decision's confirmation, fraction of the site's ASIC nameplate.
    pub confirm_tolerance_fraction: f64,
    /// Time allowed for a normal decision to show in telemetry, s.
    pub confirm_within_s: u32,
}

impl Default for OptimizerSettings {
    fn default() -> Self {
        Self {
            fleet_file: PathBuf::from("config/fleet.example.toml"),
            price_series: "ercot.dam.LZ_WEST".into(),
            interval_minutes: 60,
            carbon_price_usd_per_t: 50.0,
            eco_mode: false,
            heartbeat_intervals: 12,
            history_intervals: 720,
            sweep_interval_ms: 500,
            confirm_tolerance_fraction: 0.05,
            confirm_within_s: 120,
        }
    }
}

impl OptimizerSettings {
    /// Interval length, hours.
    pub fn dt_h(&self) -> f64 {
        f64::from(self.interval_minutes.max(1)) / 60.0
    }

    /// The carbon price the policy uses: the configured one in eco mode, else 0.
    pub fn carbon_price(&self) -> f64 {
        if self.eco_mode {
            self.carbon_price_usd_per_t.max(0.0)
        } else {
            0.0
        }
    }

    /// The load zone of the price series (`ercot.dam.LZ_WEST` -> `LZ_WEST`).
    pub fn zone(&self) -> &str {
        self.price_series
            .rsplit_once('.')
            .map_or(self.price_series.as_str(), |(_, z)| z)
    }

    /// The sweep interval.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(10))
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
        assert_eq!(s.common.service_name, "hcp-optimizer");
        assert_eq!(s.common.admin.port, 9105);
        let o = &s.optimizer;
        assert_eq!(o.fleet_file, PathBuf::from("config/fleet.example.toml"));
        assert_eq!(o.zone(), "LZ_WEST");
        assert_eq!(o.dt_h(), 1.0);
        assert_eq!(o.carbon_price(), 0.0, "eco mode is off by default");
        let eco = OptimizerSettings {
            eco_mode: true,
            ..o.clone()
        };
        assert_eq!(eco.carbon_price(), 50.0);
    }
}
