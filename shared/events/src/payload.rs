//! Typed event payloads. Names are past tense; each variant has an explicit type string and
//! schema version. A breaking change adds a new version (and an upcast in [`Event::decode`]),
//! never an in-place edit: the golden fixtures under `fixtures/` pin every version.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::envelope::EnvelopeError;

/// The class of an AI workload. Drives priority and preemption rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    /// Latency-bound inference; never curtailed for price.
    RealtimeInference,
    /// Throughput-bound inference; may be throttled or paused.
    BatchInference,
    /// Training; interruptible at checkpoints.
    Training,
}

/// A tenant's service tier; drives priority and rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Highest priority, highest limits.
    Enterprise,
    /// The default paid tier.
    Pro,
    /// Best effort.
    Free,
}

impl Tier {
    /// Wire / column value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Enterprise => "enterprise",
            Tier::Pro => "pro",
            Tier::Free => "free",
        }
    }

    /// Parses a wire value.
    pub fn parse(s: &str) -> Option<Self> {
        [Tier::Enterprise, Tier::Pro, Tier::Free]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// Where a submission came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubmissionSource {
    /// The REST gateway.
    Rest,
    /// A direct producer on the workload-requests topic.
    Kafka,
}

/// `workload.submitted` v1, kept so that old events keep decoding (upcast to v2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSubmittedV1 {
    /// The workload's id; also its stream id suffix.
    pub workload_id: Uuid,
    /// Owner tenant.
    pub tenant_id: String,
    /// Workload class.
    pub kind: WorkloadKind,
    /// Model name.
    pub model: String,
    /// GPUs required.
    pub gpu_count: u32,
    /// Declared run time in seconds.
    pub duration_s: u32,
}

/// A workload was accepted into the system (after validation). Carries the request as the
/// customer sent it; the router classifies it (see [`WorkloadQueued`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSubmitted {
    /// The workload's id; also its stream id suffix.
    pub workload_id: Uuid,
    /// The client's request id (idempotency key scope: tenant + request id).
    pub request_id: Uuid,
    /// Owner tenant.
    pub tenant_id: String,
    /// The tenant's tier at submission.
    pub tier: Tier,
    /// Workload class if the customer stated it.
    pub kind: Option<WorkloadKind>,
    /// Model name, e.g. `all-MiniLM-L6-v2`.
    pub model: String,
    /// GPUs required (gang-scheduled on one worker).
    pub gpu_count: u32,
    /// Required GPU model, e.g. `H100`.
    pub gpu_type: Option<String>,
    /// Minimum memory per GPU, GiB.
    pub gpu_memory_gib: Option<u32>,
    /// Declared run time in seconds, used for ETA and simulation.
    pub duration_s: u32,
    /// Latency target for inference, milliseconds.
    pub latency_target_ms: Option<u32>,
    /// Whether the customer allows checkpoint-and-pause; the router decides when absent.
    pub interruptible: Option<bool>,
    /// Fail if not started by then.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub deadline: Option<OffsetDateTime>,
    /// REST or Kafka.
    pub source: SubmissionSource,
    /// What an inference request computes on (texts to embed); absent for work that brings
    /// its own data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InferenceInput>,
}

/// The inputs of an inference request, carried to the worker that runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InferenceInput {
    /// Texts to embed, in order (1-64, each 1-4,096 bytes).
    pub texts: Vec<String>,
}

/// What a finished run produced for its customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunOutput {
    /// Sentence embeddings, one per input text, in input order.
    Embeddings {
        /// The model that computed them.
        model: String,
        /// Values per vector.
        dims: u32,
        /// Each vector as `dims` little-endian f32 values, base64 (standard alphabet).
        vectors_b64: Vec<String>,
        /// Where they were computed: `cuda` or `cpu`.
        device: String,
        /// Compute time, milliseconds.
        compute_ms: f64,
    },
}

impl RunOutput {
    /// Embeddings as they travel: each vector base64 of its little-endian f32 values.
    pub fn embeddings(model: &str, vectors: &[Vec<f32>], device: &str, compute_ms: f64) -> Self {
        use base64::Engine as _;
        let dims = vectors.first().map_or(0, Vec::len);
        let vectors_b64 = vectors
            .iter()
            .map(|v| {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                base64::engine::general_purpose::STANDARD.encode(bytes)
            })
            .collect();
        RunOutput::Embeddings {
            model: model.to_owned(),
            dims: u32::try_from(dims).unwrap_or(u32::MAX),
            vectors_b64,
            device: device.to_owned(),
            compute_ms,
        }
    }

    /// The vectors of an [`RunOutput::Embeddings`], decoded; an error names the first vector
    /// that is not `dims` base64-encoded f32 values.
    pub fn decode_vectors(&self) -> Result<Vec<Vec<f32>>, String> {
        use base64::Engine as _;
        let RunOutput::Embeddings {
            dims, vectors_b64, ..
        } = self;
        vectors_b64
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| format!("vector {i}: {e}"))?;
                if bytes.len() != *dims as usize * 4 {
                    return Err(format!(
                        "vector {i}: {} bytes, expected {} f32 values",
                        bytes.len(),
                        dims
                    ));
                }
                Ok(bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            })
            .collect()
    }
}

impl WorkloadSubmitted {
    /// The accepted form of a validated request.
    pub fn from_request(
        workload_id: Uuid,
        request: &crate::WorkloadRequest,
        tier: Tier,
        source: SubmissionSource,
    ) -> Self {
        Self {
            workload_id,
            request_id: request.request_id,
            tenant_id: request.tenant_id.clone(),
            tier,
            kind: request.kind,
            model: request.model.clone(),
            gpu_count: request.gpu_count,
            gpu_type: request.gpu_type.clone(),
            gpu_memory_gib: request.gpu_memory_gib,
            duration_s: request.duration_s,
            latency_target_ms: request.latency_target_ms,
            interruptible: request.interruptible,
            deadline: request.deadline,
            source,
            input: request.input.clone(),
        }
    }

    /// A minimal submission (tests, demos): given class, no constraints.
    pub fn simple(
        workload_id: Uuid,
        tenant_id: &str,
        kind: WorkloadKind,
        model: &str,
        gpu_count: u32,
        duration_s: u32,
    ) -> Self {
        Self {
            workload_id,
            request_id: workload_id,
            tenant_id: tenant_id.to_owned(),
            tier: Tier::Pro,
            kind: Some(kind),
            model: model.to_owned(),
            gpu_count,
            gpu_type: None,
            gpu_memory_gib: None,
            duration_s,
            latency_target_ms: None,
            interruptible: None,
            deadline: None,
            source: SubmissionSource::Rest,
            input: None,
        }
    }
}

impl From<WorkloadSubmittedV1> for WorkloadSubmitted {
    fn from(v1: WorkloadSubmittedV1) -> Self {
        Self {
            workload_id: v1.workload_id,
            request_id: v1.workload_id,
            tenant_id: v1.tenant_id,
            tier: Tier::Pro,
            kind: Some(v1.kind),
            model: v1.model,
            gpu_count: v1.gpu_count,
            gpu_type: None,
            gpu_memory_gib: None,
            duration_s: v1.duration_s,
            latency_target_ms: None,
            interruptible: None,
            deadline: None,
            source: SubmissionSource::Rest,
            input: None,
        }
    }
}

/// The router classified a workload and put it in its priority queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadQueued {
    /// The workload.
    pub workload_id: Uuid,
    /// Class (stated or inferred).
    pub kind: WorkloadKind,
    /// Priority 1 (lowest) - 10 (highest).
    pub priority: u8,
    /// Whether it may be checkpointed and preempted.
    pub interruptible: bool,
    /// How the class was decided, e.g. `inferred from latency_target_ms=50`.
    pub reason: String,
}

/// The router proposes concrete GPUs for a workload; the resource-manager decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPlacementProposed {
    /// The workload.
    pub workload_id: Uuid,
    /// Target worker.
    pub worker_id: String,
    /// GPUs on that worker (all of them or none: gang).
    pub gpu_ids: Vec<String>,
    /// Placement score (higher is better).
    pub score: f64,
    /// 1 for the first try.
    pub attempt: u32,
}

/// A placement was refused by the allocation ledger (version 2 adds `code`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPlacementRejected {
    /// The workload.
    pub workload_id: Uuid,
    /// The proposed worker.
    pub worker_id: String,
    /// Why, for people: `<code>: <detail>`.
    pub reason: String,
    /// Whether trying again (elsewhere or later) can succeed.
    pub retryable: bool,
    /// Why, for programs (absent in version 1 events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<RejectCode>,
}

/// Why the allocation ledger refused a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// A later proposal for the same workload exists.
    Superseded,
    /// The proposal itself is unusable (no GPUs, duplicates, wrong count).
    BadProposal,
    /// The worker never sent a heartbeat.
    UnknownWorker,
    /// The worker is lost.
    WorkerLost,
    /// A GPU is not on that worker.
    UnknownGpu,
    /// A GPU does not meet the workload's type or memory constraint.
    GpuMismatch,
    /// A GPU is allocated to another workload.
    GpuHeld,
}

impl RejectCode {
    /// Every code.
    pub const ALL: [RejectCode; 7] = [
        Self::Superseded,
        Self::BadProposal,
        Self::UnknownWorker,
        Self::WorkerLost,
        Self::UnknownGpu,
        Self::GpuMismatch,
        Self::GpuHeld,
    ];

    /// Wire value (also the metric label, and the label that starts `reason`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Superseded => "superseded",
            Self::BadProposal => "bad_proposal",
            Self::UnknownWorker => "unknown_worker",
            Self::WorkerLost => "worker_lost",
            Self::UnknownGpu => "unknown_gpu",
            Self::GpuMismatch => "gpu_mismatch",
            Self::GpuHeld => "gpu_held",
        }
    }

    /// The code a version 1 event's `reason` starts with (`<code>: <detail>`), if any: how a
    /// reader recovers the code of events recorded before `code` existed.
    pub fn from_v1_reason(reason: &str) -> Option<Self> {
        let (label, _) = reason.split_once(':')?;
        Self::ALL.into_iter().find(|c| c.as_str() == label.trim())
    }

    /// The code of a rejection: its `code`, or for a version 1 event the label of its reason.
    pub fn of(rejected: &WorkloadPlacementRejected) -> Option<Self> {
        rejected
            .code
            .or_else(|| Self::from_v1_reason(&rejected.reason))
    }
}

/// A running workload saved a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadCheckpointed {
    /// The workload.
    pub workload_id: Uuid,
    /// Fraction done at the checkpoint, 0-1.
    pub progress: f64,
}

/// A workload was paused by its tenant or an operator (GPUs stay allocated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPaused {
    /// The workload.
    pub workload_id: Uuid,
    /// Who asked for it.
    pub requested_by: String,
}

/// A paused workload was resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadResumed {
    /// The workload.
    pub workload_id: Uuid,
    /// Who asked for it.
    pub requested_by: String,
}

/// The router preempts a running interruptible workload to make room for real-time work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPreempted {
    /// The preempted workload.
    pub workload_id: Uuid,
    /// The workload it makes room for.
    pub for_workload_id: Uuid,
    /// Why.
    pub reason: String,
}

/// A workload went back to the queue: after preemption (from its checkpoint) or because its
/// worker went silent. Its GPUs are released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRequeued {
    /// The workload.
    pub workload_id: Uuid,
    /// Progress it resumes from (the last checkpoint), 0-1.
    pub resume_progress: f64,
    /// Why.
    pub reason: String,
}

/// A workload was placed on concrete GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadScheduled {
    /// The workload.
    pub workload_id: Uuid,
    /// Worker that will run it.
    pub worker_id: String,
    /// GPU ids on that worker.
    pub gpu_ids: Vec<String>,
}

/// A workload started running on its worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadStarted {
    /// The workload.
    pub workload_id: Uuid,
}

/// A workload finished successfully.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadCompleted {
    /// The workload.
    pub workload_id: Uuid,
    /// Wall time spent running, in seconds.
    pub runtime_s: f64,
    /// What the run produced (inference results), when it produces anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<RunOutput>,
}

/// A workload failed; `reason` is shown to the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFailed {
    /// The workload.
    pub workload_id: Uuid,
    /// Human-readable reason.
    pub reason: String,
}

/// A workload was cancelled by its tenant or an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadCancelled {
    /// The workload.
    pub workload_id: Uuid,
    /// Who asked for it.
    pub requested_by: String,
}

/// A market price was observed (electricity, hashprice, GPU rate, carbon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarketPriceObserved {
    /// Series name, e.g. `ercot.rt.LZ_WEST` or `btc.hashprice`.
    pub series: String,
    /// Start of the interval the value applies to.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub interval_start: OffsetDateTime,
    /// The value in `unit`.
    pub value: f64,
    /// Unit, e.g. `usd_per_mwh`.
    pub unit: String,
}

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

/// A grid operator asks a site (or a zone) to shed load (demand response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemandResponseRequested {
    /// The grid event's id.
    pub dr_id: Uuid,
    /// Load zone, e.g. `LZ_WEST`.
    pub zone: String,
    /// One site, or every site in the zone when absent.
    pub site: Option<String>,
    /// Megawatts to shed.
    pub curtail_mw: f64,
    /// Seconds allowed to reach the reduced load.
    pub respond_within_s: u32,
    /// How long the reduction must hold, seconds.
    pub duration_s: u32,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub issued_at: OffsetDateTime,
}

/// A coincident-peak (4CP) warning: system load may set this month's peak in the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeakWarningIssued {
    /// Zone or system, e.g. `ERCOT`.
    pub zone: String,
    /// The interval at risk.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub interval_start: OffsetDateTime,
    /// Estimated probability that it is a 4CP interval, 0-1.
    pub probability: f64,
    /// System load seen or forecast, MW.
    pub load_mw: f64,
}

/// What an ASIC is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AsicState {
    /// Hashing at its power target.
    Hashing,
    /// Ramping up or down.
    Ramping,
    /// Curtailed (idle at ~25 W).
    Curtailed,
    /// Faulted (overheat, hash board failure).
    Fault,
    /// Not reporting.
    Offline,
}

impl AsicState {
    /// Every state, in the order of [`AsicState::index`].
    pub const ALL: [AsicState; 5] = [
        AsicState::Hashing,
        AsicState::Ramping,
        AsicState::Curtailed,
        AsicState::Fault,
        AsicState::Offline,
    ];

    /// Its position in [`AsicState::ALL`] (also its code in the compact telemetry encoding).
    pub const fn index(self) -> usize {
        match self {
            AsicState::Hashing => 0,
            AsicState::Ramping => 1,
            AsicState::Curtailed => 2,
            AsicState::Fault => 3,
            AsicState::Offline => 4,
        }
    }
}

/// One ASIC's sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsicSample {
    /// Device id.
    pub asic_id: String,
    /// Model, e.g. `S21 XP`.
    pub model: String,
    /// State.
    pub state: AsicState,
    /// Hashrate, TH/s.
    pub hashrate_ths: f64,
    /// Wall power, W.
    pub power_w: f64,
    /// Power target, W.
    pub power_target_w: f64,
    /// Hottest board, Celsius.
    pub temperature_c: f64,
    /// Hardware errors since the last sample.
    pub hw_errors: u32,
    /// Shares accepted since the last sample.
    pub accepted_shares: u32,
}

/// One rack's ASIC samples at one instant (topic `telemetry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsicTelemetryBatch {
    /// Site.
    pub site: String,
    /// Rack.
    pub rack: String,
    /// Sample time.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub sampled_at: OffsetDateTime,
    /// One sample per device.
    pub samples: Vec<AsicSample>,
}

/// Which ASICs a command addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "scope", rename_all = "snake_case", deny_unknown_fields)]
pub enum AsicScope {
    /// Every ASIC of the site.
    Site,
    /// Every ASIC of one model at the site.
    Model {
        /// The model.
        model: String,
    },
    /// These racks.
    Racks {
        /// Rack ids.
        racks: Vec<String>,
    },
    /// These devices.
    Devices {
        /// Device ids.
        asic_ids: Vec<String>,
    },
}

/// What an ASIC command asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum AsicAction {
    /// Run at this fraction of nameplate power (0-1], ramping.
    PowerTarget {
        /// Fraction of nameplate.
        fraction: f64,
    },
    /// Curtail to idle (~25 W) within 5 s.
    Curtail,
    /// Back to the last power target, full within 10 s.
    Resume,
}

/// A command to a site's ASICs (topic `device-commands`, keyed by site).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsicCommandIssued {
    /// Unique; controllers ignore ids they have obeyed.
    pub command_id: Uuid,
    /// Site.
    pub site: String,
    /// Which devices.
    pub target: AsicScope,
    /// What to do.
    pub action: AsicAction,
    /// The optimizer decision it carries out, if any.
    pub decision_id: Option<Uuid>,
}

/// The optimizer's decision for one site and interval (topic `decisions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionMade {
    /// Decision id.
    pub decision_id: Uuid,
    /// Site.
    pub site: String,
    /// Policy name, e.g. `rule`.
    pub policy: String,
    /// Why, in words (prices, margins, grid events).
    pub reason: String,
    /// Target ASIC power per model (fraction of nameplate, 0 = curtailed).
    pub asic_targets: Vec<AsicTarget>,
    /// Whether batch inference and training may run on the GPUs.
    pub gpu_batch_allowed: bool,
    /// Site power the decision aims at, MW at the meter.
    pub target_mw: f64,
    /// Energy price used, $/MWh.
    pub energy_usd_per_mwh: f64,
    /// Hashprice used, $/TH/day.
    pub hashprice_usd_per_th_day: f64,
    /// Expected profit at these prices, $/h.
    pub expected_profit_usd_per_h: f64,
    /// The demand-response event it answers, if any.
    pub dr_id: Option<Uuid>,
}

/// One ASIC model's target inside a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsicTarget {
    /// Model.
    pub model: String,
    /// Fraction of nameplate power, 0 (curtailed) to 1.
    pub fraction: f64,
}

/// Telemetry confirmed (or failed to confirm) a decision's power level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionConfirmed {
    /// The decision.
    pub decision_id: Uuid,
    /// Site.
    pub site: String,
    /// What it aimed at, MW.
    pub target_mw: f64,
    /// What telemetry measured, MW.
    pub measured_mw: f64,
    /// Seconds from the decision to the measurement.
    pub after_s: f64,
    /// Whether the target was met in time (for DR: within `respond_within_s`).
    pub met: bool,
}

macro_rules! events {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $name:literal v $version:literal ),+ $(,)?) => {
        /// Every event HCP records, typed. The wire form is the envelope's `event_type`,
        /// `schema_version` and `payload` fields; see [`crate::Envelope`].
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $( $(#[$doc])* $variant($payload), )+
        }

        /// The type tag of an [`Event`], as an enum so that nothing matches on strings.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType {
            $( $(#[$doc])* $variant, )+
        }

        impl EventType {
            /// All types, for schema export and fixture checks.
            pub const ALL: &'static [EventType] = &[$( EventType::$variant, )+];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self { $( EventType::$variant => $name, )+ }
            }

            /// The schema version new events of this type are written with.
            pub const fn current_version(self) -> u16 {
                match self { $( EventType::$variant => $version, )+ }
            }

            /// The JSON Schema of this type's current payload version.
            pub fn payload_schema(self) -> schemars::Schema {
                match self { $( EventType::$variant => schemars::schema_for!($payload), )+ }
            }
        }

        impl Event {
            /// This event's type tag.
            pub fn event_type(&self) -> EventType {
                match self { $( Event::$variant(_) => EventType::$variant, )+ }
            }

            /// Serialises the payload alone (the envelope's `payload` field), at the current
            /// version.
            pub fn payload_json(&self) -> Result<Box<serde_json::value::RawValue>, EnvelopeError> {
                let raw = match self { $( Event::$variant(p) => serde_json::value::to_raw_value(p), )+ };
                raw.map_err(|e| EnvelopeError::Encode(e.to_string()))
            }

            fn decode_current(ty: EventType, payload: &str) -> Result<Self, EnvelopeError> {
                Ok(match ty { $( EventType::$variant => Event::$variant(parse(payload)?), )+ })
            }
        }
    };
}

events! {
    /// `workload.submitted` v2 (v1 is upcast)
    WorkloadSubmitted(WorkloadSubmitted) = "workload.submitted" v 2,
    /// `workload.queued` v1
    WorkloadQueued(WorkloadQueued) = "workload.queued" v 1,
    /// `workload.placement_proposed` v1
    WorkloadPlacementProposed(WorkloadPlacementProposed) = "workload.placement_proposed" v 1,
    /// `workload.placement_rejected` v1
    WorkloadPlacementRejected(WorkloadPlacementRejected) = "workload.placement_rejected" v 2,
    /// `workload.scheduled` v1
    WorkloadScheduled(WorkloadScheduled) = "workload.scheduled" v 1,
    /// `workload.started` v1
    WorkloadStarted(WorkloadStarted) = "workload.started" v 1,
    /// `workload.checkpointed` v1
    WorkloadCheckpointed(WorkloadCheckpointed) = "workload.checkpointed" v 1,
    /// `workload.paused` v1
    WorkloadPaused(WorkloadPaused) = "workload.paused" v 1,
    /// `workload.resumed` v1
    WorkloadResumed(WorkloadResumed) = "workload.resumed" v 1,
    /// `workload.preempted` v1
    WorkloadPreempted(WorkloadPreempted) = "workload.preempted" v 1,
    /// `workload.requeued` v1
    WorkloadRequeued(WorkloadRequeued) = "workload.requeued" v 1,
    /// `workload.completed` v1
    WorkloadCompleted(WorkloadCompleted) = "workload.completed" v 1,
    /// `workload.failed` v1
    WorkloadFailed(WorkloadFailed) = "workload.failed" v 1,
    /// `workload.cancelled` v1
    WorkloadCancelled(WorkloadCancelled) = "workload.cancelled" v 1,
    /// `worker.registered` v1
    WorkerRegistered(WorkerRegistered) = "worker.registered" v 1,
    /// `worker.lost` v1
    WorkerLost(WorkerLost) = "worker.lost" v 1,
    /// `worker.heartbeat` v1 (worker reports)
    WorkerHeartbeat(WorkerHeartbeat) = "worker.heartbeat" v 1,
    /// `run.reported` v1 (worker reports)
    RunReported(RunReported) = "run.reported" v 1,
    /// `device.command` v1
    DeviceCommand(DeviceCommand) = "device.command" v 1,
    /// `market.price_observed` v1
    MarketPriceObserved(MarketPriceObserved) = "market.price_observed" v 1,
    /// `grid.demand_response_requested` v1
    DemandResponseRequested(DemandResponseRequested) = "grid.demand_response_requested" v 1,
    /// `grid.peak_warning_issued` v1
    PeakWarningIssued(PeakWarningIssued) = "grid.peak_warning_issued" v 1,
    /// `asic.telemetry_batch` v1
    AsicTelemetryBatch(AsicTelemetryBatch) = "asic.telemetry_batch" v 1,
    /// `asic.command_issued` v1
    AsicCommandIssued(AsicCommandIssued) = "asic.command_issued" v 1,
    /// `optimizer.decision_made` v1
    DecisionMade(DecisionMade) = "optimizer.decision_made" v 1,
    /// `optimizer.decision_confirmed` v1
    DecisionConfirmed(DecisionConfirmed) = "optimizer.decision_confirmed" v 1,
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, EnvelopeError> {
    serde_json::from_str(s).map_err(|e| EnvelopeError::InvalidPayload(e.to_string()))
}

impl EventType {
    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    /// Decodes a payload of the given wire type and version, upcasting old versions to the
    /// current shape. Unknown types and versions are errors, never silently dropped.
    pub fn decode(event_type: &str, version: u16, payload: &str) -> Result<Self, EnvelopeError> {
        let ty = EventType::parse(event_type)
            .ok_or_else(|| EnvelopeError::UnknownType(event_type.to_owned()))?;
        if version == 0 || version > ty.current_version() {
            return Err(EnvelopeError::UnsupportedVersion {
                event_type: event_type.to_owned(),
                version,
            });
        }
        match (ty, version) {
            (EventType::WorkloadSubmitted, 1) => Ok(Event::WorkloadSubmitted(
                parse::<WorkloadSubmittedV1>(payload)?.into(),
            )),
            _ => Self::decode_current(ty, payload),
        }
    }

    /// The workload an event concerns, if any.
    pub fn workload_id(&self) -> Option<Uuid> {
        Some(match self {
            Event::WorkloadSubmitted(p) => p.workload_id,
            Event::WorkloadQueued(p) => p.workload_id,
            Event::WorkloadPlacementProposed(p) => p.workload_id,
            Event::WorkloadPlacementRejected(p) => p.workload_id,
            Event::WorkloadScheduled(p) => p.workload_id,
            Event::WorkloadStarted(p) => p.workload_id,
            Event::WorkloadCheckpointed(p) => p.workload_id,
            Event::WorkloadPaused(p) => p.workload_id,
            Event::WorkloadResumed(p) => p.workload_id,
            Event::WorkloadPreempted(p) => p.workload_id,
            Event::WorkloadRequeued(p) => p.workload_id,
            Event::WorkloadCompleted(p) => p.workload_id,
            Event::WorkloadFailed(p) => p.workload_id,
            Event::WorkloadCancelled(p) => p.workload_id,
            Event::RunReported(p) => p.workload_id,
            Event::DeviceCommand(p) => p.workload_id,
            Event::WorkerRegistered(_)
            | Event::WorkerLost(_)
            | Event::WorkerHeartbeat(_)
            | Event::MarketPriceObserved(_)
            | Event::DemandResponseRequested(_)
            | Event::PeakWarningIssued(_)
            | Event::AsicTelemetryBatch(_)
            | Event::AsicCommandIssued(_)
            | Event::DecisionMade(_)
            | Event::DecisionConfirmed(_) => return None,
        })
    }
}

/// The stream id of a workload.
pub fn workload_stream(workload_id: Uuid) -> String {
    format!("workload-{workload_id}")
}

/// The workload of a workload stream id ([`workload_stream`]'s inverse).
pub fn workload_of_stream(stream_id: &str) -> Option<Uuid> {
    stream_id
        .strip_prefix("workload-")
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// The stream id of a worker's resource events.
pub fn worker_stream(worker_id: &str) -> String {
    format!("worker-{worker_id}")
}

/// The stream id of a worker's reports (heartbeats, run reports) on `worker-reports`. These are
/// not in the event log; their sequence is the worker's monotonic clock in microseconds.
pub fn report_stream(worker_id: &str) -> String {
    format!("reports-{worker_id}")
}

/// The stream id of a site's ASIC commands and decisions.
pub fn site_stream(site: &str) -> String {
    format!("site-{site}")
}

/// The stream id of the ASIC commands sent to a site (kept apart from the site's decision
/// stream, which the optimizer owns).
pub fn asic_command_stream(site: &str) -> String {
    format!("asic-commands-{site}")
}

/// The stream id of a grid event (demand response, peak warning) source.
pub fn grid_stream(zone: &str) -> String {
    format!("grid-{zone}")
}

/// The stream id of the commands sent to one worker.
pub fn command_stream(worker_id: &str) -> String {
    format!("commands-{worker_id}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn embeddings_round_trip_exactly_through_base64() {
        let v = vec![vec![0.5f32, -1.25, f32::MIN_POSITIVE, 3.0e7], vec![0.0; 4]];
        let out = RunOutput::embeddings("all-MiniLM-L6-v2", &v, "cpu", 1.5);
        let RunOutput::Embeddings { dims, .. } = &out;
        assert_eq!(*dims, 4);
        let json = serde_json::to_string(&out).unwrap();
        let back: RunOutput = serde_json::from_str(&json).unwrap();
        assert_eq!(back.decode_vectors().unwrap(), v);
    }

    #[test]
    fn a_vector_of_the_wrong_length_is_named() {
        let mut out = RunOutput::embeddings("m", &[vec![1.0f32, 2.0], vec![3.0, 4.0]], "cpu", 0.0);
        let RunOutput::Embeddings { vectors_b64, .. } = &mut out;
        vectors_b64[1] = "AAAA".into();
        assert_eq!(
            out.decode_vectors().unwrap_err(),
            "vector 1: 3 bytes, expected 2 f32 values"
        );
    }
}
