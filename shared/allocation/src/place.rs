//! Placing a group of workloads in one transaction, set-based: one read of the workers, each
//! pool locked once (in name order), one read of the holders, one read of every workload
//! stream, the decisions in memory (GPUs taken earlier in the group count as held), one insert
//! of the allocations, one batched append of the answers and one of the start commands, one
//! write of the run rows.
//!
//! An answer whose stream moved between the read and the append has its allocation undone and
//! comes back as [`Outcome::Conflict`]: nothing was written for it, and the caller decides
//! again (the resource-manager re-reads; the router's cycle sees the row move on).

use std::collections::HashMap;

use hcp_db::store::read_streams_on;
use hcp_db::{EventStore, ExpectedVersion, Publish, RecordedEvent, StoreError, StreamAppend};
use hcp_domain::WorkloadState;
use hcp_events::payload::{
    CommandAction, DeviceCommand, WorkloadPlacementProposed, WorkloadPlacementRejected,
    WorkloadScheduled,
};
use hcp_events::{command_stream, workload_stream, Envelope, Event};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::check::{check_placement, Holder, RejectReason, Rejection};
use crate::ledger::{self, NewRun, WorkerRow};
use crate::view::WorkloadView;

/// The event an answer follows: its id becomes the causation id, its correlation id is
/// carried on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cause {
    /// The causing event.
    pub event_id: Uuid,
    /// The workload's flow.
    pub correlation_id: Uuid,
}

/// What is being placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RequestKind {
    /// Answer this `workload.placement_proposed` event (its id): once, and only if it is the
    /// stream's latest proposal.
    Proposal(Uuid),
    /// Place directly, as decided at stream version `expected`. A refusal is recorded as the
    /// proposal (`score`, `attempt`) followed by its rejection, so whoever reads the stream
    /// sees one story whichever way the placement was made.
    Direct {
        /// The stream version the decision saw.
        expected: i64,
        /// The placement's score.
        score: f64,
        /// The attempt number.
        attempt: u32,
    },
}

/// One placement to decide: a gang of GPUs on one worker for one workload.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// An event to append before the answer, in the same append (the router's
    /// `workload.queued` for a workload classified and placed in one cycle).
    pub announce: Option<&'a Event>,
    /// The workload.
    pub workload_id: Uuid,
    /// The worker.
    pub worker_id: &'a str,
    /// Its GPUs.
    pub gpu_ids: &'a [String],
    /// The event the answer follows.
    pub cause: Cause,
    /// Proposal or direct.
    pub kind: RequestKind,
}

/// Why nothing was appended for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// The proposal was answered before (a redelivery).
    AlreadyAnswered,
    /// The workload is no longer queued (cancelled, failed, or placed meanwhile): that event
    /// is the answer.
    NotQueued(Option<WorkloadState>),
    /// A later proposal for the workload exists; it gets the answer.
    Superseded,
    /// A direct placement decided at a version the stream has moved past.
    Moved {
        /// The stream's version.
        version: i64,
    },
    /// The workload's stream does not fold, or has no submission.
    Broken(String),
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Allocated: `workload.scheduled` (at `version`) and the start command are appended.
    Scheduled {
        /// The workload stream's version after `workload.scheduled`.
        version: i64,
    },
    /// Refused: `workload.placement_rejected` is appended (after the proposal, when direct).
    Rejected {
        /// Why.
        rejection: Rejection,
        /// Whether any worker of the fleet could hold the workload.
        retryable: bool,
        /// The stream's version after the rejection.
        version: i64,
    },
    /// Nothing appended.
    Skipped(Skip),
    /// The stream moved between the read and the append; nothing was written.
    Conflict,
}

/// A failure of the whole group (the transaction should be rolled back).
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The database refused a statement.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The event store refused an append for another reason than a version conflict.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the answers go.
#[derive(Debug, Clone, Copy)]
pub struct Sink<'a> {
    /// The `producer` of the appended events.
    pub producer: &'static str,
    /// Publishing of workload events.
    pub workloads: &'a Publish,
    /// Publishing of device commands.
    pub commands: &'a Publish,
}

fn envelope(stream: &str, producer: &'static str, event: Event, cause: Cause) -> Envelope {
    let mut e = Envelope::new(stream, producer, event);
    e.causation_id = Some(cause.event_id);
    e.correlation_id = cause.correlation_id;
    e
}

fn fold(
    streams: &HashMap<String, Vec<RecordedEvent>>,
    stream: &str,
    workload_id: Uuid,
) -> Result<WorkloadView, String> {
    let events = streams.get(stream).map(Vec::as_slice).unwrap_or_default();
    WorkloadView::fold(events.iter().map(|r| &r.envelope))
        .map_err(|e| format!("the stream of workload {workload_id} does not fold: {e}"))
}

/// A decision taken in memory, not yet written.
struct Decision<'a> {
    slot: usize,
    request: &'a Request<'a>,
    view: WorkloadView,
    verdict: Result<(), Rejection>,
}

/// Decides and writes `requests` (of distinct workloads) in the caller's transaction. Returns
/// one outcome per request, in order.
pub async fn place(
    tx: &mut PgConnection,
    requests: &[Request<'_>],
    sink: Sink<'_>,
) -> Result<Vec<Outcome>, PlaceError> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; requests.len()];
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let mut worker_ids: Vec<String> = requests.iter().map(|r| r.worker_id.to_owned()).collect();
    worker_ids.sort_unstable();
    worker_ids.dedup();
    // The pool locks come first: from here to commit nobody else changes these pools.
    ledger::lock_pools_of(tx, &worker_ids).await?;
    let workers = ledger::workers(tx, &worker_ids).await?;
    let gpu_ids: Vec<String> = requests
        .iter()
        .flat_map(|r| r.gpu_ids.iter().cloned())
        .collect();
    let mut held: HashMap<String, Uuid> = ledger::holders(tx, &gpu_ids)
        .await?
        .into_iter()
        .map(|h| (h.gpu_id, h.workload_id))
        .collect();
    let stream_ids: Vec<String> = requests
        .iter()
        .map(|r| workload_stream(r.workload_id))
        .collect();
    let streams = read_streams_on(tx, &stream_ids).await?;

    let mut decisions: Vec<Decision<'_>> = Vec::with_capacity(requests.len());
    for (slot, (request, stream)) in requests.iter().zip(&stream_ids).enumerate() {
        let view = match fold(&streams, stream, request.workload_id) {
            Ok(v) => v,
            Err(why) => {
                outcomes[slot] = Some(Outcome::Skipped(Skip::Broken(why)));
                continue;
            }
        };
        let skip = match request.kind {
            RequestKind::Proposal(id) if view.answered.contains(&id) => Some(Skip::AlreadyAnswered),
            RequestKind::Direct { expected, .. } if view.version != expected => Some(Skip::Moved {
                version: view.version,
            }),
            _ if view.state != Some(WorkloadState::Queued) => Some(Skip::NotQueued(view.state)),
            RequestKind::Proposal(id) if view.latest_proposal != Some(id) => Some(Skip::Superseded),
            _ => None,
        };
        if let Some(skip) = skip {
            outcomes[slot] = Some(Outcome::Skipped(skip));
            continue;
        }
        let Some(submitted) = view.submitted.as_ref() else {
            let why = format!("workload {} has no submission", request.workload_id);
            outcomes[slot] = Some(Outcome::Skipped(Skip::Broken(why)));
            continue;
        };
        let holders: Vec<Holder> = request
            .gpu_ids
            .iter()
            .filter_map(|g| {
                held.get(g).map(|w| Holder {
                    gpu_id: g.clone(),
                    workload_id: *w,
                })
            })
            .collect();
        let worker = workers.get(request.worker_id).map(WorkerRow::info);
        let verdict = check_placement(
            submitted,
            request.worker_id,
            request.gpu_ids,
            worker.as_ref(),
            &holders,
        );
        if verdict.is_ok() {
            for g in request.gpu_ids {
                held.insert(g.clone(), request.workload_id);
            }
        }
        decisions.push(Decision {
            slot,
            request,
            view,
            verdict,
        });
    }

    // The allocations, with the unique index as the backstop.
    let rows: Vec<(Uuid, &str, &str)> = decisions
        .iter()
        .filter(|d| d.verdict.is_ok())
        .flat_map(|d| {
            d.request
                .gpu_ids
                .iter()
                .map(|g| (d.request.workload_id, d.request.worker_id, g.as_str()))
        })
        .collect();
    if !rows.is_empty() {
        let inserted = ledger::allocate_many(tx, &rows).await?;
        let mut refused = Vec::new();
        for d in decisions.iter_mut().filter(|d| d.verdict.is_ok()) {
            let id = d.request.workload_id;
            if inserted.get(&id).copied().unwrap_or(0) != d.request.gpu_ids.len() {
                tracing::error!(
                    workload_id = %id,
                    gpus = ?d.request.gpu_ids,
                    "allocation backstop refused a GPU that the pool-locked check saw free"
                );
                refused.push(id);
                d.verdict = Err(Rejection::new(
                    RejectReason::GpuHeld,
                    "a GPU of the placement is already allocated".into(),
                ));
            }
        }
        ledger::undo_allocations(tx, &refused).await?;
    }

    // The answers on the workload streams, each at the version its decision saw.
    let mut fleet: Option<Vec<WorkerRow>> = None;
    let mut retryable: Vec<bool> = Vec::with_capacity(decisions.len());
    let mut answers: Vec<Vec<Envelope>> = Vec::with_capacity(decisions.len());
    for d in &decisions {
        let r = d.request;
        let stream = workload_stream(r.workload_id);
        let mut events = Vec::with_capacity(3);
        let mut cause = r.cause;
        if let Some(first) = r.announce {
            let announced = envelope(&stream, sink.producer, first.clone(), cause);
            cause = Cause {
                event_id: announced.event_id,
                correlation_id: r.cause.correlation_id,
            };
            events.push(announced);
        }
        if let (Err(_), RequestKind::Direct { score, attempt, .. }) = (&d.verdict, r.kind) {
            let proposed = envelope(
                &stream,
                sink.producer,
                Event::WorkloadPlacementProposed(WorkloadPlacementProposed {
                    workload_id: r.workload_id,
                    worker_id: r.worker_id.to_owned(),
                    gpu_ids: r.gpu_ids.to_vec(),
                    score,
                    attempt,
                }),
                cause,
            );
            cause = Cause {
                event_id: proposed.event_id,
                correlation_id: r.cause.correlation_id,
            };
            events.push(proposed);
        }
        let event = match &d.verdict {
            Ok(()) => {
                retryable.push(true);
                Event::WorkloadScheduled(WorkloadScheduled {
                    workload_id: r.workload_id,
                    worker_id: r.worker_id.to_owned(),
                    gpu_ids: r.gpu_ids.to_vec(),
                })
            }
            Err(rejection) => {
                let fleet = match &mut fleet {
                    Some(f) => f,
                    None => fleet.insert(ledger::all_workers(tx).await?),
                };
                let fits = d
                    .view
                    .submitted
                    .as_ref()
                    .is_none_or(|s| ledger::could_fit(fleet, s));
                retryable.push(fits);
                Event::WorkloadPlacementRejected(WorkloadPlacementRejected {
                    workload_id: r.workload_id,
                    worker_id: r.worker_id.to_owned(),
                    reason: format!("{}: {}", rejection.reason.as_str(), rejection.detail),
                    retryable: fits,
                    code: Some(rejection.reason),
                })
            }
        };
        events.push(envelope(&stream, sink.producer, event, cause));
        answers.push(events);
    }
    let appends: Vec<StreamAppend<'_>> = decisions
        .iter()
        .zip(&answers)
        .map(|(d, events)| StreamAppend {
            stream_id: &events[0].stream_id,
            expected: ExpectedVersion::Exact(d.view.version),
            events,
            publish: sink.workloads,
        })
        .collect();
    let results = EventStore::append_batch(tx, &appends).await?;

    let mut undo: Vec<Uuid> = Vec::new();
    let mut commands: HashMap<&str, Vec<Envelope>> = HashMap::new();
    let mut runs: Vec<NewRun<'_>> = Vec::new();
    for ((d, result), fits) in decisions.iter().zip(results).zip(retryable) {
        let r = d.request;
        let version = match result {
            Ok(out) => out.new_version,
            Err(StoreError::ConcurrencyConflict { .. }) => {
                if d.verdict.is_ok() {
                    undo.push(r.workload_id);
                }
                outcomes[d.slot] = Some(Outcome::Conflict);
                continue;
            }
            Err(other) => return Err(other.into()),
        };
        match (&d.verdict, d.view.submitted.as_ref()) {
            (Ok(()), Some(submitted)) => {
                let stream = command_stream(r.worker_id);
                let cmd = envelope(
                    &stream,
                    sink.producer,
                    Event::DeviceCommand(DeviceCommand {
                        command_id: Uuid::now_v7(),
                        worker_id: r.worker_id.to_owned(),
                        workload_id: r.workload_id,
                        action: CommandAction::Start {
                            model: submitted.model.clone(),
                            gpu_ids: r.gpu_ids.to_vec(),
                            duration_s: submitted.duration_s,
                            resume_progress: d.view.last_checkpoint,
                            input: submitted.input.clone(),
                        },
                    }),
                    r.cause,
                );
                commands.entry(r.worker_id).or_default().push(cmd);
                runs.push(NewRun {
                    workload_id: r.workload_id,
                    worker_id: r.worker_id,
                    model: &submitted.model,
                    duration_s: submitted.duration_s,
                    checkpoint_progress: d.view.last_checkpoint,
                    stream_version: version,
                });
                outcomes[d.slot] = Some(Outcome::Scheduled { version });
            }
            (Ok(()), None) => outcomes[d.slot] = Some(Outcome::Scheduled { version }),
            (Err(rejection), _) => {
                outcomes[d.slot] = Some(Outcome::Rejected {
                    rejection: rejection.clone(),
                    retryable: fits,
                    version,
                });
            }
        }
    }
    ledger::undo_allocations(tx, &undo).await?;
    let command_streams: Vec<(String, Vec<Envelope>)> = commands
        .into_iter()
        .map(|(w, c)| (command_stream(w), c))
        .collect();
    let appends: Vec<StreamAppend<'_>> = command_streams
        .iter()
        .map(|(stream, events)| StreamAppend {
            stream_id: stream,
            expected: ExpectedVersion::Any,
            events,
            publish: sink.commands,
        })
        .collect();
    for result in EventStore::append_batch(tx, &appends).await? {
        result?;
    }
    ledger::upsert_runs(tx, &runs).await?;
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Conflict))
        .collect())
}
