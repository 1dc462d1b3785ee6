//! Request and response bodies of the REST API. Their JSON Schemas (derived) are what the
//! OpenAPI document publishes.

use hcp_events::payload::{InferenceInput, WorkloadKind};
use hcp_events::{Tier, WorkloadRequest};
use hcp_readmodel::WorkloadRecord;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// `POST /api/v1/workloads`: a workload request. The tenant comes from the API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitWorkload {
    /// Client-chosen id. Without an `Idempotency-Key` header it is the idempotency key.
    #[serde(default)]
    pub request_id: Option<Uuid>,
    /// Workload class; inferred from the model and latency target when absent.
    #[serde(default)]
    pub kind: Option<WorkloadKind>,
    /// Model name.
    pub model: String,
    /// GPUs required (1-64), placed all-or-nothing on one worker.
    pub gpu_count: u32,
    /// Minimum GPU memory per device, GiB (1-1024).
    #[serde(default)]
    pub gpu_memory_gib: Option<u32>,
    /// Required GPU model, e.g. `H100`.
    #[serde(default)]
    pub gpu_type: Option<String>,
    /// Expected run time in seconds (1 s - 30 days).
    pub duration_s: u32,
    /// Latency target for inference, milliseconds.
    #[serde(default)]
    pub latency_target_ms: Option<u32>,
    /// Whether the workload may be checkpointed and paused.
    #[serde(default)]
    pub interruptible: Option<bool>,
    /// Fail the request if it has not started by then (RFC 3339, in the future).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub deadline: Option<OffsetDateTime>,
    /// Texts to embed (inference; 1-64 texts of 1-4,096 bytes). The embeddings come back
    /// with the completed workload: `GET /api/v1/workloads/{id}/result`.
    #[serde(default)]
    pub input: Option<InferenceInput>,
}

impl SubmitWorkload {
    /// The full request for `tenant_id`. An absent request id stays nil here (so that the
    /// request's fingerprint does not depend on it); the submission assigns one.
    pub fn into_request(self, tenant_id: &str) -> WorkloadRequest {
        WorkloadRequest {
            request_id: self.request_id.unwrap_or_else(Uuid::nil),
            tenant_id: tenant_id.to_owned(),
            kind: self.kind,
            model: self.model,
            gpu_count: self.gpu_count,
            gpu_memory_gib: self.gpu_memory_gib,
            gpu_type: self.gpu_type,
            duration_s: self.duration_s,
            latency_target_ms: self.latency_target_ms,
            interruptible: self.interruptible,
            deadline: self.deadline,
            input: self.input,
        }
    }
}

/// Where to go next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Links {
    /// The workload.
    #[serde(rename = "self")]
    pub self_: String,
    /// Its status (queue position, ETA, progress).
    pub status: String,
    /// Cancel it (POST).
    pub cancel: String,
}

impl Links {
    /// Links of a workload.
    pub fn of(workload_id: Uuid) -> Self {
        let base = format!("/api/v1/workloads/{workload_id}");
        Self {
            status: format!("{base}/status"),
            cancel: format!("{base}/cancel"),
            self_: base,
        }
    }
}

/// A command was accepted (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Accepted {
    /// The workload.
    pub workload_id: Uuid,
    /// Its state now.
    pub state: String,
    /// Where to go next.
    pub links: Links,
}

impl Accepted {
    /// For a workload in `state`.
    pub fn new(workload_id: Uuid, state: impl Into<String>) -> Self {
        Self {
            workload_id,
            state: state.into(),
            links: Links::of(workload_id),
        }
    }
}

/// A workload as the board (or its own stream) shows it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct WorkloadView {
    /// The workload.
    pub workload_id: Uuid,
    /// The client's request id.
    pub request_id: Option<Uuid>,
    /// Owner tenant.
    pub tenant_id: String,
    /// The tenant's tier at submission.
    pub tier: Option<String>,
    /// Class (`unclassified` until stated or inferred).
    pub kind: String,
    /// Model.
    pub model: String,
    /// GPUs required.
    pub gpu_count: i32,
    /// Required GPU model.
    pub gpu_type: Option<String>,
    /// Minimum GPU memory, GiB.
    pub gpu_memory_gib: Option<i32>,
    /// Declared run time, seconds.
    pub duration_s: Option<i32>,
    /// Latency target, ms.
    pub latency_target_ms: Option<i32>,
    /// Whether it may be checkpointed and paused.
    pub interruptible: Option<bool>,
    /// Start-by deadline.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub deadline: Option<OffsetDateTime>,
    /// `rest` or `kafka`.
    pub source: Option<String>,
    /// `queued`, `scheduled`, `running`, `paused`, `preempted`, `completed`, `failed`, `cancelled`.
    pub state: String,
    /// Priority 1-10 once classified.
    pub priority: Option<i16>,
    /// Worker holding its GPUs (or where it last ran).
    pub worker_id: Option<String>,
    /// Its GPUs.
    pub gpu_ids: Vec<String>,
    /// Fraction done at the last checkpoint, 0-1.
    pub progress: f64,
    /// Why it is where it is (classification, refusal, preemption, failure).
    pub reason: Option<String>,
    /// Submitted at.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub submitted_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub updated_at: OffsetDateTime,
    /// Where to go next.
    pub links: Links,
}

impl From<WorkloadRecord> for WorkloadView {
    fn from(r: WorkloadRecord) -> Self {
        Self {
            links: Links::of(r.workload_id),
            workload_id: r.workload_id,
            request_id: r.request_id,
            tenant_id: r.tenant_id,
            tier: r.tier,
            kind: r.kind,
            model: r.model,
            gpu_count: r.gpu_count,
            gpu_type: r.gpu_type,
            gpu_memory_gib: r.gpu_memory_gib,
            duration_s: r.duration_s,
            latency_target_ms: r.latency_target_ms,
            interruptible: r.interruptible,
            deadline: r.deadline,
            source: r.source,
            state: r.state,
            priority: r.priority,
            worker_id: r.worker_id,
            gpu_ids: r.gpu_ids.unwrap_or_default(),
            progress: r.progress,
            reason: r.reason,
            submitted_at: r.submitted_at,
            updated_at: r.updated_at,
        }
    }
}

/// A page of workloads, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct WorkloadPage {
    /// The workloads.
    pub items: Vec<WorkloadView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/workloads/{workload_id}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct StatusView {
    /// The workload.
    pub workload_id: Uuid,
    /// Its state.
    pub state: String,
    /// Priority 1-10 once classified.
    pub priority: Option<i16>,
    /// Position in the shared queue (1 = next), by priority then age; only while queued.
    pub queue_position: Option<i64>,
    /// Estimated seconds until it starts (0 once it holds GPUs); absent when terminal or when
    /// the fleet has no healthy GPU. Estimate: (GPU-seconds of queued work ahead + GPU-seconds
    /// left on busy GPUs) / healthy GPUs in the fleet.
    pub eta_start_s: Option<f64>,
    /// Estimated seconds until it completes: start ETA + its own remaining work.
    pub eta_complete_s: Option<f64>,
    /// Fraction done at the last checkpoint, 0-1.
    pub progress: f64,
    /// Healthy GPUs in the fleet (the ETA's divisor).
    pub fleet_gpus: i64,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub updated_at: OffsetDateTime,
}

/// Queued workloads of one priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct PriorityDepth {
    /// Priority 1 (lowest) - 10 (highest).
    pub priority: u8,
    /// Queued workloads.
    pub depth: i64,
}

/// `GET /api/v1/queue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct QueueView {
    /// `tenant` (the caller's workloads) or `all` (admin).
    pub scope: String,
    /// The tenant, for the `tenant` scope.
    pub tenant_id: Option<String>,
    /// All queued workloads in scope.
    pub total: i64,
    /// Queued but not classified by the router yet (no priority).
    pub unclassified: i64,
    /// Depth per priority, 10 down to 1.
    pub by_priority: Vec<PriorityDepth>,
}

/// `POST /api/v1/admin/tenants`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Id: 1-64 of `A-Z a-z 0-9 . _ -`.
    pub id: String,
    /// Display name (1-128 characters).
    pub name: String,
    /// Tier.
    pub tier: Tier,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct TenantView {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// Created at.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
}

/// A new API key, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct CreatedKey {
    /// The tenant it authenticates.
    pub tenant_id: String,
    /// The key. Only its hash is stored: it cannot be shown again.
    pub key: String,
    /// Its first characters, to tell keys apart later.
    pub key_prefix: String,
    /// Created at.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
}

/// A GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct GpuView {
    /// Fleet-unique id.
    pub gpu_id: String,
    /// Model.
    pub model: String,
    /// Memory, MiB.
    pub memory_mib: i64,
    /// `available`, `allocated` or `unavailable` (worker lost).
    pub state: String,
    /// The workload holding it: shown to the admin, and to a tenant for its own workloads.
    pub workload_id: Option<Uuid>,
}

/// A worker and its GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkerView {
    /// The worker.
    pub worker_id: String,
    /// Site.
    pub site: String,
    /// `sim` or `cuda`.
    pub backend: String,
    /// `healthy` or `lost`.
    pub state: String,
    /// First registration.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub registered_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub updated_at: OffsetDateTime,
    /// Its GPUs.
    pub gpus: Vec<GpuView>,
}

/// `GET /api/v1/resources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ResourceList {
    /// Every worker, by id.
    pub workers: Vec<WorkerView>,
}

/// GPU counts.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct GpuCounts {
    /// GPU model (`all` for the fleet).
    pub model: String,
    /// All GPUs.
    pub total: i64,
    /// Held by workloads on healthy workers.
    pub allocated: i64,
    /// Healthy and free.
    pub available: i64,
    /// On lost workers.
    pub unavailable: i64,
    /// allocated / (total − unavailable) × 100; 0 without healthy GPUs.
    pub utilisation_pct: f64,
}

impl GpuCounts {
    /// Counts with the derived fields.
    pub fn new(model: String, total: i64, allocated: i64, unavailable: i64) -> Self {
        let healthy = total - unavailable;
        let utilisation_pct = if healthy > 0 {
            allocated as f64 * 100.0 / healthy as f64
        } else {
            0.0
        };
        Self {
            model,
            total,
            allocated,
            available: healthy - allocated,
            unavailable,
            utilisation_pct,
        }
    }
}

/// Worker counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkerCounts {
    /// All workers ever registered.
    pub total: i64,
    /// Healthy.
    pub healthy: i64,
    /// Lost.
    pub lost: i64,
}

/// `GET /api/v1/resources/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ResourceSummary {
    /// Workers.
    pub workers: WorkerCounts,
    /// The whole fleet's GPUs.
    pub gpus: GpuCounts,
    /// Per GPU model.
    pub by_model: Vec<GpuCounts>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_is_allocated_over_healthy_gpus() {
        let c = GpuCounts::new("H100".into(), 10, 3, 4);
        assert_eq!(c.available, 3);
        assert!((c.utilisation_pct - 50.0).abs() < 1e-9);
        assert_eq!(GpuCounts::new("x".into(), 2, 0, 2).utilisation_pct, 0.0);
    }

    #[test]
    fn the_submit_body_refuses_a_tenant_id() {
        let err = serde_json::from_str::<SubmitWorkload>(
            r#"{"tenant_id":"other","model":"m","gpu_count":1,"duration_s":1}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `tenant_id`"),
            "{err}"
        );
    }
}

/// `POST /api/v1/embeddings`: texts to embed, run as a real-time inference workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// Texts to embed (1-64, each 1-4,096 bytes), answered in the same order.
    pub texts: Vec<String>,
    /// Model; `all-MiniLM-L6-v2` (the default) is the one workers serve.
    #[serde(default)]
    pub model: Option<String>,
    /// Required GPU model, e.g. `H100`.
    #[serde(default)]
    pub gpu_type: Option<String>,
    /// Latency target, milliseconds (default 1,000).
    #[serde(default)]
    pub latency_target_ms: Option<u32>,
    /// How long to wait for the embeddings, milliseconds (0-60,000, default 10,000). Past it
    /// the reply is 202 with the workload; its result is at `/api/v1/workloads/{id}/result`.
    #[serde(default)]
    pub wait_ms: Option<u32>,
}

/// The embeddings a completed inference workload produced.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct EmbeddingsView {
    /// The workload that computed them.
    pub workload_id: Uuid,
    /// The model.
    pub model: String,
    /// Values per embedding.
    pub dims: u32,
    /// Where they were computed (`cuda` or `cpu`).
    pub device: String,
    /// Compute time on the worker, milliseconds.
    pub compute_ms: f64,
    /// One L2-normalised embedding per input text, in input order.
    pub embeddings: Vec<Vec<f32>>,
}
