//! hcp-gpu-worker: runs workloads on GPUs behind a [`backend::Backend`] (simulated, or real
//! NVIDIA GPUs through [`backend::cuda`]), obeys device commands for its own worker ids, and
//! reports heartbeats (GPU specs, running workloads, telemetry) and run progress straight to
//! `worker-reports`. It has no database (ADR 0004).
//!
//! - [`backend`]: the device trait and the simulated backend;
//! - [`commands`]: per-worker filtering and command-id dedup;
//! - [`clock`]: the report sequence clock;
//! - [`node`]: the process shell ([`WorkerNode`]);
//! - [`vram`]: VRAM model slots (budget, pressure, LRU eviction);
//! - [`minilm`]: the all-MiniLM-L6-v2 embedding workload (tokenizer, CPU and CUDA forward);
//! - [`embed`]: embeddings of a request's own texts, returned with its completion.

pub mod backend;
pub mod clock;
pub mod commands;
pub mod config;
pub mod embed;
pub mod metrics;
pub mod minilm;
pub mod node;
pub mod vram;

pub use config::{BackendKind, Settings, WorkerSettings, COMMON_DEFAULTS, DEFAULTS};
pub use node::{WorkerError, WorkerNode};
