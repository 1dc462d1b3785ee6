//! The one envelope every HCP event travels in, on Kafka and in the event store.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::payload::{Event, EventType};

/// Why bytes could not become an [`Envelope`]. Every variant is the sender's fault (dead-letter
/// it); none is worth a retry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The bytes are not a JSON envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The event type is not one HCP knows.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// The type is known but not at this version.
    #[error("unsupported schema version {version} for event type `{event_type}`")]
    UnsupportedVersion {
        /// The wire type.
        event_type: String,
        /// The version received.
        version: u16,
    },
    /// The payload does not match the type's schema.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// The envelope violates an invariant (empty stream id, sequence 0, ...).
    #[error("invalid envelope: {0}")]
    Invalid(String),
    /// Serialisation failed (a bug).
    #[error("failed to encode event: {0}")]
    Encode(String),
}

/// A typed event with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique id of this event; consumers de-duplicate on it.
    pub event_id: Uuid,
    /// Wire version of the payload this event was written with.
    pub schema_version: u16,
    /// The aggregate this event belongs to, e.g. `workload-<uuid>`; the Kafka key.
    pub stream_id: String,
    /// Position within the stream, starting at 1, without gaps.
    pub sequence: i64,
    /// When the fact happened (producer clock).
    pub occurred_at: OffsetDateTime,
    /// The request or flow this event is part of.
    pub correlation_id: Uuid,
    /// The event or command that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// The service that produced it, e.g. `gateway`.
    pub producer: String,
    /// The typed payload.
    pub payload: Event,
}

/// The wire shape of an envelope, with the payload left as raw JSON until its type and version
/// are known. Also the schema published for producers in other languages.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEnvelope {
    /// Unique id of this event (UUID).
    pub event_id: Uuid,
    /// Event type, e.g. `workload.submitted`.
    pub event_type: String,
    /// Payload schema version (>= 1).
    pub schema_version: u16,
    /// Aggregate id; also the Kafka message key.
    pub stream_id: String,
    /// Per-stream sequence, starting at 1.
    pub sequence: i64,
    /// RFC 3339 timestamp.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub occurred_at: OffsetDateTime,
    /// Correlation id (UUID).
    pub correlation_id: Uuid,
    /// Causation id (UUID), if any.
    #[serde(default)]
    pub causation_id: Option<Uuid>,
    /// Producing service.
    pub producer: String,
    /// The payload, whose schema depends on `event_type` and `schema_version`.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub payload: Box<RawValue>,
}

impl Envelope {
    /// A new event at the payload's current version. `sequence` is assigned by the event store
    /// on append; until then it is 0.
    pub fn new(stream_id: impl Into<String>, producer: impl Into<String>, payload: Event) -> Self {
        let event_id = Uuid::now_v7();
        Self {
            event_id,
            schema_version: payload.event_type().current_version(),
            stream_id: stream_id.into(),
            sequence: 0,
            occurred_at: OffsetDateTime::now_utc(),
            correlation_id: event_id,
            causation_id: None,
            producer: producer.into(),
            payload,
        }
    }

    /// Sets correlation and causation from the event that caused this one.
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.correlation_id = cause.correlation_id;
        self.causation_id = Some(cause.event_id);
        self
    }

    /// The payload's type.
    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }

    /// Converts to the wire shape.
    pub fn to_raw(&self) -> Result<RawEnvelope, EnvelopeError> {
        Ok(RawEnvelope {
            event_id: self.event_id,
            event_type: self.event_type().as_str().to_owned(),
            schema_version: self.schema_version,
            stream_id: self.stream_id.clone(),
            sequence: self.sequence,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            producer: self.producer.clone(),
            payload: self.payload.payload_json()?,
        })
    }

    /// Serialises to JSON bytes (the Kafka value).
    pub fn to_json(&self) -> Result<Vec<u8>, EnvelopeError> {
        serde_json::to_vec(&self.to_raw()?).map_err(|e| EnvelopeError::Encode(e.to_string()))
    }

    /// Parses and validates JSON bytes, upcasting old payload versions.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let raw: RawEnvelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        Self::from_raw(raw)
    }

    /// Validates a wire envelope and decodes its payload.
    pub fn from_raw(raw: RawEnvelope) -> Result<Self, EnvelopeError> {
        if raw.stream_id.is_empty() {
            return Err(EnvelopeError::Invalid("stream_id must not be empty".into()));
        }
        if raw.sequence < 1 {
            return Err(EnvelopeError::Invalid(format!(
                "sequence must be >= 1, got {}",
                raw.sequence
            )));
        }
        if raw.producer.is_empty() {
            return Err(EnvelopeError::Invalid("producer must not be empty".into()));
        }
        let payload = Event::decode(&raw.event_type, raw.schema_version, raw.payload.get())?;
        Ok(Self {
            event_id: raw.event_id,
            // The payload is now in its current shape (upcast if it was older), so the
            // envelope says so; re-encoding never labels a new shape with an old version.
            schema_version: payload.event_type().current_version(),
            stream_id: raw.stream_id,
            sequence: raw.sequence,
            occurred_at: raw.occurred_at,
            correlation_id: raw.correlation_id,
            causation_id: raw.causation_id,
            producer: raw.producer,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{WorkloadKind, WorkloadSubmitted};

    fn submitted() -> Envelope {
        let id = Uuid::nil();
        let mut e = Envelope::new(
            format!("workload-{id}"),
            "gateway",
            Event::WorkloadSubmitted(WorkloadSubmitted::simple(
                id,
                "acme",
                WorkloadKind::Training,
                "llama-3-8b",
                8,
                3600,
            )),
        );
        e.sequence = 1;
        e
    }

    #[test]
    fn an_envelope_round_trips_through_json() {
        let e = submitted();
        let back = Envelope::from_json(&e.to_json().unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_new_event_starts_its_own_correlation_and_a_caused_event_inherits_it() {
        let cause = submitted();
        assert_eq!(cause.correlation_id, cause.event_id);
        let effect = Envelope::new(
            cause.stream_id.clone(),
            "router",
            Event::WorkloadStarted(crate::payload::WorkloadStarted {
                workload_id: Uuid::nil(),
            }),
        )
        .caused_by(&cause);
        assert_eq!(effect.correlation_id, cause.correlation_id);
        assert_eq!(effect.causation_id, Some(cause.event_id));
    }

    #[test]
    fn garbage_bytes_are_malformed() {
        assert!(matches!(
            Envelope::from_json(b"not json"),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn an_unknown_type_is_rejected_by_name() {
        let mut raw = submitted().to_raw().unwrap();
        raw.event_type = "workload.teleported".into();
        assert_eq!(
            Envelope::from_raw(raw),
            Err(EnvelopeError::UnknownType("workload.teleported".into()))
        );
    }

    #[test]
    fn a_future_version_is_rejected_not_guessed() {
        let mut raw = submitted().to_raw().unwrap();
        raw.schema_version = 99;
        assert!(matches!(
            Envelope::from_raw(raw),
            Err(EnvelopeError::UnsupportedVersion { version: 99, .. })
        ));
    }

    #[test]
    fn a_payload_that_does_not_match_its_type_is_invalid() {
        let mut raw = submitted().to_raw().unwrap();
        raw.payload = RawValue::from_string(r#"{"workload_id": 7}"#.into()).unwrap();
        assert!(matches!(
            Envelope::from_raw(raw),
            Err(EnvelopeError::InvalidPayload(_))
        ));
    }

    #[test]
    fn sequence_zero_and_empty_stream_are_invalid() {
        let mut raw = submitted().to_raw().unwrap();
        raw.sequence = 0;
        assert!(matches!(
            Envelope::from_raw(raw),
            Err(EnvelopeError::Invalid(_))
        ));
        let mut raw = submitted().to_raw().unwrap();
        raw.stream_id.clear();
        assert!(matches!(
            Envelope::from_raw(raw),
            Err(EnvelopeError::Invalid(_))
        ));
    }
}
