//! How the resource-manager appends: its topics, the causation of what it appends, the
//! appends it repeats (a device command, a workload sent back to the queue) and the mapping
//! of store and ledger errors onto the consumer's.

use hcp_bus::KafkaSettings;
use hcp_db::sqlx::PgConnection;
use hcp_db::store::read_stream_on;
use hcp_db::{ApplyError, EventStore, ExpectedVersion, Publish, StoreError};
use hcp_domain::WorkloadState;
use hcp_events::payload::{CommandAction, DeviceCommand, WorkloadRequeued};
use hcp_events::{command_stream, workload_stream, Envelope, Event, Topic};
use uuid::Uuid;

use crate::domain::{RequeueKind, WorkloadView};
use crate::metrics as m;
use crate::repo;

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
