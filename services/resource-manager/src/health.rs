//! The health sweep: a healthy worker silent past the timeout is declared lost, in one
//! transaction per pool under the pool lock: `worker.lost`, its allocations released, and each
//! of its workloads requeued from its last checkpoint. The sweep also refreshes the gauges.

use std::collections::BTreeMap;
use std::sync::Arc;

use hcp_db::sqlx::{self, PgPool};
use hcp_db::{ApplyError, EventStore, ExpectedVersion};
use hcp_events::payload::WorkerLost;
use hcp_events::{worker_stream, Envelope, Event};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::append::{publish, requeue_run, store_error, Topics, PRODUCER};
use crate::config::RmSettings;
use crate::domain::RequeueKind;
use crate::memo::HeartbeatMemo;
use crate::metrics as m;
use crate::repo;

/// Why a sweep failed (it is retried at the next tick).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Appending or requeueing failed.
    #[error("{0}")]
    Apply(#[from] ApplyError),
}

/// The periodic health sweep.
#[derive(Debug, Clone)]
pub struct HealthSweep {
    pool: PgPool,
    topics: Topics,
    settings: RmSettings,
    memo: Option<Arc<HeartbeatMemo>>,
}

impl HealthSweep {
    /// A sweep over `pool`.
    pub fn new(pool: PgPool, topics: Topics, settings: RmSettings) -> Self {
        Self {
            pool,
            topics,
            settings,
            memo: None,
        }
    }

    /// Also asks the consumer of the same process: a worker whose repeated heartbeats were
    /// answered from its memo (so its stored `last_seen` lags) is not silent.
    pub fn hearing(mut self, memo: Arc<HeartbeatMemo>) -> Self {
        self.memo = Some(memo);
        self
    }

    /// Sweeps every interval until cancelled. For the first timeout after start nobody is
    /// declared lost: heartbeats that arrived while this process was down are still being
    /// consumed, and a restart must not look like the whole fleet going silent.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(self.settings.sweep_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if started.elapsed() >= self.settings.worker_timeout() {
                let t = std::time::Instant::now();
                if let Err(e) = self.sweep_once().await {
                    tracing::warn!(error = %e, "health sweep failed; retrying at the next tick");
                }
                metrics::histogram!(m::SWEEP_DURATION).record(t.elapsed().as_secs_f64());
            }
            if let Err(e) = self.refresh_gauges().await {
                tracing::debug!(error = %e, "gauge refresh failed");
            }
        }
        Ok(())
    }

    /// One sweep: declares silent workers lost and requeues their work. Returns the workers
    /// declared lost.
    pub async fn sweep_once(&self) -> Result<Vec<String>, SweepError> {
        let timeout = self.settings.worker_timeout();
        let silent = repo::silent_workers(&mut *self.pool.acquire().await?, timeout).await?;
        let mut by_pool: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for w in silent {
            if self
                .memo
                .as_ref()
                .is_some_and(|m| m.heard_within(&w.worker_id, timeout))
            {
                continue;
            }
            by_pool.entry(w.site).or_default().push(w.worker_id);
        }
        let mut lost = Vec::new();
        for (site, workers) in by_pool {
            let mut tx = self.pool.begin().await?;
            repo::lock_pool(&mut tx, &site).await?;
            for worker_id in workers {
                // Checked again under the lock: a heartbeat may have arrived meanwhile.
                let Some((silent_s, last_report)) =
                    repo::mark_lost(&mut tx, &worker_id, timeout).await?
                else {
                    continue;
                };
                let span = tracing::info_span!("worker_lost", worker_id = %worker_id, site = %site);
                self.declare_lost(&mut tx, &worker_id, silent_s, last_report)
                    .instrument(span)
                    .await?;
                lost.push(worker_id);
            }
            tx.commit().await?;
        }
        Ok(lost)
    }

    async fn declare_lost(
        &self,
        tx: &mut sqlx::PgConnection,
        worker_id: &str,
        silent_s: f64,
        last_report: Option<uuid::Uuid>,
    ) -> Result<(), SweepError> {
        let stream = worker_stream(worker_id);
        let mut event = Envelope::new(
            &stream,
            PRODUCER,
            Event::WorkerLost(WorkerLost {
                worker_id: worker_id.to_owned(),
                silent_for_s: silent_s,
            }),
        );
        event.causation_id = last_report;
        EventStore::append(
            tx,
            &stream,
            ExpectedVersion::Any,
            std::slice::from_ref(&event),
            &publish(&self.topics.resources),
        )
        .await
        .map_err(store_error)?;
        metrics::counter!(m::WORKERS_LOST).increment(1);
        let workloads = repo::workloads_on(tx, worker_id).await?;
        tracing::warn!(
            silent_for_s = silent_s,
            workloads = workloads.len(),
            "worker lost; requeueing its work"
        );
        let reason = format!("worker {worker_id} silent for {silent_s:.1}s");
        for workload_id in workloads {
            requeue_run(
                tx,
                &self.topics,
                workload_id,
                RequeueKind::WorkerLost,
                &reason,
                event.event_id,
            )
            .await?;
        }
        Ok(())
    }

    async fn refresh_gauges(&self) -> Result<(), sqlx::Error> {
        let (active, healthy, lost) = repo::gauges(&mut *self.pool.acquire().await?).await?;
        metrics::gauge!(m::ACTIVE_ALLOCATIONS).set(active as f64);
        metrics::gauge!(m::WORKERS, "state" => "healthy").set(healthy as f64);
        metrics::gauge!(m::WORKERS, "state" => "lost").set(lost as f64);
        Ok(())
    }
}
