//! The resource-manager's batch path. Under load a consumer batch holds many placement
//! proposals and run reports; answered one by one, each cost about ten statements (two reads
//! of the worker, the pool lock, the holders, a read of the workload's stream, the allocation,
//! two appends, the run row). Here a whole group is answered set-based: one read of the
//! workers, each pool locked once, one read of the holders, one read of every stream, the
//! decisions in memory (GPUs taken earlier in the group count as held), one insert of the
//! allocations, one batched append of the answers and one of the start commands, one write
//! of the run rows. Reports likewise: one read of the allocations, one of the streams, the
//! fold in memory, one append, one release, one run-row write.
//!
//! **Order.** Only events of different streams about different workloads are ever answered
//! out of batch order, and that is an order the broker could have delivered them in (it keeps
//! order per partition only, and every stream lives on one partition). The group is therefore
//! closed (answered) before any event of a stream it holds, or about a workload it holds,
//! is applied; a heartbeat that repeats the last stored one changes nothing and does not close
//! it. Heartbeats that must be stored are held too and stored set-based (`crate::beats`),
//! before any later event of their streams.
//!
//! **Never double-book** is kept as in the one-by-one path: allocations are decided under the
//! locks of their pools, from holders read under those locks, and the partial unique index
//! refuses whatever would slip past. An answer whose stream moved meanwhile (an append
//! conflict) has its allocation undone and is answered again one by one.

use std::collections::{HashMap, HashSet};

use hcp_allocation::{place, Outcome, Request, RequestKind, Sink, Skip};
use hcp_db::sqlx::PgConnection;
use hcp_db::store::read_streams_on;
use hcp_db::{ApplyError, EventStore, ExpectedVersion, Projection, StreamAppend};
use hcp_domain::WorkloadState;
use hcp_events::payload::{RunReported, WorkerHeartbeat, WorkloadPlacementProposed};
use hcp_events::{report_stream, workload_stream, Envelope, Event};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::append::{envelope, place_error, publish, store_error, Cause, MAX_ATTEMPTS, PRODUCER};
use crate::domain::{decide_report, RejectReason, ReportDecision, RequeueKind, WorkloadView};
use crate::metrics as m;
use crate::projection::ResourceManager;
use crate::repo::{self, RunUpdate};

/// Proposals and reports waiting to be answered together.
#[derive(Debug, Default)]
pub(crate) struct Group<'a> {
    proposals: Vec<(&'a Envelope, &'a WorkloadPlacementProposed)>,
    reports: Vec<(&'a Envelope, &'a RunReported)>,
    /// The streams of the events held.
    streams: HashSet<&'a str>,
    /// Per workload concerned, the stream of the events about it that are held.
    workloads: HashMap<Uuid, &'a str>,
}

impl<'a> Group<'a> {
    fn is_empty(&self) -> bool {
        self.proposals.is_empty() && self.reports.is_empty()
    }

    /// Whether applying `e` now would overtake an event held here (same stream, or the same
    /// workload on another stream).
    fn overtaken_by(&self, e: &Envelope) -> bool {
        self.streams.contains(e.stream_id.as_str())
            || e.payload
                .workload_id()
                .is_some_and(|w| self.workloads.contains_key(&w))
    }

    /// Holds `e` if it is a proposal or a report. `Err(e)` when it is neither; `Ok(false)`
    /// when it is one but cannot join (the group holds another event about its workload, on
    /// a stream other than its own, or a proposal of the same workload): close the group
    /// first, then offer it again.
    fn offer(&mut self, e: &'a Envelope) -> Result<bool, &'a Envelope> {
        let workload = match &e.payload {
            Event::WorkloadPlacementProposed(p) => p.workload_id,
            Event::RunReported(r) => r.workload_id,
            _ => return Err(e),
        };
        match (&e.payload, self.workloads.get(&workload)) {
            (Event::WorkloadPlacementProposed(_), Some(_)) => return Ok(false),
            (Event::RunReported(_), Some(s)) if *s != e.stream_id.as_str() => return Ok(false),
            _ => {}
        }
        match &e.payload {
            Event::WorkloadPlacementProposed(p) => self.proposals.push((e, p)),
            Event::RunReported(r) => self.reports.push((e, r)),
            _ => return Err(e),
        }
        self.streams.insert(&e.stream_id);
        self.workloads.insert(workload, &e.stream_id);
        Ok(true)
    }
}

/// What a group of reports does to one workload.
struct RunChange<'a> {
    stream: String,
    /// The stream version the appends expect.
    expected: i64,
    /// The view after the events decided so far.
    view: WorkloadView,
    events: Vec<Envelope>,
    reports: Vec<(&'a Envelope, &'a RunReported)>,
    /// The release reason, once a report ended the placement.
    release: Option<&'static str>,
    checkpoint: Option<f64>,
    requeues: Vec<RequeueKind>,
}

fn ignored(why: &'static str) {
    tracing::info!(why, "run report ignored");
    metrics::counter!(m::IGNORED_REPORTS, "reason" => why).increment(1);
}

fn fold(
    streams: &HashMap<String, Vec<hcp_db::RecordedEvent>>,
    stream: &str,
    workload_id: Uuid,
) -> Result<WorkloadView, ApplyError> {
    let events = streams.get(stream).map(Vec::as_slice).unwrap_or_default();
    WorkloadView::fold(events.iter().map(|r| &r.envelope)).map_err(|e| {
        ApplyError::Poison(format!(
            "the stream of workload {workload_id} does not fold: {e}"
        ))
    })
}

impl ResourceManager {
    /// Applies a consumer batch: proposals and reports grouped and answered set-based,
    /// everything else one by one, in an order that keeps every stream's and every
    /// workload's events in batch order (see the module's doc).
    pub(crate) async fn apply_grouped(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), ApplyError> {
        self.lock_pools_of(tx, events).await?;
        let mut group = Group::default();
        // Heartbeats to store set-based; flushed before any later event of one of their
        // streams, so every stream's events still apply in order.
        let mut beats: Vec<(&Envelope, &WorkerHeartbeat)> = Vec::new();
        for &e in events {
            if beats.iter().any(|(b, _)| b.stream_id == e.stream_id) {
                self.apply_beats(tx, &mut beats).await?;
            }
            match group.offer(e) {
                Ok(true) => continue,
                Ok(false) => {
                    self.close(tx, &mut group).await?;
                    if !matches!(group.offer(e), Ok(true)) {
                        return Err(ApplyError::Transient(
                            "an empty group refused an event".into(),
                        ));
                    }
                }
                Err(e) => {
                    if let Event::WorkerHeartbeat(h) = &e.payload {
                        if !self.memo.repeats(h, self.settings.heartbeat_store()) {
                            if group.overtaken_by(e) {
                                self.close(tx, &mut group).await?;
                            }
                            beats.push((e, h));
                            continue;
                        }
                    } else if group.overtaken_by(e) {
                        self.close(tx, &mut group).await?;
                    }
                    self.apply(tx, e).await?;
                }
            }
        }
        self.apply_beats(tx, &mut beats).await?;
        self.close(tx, &mut group).await
    }

    /// Takes, in name order, the locks of the pools the batch's proposals, reports and workload
    /// events will lock anyway (advisory locks are re-entrant, and held to the commit either
    /// way). Taken one by one in event order instead, they could deadlock against another
    /// placer (the router's placement loop, a second resource-manager) taking them in name
    /// order. Heartbeats lock a pool only when they change its allocations, rarely: left out.
    async fn lock_pools_of(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), ApplyError> {
        let mut workers: Vec<&str> = Vec::new();
        let mut workloads: Vec<Uuid> = Vec::new();
        for e in events {
            match &e.payload {
                Event::WorkloadPlacementProposed(p) => workers.push(&p.worker_id),
                Event::RunReported(r) => workloads.push(r.workload_id),
                Event::WorkloadCancelled(_)
                | Event::WorkloadPaused(_)
                | Event::WorkloadResumed(_)
                | Event::WorkloadPreempted(_)
                | Event::WorkloadFailed(_)
                | Event::WorkloadCompleted(_)
                | Event::WorkloadRequeued(_) => workloads.extend(e.payload.workload_id()),
                _ => {}
            }
        }
        if workers.is_empty() && workloads.is_empty() {
            return Ok(());
        }
        let sites = repo::sites_of(tx, &workers, &workloads).await?;
        repo::lock_pools(tx, sites.iter().map(String::as_str)).await?;
        Ok(())
    }

    /// Answers what the group holds and empties it.
    async fn close(&self, tx: &mut PgConnection, group: &mut Group<'_>) -> Result<(), ApplyError> {
        if group.is_empty() {
            return Ok(());
        }
        let Group {
            proposals, reports, ..
        } = std::mem::take(group);
        // Reports first: what they release is free for the proposals (the group holds them on
        // distinct streams and workloads, so either order is one the broker could deliver).
        if !reports.is_empty() {
            self.record_reports(tx, &reports).await?;
        }
        if !proposals.is_empty() {
            self.answer_proposals(tx, &proposals).await?;
        }
        Ok(())
    }

    /// Answers proposals (of distinct workloads) through the allocation ledger, set-based;
    /// the ones whose stream moved meanwhile are answered again, up to [`MAX_ATTEMPTS`] times.
    #[tracing::instrument(skip_all, fields(proposals = proposals.len()))]
    pub(crate) async fn answer_proposals(
        &self,
        tx: &mut PgConnection,
        proposals: &[(&Envelope, &WorkloadPlacementProposed)],
    ) -> Result<(), ApplyError> {
        for (e, p) in proposals {
            if e.stream_id != workload_stream(p.workload_id) {
                return Err(ApplyError::Poison(format!(
                    "a proposal for workload {} on stream {}",
                    p.workload_id, e.stream_id
                )));
            }
        }
        let (workloads, commands) = (
            publish(&self.topics.workloads),
            publish(&self.topics.commands),
        );
        let sink = Sink {
            producer: PRODUCER,
            workloads: &workloads,
            commands: &commands,
        };
        let mut todo: Vec<(&Envelope, &WorkloadPlacementProposed)> = proposals.to_vec();
        for _ in 0..MAX_ATTEMPTS {
            let requests: Vec<Request<'_>> = todo
                .iter()
                .map(|(e, p)| Request {
                    announce: None,
                    workload_id: p.workload_id,
                    worker_id: &p.worker_id,
                    gpu_ids: &p.gpu_ids,
                    cause: hcp_allocation::Cause {
                        event_id: e.event_id,
                        correlation_id: e.correlation_id,
                    },
                    kind: RequestKind::Proposal(e.event_id),
                })
                .collect();
            let outcomes = place(tx, &requests, sink).await.map_err(place_error)?;
            let mut again = Vec::new();
            for (&(e, p), outcome) in todo.iter().zip(outcomes) {
                let id = p.workload_id;
                match outcome {
                    Outcome::Scheduled { .. } => {
                        metrics::counter!(m::ALLOCATIONS).increment(1);
                        metrics::histogram!(m::PROPOSE_TO_SCHEDULED).record(
                            (OffsetDateTime::now_utc() - e.occurred_at)
                                .as_seconds_f64()
                                .max(0.0),
                        );
                        tracing::info!(workload_id = %id, worker_id = %p.worker_id, gpus = ?p.gpu_ids, "workload scheduled");
                    }
                    Outcome::Rejected {
                        rejection,
                        retryable,
                        ..
                    } => {
                        metrics::counter!(m::REJECTIONS, "reason" => rejection.reason.as_str())
                            .increment(1);
                        tracing::info!(workload_id = %id, reason = %rejection.detail, retryable, "placement rejected");
                    }
                    Outcome::Skipped(Skip::AlreadyAnswered) => {
                        tracing::debug!(workload_id = %id, "proposal already answered");
                    }
                    Outcome::Skipped(Skip::NotQueued(state)) => {
                        // Cancelled or failed after the proposal: that event is the answer.
                        tracing::info!(workload_id = %id, ?state, "proposal for a workload no longer queued");
                        metrics::counter!(m::UNANSWERABLE_PROPOSALS).increment(1);
                    }
                    Outcome::Skipped(Skip::Superseded) => {
                        // The later proposal gets its own answer; answering this one too would
                        // only make the router count a failure that is nobody's fault.
                        metrics::counter!(m::REJECTIONS, "reason" => RejectReason::Superseded.as_str())
                            .increment(1);
                        tracing::info!(workload_id = %id, "superseded proposal left unanswered");
                    }
                    Outcome::Skipped(Skip::Moved { .. }) => {}
                    Outcome::Skipped(Skip::Broken(why)) => return Err(ApplyError::Poison(why)),
                    Outcome::Conflict => again.push((e, p)),
                }
            }
            if again.is_empty() {
                return Ok(());
            }
            todo = again;
        }
        Err(ApplyError::Transient(format!(
            "{} proposals kept changing while answering them",
            todo.len()
        )))
    }

    /// Records run reports (one or many; a workload's reports all from one worker here, in
    /// order) set-based; the workloads whose stream moved meanwhile are recorded again, up to
    /// [`MAX_ATTEMPTS`] times.
    #[tracing::instrument(skip_all, fields(reports = reports.len()))]
    pub(crate) async fn record_reports(
        &self,
        tx: &mut PgConnection,
        reports: &[(&Envelope, &RunReported)],
    ) -> Result<(), ApplyError> {
        let mut todo: Vec<(&Envelope, &RunReported)> = reports.to_vec();
        for _ in 0..MAX_ATTEMPTS {
            todo = self.record_reports_once(tx, &todo).await?;
            if todo.is_empty() {
                return Ok(());
            }
        }
        Err(ApplyError::Transient(format!(
            "{} run reports kept changing while recording them",
            todo.len()
        )))
    }

    /// One try of [`ResourceManager::record_reports`]: returns the reports of the workloads
    /// whose append met a moved stream (nothing was written for them).
    async fn record_reports_once<'a>(
        &self,
        tx: &mut PgConnection,
        reports: &[(&'a Envelope, &'a RunReported)],
    ) -> Result<Vec<(&'a Envelope, &'a RunReported)>, ApplyError> {
        for (e, r) in reports {
            if e.stream_id != report_stream(&r.worker_id) {
                return Err(ApplyError::Poison(format!(
                    "a report of worker {} on stream {}",
                    r.worker_id, e.stream_id
                )));
            }
        }
        let mut ids: Vec<Uuid> = reports.iter().map(|(_, r)| r.workload_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let before = repo::live_allocations(tx, &ids).await?;
        repo::lock_pools(
            tx,
            reports.iter().filter_map(|(_, r)| {
                before
                    .get(&r.workload_id)
                    .filter(|a| a.worker_id == r.worker_id)
                    .map(|a| a.site.as_str())
            }),
        )
        .await?;
        let live = repo::live_allocations(tx, &ids).await?;
        let stream_ids: Vec<String> = ids
            .iter()
            .filter(|id| live.contains_key(id))
            .map(|id| workload_stream(*id))
            .collect();
        let streams = read_streams_on(tx, &stream_ids)
            .await
            .map_err(store_error)?;

        let mut changes: HashMap<Uuid, RunChange<'_>> = HashMap::new();
        let mut order: Vec<Uuid> = Vec::new();
        for &(e, r) in reports {
            let Some(alloc) = live.get(&r.workload_id) else {
                ignored("not_allocated");
                continue;
            };
            if alloc.worker_id != r.worker_id {
                ignored("allocated_elsewhere");
                continue;
            }
            let change = match changes.entry(r.workload_id) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let stream = workload_stream(r.workload_id);
                    let view = fold(&streams, &stream, r.workload_id)?;
                    order.push(r.workload_id);
                    v.insert(RunChange {
                        stream,
                        expected: view.version,
                        view,
                        events: Vec::new(),
                        reports: Vec::new(),
                        release: None,
                        checkpoint: None,
                        requeues: Vec::new(),
                    })
                }
            };
            change.reports.push((e, r));
            if change.release.is_some() {
                // An earlier report of the group ended the placement.
                ignored("not_allocated");
                continue;
            }
            let (events, release, requeue) = match decide_report(&change.view, r) {
                ReportDecision::Ignore(why) => {
                    ignored(why);
                    continue;
                }
                ReportDecision::Apply {
                    events,
                    release,
                    requeue,
                } => (events, release, requeue),
            };
            let state = change
                .view
                .check(&events)
                .map_err(|err| ApplyError::Transient(err.to_string()))?;
            if let Some(cp) = events.iter().rev().find_map(|ev| match ev {
                Event::WorkloadCheckpointed(c) => Some(c.progress),
                Event::WorkloadRequeued(q) => Some(q.resume_progress),
                _ => None,
            }) {
                change.checkpoint = Some(cp);
            }
            for ev in events {
                let mut env = envelope(&change.stream, ev, Cause::of(e));
                env.sequence = change.view.version + 1;
                change
                    .view
                    .push(&env)
                    .map_err(|err| ApplyError::Transient(err.to_string()))?;
                change.events.push(env);
            }
            if release {
                change.release = Some(requeue.map_or(state.as_str(), RequeueKind::as_str));
            }
            if let Some(kind) = requeue {
                change.requeues.push(kind);
            }
            tracing::info!(workload_id = %r.workload_id, state = %state, progress = r.progress, "run report recorded");
        }

        let changed: Vec<&RunChange<'_>> = order
            .iter()
            .filter_map(|id| changes.get(id))
            .filter(|c| !c.events.is_empty())
            .collect();
        let workloads_topic = publish(&self.topics.workloads);
        let appends: Vec<StreamAppend<'_>> = changed
            .iter()
            .map(|c| StreamAppend {
                stream_id: &c.stream,
                expected: ExpectedVersion::Exact(c.expected),
                events: &c.events,
                publish: &workloads_topic,
            })
            .collect();
        let results = EventStore::append_batch(tx, &appends)
            .await
            .map_err(store_error)?;
        let mut releases: Vec<(Uuid, &str)> = Vec::new();
        let mut updates: Vec<RunUpdate<'_>> = Vec::new();
        let mut again: Vec<(&Envelope, &RunReported)> = Vec::new();
        for (c, result) in changed.iter().zip(results) {
            let version = match result {
                Ok(out) => out.new_version,
                Err(hcp_db::StoreError::ConcurrencyConflict { .. }) => {
                    // Nothing else was written for it yet: record its reports again.
                    again.extend(c.reports.iter().copied());
                    continue;
                }
                Err(other) => return Err(store_error(other)),
            };
            let workload_id = c.reports[0].1.workload_id;
            if let Some(why) = c.release {
                releases.push((workload_id, why));
            }
            let state = c.view.state.unwrap_or(WorkloadState::Queued);
            updates.push(RunUpdate {
                workload_id,
                state: state.as_str(),
                stream_version: version,
                checkpoint_progress: c.checkpoint,
            });
            for kind in &c.requeues {
                metrics::counter!(m::REQUEUES, "reason" => kind.as_str()).increment(1);
            }
        }
        repo::release_many(tx, &releases).await?;
        repo::update_runs(tx, &updates).await?;
        Ok(again)
    }
}
