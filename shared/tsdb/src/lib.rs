//! hcp-tsdb: device telemetry into PostgreSQL time-series tables (migration
//! `0007_telemetry.sql`; hypertables with TimescaleDB, hourly partitions without).
//!
//! - [`ingest`]: the exactly-once consumer of `telemetry` (`asic.telemetry_batch`) and
//!   `worker-reports` (`worker.heartbeat` GPU samples): many messages per transaction, rows
//!   written with `COPY`, partition offsets stored in the same transaction, malformed messages
//!   to dead letters with the reason;
//! - [`rows`]: the pure part: envelopes to `COPY` text rows and per-rack / per-worker power;
//! - [`maintenance`]: the 1-minute rollups, partitions ahead of time, retention;
//! - [`metrics_names`]: the `hcp_ingest_*` metrics.
//!
//! A process runs it all with [`spawn_ingest`], or awaits [`run`] inside its own task (e.g.
//! `ctx.spawn("telemetry ingest", async move { Ok(hcp_tsdb::run(..).await?) })`).

pub mod ingest;
pub mod maintenance;
pub mod metrics_names;
pub mod pgcopy;
pub mod rows;
pub mod settings;

use hcp_bus::{KafkaSettings, Producer};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use ingest::{CommitStats, Ingest, CONSUMER};
pub use settings::IngestSettings;

/// What can go wrong in the ingest's setup or its database maintenance.
#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    /// The Kafka client could not be created or subscribed (configuration: fix and restart).
    #[error("kafka: {0}")]
    Kafka(#[from] hcp_bus::BusError),
    /// A database statement failed (transient: retried on the next tick).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Runs `settings.consumers` ingest instances and the maintenance (rollups, partitions,
/// retention) until `shutdown` is cancelled. Fails only when a Kafka consumer cannot be
/// created.
pub async fn run(
    pool: PgPool,
    kafka: &KafkaSettings,
    producer: Producer,
    settings: IngestSettings,
    shutdown: CancellationToken,
) -> Result<(), TsdbError> {
    if let Err(e) = spawn_ingest(pool, kafka, producer, settings, shutdown)?.await {
        tracing::error!(error = %e, "telemetry ingest task panicked");
    }
    Ok(())
}

/// Starts `settings.consumers` ingest instances (one consumer group: each owns some
/// partitions, with its own transactions) and the maintenance, as tasks that stop when
/// `shutdown` is cancelled. The handle resolves when all have stopped.
pub fn spawn_ingest(
    pool: PgPool,
    kafka: &KafkaSettings,
    producer: Producer,
    settings: IngestSettings,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, TsdbError> {
    metrics_names::describe();
    let mut ingests = Vec::new();
    for _ in 0..settings.consumers.max(1) {
        ingests.push(Ingest::new(
            kafka,
            pool.clone(),
            producer.clone(),
            settings.clone(),
        )?);
    }
    let maintenance = maintenance::run(pool, settings, shutdown.clone());
    Ok(tokio::spawn(async move {
        let tasks: Vec<_> = ingests
            .into_iter()
            .map(|i| tokio::spawn(i.run(shutdown.clone())))
            .collect();
        maintenance.await;
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "telemetry ingest task panicked");
            }
        }
    }))
}
