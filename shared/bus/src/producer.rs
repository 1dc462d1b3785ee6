//! The idempotent producer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::metrics_names as m;
use crate::pack::{pack_by_partition, PackLimits, Routed};
use crate::{BusError, KafkaSettings};

/// How long a topic's partition count is trusted before it is read again.
const PARTITIONS_TTL: Duration = Duration::from_secs(60);
/// How long a failed partition-count lookup is remembered (the topic is sent unpacked
/// meanwhile), so that a broker that cannot answer does not stall every batch.
const PARTITIONS_RETRY: Duration = Duration::from_secs(10);
/// Partition count by topic (`None`: the lookup failed) and when it was read.
type PartitionCounts = HashMap<String, (Option<i32>, Instant)>;

/// How long one partition-count lookup may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(1);

pub use crate::message::OutgoingMessage;

/// The message's headers, for librdkafka.
fn owned_headers(msg: &OutgoingMessage) -> OwnedHeaders {
    msg.headers.iter().fold(
        OwnedHeaders::new_with_capacity(msg.headers.len()),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v),
            })
        },
    )
}

/// An idempotent (`enable.idempotence`, `acks=all`) producer. Messages of one key keep their
/// order, retries included.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    /// Partition counts by topic (`None`: the lookup failed), with when they were read, for
    /// packing ([`Producer::send_packed`]).
    partitions: Arc<Mutex<PartitionCounts>>,
    /// Whether [`Producer::send_packed`] packs (`kafka.pack`).
    pack: bool,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    /// Creates a producer.
    pub fn new(settings: &KafkaSettings, client_id: &str) -> Result<Self, BusError> {
        let inner = settings
            .producer_config(client_id)
            .create()
            .map_err(|e| BusError::Config(e.to_string()))?;
        Ok(Self {
            inner,
            partitions: Arc::default(),
            pack: settings.pack,
        })
    }

    /// Produces every message in order and resolves when all are acknowledged. Fails if any
    /// is not; the caller retries the whole batch (duplicates are absorbed downstream).
    pub async fn send_batch<'a, I>(&self, messages: I) -> Result<(), BusError>
    where
        I: IntoIterator<Item = &'a OutgoingMessage>,
    {
        let routed: Vec<(&OutgoingMessage, Option<i32>)> =
            messages.into_iter().map(|m| (m, None)).collect();
        self.send_routed(routed).await
    }

    /// Like [`Producer::send_batch`], but the JSON envelopes bound for one partition travel
    /// packed into as few messages as possible ([`hcp_events::pack`]): the broker and every
    /// consumer pay per message. Every event still goes to the partition of its key, in order.
    /// A topic whose partition count cannot be read is sent unpacked.
    pub async fn send_packed(&self, messages: &[OutgoingMessage]) -> Result<(), BusError> {
        if !self.pack || messages.is_empty() {
            return self.send_batch(messages).await;
        }
        let counts = self.partition_counts(messages).await;
        let routed: Vec<Routed> = pack_by_partition(messages, &counts, PackLimits::default());
        let packed: usize = routed
            .iter()
            .filter(|r| r.events > 1)
            .map(|r| r.events)
            .sum();
        let pairs: Vec<(&OutgoingMessage, Option<i32>)> =
            routed.iter().map(|r| (&r.message, r.partition)).collect();
        self.send_routed(pairs).await?;
        if packed > 0 {
            metrics::counter!(m::PACKED_EVENTS).increment(packed as u64);
        }
        Ok(())
    }

    /// The partition count of every topic of `messages` that the broker reports.
    async fn partition_counts(&self, messages: &[OutgoingMessage]) -> HashMap<String, i32> {
        let mut out = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        {
            let cache = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
            for msg in messages {
                if out.contains_key(&msg.topic) || missing.contains(&msg.topic) {
                    continue;
                }
                match cache.get(&msg.topic) {
                    Some((Some(n), at)) if at.elapsed() < PARTITIONS_TTL => {
                        out.insert(msg.topic.clone(), *n);
                    }
                    Some((None, at)) if at.elapsed() < PARTITIONS_RETRY => {}
                    _ => missing.push(msg.topic.clone()),
                }
            }
        }
        for topic in missing {
            let inner = self.inner.clone();
            let name = topic.clone();
            let count = tokio::task::spawn_blocking(move || {
                inner
                    .client()
                    .fetch_metadata(Some(&name), METADATA_TIMEOUT)
                    .ok()
                    .and_then(|md| {
                        md.topics()
                            .iter()
                            .find(|t| t.name() == name && t.error().is_none())
                            .map(|t| t.partitions().len() as i32)
                    })
                    .filter(|n| *n > 0)
            })
            .await
            .ok()
            .flatten();
            self.partitions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(topic.clone(), (count, Instant::now()));
            match count {
                Some(n) => {
                    out.insert(topic, n);
                }
                None => tracing::debug!(%topic, "partition count unknown; sending unpacked"),
            }
        }
        out
    }

    /// Produces `(message, partition)` in order and waits for every ack.
    async fn send_routed(
        &self,
        messages: Vec<(&OutgoingMessage, Option<i32>)>,
    ) -> Result<(), BusError> {
        let mut pending = Vec::new();
        for (msg, partition) in messages {
            let mut record = FutureRecord::to(&msg.topic)
                .key(msg.key.as_bytes())
                .payload(&msg.payload)
                .headers(owned_headers(msg));
            if let Some(p) = partition {
                record = record.partition(p);
            }
            loop {
                match self.inner.send_result(record) {
                    Ok(delivery) => {
                        pending.push((msg.topic.as_str(), delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        return Err(BusError::Delivery {
                            topic: msg.topic.clone(),
                            reason: e.to_string(),
                        })
                    }
                }
            }
        }
        let results = join_all(pending.into_iter().map(|(topic, d)| async move {
            match d.await {
                Ok(Ok(_)) => Ok(topic),
                Ok(Err((e, _))) => Err(BusError::Delivery {
                    topic: topic.to_owned(),
                    reason: e.to_string(),
                }),
                Err(_) => Err(BusError::Delivery {
                    topic: topic.to_owned(),
                    reason: "producer dropped the delivery".into(),
                }),
            }
        }))
        .await;
        let mut first_err = None;
        let mut acked: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for r in results {
            match r {
                Ok(topic) => *acked.entry(topic).or_default() += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for (topic, n) in acked {
            metrics::counter!(m::PRODUCED, "topic" => topic.to_owned()).increment(n);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Produces one message and waits for its acknowledgement.
    pub async fn send(&self, message: &OutgoingMessage) -> Result<(), BusError> {
        self.send_batch(std::iter::once(message)).await
    }

    /// Waits for outstanding deliveries (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        Ok(self.inner.flush(timeout)?)
    }
}
