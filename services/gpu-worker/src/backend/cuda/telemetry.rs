//! NVML telemetry: one sample per GPU per second (the heartbeat), turned into the same
//! [`GpuSample`] the simulator reports. NVML is loaded at run time; without it
//! [`Telemetry::init`] returns an error (never a panic) and the caller decides.

use hcp_events::payload::GpuSample;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;

use super::{CudaError, PcieLink};

/// Everything NVML tells about one GPU at one instant (missing readings are `None`: some
/// boards do not report every sensor).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NvmlSample {
    /// Board power, W.
    pub power_w: Option<f64>,
    /// GPU die temperature, Celsius.
    pub temperature_c: Option<f64>,
    /// SM (kernel) utilisation over the last sample period, percent.
    pub sm_util_pct: Option<u32>,
    /// Memory controller utilisation, percent.
    pub mem_util_pct: Option<u32>,
    /// Memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock, MHz.
    pub mem_clock_mhz: Option<u32>,
}

impl NvmlSample {
    /// The heartbeat sample (missing readings as 0, the simulator's idle values otherwise).
    pub fn to_gpu_sample(&self, gpu_id: &str) -> GpuSample {
        GpuSample {
            gpu_id: gpu_id.to_owned(),
            utilization_pct: f64::from(self.sm_util_pct.unwrap_or(0)),
            memory_used_mib: self.memory_used_bytes.unwrap_or(0) / (1024 * 1024),
            power_w: self.power_w.unwrap_or(0.0),
            temperature_c: self.temperature_c.unwrap_or(0.0),
        }
    }
}

/// An NVML session.
pub struct Telemetry {
    nvml: Nvml,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Loads libnvidia-ml and initialises it.
    pub fn init() -> Result<Self, CudaError> {
        Nvml::init()
            .map(|nvml| Self { nvml })
            .map_err(|e| CudaError::Driver(format!("NVML could not be initialised: {e}")))
    }

    /// One sample of the GPU with this UUID.
    pub fn sample(&self, uuid: &str) -> Result<NvmlSample, CudaError> {
        let d = self
            .nvml
            .device_by_uuid(uuid)
            .map_err(|e| CudaError::Driver(format!("NVML has no GPU {uuid}: {e}")))?;
        let util = d.utilization_rates().ok();
        Ok(NvmlSample {
            power_w: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
            sm_util_pct: util.as_ref().map(|u| u.gpu),
            mem_util_pct: util.as_ref().map(|u| u.memory),
            memory_used_bytes: d.memory_info().ok().map(|m| m.used),
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            mem_clock_mhz: d.clock_info(Clock::Memory).ok(),
        })
    }

    /// Maximum and current PCIe link of the GPU with this UUID.
    pub fn pcie(&self, uuid: &str) -> (Option<PcieLink>, Option<PcieLink>) {
        let Ok(d) = self.nvml.device_by_uuid(uuid) else {
            return (None, None);
        };
        let max = match (d.max_pcie_link_gen(), d.max_pcie_link_width()) {
            (Ok(gen), Ok(width)) => Some(PcieLink { gen, width }),
            _ => None,
        };
        let cur = match (d.current_pcie_link_gen(), d.current_pcie_link_width()) {
            (Ok(gen), Ok(width)) => Some(PcieLink { gen, width }),
            _ => None,
        };
        (max, cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_samples_become_heartbeat_samples_in_the_simulators_units() {
        let s = NvmlSample {
            power_w: Some(312.5),
            temperature_c: Some(61.0),
            sm_util_pct: Some(87),
            mem_util_pct: Some(40),
            memory_used_bytes: Some(3 * 1024 * 1024 * 1024 + 5),
            sm_clock_mhz: Some(1980),
            mem_clock_mhz: Some(2619),
        };
        assert_eq!(
            s.to_gpu_sample("GPU-1"),
            GpuSample {
                gpu_id: "GPU-1".into(),
                utilization_pct: 87.0,
                memory_used_mib: 3072,
                power_w: 312.5,
                temperature_c: 61.0,
            }
        );
    }

    #[test]
    fn without_nvml_init_is_an_error_not_a_panic() {
        // On a GPU host this initialises; either way it returns.
        if let Err(e) = Telemetry::init() {
            assert!(e.to_string().contains("NVML"));
        }
    }
}
