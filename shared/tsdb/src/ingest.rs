//! The telemetry ingest: `telemetry` (ASIC batches, JSON or compact) and `worker-reports` (GPU
//! heartbeats) into `asic_telemetry_batches` and `gpu_telemetry_batches` (one row per message,
//! read one row per sample through the `asic_telemetry` and `gpu_telemetry` views), exactly
//! once.
//!
//! A handler of the consumer engine ([`hcp_bus::engine`], group
//! `<namespace>.telemetry-ingest`): the engine gathers up to `max_batch_messages` messages and
//! locks the partitions' stored offsets in one PostgreSQL transaction; the handler skips what
//! lies below them (redeliveries), decodes the rest off the async runtime, writes the samples
//! with `COPY`, upserts the latest rack and worker power and `site_power_latest`, and marks the
//! touched minutes for the rollup; the engine stores the next offsets and commits. Malformed
//! messages are re-produced to the dead-letter topic with the reason before that commit (a
//! crash in between may dead-letter a message twice, never lose one).

use std::collections::HashSet;
use std::time::Duration;

use hcp_bus::dead_letter::DeadLetterKind;
use hcp_bus::engine::{
    Batch, BatchHandler, ConsumerSettings, Engine, Handled, HandlerError, Refusal,
};
use hcp_bus::{KafkaSettings, Producer};
use hcp_events::{pack, Topic};
use rdkafka::message::{Message, OwnedMessage};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::metrics_names as m;
use crate::pgcopy;
use crate::rows::{Added, Decoded, Rejection, Source, ASIC_COPY, GPU_COPY};
use crate::{IngestSettings, TsdbError};

/// The ingest's consumer name (offsets in `consumer_offsets`; group
/// `<namespace>.telemetry-ingest`).
pub const CONSUMER: &str = "telemetry-ingest";

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

/// The ingest consumer.
#[derive(Debug)]
pub struct Ingest {
    engine: Engine<IngestHandler>,
}

impl Ingest {
    /// Creates the consumer and subscribes to `telemetry` and `worker-reports`.
    pub fn new(
        kafka: &KafkaSettings,
        pool: PgPool,
        producer: Producer,
        settings: IngestSettings,
    ) -> Result<Self, TsdbError> {
        let telemetry_topic = kafka.topic(Topic::Telemetry);
        let mut consumer = ConsumerSettings::new(
            format!("{}.{CONSUMER}", kafka.namespace),
            vec![telemetry_topic.clone(), kafka.topic(Topic::WorkerReports)],
            kafka.topic(Topic::DeadLetters),
        )
        .batching(
            settings.max_batch_messages,
            settings.batch_linger_ms,
            settings.retry_backoff_ms,
        );
        // Big batches: let librdkafka prefetch plenty.
        consumer.prefetch_messages = Some(20_000);
        let handler = IngestHandler {
            telemetry_topic,
            observer: None,
        };
        let engine = Engine::new(kafka, consumer, pool, handler, producer)?;
        Ok(Self { engine })
    }

    /// Sends the figures of every committed batch to `observer` (benchmarks, tests).
    pub fn with_observer(mut self, observer: UnboundedSender<CommitStats>) -> Self {
        self.engine.handler_mut().observer = Some(observer);
        self
    }

    /// Runs until cancelled; the batch in hand is finished (committed or rolled back) first.
    pub async fn run(self, shutdown: CancellationToken) {
        if let Err(e) = self.engine.run(shutdown).await {
            tracing::error!(error = %e, "telemetry ingest stopped on an error");
        }
    }
}

/// Writes telemetry batches (see the module docs).
#[derive(Debug)]
pub struct IngestHandler {
    telemetry_topic: String,
    observer: Option<UnboundedSender<CommitStats>>,
}

/// What a batch wrote, for the metrics and the observer after the commit.
#[derive(Debug)]
pub struct Written {
    asic_samples: u64,
    gpu_samples: u64,
    occurred: Vec<OffsetDateTime>,
    ignored: u64,
    duplicates: u64,
    rejected: Vec<Rejected>,
}

impl BatchHandler for IngestHandler {
    type Done = Written;

    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        batch: &Batch,
        _isolate: bool,
    ) -> Result<Handled<Written>, HandlerError> {
        let messages = batch.shared();
        let seen = batch.seen_flags().to_vec();
        let telemetry_topic = self.telemetry_topic.clone();
        let (decoded, rejected, duplicates, ignored) =
            tokio::task::spawn_blocking(move || decode(&messages, &seen, &telemetry_topic))
                .await
                .map_err(|e| HandlerError::Transient(format!("decode task: {e}")))?;
        write(tx, &decoded).await?;
        let refused = rejected
            .iter()
            .map(|(i, item, r)| Refusal {
                index: *i,
                item: item.clone(),
                kind: if r.malformed {
                    DeadLetterKind::Malformed
                } else {
                    DeadLetterKind::Poison
                },
                reason: r.message.clone(),
            })
            .collect();
        Ok(Handled {
            refused,
            done: Written {
                asic_samples: decoded.asic_samples,
                gpu_samples: decoded.gpu_samples,
                occurred: decoded.occurred,
                ignored,
                duplicates,
                rejected,
            },
        })
    }

    fn committed(&self, batch: &Batch, w: Written, elapsed: Duration) {
        let now = OffsetDateTime::now_utc();
        let latencies: Vec<Duration> = w
            .occurred
            .iter()
            .map(|t| (now - *t).try_into().unwrap_or(Duration::ZERO))
            .collect();
        let histogram = metrics::histogram!(m::LATENCY);
        for l in &latencies {
            histogram.record(l.as_secs_f64());
        }
        metrics::histogram!(m::BATCH_DURATION).record(elapsed.as_secs_f64());
        metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
        metrics::counter!(m::SAMPLES, "kind" => "asic").increment(w.asic_samples);
        metrics::counter!(m::SAMPLES, "kind" => "gpu").increment(w.gpu_samples);
        metrics::counter!(m::MESSAGES, "outcome" => "written").increment(w.occurred.len() as u64);
        metrics::counter!(m::MESSAGES, "outcome" => "ignored").increment(w.ignored);
        metrics::counter!(m::MESSAGES, "outcome" => "duplicate").increment(w.duplicates);
        metrics::counter!(m::MESSAGES, "outcome" => "dead_lettered")
            .increment(w.rejected.len() as u64);
        for (i, _, r) in &w.rejected {
            let msg = &batch.messages()[*i];
            tracing::warn!(topic = msg.topic(), partition = msg.partition(),
                offset = msg.offset(), reason = r.reason, message = %r.message,
                "dead-lettered a telemetry message");
            metrics::counter!(m::DEAD_LETTERS, "reason" => r.reason).increment(1);
        }
        if let Some(o) = &self.observer {
            let _ = o.send(CommitStats {
                messages: batch.len(),
                asic_samples: w.asic_samples,
                gpu_samples: w.gpu_samples,
                dead_lettered: w.rejected.len(),
                latencies,
            });
        }
    }
}

/// The batch's rows, summaries and pending minutes, in `tx`.
async fn write(tx: &mut PgConnection, d: &Decoded) -> Result<(), HandlerError> {
    for (statement, rows) in [(ASIC_COPY, &d.asic_copy), (GPU_COPY, &d.gpu_copy)] {
        if rows.is_empty() {
            continue;
        }
        let mut copy = tx.copy_in_raw(statement).await?;
        let mut sent = copy.send(pgcopy::HEADER).await;
        if sent.is_ok() {
            sent = copy.send(rows.as_slice()).await;
        }
        if sent.is_ok() {
            sent = copy.send(pgcopy::TRAILER).await;
        }
        if let Err(e) = sent {
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
    Ok(())
}

/// A rejected message or event: the message's index, for an event of a packed message its
/// index and bytes, and why.
type Rejected = (usize, Option<(usize, Vec<u8>)>, Rejection);

/// Decoded rows, rejections, duplicates and ignored events.
type DecodeOut = (Decoded, Vec<Rejected>, u64, u64);

/// Decodes the messages at or above their partition's stored offset (`seen` is false).
fn decode(batch: &[OwnedMessage], seen: &[bool], telemetry_topic: &str) -> DecodeOut {
    let mut d = Decoded::default();
    let mut rejected = Vec::new();
    let mut duplicates = 0;
    let mut ignored = 0;
    for (i, msg) in batch.iter().enumerate() {
        if seen.get(i).copied().unwrap_or(false) {
            duplicates += 1;
            continue;
        }
        let source = if msg.topic() == telemetry_topic {
            Source::Telemetry
        } else {
            Source::WorkerReports
        };
        let payload = msg.payload().unwrap_or_default();
        let items = match pack::items(payload) {
            Ok(items) => items,
            Err(e) => {
                rejected.push((i, None, e.into()));
                continue;
            }
        };
        let packed = pack::is_packed(payload);
        for (k, item) in items.iter().enumerate() {
            match d.add(source, item.envelope) {
                Ok(Added::Rows(..)) => {}
                Ok(Added::Ignored) => ignored += 1,
                Err(r) => rejected.push((i, packed.then(|| (k, item.envelope.to_vec())), r)),
            }
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
