//! Settings. The worker has no database, so it reads only the Kafka, admin, telemetry and
//! shutdown sections of the common defaults, plus its own `[worker]` section.

use std::time::Duration;

use hcp_bus::KafkaSettings;
use hcp_telemetry::TelemetrySettings;
use serde::Deserialize;

/// The defaults every HCP binary shares.
pub const COMMON_DEFAULTS: &str = include_str!("../../../config/default.toml");
/// This binary's defaults (layered over [`COMMON_DEFAULTS`]).
pub const DEFAULTS: &str = include_str!("../config.toml");

/// Everything the worker binary reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Service name for logs and traces.
    pub service_name: String,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Admin HTTP server (`/metrics`, `/health`, `/ready`).
    pub admin: AdminSettings,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Shutdown.
    pub shutdown: ShutdownSettings,
    /// `[worker]`.
    pub worker: WorkerSettings,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// Bind host.
    pub host: String,
    /// Port; 0 picks a free one.
    pub port: u16,
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    /// How long the worker may take to flush after a stop signal.
    pub drain_deadline_ms: u64,
}

/// `[worker]`: identity, simulated hardware and timings.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Base worker id; empty: derived from the hostname.
    #[serde(default)]
    pub worker_id: String,
    /// How many workers this process runs.
    pub count: u32,
    /// Site (the resource-manager's pool).
    pub site: String,
    /// GPU model of the simulated GPUs.
    pub gpu_model: String,
    /// GPUs per worker.
    pub gpus_per_worker: u32,
    /// Memory per GPU, MiB.
    pub memory_mib: u64,
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Run advance interval, ms.
    pub tick_ms: u64,
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Checkpoint every this fraction of a run (0 disables)...
    pub checkpoint_every: f64,
    /// ...but no more often than every this many seconds of run time (simulated).
    #[serde(default = "default_checkpoint_min_s")]
    pub checkpoint_min_s: f64,
    /// Models resident per GPU.
    pub vram_models: usize,
    /// Cold load time per GiB of model on one GPU, simulated ms.
    pub cold_load_ms_per_gib: f64,
    /// Bind time, simulated ms.
    pub bind_ms: f64,
    /// First batch time, simulated ms.
    pub first_batch_ms: f64,
    /// Size of a model whose name carries no parameter count, GiB.
    pub default_model_gib: f64,
    /// Idle board power, W.
    pub idle_power_w: f64,
    /// Board power at full utilisation, W.
    pub max_power_w: f64,
    /// `sim` (simulated GPUs, the default) or `cuda` (real NVIDIA GPUs; without a driver the
    /// worker says so in one line and exits non-zero).
    #[serde(default)]
    pub backend: BackendKind,
    /// CUDA backend: fraction of each GPU's memory that resident models may hold.
    #[serde(default = "default_vram_budget_fraction")]
    pub vram_budget_fraction: f64,
}

fn default_checkpoint_min_s() -> f64 {
    60.0
}

/// Which device backend the worker runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Simulated GPUs.
    #[default]
    Sim,
    /// Real NVIDIA GPUs through CUDA.
    Cuda,
}

fn default_vram_budget_fraction() -> f64 {
    crate::vram::DEFAULT_BUDGET_FRACTION
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            worker_id: String::new(),
            count: 1,
            site: "site-a".into(),
            gpu_model: "H100".into(),
            gpus_per_worker: 8,
            memory_mib: 81_559,
            heartbeat_ms: 1_000,
            tick_ms: 50,
            time_scale: 1.0,
            checkpoint_every: 0.1,
            checkpoint_min_s: default_checkpoint_min_s(),
            vram_models: 2,
            cold_load_ms_per_gib: 250.0,
            bind_ms: 40.0,
            first_batch_ms: 120.0,
            default_model_gib: 2.0,
            idle_power_w: 70.0,
            max_power_w: 700.0,
            backend: BackendKind::Sim,
            vram_budget_fraction: default_vram_budget_fraction(),
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid [worker] settings: {0}")]
pub struct InvalidSettings(String);

impl WorkerSettings {
    /// Refuses settings that cannot work.
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        let bad = |s: &str| Err(InvalidSettings(s.to_owned()));
        if self.count == 0 {
            return bad("count must be at least 1");
        }
        if self.gpus_per_worker == 0 {
            return bad("gpus_per_worker must be at least 1");
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return bad("time_scale must be a positive number");
        }
        if !(0.0..1.0).contains(&self.checkpoint_every) {
            return bad("checkpoint_every must be in [0, 1)");
        }
        if !(self.checkpoint_min_s.is_finite() && self.checkpoint_min_s >= 0.0) {
            return bad("checkpoint_min_s must be a number of seconds, 0 or more");
        }
        if self.heartbeat_ms == 0 || self.tick_ms == 0 {
            return bad("heartbeat_ms and tick_ms must be positive");
        }
        if self.site.is_empty() {
            return bad("site must not be empty");
        }
        if self.backend == BackendKind::Cuda && self.count != 1 {
            return bad("backend = \"cuda\" runs one worker per process (count = 1)");
        }
        if !(self.vram_budget_fraction > 0.0 && self.vram_budget_fraction <= 1.0) {
            return bad("vram_budget_fraction must be in (0, 1]");
        }
        Ok(())
    }

    /// The base id: the configured one, else the hostname.
    pub fn base_id(&self) -> String {
        if !self.worker_id.is_empty() {
            return self.worker_id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "gpu-worker".into())
    }

    /// The ids of the workers this process runs.
    pub fn worker_ids(&self) -> Vec<String> {
        let base = self.base_id();
        if self.count <= 1 {
            return vec![base];
        }
        (0..self.count).map(|n| format!("{base}-{n}")).collect()
    }

    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Tick interval.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hcp_runtime::config::{from_figment, Figment, Format, Toml};

    #[test]
    fn the_defaults_load_without_a_database_section_being_needed() {
        let f = Figment::new()
            .merge(Toml::string(COMMON_DEFAULTS))
            .merge(Toml::string(DEFAULTS));
        let s: Settings = from_figment(f).unwrap();
        assert_eq!(s.service_name, "hcp-gpu-worker");
        assert_eq!(s.admin.port, 9104);
        assert_eq!(s.worker.gpus_per_worker, 8);
        assert_eq!(s.worker.heartbeat(), Duration::from_secs(1));
        assert_eq!(s.worker.backend, BackendKind::Sim);
        s.worker.validate().unwrap();
    }

    #[test]
    fn the_cuda_backend_is_chosen_by_name() {
        let f = Figment::new()
            .merge(Toml::string(COMMON_DEFAULTS))
            .merge(Toml::string(DEFAULTS))
            .merge(Toml::string(
                "[worker]\nbackend = \"cuda\"\nvram_budget_fraction = 0.5",
            ));
        let s: Settings = from_figment(f).unwrap();
        assert_eq!(s.worker.backend, BackendKind::Cuda);
        assert_eq!(s.worker.vram_budget_fraction, 0.5);
        let bad = Figment::new()
            .merge(Toml::string(COMMON_DEFAULTS))
            .merge(Toml::string(DEFAULTS))
            .merge(Toml::string("[worker]\nbackend = \"rocm\""));
        assert!(from_figment::<Settings>(bad).is_err());
    }

    #[test]
    fn several_workers_get_numbered_ids() {
        let mut w = WorkerSettings {
            worker_id: "rack7".into(),
            ..Default::default()
        };
        assert_eq!(w.worker_ids(), vec!["rack7"]);
        w.count = 3;
        assert_eq!(w.worker_ids(), vec!["rack7-0", "rack7-1", "rack7-2"]);
        w.worker_id.clear();
        assert!(!w.base_id().is_empty());
    }

    #[test]
    fn impossible_settings_are_refused() {
        for broken in [
            WorkerSettings {
                count: 0,
                ..Default::default()
            },
            WorkerSettings {
                time_scale: 0.0,
                ..Default::default()
            },
            WorkerSettings {
                checkpoint_every: 1.5,
                ..Default::default()
            },
        ] {
            assert!(broken.validate().is_err());
        }
    }
}
