//! The ledger's SQL (tables `rm_allocations`, `rm_runs`, `rm_workers`): the pool locks, the
//! workers' inventory as the resource-manager records it from heartbeats, the live holders of
//! GPUs, and the set-based writes of new allocations and runs. Every function takes the
//! caller's transaction.

use std::collections::HashMap;

use hcp_events::payload::{GpuSpec, WorkloadSubmitted};
use sqlx::{types::Json, PgConnection};
use uuid::Uuid;

use crate::check::{gpu_fits, Holder, WorkerInfo};

/// Class of the pool advisory locks (`pg_advisory_xact_lock(class, hashtext(site))`): "RM".
const POOL_LOCK_CLASS: i32 = 0x524d;

/// Takes the pool's transaction-scoped lock: every allocation change in a pool (a site) runs
/// under it, so checking and allocating are one step whatever the number of consumers.
#[tracing::instrument(skip(conn), err)]
pub async fn lock_pool(conn: &mut PgConnection, site: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(POOL_LOCK_CLASS)
        .bind(site)
        .execute(conn)
        .await
        .map(|_| ())
}

/// A worker row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkerRow {
    /// Id.
    pub worker_id: String,
    /// Pool.
    pub site: String,
    /// Backend.
    pub backend: String,
    /// `healthy` or `lost`.
    pub state: String,
    /// Registered GPUs.
    pub gpus: Json<Vec<GpuSpec>>,
    /// Last heartbeat event id.
    pub last_report_id: Option<Uuid>,
}

impl WorkerRow {
    /// Whether it is healthy.
    pub fn healthy(&self) -> bool {
        self.state == "healthy"
    }

    /// The placement check's view.
    pub fn info(&self) -> WorkerInfo {
        WorkerInfo {
            worker_id: self.worker_id.clone(),
            healthy: self.healthy(),
            gpus: self.gpus.0.clone(),
        }
    }
}

/// The live allocations of any of `gpu_ids`.
pub async fn holders(
    conn: &mut PgConnection,
    gpu_ids: &[String],
) -> Result<Vec<Holder>, sqlx::Error> {
    let rows: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT gpu_id, workload_id FROM rm_allocations \
         WHERE gpu_id = ANY($1) AND released_at IS NULL ORDER BY gpu_id",
    )
    .bind(gpu_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(gpu_id, workload_id)| Holder {
            gpu_id,
            workload_id,
        })
        .collect())
}

/// Whether some known worker (healthy or not) has enough GPUs meeting the workload's
/// constraints; `true` when no worker is known yet (nothing can be ruled out).
pub async fn fleet_could_fit(
    conn: &mut PgConnection,
    workload: &WorkloadSubmitted,
) -> Result<bool, sqlx::Error> {
    Ok(could_fit(&all_workers(conn).await?, workload))
}

/// Every worker (the fleet, for [`could_fit`]).
pub async fn all_workers(conn: &mut PgConnection) -> Result<Vec<WorkerRow>, sqlx::Error> {
    sqlx::query_as("SELECT worker_id, site, backend, state, gpus, last_report_id FROM rm_workers")
        .fetch_all(conn)
        .await
}

/// Whether any worker of `fleet` (lost ones included: they may come back) has enough GPUs that
/// fit the workload; an empty fleet could still grow.
pub fn could_fit(fleet: &[WorkerRow], workload: &WorkloadSubmitted) -> bool {
    fleet.is_empty()
        || fleet.iter().any(|w| {
            w.gpus.0.iter().filter(|g| gpu_fits(workload, g)).count() >= workload.gpu_count as usize
        })
}

/// Reads many workers, by id.
pub async fn workers(
    conn: &mut PgConnection,
    worker_ids: &[String],
) -> Result<HashMap<String, WorkerRow>, sqlx::Error> {
    let rows: Vec<WorkerRow> = sqlx::query_as(
        "SELECT worker_id, site, backend, state, gpus, last_report_id \
         FROM rm_workers WHERE worker_id = ANY($1)",
    )
    .bind(worker_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|w| (w.worker_id.clone(), w)).collect())
}

/// Takes the locks of several pools, in name order (so two batches cannot deadlock each other).
pub async fn lock_pools<'a>(
    conn: &mut PgConnection,
    sites: impl IntoIterator<Item = &'a str>,
) -> Result<(), sqlx::Error> {
    let mut sites: Vec<&str> = sites.into_iter().collect();
    sites.sort_unstable();
    sites.dedup();
    for site in sites {
        lock_pool(conn, site).await?;
    }
    Ok(())
}

/// Takes the locks of the pools of `worker_ids` (their sites as recorded now), in name order,
/// in one statement: [`lock_pools`] without a read of the workers first. The order is by
/// bytes (`COLLATE "C"`), as [`lock_pools`] sorts, whatever the database's collation.
pub async fn lock_pools_of(
    conn: &mut PgConnection,
    worker_ids: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock($1, hashtext(s.site))) FROM ( \
             SELECT DISTINCT site COLLATE \"C\" AS site FROM rm_workers \
             WHERE worker_id = ANY($2) ORDER BY 1) s",
    )
    .bind(POOL_LOCK_CLASS)
    .bind(worker_ids)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Inserts the allocations of many gangs (`(workload, worker, gpu)` rows). Returns, per
/// workload, how many rows went in (the partial unique index refuses a held GPU).
pub async fn allocate_many(
    conn: &mut PgConnection,
    rows: &[(Uuid, &str, &str)],
) -> Result<HashMap<Uuid, usize>, sqlx::Error> {
    let (w, (k, g)): (Vec<Uuid>, (Vec<&str>, Vec<&str>)) =
        rows.iter().map(|(w, k, g)| (*w, (*k, *g))).unzip();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO rm_allocations (workload_id, worker_id, gpu_id) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]) \
         ON CONFLICT (gpu_id) WHERE released_at IS NULL DO NOTHING RETURNING workload_id",
    )
    .bind(&w)
    .bind(&k)
    .bind(&g)
    .fetch_all(conn)
    .await?;
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for id in inserted {
        *counts.entry(id).or_default() += 1;
    }
    Ok(counts)
}

/// Removes allocations this transaction inserted that must not stand (their answer's append
/// failed, or the backstop refused part of a gang).
pub async fn undo_allocations(
    conn: &mut PgConnection,
    workload_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    if workload_ids.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM rm_allocations WHERE workload_id = ANY($1) AND released_at IS NULL")
        .bind(workload_ids)
        .execute(conn)
        .await
        .map(|_| ())
}

/// A placement to record in `rm_runs`.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// The workload.
    pub workload_id: Uuid,
    /// Where it runs.
    pub worker_id: &'a str,
    /// Its model.
    pub model: &'a str,
    /// Its declared duration.
    pub duration_s: u32,
    /// Where it resumes from.
    pub checkpoint_progress: f64,
    /// The stream version of its `workload.scheduled`.
    pub stream_version: i64,
}

/// Records many placements in `rm_runs`, all `scheduled` (a placement again replaces the
/// earlier run's row).
pub async fn upsert_runs(conn: &mut PgConnection, runs: &[NewRun<'_>]) -> Result<(), sqlx::Error> {
    if runs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = runs.iter().map(|r| r.workload_id).collect();
    let workers: Vec<&str> = runs.iter().map(|r| r.worker_id).collect();
    let models: Vec<&str> = runs.iter().map(|r| r.model).collect();
    let durations: Vec<i32> = runs
        .iter()
        .map(|r| i32::try_from(r.duration_s).unwrap_or(i32::MAX))
        .collect();
    let checkpoints: Vec<f64> = runs.iter().map(|r| r.checkpoint_progress).collect();
    let versions: Vec<i64> = runs.iter().map(|r| r.stream_version).collect();
    sqlx::query(
        "INSERT INTO rm_runs (workload_id, worker_id, model, duration_s, checkpoint_progress, \
             state, stream_version, scheduled_version) \
         SELECT u.id, u.worker, u.model, u.duration, u.checkpoint, 'scheduled', u.v, u.v \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::float8[], $6::bigint[]) \
              AS u(id, worker, model, duration, checkpoint, v) \
         ON CONFLICT (workload_id) DO UPDATE SET worker_id = EXCLUDED.worker_id, \
             model = EXCLUDED.model, duration_s = EXCLUDED.duration_s, \
             checkpoint_progress = EXCLUDED.checkpoint_progress, state = EXCLUDED.state, \
             stream_version = EXCLUDED.stream_version, \
             scheduled_version = EXCLUDED.scheduled_version, missing_since = NULL, \
             updated_at = clock_timestamp()",
    )
    .bind(&ids)
    .bind(&workers)
    .bind(&models)
    .bind(&durations)
    .bind(&checkpoints)
    .bind(&versions)
    .execute(conn)
    .await
    .map(|_| ())
}
