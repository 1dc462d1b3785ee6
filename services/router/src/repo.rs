//! The router's SQL, in small named functions: the projection's worker and fleet writes (its
//! workload rows are folded in `fold`) and the placement loop's incremental reads.

use hcp_db::sqlx::{self, PgConnection, PgPool};
use hcp_domain::breaker::Breaker;
use hcp_domain::placement::{ClassCapacity, FleetShape};
use hcp_events::payload::WorkerRegistered;
use hcp_events::WorkloadKind;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

/// Column value of a kind.
pub const fn kind_str(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::RealtimeInference => "realtime_inference",
        WorkloadKind::BatchInference => "batch_inference",
        WorkloadKind::Training => "training",
    }
}

/// Parses a kind column.
pub fn parse_kind(s: &str) -> Option<WorkloadKind> {
    [
        WorkloadKind::RealtimeInference,
        WorkloadKind::BatchInference,
        WorkloadKind::Training,
    ]
    .into_iter()
    .find(|k| kind_str(*k) == s)
}

/// The fleet's largest gang per GPU class (what could ever be placed).
pub async fn fleet_shape(tx: &mut PgConnection) -> Result<FleetShape, sqlx::Error> {
    let rows: Vec<(String, i64, i32, String)> = sqlx::query_as(
        "SELECT model, memory_mib, largest_gang, worker_id FROM router_fleet_classes",
    )
    .fetch_all(tx)
    .await?;
    Ok(FleetShape::from_classes(rows.into_iter().map(
        |(model, memory_mib, gang, worker_id)| ClassCapacity {
            model,
            memory_mib: u64::try_from(memory_mib).unwrap_or(0),
            largest_gang: u32::try_from(gang).unwrap_or(0),
            worker_id,
        },
    )))
}

/// Upserts a worker and its GPUs (GPUs it no longer reports are marked removed), then
/// refreshes the per-class capacity tables.
#[tracing::instrument(skip_all, fields(worker_id = %p.worker_id), err)]
pub async fn register_worker(
    tx: &mut PgConnection,
    p: &WorkerRegistered,
    at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO router_workers (worker_id, site, backend, healthy, registered_at, updated_at) \
         VALUES ($1, $2, $3, true, $4, $4) \
         ON CONFLICT (worker_id) DO UPDATE SET site = EXCLUDED.site, \
             backend = EXCLUDED.backend, healthy = true, updated_at = EXCLUDED.updated_at",
    )
    .bind(&p.worker_id)
    .bind(&p.site)
    .bind(&p.backend)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let ids: Vec<&str> = p.gpus.iter().map(|g| g.gpu_id.as_str()).collect();
    let models: Vec<&str> = p.gpus.iter().map(|g| g.model.as_str()).collect();
    let memory: Vec<i64> = p
        .gpus
        .iter()
        .map(|g| i64::try_from(g.memory_mib).unwrap_or(i64::MAX))
        .collect();
    sqlx::query(
        "INSERT INTO router_gpus (gpu_id, worker_id, model, memory_mib) \
         SELECT g.id, $1, g.model, g.mem FROM UNNEST($2::text[], $3::text[], $4::bigint[]) \
             AS g(id, model, mem) \
         ON CONFLICT (gpu_id) DO UPDATE SET worker_id = EXCLUDED.worker_id, \
             model = EXCLUDED.model, memory_mib = EXCLUDED.memory_mib, removed = false \
         WHERE router_gpus.worker_id IS DISTINCT FROM EXCLUDED.worker_id \
            OR router_gpus.model IS DISTINCT FROM EXCLUDED.model \
            OR router_gpus.memory_mib IS DISTINCT FROM EXCLUDED.memory_mib \
            OR router_gpus.removed",
    )
    .bind(&p.worker_id)
    .bind(&ids)
    .bind(&models)
    .bind(&memory)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE router_gpus SET removed = true \
         WHERE worker_id = $1 AND NOT removed AND NOT (gpu_id = ANY($2))",
    )
    .bind(&p.worker_id)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    // Workloads scheduled before we saw this worker (the topics are not ordered with each
    // other) hold their GPUs all the same.
    sqlx::query(
        "UPDATE router_gpus g SET held_by = q.workload_id FROM router_queue q \
         WHERE g.worker_id = $1 AND g.held_by IS NULL AND NOT g.removed \
           AND q.worker_id = $1 AND g.gpu_id = ANY(q.gpu_ids) \
           AND q.state IN ('scheduled', 'running', 'paused', 'preempted')",
    )
    .bind(&p.worker_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM router_worker_classes WHERE worker_id = $1")
        .bind(&p.worker_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO router_worker_classes (worker_id, model, memory_mib, gpus) \
         SELECT worker_id, model, memory_mib, count(*) FROM router_gpus \
         WHERE worker_id = $1 AND NOT removed GROUP BY worker_id, model, memory_mib",
    )
    .bind(&p.worker_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM router_fleet_classes")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO router_fleet_classes (model, memory_mib, largest_gang, worker_id) \
         SELECT DISTINCT ON (model, memory_mib) model, memory_mib, gpus, worker_id \
         FROM router_worker_classes ORDER BY model, memory_mib, gpus DESC, worker_id",
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Marks a worker unhealthy.
pub async fn mark_lost(
    tx: &mut PgConnection,
    worker_id: &str,
    at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE router_workers SET healthy = false, updated_at = $2 WHERE worker_id = $1")
        .bind(worker_id)
        .bind(at)
        .execute(tx)
        .await?;
    Ok(())
}

/// Applies `change` to a worker's breaker (locked); unknown workers are ignored. Writes only
/// when the state changed.
pub async fn update_breaker(
    tx: &mut PgConnection,
    worker_id: &str,
    change: impl FnOnce(&mut Breaker),
) -> Result<(), sqlx::Error> {
    let current: Option<Json<Breaker>> =
        sqlx::query_scalar("SELECT breaker FROM router_workers WHERE worker_id = $1 FOR UPDATE")
            .bind(worker_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(Json(before)) = current else {
        return Ok(());
    };
    let mut after = before;
    change(&mut after);
    if after != before {
        sqlx::query("UPDATE router_workers SET breaker = $2 WHERE worker_id = $1")
            .bind(worker_id)
            .bind(Json(after))
            .execute(tx)
            .await?;
    }
    Ok(())
}

/// A worker as the placement loop reads it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct WorkerRow {
    /// Worker id.
    pub worker_id: String,
    /// Site.
    pub site: String,
    /// Not lost.
    pub healthy: bool,
    /// Breaker state.
    pub breaker: Json<Breaker>,
}

/// A GPU as the placement loop reads it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct GpuRow {
    /// GPU id.
    pub gpu_id: String,
    /// Its worker.
    pub worker_id: String,
    /// Model.
    pub model: String,
    /// Memory, MiB.
    pub memory_mib: i64,
    /// No longer reported.
    pub removed: bool,
    /// Holder, if any.
    pub held_by: Option<Uuid>,
}

/// A workload as the placement loop reads it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct WorkloadRow {
    /// The workload.
    pub workload_id: Uuid,
    /// Owner.
    pub tenant_id: String,
    /// Class (NULL until queued).
    pub kind: Option<String>,
    /// Priority (NULL until queued).
    pub priority: Option<i16>,
    /// Interruptible (NULL until queued).
    pub interruptible: Option<bool>,
    /// How the class was decided (the reason `workload.queued` gives).
    pub class_reason: Option<String>,
    /// GPUs wanted.
    pub gpu_count: i32,
    /// GPU type wanted.
    pub gpu_type: Option<String>,
    /// Memory per GPU wanted, MiB.
    pub gpu_memory_mib: i64,
    /// Start-by time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub deadline: Option<OffsetDateTime>,
    /// State.
    pub state: String,
    /// Last known stream version.
    pub last_version: i64,
    /// Last event id.
    pub last_event_id: Uuid,
    /// Correlation id of the workload's flow.
    pub correlation_id: Uuid,
    /// Refused placements.
    pub attempts: i32,
    /// Not before.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Worker of the proposal waiting for an answer.
    pub proposed_worker: Option<String>,
    /// GPUs of that proposal.
    pub proposed_gpus: Option<Vec<String>>,
    /// When it was proposed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub proposed_at: Option<OffsetDateTime>,
    /// Current worker.
    pub worker_id: Option<String>,
    /// Current GPUs.
    pub gpu_ids: Vec<String>,
    /// Since when progress is at risk.
    #[serde(with = "time::serde::rfc3339::option")]
    pub progress_at: Option<OffsetDateTime>,
    /// Real-time workload it was preempted for.
    pub preempted_for: Option<Uuid>,
    /// When it was last preempted.
    #[serde(with = "time::serde::rfc3339::option")]
    pub preempted_at: Option<OffsetDateTime>,
    /// When it (re)entered the queue.
    #[serde(with = "time::serde::rfc3339::option")]
    pub queued_at: Option<OffsetDateTime>,
    /// When it was submitted.
    #[serde(with = "time::serde::rfc3339")]
    pub submitted_at: OffsetDateTime,
}

/// Rows written since a watermark, read in one snapshot, and the next watermark.
#[derive(Debug, Default)]
pub struct Changes {
    /// The oldest transaction still running at this snapshot: the next read's watermark.
    pub next_watermark: i64,
    /// Changed workers.
    pub workers: Vec<WorkerRow>,
    /// Changed GPUs.
    pub gpus: Vec<GpuRow>,
    /// Changed workloads.
    pub workloads: Vec<WorkloadRow>,
}

/// The snapshot's oldest running transaction and the changed rows, as one row.
type ChangesRow = (
    String,
    Json<Vec<WorkerRow>>,
    Json<Vec<GpuRow>>,
    Json<Vec<WorkloadRow>>,
);

/// Reads every row written by a transaction at or after `watermark` (0: everything). Rows
/// may come again in a later read; never is one missed.
///
/// One statement, so one snapshot and one round trip (on an idle machine a round trip costs
/// about half a millisecond, and this read is on a lone submission's path): the snapshot's
/// oldest running transaction (the next watermark) and the three sets of rows, each as a JSON
/// array.
#[tracing::instrument(skip(pool), err)]
pub async fn read_changes(pool: &PgPool, watermark: i64) -> Result<Changes, sqlx::Error> {
    let since = watermark.to_string();
    let (next, workers, gpus, workloads): ChangesRow = sqlx::query_as(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, \
             (SELECT coalesce(json_agg(w), '[]') FROM ( \
                 SELECT worker_id, site, healthy, breaker FROM router_workers \
                 WHERE changed_xid >= $1::text::xid8) w), \
             (SELECT coalesce(json_agg(g), '[]') FROM ( \
                 SELECT gpu_id, worker_id, model, memory_mib, removed, held_by FROM router_gpus \
                 WHERE changed_xid >= $1::text::xid8) g), \
             (SELECT coalesce(json_agg(q ORDER BY q.queued_at NULLS LAST, q.submitted_at, \
                                         q.workload_id), '[]') FROM ( \
                 SELECT workload_id, tenant_id, kind, priority, interruptible, class_reason, \
                     gpu_count, gpu_type, gpu_memory_mib, deadline, state, last_version, \
                     last_event_id, correlation_id, attempts, next_attempt_at, proposed_worker, \
                     proposed_gpus, proposed_at, worker_id, gpu_ids, progress_at, preempted_for, \
                     preempted_at, queued_at, submitted_at \
                 FROM router_queue WHERE changed_xid >= $1::text::xid8) q)",
    )
    .bind(&since)
    .fetch_one(pool)
    .await?;
    Ok(Changes {
        next_watermark: next.parse().unwrap_or(watermark),
        workers: workers.0,
        gpus: gpus.0,
        workloads: workloads.0,
    })
}

/// Scoring attributes of a site.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SiteRow {
    /// Latency, ms.
    pub latency_ms: Option<f64>,
    /// Cost, $ per GPU-hour.
    pub cost_per_gpu_hour: Option<f64>,
    /// Profitability, 0-1.
    pub profitability: Option<f64>,
}

#[derive(sqlx::FromRow)]
struct SiteRecord {
    site: String,
    latency_ms: Option<f64>,
    cost_per_gpu_hour: Option<f64>,
    profitability: Option<f64>,
}

/// Every site's scoring attributes.
pub async fn read_sites(
    pool: &PgPool,
) -> Result<std::collections::HashMap<String, SiteRow>, sqlx::Error> {
    let rows: Vec<SiteRecord> = sqlx::query_as(
        "SELECT site, latency_ms, cost_per_gpu_hour, profitability FROM router_sites",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.site,
                SiteRow {
                    latency_ms: r.latency_ms,
                    cost_per_gpu_hour: r.cost_per_gpu_hour,
                    profitability: r.profitability,
                },
            )
        })
        .collect())
}

/// The stream version of every tracked workload among `streams` (workload streams), keyed by
/// stream id: the router projection's own idempotency marks.
pub async fn workload_marks(
    tx: &mut PgConnection,
    streams: &[&str],
) -> Result<std::collections::HashMap<String, i64>, sqlx::Error> {
    hcp_db::projection::workload_row_marks(
        tx,
        "SELECT workload_id, last_version FROM router_queue WHERE workload_id = ANY($1)",
        streams,
    )
    .await
}

/// Deletes workloads that ended before `before`. Returns how many.
pub async fn purge_ended(pool: &PgPool, before: OffsetDateTime) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM router_queue WHERE state IN ('completed', 'failed', 'cancelled') \
         AND updated_at < $1",
    )
    .bind(before)
    .execute(pool)
    .await?
    .rows_affected())
}
