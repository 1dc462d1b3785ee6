//! Typed event payloads. Names are past tense; each variant has an explicit type string and
//! schema version. A breaking change adds a new version (and an upcast in [`Event::decode`]),
//! never an in-place edit: the golden fixtures under `fixtures/` pin every version.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::envelope::EnvelopeError;

/// The class of an AI workload. Drives priority and preemption rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    /// Latency-bound inference; never curtailed for price.
    RealtimeInference,
    /// Throughput-bound inference; may be throttled or paused.
    BatchInference,
    /// Training; interruptible at checkpoints.
    Training,
}

/// A workload was accepted into the system (after validation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSubmitted {
    /// The workload's id; also its stream id suffix.
    pub workload_id: Uuid,
    /// Owner tenant.
    pub tenant_id: String,
    /// Workload class.
    pub kind: WorkloadKind,
    /// Model name, e.g. `all-MiniLM-L6-v2`.
    pub model: String,
    /// GPUs required (gang-scheduled).
    pub gpu_count: u32,
    /// Declared run time in seconds, used for ETA and simulation.
    pub duration_s: u32,
}

/// A workload was placed on concrete GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadScheduled {
    /// The workload.
    pub workload_id: Uuid,
    /// Worker that will run it.
    pub worker_id: String,
    /// GPU ids on that worker.
    pub gpu_ids: Vec<String>,
}

/// A workload started running on its worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadStarted {
    /// The workload.
    pub workload_id: Uuid,
}

/// A workload finished successfully.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadCompleted {
    /// The workload.
    pub workload_id: Uuid,
    /// Wall time spent running, in seconds.
    pub runtime_s: f64,
}

/// A workload failed; `reason` is shown to the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFailed {
    /// The workload.
    pub workload_id: Uuid,
    /// Human-readable reason.
    pub reason: String,
}

/// A workload was cancelled by its tenant or an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadCancelled {
    /// The workload.
    pub workload_id: Uuid,
    /// Who asked for it.
    pub requested_by: String,
}

/// A market price was observed (electricity, hashprice, GPU rate, carbon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarketPriceObserved {
    /// Series name, e.g. `ercot.rt.LZ_WEST` or `btc.hashprice`.
    pub series: String,
    /// Start of the interval the value applies to.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub interval_start: OffsetDateTime,
    /// The value in `unit`.
    pub value: f64,
    /// Unit, e.g. `usd_per_mwh`.
    pub unit: String,
}

/// Every event HCP records, typed. The wire form is the envelope's `event_type`,
/// `schema_version` and `payload` fields; see [`crate::Envelope`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `workload.submitted` v1
    WorkloadSubmitted(WorkloadSubmitted),
    /// `workload.scheduled` v1
    WorkloadScheduled(WorkloadScheduled),
    /// `workload.started` v1
    WorkloadStarted(WorkloadStarted),
    /// `workload.completed` v1
    WorkloadCompleted(WorkloadCompleted),
    /// `workload.failed` v1
    WorkloadFailed(WorkloadFailed),
    /// `workload.cancelled` v1
    WorkloadCancelled(WorkloadCancelled),
    /// `market.price_observed` v1
    MarketPriceObserved(MarketPriceObserved),
}

/// The type tag of an [`Event`], as an enum so that nothing matches on strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `workload.submitted`
    WorkloadSubmitted,
    /// `workload.scheduled`
    WorkloadScheduled,
    /// `workload.started`
    WorkloadStarted,
    /// `workload.completed`
    WorkloadCompleted,
    /// `workload.failed`
    WorkloadFailed,
    /// `workload.cancelled`
    WorkloadCancelled,
    /// `market.price_observed`
    MarketPriceObserved,
}

impl EventType {
    /// All types, for schema export and fixture checks.
    pub const ALL: [EventType; 7] = [
        EventType::WorkloadSubmitted,
        EventType::WorkloadScheduled,
        EventType::WorkloadStarted,
        EventType::WorkloadCompleted,
        EventType::WorkloadFailed,
        EventType::WorkloadCancelled,
        EventType::MarketPriceObserved,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::WorkloadSubmitted => "workload.submitted",
            EventType::WorkloadScheduled => "workload.scheduled",
            EventType::WorkloadStarted => "workload.started",
            EventType::WorkloadCompleted => "workload.completed",
            EventType::WorkloadFailed => "workload.failed",
            EventType::WorkloadCancelled => "workload.cancelled",
            EventType::MarketPriceObserved => "market.price_observed",
        }
    }

    /// The schema version new events of this type are written with.
    pub const fn current_version(self) -> u16 {
        match self {
            EventType::WorkloadSubmitted
            | EventType::WorkloadScheduled
            | EventType::WorkloadStarted
            | EventType::WorkloadCompleted
            | EventType::WorkloadFailed
            | EventType::WorkloadCancelled
            | EventType::MarketPriceObserved => 1,
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The JSON Schema of this type's current payload version.
    pub fn payload_schema(self) -> schemars::Schema {
        match self {
            EventType::WorkloadSubmitted => schemars::schema_for!(WorkloadSubmitted),
            EventType::WorkloadScheduled => schemars::schema_for!(WorkloadScheduled),
            EventType::WorkloadStarted => schemars::schema_for!(WorkloadStarted),
            EventType::WorkloadCompleted => schemars::schema_for!(WorkloadCompleted),
            EventType::WorkloadFailed => schemars::schema_for!(WorkloadFailed),
            EventType::WorkloadCancelled => schemars::schema_for!(WorkloadCancelled),
            EventType::MarketPriceObserved => schemars::schema_for!(MarketPriceObserved),
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    /// This event's type tag.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::WorkloadSubmitted(_) => EventType::WorkloadSubmitted,
            Event::WorkloadScheduled(_) => EventType::WorkloadScheduled,
            Event::WorkloadStarted(_) => EventType::WorkloadStarted,
            Event::WorkloadCompleted(_) => EventType::WorkloadCompleted,
            Event::WorkloadFailed(_) => EventType::WorkloadFailed,
            Event::WorkloadCancelled(_) => EventType::WorkloadCancelled,
            Event::MarketPriceObserved(_) => EventType::MarketPriceObserved,
        }
    }

    /// Serialises the payload alone (the envelope's `payload` field), at the current version.
    pub fn payload_json(&self) -> Result<Box<serde_json::value::RawValue>, EnvelopeError> {
        let raw = match self {
            Event::WorkloadSubmitted(p) => serde_json::value::to_raw_value(p),
            Event::WorkloadScheduled(p) => serde_json::value::to_raw_value(p),
            Event::WorkloadStarted(p) => serde_json::value::to_raw_value(p),
            Event::WorkloadCompleted(p) => serde_json::value::to_raw_value(p),
            Event::WorkloadFailed(p) => serde_json::value::to_raw_value(p),
            Event::WorkloadCancelled(p) => serde_json::value::to_raw_value(p),
            Event::MarketPriceObserved(p) => serde_json::value::to_raw_value(p),
        };
        raw.map_err(|e| EnvelopeError::Encode(e.to_string()))
    }

    /// Decodes a payload of the given wire type and version, upcasting old versions to the
    /// current shape. Unknown types and versions are errors, never silently dropped.
    pub fn decode(event_type: &str, version: u16, payload: &str) -> Result<Self, EnvelopeError> {
        let ty = EventType::parse(event_type)
            .ok_or_else(|| EnvelopeError::UnknownType(event_type.to_owned()))?;
        if version == 0 || version > ty.current_version() {
            return Err(EnvelopeError::UnsupportedVersion {
                event_type: event_type.to_owned(),
                version,
            });
        }
        fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, EnvelopeError> {
            serde_json::from_str(s).map_err(|e| EnvelopeError::InvalidPayload(e.to_string()))
        }
        // Every type is at version 1 today; an upcast for vN arms goes here.
        Ok(match ty {
            EventType::WorkloadSubmitted => Event::WorkloadSubmitted(parse(payload)?),
            EventType::WorkloadScheduled => Event::WorkloadScheduled(parse(payload)?),
            EventType::WorkloadStarted => Event::WorkloadStarted(parse(payload)?),
            EventType::WorkloadCompleted => Event::WorkloadCompleted(parse(payload)?),
            EventType::WorkloadFailed => Event::WorkloadFailed(parse(payload)?),
            EventType::WorkloadCancelled => Event::WorkloadCancelled(parse(payload)?),
            EventType::MarketPriceObserved => Event::MarketPriceObserved(parse(payload)?),
        })
    }
}
