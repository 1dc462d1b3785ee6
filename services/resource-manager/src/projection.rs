//! The resource-manager projection over `workloads` and `worker-reports`. It runs inside the
//! transactional consumer's transaction, so allocations, the events it appends (and their
//! outbox rows) and the consumer's offsets commit together: a crash did all of it or none.
//!
//! Every allocation change takes the pool's advisory lock first (the pool is the worker's
//! site), so one writer at a time changes a pool's allocations, however many consumers (and
//! router placement loops) run. Appends to workload streams go through the state machine with the exact
//! expected version; on a conflict the stream is read again and the decision taken again.

use std::sync::Arc;

use hcp_db::sqlx::{self, PgConnection};
use hcp_db::{ApplyError, EventStore, ExpectedVersion, Projection};
use hcp_domain::WorkloadState;
use hcp_events::payload::{
    CommandAction, RunReported, WorkerHeartbeat, WorkerRegistered, WorkloadPlacementProposed,
};
use hcp_events::{report_stream, worker_stream, Envelope, Event};

use crate::append::{envelope, publish, requeue_run, send_command, store_error, Cause, Topics};
use crate::config::RmSettings;
use crate::domain::{inventory_changed, reconcile, RequeueKind};
use crate::memo::HeartbeatMemo;
use crate::metrics as m;
use crate::repo::{self};

/// The resource-manager's projection (consumer name `resource-manager`).
#[derive(Debug, Clone)]
pub struct ResourceManager {
    name: String,
    pub(crate) topics: Topics,
    pub(crate) settings: RmSettings,
    pub(crate) memo: Arc<HeartbeatMemo>,
}

impl ResourceManager {
    /// The projection under its standard name.
    pub fn new(topics: Topics, settings: RmSettings) -> Self {
        Self {
            name: "resource-manager".into(),
            topics,
            settings,
            memo: Arc::default(),
        }
    }

    /// The heartbeat memo, shared with the health sweep of the same process.
    pub fn memo(&self) -> Arc<HeartbeatMemo> {
        self.memo.clone()
    }
}

/// Refuses a heartbeat that can never be applied.
pub(crate) fn check_heartbeat(e: &Envelope, h: &WorkerHeartbeat) -> Result<(), ApplyError> {
    if e.stream_id != report_stream(&h.worker_id) {
        return Err(ApplyError::Poison(format!(
            "a heartbeat of worker {} on stream {}",
            h.worker_id, e.stream_id
        )));
    }
    if h.worker_id.is_empty() || h.site.is_empty() {
        return Err(ApplyError::Poison(
            "a heartbeat without worker id or site".into(),
        ));
    }
    Ok(())
}

/// Why a heartbeat (re)registers its worker, if it does: new, back after being lost, or with
/// a changed inventory, site or backend.
pub(crate) fn registration(
    before: Option<&repo::WorkerRow>,
    h: &WorkerHeartbeat,
) -> Option<&'static str> {
    match before {
        None => Some("new"),
        Some(w) if !w.healthy() => Some("back"),
        Some(w)
            if inventory_changed(&w.gpus.0, &h.gpus)
                || w.site != h.site
                || w.backend != h.backend =>
        {
            Some("changed")
        }
        Some(_) => None,
    }
}

impl Projection for ResourceManager {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        match &e.payload {
            Event::WorkloadPlacementProposed(p) => self.on_proposed(tx, e, p).await,
            Event::WorkerHeartbeat(h) => self.on_heartbeat(tx, e, h).await,
            Event::RunReported(r) => self.on_report(tx, e, r).await,
            Event::DecisionMade(d) => crate::asic::on_decision(tx, &self.topics, e, d)
                .await
                .map(|_| ()),
            Event::WorkloadCancelled(_)
            | Event::WorkloadPaused(_)
            | Event::WorkloadResumed(_)
            | Event::WorkloadPreempted(_)
            | Event::WorkloadFailed(_)
            | Event::WorkloadCompleted(_)
            | Event::WorkloadRequeued(_) => self.on_workload_change(tx, e).await,
            _ => Ok(()),
        }
    }

    /// Proposals and run reports of a batch are answered set-based (`crate::batch`), the
    /// rest one by one, keeping each stream's and each workload's events in order.
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), ApplyError> {
        self.apply_grouped(tx, events).await
    }

    fn batches(&self) -> bool {
        true
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        repo::reset(tx).await
    }
}

impl ResourceManager {
    /// `workload.placement_proposed`: allocate under the pool lock and answer with
    /// `workload.scheduled` (+ a start command) or `workload.placement_rejected`, through the
    /// allocation ledger (`hcp_allocation::place`).
    #[tracing::instrument(skip_all, fields(workload_id = %p.workload_id, worker_id = %p.worker_id))]
    pub(crate) async fn on_proposed(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        p: &WorkloadPlacementProposed,
    ) -> Result<(), ApplyError> {
        self.answer_proposals(tx, &[(e, p)]).await
    }

    /// `worker.heartbeat`: liveness and health; registration (and the GPU inventory) when new,
    /// changed or back; requeue of runs a restarted worker forgot; stops for runs it holds
    /// without an allocation. GPU samples are telemetry, stored by the ingest.
    #[tracing::instrument(skip_all, fields(worker_id = %h.worker_id))]
    async fn on_heartbeat(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        h: &WorkerHeartbeat,
    ) -> Result<(), ApplyError> {
        check_heartbeat(e, h)?;
        self.memo.hear(&h.worker_id);
        if self.memo.repeats(h, self.settings.heartbeat_store()) {
            metrics::counter!(m::HEARTBEATS_UNCHANGED).increment(1);
            return Ok(());
        }
        // Lock order everywhere: pool, then worker row. Whether this heartbeat will change
        // allocations (requeue a forgotten run, stop an unallocated one) is known from a
        // read-only look first.
        let grace = self.settings.grace();
        let first_look = reconcile(&repo::held_runs(tx, &h.worker_id).await?, &h.running, grace);
        let locked = first_look.needs_pool_lock();
        if locked {
            repo::lock_pool(tx, &h.site).await?;
        }
        let before = repo::worker(tx, &h.worker_id, true).await?;
        let registration = registration(before.as_ref(), h);
        repo::upsert_worker(
            tx,
            &h.worker_id,
            &h.site,
            &h.backend,
            &h.gpus,
            e.event_id,
            e.occurred_at,
        )
        .await?;
        if registration.is_some() {
            repo::upsert_gpus(tx, &h.worker_id, &h.gpus).await?;
        }
        let cause = Cause::of(e);
        if let Some(why) = registration {
            self.register(tx, e, h, why).await?;
        }

        // Under the lock, look again: only that look may change allocations.
        let rec = if locked {
            reconcile(&repo::held_runs(tx, &h.worker_id).await?, &h.running, grace)
        } else {
            first_look
        };
        repo::set_missing(tx, &rec.mark_missing, true).await?;
        repo::set_missing(tx, &rec.clear_missing, false).await?;
        for (workload_id, missing_for) in &rec.requeue {
            let reason = format!(
                "worker {} restarted: its heartbeats omit the run for {:.1}s",
                h.worker_id,
                missing_for.as_secs_f64()
            );
            requeue_run(
                tx,
                &self.topics,
                *workload_id,
                RequeueKind::WorkerRestarted,
                &reason,
                e.event_id,
            )
            .await?;
        }
        for (workload_id, held_for) in &rec.unacknowledged {
            let reason = format!(
                "worker {} never acknowledged the start in {:.0}s (command lost)",
                h.worker_id,
                held_for.as_secs_f64()
            );
            requeue_run(
                tx,
                &self.topics,
                *workload_id,
                RequeueKind::StartLost,
                &reason,
                e.event_id,
            )
            .await?;
        }
        for zombie in &rec.zombies {
            tracing::info!(workload_id = %zombie, "stopping a run held without an allocation");
            send_command(
                tx,
                &self.topics,
                &h.worker_id,
                *zombie,
                CommandAction::Stop {
                    checkpoint: false,
                    reason: format!("workload is not allocated to worker {}", h.worker_id),
                },
                cause,
            )
            .await?;
            metrics::counter!(m::ZOMBIE_STOPS).increment(1);
        }
        self.memo.record(
            h,
            registration.is_none() && rec.settled() && rec.clear_missing.is_empty(),
        );
        Ok(())
    }

    /// Appends `worker.registered` for a heartbeat's worker (`why`: new, back, changed).
    pub(crate) async fn register(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        h: &WorkerHeartbeat,
        why: &'static str,
    ) -> Result<(), ApplyError> {
        let stream = worker_stream(&h.worker_id);
        let registered = envelope(
            &stream,
            Event::WorkerRegistered(WorkerRegistered {
                worker_id: h.worker_id.clone(),
                site: h.site.clone(),
                backend: h.backend.clone(),
                gpus: h.gpus.clone(),
            }),
            Cause::of(e),
        );
        EventStore::append(
            tx,
            &stream,
            ExpectedVersion::Any,
            &[registered],
            &publish(&self.topics.resources),
        )
        .await
        .map_err(store_error)?;
        metrics::counter!(m::REGISTRATIONS, "why" => why).increment(1);
        tracing::info!(worker_id = %h.worker_id, why, site = %h.site, gpus = h.gpus.len(), "worker registered");
        Ok(())
    }

    /// `run.reported`: turns a report of the worker holding the allocation into workload
    /// events; anything else is stale or duplicate and only counted (the same path as a batch
    /// of reports, `ResourceManager::record_reports`).
    #[tracing::instrument(skip_all, fields(workload_id = %r.workload_id, worker_id = %r.worker_id, status = ?r.status))]
    pub(crate) async fn on_report(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        r: &RunReported,
    ) -> Result<(), ApplyError> {
        self.record_reports(tx, &[(e, r)]).await
    }

    /// Cancel, pause, resume, preempt and terminal events: commands to the worker holding
    /// the workload, and the release of its GPUs where the event ends the placement.
    #[tracing::instrument(skip_all, fields(workload_id, event_type = %e.event_type()))]
    async fn on_workload_change(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
    ) -> Result<(), ApplyError> {
        let Some(workload_id) = e.payload.workload_id() else {
            return Ok(());
        };
        tracing::Span::current().record("workload_id", tracing::field::display(workload_id));
        let Some(alloc) = repo::live_allocation(tx, workload_id).await? else {
            return Ok(());
        };
        repo::lock_pool(tx, &alloc.site).await?;
        let Some(alloc) = repo::live_allocation(tx, workload_id).await? else {
            return Ok(());
        };
        // An event older than the current placement concerns an earlier one.
        if repo::scheduled_version(tx, workload_id)
            .await?
            .is_some_and(|v| e.sequence < v)
        {
            return Ok(());
        }
        let stop = |checkpoint: bool, reason: &str| {
            Some(CommandAction::Stop {
                checkpoint,
                reason: reason.to_owned(),
            })
        };
        let (action, release, state) = match &e.payload {
            Event::WorkloadCancelled(c) => (
                stop(false, &format!("cancelled by {}", c.requested_by)),
                true,
                WorkloadState::Cancelled,
            ),
            Event::WorkloadFailed(f) => (stop(false, &f.reason), true, WorkloadState::Failed),
            Event::WorkloadRequeued(q) => (stop(false, &q.reason), true, WorkloadState::Queued),
            Event::WorkloadCompleted(_) => (None, true, WorkloadState::Completed),
            Event::WorkloadPaused(_) => (Some(CommandAction::Pause), false, WorkloadState::Paused),
            Event::WorkloadResumed(_) => {
                (Some(CommandAction::Resume), false, WorkloadState::Running)
            }
            Event::WorkloadPreempted(p) => (stop(true, &p.reason), false, WorkloadState::Preempted),
            _ => return Ok(()),
        };
        if release {
            let gpus = repo::release(tx, workload_id, state.as_str()).await?;
            tracing::info!(?gpus, "allocation released");
        }
        if let Some(action) = action {
            send_command(
                tx,
                &self.topics,
                &alloc.worker_id,
                workload_id,
                action,
                Cause::of(e),
            )
            .await?;
        }
        repo::update_run(tx, workload_id, state.as_str(), e.sequence, None).await?;
        Ok(())
    }
}
