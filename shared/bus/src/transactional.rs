//! Kafka ⇄ PostgreSQL glue (feature `postgres`):
//! - [`KafkaOutboxSink`] lets the outbox relay publish through the idempotent [`Producer`];
//! - [`Projector`] is the [`BatchHandler`] of a [`Projection`]: the engine
//!   ([`crate::engine`]) hands it a batch, it claims every stream sequence of the batch in one
//!   statement and applies the fresh events, so the projection, its per-stream idempotency
//!   claims and the partition offsets commit in ONE transaction. Malformed messages and poison
//!   events go to the dead-letter topic and the consumer goes on;
//! - [`TransactionalConsumer`]: the engine driving a projection.

use std::collections::HashMap;

use hcp_db::outbox::{OutboxMessage, OutboxSink};
use hcp_db::positions::claim_batch;
use hcp_db::projection::{apply_once, Applied, ApplyError, Projection};
use hcp_db::sqlx::{self, PgConnection, PgPool};
use hcp_events::{headers, pack, Envelope};
use rdkafka::message::{Message, OwnedMessage};
use tracing::Instrument;

use crate::dead_letter::DeadLetterKind;
pub use crate::engine::ConsumerSettings;
use crate::engine::{Batch, BatchHandler, Engine, Handled, HandlerError, Refusal};
use crate::metrics_names as m;
use crate::producer::{OutgoingMessage, Producer};
use crate::{BusError, KafkaSettings};

/// Publishes outbox batches through the idempotent producer.
#[derive(Debug, Clone)]
pub struct KafkaOutboxSink(pub Producer);

impl OutboxSink for KafkaOutboxSink {
    async fn publish(&self, batch: &[OutboxMessage]) -> Result<(), String> {
        let msgs: Vec<OutgoingMessage> = batch.iter().map(to_outgoing).collect();
        self.0.send_packed(&msgs).await.map_err(|e| e.to_string())
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

/// The engine driving a projection.
pub type TransactionalConsumer<P> = Engine<Projector<P>>;

impl<P: Projection> Engine<Projector<P>> {
    /// A consumer applying what it reads to `projection` (see [`Engine::new`]).
    pub fn for_projection(
        kafka: &KafkaSettings,
        settings: ConsumerSettings,
        pool: PgPool,
        projection: P,
        producer: Producer,
    ) -> Result<Self, BusError> {
        Engine::new(kafka, settings, pool, Projector(projection), producer)
    }
}

/// One event of a batch, with the message it came in.
struct Todo<'b> {
    /// The message's index in the batch.
    index: usize,
    msg: &'b OwnedMessage,
    /// Its index within a packed message.
    packed_index: Option<usize>,
    item: pack::Item<'b>,
    envelope: Envelope,
}

/// The [`BatchHandler`] of a projection.
#[derive(Debug, Clone)]
pub struct Projector<P>(pub P);

/// Counts from one batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Events applied.
    pub applied: u64,
    /// Events skipped as applied before.
    pub duplicates: u64,
}

impl<P: Projection> BatchHandler for Projector<P> {
    type Done = Counts;

    fn name(&self) -> &str {
        self.0.name()
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        batch: &Batch,
        isolate: bool,
    ) -> Result<Handled<Counts>, HandlerError> {
        let projection = &self.0;
        let mut counts = Counts::default();
        let mut refused = Vec::new();
        // Undecodable bytes are dead-lettered, unless they lie below the stored offset (seen
        // before). Valid events go on to the stream claim regardless, so a wiped or replaced
        // broker cannot make new events look like redeliveries. A packed message is read event
        // by event: a bad one is refused alone and its neighbours apply.
        let mut todo: Vec<Todo<'_>> = Vec::with_capacity(batch.len());
        for (i, msg) in batch.messages().iter().enumerate() {
            let payload = msg.payload().unwrap_or_default();
            let items = match pack::items(payload) {
                Ok(items) => items,
                Err(_) if batch.seen_before(i) => {
                    counts.duplicates += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(
                        topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
                        error = %e, "dead-lettering malformed message"
                    );
                    refused.push(Refusal {
                        index: i,
                        kind: DeadLetterKind::Malformed,
                        reason: e.to_string(),
                        item: None,
                    });
                    continue;
                }
            };
            let packed = pack::is_packed(payload);
            for (k, item) in items.into_iter().enumerate() {
                match item.decode() {
                    Ok(envelope) => todo.push(Todo {
                        index: i,
                        msg,
                        packed_index: packed.then_some(k),
                        item,
                        envelope,
                    }),
                    Err(_) if batch.seen_before(i) => counts.duplicates += 1,
                    Err(e) => {
                        tracing::warn!(
                            topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
                            packed_index = packed.then_some(k), error = %e,
                            "dead-lettering malformed event"
                        );
                        refused.push(Refusal {
                            index: i,
                            kind: DeadLetterKind::Malformed,
                            reason: e.to_string(),
                            item: packed.then(|| (k, item.envelope.to_vec())),
                        });
                    }
                }
            }
        }
        // The projection's own marks (row versions) for the streams it keeps them for; one
        // statement claims the sequences of every other stream.
        let streams: Vec<&str> = {
            let mut v: Vec<&str> = todo.iter().map(|t| t.envelope.stream_id.as_str()).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let own = if todo.is_empty() {
            HashMap::new()
        } else {
            projection.marks(tx, &streams).await?
        };
        let mut marks = if isolate || todo.is_empty() {
            HashMap::new()
        } else {
            let claims: Vec<(&str, i64)> = todo
                .iter()
                .filter(|t| !own.contains_key(&t.envelope.stream_id))
                .map(|t| (t.envelope.stream_id.as_str(), t.envelope.sequence))
                .collect();
            if claims.is_empty() {
                HashMap::new()
            } else {
                claim_batch(tx, projection.name(), &claims).await?
            }
        };
        marks.extend(own.iter().map(|(k, v)| (k.clone(), *v)));
        if !isolate && projection.batches() {
            // The whole batch in one call: the projection writes set-based.
            let mut fresh: Vec<&Envelope> = Vec::with_capacity(todo.len());
            for Todo { envelope, .. } in &todo {
                let mark = marks.entry(envelope.stream_id.clone()).or_insert(0);
                if envelope.sequence <= *mark {
                    counts.duplicates += 1;
                } else {
                    *mark = envelope.sequence;
                    fresh.push(envelope);
                }
            }
            let span = tracing::info_span!(
                "apply_batch",
                consumer = projection.name(),
                events = fresh.len(),
            );
            // The batch continues the trace of its first event.
            if let Some(first) = todo.first() {
                crate::trace::set_parent(
                    &span,
                    crate::trace::context_of_item(first.msg.headers(), &first.item),
                );
            }
            match projection.apply_batch(tx, &fresh).instrument(span).await {
                Ok(()) => counts.applied += fresh.len() as u64,
                Err(ApplyError::Poison(_)) => return Err(HandlerError::Poison),
                Err(e) => return Err(HandlerError::Transient(e.to_string())),
            }
            return Ok(Handled {
                refused,
                done: counts,
            });
        }
        for Todo {
            index,
            msg,
            packed_index,
            item,
            envelope,
        } in &todo
        {
            let span = tracing::info_span!(
                "apply",
                consumer = projection.name(),
                event_type = envelope.event_type().as_str(),
                stream_id = %envelope.stream_id,
                sequence = envelope.sequence,
            );
            crate::trace::set_parent(&span, crate::trace::context_of_item(msg.headers(), item));
            let outcome = if isolate {
                // After a poison event: one savepoint per event isolates it. A stream the
                // projection keeps its own mark for is checked against that mark (advanced in
                // memory as its events apply); any other is claimed event by event.
                let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
                let out = match marks.get(&envelope.stream_id).copied() {
                    Some(mark) if own.contains_key(&envelope.stream_id) => {
                        if envelope.sequence <= mark {
                            Ok(Applied::Duplicate)
                        } else {
                            projection
                                .apply(&mut sp, envelope)
                                .instrument(span)
                                .await
                                .map(|()| Applied::Applied)
                        }
                    }
                    _ => {
                        apply_once(&mut sp, projection, envelope)
                            .instrument(span)
                            .await
                    }
                };
                if matches!(out, Ok(Applied::Applied)) && own.contains_key(&envelope.stream_id) {
                    marks.insert(envelope.stream_id.clone(), envelope.sequence);
                }
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
                    projection
                        .apply(tx, envelope)
                        .instrument(span)
                        .await
                        .map(|()| Applied::Applied)
                }
            };
            match outcome {
                Ok(Applied::Applied) => counts.applied += 1,
                Ok(Applied::Duplicate) => counts.duplicates += 1,
                Err(ApplyError::Poison(reason)) if isolate => {
                    tracing::warn!(stream_id = %envelope.stream_id, %reason, "dead-lettering poison event");
                    refused.push(Refusal {
                        index: *index,
                        kind: DeadLetterKind::Poison,
                        reason,
                        item: packed_index.map(|k| (k, item.envelope.to_vec())),
                    });
                }
                Err(ApplyError::Poison(_)) => return Err(HandlerError::Poison),
                Err(e) => return Err(HandlerError::Transient(e.to_string())),
            }
        }
        Ok(Handled {
            refused,
            done: counts,
        })
    }

    fn committed(&self, _batch: &Batch, done: Counts, _elapsed: std::time::Duration) {
        let name = self.0.name().to_owned();
        metrics::counter!(m::CONSUMER_APPLIED, "consumer" => name.clone()).increment(done.applied);
        metrics::counter!(m::CONSUMER_DUPLICATES, "consumer" => name).increment(done.duplicates);
        self.0.committed();
    }
}
