//! The Kafka intake: raw JSON [`WorkloadRequest`]s on `workload-requests` (schema
//! `schemas/workload-request.v1.schema.json`), from producers that do not go through REST.
//!
//! A valid request from a known tenant takes the REST path ([`crate::submit`]) with its
//! `request_id` as the idempotency key and source `kafka`. Anything else (not JSON, failing
//! validation, unknown tenant, a request id reused for a different body) is re-produced to the
//! dead-letter topic with the reason in `hcp-dlq-reason`; the partition moves on.
//!
//! Exactly once: the intake is a handler of the consumer engine ([`hcp_bus::engine`]): a
//! batch's submissions, idempotency records and partition offsets commit in one PostgreSQL
//! transaction (`consumer_offsets`, consumer `gateway-intake`), the batch's accepted requests
//! recorded by one [`submit::submit_batch`]. Dead letters are acknowledged by the broker before
//! that commit, so a crash in between may dead-letter a message twice but never lose one.
//! Redeliveries of accepted requests are absorbed by the idempotency records.

use std::collections::HashMap;
use std::time::Duration;

use hcp_bus::dead_letter::DeadLetterKind;
use hcp_bus::engine::{
    Batch, BatchHandler, ConsumerSettings, Engine, Handled, HandlerError, Refusal,
};
use hcp_bus::{BusError, KafkaSettings, Producer};
use hcp_db::Publish;
use hcp_events::payload::SubmissionSource;
use hcp_events::{Topic, WorkloadRequest};
use rdkafka::message::Message;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use crate::config::IntakeSettings;
use crate::http::extract::field_of;
use crate::metrics_names as m;
use crate::repo::{self, Tenant};
use crate::submit::{self, Submission, SubmitError, Submitted};

/// The intake's consumer name (positions in PostgreSQL; group `<namespace>.gateway-intake`).
pub const CONSUMER: &str = "gateway-intake";

/// The intake consumer: the engine driving an [`IntakeHandler`].
pub type Intake = Engine<IntakeHandler>;

/// Creates the intake consumer, subscribed to `workload-requests`.
pub fn intake(
    kafka: &KafkaSettings,
    pool: PgPool,
    producer: Producer,
    settings: &IntakeSettings,
) -> Result<Intake, BusError> {
    let consumer = ConsumerSettings::new(
        format!("{}.{CONSUMER}", kafka.namespace),
        vec![kafka.topic(Topic::WorkloadRequests)],
        kafka.topic(Topic::DeadLetters),
    )
    .batching(
        settings.max_batch,
        settings.batch_linger_ms,
        settings.retry_backoff_ms,
    );
    let handler = IntakeHandler {
        workloads_topic: kafka.topic(Topic::Workloads),
    };
    Engine::new(kafka, consumer, pool, handler, producer)
}

/// Why a request was refused: its dead letter and metric label.
#[derive(Debug)]
struct Refused {
    kind: DeadLetterKind,
    /// Metric label.
    reason: &'static str,
    /// The `hcp-dlq-reason` header.
    message: String,
}

/// What a committed batch did (metrics).
#[derive(Debug, Default)]
pub struct IntakeCounts {
    created: u64,
    replayed: u64,
    refused: Vec<&'static str>,
}

/// Turns raw workload requests into submissions (see the module docs).
#[derive(Debug, Clone)]
pub struct IntakeHandler {
    workloads_topic: String,
}

impl BatchHandler for IntakeHandler {
    type Done = IntakeCounts;

    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        batch: &Batch,
        _isolate: bool,
    ) -> Result<Handled<IntakeCounts>, HandlerError> {
        let mut counts = IntakeCounts::default();
        let mut refusals = Vec::new();
        // Tenants looked up once per batch (most batches come from few tenants).
        let mut tenants: HashMap<String, Option<Tenant>> = HashMap::new();
        // (message index, request, tier, key, publish) of every valid request.
        let mut valid: Vec<(usize, WorkloadRequest, Tenant, String, Publish)> = Vec::new();
        for (i, msg) in batch.messages().iter().enumerate() {
            let span = tracing::info_span!(
                "intake",
                partition = msg.partition(),
                offset = msg.offset(),
                tenant_id = tracing::field::Empty,
            );
            hcp_bus::trace::set_parent(&span, hcp_bus::trace::context_from_headers(msg.headers()));
            let checked = check(tx, &mut tenants, msg.payload().unwrap_or_default(), &span).await?;
            match checked {
                Ok((request, tenant)) => {
                    let (traceparent, tracestate) =
                        span.in_scope(hcp_bus::trace::current_trace_headers);
                    let publish = Publish::to(self.workloads_topic.clone())
                        .with_trace(traceparent, tracestate);
                    let key = request.request_id.to_string();
                    valid.push((i, request, tenant, key, publish));
                }
                Err(refused) => refuse(batch, i, refused, &mut refusals, &mut counts),
            }
        }
        let submissions: Vec<(Submission<'_>, Publish)> = valid
            .iter()
            .map(|(_, request, tenant, key, publish)| {
                (
                    Submission {
                        request,
                        tier: tenant.tier,
                        source: SubmissionSource::Kafka,
                        idempotency_key: Some(key),
                        fingerprint: submit::fingerprint(request),
                    },
                    publish.clone(),
                )
            })
            .collect();
        let outcomes = submit::submit_batch(tx, &submissions)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        for ((i, _, _, key, _), outcome) in valid.iter().zip(outcomes) {
            match outcome {
                Ok(Submitted::Created(_)) => counts.created += 1,
                Ok(Submitted::Replayed(_)) => counts.replayed += 1,
                Err(SubmitError::KeyReused { workload_id, .. }) => {
                    let refused = Refused {
                        kind: DeadLetterKind::Poison,
                        reason: "idempotency_key_reused",
                        message: format!(
                            "request_id: {key} was already used for a different request (workload {workload_id})"
                        ),
                    };
                    refuse(batch, *i, refused, &mut refusals, &mut counts);
                }
                Err(e) => return Err(HandlerError::Transient(e.to_string())),
            }
        }
        Ok(Handled {
            refused: refusals,
            done: counts,
        })
    }

    fn committed(&self, _batch: &Batch, done: IntakeCounts, elapsed: Duration) {
        metrics::histogram!(m::INTAKE_BATCH_DURATION).record(elapsed.as_secs_f64());
        metrics::counter!(m::SUBMISSIONS, "source" => "kafka").increment(done.created);
        metrics::counter!(m::INTAKE_DUPLICATES).increment(done.replayed);
        for reason in done.refused {
            metrics::counter!(m::REJECTIONS, "reason" => reason).increment(1);
        }
    }
}

/// Records a refusal, unless the message was refused (and dead-lettered) before.
fn refuse(
    batch: &Batch,
    index: usize,
    refused: Refused,
    refusals: &mut Vec<Refusal>,
    counts: &mut IntakeCounts,
) {
    if batch.seen_before(index) {
        return;
    }
    let msg = &batch.messages()[index];
    tracing::warn!(partition = msg.partition(), offset = msg.offset(),
        reason = refused.reason, message = %refused.message, "dead-lettering workload request");
    counts.refused.push(refused.reason);
    refusals.push(Refusal {
        index,
        kind: refused.kind,
        reason: refused.message,
        item: None,
    });
}

/// Parses, validates and authorises one request.
async fn check(
    tx: &mut PgConnection,
    tenants: &mut HashMap<String, Option<Tenant>>,
    bytes: &[u8],
    span: &tracing::Span,
) -> Result<Result<(WorkloadRequest, Tenant), Refused>, HandlerError> {
    let request = match parse(bytes) {
        Ok(r) => r,
        Err(message) => {
            return Ok(Err(Refused {
                kind: DeadLetterKind::Malformed,
                reason: "malformed",
                message,
            }))
        }
    };
    span.record("tenant_id", request.tenant_id.as_str());
    if let Err(errors) = request.validate(OffsetDateTime::now_utc()) {
        let message = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        return Ok(Err(Refused {
            kind: DeadLetterKind::Malformed,
            reason: "validation",
            message: format!("invalid request: {message}"),
        }));
    }
    let tenant = match tenants.get(&request.tenant_id) {
        Some(t) => t.clone(),
        None => {
            let t = repo::tenant(&mut *tx, &request.tenant_id).await?;
            tenants.insert(request.tenant_id.clone(), t.clone());
            t
        }
    };
    match tenant {
        Some(tenant) => Ok(Ok((request, tenant))),
        None => Ok(Err(Refused {
            kind: DeadLetterKind::Poison,
            reason: "unknown_tenant",
            message: format!("tenant_id: unknown tenant `{}`", request.tenant_id),
        })),
    }
}

/// Parses a raw request; the error names the field when serde knows it.
fn parse(bytes: &[u8]) -> Result<WorkloadRequest, String> {
    if bytes.is_empty() {
        return Err("empty message: expected a JSON workload request".into());
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| match field_of(&e) {
        Some(field) => format!("{field}: {}", e.inner()),
        None => format!("not a JSON workload request: {}", e.inner()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_request_is_explained_by_field() {
        assert!(parse(b"").unwrap_err().contains("empty"));
        assert!(parse(b"{nope").unwrap_err().starts_with("not a JSON"));
        let err = parse(
            br#"{"request_id":"00000000-0000-0000-0000-000000000001","tenant_id":"a",
                "model":"m","gpu_count":-1,"duration_s":1}"#,
        )
        .unwrap_err();
        assert!(err.starts_with("gpu_count: "), "{err}");
    }
}
