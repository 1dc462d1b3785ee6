//! GPU workers: registration and loss, heartbeats, run reports, and the commands they obey.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{InferenceInput, RunOutput};

/// One GPU as a worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Fleet-unique id (`<worker>/gpu-N` for simulated GPUs, the UUID for real ones).
    pub gpu_id: String,
    /// Model, e.g. `H100`.
    pub model: String,
    /// Memory, MiB.
    pub memory_mib: u64,
}

/// One GPU telemetry sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuSample {
    /// The GPU.
    pub gpu_id: String,
    /// SM utilisation, percent.
    pub utilization_pct: f64,
    /// Memory in use, MiB.
    pub memory_used_mib: u64,
    /// Board power, watts.
    pub power_w: f64,
    /// Temperature, Celsius.
    pub temperature_c: f64,
}

/// A worker announced itself (first heartbeat, or its GPUs changed, or it came back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerRegistered {
    /// The worker.
    pub worker_id: String,
    /// Site it runs in.
    pub site: String,
    /// `sim` or `cuda`.
    pub backend: String,
    /// Its GPUs.
    pub gpus: Vec<GpuSpec>,
}

/// A worker stopped sending heartbeats; its GPUs are unavailable and its work was requeued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerLost {
    /// The worker.
    pub worker_id: String,
    /// Seconds since its last heartbeat when declared lost.
    pub silent_for_s: f64,
}

/// Periodic worker heartbeat with per-GPU telemetry (topic `worker-reports`, not stored in the
/// event log; the resource-manager turns it into inventory and health).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerHeartbeat {
    /// The worker.
    pub worker_id: String,
    /// Site it runs in.
    pub site: String,
    /// `sim` or `cuda`.
    pub backend: String,
    /// Its GPUs.
    pub gpus: Vec<GpuSpec>,
    /// Workloads it is running or holding paused.
    pub running: Vec<Uuid>,
    /// One sample per GPU.
    pub samples: Vec<GpuSample>,
}

/// What happened to a run on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The model is loaded and the run began.
    Started,
    /// A checkpoint was saved.
    Checkpointed,
    /// Paused on command.
    Paused,
    /// Resumed on command.
    Resumed,
    /// Finished successfully.
    Completed,
    /// Failed on the worker.
    Failed,
    /// Stopped on command (after a checkpoint when one was asked for).
    Stopped,
}

/// Phase timings of one model switch on a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSwitch {
    /// The model switched to.
    pub model: String,
    /// Whether it was already resident in VRAM.
    pub resident: bool,
    /// Load into VRAM, ms (0 when resident).
    pub load_ms: f64,
    /// Bind to the run (route, allocate buffers), ms.
    pub bind_ms: f64,
    /// First batch, ms.
    pub first_batch_ms: f64,
}

/// A worker reports on one run (topic `worker-reports`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunReported {
    /// The workload.
    pub workload_id: Uuid,
    /// The worker.
    pub worker_id: String,
    /// What happened.
    pub status: RunStatus,
    /// Fraction done (for `stopped`/`checkpointed`: the saved checkpoint), 0-1.
    pub progress: f64,
    /// Seconds spent running so far in this placement.
    pub runtime_s: f64,
    /// Failure reason or other detail.
    pub detail: Option<String>,
    /// Model switch timings (with `started`).
    pub switch: Option<ModelSwitch>,
    /// What the run produced (with `completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<RunOutput>,
}

/// What a device command asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandAction {
    /// Run a workload on these GPUs, from `resume_progress`.
    Start {
        /// Model to load.
        model: String,
        /// GPUs on the worker.
        gpu_ids: Vec<String>,
        /// Declared run time, seconds (for the simulator).
        duration_s: u32,
        /// Checkpoint to resume from, 0-1.
        resume_progress: f64,
        /// The request's inputs (inference), computed on and returned with `completed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<InferenceInput>,
    },
    /// Pause in place (GPUs stay allocated).
    Pause,
    /// Resume a paused run.
    Resume,
    /// Save a checkpoint now and keep running.
    Checkpoint,
    /// Stop; save a checkpoint first when `checkpoint` is set.
    Stop {
        /// Save a checkpoint before stopping.
        checkpoint: bool,
        /// Why (logged by the worker).
        reason: String,
    },
}

/// A command to one worker (topic `device-commands`, keyed by worker id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceCommand {
    /// Unique; workers ignore a command id they have already obeyed.
    pub command_id: Uuid,
    /// The worker that must obey.
    pub worker_id: String,
    /// The workload it concerns.
    pub workload_id: Uuid,
    /// What to do.
    pub action: CommandAction,
}
