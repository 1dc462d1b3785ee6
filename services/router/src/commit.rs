//! How the placement loop writes what a pass decided, in chunks of `propose_chunk` per
//! transaction: plain appends (proposals, deadline failures, preemptions), or placements made
//! directly through the allocation ledger (`hcp_allocation::place`): the pool's lock, the
//! allocation, `workload.scheduled` and the start command in one transaction, no proposal hop.
//!
//! Per decision the result is the stream version it left, or `None` when the stream had moved
//! on (or the chunk failed: nothing of it was written, and the next pass decides again).

use std::collections::HashSet;

use hcp_allocation::{place, Cause, Outcome, Request, RequestKind, Sink, Skip};
use hcp_db::sqlx::PgPool;
use hcp_db::{EventStore, ExpectedVersion, Publish, StoreError, StreamAppend};
use hcp_events::{workload_stream, Envelope, Event};

use uuid::Uuid;

use crate::PRODUCER;

/// One decision of a pass: an event to append to a workload stream at `expected`, after
/// `announce` (the workload's `workload.queued`) when the workload was not announced yet.
#[derive(Debug, Clone)]
pub(crate) struct Append {
    pub(crate) workload_id: Uuid,
    pub(crate) expected: i64,
    pub(crate) correlation_id: Uuid,
    pub(crate) causation_id: Uuid,
    pub(crate) announce: Option<Event>,
    pub(crate) event: Event,
}

impl Append {
    /// The envelopes to append, each caused by the one before (the first by the last event
    /// the decision saw), all in the workload's flow.
    fn envelopes(&self, stream: &str) -> Vec<Envelope> {
        let mut out = Vec::with_capacity(2);
        let mut cause = self.causation_id;
        for event in self.announce.iter().chain(std::iter::once(&self.event)) {
            let mut envelope = Envelope::new(stream.to_owned(), PRODUCER, event.clone());
            envelope.correlation_id = self.correlation_id;
            envelope.causation_id = Some(cause);
            cause = envelope.event_id;
            out.push(envelope);
        }
        out
    }
}

/// Appends every decision, a chunk per transaction.
pub(crate) async fn append_all(
    pool: &PgPool,
    publish: &Publish,
    chunk: usize,
    appends: &[Append],
) -> Vec<Option<i64>> {
    by_chunks(appends, chunk, "appending", |c| {
        append_chunk(pool, publish, c)
    })
    .await
}

/// Runs `write` on each chunk (one transaction each); a chunk that fails counts as nothing
/// written (`None` for each of its decisions), and the next pass decides again.
async fn by_chunks<'a, Fut, E>(
    decisions: &'a [Append],
    chunk: usize,
    what: &str,
    write: impl Fn(&'a [Append]) -> Fut,
) -> Vec<Option<i64>>
where
    Fut: std::future::Future<Output = Result<Vec<Option<i64>>, E>>,
    E: std::fmt::Display,
{
    let mut out = Vec::with_capacity(decisions.len());
    for chunk in decisions.chunks(chunk.max(1)) {
        match write(chunk).await {
            Ok(versions) => out.extend(versions),
            Err(e) => {
                tracing::warn!(error = %e, "{what} a batch failed; retrying next pass");
                out.extend(std::iter::repeat_n(None, chunk.len()));
            }
        }
    }
    out
}

async fn append_chunk(
    pool: &PgPool,
    publish: &Publish,
    chunk: &[Append],
) -> Result<Vec<Option<i64>>, StoreError> {
    let streams: Vec<String> = chunk
        .iter()
        .map(|a| workload_stream(a.workload_id))
        .collect();
    let envelopes: Vec<Vec<Envelope>> = chunk
        .iter()
        .zip(&streams)
        .map(|(a, stream)| a.envelopes(stream))
        .collect();
    // A stream may appear once per batch; a second decision for the same workload in one
    // chunk is left for the next pass (its expected version will have moved on).
    let mut seen = HashSet::with_capacity(chunk.len());
    let mut slots = Vec::with_capacity(chunk.len());
    let mut appends: Vec<StreamAppend<'_>> = Vec::with_capacity(chunk.len());
    for ((a, stream), events) in chunk.iter().zip(&streams).zip(&envelopes) {
        if seen.insert(stream.as_str()) {
            slots.push(Some(appends.len()));
            appends.push(StreamAppend {
                stream_id: stream,
                expected: ExpectedVersion::Exact(a.expected),
                events,
                publish,
            });
        } else {
            slots.push(None);
        }
    }
    let mut tx = pool.begin().await?;
    let mut results: Vec<Option<Result<_, _>>> = EventStore::append_batch(&mut tx, &appends)
        .await?
        .into_iter()
        .map(Some)
        .collect();
    tx.commit().await?;
    Ok(slots
        .into_iter()
        .zip(chunk)
        .map(|(slot, a)| match slot.and_then(|i| results[i].take()) {
            Some(Ok(o)) => Some(o.new_version),
            Some(Err(e)) => {
                tracing::debug!(workload_id = %a.workload_id, error = %e, "workload moved on; skipped");
                None
            }
            None => None,
        })
        .collect())
}

/// Places the proposals of a pass directly, a chunk per transaction. A placement made gives
/// the version of its `workload.scheduled`; a refused one the version of the proposal recorded
/// with the refusal (the workload's row moves past it with the rejection, which frees what the
/// loop promised); anything else `None`.
pub(crate) async fn place_all(
    pool: &PgPool,
    workloads: &Publish,
    commands: &Publish,
    chunk: usize,
    proposals: &[Append],
) -> Vec<Option<i64>> {
    let sink = Sink {
        producer: PRODUCER,
        workloads,
        commands,
    };
    by_chunks(proposals, chunk, "placing", |c| place_chunk(pool, sink, c)).await
}

async fn place_chunk(
    pool: &PgPool,
    sink: Sink<'_>,
    chunk: &[Append],
) -> anyhow::Result<Vec<Option<i64>>> {
    // One decision per workload and transaction; a second is left for the next pass.
    let mut seen = HashSet::with_capacity(chunk.len());
    let mut slots = Vec::with_capacity(chunk.len());
    let mut requests: Vec<Request<'_>> = Vec::with_capacity(chunk.len());
    for a in chunk {
        let Event::WorkloadPlacementProposed(p) = &a.event else {
            slots.push(None);
            continue;
        };
        if !seen.insert(a.workload_id) {
            slots.push(None);
            continue;
        }
        slots.push(Some(requests.len()));
        requests.push(Request {
            announce: a.announce.as_ref(),
            workload_id: a.workload_id,
            worker_id: &p.worker_id,
            gpu_ids: &p.gpu_ids,
            cause: Cause {
                event_id: a.causation_id,
                correlation_id: a.correlation_id,
            },
            kind: RequestKind::Direct {
                expected: a.expected,
                score: p.score,
                attempt: p.attempt,
            },
        });
    }
    let mut tx = pool.begin().await?;
    let outcomes = place(&mut tx, &requests, sink).await?;
    tx.commit().await?;
    Ok(slots
        .into_iter()
        .zip(chunk)
        .map(|(slot, a)| {
            let outcome = slot.and_then(|i| outcomes.get(i))?;
            match outcome {
                Outcome::Scheduled { version } => Some(*version),
                Outcome::Rejected {
                    version, rejection, ..
                } => {
                    tracing::info!(workload_id = %a.workload_id, reason = %rejection.detail, "placement refused");
                    Some(version - 1)
                }
                Outcome::Skipped(Skip::Broken(why)) => {
                    tracing::error!(workload_id = %a.workload_id, %why, "cannot place a workload whose stream is broken");
                    None
                }
                Outcome::Skipped(skip) => {
                    tracing::debug!(workload_id = %a.workload_id, ?skip, "workload moved on; skipped");
                    None
                }
                Outcome::Conflict => None,
            }
        })
        .collect())
}
