//! The resource-manager projection over `workloads` and `worker-reports`. It runs inside the
//! transactional consumer's transaction, so allocations, the events it appends (and their
//! outbox rows) and the consumer's offsets commit together: a crash did all of it or none.
//!
//! Every allocation change takes the pool's advisory lock first (the pool is the worker's
//! site), which makes the resource-manager the single writer of a pool's allocations however
//! many consumers run. Appends to workload streams go through the state machine with the exact
//! expected version; on a conflict the stream is read again and the decision taken again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hcp_bus::KafkaSettings;
use hcp_db::sqlx::{self, PgConnection};
use hcp_db::store::read_stream_on;
use hcp_db::{ApplyError, EventStore, ExpectedVersion, Projection, Publish, StoreError};
use hcp_domain::WorkloadState;
use hcp_events::payload::{
    CommandAction, DeviceCommand, GpuSpec, RunReported, WorkerHeartbeat, WorkerRegistered,
    WorkloadPlacementProposed, WorkloadRequeued,
};
use hcp_events::{
    command_stream, report_stream, worker_stream, workload_stream, Envelope, Event, Topic,
};
use uuid::Uuid;

use crate::config::RmSettings;
use crate::domain::{
    decide_report, inventory_changed, reconcile, ReportDecision, RequeueKind, WorkloadView,
};
use crate::metrics as m;
use crate::repo::{self};

/// The `producer` of every event the resource-manager appends.
pub const PRODUCER: &str = "resource-manager";

/// How many times a decision is taken again after a concurrent append to the same stream
/// before the batch is retried as a whole.
pub(crate) const MAX_ATTEMPTS: usize = 5;

/// The concrete topics the resource-manager publishes to.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Workload events.
    pub workloads: String,
    /// Worker registrations and losses.
    pub resources: String,
    /// Device commands.
    pub commands: String,
}

impl Topics {
    /// The topics of a namespace.
    pub fn new(kafka: &KafkaSettings) -> Self {
        Self {
            workloads: kafka.topic(Topic::Workloads),
            resources: kafka.topic(Topic::Resources),
            commands: kafka.topic(Topic::DeviceCommands),
        }
    }
}

/// The resource-manager's projection (consumer name `resource-manager`).
#[derive(Debug, Clone)]
pub struct ResourceManager {
    name: String,
    pub(crate) topics: Topics,
    pub(crate) settings: RmSettings,
    pub(crate) memo: Arc<HeartbeatMemo>,
}

/// What each worker's last stored heartbeat said. Workers beat once a second; most beats
/// repeat the last one, and storing each cost seven statements (a 10,000-GPU fleet sends
/// 1,250 a second). A repeat within `heartbeat_store_ms` of the last stored one, while its
/// runs and allocations agree, is answered from here and touches no table.
///
/// The memo is a cache of what was written, never a source of truth: it may be ahead of the
/// database when a transaction that recorded into it rolled back, which at worst delays one
/// store by `heartbeat_store_ms` (kept well under the worker timeout); any change in the
/// heartbeat, a restart, or a second instance sharing the worker takes the full path.
#[derive(Debug, Default)]
pub struct HeartbeatMemo {
    workers: Mutex<HashMap<String, StoredBeat>>,
    /// When each worker's last heartbeat was applied here, stored or not.
    heard: Mutex<HashMap<String, Instant>>,
}

#[derive(Debug)]
struct StoredBeat {
    site: String,
    backend: String,
    gpus: Vec<GpuSpec>,
    running: Vec<Uuid>,
    stored_at: Instant,
}

impl HeartbeatMemo {
    fn sorted(running: &[Uuid]) -> Vec<Uuid> {
        let mut r = running.to_vec();
        r.sort_unstable();
        r.dedup();
        r
    }

    /// Whether a heartbeat of `worker_id` was applied here within `within`: the health sweep
    /// asks before it declares a worker lost whose stored `last_seen` is old.
    pub fn heard_within(&self, worker_id: &str, within: Duration) -> bool {
        self.heard
            .lock()
            .is_ok_and(|h| h.get(worker_id).is_some_and(|t| t.elapsed() < within))
    }

    /// Notes that a heartbeat of `worker_id` was applied now, stored or not.
    fn hear(&self, worker_id: &str) {
        if let Ok(mut heard) = self.heard.lock() {
            match heard.get_mut(worker_id) {
                Some(t) => *t = Instant::now(),
                None => {
                    heard.insert(worker_id.to_owned(), Instant::now());
                }
            }
        }
    }

    /// Whether `h` repeats the last stored heartbeat of its worker within `every`.
    pub(crate) fn repeats(&self, h: &WorkerHeartbeat, every: Duration) -> bool {
        let Ok(workers) = self.workers.lock() else {
            return false;
        };
        workers.get(&h.worker_id).is_some_and(|s| {
            s.stored_at.elapsed() < every
                && s.site == h.site
                && s.backend == h.backend
                && s.gpus == h.gpus
                && s.running == Self::sorted(&h.running)
        })
    }

    /// Records a stored heartbeat; `settled` false forgets it (the next one is stored too).
    fn record(&self, h: &WorkerHeartbeat, settled: bool) {
        let Ok(mut workers) = self.workers.lock() else {
            return;
        };
        if settled {
            workers.insert(
                h.worker_id.clone(),
                StoredBeat {
                    site: h.site.clone(),
                    backend: h.backend.clone(),
                    gpus: h.gpus.clone(),
                    running: Self::sorted(&h.running),
                    stored_at: Instant::now(),
                },
            );
        } else {
            workers.remove(&h.worker_id);
        }
    }
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

/// The event that caused an append: its id becomes the causation id, its correlation id is
/// carried on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cause {
    pub event_id: Uuid,
    pub correlation_id: Uuid,
}

impl Cause {
    pub(crate) fn of(e: &Envelope) -> Self {
        Self {
            event_id: e.event_id,
            correlation_id: e.correlation_id,
        }
    }
}

pub(crate) fn envelope(stream: &str, event: Event, cause: Cause) -> Envelope {
    let mut e = Envelope::new(stream, PRODUCER, event);
    e.causation_id = Some(cause.event_id);
    e.correlation_id = cause.correlation_id;
    e
}

/// Publishing to `topic`, continuing the current span's trace.
pub(crate) fn publish(topic: &str) -> Publish {
    let (traceparent, tracestate) = hcp_bus::trace::current_trace_headers();
    Publish::to(topic).with_trace(traceparent, tracestate)
}

pub(crate) fn place_error(e: hcp_allocation::PlaceError) -> ApplyError {
    match e {
        hcp_allocation::PlaceError::Database(e) => ApplyError::Database(e),
        hcp_allocation::PlaceError::Store(e) => store_error(e),
    }
}

pub(crate) fn store_error(e: StoreError) -> ApplyError {
    match e {
        StoreError::Database(e) => ApplyError::Database(e),
        StoreError::Corrupt { .. } => ApplyError::Poison(e.to_string()),
        other => ApplyError::Transient(other.to_string()),
    }
}

/// Reads and folds a workload stream inside the transaction.
pub(crate) async fn read_view(
    tx: &mut PgConnection,
    workload_id: Uuid,
) -> Result<WorkloadView, ApplyError> {
    let events = read_stream_on(tx, &workload_stream(workload_id))
        .await
        .map_err(store_error)?;
    WorkloadView::fold(events.iter().map(|r| &r.envelope)).map_err(|e| {
        ApplyError::Poison(format!(
            "the stream of workload {workload_id} does not fold: {e}"
        ))
    })
}

/// Appends at exactly `version`; `None` on a concurrency conflict (decide again).
pub(crate) async fn append_exact(
    tx: &mut PgConnection,
    stream: &str,
    version: i64,
    events: &[Envelope],
    publish: &Publish,
) -> Result<Option<i64>, ApplyError> {
    match EventStore::append(tx, stream, ExpectedVersion::Exact(version), events, publish).await {
        Ok(out) => Ok(Some(out.new_version)),
        Err(StoreError::ConcurrencyConflict { .. }) => Ok(None),
        Err(e) => Err(store_error(e)),
    }
}

/// Appends a device command to the worker's command stream, published to `device-commands`.
pub(crate) async fn send_command(
    tx: &mut PgConnection,
    topics: &Topics,
    worker_id: &str,
    workload_id: Uuid,
    action: CommandAction,
    cause: Cause,
) -> Result<(), ApplyError> {
    let stream = command_stream(worker_id);
    let cmd = envelope(
        &stream,
        Event::DeviceCommand(DeviceCommand {
            command_id: Uuid::now_v7(),
            worker_id: worker_id.to_owned(),
            workload_id,
            action,
        }),
        cause,
    );
    EventStore::append(
        tx,
        &stream,
        ExpectedVersion::Any,
        &[cmd],
        &publish(&topics.commands),
    )
    .await
    .map_err(store_error)?;
    Ok(())
}

/// Sends a workload holding GPUs back to the queue from its last checkpoint and releases its
/// allocation (under the pool lock the caller holds). Returns whether it was requeued (an
/// allocation of a workload no longer holding GPUs is only released).
pub(crate) async fn requeue_run(
    tx: &mut PgConnection,
    topics: &Topics,
    workload_id: Uuid,
    kind: RequeueKind,
    reason: &str,
    causation_id: Uuid,
) -> Result<bool, ApplyError> {
    let stream = workload_stream(workload_id);
    for _ in 0..MAX_ATTEMPTS {
        let view = match read_view(tx, workload_id).await {
            Ok(v) => v,
            Err(ApplyError::Poison(why)) => {
                tracing::error!(%workload_id, %why, "releasing the GPUs of a workload whose stream is broken");
                repo::release(tx, workload_id, kind.as_str()).await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if !view.state.is_some_and(WorkloadState::holds_gpus) {
            repo::release(tx, workload_id, kind.as_str()).await?;
            return Ok(false);
        }
        let cause = Cause {
            event_id: causation_id,
            correlation_id: view.correlation_id.unwrap_or(causation_id),
        };
        let requeued = envelope(
            &stream,
            Event::WorkloadRequeued(WorkloadRequeued {
                workload_id,
                resume_progress: view.last_checkpoint,
                reason: reason.to_owned(),
            }),
            cause,
        );
        let Some(version) = append_exact(
            tx,
            &stream,
            view.version,
            &[requeued],
            &publish(&topics.workloads),
        )
        .await?
        else {
            continue;
        };
        repo::release(tx, workload_id, kind.as_str()).await?;
        repo::update_run(
            tx,
            workload_id,
            WorkloadState::Queued.as_str(),
            version,
            Some(view.last_checkpoint),
        )
        .await?;
        metrics::counter!(m::REQUEUES, "reason" => kind.as_str()).increment(1);
        tracing::info!(%workload_id, resume_progress = view.last_checkpoint, %reason, "workload requeued");
        return Ok(true);
    }
    Err(ApplyError::Transient(format!(
        "workload {workload_id} kept changing while requeueing it"
    )))
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

    /// `worker.heartbeat`: inventory, samples and health; registration when new, changed or
    /// back; requeue of runs a restarted worker forgot; stops for runs it holds without an
    /// allocation.
    #[tracing::instrument(skip_all, fields(worker_id = %h.worker_id))]
    async fn on_heartbeat(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        h: &WorkerHeartbeat,
    ) -> Result<(), ApplyError> {
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
        let registration = match &before {
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
        };
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
        repo::upsert_gpus(tx, &h.worker_id, &h.gpus, &h.samples).await?;
        let cause = Cause::of(e);
        if let Some(why) = registration {
            let stream = worker_stream(&h.worker_id);
            let registered = envelope(
                &stream,
                Event::WorkerRegistered(WorkerRegistered {
                    worker_id: h.worker_id.clone(),
                    site: h.site.clone(),
                    backend: h.backend.clone(),
                    gpus: h.gpus.clone(),
                }),
                cause,
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
            tracing::info!(why, site = %h.site, gpus = h.gpus.len(), "worker registered");
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

    /// `run.reported`: turns a report of the worker holding the allocation into workload
    /// events; anything else is stale or duplicate and only counted.
    #[tracing::instrument(skip_all, fields(workload_id = %r.workload_id, worker_id = %r.worker_id, status = ?r.status))]
    pub(crate) async fn on_report(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        r: &RunReported,
    ) -> Result<(), ApplyError> {
        if e.stream_id != report_stream(&r.worker_id) {
            return Err(ApplyError::Poison(format!(
                "a report of worker {} on stream {}",
                r.worker_id, e.stream_id
            )));
        }
        let ignore = |why: &'static str| {
            tracing::info!(why, "run report ignored");
            metrics::counter!(m::IGNORED_REPORTS, "reason" => why).increment(1);
            Ok(())
        };
        let Some(alloc) = repo::live_allocation(tx, r.workload_id).await? else {
            return ignore("not_allocated");
        };
        if alloc.worker_id != r.worker_id {
            return ignore("allocated_elsewhere");
        }
        repo::lock_pool(tx, &alloc.site).await?;
        let still = repo::live_allocation(tx, r.workload_id).await?;
        if still.as_ref().map(|a| a.worker_id.as_str()) != Some(r.worker_id.as_str()) {
            return ignore("not_allocated");
        }
        let stream = workload_stream(r.workload_id);
        for _ in 0..MAX_ATTEMPTS {
            let view = read_view(tx, r.workload_id).await?;
            let (events, release, requeue) = match decide_report(&view, r) {
                ReportDecision::Ignore(why) => return ignore(why),
                ReportDecision::Apply {
                    events,
                    release,
                    requeue,
                } => (events, release, requeue),
            };
            let state = view
                .check(&events)
                .map_err(|err| ApplyError::Transient(err.to_string()))?;
            let checkpoint = events.iter().rev().find_map(|ev| match ev {
                Event::WorkloadCheckpointed(c) => Some(c.progress),
                Event::WorkloadRequeued(q) => Some(q.resume_progress),
                _ => None,
            });
            let envelopes: Vec<Envelope> = events
                .into_iter()
                .map(|ev| envelope(&stream, ev, Cause::of(e)))
                .collect();
            let Some(version) = append_exact(
                tx,
                &stream,
                view.version,
                &envelopes,
                &publish(&self.topics.workloads),
            )
            .await?
            else {
                continue;
            };
            if release {
                let why = requeue.map_or(state.as_str(), RequeueKind::as_str);
                repo::release(tx, r.workload_id, why).await?;
            }
            repo::update_run(tx, r.workload_id, state.as_str(), version, checkpoint).await?;
            if let Some(kind) = requeue {
                metrics::counter!(m::REQUEUES, "reason" => kind.as_str()).increment(1);
            }
            tracing::info!(state = %state, progress = r.progress, "run report recorded");
            return Ok(());
        }
        Err(ApplyError::Transient(format!(
            "workload {} kept changing while recording a report",
            r.workload_id
        )))
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
