//! The workload lifecycle: submitted, queued, placed, run, ended.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

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
