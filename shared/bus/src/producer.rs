//! The idempotent producer.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::metrics_names as m;
use crate::{BusError, KafkaSettings};

/// A message to produce.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// Topic.
    pub topic: String,
    /// Key (the stream id).
    pub key: String,
    /// Value bytes.
    pub payload: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutgoingMessage {
    fn owned_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v),
                })
            },
        )
    }
}

/// An idempotent (`enable.idempotence`, `acks=all`) producer. Messages of one key keep their
/// order, retries included.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
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
        Ok(Self { inner })
    }

    /// Produces every message in order and resolves when all are acknowledged. Fails if any
    /// is not; the caller retries the whole batch (duplicates are absorbed downstream).
    pub async fn send_batch<'a, I>(&self, messages: I) -> Result<(), BusError>
    where
        I: IntoIterator<Item = &'a OutgoingMessage>,
    {
        let mut pending = Vec::new();
        for msg in messages {
            let mut record = FutureRecord::to(&msg.topic)
                .key(msg.key.as_bytes())
                .payload(&msg.payload)
                .headers(msg.owned_headers());
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
