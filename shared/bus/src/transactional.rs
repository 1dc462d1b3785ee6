//! Kafka ⇄ PostgreSQL glue (feature `postgres`):
//! - [`KafkaOutboxSink`] lets the outbox relay publish through the idempotent [`Producer`];
//! - [`TransactionalConsumer`] applies messages to a [`Projection`] in batches, writing the
//!   projection, its per-stream idempotency claims and the partition offsets in ONE
//!   transaction. On assignment it seeks to the offset stored in PostgreSQL, so the broker's
//!   committed offsets are only a hint. Malformed and poison messages go to the dead-letter
//!   topic (acknowledged before the transaction commits) and the consumer goes on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hcp_db::outbox::{OutboxMessage, OutboxSink};
use hcp_db::positions::{claim_batch, lock_next_offset, next_offset, store_next_offset};
use hcp_db::projection::{apply_once, Applied, ApplyError, Projection};
use hcp_db::sqlx::{self, PgPool};
use hcp_events::{headers, Envelope};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dead_letter::{dead_letter, DeadLetterKind};
use crate::metrics_names as m;
use crate::producer::{OutgoingMessage, Producer};
use crate::{BusError, KafkaSettings};

/// Publishes outbox batches through the idempotent producer.
#[derive(Debug, Clone)]
pub struct KafkaOutboxSink(pub Producer);

impl OutboxSink for KafkaOutboxSink {
    async fn publish(&self, batch: &[OutboxMessage]) -> Result<(), String> {
        let msgs: Vec<OutgoingMessage> = batch.iter().map(to_outgoing).collect();
        self.0.send_batch(&msgs).await.map_err(|e| e.to_string())
    }
}

fn to_outgoing(m: &OutboxMessage) -> OutgoingMessage {
    let mut hs = vec![
        (
            headers::EVENT_TYPE.to_owned(),
            m.event_type.clone().into_bytes(),
        ),
        (
            headers::SCHEMA_VERSION.to_owned(),
            m.schema_version.to_string().into_bytes(),
        ),
        (
            headers::EVENT_ID.to_owned(),
            m.event_id.to_string().into_bytes(),
        ),
    ];
    if let Some(tp) = &m.traceparent {
        hs.push((headers::TRACEPARENT.to_owned(), tp.clone().into_bytes()));
    }
    if let Some(ts) = &m.tracestate {
        hs.push((headers::TRACESTATE.to_owned(), ts.clone().into_bytes()));
    }
    OutgoingMessage {
        topic: m.topic.clone(),
        key: m.key.clone(),
        payload: m.payload.clone(),
        headers: hs,
    }
}

type Assigned = Arc<Mutex<HashSet<(String, i32)>>>;

/// Records newly assigned partitions so the consumer seeks them to the database's offsets.
#[derive(Debug)]
pub struct AssignmentContext {
    fresh: Assigned,
}

impl ClientContext for AssignmentContext {}

impl ConsumerContext for AssignmentContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                if let Ok(mut fresh) = self.fresh.lock() {
                    for e in tpl.elements() {
                        fresh.insert((e.topic().to_owned(), e.partition()));
                    }
                }
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                if let Ok(mut fresh) = self.fresh.lock() {
                    for e in tpl.elements() {
                        fresh.remove(&(e.topic().to_owned(), e.partition()));
                    }
                }
                tracing::info!(partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Consumer tuning.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Kafka consumer group. Positions in PostgreSQL are keyed by the projection's name, not
    /// by this, so renaming a group never resets a projection.
    pub group_id: String,
    /// Topics to subscribe to (concrete names).
    pub topics: Vec<String>,
    /// Dead-letter topic (concrete name).
    pub dead_letter_topic: String,
    /// Most messages per transaction.
    pub max_batch: usize,
    /// How long to keep gathering a batch once more than one message was waiting (a lone
    /// message is applied at once).
    pub batch_linger: Duration,
    /// Wait before retrying a failed batch.
    pub retry_backoff: Duration,
    /// How long the broker may hold an empty fetch (`None`: the Kafka settings'
    /// `fetch_wait_max_ms`). Every fetch costs the broker CPU, idle or not: a consumer that
    /// may lag fetches less often.
    pub fetch_wait_max: Option<Duration>,
}

impl ConsumerSettings {
    /// Defaults for a group reading `topics`.
    pub fn new(
        group_id: impl Into<String>,
        topics: Vec<String>,
        dead_letter_topic: String,
    ) -> Self {
        Self {
            group_id: group_id.into(),
            topics,
            dead_letter_topic,
            max_batch: 500,
            batch_linger: Duration::from_millis(2),
            retry_backoff: Duration::from_millis(250),
            fetch_wait_max: None,
        }
    }
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("poison event in batch")]
    Poison,
    #[error("{0}")]
    Transient(String),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        BatchError::Transient(e.to_string())
    }
}

/// Counts from one batch.
#[derive(Debug, Default, Clone, Copy)]
struct BatchStats {
    applied: u64,
    duplicates: u64,
    dead: u64,
}

/// A consumer that applies events to a projection exactly once in effect.
pub struct TransactionalConsumer<P> {
    consumer: StreamConsumer<AssignmentContext>,
    fresh: Assigned,
    pool: PgPool,
    projection: P,
    producer: Producer,
    settings: ConsumerSettings,
}

impl<P> std::fmt::Debug for TransactionalConsumer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalConsumer")
            .field("group_id", &self.settings.group_id)
            .finish_non_exhaustive()
    }
}

impl<P: Projection> TransactionalConsumer<P> {
    /// Creates the consumer and subscribes.
    pub fn new(
        kafka: &KafkaSettings,
        settings: ConsumerSettings,
        pool: PgPool,
        projection: P,
        producer: Producer,
    ) -> Result<Self, BusError> {
        let fresh: Assigned = Arc::default();
        let mut config = kafka.consumer_config(&settings.group_id, &settings.group_id);
        if let Some(wait) = settings.fetch_wait_max {
            config.set("fetch.wait.max.ms", wait.as_millis().to_string());
        }
        let consumer: StreamConsumer<AssignmentContext> = config
            .create_with_context(AssignmentContext {
                fresh: fresh.clone(),
            })
            .map_err(|e| BusError::Config(e.to_string()))?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer,
            fresh,
            pool,
            projection,
            producer,
            settings,
        })
    }

    fn name(&self) -> &str {
        self.projection.name()
    }

    /// Runs until cancelled. The batch in hand is always finished (committed or rolled back)
    /// before returning, and the final offsets are committed to the broker as a hint.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        tracing::info!(consumer = self.name(), "consumer started");
        let mut last_committed: HashMap<(String, i32), i64> = HashMap::new();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = self.consumer.recv() => m,
            };
            let first = match first {
                Ok(m) => m.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "consumer receive error");
                    tokio::time::sleep(self.settings.retry_backoff).await;
                    continue;
                }
            };
            let mut batch = vec![first];
            // What the last fetch already brought, without waiting.
            while batch.len() < self.settings.max_batch {
                match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    _ => break,
                }
            }
            // Under load (more than one message was waiting), linger for the next fetches: one
            // transaction for more messages. A lone message goes in at once.
            if batch.len() > 1 {
                let deadline = tokio::time::Instant::now() + self.settings.batch_linger;
                while batch.len() < self.settings.max_batch {
                    match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                        Ok(Ok(m)) => batch.push(m.detach()),
                        _ => break,
                    }
                }
            }
            let batch = self.seek_fresh_partitions(batch).await;
            if batch.is_empty() {
                continue;
            }
            let started = Instant::now();
            let mut savepoints = false;
            let stats = loop {
                match self.apply_batch(&batch, savepoints).await {
                    Ok(stats) => break Some(stats),
                    Err(BatchError::Poison) => savepoints = true,
                    Err(BatchError::Transient(reason)) => {
                        metrics::counter!(m::CONSUMER_RETRIES, "consumer" => self.name().to_owned())
                            .increment(1);
                        tracing::warn!(consumer = self.name(), %reason, "batch failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => break None,
                            _ = tokio::time::sleep(self.settings.retry_backoff) => {}
                        }
                    }
                }
            };
            let Some(stats) = stats else { break };
            self.record(&batch, stats, started);
            for msg in &batch {
                let key = (msg.topic().to_owned(), msg.partition());
                let next = msg.offset() + 1;
                let e = last_committed.entry(key).or_insert(next);
                *e = (*e).max(next);
            }
            self.commit_hint(&last_committed, CommitMode::Async);
        }
        self.commit_hint(&last_committed, CommitMode::Sync);
        let name = self.name().to_owned();
        crate::close_consumer(self.consumer, &name, crate::close::CLOSE_TIMEOUT).await;
        tracing::info!(consumer = %name, "consumer stopped");
        Ok(())
    }

    fn record(&self, batch: &[OwnedMessage], stats: BatchStats, started: Instant) {
        let name = self.name().to_owned();
        metrics::counter!(m::CONSUMER_APPLIED, "consumer" => name.clone()).increment(stats.applied);
        metrics::counter!(m::CONSUMER_DUPLICATES, "consumer" => name.clone())
            .increment(stats.duplicates);
        metrics::counter!(m::CONSUMER_DEAD_LETTERED, "consumer" => name.clone())
            .increment(stats.dead);
        metrics::histogram!(m::CONSUMER_APPLY_DURATION, "consumer" => name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::CONSUMER_BATCH_SIZE, "consumer" => name.clone())
            .record(batch.len() as f64);
        let now_ms = time_now_ms();
        let h = metrics::histogram!(m::PUBLISH_TO_APPLY, "consumer" => name);
        for msg in batch {
            if let Some(ts) = msg.timestamp().to_millis() {
                h.record(((now_ms - ts).max(0) as f64) / 1000.0);
            }
        }
    }

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
            // Only a hint: the database holds the truth.
            tracing::debug!(error = %e, "offset commit hint failed");
        }
    }

    /// For partitions assigned since the last batch, compares the first message's offset with
    /// the offset stored in PostgreSQL and seeks back when the broker would skip ahead of it,
    /// dropping that partition's messages from the batch (they are fetched again from there).
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
                Ok(mut conn) => next_offset(&mut conn, self.name(), &key.0, key.1).await,
                Err(e) => Err(e),
            };
            let target = match stored {
                // The broker would redeliver from before our position: no seek; the stream
                // claims absorb what was applied already. (Seeking forward is unsafe: a broker
                // that lost its log may hold nothing at our offset, and some brokers then wait
                // there forever instead of answering "out of range".)
                Ok(Some(next)) if next >= msg.offset() => None,
                // The broker would skip events we never applied: go back.
                Ok(Some(next)) => Some(Offset::Offset(next)),
                Ok(None) if msg.offset() == 0 => None,
                // Offset 0 rather than `Beginning`: no ListOffsets round trip, and an
                // out-of-range 0 (retention) falls back to `auto.offset.reset=earliest`.
                Ok(None) => Some(Offset::Offset(0)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read stored offset; relying on idempotency");
                    None
                }
            };
            if let Some(target) = target {
                tracing::info!(
                    topic = %key.0, partition = key.1, broker_offset = msg.offset(),
                    ?target, "seeking to the position stored in PostgreSQL"
                );
                match self
                    .consumer
                    .seek(&key.0, key.1, target, Duration::from_secs(5))
                {
                    Ok(()) => {
                        reseek.insert(key.clone());
                    }
                    Err(e) => tracing::warn!(error = %e, "seek failed; relying on idempotency"),
                }
            }
            if let Ok(mut f) = self.fresh.lock() {
                f.remove(&key);
            }
        }
        if reseek.is_empty() {
            return batch;
        }
        batch
            .into_iter()
            .filter(|m| !reseek.contains(&(m.topic().to_owned(), m.partition())))
            .collect()
    }

    async fn apply_batch(
        &self,
        batch: &[OwnedMessage],
        savepoints: bool,
    ) -> Result<BatchStats, BatchError> {
        let mut stats = BatchStats::default();
        let mut tx = self.pool.begin().await?;
        let mut next: HashMap<(String, i32), Option<i64>> = HashMap::new();
        let mut advanced: HashMap<(String, i32), i64> = HashMap::new();
        let mut dead: Vec<OutgoingMessage> = Vec::new();
        // First pass: dead-letter what does not decode (unless it is a redelivery below the
        // stored offset), keep the rest in order for the stream claim.
        let mut todo: Vec<(&OwnedMessage, Envelope)> = Vec::with_capacity(batch.len());
        for msg in batch {
            let key = (msg.topic().to_owned(), msg.partition());
            let stored = match next.get(&key) {
                Some(v) => *v,
                None => {
                    let v = lock_next_offset(&mut tx, self.name(), &key.0, key.1).await?;
                    next.insert(key.clone(), v);
                    v
                }
            };
            // Below the stored offset means "seen before" only if the broker's log is the one
            // the offset was stored against. Valid events therefore go on to the stream claim
            // regardless, so a wiped or replaced broker cannot make new events look like
            // redeliveries; only undecodable bytes are skipped on the offset alone.
            let below = stored.is_some_and(|n| msg.offset() < n);
            advanced.insert(key, msg.offset() + 1);
            match Envelope::from_json(msg.payload().unwrap_or_default()) {
                Ok(e) => todo.push((msg, e)),
                Err(_) if below => stats.duplicates += 1,
                Err(e) => {
                    tracing::warn!(
                        topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
                        error = %e, "dead-lettering malformed message"
                    );
                    dead.push(self.dead(msg, DeadLetterKind::Malformed, &e.to_string()));
                }
            }
        }
        // Fast path: one statement claims every stream sequence of the batch.
        let mut marks = if savepoints || todo.is_empty() {
            HashMap::new()
        } else {
            let claims: Vec<(&str, i64)> = todo
                .iter()
                .map(|(_, e)| (e.stream_id.as_str(), e.sequence))
                .collect();
            claim_batch(&mut tx, self.name(), &claims).await?
        };
        if !savepoints && self.projection.batches() {
            // The whole batch in one call: the projection writes set-based.
            let mut fresh: Vec<&Envelope> = Vec::with_capacity(todo.len());
            for (_, envelope) in &todo {
                let mark = marks.entry(envelope.stream_id.clone()).or_insert(0);
                if envelope.sequence <= *mark {
                    stats.duplicates += 1;
                } else {
                    *mark = envelope.sequence;
                    fresh.push(envelope);
                }
            }
            let span =
                tracing::info_span!("apply_batch", consumer = self.name(), events = fresh.len(),);
            // The batch continues the trace of its first event.
            if let Some((msg, _)) = todo.first() {
                crate::trace::set_parent(&span, crate::trace::context_from_headers(msg.headers()));
            }
            match self
                .projection
                .apply_batch(&mut tx, &fresh)
                .instrument(span)
                .await
            {
                Ok(()) => stats.applied += fresh.len() as u64,
                Err(ApplyError::Poison(_)) => return Err(BatchError::Poison),
                Err(e) => return Err(BatchError::Transient(e.to_string())),
            }
            todo.clear();
        }
        for (msg, envelope) in &todo {
            let span = tracing::info_span!(
                "apply",
                consumer = self.name(),
                event_type = envelope.event_type().as_str(),
                stream_id = %envelope.stream_id,
                sequence = envelope.sequence,
            );
            crate::trace::set_parent(&span, crate::trace::context_from_headers(msg.headers()));
            let outcome = if savepoints {
                // Slow path after a poison event: one savepoint per event isolates it.
                let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
                let out = apply_once(&mut sp, &self.projection, envelope)
                    .instrument(span)
                    .await;
                if out.is_ok() {
                    sp.commit().await?;
                } else {
                    sp.rollback().await?;
                }
                out
            } else {
                let mark = marks.entry(envelope.stream_id.clone()).or_insert(0);
                if envelope.sequence <= *mark {
                    Ok(Applied::Duplicate)
                } else {
                    *mark = envelope.sequence;
                    self.projection
                        .apply(&mut tx, envelope)
                        .instrument(span)
                        .await
                        .map(|()| Applied::Applied)
                }
            };
            match outcome {
                Ok(Applied::Applied) => stats.applied += 1,
                Ok(Applied::Duplicate) => stats.duplicates += 1,
                Err(ApplyError::Poison(reason)) if savepoints => {
                    tracing::warn!(stream_id = %envelope.stream_id, %reason, "dead-lettering poison event");
                    dead.push(self.dead(msg, DeadLetterKind::Poison, &reason));
                }
                Err(ApplyError::Poison(_)) => return Err(BatchError::Poison),
                Err(e) => return Err(BatchError::Transient(e.to_string())),
            }
        }
        for ((topic, partition), n) in &advanced {
            store_next_offset(&mut tx, self.name(), topic, *partition, *n).await?;
        }
        if !dead.is_empty() {
            self.producer
                .send_batch(&dead)
                .await
                .map_err(|e| BatchError::Transient(format!("dead-letter publish: {e}")))?;
            stats.dead = dead.len() as u64;
        }
        tx.commit().await?;
        self.projection.committed();
        Ok(stats)
    }

    fn dead(&self, msg: &OwnedMessage, kind: DeadLetterKind, reason: &str) -> OutgoingMessage {
        dead_letter(
            msg,
            &self.settings.dead_letter_topic,
            self.name(),
            kind,
            reason,
        )
    }
}

fn time_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
