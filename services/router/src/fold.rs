//! The router projection's write path: a run of workload events folded set-based. One insert
//! of the new submissions (classified in it when feasible), one locked read of every other
//! row the run touches, the fold in memory
//! (the same rules for one event or a thousand), one batched append of what follows from them
//! (`workload.failed` for an infeasible submission or a placement given up), one write of the
//! changed rows, one of the GPUs' holders and one of the breakers. A feasible submission is
//! classified into its row; the placement cycle announces it (`workload.queued`).
//!
//! An event the router answers with an append is answered only if it is the last event of its
//! stream in the run: the append expects the stream at that event's sequence, and a later
//! event of the same stream in the run means the stream moved on (the conflict the one-by-one
//! path would have met).

use std::collections::{HashMap, HashSet};

use hcp_db::sqlx::{self, types::Json, PgConnection};
use hcp_db::{ApplyError, EventStore, ExpectedVersion, Publish, StoreError, StreamAppend};
use hcp_domain::breaker::Breaker;
use hcp_domain::classify::{classify, Classification};
use hcp_domain::placement::{feasible_ever, FleetShape, PlacementRequest};
use hcp_domain::{transition, WorkloadState};
use hcp_events::payload::{
    RejectCode, WorkloadFailed, WorkloadPlacementRejected, WorkloadSubmitted,
};
use hcp_events::{workload_stream, Envelope, Event};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::RouterConfig;
use crate::metrics::{self as m, Rejection};
use crate::repo::{self, kind_str};
use crate::PRODUCER;

/// Where an event leaves a workload row: its new state and the event's position.
#[derive(Debug, Clone, Copy)]
struct Step {
    state: WorkloadState,
    version: i64,
    event_id: Uuid,
    at: OffsetDateTime,
}

impl Step {
    fn of(e: &Envelope, state: WorkloadState) -> Self {
        Self {
            state,
            version: e.sequence,
            event_id: e.event_id,
            at: e.occurred_at,
        }
    }
}

/// The columns of a `router_queue` row the projection changes after its insert.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
struct QueueRow {
    workload_id: Uuid,
    state: String,
    last_version: i64,
    last_event_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    kind: Option<String>,
    priority: Option<i16>,
    interruptible: Option<bool>,
    class_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    queued_at: Option<OffsetDateTime>,
    proposed_worker: Option<String>,
    proposed_gpus: Option<Vec<String>>,
    #[serde(with = "time::serde::rfc3339::option")]
    proposed_at: Option<OffsetDateTime>,
    attempts: i32,
    #[serde(with = "time::serde::rfc3339::option")]
    next_attempt_at: Option<OffsetDateTime>,
    last_error: Option<String>,
    worker_id: Option<String>,
    gpu_ids: Vec<String>,
    progress: f64,
    #[serde(with = "time::serde::rfc3339::option")]
    progress_at: Option<OffsetDateTime>,
    preempted_for: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339::option")]
    preempted_at: Option<OffsetDateTime>,
}

const ROW_COLUMNS: &str = "workload_id, state, last_version, last_event_id, updated_at, kind, \
    priority, interruptible, class_reason, queued_at, proposed_worker, proposed_gpus, proposed_at, attempts, \
    next_attempt_at, last_error, worker_id, gpu_ids, progress, progress_at, preempted_for, \
    preempted_at";

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl QueueRow {
    /// Moves the row to the step's state and version, nothing else.
    fn advance(&mut self, s: &Step) {
        self.state = s.state.as_str().to_owned();
        self.last_version = s.version;
        self.last_event_id = s.event_id;
        self.updated_at = s.at;
    }

    fn clear_proposal(&mut self) {
        self.proposed_worker = None;
        self.proposed_gpus = None;
        self.proposed_at = None;
    }

    /// The classification of a queued workload (the reason is kept when `c` has none).
    fn classify(&mut self, s: &Step, c: &Classification) {
        self.advance(s);
        self.kind = Some(kind_str(c.kind).to_owned());
        self.priority = Some(i16::from(c.priority));
        self.interruptible = Some(c.interruptible);
        if !c.reason.is_empty() {
            self.class_reason = Some(c.reason.clone());
        }
        self.queued_at.get_or_insert(s.at);
    }

    /// A refused placement: the attempt count and when to try again.
    fn record_rejection(
        &mut self,
        s: &Step,
        attempts: u32,
        next: Option<OffsetDateTime>,
        reason: &str,
    ) {
        self.advance(s);
        self.attempts = i32_of(attempts);
        self.next_attempt_at = next;
        self.last_error = Some(reason.to_owned());
        self.clear_proposal();
    }

    /// Ended (completed, failed, cancelled); the caller frees its GPUs.
    fn end(&mut self, s: &Step, error: Option<&str>) {
        self.advance(s);
        if let Some(e) = error {
            self.last_error = Some(e.to_owned());
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum BreakerOp {
    Success,
    Failure(OffsetDateTime),
}

/// What an answered event's append does to its row once it went through (or did not).
#[derive(Debug)]
enum Then {
    Infeasible(String),
    GiveUp {
        step: Step,
        attempts: u32,
        next: OffsetDateTime,
        rejection: String,
        failure: String,
    },
}

#[derive(Debug)]
struct Answer<'a> {
    cause: &'a Envelope,
    workload_id: Uuid,
    envelope: Envelope,
    then: Then,
}

/// A run of workload events being folded.
struct Fold<'a> {
    config: &'a RouterConfig,
    rows: HashMap<Uuid, QueueRow>,
    dirty: Vec<Uuid>,
    /// Workloads whose GPUs were freed, and GPUs freed that the run had assigned.
    released: Vec<Uuid>,
    cleared: HashSet<String>,
    /// GPU → holder, as the run assigned them.
    assigned: HashMap<String, Uuid>,
    breakers: Vec<(String, BreakerOp)>,
    answers: Vec<Answer<'a>>,
}

impl<'a> Fold<'a> {
    fn touch(&mut self, id: Uuid) {
        if !self.dirty.contains(&id) {
            self.dirty.push(id);
        }
    }

    fn release(&mut self, id: Uuid) {
        self.released.push(id);
        let freed: Vec<String> = self
            .assigned
            .iter()
            .filter(|(_, w)| **w == id)
            .map(|(g, _)| g.clone())
            .collect();
        for g in freed {
            self.assigned.remove(&g);
            self.cleared.insert(g);
        }
    }

    fn assign(&mut self, id: Uuid, gpus: &[String]) {
        for g in gpus {
            self.cleared.remove(g);
            self.assigned.insert(g.clone(), id);
        }
    }

    fn answer(&mut self, cause: &'a Envelope, workload_id: Uuid, event: Event, then: Then) {
        let envelope = Envelope::new(cause.stream_id.clone(), PRODUCER, event).caused_by(cause);
        self.answers.push(Answer {
            cause,
            workload_id,
            envelope,
            then,
        });
    }

    /// A new submission: classified, or refused when no worker could ever hold it. The
    /// classification goes into the row only: the placement cycle announces it
    /// (`workload.queued`), in the same append as the placement when the workload fits at
    /// once, so a workload placed straight away costs one transaction and one hop fewer.
    fn submitted(
        &mut self,
        e: &'a Envelope,
        p: &WorkloadSubmitted,
        fleet: &FleetShape,
        last: bool,
    ) {
        let class = classify(p);
        match feasible_ever(&placement_request(p), fleet) {
            Ok(()) => {
                // Not loaded: the insert classified it, and no later event of the run needs
                // the row.
                if let Some(row) = self.rows.get_mut(&p.workload_id) {
                    row.classify(&Step::of(e, WorkloadState::Queued), &class);
                    self.touch(p.workload_id);
                }
                let waited = (OffsetDateTime::now_utc() - e.occurred_at).as_seconds_f64();
                metrics::histogram!(m::SUBMIT_TO_QUEUED).record(waited.max(0.0));
                tracing::debug!(workload_id = %p.workload_id, priority = class.priority, reason = %class.reason, "classified");
            }
            Err(_) if !last => {
                tracing::debug!(workload_id = %p.workload_id, "stream moved on; not refusing");
            }
            Err(infeasible) => {
                let failed = Event::WorkloadFailed(WorkloadFailed {
                    workload_id: p.workload_id,
                    reason: infeasible.0.clone(),
                });
                self.answer(e, p.workload_id, failed, Then::Infeasible(infeasible.0));
            }
        }
    }

    /// Any other event of a tracked workload.
    fn workload_event(&mut self, e: &'a Envelope, id: Uuid, last: bool) -> Result<(), ApplyError> {
        let Some(row) = self.rows.get_mut(&id) else {
            // Never submitted while we were watching, or ended and purged: nothing to track.
            return Ok(());
        };
        let Some(state) = WorkloadState::parse(&row.state) else {
            return Ok(());
        };
        if e.sequence <= row.last_version {
            // Already reflected (an event the router appended itself).
            return Ok(());
        }
        let to = transition(Some(state), &e.payload)
            .map_err(|err| ApplyError::Poison(format!("workload {id}: {err}")))?;
        let step = Step::of(e, to);
        let mut breaker = None;
        let mut release = false;
        match &e.payload {
            Event::WorkloadQueued(p) => {
                let c = Classification {
                    kind: p.kind,
                    priority: p.priority,
                    interruptible: p.interruptible,
                    reason: String::new(),
                };
                row.classify(&step, &c);
            }
            Event::WorkloadPlacementRejected(p) => return self.rejected(e, id, &step, p, last),
            Event::WorkloadPlacementProposed(p) => {
                row.advance(&step);
                row.proposed_worker = Some(p.worker_id.clone());
                row.proposed_gpus = Some(p.gpu_ids.clone());
                row.proposed_at = Some(step.at);
            }
            Event::WorkloadScheduled(p) => {
                row.advance(&step);
                row.worker_id = Some(p.worker_id.clone());
                row.gpu_ids = p.gpu_ids.clone();
                row.progress_at = Some(step.at);
                row.next_attempt_at = None;
                row.clear_proposal();
                breaker = Some((p.worker_id.clone(), BreakerOp::Success));
                let gpus = p.gpu_ids.clone();
                self.assign(id, &gpus);
            }
            Event::WorkloadStarted(_) => {
                row.advance(&step);
                row.progress_at = Some(step.at);
            }
            Event::WorkloadCheckpointed(p) => {
                row.advance(&step);
                row.progress_at = Some(step.at);
                row.progress = p.progress;
            }
            Event::WorkloadPreempted(p) => {
                row.advance(&step);
                row.preempted_for = Some(p.for_workload_id);
                row.preempted_at = Some(step.at);
            }
            Event::WorkloadRequeued(p) => {
                row.advance(&step);
                row.progress = p.resume_progress;
                row.worker_id = None;
                row.gpu_ids = Vec::new();
                row.progress_at = None;
                row.attempts = 0;
                row.next_attempt_at = None;
                row.preempted_for = None;
                row.queued_at = Some(step.at);
                row.clear_proposal();
                release = true;
            }
            Event::WorkloadCompleted(_) => {
                breaker = row.worker_id.clone().map(|w| (w, BreakerOp::Success));
                row.end(&step, None);
                release = true;
            }
            Event::WorkloadFailed(p) => {
                row.end(&step, Some(&p.reason));
                release = true;
            }
            Event::WorkloadCancelled(_) => {
                row.end(&step, None);
                release = true;
            }
            _ => row.advance(&step),
        }
        self.touch(id);
        if release {
            self.release(id);
        }
        if let Some(b) = breaker {
            self.breakers.push(b);
        }
        Ok(())
    }

    fn rejected(
        &mut self,
        e: &'a Envelope,
        id: Uuid,
        step: &Step,
        p: &WorkloadPlacementRejected,
        last: bool,
    ) -> Result<(), ApplyError> {
        let Some(row) = self.rows.get_mut(&id) else {
            return Ok(());
        };
        let had = u32::try_from(row.attempts).unwrap_or(0);
        let cause = RejectionCause::of(p);
        if cause == RejectionCause::Race {
            // The resource-manager saw a GPU held that this router's view had already freed (a
            // release it has not consumed yet): nobody's fault, so no attempt is spent and no
            // breaker moves. Try again shortly; the view catches up.
            m::rejected(Rejection::PlacementRetryable);
            let next = e.occurred_at + self.config.backoff(1);
            row.record_rejection(step, had, Some(next), &p.reason);
            self.touch(id);
            return Ok(());
        }
        let attempts = had.saturating_add(1);
        if cause == RejectionCause::Worker {
            self.breakers
                .push((p.worker_id.clone(), BreakerOp::Failure(e.occurred_at)));
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
        let next = e.occurred_at + self.config.backoff(attempts);
        match give_up {
            Some(failure) if last => {
                let failed = Event::WorkloadFailed(WorkloadFailed {
                    workload_id: id,
                    reason: failure.clone(),
                });
                let then = Then::GiveUp {
                    step: *step,
                    attempts,
                    next,
                    rejection: p.reason.clone(),
                    failure,
                };
                self.answer(e, id, failed, then);
            }
            _ => {
                row.record_rejection(step, attempts, Some(next), &p.reason);
                self.touch(id);
            }
        }
        Ok(())
    }

    /// Applies an answer's outcome: `Some((version, event id))` when its append went through.
    fn settle(&mut self, answer: &Answer<'_>, appended: Option<(i64, Uuid)>) {
        let id = answer.workload_id;
        let Some(row) = self.rows.get_mut(&id) else {
            return;
        };
        let at = answer.cause.occurred_at;
        let mut release = false;
        match (&answer.then, appended) {
            (Then::Infeasible(reason), Some((version, event_id))) => {
                let step = Step {
                    state: WorkloadState::Failed,
                    version,
                    event_id,
                    at,
                };
                row.end(&step, Some(reason));
                release = true;
                m::rejected(Rejection::Infeasible);
                tracing::info!(workload_id = %id, %reason, "refused: no worker could ever hold it");
            }
            (
                Then::GiveUp {
                    step,
                    attempts,
                    rejection,
                    failure,
                    ..
                },
                Some((version, event_id)),
            ) => {
                row.record_rejection(step, *attempts, None, rejection);
                let end = Step {
                    state: WorkloadState::Failed,
                    version,
                    event_id,
                    at: step.at,
                };
                row.end(&end, Some(failure));
                release = true;
            }
            (
                Then::GiveUp {
                    step,
                    attempts,
                    next,
                    rejection,
                    ..
                },
                None,
            ) => row.record_rejection(step, *attempts, Some(*next), rejection),
            (Then::Infeasible(_), None) => {
                tracing::debug!(workload_id = %id, "stream moved on; not appending");
                return;
            }
        }
        self.touch(id);
        if release {
            self.release(id);
        }
    }
}

/// Applies a run of workload events (submissions and every other `workload.*`) in order.
pub(crate) async fn apply_workload_events(
    config: &RouterConfig,
    publish: &Publish,
    tx: &mut PgConnection,
    events: &[&Envelope],
) -> Result<(), ApplyError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut submissions: Vec<(&Envelope, &WorkloadSubmitted)> = Vec::new();
    let mut ids: Vec<Uuid> = Vec::with_capacity(events.len());
    // Workloads with an event other than their submission in the run.
    let mut followed: HashSet<Uuid> = HashSet::new();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if let Event::WorkloadSubmitted(p) = &e.payload {
            if e.stream_id != workload_stream(p.workload_id) {
                return Err(ApplyError::Poison(format!(
                    "workload.submitted for {} on stream {}",
                    p.workload_id, e.stream_id
                )));
            }
            submissions.push((e, p));
        } else if let Some(id) = e.payload.workload_id() {
            followed.insert(id);
        }
        if let Some(id) = e.payload.workload_id() {
            ids.push(id);
        }
        last.insert(&e.stream_id, i);
    }
    ids.sort_unstable();
    ids.dedup();
    let fleet = if submissions.is_empty() {
        FleetShape::default()
    } else {
        repo::fleet_shape(tx).await?
    };
    // A feasible submission is classified in its insert: one row version instead of an insert
    // and an update, and no locked read of a row nothing else in the run touches.
    let classes: HashMap<Uuid, Classification> = submissions
        .iter()
        .filter(|(_, p)| feasible_ever(&placement_request(p), &fleet).is_ok())
        .map(|(_, p)| (p.workload_id, classify(p)))
        .collect();
    let new = insert_submitted(tx, &submissions, &classes).await?;
    ids.retain(|id| !(new.contains(id) && classes.contains_key(id) && !followed.contains(id)));
    // Locked in id order: two runs touching the same rows cannot deadlock.
    let rows: Vec<QueueRow> = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(&format!(
            "SELECT {ROW_COLUMNS} FROM router_queue WHERE workload_id = ANY($1) \
             ORDER BY workload_id FOR UPDATE"
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
    };
    let mut fold = Fold {
        config,
        rows: rows.into_iter().map(|r| (r.workload_id, r)).collect(),
        dirty: Vec::new(),
        released: Vec::new(),
        cleared: HashSet::new(),
        assigned: HashMap::new(),
        breakers: Vec::new(),
        answers: Vec::new(),
    };
    for (i, &e) in events.iter().enumerate() {
        let is_last = last.get(e.stream_id.as_str()) == Some(&i);
        match &e.payload {
            Event::WorkloadSubmitted(p) => {
                if new.contains(&p.workload_id) {
                    fold.submitted(e, p, &fleet, is_last);
                }
            }
            payload => {
                if let Some(id) = payload.workload_id() {
                    fold.workload_event(e, id, is_last)?;
                }
            }
        }
    }

    // The answers, each at the version of the event it answers.
    let answers = std::mem::take(&mut fold.answers);
    let outcomes = append_answers(tx, publish, &answers).await?;
    for (answer, outcome) in answers.iter().zip(outcomes) {
        fold.settle(answer, outcome.map(|v| (v, answer.envelope.event_id)));
    }

    write_rows(tx, &fold).await?;
    write_holders(tx, &fold).await?;
    write_breakers(tx, &fold.breakers, &config.breaker).await?;
    Ok(())
}

/// What a submission asks of the fleet.
fn placement_request(p: &WorkloadSubmitted) -> PlacementRequest {
    PlacementRequest {
        gpu_count: p.gpu_count,
        gpu_type: p.gpu_type.clone(),
        min_memory_mib: u64::from(p.gpu_memory_gib.unwrap_or(0)) * 1024,
    }
}

/// Inserts the new submissions, classified as in `classes` (a submission without a class is
/// inserted unclassified and answered by the fold); returns the workloads that were new.
async fn insert_submitted(
    tx: &mut PgConnection,
    submissions: &[(&Envelope, &WorkloadSubmitted)],
    classes: &HashMap<Uuid, Classification>,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if submissions.is_empty() {
        return Ok(HashSet::new());
    }
    // In workload order: two transactions inserting overlapping submissions (the consumer and
    // the log's tail, `crate::ahead`) wait on each other in one order and cannot deadlock.
    let mut submissions = submissions.to_vec();
    submissions.sort_by_key(|(_, p)| p.workload_id);
    let n = submissions.len();
    let mut ids = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut tiers = Vec::with_capacity(n);
    let mut models = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut memory = Vec::with_capacity(n);
    let mut durations = Vec::with_capacity(n);
    let mut deadlines = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut event_ids = Vec::with_capacity(n);
    let mut correlations = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut interruptible = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut queued_at = Vec::with_capacity(n);
    for (e, p) in &submissions {
        let class = classes.get(&p.workload_id);
        kinds.push(class.map(|c| kind_str(c.kind)));
        priorities.push(class.map(|c| i16::from(c.priority)));
        interruptible.push(class.map(|c| c.interruptible));
        reasons.push(class.and_then(|c| (!c.reason.is_empty()).then_some(c.reason.as_str())));
        queued_at.push(class.map(|_| e.occurred_at));
        ids.push(p.workload_id);
        tenants.push(p.tenant_id.as_str());
        tiers.push(p.tier.as_str());
        models.push(p.model.as_str());
        counts.push(i32_of(p.gpu_count));
        types.push(p.gpu_type.as_deref());
        memory.push(i64::from(p.gpu_memory_gib.unwrap_or(0)) * 1024);
        durations.push(i32_of(p.duration_s));
        deadlines.push(p.deadline);
        versions.push(e.sequence);
        event_ids.push(e.event_id);
        correlations.push(e.correlation_id);
        at.push(e.occurred_at);
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO router_queue (workload_id, tenant_id, tier, model, gpu_count, gpu_type, \
             gpu_memory_mib, duration_s, deadline, state, last_version, last_event_id, \
             correlation_id, submitted_at, updated_at, kind, priority, interruptible, \
             class_reason, queued_at) \
         SELECT u.id, u.tenant, u.tier, u.model, u.gpus, u.gpu_type, u.memory, u.duration, \
                u.deadline, 'queued', u.version, u.event_id, u.correlation, u.at, u.at, u.kind, \
                u.priority, u.interruptible, u.reason, u.queued_at \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], \
                     $7::bigint[], $8::int[], $9::timestamptz[], $10::bigint[], $11::uuid[], \
                     $12::uuid[], $13::timestamptz[], $14::text[], $15::smallint[], \
                     $16::boolean[], $17::text[], $18::timestamptz[]) \
              AS u(id, tenant, tier, model, gpus, gpu_type, memory, duration, deadline, version, \
                   event_id, correlation, at, kind, priority, interruptible, reason, queued_at) \
         ON CONFLICT (workload_id) DO NOTHING RETURNING workload_id",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&tiers)
    .bind(&models)
    .bind(&counts)
    .bind(&types)
    .bind(&memory)
    .bind(&durations)
    .bind(&deadlines)
    .bind(&versions)
    .bind(&event_ids)
    .bind(&correlations)
    .bind(&at)
    .bind(&kinds)
    .bind(&priorities)
    .bind(&interruptible)
    .bind(&reasons)
    .bind(&queued_at)
    .fetch_all(tx)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Appends every answer at the version of the event it answers. Per answer, the new stream
/// version, or `None` when the stream moved on.
async fn append_answers(
    tx: &mut PgConnection,
    publish: &Publish,
    answers: &[Answer<'_>],
) -> Result<Vec<Option<i64>>, ApplyError> {
    let appends: Vec<StreamAppend<'_>> = answers
        .iter()
        .map(|a| StreamAppend {
            stream_id: &a.cause.stream_id,
            expected: ExpectedVersion::Exact(a.cause.sequence),
            events: std::slice::from_ref(&a.envelope),
            publish,
        })
        .collect();
    let results = match EventStore::append_batch(tx, &appends).await {
        Ok(r) => r,
        Err(StoreError::Database(e)) => return Err(ApplyError::Database(e)),
        Err(e) => return Err(ApplyError::Transient(e.to_string())),
    };
    results
        .into_iter()
        .map(|r| match r {
            Ok(out) => Ok(Some(out.new_version)),
            Err(StoreError::ConcurrencyConflict { .. }) => Ok(None),
            Err(StoreError::Database(e)) => Err(ApplyError::Database(e)),
            Err(e) => Err(ApplyError::Transient(e.to_string())),
        })
        .collect()
}

/// Writes the changed rows in one statement.
async fn write_rows(tx: &mut PgConnection, fold: &Fold<'_>) -> Result<(), sqlx::Error> {
    let rows: Vec<&QueueRow> = fold
        .dirty
        .iter()
        .filter_map(|id| fold.rows.get(id))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE router_queue q SET state = u.state, last_version = u.last_version, \
             last_event_id = u.last_event_id, updated_at = u.updated_at, kind = u.kind, \
             priority = u.priority, interruptible = u.interruptible, \
             class_reason = u.class_reason, queued_at = u.queued_at, \
             proposed_worker = u.proposed_worker, proposed_gpus = u.proposed_gpus, \
             proposed_at = u.proposed_at, attempts = u.attempts, \
             next_attempt_at = u.next_attempt_at, last_error = u.last_error, \
             worker_id = u.worker_id, gpu_ids = u.gpu_ids, progress = u.progress, \
             progress_at = u.progress_at, preempted_for = u.preempted_for, \
             preempted_at = u.preempted_at \
         FROM jsonb_to_recordset($1) AS u(workload_id uuid, state text, last_version bigint, \
             last_event_id uuid, updated_at timestamptz, kind text, priority smallint, \
             interruptible boolean, class_reason text, queued_at timestamptz, proposed_worker text, \
             proposed_gpus text[], proposed_at timestamptz, attempts integer, \
             next_attempt_at timestamptz, last_error text, worker_id text, gpu_ids text[], \
             progress double precision, progress_at timestamptz, preempted_for uuid, \
             preempted_at timestamptz) \
         WHERE q.workload_id = u.workload_id",
    )
    .bind(Json(rows))
    .execute(tx)
    .await
    .map(|_| ())
}

/// Frees the GPUs of released workloads, then marks the run's assignments.
async fn write_holders(tx: &mut PgConnection, fold: &Fold<'_>) -> Result<(), sqlx::Error> {
    if !fold.released.is_empty() || !fold.cleared.is_empty() {
        let cleared: Vec<&str> = fold.cleared.iter().map(String::as_str).collect();
        sqlx::query(
            "UPDATE router_gpus SET held_by = NULL \
             WHERE held_by = ANY($1) OR gpu_id = ANY($2)",
        )
        .bind(&fold.released)
        .bind(&cleared)
        .execute(&mut *tx)
        .await?;
    }
    if !fold.assigned.is_empty() {
        let (gpus, holders): (Vec<&str>, Vec<Uuid>) =
            fold.assigned.iter().map(|(g, w)| (g.as_str(), *w)).unzip();
        sqlx::query(
            "UPDATE router_gpus g SET held_by = u.holder \
             FROM UNNEST($1::text[], $2::uuid[]) AS u(gpu, holder) WHERE g.gpu_id = u.gpu",
        )
        .bind(&gpus)
        .bind(&holders)
        .execute(tx)
        .await?;
    }
    Ok(())
}

/// Applies the run's breaker outcomes in order, writing only the breakers that changed.
async fn write_breakers(
    tx: &mut PgConnection,
    ops: &[(String, BreakerOp)],
    policy: &hcp_domain::breaker::BreakerPolicy,
) -> Result<(), sqlx::Error> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut workers: Vec<&str> = ops.iter().map(|(w, _)| w.as_str()).collect();
    workers.sort_unstable();
    workers.dedup();
    let current: Vec<(String, Json<Breaker>)> = sqlx::query_as(
        "SELECT worker_id, breaker FROM router_workers WHERE worker_id = ANY($1) \
         ORDER BY worker_id FOR UPDATE",
    )
    .bind(&workers)
    .fetch_all(&mut *tx)
    .await?;
    let mut breakers: HashMap<String, (Breaker, Breaker)> = current
        .into_iter()
        .map(|(w, Json(b))| (w, (b, b)))
        .collect();
    for (worker, op) in ops {
        // Unknown workers are ignored.
        if let Some((_, after)) = breakers.get_mut(worker) {
            match op {
                BreakerOp::Success => after.record_success(),
                BreakerOp::Failure(at) => after.record_failure(*at, policy),
            }
        }
    }
    let (ids, values): (Vec<&str>, Vec<Json<Breaker>>) = breakers
        .iter()
        .filter(|(_, (before, after))| before != after)
        .map(|(w, (_, after))| (w.as_str(), Json(*after)))
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE router_workers w SET breaker = u.breaker \
         FROM UNNEST($1::text[], $2::jsonb[]) AS u(id, breaker) WHERE w.worker_id = u.id",
    )
    .bind(&ids)
    .bind(&values)
    .execute(tx)
    .await
    .map(|_| ())
}

/// Whose fault a refused placement was, from the rejection's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectionCause {
    /// The worker (unknown, lost, or a GPU missing): counts against its circuit breaker.
    Worker,
    /// A race between this router's view and the allocations (a GPU still held, a superseded
    /// proposal): neither an attempt nor a breaker failure.
    Race,
    /// Anything else (a constraint the proposal did not meet): an attempt, not the worker's fault.
    Other,
}

impl RejectionCause {
    /// Classifies a rejection (by its `code`; a version 1 event by the label of its reason).
    pub(crate) fn of(rejected: &WorkloadPlacementRejected) -> Self {
        match RejectCode::of(rejected) {
            Some(RejectCode::UnknownWorker | RejectCode::WorkerLost | RejectCode::UnknownGpu) => {
                Self::Worker
            }
            Some(RejectCode::GpuHeld | RejectCode::Superseded) => Self::Race,
            Some(RejectCode::BadProposal | RejectCode::GpuMismatch) | None => Self::Other,
        }
    }
}

#[cfg(test)]
mod rejection_tests {
    use super::*;

    fn rejected(reason: &str, code: Option<RejectCode>) -> WorkloadPlacementRejected {
        WorkloadPlacementRejected {
            workload_id: uuid::Uuid::nil(),
            worker_id: "w-1".into(),
            reason: reason.into(),
            retryable: true,
            code,
        }
    }

    #[test]
    fn only_worker_faults_feed_the_breaker_and_races_cost_no_attempt() {
        let cause = |code| RejectionCause::of(&rejected("anything", Some(code)));
        assert_eq!(cause(RejectCode::WorkerLost), RejectionCause::Worker);
        assert_eq!(cause(RejectCode::UnknownWorker), RejectionCause::Worker);
        assert_eq!(cause(RejectCode::UnknownGpu), RejectionCause::Worker);
        assert_eq!(cause(RejectCode::GpuHeld), RejectionCause::Race);
        assert_eq!(cause(RejectCode::Superseded), RejectionCause::Race);
        assert_eq!(cause(RejectCode::GpuMismatch), RejectionCause::Other);
        assert_eq!(cause(RejectCode::BadProposal), RejectionCause::Other);
    }

    #[test]
    fn a_version_1_rejection_is_classified_by_the_label_of_its_reason() {
        let v1 = |reason| RejectionCause::of(&rejected(reason, None));
        assert_eq!(
            v1("worker_lost: worker w-1 is lost"),
            RejectionCause::Worker
        );
        assert_eq!(
            v1("unknown_gpu: w-1/gpu-9 is not on w-1"),
            RejectionCause::Worker
        );
        assert_eq!(
            v1("gpu_held: w-1/gpu-0 is allocated to another workload"),
            RejectionCause::Race
        );
        assert_eq!(
            v1("gpu_mismatch: w-1/gpu-0 is an A100"),
            RejectionCause::Other
        );
        assert_eq!(v1("no label at all"), RejectionCause::Other);
        // The code wins over the text.
        assert_eq!(
            RejectionCause::of(&rejected("gpu_held: text", Some(RejectCode::WorkerLost))),
            RejectionCause::Worker
        );
    }
}
