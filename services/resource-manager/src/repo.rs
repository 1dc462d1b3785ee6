//! SQL of the resource-manager's tables (`rm_workers`, `rm_gpus`, `rm_allocations`,
//! `rm_runs`). Every function takes the caller's connection or transaction.

use std::collections::HashMap;
use std::time::Duration;

use hcp_events::payload::GpuSpec;
use sqlx::{types::Json, PgConnection};
use uuid::Uuid;

pub use hcp_allocation::ledger::{
    all_workers, allocate_many, could_fit, fleet_could_fit, holders, lock_pool, lock_pools,
    undo_allocations, upsert_runs, workers, NewRun, WorkerRow,
};

use crate::domain::HeldRun;

/// Reads a worker; `for_update` locks its row for the transaction.
pub async fn worker(
    conn: &mut PgConnection,
    worker_id: &str,
    for_update: bool,
) -> Result<Option<WorkerRow>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT worker_id, site, backend, state, gpus, last_report_id \
         FROM rm_workers WHERE worker_id = $1{lock}"
    ))
    .bind(worker_id)
    .fetch_optional(conn)
    .await
}

/// A worker is declared lost when its last heartbeat is `worker_timeout` older than the newest
/// heartbeat of any worker (evidence that reports are flowing, so a lagging consumer cannot make
/// the fleet look silent), or older than this many timeouts by the clock (a fleet gone silent
/// together, or a one-worker fleet).
pub const ABSOLUTE_SILENCE_FACTOR: f64 = 6.0;

/// Records a heartbeat: creates or refreshes the worker (healthy, seen at the heartbeat's own
/// time, never later than now).
#[tracing::instrument(skip_all, fields(worker_id = %worker_id), err)]
pub async fn upsert_worker(
    conn: &mut PgConnection,
    worker_id: &str,
    site: &str,
    backend: &str,
    gpus: &[GpuSpec],
    report_id: Uuid,
    sent_at: time::OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let beat = Beat {
        worker_id,
        site,
        backend,
        gpus,
        report_id,
        sent_at,
    };
    upsert_workers(conn, &[beat]).await
}

/// Replaces a worker's GPUs with the reported ones (its inventory, written when it
/// registers).
#[tracing::instrument(skip_all, fields(worker_id = %worker_id, gpus = gpus.len()), err)]
pub async fn upsert_gpus(
    conn: &mut PgConnection,
    worker_id: &str,
    gpus: &[GpuSpec],
) -> Result<(), sqlx::Error> {
    upsert_inventories(conn, &[(worker_id, gpus)]).await
}

/// Ends a workload's live allocation; returns the GPUs released.
#[tracing::instrument(skip(conn), err)]
pub async fn release(
    conn: &mut PgConnection,
    workload_id: Uuid,
    reason: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE rm_allocations SET released_at = clock_timestamp(), release_reason = $2 \
         WHERE workload_id = $1 AND released_at IS NULL RETURNING gpu_id",
    )
    .bind(workload_id)
    .bind(reason)
    .fetch_all(conn)
    .await
}

/// A workload's live allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAllocation {
    /// The worker.
    pub worker_id: String,
    /// Its pool.
    pub site: String,
    /// The GPUs, sorted.
    pub gpu_ids: Vec<String>,
}

/// The live allocation of a workload, if any.
pub async fn live_allocation(
    conn: &mut PgConnection,
    workload_id: Uuid,
) -> Result<Option<LiveAllocation>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.worker_id, w.site, a.gpu_id FROM rm_allocations a \
         JOIN rm_workers w ON w.worker_id = a.worker_id \
         WHERE a.workload_id = $1 AND a.released_at IS NULL ORDER BY a.gpu_id",
    )
    .bind(workload_id)
    .fetch_all(conn)
    .await?;
    let Some((worker_id, site, _)) = rows.first().cloned() else {
        return Ok(None);
    };
    Ok(Some(LiveAllocation {
        worker_id,
        site,
        gpu_ids: rows.into_iter().map(|r| r.2).collect(),
    }))
}

/// The runs a worker holds GPUs for, with their ages (measured on the database clock).
pub async fn held_runs(
    conn: &mut PgConnection,
    worker_id: &str,
) -> Result<Vec<HeldRun>, sqlx::Error> {
    Ok(held_runs_of(conn, &[worker_id])
        .await?
        .remove(worker_id)
        .unwrap_or_default())
}

/// [`held_runs`] of several workers in one read. A run is acknowledged once the worker
/// reported it started: the resource-manager then moved it past `scheduled`.
pub async fn held_runs_of(
    conn: &mut PgConnection,
    worker_ids: &[&str],
) -> Result<HashMap<String, Vec<HeldRun>>, sqlx::Error> {
    let rows: Vec<(String, Uuid, f64, Option<f64>, bool)> = sqlx::query_as(
        "SELECT a.worker_id, a.workload_id, \
             EXTRACT(EPOCH FROM clock_timestamp() - min(a.allocated_at))::float8, \
             EXTRACT(EPOCH FROM clock_timestamp() - r.missing_since)::float8, \
             COALESCE(r.state <> 'scheduled', true) \
         FROM rm_allocations a LEFT JOIN rm_runs r ON r.workload_id = a.workload_id \
         WHERE a.worker_id = ANY($1) AND a.released_at IS NULL \
         GROUP BY a.worker_id, a.workload_id, r.missing_since, r.state \
         ORDER BY a.worker_id, a.workload_id",
    )
    .bind(worker_ids)
    .fetch_all(conn)
    .await?;
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let mut out: HashMap<String, Vec<HeldRun>> = HashMap::new();
    for (worker_id, workload_id, held, missing, acknowledged) in rows {
        out.entry(worker_id).or_default().push(HeldRun {
            workload_id,
            held_for: secs(held),
            missing_for: missing.map(secs),
            acknowledged,
        });
    }
    Ok(out)
}

/// Reads and locks several workers' rows, in id order (two such reads cannot deadlock).
pub async fn lock_workers(
    conn: &mut PgConnection,
    worker_ids: &[&str],
) -> Result<HashMap<String, WorkerRow>, sqlx::Error> {
    let rows: Vec<WorkerRow> = sqlx::query_as(
        "SELECT worker_id, site, backend, state, gpus, last_report_id FROM rm_workers \
         WHERE worker_id = ANY($1) ORDER BY worker_id FOR UPDATE",
    )
    .bind(worker_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|w| (w.worker_id.clone(), w)).collect())
}

/// One heartbeat as [`upsert_workers`] stores it.
#[derive(Debug, Clone, Copy)]
pub struct Beat<'a> {
    /// The worker.
    pub worker_id: &'a str,
    /// Its pool.
    pub site: &'a str,
    /// Its backend.
    pub backend: &'a str,
    /// Its GPUs.
    pub gpus: &'a [GpuSpec],
    /// The heartbeat's event id.
    pub report_id: Uuid,
    /// When it was sent.
    pub sent_at: time::OffsetDateTime,
}

/// [`upsert_worker`] for several workers in one statement (distinct workers, in id order).
pub async fn upsert_workers(
    conn: &mut PgConnection,
    beats: &[Beat<'_>],
) -> Result<(), sqlx::Error> {
    if beats.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = beats.iter().map(|b| b.worker_id).collect();
    let sites: Vec<&str> = beats.iter().map(|b| b.site).collect();
    let backends: Vec<&str> = beats.iter().map(|b| b.backend).collect();
    let gpus: Vec<Json<&[GpuSpec]>> = beats.iter().map(|b| Json(b.gpus)).collect();
    let reports: Vec<Uuid> = beats.iter().map(|b| b.report_id).collect();
    let sent: Vec<time::OffsetDateTime> = beats.iter().map(|b| b.sent_at).collect();
    sqlx::query(
        "INSERT INTO rm_workers (worker_id, site, backend, state, gpus, last_seen, last_report_id) \
         SELECT u.id, u.site, u.backend, 'healthy', u.gpus, LEAST(u.sent, clock_timestamp()), \
                u.report \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::uuid[], \
                     $6::timestamptz[]) AS u(id, site, backend, gpus, report, sent) \
         ON CONFLICT (worker_id) DO UPDATE SET site = EXCLUDED.site, backend = EXCLUDED.backend, \
             state = 'healthy', gpus = EXCLUDED.gpus, \
             last_seen = GREATEST(rm_workers.last_seen, EXCLUDED.last_seen), \
             last_report_id = EXCLUDED.last_report_id, lost_at = NULL",
    )
    .bind(&ids)
    .bind(&sites)
    .bind(&backends)
    .bind(&gpus)
    .bind(&reports)
    .bind(&sent)
    .execute(conn)
    .await
    .map(|_| ())
}

/// [`upsert_gpus`] for several workers: two statements in all.
pub async fn upsert_inventories(
    conn: &mut PgConnection,
    inventories: &[(&str, &[GpuSpec])],
) -> Result<(), sqlx::Error> {
    if inventories.is_empty() {
        return Ok(());
    }
    let workers: Vec<&str> = inventories.iter().map(|(w, _)| *w).collect();
    let mut owner = Vec::new();
    let mut ids = Vec::new();
    let mut models = Vec::new();
    let mut memory = Vec::new();
    let mut listed: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (worker, gpus) in inventories {
        // A GPU listed twice is written once (the statement may touch a row only once).
        for g in gpus.iter().filter(|g| listed.insert(g.gpu_id.as_str())) {
            owner.push(*worker);
            ids.push(g.gpu_id.as_str());
            models.push(g.model.as_str());
            memory.push(i64::try_from(g.memory_mib).unwrap_or(i64::MAX));
        }
    }
    sqlx::query(
        "DELETE FROM rm_gpus g WHERE g.worker_id = ANY($1) AND NOT EXISTS \
             (SELECT 1 FROM UNNEST($2::text[], $3::text[]) AS u(worker, gpu) \
              WHERE u.worker = g.worker_id AND u.gpu = g.gpu_id)",
    )
    .bind(&workers)
    .bind(&owner)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO rm_gpus AS g (gpu_id, worker_id, model, memory_mib) \
         SELECT u.id, u.worker, u.model, u.mem \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(id, worker, model, mem) \
         ORDER BY u.id \
         ON CONFLICT (gpu_id) DO UPDATE SET worker_id = EXCLUDED.worker_id, \
             model = EXCLUDED.model, memory_mib = EXCLUDED.memory_mib",
    )
    .bind(&ids)
    .bind(&owner)
    .bind(&models)
    .bind(&memory)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Starts (`missing`) or stops the clock of runs omitted from heartbeats.
pub async fn set_missing(
    conn: &mut PgConnection,
    workload_ids: &[Uuid],
    missing: bool,
) -> Result<(), sqlx::Error> {
    if workload_ids.is_empty() {
        return Ok(());
    }
    let sql = if missing {
        "UPDATE rm_runs SET missing_since = clock_timestamp() \
         WHERE workload_id = ANY($1) AND missing_since IS NULL"
    } else {
        "UPDATE rm_runs SET missing_since = NULL WHERE workload_id = ANY($1)"
    };
    sqlx::query(sql)
        .bind(workload_ids)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Updates what the resource-manager knows of a run after an append or a read
/// (`checkpoint_progress` `None` keeps the stored one).
pub async fn update_run(
    conn: &mut PgConnection,
    workload_id: Uuid,
    state: &str,
    stream_version: i64,
    checkpoint_progress: Option<f64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE rm_runs SET state = $2, stream_version = GREATEST(stream_version, $3), \
             checkpoint_progress = COALESCE($4, checkpoint_progress), \
             updated_at = clock_timestamp() WHERE workload_id = $1",
    )
    .bind(workload_id)
    .bind(state)
    .bind(stream_version)
    .bind(checkpoint_progress)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Sequence of the `workload.scheduled` event of a run's current placement.
pub async fn scheduled_version(
    conn: &mut PgConnection,
    workload_id: Uuid,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT scheduled_version FROM rm_runs WHERE workload_id = $1")
        .bind(workload_id)
        .fetch_optional(conn)
        .await
}

/// A healthy worker silent past the timeout.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SilentWorker {
    /// The worker.
    pub worker_id: String,
    /// Its pool.
    pub site: String,
}

/// Healthy workers that are silent (see [`ABSOLUTE_SILENCE_FACTOR`]).
pub async fn silent_workers(
    conn: &mut PgConnection,
    timeout: Duration,
) -> Result<Vec<SilentWorker>, sqlx::Error> {
    sqlx::query_as(
        "SELECT worker_id, site FROM rm_workers WHERE state = 'healthy' \
         AND last_seen < clock_timestamp() - make_interval(secs => $1) \
         AND (last_seen < (SELECT max(last_seen) FROM rm_workers) - make_interval(secs => $1) \
              OR last_seen < clock_timestamp() - make_interval(secs => $1 * $2)) \
         ORDER BY site, worker_id",
    )
    .bind(timeout.as_secs_f64())
    .bind(ABSOLUTE_SILENCE_FACTOR)
    .fetch_all(conn)
    .await
}

/// Marks a worker lost if it is still healthy and silent (checked again under the pool lock).
/// Returns how long it was silent and its last heartbeat's id. A row locked by a heartbeat
/// being applied right now is skipped, not waited for: that worker is alive, and waiting
/// (pool lock held) for a transaction that may want the pool lock next could deadlock.
pub async fn mark_lost(
    conn: &mut PgConnection,
    worker_id: &str,
    timeout: Duration,
) -> Result<Option<(f64, Option<Uuid>)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE rm_workers SET state = 'lost', lost_at = clock_timestamp() \
         WHERE worker_id = (SELECT worker_id FROM rm_workers \
             WHERE worker_id = $1 AND state = 'healthy' \
               AND last_seen < clock_timestamp() - make_interval(secs => $2) \
               AND (last_seen < (SELECT max(last_seen) FROM rm_workers) - make_interval(secs => $2) \
                    OR last_seen < clock_timestamp() - make_interval(secs => $2 * $3)) \
             FOR UPDATE SKIP LOCKED) \
         RETURNING EXTRACT(EPOCH FROM clock_timestamp() - last_seen)::float8, last_report_id",
    )
    .bind(worker_id)
    .bind(timeout.as_secs_f64())
    .bind(ABSOLUTE_SILENCE_FACTOR)
    .fetch_optional(conn)
    .await
}

/// The workloads holding GPUs on a worker.
pub async fn workloads_on(
    conn: &mut PgConnection,
    worker_id: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT workload_id FROM rm_allocations \
         WHERE worker_id = $1 AND released_at IS NULL ORDER BY workload_id",
    )
    .bind(worker_id)
    .fetch_all(conn)
    .await
}

/// Live allocations and workers by state, for the gauges.
pub async fn gauges(conn: &mut PgConnection) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM rm_allocations WHERE released_at IS NULL), \
                (SELECT count(*) FROM rm_workers WHERE state = 'healthy'), \
                (SELECT count(*) FROM rm_workers WHERE state = 'lost')",
    )
    .fetch_one(conn)
    .await
}

/// Deletes everything the resource-manager wrote (before a rebuild).
pub async fn reset(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("TRUNCATE rm_allocations, rm_runs, rm_gpus, rm_workers")
        .execute(conn)
        .await
        .map(|_| ())
}

// The set-based forms used by the batch path (`crate::batch`): one statement for a whole batch.

/// [`release`] for many workloads, each with its reason.
pub async fn release_many(
    conn: &mut PgConnection,
    releases: &[(Uuid, &str)],
) -> Result<(), sqlx::Error> {
    if releases.is_empty() {
        return Ok(());
    }
    let (ids, reasons): (Vec<Uuid>, Vec<&str>) = releases.iter().copied().unzip();
    sqlx::query(
        "UPDATE rm_allocations a SET released_at = clock_timestamp(), release_reason = u.reason \
         FROM UNNEST($1::uuid[], $2::text[]) AS u(id, reason) \
         WHERE a.workload_id = u.id AND a.released_at IS NULL",
    )
    .bind(&ids)
    .bind(&reasons)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The live allocations of many workloads.
pub async fn live_allocations(
    conn: &mut PgConnection,
    workload_ids: &[Uuid],
) -> Result<HashMap<Uuid, LiveAllocation>, sqlx::Error> {
    let rows: Vec<(Uuid, String, String, String)> = sqlx::query_as(
        "SELECT a.workload_id, a.worker_id, w.site, a.gpu_id FROM rm_allocations a \
         JOIN rm_workers w ON w.worker_id = a.worker_id \
         WHERE a.workload_id = ANY($1) AND a.released_at IS NULL \
         ORDER BY a.workload_id, a.gpu_id",
    )
    .bind(workload_ids)
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<Uuid, LiveAllocation> = HashMap::new();
    for (workload_id, worker_id, site, gpu_id) in rows {
        out.entry(workload_id)
            .or_insert_with(|| LiveAllocation {
                worker_id,
                site,
                gpu_ids: Vec::new(),
            })
            .gpu_ids
            .push(gpu_id);
    }
    Ok(out)
}

/// A run's new state after an append ([`update_run`]'s arguments).
#[derive(Debug, Clone, Copy)]
pub struct RunUpdate<'a> {
    /// The workload.
    pub workload_id: Uuid,
    /// Its state.
    pub state: &'a str,
    /// The stream version reached.
    pub stream_version: i64,
    /// A new checkpoint (`None` keeps the stored one).
    pub checkpoint_progress: Option<f64>,
}

/// [`update_run`] for many runs.
pub async fn update_runs(
    conn: &mut PgConnection,
    updates: &[RunUpdate<'_>],
) -> Result<(), sqlx::Error> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.workload_id).collect();
    let states: Vec<&str> = updates.iter().map(|u| u.state).collect();
    let versions: Vec<i64> = updates.iter().map(|u| u.stream_version).collect();
    let checkpoints: Vec<Option<f64>> = updates.iter().map(|u| u.checkpoint_progress).collect();
    sqlx::query(
        "UPDATE rm_runs r SET state = u.state, \
             stream_version = GREATEST(r.stream_version, u.v), \
             checkpoint_progress = COALESCE(u.checkpoint, r.checkpoint_progress), \
             updated_at = clock_timestamp() \
         FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::float8[]) \
              AS u(id, state, v, checkpoint) WHERE r.workload_id = u.id",
    )
    .bind(&ids)
    .bind(&states)
    .bind(&versions)
    .bind(&checkpoints)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The pools (sites) of these workers and of the live allocations of these workloads.
pub async fn sites_of(
    conn: &mut PgConnection,
    worker_ids: &[&str],
    workload_ids: &[Uuid],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT site FROM rm_workers WHERE worker_id = ANY($1) \
         UNION \
         SELECT w.site FROM rm_allocations a JOIN rm_workers w ON w.worker_id = a.worker_id \
         WHERE a.workload_id = ANY($2) AND a.released_at IS NULL",
    )
    .bind(worker_ids)
    .bind(workload_ids)
    .fetch_all(conn)
    .await
}
