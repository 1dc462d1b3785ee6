//! Upkeep of the telemetry tables, next to the ingest: the 1-minute rollups of closed minutes
//! (`hcp_rollup_telemetry`), partitions created ahead of the data (`hcp_ensure_partitions`,
//! so samples never pile up in the default partition) and retention (`hcp_apply_retention`).
//! Each pass is one SQL function call; a failed pass is logged and tried again next tick.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics_names as m;
use crate::{IngestSettings, TsdbError};

/// Serialises partition DDL between processes that run this maintenance.
const PARTITION_LOCK: i64 = 0x4843_5054_5344_4201;

/// Rolls up the pending minutes closed `grace` before now. Returns the minutes rolled up.
pub async fn rollup(pool: &PgPool, grace: Duration) -> Result<i32, TsdbError> {
    let started = Instant::now();
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let n: i32 = sqlx::query_scalar(
        "SELECT hcp_rollup_telemetry(now(), make_interval(secs => $1::float8 / 1000.0))",
    )
    .bind(grace_ms as f64)
    .fetch_one(pool)
    .await?;
    metrics::histogram!(m::ROLLUP_DURATION).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::ROLLUP_MINUTES).increment(u64::try_from(n).unwrap_or(0));
    Ok(n)
}

/// Creates every registered time-series table's partitions from one chunk ago to seven chunks
/// ahead, then applies retention. Returns (created, dropped).
pub async fn partitions(pool: &PgPool) -> Result<(i64, i32), TsdbError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK)
        .execute(&mut *tx)
        .await?;
    let created: Option<i64> = sqlx::query_scalar(
        "SELECT sum(hcp_ensure_partitions(table_name, now() - chunk, now() + 7 * chunk))::int8 \
         FROM timeseries_tables",
    )
    .fetch_one(&mut *tx)
    .await?;
    let dropped: i32 = sqlx::query_scalar("SELECT hcp_apply_retention(now())")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let created = created.unwrap_or(0);
    metrics::counter!(m::PARTITIONS, "action" => "created")
        .increment(u64::try_from(created).unwrap_or(0));
    metrics::counter!(m::PARTITIONS, "action" => "dropped")
        .increment(u64::try_from(dropped).unwrap_or(0));
    Ok((created, dropped))
}

/// Runs the rollups every `rollup_interval_ms` and the partition upkeep every
/// `maintenance_interval_s` (and once at start) until cancelled; a last rollup runs on the way
/// out.
pub async fn run(pool: PgPool, settings: IngestSettings, shutdown: CancellationToken) {
    let grace = Duration::from_millis(settings.rollup_grace_ms);
    let mut rollups =
        tokio::time::interval(Duration::from_millis(settings.rollup_interval_ms.max(100)));
    rollups.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut upkeep =
        tokio::time::interval(Duration::from_secs(settings.maintenance_interval_s.max(1)));
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = rollups.tick() => match rollup(&pool, grace).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(minutes = n, "telemetry rolled up"),
                Err(e) => tracing::warn!(error = %e, "telemetry rollup failed; retrying next tick"),
            },
            _ = upkeep.tick() => match partitions(&pool).await {
                Ok((created, dropped)) => {
                    tracing::info!(created, dropped, "time-series partitions maintained");
                }
                Err(e) => tracing::warn!(error = %e, "partition upkeep failed; retrying next tick"),
            },
        }
    }
    if let Err(e) = rollup(&pool, grace).await {
        tracing::debug!(error = %e, "final telemetry rollup failed");
    }
}
