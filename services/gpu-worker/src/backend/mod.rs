//! The device behind a worker: the simulated backend ([`sim::SimBackend`]) or real GPUs
//! ([`cuda::runner::CudaBackend`]). Every call takes the current instant, so
//! backends stay synchronous and their run logic is tested without a runtime or a clock.

pub mod cuda;
pub mod sim;

use std::time::Instant;

use hcp_events::payload::{GpuSample, GpuSpec, ModelSwitch, RunStatus};
use uuid::Uuid;

/// What a start command asks a backend to run.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRun {
    /// The workload.
    pub workload_id: Uuid,
    /// Model to switch to.
    pub model: String,
    /// GPUs to run on (all of them: gang).
    pub gpu_ids: Vec<String>,
    /// Declared run time, seconds.
    pub duration_s: u32,
    /// Checkpoint to resume from, 0-1.
    pub resume_progress: f64,
}

/// Something that happened to a run, to be reported as `run.reported`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunUpdate {
    /// The workload.
    pub workload_id: Uuid,
    /// What happened.
    pub status: RunStatus,
    /// Fraction done (for checkpointed and stopped: the saved checkpoint), 0-1.
    pub progress: f64,
    /// Seconds of work done in this placement.
    pub runtime_s: f64,
    /// Failure reason or other detail.
    pub detail: Option<String>,
    /// Model switch timings (with `started`).
    pub switch: Option<ModelSwitch>,
}

/// The fraction of a run between periodic checkpoints: `every` of it, but no more often than
/// every `min_s` of run time; `None` when checkpoints are off or the run is too short for one.
pub fn checkpoint_step(every: f64, min_s: f64, duration_s: f64) -> Option<f64> {
    if every <= 0.0 {
        return None;
    }
    let step = if duration_s > 0.0 {
        every.max(min_s / duration_s)
    } else {
        every
    };
    (step < 1.0).then_some(step)
}

/// Why a backend refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The command names a run this worker does not hold (finished, stopped, never started).
    #[error("no run of workload {0} on this worker")]
    UnknownRun(Uuid),
    /// A start names a GPU this worker does not have.
    #[error("GPU {0} is not on this worker")]
    UnknownGpu(String),
    /// A start without GPUs.
    #[error("a run needs at least one GPU")]
    NoGpus,
}

/// A worker's device: runs, GPUs and their telemetry.
pub trait Backend: Send + std::fmt::Debug + 'static {
    /// `sim` or `cuda` (reported in heartbeats).
    fn kind(&self) -> &'static str;

    /// The GPUs.
    fn gpus(&self) -> Vec<GpuSpec>;

    /// Starts a run: switches its GPUs to the model, then runs from `resume_progress`. The
    /// `started` update comes from [`Backend::poll`] once the switch is done. Runs holding any
    /// of the GPUs are stopped first (the resource-manager reassigned them); their `stopped`
    /// updates are returned. A start of a run already held restarts it.
    fn start(&mut self, now: Instant, run: StartRun) -> Result<Vec<RunUpdate>, BackendError>;

    /// Freezes a run's progress (GPUs stay held).
    fn pause(&mut self, now: Instant, workload_id: Uuid) -> Result<RunUpdate, BackendError>;

    /// Unfreezes a paused run.
    fn resume(&mut self, now: Instant, workload_id: Uuid) -> Result<RunUpdate, BackendError>;

    /// Saves a checkpoint now; the run goes on.
    fn checkpoint(&mut self, now: Instant, workload_id: Uuid) -> Result<RunUpdate, BackendError>;

    /// Stops a run, first saving a checkpoint when `checkpoint` is set; the update's progress is
    /// where it can resume from.
    fn stop(
        &mut self,
        now: Instant,
        workload_id: Uuid,
        checkpoint: bool,
        reason: &str,
    ) -> Result<RunUpdate, BackendError>;

    /// Advances to `now` and returns what happened since the last poll: starts after a model
    /// switch, periodic checkpoints, completions.
    fn poll(&mut self, now: Instant) -> Vec<RunUpdate>;

    /// The runs held (switching, running or paused).
    fn running(&self) -> Vec<Uuid>;

    /// One telemetry sample per GPU.
    fn samples(&mut self, now: Instant) -> Vec<GpuSample>;

    /// What computes the inference of runs' own inputs on this backend's devices; `None`: the
    /// node's CPU embedder.
    fn embedder(&self) -> Option<std::sync::Arc<dyn crate::embed::Embedder>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_keep_their_fraction_but_not_more_often_than_the_minimum_interval() {
        // An hour of training: every 10% (6 min) is rarer than once a minute.
        assert_eq!(checkpoint_step(0.1, 60.0, 3600.0), Some(0.1));
        // Ten minutes: once a minute, which is 10% here too.
        assert_eq!(checkpoint_step(0.1, 60.0, 600.0), Some(0.1));
        // Five minutes: once a minute is 20%.
        assert_eq!(checkpoint_step(0.1, 60.0, 300.0), Some(0.2));
        // A 2-second inference: none.
        assert_eq!(checkpoint_step(0.1, 60.0, 2.0), None);
        assert_eq!(checkpoint_step(0.1, 60.0, 60.0), None);
        // Off, and no minimum.
        assert_eq!(checkpoint_step(0.0, 60.0, 3600.0), None);
        assert_eq!(checkpoint_step(0.1, 0.0, 2.0), Some(0.1));
    }
}
