//! hcp-gpu-worker: runs workloads on GPUs behind a [`backend::Backend`] (simulated now, CUDA
//! later), obeys device commands for its own worker ids, and reports heartbeats (GPU specs,
//! running workloads, telemetry) and run progress straight to `worker-reports`. It has no
//! database (ADR 0004).
//!
//! - [`backend`]: the device trait and the simulated backend;
//! - [`commands`]: per-worker filtering and command-id dedup;
//! - [`clock`]: the report sequence clock;
//! - [`node`]: the process shell ([`WorkerNode`]).

pub mod backend;
pub mod clock;
pub mod commands;
pub mod config;
pub mod metrics;
pub mod node;

pub use config::{Settings, WorkerSettings, COMMON_DEFAULTS, DEFAULTS};
pub use node::{WorkerError, WorkerNode};
