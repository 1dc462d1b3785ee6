//! The `router` projection over the workloads and resources topics. It keeps the router's
//! tables and, inside the same consumer transaction, appends what follows directly from an
//! event: `workload.queued` or `workload.failed` for a submission, and `workload.failed` when
//! placement was refused for good. Effects, new events, outbox rows and consumer offsets
//! commit together, so a crash either did all of it or none.

use std::sync::Arc;

use hcp_db::sqlx::PgConnection;
use hcp_db::{ApplyError, EventStore, ExpectedVersion, Projection, Publish, StoreError};
use hcp_domain::breaker::Breaker;
use hcp_domain::classify::classify;
use hcp_domain::placement::{feasible_ever, PlacementRequest};
use hcp_domain::{transition, WorkloadState};
use hcp_events::payload::{
    WorkloadFailed, WorkloadPlacementRejected, WorkloadQueued, WorkloadSubmitted,
};
use hcp_events::{workload_stream, Envelope, Event};
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::RouterConfig;
use crate::metrics::{self as m, Rejection};
use crate::repo::{self, Step};
use crate::PRODUCER;

/// The router's projection.
#[derive(Debug, Clone)]
pub struct RouterProjection {
    name: String,
    config: Arc<RouterConfig>,
    workloads_topic: String,
    wake: Arc<Notify>,
}

impl RouterProjection {
    /// The projection under its standard consumer name, appending to `workloads_topic` and
    /// waking the placement loop through `wake` after each event.
    pub fn new(config: Arc<RouterConfig>, workloads_topic: String, wake: Arc<Notify>) -> Self {
        Self {
            name: "router".into(),
            config,
            workloads_topic,
            wake,
        }
    }

    fn publish(&self) -> Publish {
        let (traceparent, tracestate) = hcp_bus::trace::current_trace_headers();
        Publish::to(self.workloads_topic.clone()).with_trace(traceparent, tracestate)
    }

    /// Appends one event caused by `cause` to its workload stream at `expected`. A version
    /// conflict (the stream moved on: cancelled, or another router got there first) is not an
    /// error: `Ok(None)`. Returns the new version and the appended event's id.
    async fn append(
        &self,
        tx: &mut PgConnection,
        cause: &Envelope,
        expected: i64,
        event: Event,
    ) -> Result<Option<(i64, Uuid)>, ApplyError> {
        let envelope = Envelope::new(cause.stream_id.clone(), PRODUCER, event).caused_by(cause);
        let event_id = envelope.event_id;
        match EventStore::append(
            tx,
            &cause.stream_id,
            ExpectedVersion::Exact(expected),
            &[envelope],
            &self.publish(),
        )
        .await
        {
            Ok(out) => Ok(Some((out.new_version, event_id))),
            Err(StoreError::ConcurrencyConflict { actual, .. }) => {
                tracing::debug!(
                    stream_id = %cause.stream_id, expected, actual,
                    "stream moved on; not appending"
                );
                Ok(None)
            }
            Err(StoreError::Database(e)) => Err(ApplyError::Database(e)),
            Err(e) => Err(ApplyError::Transient(e.to_string())),
        }
    }

    #[tracing::instrument(skip_all, fields(workload_id = %p.workload_id))]
    async fn on_submitted(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        p: &WorkloadSubmitted,
    ) -> Result<(), ApplyError> {
        if e.stream_id != workload_stream(p.workload_id) {
            return Err(ApplyError::Poison(format!(
                "workload.submitted for {} on stream {}",
                p.workload_id, e.stream_id
            )));
        }
        if !repo::insert_submitted(tx, e, p).await? {
            return Ok(());
        }
        let class = classify(p);
        let request = PlacementRequest {
            gpu_count: p.gpu_count,
            gpu_type: p.gpu_type.clone(),
            min_memory_mib: u64::from(p.gpu_memory_gib.unwrap_or(0)) * 1024,
        };
        let fleet = repo::fleet_shape(tx).await?;
        match feasible_ever(&request, &fleet) {
            Ok(()) => {
                let queued = Event::WorkloadQueued(WorkloadQueued {
                    workload_id: p.workload_id,
                    kind: class.kind,
                    priority: class.priority,
                    interruptible: class.interruptible,
                    reason: class.reason.clone(),
                });
                if let Some((version, event_id)) = self.append(tx, e, e.sequence, queued).await? {
                    let step = Step {
                        version,
                        event_id,
                        ..Step::of(e, p.workload_id, WorkloadState::Queued)
                    };
                    repo::classify_as(tx, &step, &class).await?;
                    let waited = (OffsetDateTime::now_utc() - e.occurred_at).as_seconds_f64();
                    metrics::histogram!(m::SUBMIT_TO_QUEUED).record(waited.max(0.0));
                    tracing::debug!(priority = class.priority, reason = %class.reason, "queued");
                }
            }
            Err(infeasible) => {
                let failed = Event::WorkloadFailed(WorkloadFailed {
                    workload_id: p.workload_id,
                    reason: infeasible.0.clone(),
                });
                if let Some((version, event_id)) = self.append(tx, e, e.sequence, failed).await? {
                    let step = Step {
                        version,
                        event_id,
                        ..Step::of(e, p.workload_id, WorkloadState::Failed)
                    };
                    repo::end(tx, &step, Some(&infeasible.0)).await?;
                    m::rejected(Rejection::Infeasible);
                    tracing::info!(reason = %infeasible, "refused: no worker could ever hold it");
                }
            }
        }
        Ok(())
    }

    async fn on_rejected(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        row: &repo::LiveRow,
        step: &Step,
        p: &WorkloadPlacementRejected,
    ) -> Result<(), ApplyError> {
        let cause = RejectionCause::of(&p.reason);
        if cause == RejectionCause::Race {
            // The resource-manager saw a GPU held that this router's view had already freed (a
            // release it has not consumed yet): nobody's fault, so no attempt is spent and no
            // breaker moves. Try again shortly; the view catches up.
            m::rejected(Rejection::PlacementRetryable);
            let next = e.occurred_at + self.config.backoff(1);
            repo::record_rejection(tx, step, row.attempts, Some(next), &p.reason).await?;
            return Ok(());
        }
        let attempts = row.attempts.saturating_add(1);
        if cause == RejectionCause::Worker {
            let policy = self.config.breaker;
            let at = e.occurred_at;
            repo::update_breaker(tx, &p.worker_id, |b: &mut Breaker| {
                b.record_failure(at, &policy)
            })
            .await?;
        }
        let give_up = if !p.retryable {
            m::rejected(Rejection::PlacementFinal);
            Some(format!(
                "placement on {} was refused: {}",
                p.worker_id, p.reason
            ))
        } else if attempts >= self.config.max_attempts {
            m::rejected(Rejection::MaxAttempts);
            Some(format!(
                "placement failed after {attempts} attempts; last: {} refused it: {}",
                p.worker_id, p.reason
            ))
        } else {
            m::rejected(Rejection::PlacementRetryable);
            None
        };
        if let Some(reason) = give_up {
            let failed = Event::WorkloadFailed(WorkloadFailed {
                workload_id: step.workload_id,
                reason: reason.clone(),
            });
            if let Some((version, event_id)) = self.append(tx, e, e.sequence, failed).await? {
                repo::record_rejection(tx, step, attempts, None, &p.reason).await?;
                let end = Step {
                    version,
                    event_id,
                    state: WorkloadState::Failed,
                    ..*step
                };
                repo::end(tx, &end, Some(&reason)).await?;
                return Ok(());
            }
        }
        let next = e.occurred_at + self.config.backoff(attempts);
        repo::record_rejection(tx, step, attempts, Some(next), &p.reason).await?;
        Ok(())
    }

    async fn on_workload_event(
        &self,
        tx: &mut PgConnection,
        e: &Envelope,
        workload_id: Uuid,
    ) -> Result<(), ApplyError> {
        let Some(row) = repo::lock_workload(tx, workload_id).await? else {
            // Never submitted while we were watching, or ended and purged: nothing to track.
            return Ok(());
        };
        if e.sequence <= row.last_version {
            // Already reflected (an event the router appended itself).
            return Ok(());
        }
        let to = transition(Some(row.state), &e.payload)
            .map_err(|err| ApplyError::Poison(format!("workload {workload_id}: {err}")))?;
        let step = Step::of(e, workload_id, to);
        match &e.payload {
            Event::WorkloadQueued(p) => {
                repo::classify(tx, &step, p.kind, p.priority, p.interruptible).await?
            }
            Event::WorkloadPlacementRejected(p) => self.on_rejected(tx, e, &row, &step, p).await?,
            Event::WorkloadPlacementProposed(p) => {
                repo::mark_proposed(tx, &step, &p.worker_id, &p.gpu_ids).await?
            }
            Event::WorkloadScheduled(p) => {
                repo::assign(tx, &step, &p.worker_id, &p.gpu_ids).await?;
                repo::update_breaker(tx, &p.worker_id, Breaker::record_success).await?;
            }
            Event::WorkloadStarted(_) => repo::mark_progress(tx, &step, None).await?,
            Event::WorkloadCheckpointed(p) => {
                repo::mark_progress(tx, &step, Some(p.progress)).await?
            }
            Event::WorkloadPreempted(p) => {
                repo::mark_preempted(tx, &step, p.for_workload_id).await?
            }
            Event::WorkloadRequeued(p) => repo::requeue(tx, &step, p.resume_progress).await?,
            Event::WorkloadCompleted(_) => {
                repo::end(tx, &step, None).await?;
                if let Some(w) = &row.worker_id {
                    repo::update_breaker(tx, w, Breaker::record_success).await?;
                }
            }
            Event::WorkloadFailed(p) => repo::end(tx, &step, Some(&p.reason)).await?,
            Event::WorkloadCancelled(_) => repo::end(tx, &step, None).await?,
            _ => repo::advance(tx, &step).await?,
        }
        Ok(())
    }
}

impl Projection for RouterProjection {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, tx: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        match &e.payload {
            Event::WorkloadSubmitted(p) => self.on_submitted(tx, e, p).await?,
            Event::WorkerRegistered(p) => repo::register_worker(tx, p, e.occurred_at).await?,
            Event::WorkerLost(p) => {
                repo::mark_lost(tx, &p.worker_id, e.occurred_at).await?;
                let (at, policy) = (e.occurred_at, self.config.breaker);
                repo::update_breaker(tx, &p.worker_id, |b: &mut Breaker| {
                    b.record_failure(at, &policy)
                })
                .await?;
            }
            // Worker reports and commands do not travel on these topics; they are not facts
            // about a workload's state.
            Event::RunReported(_) | Event::DeviceCommand(_) | Event::WorkerHeartbeat(_) => {}
            payload => {
                if let Some(id) = payload.workload_id() {
                    self.on_workload_event(tx, e, id).await?;
                }
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), hcp_db::sqlx::Error> {
        for table in [
            "router_queue",
            "router_fleet_classes",
            "router_worker_classes",
            "router_gpus",
            "router_workers",
        ] {
            hcp_db::sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

/// Whose fault a refused placement was, from the resource-manager's `<label>: <detail>` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionCause {
    /// The worker (unknown, lost, or a GPU missing): counts against its circuit breaker.
    Worker,
    /// A race between this router's view and the allocations (a GPU still held, a superseded
    /// proposal): neither an attempt nor a breaker failure.
    Race,
    /// Anything else (a constraint the proposal did not meet): an attempt, not the worker's fault.
    Other,
}

impl RejectionCause {
    /// Classifies a rejection reason.
    pub fn of(reason: &str) -> Self {
        match reason.split_once(':').map(|(label, _)| label.trim()) {
            Some("unknown_worker" | "worker_lost" | "unknown_gpu") => Self::Worker,
            Some("gpu_held" | "superseded") => Self::Race,
            _ => Self::Other,
        }
    }
}

#[cfg(test)]
mod rejection_tests {
    use super::RejectionCause;

    #[test]
    fn only_worker_faults_feed_the_breaker_and_races_cost_no_attempt() {
        assert_eq!(
            RejectionCause::of("worker_lost: worker w-1 is lost"),
            RejectionCause::Worker
        );
        assert_eq!(
            RejectionCause::of("unknown_gpu: w-1/gpu-9 is not on w-1"),
            RejectionCause::Worker
        );
        assert_eq!(
            RejectionCause::of("gpu_held: w-1/gpu-0 is allocated to another workload"),
            RejectionCause::Race
        );
        assert_eq!(
            RejectionCause::of("gpu_mismatch: w-1/gpu-0 is an A100"),
            RejectionCause::Other
        );
        assert_eq!(RejectionCause::of("no label at all"), RejectionCause::Other);
    }
}
