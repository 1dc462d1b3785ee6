//! hcp-gpu-worker: Runs workloads on GPUs (simulated backend; CUDA backend separately), obeys device commands, reports heartbeats, telemetry and run progress.
