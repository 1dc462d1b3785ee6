//! The one submission path, shared by REST and the Kafka intake: in the caller's transaction,
//! claim `(tenant, idempotency key) → workload id`, then append `workload.submitted` to the new
//! stream `workload-<id>` (`ExpectedVersion::NoStream`), published to `workloads` with the
//! current trace context. A replay of an accepted request appends nothing.

use std::collections::HashMap;

use hcp_db::{EventStore, ExpectedVersion, Publish, StoreError, StreamAppend};
use hcp_events::payload::{SubmissionSource, WorkloadSubmitted};
use hcp_events::{workload_stream, Envelope, Event, Tier, WorkloadRequest};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::keys;
use crate::repo::{self, KeyClaim};

/// The producer name on the gateway's events.
pub const PRODUCER: &str = "hcp-gateway";

/// A validated request, ready to be recorded.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// The request (tenant id set, validated).
    pub request: &'a WorkloadRequest,
    /// The tenant's tier now.
    pub tier: Tier,
    /// REST or Kafka.
    pub source: SubmissionSource,
    /// The idempotency key within the tenant, if any.
    pub idempotency_key: Option<&'a str>,
    /// SHA-256 of the request as the client sent it: tells a replay from a reused key.
    pub fingerprint: [u8; 32],
}

/// What a submission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new workload.
    Created(Uuid),
    /// The same request was accepted before, as this workload; nothing was appended.
    Replayed(Uuid),
}

impl Submitted {
    /// The workload either way.
    pub fn workload_id(self) -> Uuid {
        match self {
            Submitted::Created(id) | Submitted::Replayed(id) => id,
        }
    }
}

/// Why a submission was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The key was used for a different request: the client must pick a new key.
    #[error(
        "idempotency key `{key}` was already used for a different request (workload {workload_id})"
    )]
    KeyReused {
        /// The key.
        key: String,
        /// The workload the key belongs to.
        workload_id: Uuid,
    },
    /// The event store failed (transient: retry).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database failed (transient: retry).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The group commit this submission rode in failed, and so did its retry alone
    /// (transient: retry).
    #[error("submission not recorded: {0}")]
    Unavailable(String),
}

/// Wire value of a source (also the `source` metric label).
pub const fn source_str(source: SubmissionSource) -> &'static str {
    match source {
        SubmissionSource::Rest => "rest",
        SubmissionSource::Kafka => "kafka",
    }
}

/// The fingerprint of a request: SHA-256 of its canonical JSON.
pub fn fingerprint(request: &WorkloadRequest) -> [u8; 32] {
    // Serialising a struct of plain fields cannot fail; an empty fingerprint would only make
    // every replay look like a reused key, never accept a different request as a replay.
    keys::fingerprint(&serde_json::to_vec(request).unwrap_or_default())
}

/// Records a submission inside `tx` (see the module docs). The caller commits.
#[tracing::instrument(skip_all, fields(tenant_id = %s.request.tenant_id, source = source_str(s.source)))]
pub async fn submit(
    tx: &mut PgConnection,
    s: &Submission<'_>,
    workloads_topic: &str,
) -> Result<Submitted, SubmitError> {
    let (traceparent, tracestate) = hcp_bus::trace::current_trace_headers();
    let publish = Publish::to(workloads_topic).with_trace(traceparent, tracestate);
    submit_batch(tx, &[(s.clone(), publish)])
        .await?
        .pop()
        .unwrap_or_else(|| {
            Err(SubmitError::Store(StoreError::InvalidAppend(
                "no outcome".into(),
            )))
        })
}

/// Records many submissions inside `tx`: each claims its idempotency key, then one batched
/// append ([`EventStore::append_batch`]) writes every new `workload.submitted`, each published
/// with its own trace context. Each submission gets its own outcome (a reused key refuses only
/// that one); an `Err` of the whole call leaves the transaction unusable: roll it back.
pub async fn submit_batch(
    tx: &mut PgConnection,
    batch: &[(Submission<'_>, Publish)],
) -> Result<Vec<Result<Submitted, SubmitError>>, SubmitError> {
    let mut outcomes: Vec<Option<Result<Submitted, SubmitError>>> = Vec::with_capacity(batch.len());
    // (slot, workload id, stream, envelope) of every new submission.
    let mut fresh: Vec<(usize, Uuid, String, [Envelope; 1])> = Vec::with_capacity(batch.len());
    // Every key of the group is claimed by one statement.
    let ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
    let keyed: Vec<(usize, repo::KeyRequest<'_>)> = batch
        .iter()
        .enumerate()
        .filter_map(|(slot, (s, _))| {
            s.idempotency_key.map(|key| {
                (
                    slot,
                    repo::KeyRequest {
                        tenant_id: &s.request.tenant_id,
                        key,
                        workload_id: ids[slot],
                        request_hash: &s.fingerprint,
                        source: source_str(s.source),
                    },
                )
            })
        })
        .collect();
    let requests: Vec<repo::KeyRequest<'_>> = keyed.iter().map(|(_, r)| *r).collect();
    let mut claims: HashMap<usize, KeyClaim> = keyed
        .iter()
        .map(|(slot, _)| *slot)
        .zip(repo::claim_idempotency_keys(tx, &requests).await?)
        .collect();
    for (slot, (s, _)) in batch.iter().enumerate() {
        let workload_id = ids[slot];
        if let Some(KeyClaim::Existing {
            workload_id,
            request_hash,
        }) = claims.remove(&slot)
        {
            outcomes.push(Some(if request_hash == s.fingerprint {
                Ok(Submitted::Replayed(workload_id))
            } else {
                Err(SubmitError::KeyReused {
                    key: s.idempotency_key.unwrap_or_default().to_owned(),
                    workload_id,
                })
            }));
            continue;
        }
        let mut request = s.request.clone();
        if request.request_id.is_nil() {
            request.request_id = workload_id;
        }
        let event = Event::WorkloadSubmitted(WorkloadSubmitted::from_request(
            workload_id,
            &request,
            s.tier,
            s.source,
        ));
        let stream = workload_stream(workload_id);
        let envelope = Envelope::new(stream.clone(), PRODUCER, event);
        outcomes.push(None);
        fresh.push((slot, workload_id, stream, [envelope]));
    }
    let appends: Vec<StreamAppend<'_>> = fresh
        .iter()
        .map(|(slot, _, stream, events)| StreamAppend {
            stream_id: stream,
            expected: ExpectedVersion::NoStream,
            events,
            publish: &batch[*slot].1,
        })
        .collect();
    let appended = EventStore::append_batch(tx, &appends).await?;
    for ((slot, workload_id, _, _), r) in fresh.iter().zip(appended) {
        outcomes[*slot] = Some(match r {
            Ok(_) => {
                tracing::info!(workload_id = %workload_id, "workload submitted");
                Ok(Submitted::Created(*workload_id))
            }
            Err(e) => Err(SubmitError::Store(e)),
        });
    }
    Ok(outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Err(SubmitError::Store(StoreError::InvalidAppend(
                    "no outcome".into(),
                )))
            })
        })
        .collect())
}
