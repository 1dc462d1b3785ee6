//! The telemetry ingest: `telemetry` (ASIC batches) and `worker-reports` (GPU heartbeats) into
//! `asic_telemetry` and `gpu_telemetry`, exactly once.
//!
//! A plain rdkafka consumer (group `<namespace>.telemetry-ingest`) gathers up to
//! `max_batch_messages` messages; one PostgreSQL transaction then locks the partitions' stored
//! offsets, skips what is below them (redeliveries), writes the rest with `COPY`, upserts the
//! latest rack and worker power and `site_power_latest`, marks the touched minutes for the
//! rollup, and stores the partitions' next offsets. Malformed messages are re-produced to the
//! dead-letter topic with the reason before that commit (a crash in between may dead-letter a
//! message twice, never lose one). On assignment the consumer seeks to the offset stored in
//! PostgreSQL when the broker would start past it (the pattern of the gateway's intake).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hcp_bus::dead_letter::{dead_letter, DeadLetterKind};
use hcp_bus::{KafkaSettings, OutgoingMessage, Producer};
use hcp_db::positions::{lock_next_offset, next_offset, store_next_offset};
use hcp_events::Topic;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::metrics_names as m;
use crate::rows::{Added, Decoded, Rejection, Source, ASIC_COPY, GPU_COPY};
use crate::{IngestSettings, TsdbError};

/// The ingest's consumer name (offsets in `consumer_offsets`; group
/// `<namespace>.telemetry-ingest`).
pub const CONSUMER: &str = "telemetry-ingest";

type Partition = (String, i32);
type Assigned = Arc<Mutex<HashSet<Partition>>>;

/// Records newly assigned partitions, so the ingest checks them against PostgreSQL.
#[derive(Debug)]
pub struct IngestContext {
    fresh: Assigned,
}

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Ok(mut fresh) = self.fresh.lock() else {
            return;
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    fresh.insert((e.topic().to_owned(), e.partition()));
                }
                tracing::info!(partitions = tpl.count(), "telemetry partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    fresh.remove(&(e.topic().to_owned(), e.partition()));
                }
                tracing::info!(partitions = tpl.count(), "telemetry partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "telemetry rebalance error"),
        }
    }
}

/// What one committed batch wrote (sent to an observer, e.g. `hcp bench-ingest`).
#[derive(Debug, Clone, Default)]
pub struct CommitStats {
    /// Kafka messages in the batch (duplicates and ignored ones included).
    pub messages: usize,
    /// ASIC samples written.
    pub asic_samples: u64,
    /// GPU samples written.
    pub gpu_samples: u64,
    /// Messages dead-lettered.
    pub dead_lettered: usize,
    /// Kafka→DB latency of every written message (`occurred_at` to commit).
    pub latencies: Vec<Duration>,
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

/// The ingest consumer.
pub struct Ingest {
    consumer: StreamConsumer<IngestContext>,
    fresh: Assigned,
    pool: PgPool,
    producer: Producer,
    telemetry_topic: String,
    dead_letter_topic: String,
    settings: IngestSettings,
    observer: Option<UnboundedSender<CommitStats>>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Ingest {
    /// Creates the consumer and subscribes to `telemetry` and `worker-reports`.
    pub fn new(
        kafka: &KafkaSettings,
        pool: PgPool,
        producer: Producer,
        settings: IngestSettings,
    ) -> Result<Self, TsdbError> {
        let fresh: Assigned = Arc::default();
        let group = format!("{}.{CONSUMER}", kafka.namespace);
        let consumer: StreamConsumer<IngestContext> = kafka
            .consumer_config(&group, &group)
            // Big batches: let librdkafka prefetch plenty.
            .set("queued.min.messages", "20000")
            .create_with_context(IngestContext {
                fresh: fresh.clone(),
            })
            .map_err(|e| hcp_bus::BusError::Config(e.to_string()))?;
        let telemetry_topic = kafka.topic(Topic::Telemetry);
        consumer
            .subscribe(&[&telemetry_topic, &kafka.topic(Topic::WorkerReports)])
            .map_err(hcp_bus::BusError::from)?;
        Ok(Self {
            consumer,
            fresh,
            pool,
            producer,
            telemetry_topic,
            dead_letter_topic: kafka.topic(Topic::DeadLetters),
            settings,
            observer: None,
        })
    }

    /// Sends the figures of every committed batch to `observer` (benchmarks, tests).
    pub fn with_observer(mut self, observer: UnboundedSender<CommitStats>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Runs until cancelled; the batch in hand is finished (committed or rolled back) first.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(consumer = CONSUMER, "telemetry ingest started");
        let linger = Duration::from_millis(self.settings.batch_linger_ms);
        let backoff = Duration::from_millis(self.settings.retry_backoff_ms);
        let mut committed: HashMap<Partition, i64> = HashMap::new();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = self.consumer.recv() => m,
            };
            let first = match first {
                Ok(m) => m.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry receive error");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < self.settings.max_batch_messages.max(1) {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    _ => break,
                }
            }
            let mut batch = self.seek_fresh_partitions(batch).await;
            if batch.is_empty() {
                continue;
            }
            let started = std::time::Instant::now();
            let stats = loop {
                match self.handle_batch(batch).await {
                    (b, Ok(stats)) => {
                        batch = b;
                        break Some(stats);
                    }
                    (b, Err(e)) => {
                        batch = b;
                        tracing::warn!(error = %e, "telemetry batch failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => break None,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                    }
                }
            };
            let Some(stats) = stats else { break };
            metrics::histogram!(m::BATCH_DURATION).record(started.elapsed().as_secs_f64());
            metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
            for msg in &batch {
                let next = committed
                    .entry((msg.topic().to_owned(), msg.partition()))
                    .or_insert(0);
                *next = (*next).max(msg.offset() + 1);
            }
            self.commit_hint(&committed, CommitMode::Async);
            if let Some(o) = &self.observer {
                let _ = o.send(stats);
            }
        }
        self.commit_hint(&committed, CommitMode::Sync);
        hcp_bus::close_consumer(self.consumer, CONSUMER, hcp_bus::close::CLOSE_TIMEOUT).await;
        tracing::info!(consumer = CONSUMER, "telemetry ingest stopped");
    }

    /// The broker's committed offsets are only a hint; PostgreSQL holds the truth.
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
            tracing::debug!(error = %e, "telemetry offset commit hint failed");
        }
    }

    /// For partitions assigned since the last batch: when the broker starts past the offset
    /// stored in PostgreSQL, seek back there and drop that partition's messages from the batch.
    /// (What lies below the stored offset is skipped in [`Self::handle_batch`].)
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
                Ok(mut conn) => next_offset(&mut conn, CONSUMER, &key.0, key.1).await,
                Err(e) => Err(e),
            };
            let target = match stored {
                Ok(Some(next)) if next >= msg.offset() => None,
                Ok(Some(next)) => Some(Offset::Offset(next)),
                Ok(None) if msg.offset() == 0 => None,
                Ok(None) => Some(Offset::Offset(0)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the telemetry offset; not seeking");
                    None
                }
            };
            if let Some(target) = target {
                tracing::info!(topic = %key.0, partition = key.1, broker_offset = msg.offset(),
                    ?target, "telemetry ingest seeking to the position stored in PostgreSQL");
                match self
                    .consumer
                    .seek(&key.0, key.1, target, Duration::from_secs(5))
                {
                    Ok(()) => {
                        reseek.insert(key.clone());
                    }
                    Err(e) => tracing::warn!(error = %e, "telemetry seek failed"),
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

    /// One transaction for the whole batch. Gives the batch back for a retry.
    async fn handle_batch(
        &self,
        batch: Vec<OwnedMessage>,
    ) -> (Vec<OwnedMessage>, Result<CommitStats, Transient>) {
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(e) => return (batch, Err(e.into())),
        };
        // Lock the partitions' positions; everything below them was written before.
        let mut stored: HashMap<Partition, Option<i64>> = HashMap::new();
        for msg in &batch {
            let key = (msg.topic().to_owned(), msg.partition());
            if stored.contains_key(&key) {
                continue;
            }
            match lock_next_offset(&mut tx, CONSUMER, &key.0, key.1).await {
                Ok(v) => {
                    stored.insert(key, v);
                }
                Err(e) => return (batch, Err(e.into())),
            }
        }
        let telemetry_topic = self.telemetry_topic.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let out = decode(&batch, &telemetry_topic, &stored);
            (batch, out)
        })
        .await;
        let (batch, (decoded, rejected, duplicates, ignored)) = match decoded {
            Ok(v) => v,
            // The closure cannot panic short of a bug; the batch is gone with it.
            Err(e) => return (Vec::new(), Err(Transient(format!("decode task: {e}")))),
        };
        let dead: Vec<OutgoingMessage> = rejected
            .iter()
            .map(|(i, r)| {
                let kind = if r.malformed {
                    DeadLetterKind::Malformed
                } else {
                    DeadLetterKind::Poison
                };
                dead_letter(
                    &batch[*i],
                    &self.dead_letter_topic,
                    CONSUMER,
                    kind,
                    &r.message,
                )
            })
            .collect();
        let result = self.write(&mut tx, &decoded, &batch).await;
        if let Err(e) = result {
            return (batch, Err(e));
        }
        if !dead.is_empty() {
            if let Err(e) = self.producer.send_batch(&dead).await {
                return (batch, Err(Transient(format!("dead-letter publish: {e}"))));
            }
        }
        if let Err(e) = tx.commit().await {
            return (batch, Err(e.into()));
        }
        let now = OffsetDateTime::now_utc();
        let latencies: Vec<Duration> = decoded
            .occurred
            .iter()
            .map(|t| (now - *t).try_into().unwrap_or(Duration::ZERO))
            .collect();
        let histogram = metrics::histogram!(m::LATENCY);
        for l in &latencies {
            histogram.record(l.as_secs_f64());
        }
        metrics::counter!(m::SAMPLES, "kind" => "asic").increment(decoded.asic_samples);
        metrics::counter!(m::SAMPLES, "kind" => "gpu").increment(decoded.gpu_samples);
        metrics::counter!(m::MESSAGES, "outcome" => "written")
            .increment(decoded.occurred.len() as u64);
        metrics::counter!(m::MESSAGES, "outcome" => "ignored").increment(ignored);
        metrics::counter!(m::MESSAGES, "outcome" => "duplicate").increment(duplicates);
        metrics::counter!(m::MESSAGES, "outcome" => "dead_lettered")
            .increment(rejected.len() as u64);
        for (i, r) in &rejected {
            tracing::warn!(topic = batch[*i].topic(), partition = batch[*i].partition(),
                offset = batch[*i].offset(), reason = r.reason, message = %r.message,
                "dead-lettered a telemetry message");
            metrics::counter!(m::DEAD_LETTERS, "reason" => r.reason).increment(1);
        }
        let stats = CommitStats {
            messages: batch.len(),
            asic_samples: decoded.asic_samples,
            gpu_samples: decoded.gpu_samples,
            dead_lettered: rejected.len(),
            latencies,
        };
        (batch, Ok(stats))
    }

    /// The batch's rows, summaries, pending minutes and next offsets, in `tx`.
    async fn write(
        &self,
        tx: &mut PgConnection,
        d: &Decoded,
        batch: &[OwnedMessage],
    ) -> Result<(), Transient> {
        for (statement, rows) in [(ASIC_COPY, &d.asic_copy), (GPU_COPY, &d.gpu_copy)] {
            if rows.is_empty() {
                continue;
            }
            let mut copy = tx.copy_in_raw(statement).await?;
            if let Err(e) = copy.send(rows.as_slice()).await {
                // Ends the COPY cleanly, so the connection goes back to the pool usable.
                let _ = copy.abort(e.to_string()).await;
                return Err(e.into());
            }
            copy.finish().await?;
        }
        upsert_latest(tx, d).await?;
        if !d.minutes.is_empty() {
            let minutes: Vec<OffsetDateTime> = d.minutes.iter().copied().collect();
            sqlx::query(
                "INSERT INTO telemetry_rollup_pending (bucket) \
                 SELECT unnest($1::timestamptz[]) ON CONFLICT DO NOTHING",
            )
            .bind(&minutes)
            .execute(&mut *tx)
            .await?;
        }
        let mut advanced: HashMap<Partition, i64> = HashMap::new();
        for msg in batch {
            let e = advanced
                .entry((msg.topic().to_owned(), msg.partition()))
                .or_insert(0);
            *e = (*e).max(msg.offset() + 1);
        }
        for ((topic, partition), next) in &advanced {
            store_next_offset(tx, CONSUMER, topic, *partition, *next).await?;
        }
        Ok(())
    }
}

/// Decoded rows, rejected messages (by index), duplicates and ignored messages.
type DecodeOut = (Decoded, Vec<(usize, Rejection)>, u64, u64);

/// Decodes the messages at or above their partition's stored offset.
fn decode(
    batch: &[OwnedMessage],
    telemetry_topic: &str,
    stored: &HashMap<Partition, Option<i64>>,
) -> DecodeOut {
    let mut d = Decoded::default();
    let mut rejected = Vec::new();
    let mut duplicates = 0;
    let mut ignored = 0;
    for (i, msg) in batch.iter().enumerate() {
        let next = stored
            .get(&(msg.topic().to_owned(), msg.partition()))
            .copied()
            .flatten();
        if next.is_some_and(|n| msg.offset() < n) {
            duplicates += 1;
            continue;
        }
        let source = if msg.topic() == telemetry_topic {
            Source::Telemetry
        } else {
            Source::WorkerReports
        };
        match d.add(source, msg.payload().unwrap_or_default()) {
            Ok(Added::Rows(..)) => {}
            Ok(Added::Ignored) => ignored += 1,
            Err(r) => rejected.push((i, r)),
        }
    }
    (d, rejected, duplicates, ignored)
}

/// Upserts the latest rack and worker power (never replacing a newer sample) and recomputes
/// `site_power_latest` for the sites touched.
async fn upsert_latest(tx: &mut PgConnection, d: &Decoded) -> Result<(), sqlx::Error> {
    let mut sites: HashSet<&str> = HashSet::new();
    if !d.racks.is_empty() {
        let n = d.racks.len();
        let (mut site, mut rack, mut time, mut power) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut states: [Vec<i32>; 5] = Default::default();
        // Sorted, so that concurrent ingest instances lock rows in one order (no deadlocks).
        let mut racks: Vec<_> = d.racks.iter().collect();
        racks.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for ((s, r), p) in racks {
            sites.insert(s);
            site.push(s.as_str());
            rack.push(r.as_str());
            time.push(p.time);
            power.push(p.power_w);
            for (k, v) in states.iter_mut().enumerate() {
                v.push(p.states[k]);
            }
        }
        sqlx::query(
            "INSERT INTO rack_power_latest AS r \
                 (site, rack, time, power_w, hashing, ramping, curtailed, fault, offline) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[], \
                 $5::int4[], $6::int4[], $7::int4[], $8::int4[], $9::int4[]) \
             ON CONFLICT (site, rack) DO UPDATE SET time = EXCLUDED.time, \
                 power_w = EXCLUDED.power_w, hashing = EXCLUDED.hashing, \
                 ramping = EXCLUDED.ramping, curtailed = EXCLUDED.curtailed, \
                 fault = EXCLUDED.fault, offline = EXCLUDED.offline \
             WHERE r.time <= EXCLUDED.time",
        )
        .bind(&site)
        .bind(&rack)
        .bind(&time)
        .bind(&power)
        .bind(&states[0])
        .bind(&states[1])
        .bind(&states[2])
        .bind(&states[3])
        .bind(&states[4])
        .execute(&mut *tx)
        .await?;
    }
    if !d.workers.is_empty() {
        let n = d.workers.len();
        let (mut site, mut worker, mut time, mut power, mut gpus) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut workers: Vec<_> = d.workers.iter().collect();
        workers.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for ((s, w), p) in workers {
            sites.insert(s);
            site.push(s.as_str());
            worker.push(w.as_str());
            time.push(p.time);
            power.push(p.power_w);
            gpus.push(p.gpus);
        }
        sqlx::query(
            "INSERT INTO worker_power_latest AS w (site, worker_id, time, power_w, gpus) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[], \
                 $5::int4[]) \
             ON CONFLICT (site, worker_id) DO UPDATE SET time = EXCLUDED.time, \
                 power_w = EXCLUDED.power_w, gpus = EXCLUDED.gpus \
             WHERE w.time <= EXCLUDED.time",
        )
        .bind(&site)
        .bind(&worker)
        .bind(&time)
        .bind(&power)
        .bind(&gpus)
        .execute(&mut *tx)
        .await?;
    }
    if !sites.is_empty() {
        let mut sites: Vec<&str> = sites.into_iter().collect();
        sites.sort_unstable();
        sqlx::query("SELECT hcp_refresh_site_power($1::text[])")
            .bind(&sites)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
