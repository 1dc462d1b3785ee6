//! Fleet handlers, from the gateway's resource read model ([`hcp_readmodel::resources`]).

use axum::extract::{Path, State};
use axum::Json;
use hcp_readmodel::resources::{self as fleet, GpuRecord, WorkerRecord, WORKER_HEALTHY};

use super::extract::Caller;
use super::views::{GpuCounts, GpuView, ResourceList, ResourceSummary, WorkerCounts, WorkerView};
use super::AppState;
use crate::error::ApiError;

fn worker_view(caller: &Caller, w: WorkerRecord, gpus: &[GpuRecord]) -> WorkerView {
    let gpus = gpus
        .iter()
        .filter(|g| g.worker_id == w.worker_id)
        .map(|g| GpuView {
            gpu_id: g.gpu_id.clone(),
            model: g.model.clone(),
            memory_mib: g.memory_mib,
            state: g.state().as_str().to_owned(),
            // Another tenant's workload id is not this tenant's business.
            workload_id: g.workload_id.filter(|_| {
                caller.tenant_scope().is_none()
                    || g.workload_tenant.as_deref() == caller.tenant_scope()
            }),
        })
        .collect();
    WorkerView {
        worker_id: w.worker_id,
        site: w.site,
        backend: w.backend,
        state: w.state,
        registered_at: w.registered_at,
        updated_at: w.updated_at,
        gpus,
    }
}

/// `GET /api/v1/resources`.
#[tracing::instrument(skip_all)]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<ResourceList>, ApiError> {
    let workers = fleet::workers(app.pool(), None).await?;
    let gpus = fleet::gpus(app.pool(), None).await?;
    Ok(Json(ResourceList {
        workers: workers
            .into_iter()
            .map(|w| worker_view(&caller, w, &gpus))
            .collect(),
    }))
}

/// `GET /api/v1/resources/{worker_id}`.
#[tracing::instrument(skip_all, fields(worker_id = %worker_id))]
pub async fn one(
    State(app): State<AppState>,
    caller: Caller,
    Path(worker_id): Path<String>,
) -> Result<Json<WorkerView>, ApiError> {
    let worker = fleet::workers(app.pool(), Some(&worker_id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::NotFound(format!("worker {worker_id}")))?;
    let gpus = fleet::gpus(app.pool(), Some(&worker_id)).await?;
    Ok(Json(worker_view(&caller, worker, &gpus)))
}

/// `GET /api/v1/resources/summary`.
#[tracing::instrument(skip_all)]
pub async fn summary(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<ResourceSummary>, ApiError> {
    let workers = fleet::workers(app.pool(), None).await?;
    let healthy = workers.iter().filter(|w| w.state == WORKER_HEALTHY).count() as i64;
    let counts = fleet::gpu_counts(app.pool()).await?;
    let by_model: Vec<GpuCounts> = counts
        .iter()
        .map(|c| GpuCounts::new(c.model.clone(), c.total, c.allocated, c.unavailable))
        .collect();
    let gpus = GpuCounts::new(
        "all".into(),
        counts.iter().map(|c| c.total).sum(),
        counts.iter().map(|c| c.allocated).sum(),
        counts.iter().map(|c| c.unavailable).sum(),
    );
    Ok(Json(ResourceSummary {
        workers: WorkerCounts {
            total: workers.len() as i64,
            healthy,
            lost: workers.len() as i64 - healthy,
        },
        gpus,
        by_model,
    }))
}
