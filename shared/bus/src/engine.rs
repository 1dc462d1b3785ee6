//! The exactly-once consumer engine (feature `postgres`): one loop for every consumer that
//! turns Kafka messages into PostgreSQL writes — the projections ([`crate::transactional`]),
//! the gateway's intake and the telemetry ingest.
//!
//! The engine polls a batch (a lone message goes in at once; when more were waiting it lingers
//! for `batch_linger` to gather up to `max_batch`), opens one transaction, locks the stored
//! offsets of the batch's partitions (one statement), and hands the whole batch to a [`BatchHandler`],
//! telling it which messages lie below the stored offset (seen before, if the broker's log is
//! the one the offset was stored against). It then stores the partitions' next offsets in the
//! same transaction, publishes the handler's dead letters (acknowledged by the broker before
//! the commit, so a crash in between may dead-letter a message twice, never lose one) and
//! commits. A failed batch is rolled back and retried after `retry_backoff`; a handler that
//! reports a poison message is asked again in isolation mode, so it can set only that message
//! aside. No single message blocks a partition.
//!
//! On assignment the engine compares each partition's first message with the offset stored
//! in PostgreSQL and seeks back when the broker would skip past it (never forward: a broker
//! that lost its log may hold nothing there). The broker's committed offsets are only a hint.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hcp_db::positions::{lock_next_offsets, next_offset, store_next_offsets};
use hcp_db::sqlx::{self, PgConnection, PgPool};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::dead_letter::{dead_letter, narrow_to_item, DeadLetterKind};
use crate::metrics_names as m;
use crate::producer::{OutgoingMessage, Producer};
use crate::{BusError, KafkaSettings};

type Partition = (String, i32);
type Assigned = Arc<Mutex<HashSet<Partition>>>;

/// Records newly assigned partitions so the engine checks them against PostgreSQL.
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
    /// Kafka consumer group. Positions in PostgreSQL are keyed by the handler's name, not by
    /// this, so renaming a group never resets a consumer.
    pub group_id: String,
    /// Topics to subscribe to (concrete names).
    pub topics: Vec<String>,
    /// Dead-letter topic (concrete name).
    pub dead_letter_topic: String,
    /// Most events per transaction (a packed message counts the events it carries, from its
    /// `hcp-packed` header); a batch holds at least one message.
    pub max_batch: usize,
    /// How long to keep gathering a batch once more than one message was waiting (a lone
    /// message is handled at once).
    pub batch_linger: Duration,
    /// Wait before retrying a failed batch.
    pub retry_backoff: Duration,
    /// How long the broker may hold an empty fetch (`None`: the Kafka settings'
    /// `fetch_wait_max_ms`). Every fetch costs the broker CPU, idle or not: a consumer that
    /// may lag fetches less often.
    pub fetch_wait_max: Option<Duration>,
    /// Messages librdkafka keeps prefetched per partition (`queued.min.messages`; `None`: its
    /// default). Consumers of big batches raise it.
    pub prefetch_messages: Option<usize>,
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
            prefetch_messages: None,
        }
    }

    /// With these batch limits: most events per transaction, linger and retry backoff in ms.
    pub fn batching(mut self, max_batch: usize, linger_ms: u64, retry_backoff_ms: u64) -> Self {
        self.max_batch = max_batch.max(1);
        self.batch_linger = Duration::from_millis(linger_ms);
        self.retry_backoff = Duration::from_millis(retry_backoff_ms);
        self
    }
}

/// A batch as the handler sees it.
#[derive(Debug, Clone)]
pub struct Batch {
    messages: Arc<[OwnedMessage]>,
    seen_before: Vec<bool>,
}

impl Batch {
    /// The messages, in the order fetched (per partition: offset order).
    pub fn messages(&self) -> &[OwnedMessage] {
        &self.messages
    }

    /// The messages behind a shared handle, for work moved off the async runtime.
    pub fn shared(&self) -> Arc<[OwnedMessage]> {
        self.messages.clone()
    }

    /// Whether message `i` lies below its partition's offset stored in PostgreSQL: handled
    /// before, provided the broker's log is the one the offset was stored against (a wiped or
    /// replaced broker restarts its offsets, so idempotent handlers check for themselves).
    pub fn seen_before(&self, i: usize) -> bool {
        self.seen_before.get(i).copied().unwrap_or(false)
    }

    /// The per-message "seen before" flags, in message order.
    pub fn seen_flags(&self) -> &[bool] {
        &self.seen_before
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch is empty (never, for a batch handed to a handler).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// A message the handler refuses: it goes to the dead-letter topic with the reason, and the
/// partition moves on.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Its index in the batch.
    pub index: usize,
    /// Malformed (cannot be read) or poison (read, but can never be applied).
    pub kind: DeadLetterKind,
    /// The `hcp-dlq-reason` header.
    pub reason: String,
    /// When the message is packed ([`hcp_events::pack`]) and only one of its events is
    /// refused: that event's index in the message and its own bytes, which the dead letter
    /// then carries instead of the whole message (its neighbours were applied).
    pub item: Option<(usize, Vec<u8>)>,
}

/// What a handler did with a batch.
#[derive(Debug)]
pub struct Handled<D> {
    /// Messages to dead-letter.
    pub refused: Vec<Refusal>,
    /// Whatever the handler reports once the batch committed.
    pub done: D,
}

impl<D> Handled<D> {
    /// Nothing refused.
    pub fn done(done: D) -> Self {
        Self {
            refused: Vec::new(),
            done,
        }
    }
}

/// Why a batch did not go through.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A message in the batch can never be applied: the engine asks the handler again with
    /// `isolate` set, so it can refuse only that message.
    #[error("poison message in batch")]
    Poison,
    /// Try the whole batch again after the backoff.
    #[error("{0}")]
    Transient(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Transient(e.to_string())
    }
}

/// What a consumer does with a batch, inside the engine's transaction.
pub trait BatchHandler: Send + Sync {
    /// Reported to [`BatchHandler::committed`] after the commit.
    type Done: Send;

    /// Stable name: the consumer identity of the offsets stored in PostgreSQL.
    fn name(&self) -> &str;

    /// Handles the whole batch in `tx`. The engine locked each partition's stored offset
    /// before and stores the next ones after, in the same transaction. `isolate` is set when
    /// a first attempt reported [`HandlerError::Poison`]: apply message by message and refuse
    /// only what fails.
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        batch: &'a Batch,
        isolate: bool,
    ) -> impl Future<Output = Result<Handled<Self::Done>, HandlerError>> + Send + 'a;

    /// Called once the batch's transaction committed, with how long it took.
    fn committed(&self, _batch: &Batch, _done: Self::Done, _elapsed: Duration) {}
}

/// The engine: one Kafka consumer, one handler, one transaction per batch.
pub struct Engine<H> {
    consumer: StreamConsumer<AssignmentContext>,
    fresh: Assigned,
    pool: PgPool,
    handler: H,
    producer: Producer,
    settings: ConsumerSettings,
}

impl<H> std::fmt::Debug for Engine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("group_id", &self.settings.group_id)
            .finish_non_exhaustive()
    }
}

impl<H: BatchHandler> Engine<H> {
    /// Creates the consumer and subscribes. `producer` publishes dead letters.
    pub fn new(
        kafka: &KafkaSettings,
        settings: ConsumerSettings,
        pool: PgPool,
        handler: H,
        producer: Producer,
    ) -> Result<Self, BusError> {
        let fresh: Assigned = Arc::default();
        let mut config = kafka.consumer_config(&settings.group_id, &settings.group_id);
        if let Some(wait) = settings.fetch_wait_max {
            config.set("fetch.wait.max.ms", wait.as_millis().to_string());
        }
        if let Some(n) = settings.prefetch_messages {
            config.set("queued.min.messages", n.to_string());
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
            handler,
            producer,
            settings,
        })
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, to finish setting it up before [`Engine::run`].
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    fn name(&self) -> &str {
        self.handler.name()
    }

    /// Runs until cancelled. The batch in hand is always finished (committed or rolled back)
    /// before returning, and the final offsets are committed to the broker as a hint.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        tracing::info!(consumer = self.name(), "consumer started");
        let mut last_committed: HashMap<Partition, i64> = HashMap::new();
        loop {
            let Some(batch) = self.poll(&shutdown).await else {
                break;
            };
            let batch = self.seek_fresh_partitions(batch).await;
            if batch.is_empty() {
                continue;
            }
            let messages: Arc<[OwnedMessage]> = batch.into();
            let started = Instant::now();
            let mut isolate = false;
            let outcome = loop {
                match self.apply(&messages, isolate).await {
                    Ok(x) => break Some(x),
                    Err(HandlerError::Poison) if !isolate => isolate = true,
                    Err(e) => {
                        metrics::counter!(m::CONSUMER_RETRIES, "consumer" => self.name().to_owned())
                            .increment(1);
                        tracing::warn!(consumer = self.name(), reason = %e, "batch failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => break None,
                            _ = tokio::time::sleep(self.settings.retry_backoff) => {}
                        }
                    }
                }
            };
            let Some((batch, done, dead)) = outcome else {
                break;
            };
            let elapsed = started.elapsed();
            self.record(&batch, dead, elapsed);
            self.handler.committed(&batch, done, elapsed);
            for msg in batch.messages() {
                let next = last_committed
                    .entry((msg.topic().to_owned(), msg.partition()))
                    .or_insert(0);
                *next = (*next).max(msg.offset() + 1);
            }
            self.commit_hint(&last_committed, CommitMode::Async);
        }
        self.commit_hint(&last_committed, CommitMode::Sync);
        let name = self.name().to_owned();
        crate::close_consumer(self.consumer, &name, crate::close::CLOSE_TIMEOUT).await;
        tracing::info!(consumer = %name, "consumer stopped");
        Ok(())
    }

    /// The next batch: what the last fetch brought, and under load (more than one message
    /// waiting) what arrives within the linger. `None` once cancelled.
    async fn poll(&self, shutdown: &CancellationToken) -> Option<Vec<OwnedMessage>> {
        let first = loop {
            let m = tokio::select! {
                _ = shutdown.cancelled() => return None,
                m = self.consumer.recv() => m,
            };
            match m {
                Ok(m) => break m.detach(),
                Err(e) => {
                    tracing::warn!(consumer = self.name(), error = %e, "consumer receive error");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(self.settings.retry_backoff) => {}
                    }
                }
            }
        };
        let max = self.settings.max_batch.max(1);
        let mut events = events_in(&first);
        let mut batch = vec![first];
        while events < max {
            match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    let m = m.detach();
                    events += events_in(&m);
                    batch.push(m);
                }
                _ => break,
            }
        }
        if batch.len() > 1 {
            let deadline = tokio::time::Instant::now() + self.settings.batch_linger;
            while events < max {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Ok(Ok(m)) => {
                        let m = m.detach();
                        events += events_in(&m);
                        batch.push(m);
                    }
                    _ => break,
                }
            }
        }
        Some(batch)
    }

    /// One attempt at the batch: lock the offsets, hand it over, store the offsets, publish
    /// the dead letters, commit. Returns the batch, the handler's report and the dead-letter
    /// count.
    async fn apply(
        &self,
        messages: &Arc<[OwnedMessage]>,
        isolate: bool,
    ) -> Result<(Batch, H::Done, u64), HandlerError> {
        let mut tx = self.pool.begin().await?;
        let mut advanced: HashMap<Partition, i64> = HashMap::new();
        for msg in messages.iter() {
            let e = advanced
                .entry((msg.topic().to_owned(), msg.partition()))
                .or_insert(0);
            *e = (*e).max(msg.offset() + 1);
        }
        let partitions: Vec<Partition> = advanced.keys().cloned().collect();
        let stored = lock_next_offsets(&mut tx, self.name(), &partitions).await?;
        let seen_before = messages
            .iter()
            .map(|msg| {
                stored
                    .get(&(msg.topic().to_owned(), msg.partition()))
                    .copied()
                    .flatten()
                    .is_some_and(|n| msg.offset() < n)
            })
            .collect();
        let batch = Batch {
            messages: messages.clone(),
            seen_before,
        };
        let handled = self.handler.handle(&mut tx, &batch, isolate).await?;
        let advanced: Vec<(Partition, i64)> = advanced.into_iter().collect();
        store_next_offsets(&mut tx, self.name(), &advanced).await?;
        let dead: Vec<OutgoingMessage> = handled
            .refused
            .iter()
            .filter_map(|r| {
                let msg = batch.messages().get(r.index)?;
                let mut dl = dead_letter(
                    msg,
                    &self.settings.dead_letter_topic,
                    self.name(),
                    r.kind,
                    &r.reason,
                );
                if let Some((i, bytes)) = &r.item {
                    narrow_to_item(&mut dl, *i, bytes);
                }
                Some(dl)
            })
            .collect();
        if !dead.is_empty() {
            self.producer
                .send_batch(&dead)
                .await
                .map_err(|e| HandlerError::Transient(format!("dead-letter publish: {e}")))?;
        }
        tx.commit().await?;
        Ok((batch, handled.done, dead.len() as u64))
    }

    fn record(&self, batch: &Batch, dead: u64, elapsed: Duration) {
        let name = self.name().to_owned();
        metrics::counter!(m::CONSUMER_DEAD_LETTERED, "consumer" => name.clone()).increment(dead);
        metrics::histogram!(m::CONSUMER_APPLY_DURATION, "consumer" => name.clone())
            .record(elapsed.as_secs_f64());
        metrics::histogram!(m::CONSUMER_BATCH_SIZE, "consumer" => name.clone())
            .record(batch.len() as f64);
        let now_ms = time_now_ms();
        let h = metrics::histogram!(m::PUBLISH_TO_APPLY, "consumer" => name);
        for msg in batch.messages() {
            if let Some(ts) = msg.timestamp().to_millis() {
                h.record(((now_ms - ts).max(0) as f64) / 1000.0);
            }
        }
    }

    fn commit_hint(&self, offsets: &HashMap<Partition, i64>, mode: CommitMode) {
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
        let fresh: Vec<Partition> = match self.fresh.lock() {
            Ok(f) if !f.is_empty() => f.iter().cloned().collect(),
            _ => return batch,
        };
        let mut reseek: HashSet<Partition> = HashSet::new();
        let mut checked: HashSet<Partition> = HashSet::new();
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
                // The broker would redeliver from before our position: no seek; the handler
                // absorbs what was handled already. (Seeking forward is unsafe: a broker that
                // lost its log may hold nothing at our offset, and some brokers then wait there
                // forever instead of answering "out of range".)
                Ok(Some(next)) if next >= msg.offset() => None,
                // The broker would skip messages we never handled: go back.
                Ok(Some(next)) => Some(Offset::Offset(next)),
                Ok(None) if msg.offset() == 0 => None,
                // Offset 0 rather than `Beginning`: no ListOffsets round trip, and an
                // out-of-range 0 (retention) falls back to `auto.offset.reset=earliest`.
                Ok(None) => Some(Offset::Offset(0)),
                Err(e) => {
                    tracing::warn!(consumer = self.name(), error = %e,
                        "cannot read stored offset; relying on idempotency");
                    None
                }
            };
            if let Some(target) = target {
                tracing::info!(
                    consumer = self.name(), topic = %key.0, partition = key.1,
                    broker_offset = msg.offset(), ?target,
                    "seeking to the position stored in PostgreSQL"
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
}

/// How many events a message carries: its `hcp-packed` count, else one.
fn events_in(m: &OwnedMessage) -> usize {
    m.headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == hcp_events::headers::PACKED)
                .and_then(|h| h.value)
        })
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1)
}

fn time_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
