//! Real NVIDIA GPUs through cudarc (driver API, cuBLAS, NVRTC) loaded at run time, and NVML
//! telemetry. One binary built without CUDA runs on a host with driver 580 / CUDA 13; on a host
//! without a driver, [`probe`] returns [`CudaError::NoDriver`] (one clear line) instead of
//! panicking.
//!
//! - [`probe`] / [`discover`]: devices (name, UUID, memory, compute capability, PCIe link),
//!   reported as [`GpuSpec`]s exactly like simulated GPUs (`gpu_id` = the UUID);
//! - [`telemetry`]: NVML samples (power, temperature, SM and memory utilisation, memory used,
//!   clocks) turned into the same [`hcp_events::payload::GpuSample`] the simulator sends;
//! - [`switch`]: model slots in VRAM ([`crate::vram::VramSlots`]) with resident, warm (pinned
//!   host memory) and cold (disk) switches, each phase timed.
#![allow(unsafe_code)]

pub mod runner;
pub mod switch;
pub mod telemetry;

use std::panic::{catch_unwind, AssertUnwindSafe};

use hcp_events::payload::GpuSpec;

/// Why the CUDA backend cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No NVIDIA driver on this host (libcuda.so cannot be loaded).
    #[error(
        "no NVIDIA driver: libcuda.so could not be loaded (install driver 580+ / CUDA 13, or set \
         worker.backend = \"sim\")"
    )]
    NoDriver,
    /// The driver loaded but a CUDA library the workload needs did not.
    #[error("CUDA library {0} could not be loaded (install the CUDA 13 runtime libraries)")]
    MissingLibrary(&'static str),
    /// The driver sees no GPU.
    #[error("the NVIDIA driver reports no GPU")]
    NoDevices,
    /// A driver call failed (or the driver is older than CUDA 13 and lacks a symbol).
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// A GPU step of the workload failed.
    #[error(transparent)]
    Gpu(#[from] crate::minilm::gpu::GpuError),
    /// VRAM slots refused a model.
    #[error(transparent)]
    Vram(#[from] crate::vram::VramError),
    /// The model files could not be read.
    #[error(transparent)]
    Model(#[from] crate::minilm::MiniLmError),
}

/// A PCIe link: generation and lane count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcieLink {
    /// Generation (1-6).
    pub gen: u32,
    /// Lanes.
    pub width: u32,
}

impl PcieLink {
    /// Theoretical one-direction bandwidth, GB/s (line rate after encoding: 8b/10b up to
    /// gen 2, 128b/130b for gen 3-5, gen 6 taken as 64 GT/s at 242/256 FLIT efficiency).
    pub fn max_gbps(self) -> f64 {
        let per_lane = match self.gen {
            1 => 2.5 * 0.8 / 8.0,
            2 => 5.0 * 0.8 / 8.0,
            3 => 8.0 * 128.0 / 130.0 / 8.0,
            4 => 16.0 * 128.0 / 130.0 / 8.0,
            5 => 32.0 * 128.0 / 130.0 / 8.0,
            6 => 64.0 * 242.0 / 256.0 / 8.0,
            _ => 0.0,
        };
        per_lane * f64::from(self.width)
    }
}

/// One GPU as discovered.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// CUDA ordinal.
    pub ordinal: usize,
    /// `GPU-xxxxxxxx-...`, as NVML and nvidia-smi print it.
    pub uuid: String,
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total memory, bytes.
    pub total_bytes: u64,
    /// Free memory at discovery, bytes.
    pub free_bytes: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Maximum PCIe link (from NVML; `None` when NVML is missing).
    pub pcie_max: Option<PcieLink>,
    /// Current PCIe link (idle GPUs may train down).
    pub pcie_current: Option<PcieLink>,
}

impl GpuInfo {
    /// The spec registered in heartbeats, like a simulated GPU's.
    pub fn spec(&self) -> GpuSpec {
        GpuSpec {
            gpu_id: self.uuid.clone(),
            model: short_model(&self.name),
            memory_mib: self.total_bytes / (1024 * 1024),
        }
    }
}

/// `NVIDIA H100 80GB HBM3` -> `H100` (the model names the scheduler matches on).
pub fn short_model(name: &str) -> String {
    let mut words = name
        .split_whitespace()
        .filter(|w| !matches!(*w, "NVIDIA" | "GeForce" | "Tesla" | "Quadro"));
    match words.next() {
        Some(w @ ("RTX" | "GTX")) => match words.next() {
            Some(n) => format!("{w} {n}"),
            None => w.to_owned(),
        },
        Some(w) => w.to_owned(),
        None => name.to_owned(),
    }
}

/// The driver's 16 UUID bytes in nvidia-smi's `GPU-8-4-4-4-12` form.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Runs a driver call, turning a panic (cudarc panics when a symbol is missing from an older
/// driver) into an error.
pub(crate) fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, cudarc::driver::DriverError>,
) -> Result<T, CudaError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CudaError::Driver(format!("{what}: {e}"))),
        Err(_) => Err(CudaError::Driver(format!(
            "{what}: the driver lacks a CUDA 13 entry point (driver 580+ needed)"
        ))),
    }
}

/// Whether libcuda can be loaded; [`CudaError::NoDriver`] when not.
pub fn probe() -> Result<(), CudaError> {
    // SAFETY: only dlopen()s the candidate library names and closes them; resolves no symbol.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::NoDriver)
    }
}

/// Whether cuBLAS and NVRTC (needed by the embedding workload) can be loaded.
pub fn probe_libraries() -> Result<(), CudaError> {
    // SAFETY: as in `probe`: dlopen and close only.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(CudaError::MissingLibrary("libcublas"));
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::MissingLibrary("libnvrtc"));
    }
    Ok(())
}

/// Every GPU the driver sees, with PCIe links from NVML when it is there.
pub fn discover() -> Result<Vec<GpuInfo>, CudaError> {
    probe()?;
    let count = guarded("device count", cudarc::driver::CudaContext::device_count)?;
    let count = usize::try_from(count).unwrap_or(0);
    if count == 0 {
        return Err(CudaError::NoDevices);
    }
    let nvml = telemetry::Telemetry::init().ok();
    let mut out = Vec::with_capacity(count);
    for ordinal in 0..count {
        let ctx = guarded("create context", || {
            cudarc::driver::CudaContext::new(ordinal)
        })?;
        let name = guarded("device name", || ctx.name())?;
        let uuid = guarded("device uuid", || ctx.uuid())?;
        // CUuuid holds c_chars; reinterpret each as its byte.
        let bytes: [u8; 16] = uuid.bytes.map(|c| c as u8);
        let uuid = format_uuid(&bytes);
        let (free, total) = guarded("memory info", || ctx.mem_get_info())?;
        let cc = guarded("compute capability", || ctx.compute_capability())?;
        let (pcie_max, pcie_current) = nvml.as_ref().map(|t| t.pcie(&uuid)).unwrap_or((None, None));
        out.push(GpuInfo {
            ordinal,
            uuid,
            name,
            total_bytes: total as u64,
            free_bytes: free as u64,
            compute_capability: cc,
            pcie_max,
            pcie_current,
        });
    }
    Ok(out)
}

/// What `backend = "cuda"` checks at worker start: a driver, the libraries the workload needs,
/// at least one GPU, and a usable VRAM budget on each. Errors are one line.
pub fn require(settings: &crate::WorkerSettings) -> Result<Vec<GpuInfo>, CudaError> {
    let gpus = discover()?;
    probe_libraries()?;
    for g in &gpus {
        if crate::vram::budget_from_fraction(g.total_bytes, settings.vram_budget_fraction) == 0 {
            return Err(CudaError::Driver(format!(
                "GPU {} has no VRAM budget",
                g.uuid
            )));
        }
    }
    Ok(gpus)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn without_a_driver_discovery_says_so_in_one_line_and_does_not_panic() {
        // On a host with a driver this checks discovery instead (the same call).
        match discover() {
            Err(CudaError::NoDriver) => {
                let msg = CudaError::NoDriver.to_string();
                assert!(msg.starts_with("no NVIDIA driver"));
                assert!(!msg.contains('\n'));
                assert!(msg.contains("backend = \"sim\""));
            }
            Ok(gpus) => {
                assert!(!gpus.is_empty());
                assert!(gpus
                    .iter()
                    .all(|g| g.uuid.starts_with("GPU-") && g.total_bytes > 0));
            }
            Err(other) => panic!("unexpected error on this host: {other}"),
        }
    }

    #[test]
    fn the_cuda_backend_refuses_to_start_without_a_driver() {
        let settings = crate::WorkerSettings {
            backend: crate::BackendKind::Cuda,
            ..Default::default()
        };
        match require(&settings) {
            Err(CudaError::NoDriver) => {}
            Ok(gpus) => assert!(!gpus.is_empty()),
            Err(e) => panic!("unexpected error on this host: {e}"),
        }
    }

    #[test]
    fn uuids_print_like_nvidia_smi() {
        let b: [u8; 16] = [
            0x8f, 0x3a, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
            0xcc, 0xdd,
        ];
        assert_eq!(format_uuid(&b), "GPU-8f3a0011-2233-4455-6677-8899aabbccdd");
    }

    #[test]
    fn gpu_names_shorten_to_the_model_the_scheduler_matches() {
        assert_eq!(short_model("NVIDIA H100 80GB HBM3"), "H100");
        assert_eq!(short_model("NVIDIA GeForce RTX 4090"), "RTX 4090");
        assert_eq!(short_model("Tesla T4"), "T4");
        assert_eq!(short_model("NVIDIA B200"), "B200");
    }

    #[test]
    fn pcie_link_maxima_follow_the_line_encoding() {
        let g5 = PcieLink { gen: 5, width: 16 }.max_gbps();
        assert!((g5 - 63.015).abs() < 0.01, "{g5}");
        let g4 = PcieLink { gen: 4, width: 16 }.max_gbps();
        assert!((g4 - 31.508).abs() < 0.01, "{g4}");
        assert_eq!(PcieLink { gen: 2, width: 1 }.max_gbps(), 0.5);
        assert_eq!(PcieLink { gen: 9, width: 16 }.max_gbps(), 0.0);
    }
}
