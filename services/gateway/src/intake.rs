//! The Kafka intake: raw JSON [`WorkloadRequest`]s on `workload-requests` (schema
//! `schemas/workload-request.v1.schema.json`), from producers that do not go through REST.
//!
//! A valid request from a known tenant takes the REST path ([`crate::submit`]) with its
//! `request_id` as the idempotency key and source `kafka`. Anything else (not JSON, failing
//! validation, unknown tenant, a request id reused for a different body) is re-produced to the
//! dead-letter topic with the reason in `hcp-dlq-reason`; the partition moves on.
//!
//! Exactly once: a batch's submissions, idempotency records and partition offsets commit in one
//! PostgreSQL transaction (`consumer_offsets`, consumer `gateway-intake`). Dead letters are
//! acknowledged by the broker before that commit, so a crash in between may dead-letter a
//! message twice but never lose one. On assignment the consumer seeks back to the offset stored
//! in PostgreSQL when the broker would skip past it; redeliveries of accepted requests are
//! absorbed by the idempotency records.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hcp_bus::dead_letter::{dead_letter, DeadLetterKind};
use hcp_bus::{BusError, KafkaSettings, OutgoingMessage, Producer};
use hcp_db::positions::{lock_next_offset, next_offset, store_next_offset};
use hcp_events::payload::SubmissionSource;
use hcp_events::{Topic, WorkloadRequest};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::IntakeSettings;
use crate::http::extract::field_of;
use crate::metrics_names as m;
use crate::repo::{self, Tenant};
use crate::submit::{self, Submission, SubmitError, Submitted};

/// The intake's consumer name (positions in PostgreSQL; group `<namespace>.gateway-intake`).
pub const CONSUMER: &str = "gateway-intake";

type Assigned = Arc<Mutex<HashSet<(String, i32)>>>;

/// Records newly assigned partitions, so the intake checks them against PostgreSQL.
#[derive(Debug)]
pub struct IntakeContext {
    fresh: Assigned,
}

impl ClientContext for IntakeContext {}

impl ConsumerContext for IntakeContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Ok(mut fresh) = self.fresh.lock() else {
            return;
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    fresh.insert((e.topic().to_owned(), e.partition()));
                }
                tracing::info!(partitions = tpl.count(), "intake partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    fresh.remove(&(e.topic().to_owned(), e.partition()));
                }
                tracing::info!(partitions = tpl.count(), "intake partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "intake rebalance error"),
        }
    }
}

/// What happened to one request.
#[derive(Debug)]
enum Verdict {
    Accepted(Submitted),
    Refused {
        kind: DeadLetterKind,
        /// Metric label.
        reason: &'static str,
        /// The `hcp-dlq-reason` header.
        message: String,
    },
}

/// A failure worth retrying the whole batch for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transient(String);

impl From<sqlx::Error> for Transient {
    fn from(e: sqlx::Error) -> Self {
        Transient(e.to_string())
    }
}

/// The intake consumer.
pub struct Intake {
    consumer: StreamConsumer<IntakeContext>,
    fresh: Assigned,
    pool: PgPool,
    producer: Producer,
    dead_letter_topic: String,
    workloads_topic: String,
    settings: IntakeSettings,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

impl Intake {
    /// Creates the consumer and subscribes to `workload-requests`.
    pub fn new(
        kafka: &KafkaSettings,
        pool: PgPool,
        producer: Producer,
        settings: IntakeSettings,
    ) -> Result<Self, BusError> {
        let fresh: Assigned = Arc::default();
        let group = format!("{}.{CONSUMER}", kafka.namespace);
        let consumer: StreamConsumer<IntakeContext> = kafka
            .consumer_config(&group, &group)
            .create_with_context(IntakeContext {
                fresh: fresh.clone(),
            })
            .map_err(|e| BusError::Config(e.to_string()))?;
        consumer.subscribe(&[&kafka.topic(Topic::WorkloadRequests)])?;
        Ok(Self {
            consumer,
            fresh,
            pool,
            producer,
            dead_letter_topic: kafka.topic(Topic::DeadLetters),
            workloads_topic: kafka.topic(Topic::Workloads),
            settings,
        })
    }

    /// Runs until cancelled; the batch in hand is finished (committed or rolled back) first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(consumer = CONSUMER, "intake started");
        let linger = Duration::from_millis(self.settings.batch_linger_ms);
        let backoff = Duration::from_millis(self.settings.retry_backoff_ms);
        let mut committed: HashMap<(String, i32), i64> = HashMap::new();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = self.consumer.recv() => m,
            };
            let first = match first {
                Ok(m) => m.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "intake receive error");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < self.settings.max_batch.max(1) {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    _ => break,
                }
            }
            let batch = self.seek_fresh_partitions(batch).await;
            if batch.is_empty() {
                continue;
            }
            let started = Instant::now();
            let done = loop {
                match self.handle_batch(&batch).await {
                    Ok(()) => break true,
                    Err(e) => {
                        tracing::warn!(error = %e, "intake batch failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => break false,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                    }
                }
            };
            if !done {
                break;
            }
            metrics::histogram!(m::INTAKE_BATCH_DURATION).record(started.elapsed().as_secs_f64());
            for msg in &batch {
                let next = committed
                    .entry((msg.topic().to_owned(), msg.partition()))
                    .or_insert(0);
                *next = (*next).max(msg.offset() + 1);
            }
            self.commit_hint(&committed, CommitMode::Async);
        }
        self.commit_hint(&committed, CommitMode::Sync);
        hcp_bus::close_consumer(self.consumer, CONSUMER, hcp_bus::close::CLOSE_TIMEOUT).await;
        tracing::info!(consumer = CONSUMER, "intake stopped");
        Ok(())
    }

    /// The broker's committed offsets are only a hint; PostgreSQL holds the truth.
    fn commit_hint(&self, offsets: &HashMap<(String, i32), i64>, mode: CommitMode) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in offsets {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::debug!(error = %e, "intake offset commit hint failed");
        }
    }

    /// For partitions assigned since the last batch: when the broker starts past the offset
    /// stored in PostgreSQL, seek back there and drop that partition's messages from the batch.
    /// (Never forward: what lies below our offset is absorbed by idempotency.)
    async fn seek_fresh_partitions(&self, batch: Vec<OwnedMessage>) -> Vec<OwnedMessage> {
        let fresh: Vec<(String, i32)> = match self.fresh.lock() {
            Ok(f) if !f.is_empty() => f.iter().cloned().collect(),
            _ => return batch,
        };
        let mut reseek: HashSet<(String, i32)> = HashSet::new();
        let mut checked: HashSet<(String, i32)> = HashSet::new();
        for msg in &batch {
            let key = (msg.topic().to_owned(), msg.partition());
            if !fresh.contains(&key) || !checked.insert(key.clone()) {
                continue;
            }
            let stored = match self.pool.acquire().await {
                Ok(mut conn) => next_offset(&mut conn, CONSUMER, &key.0, key.1).await,
                Err(e) => Err(e),
            };
            let target = match stored {
                Ok(Some(next)) if next >= msg.offset() => None,
                Ok(Some(next)) => Some(Offset::Offset(next)),
                Ok(None) if msg.offset() == 0 => None,
                Ok(None) => Some(Offset::Offset(0)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the intake offset; relying on idempotency");
                    None
                }
            };
            if let Some(target) = target {
                tracing::info!(topic = %key.0, partition = key.1, broker_offset = msg.offset(),
                    ?target, "intake seeking to the position stored in PostgreSQL");
                match self
                    .consumer
                    .seek(&key.0, key.1, target, Duration::from_secs(5))
                {
                    Ok(()) => {
                        reseek.insert(key.clone());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "intake seek failed; relying on idempotency")
                    }
                }
            }
            if let Ok(mut f) = self.fresh.lock() {
                f.remove(&key);
            }
        }
        batch
            .into_iter()
            .filter(|m| !reseek.contains(&(m.topic().to_owned(), m.partition())))
            .collect()
    }

    /// One transaction: every request of the batch, then the partitions' next offsets.
    async fn handle_batch(&self, batch: &[OwnedMessage]) -> Result<(), Transient> {
        let mut tx = self.pool.begin().await?;
        let mut stored: HashMap<(String, i32), Option<i64>> = HashMap::new();
        let mut advanced: HashMap<(String, i32), i64> = HashMap::new();
        let mut dead: Vec<OutgoingMessage> = Vec::new();
        let mut created = 0u64;
        let mut replayed = 0u64;
        let mut refused: Vec<&'static str> = Vec::new();
        // Tenants looked up once per batch (most batches come from few tenants).
        let mut tenants: HashMap<String, Option<Tenant>> = HashMap::new();
        for msg in batch {
            let key = (msg.topic().to_owned(), msg.partition());
            let next = match stored.get(&key) {
                Some(v) => *v,
                None => {
                    let v = lock_next_offset(&mut tx, CONSUMER, &key.0, key.1).await?;
                    stored.insert(key.clone(), v);
                    v
                }
            };
            let seen_before = next.is_some_and(|n| msg.offset() < n);
            let entry = advanced.entry(key).or_insert(0);
            *entry = (*entry).max(msg.offset() + 1);
            let span = tracing::info_span!(
                "intake",
                partition = msg.partition(),
                offset = msg.offset(),
                tenant_id = tracing::field::Empty,
            );
            hcp_bus::trace::set_parent(&span, hcp_bus::trace::context_from_headers(msg.headers()));
            let verdict = self
                .decide(&mut tx, &mut tenants, msg)
                .instrument(span)
                .await?;
            match verdict {
                Verdict::Accepted(Submitted::Created(_)) => created += 1,
                Verdict::Accepted(Submitted::Replayed(_)) => replayed += 1,
                // Refused before, and dead-lettered then.
                Verdict::Refused { .. } if seen_before => {}
                Verdict::Refused {
                    kind,
                    reason,
                    message,
                } => {
                    tracing::warn!(partition = msg.partition(), offset = msg.offset(),
                        reason, %message, "dead-lettering workload request");
                    dead.push(dead_letter(
                        msg,
                        &self.dead_letter_topic,
                        CONSUMER,
                        kind,
                        &message,
                    ));
                    refused.push(reason);
                }
            }
        }
        for ((topic, partition), n) in &advanced {
            store_next_offset(&mut tx, CONSUMER, topic, *partition, *n).await?;
        }
        if !dead.is_empty() {
            self.producer
                .send_batch(&dead)
                .await
                .map_err(|e| Transient(format!("dead-letter publish: {e}")))?;
        }
        tx.commit().await?;
        metrics::counter!(m::SUBMISSIONS, "source" => "kafka").increment(created);
        metrics::counter!(m::INTAKE_DUPLICATES).increment(replayed);
        for reason in refused {
            metrics::counter!(m::REJECTIONS, "reason" => reason).increment(1);
        }
        Ok(())
    }

    /// Parses, validates, authorises and submits one request.
    async fn decide(
        &self,
        tx: &mut PgConnection,
        tenants: &mut HashMap<String, Option<Tenant>>,
        msg: &OwnedMessage,
    ) -> Result<Verdict, Transient> {
        let request = match parse(msg.payload().unwrap_or_default()) {
            Ok(r) => r,
            Err(message) => {
                return Ok(Verdict::Refused {
                    kind: DeadLetterKind::Malformed,
                    reason: "malformed",
                    message,
                })
            }
        };
        tracing::Span::current().record("tenant_id", request.tenant_id.as_str());
        if let Err(errors) = request.validate(OffsetDateTime::now_utc()) {
            let message = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            return Ok(Verdict::Refused {
                kind: DeadLetterKind::Malformed,
                reason: "validation",
                message: format!("invalid request: {message}"),
            });
        }
        let tenant = match tenants.get(&request.tenant_id) {
            Some(t) => t.clone(),
            None => {
                let t = repo::tenant(&mut *tx, &request.tenant_id).await?;
                tenants.insert(request.tenant_id.clone(), t.clone());
                t
            }
        };
        let Some(tenant) = tenant else {
            return Ok(Verdict::Refused {
                kind: DeadLetterKind::Poison,
                reason: "unknown_tenant",
                message: format!("tenant_id: unknown tenant `{}`", request.tenant_id),
            });
        };
        let key = request.request_id.to_string();
        let submission = Submission {
            request: &request,
            tier: tenant.tier,
            source: SubmissionSource::Kafka,
            idempotency_key: Some(&key),
            fingerprint: submit::fingerprint(&request),
        };
        match submit::submit(tx, &submission, &self.workloads_topic).await {
            Ok(s) => Ok(Verdict::Accepted(s)),
            Err(SubmitError::KeyReused { workload_id, .. }) => Ok(Verdict::Refused {
                kind: DeadLetterKind::Poison,
                reason: "idempotency_key_reused",
                message: format!(
                    "request_id: {key} was already used for a different request (workload {workload_id})"
                ),
            }),
            Err(SubmitError::Store(e)) => Err(Transient(e.to_string())),
            Err(e @ SubmitError::Unavailable(_)) => Err(Transient(e.to_string())),
            Err(SubmitError::Database(e)) => Err(e.into()),
        }
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
