//! The fleet as the gateway shows it: workers and their GPUs from `worker.registered` and
//! `worker.lost` (topic `resources`; tables `gateway_workers`, `gateway_gpus`), and which GPUs
//! are allocated from the workload board (the view `gateway_allocations` over the rows of
//! workloads holding GPUs; migration 0010), so this projection reads no `workloads` event.
//!
//! Allocations are keyed by GPU id and kept apart from the inventory, so the two topics may
//! arrive in any order: a GPU allocated before its worker registered shows up allocated as soon
//! as it does.

use hcp_db::{ApplyError, Projection};
use hcp_events::{Envelope, Event};
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

/// A worker's health as last reported.
pub const WORKER_HEALTHY: &str = "healthy";
/// A worker declared lost (silent past the timeout).
pub const WORKER_LOST: &str = "lost";

/// What a GPU can do for new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuState {
    /// Healthy and free.
    Available,
    /// Healthy and held by a workload.
    Allocated,
    /// Its worker is lost.
    Unavailable,
}

impl GpuState {
    /// A GPU's state from its worker's health and whether it is allocated.
    pub fn of(worker_state: &str, allocated: bool) -> Self {
        match (worker_state == WORKER_HEALTHY, allocated) {
            (false, _) => GpuState::Unavailable,
            (true, true) => GpuState::Allocated,
            (true, false) => GpuState::Available,
        }
    }

    /// Wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            GpuState::Available => "available",
            GpuState::Allocated => "allocated",
            GpuState::Unavailable => "unavailable",
        }
    }
}

/// Workers, GPUs and allocations (tables `gateway_*`).
#[derive(Debug, Clone)]
pub struct ResourceBoard {
    name: String,
}

impl ResourceBoard {
    /// The projection under its standard consumer name.
    pub fn new() -> Self {
        Self::named("gateway-resources")
    }

    /// Under another consumer name.
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

impl Default for ResourceBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl Projection for ResourceBoard {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        match &e.payload {
            Event::WorkerRegistered(p) => {
                sqlx::query(
                    "INSERT INTO gateway_workers AS w (worker_id, site, backend, state, \
                         registered_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) \
                     ON CONFLICT (worker_id) DO UPDATE SET site = EXCLUDED.site, \
                         backend = EXCLUDED.backend, state = EXCLUDED.state, \
                         updated_at = EXCLUDED.updated_at",
                )
                .bind(&p.worker_id)
                .bind(&p.site)
                .bind(&p.backend)
                .bind(WORKER_HEALTHY)
                .bind(e.occurred_at)
                .execute(&mut *tx)
                .await?;
                let ids: Vec<&str> = p.gpus.iter().map(|g| g.gpu_id.as_str()).collect();
                let models: Vec<&str> = p.gpus.iter().map(|g| g.model.as_str()).collect();
                let memory: Vec<i64> = p
                    .gpus
                    .iter()
                    .map(|g| i64::try_from(g.memory_mib).unwrap_or(i64::MAX))
                    .collect();
                sqlx::query("DELETE FROM gateway_gpus WHERE worker_id = $1 AND gpu_id <> ALL($2)")
                    .bind(&p.worker_id)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO gateway_gpus (gpu_id, worker_id, model, memory_mib) \
                     SELECT g.id, $1, g.model, g.mem \
                     FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS g(id, model, mem) \
                     ON CONFLICT (gpu_id) DO UPDATE SET worker_id = EXCLUDED.worker_id, \
                         model = EXCLUDED.model, memory_mib = EXCLUDED.memory_mib",
                )
                .bind(&p.worker_id)
                .bind(&ids)
                .bind(&models)
                .bind(&memory)
                .execute(&mut *tx)
                .await?;
            }
            Event::WorkerLost(p) => {
                sqlx::query(
                    "UPDATE gateway_workers SET state = $2, updated_at = $3 WHERE worker_id = $1",
                )
                .bind(&p.worker_id)
                .bind(WORKER_LOST)
                .bind(e.occurred_at)
                .execute(&mut *tx)
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM gateway_gpus")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM gateway_workers")
            .execute(&mut *tx)
            .await
            .map(|_| ())
    }
}

/// A worker.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct WorkerRecord {
    /// The worker.
    pub worker_id: String,
    /// Site.
    pub site: String,
    /// `sim` or `cuda`.
    pub backend: String,
    /// `healthy` or `lost`.
    pub state: String,
    /// First registration.
    pub registered_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// A GPU with its worker's health and its allocation.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct GpuRecord {
    /// The GPU.
    pub gpu_id: String,
    /// Its worker.
    pub worker_id: String,
    /// Model, e.g. `H100`.
    pub model: String,
    /// Memory, MiB.
    pub memory_mib: i64,
    /// The worker's state.
    pub worker_state: String,
    /// The workload holding it.
    pub workload_id: Option<Uuid>,
    /// That workload's tenant (when the board knows it).
    pub workload_tenant: Option<String>,
}

impl GpuRecord {
    /// What the GPU can do for new work.
    pub fn state(&self) -> GpuState {
        GpuState::of(&self.worker_state, self.workload_id.is_some())
    }
}

/// Every worker (or one), by id.
pub async fn workers<'e>(
    db: impl PgExecutor<'e>,
    worker_id: Option<&str>,
) -> Result<Vec<WorkerRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT worker_id, site, backend, state, registered_at, updated_at FROM gateway_workers \
         WHERE ($1::text IS NULL OR worker_id = $1) ORDER BY worker_id",
    )
    .bind(worker_id)
    .fetch_all(db)
    .await
}

/// Every GPU (or one worker's), by worker and id.
pub async fn gpus<'e>(
    db: impl PgExecutor<'e>,
    worker_id: Option<&str>,
) -> Result<Vec<GpuRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT g.gpu_id, g.worker_id, g.model, g.memory_mib, w.state AS worker_state, \
                a.workload_id, b.tenant_id AS workload_tenant \
         FROM gateway_gpus g \
         JOIN gateway_workers w ON w.worker_id = g.worker_id \
         LEFT JOIN gateway_allocations a ON a.gpu_id = g.gpu_id \
         LEFT JOIN workload_board b ON b.workload_id = a.workload_id \
         WHERE ($1::text IS NULL OR g.worker_id = $1) ORDER BY g.worker_id, g.gpu_id",
    )
    .bind(worker_id)
    .fetch_all(db)
    .await
}

/// GPU counts of one model.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ModelCounts {
    /// GPU model.
    pub model: String,
    /// All GPUs of the model.
    pub total: i64,
    /// Held by a workload on a healthy worker.
    pub allocated: i64,
    /// On lost workers.
    pub unavailable: i64,
}

impl ModelCounts {
    /// Healthy and free.
    pub fn available(&self) -> i64 {
        self.total - self.allocated - self.unavailable
    }
}

/// GPU counts per model, by model name.
pub async fn gpu_counts<'e>(db: impl PgExecutor<'e>) -> Result<Vec<ModelCounts>, sqlx::Error> {
    sqlx::query_as(
        "SELECT g.model, count(*) AS total, \
                count(*) FILTER (WHERE w.state = 'healthy' AND a.gpu_id IS NOT NULL) AS allocated, \
                count(*) FILTER (WHERE w.state <> 'healthy') AS unavailable \
         FROM gateway_gpus g \
         JOIN gateway_workers w ON w.worker_id = g.worker_id \
         LEFT JOIN gateway_allocations a ON a.gpu_id = g.gpu_id \
         GROUP BY g.model ORDER BY g.model",
    )
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_on_a_lost_worker_is_unavailable_whether_or_not_it_was_allocated() {
        assert_eq!(GpuState::of(WORKER_LOST, true), GpuState::Unavailable);
        assert_eq!(GpuState::of(WORKER_LOST, false), GpuState::Unavailable);
        assert_eq!(GpuState::of(WORKER_HEALTHY, true), GpuState::Allocated);
        assert_eq!(GpuState::of(WORKER_HEALTHY, false), GpuState::Available);
    }

    #[test]
    fn available_gpus_are_the_healthy_unallocated_ones() {
        let c = ModelCounts {
            model: "H100".into(),
            total: 8,
            allocated: 3,
            unavailable: 2,
        };
        assert_eq!(c.available(), 3);
    }
}
