//! Typed event payloads. Names are past tense; each variant has an explicit type string and
//! schema version. A breaking change adds a new version (and an upcast in [`Event::decode`]),
//! never an in-place edit: the golden fixtures under `fixtures/` pin every version.

mod fleet;
mod worker;
mod workload;

pub use fleet::*;
pub use worker::*;
pub use workload::*;

use uuid::Uuid;

use crate::envelope::EnvelopeError;

macro_rules! events {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $name:literal v $version:literal ),+ $(,)?) => {
        /// Every event HCP records, typed. The wire form is the envelope's `event_type`,
        /// `schema_version` and `payload` fields; see [`crate::Envelope`].
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $( $(#[$doc])* $variant($payload), )+
        }

        /// The type tag of an [`Event`], as an enum so that nothing matches on strings.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType {
            $( $(#[$doc])* $variant, )+
        }

        impl EventType {
            /// All types, for schema export and fixture checks.
            pub const ALL: &'static [EventType] = &[$( EventType::$variant, )+];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self { $( EventType::$variant => $name, )+ }
            }

            /// The schema version new events of this type are written with.
            pub const fn current_version(self) -> u16 {
                match self { $( EventType::$variant => $version, )+ }
            }

            /// The JSON Schema of this type's current payload version.
            pub fn payload_schema(self) -> schemars::Schema {
                match self { $( EventType::$variant => schemars::schema_for!($payload), )+ }
            }
        }

        impl Event {
            /// This event's type tag.
            pub fn event_type(&self) -> EventType {
                match self { $( Event::$variant(_) => EventType::$variant, )+ }
            }

            /// Serialises the payload alone (the envelope's `payload` field), at the current
            /// version.
            pub fn payload_json(&self) -> Result<Box<serde_json::value::RawValue>, EnvelopeError> {
                let raw = match self { $( Event::$variant(p) => serde_json::value::to_raw_value(p), )+ };
                raw.map_err(|e| EnvelopeError::Encode(e.to_string()))
            }

            fn decode_current(ty: EventType, payload: &str) -> Result<Self, EnvelopeError> {
                Ok(match ty { $( EventType::$variant => Event::$variant(parse(payload)?), )+ })
            }
        }
    };
}

events! {
    /// `workload.submitted` v2 (v1 is upcast)
    WorkloadSubmitted(WorkloadSubmitted) = "workload.submitted" v 2,
    /// `workload.queued` v1
    WorkloadQueued(WorkloadQueued) = "workload.queued" v 1,
    /// `workload.placement_proposed` v1
    WorkloadPlacementProposed(WorkloadPlacementProposed) = "workload.placement_proposed" v 1,
    /// `workload.placement_rejected` v1
    WorkloadPlacementRejected(WorkloadPlacementRejected) = "workload.placement_rejected" v 2,
    /// `workload.scheduled` v1
    WorkloadScheduled(WorkloadScheduled) = "workload.scheduled" v 1,
    /// `workload.started` v1
    WorkloadStarted(WorkloadStarted) = "workload.started" v 1,
    /// `workload.checkpointed` v1
    WorkloadCheckpointed(WorkloadCheckpointed) = "workload.checkpointed" v 1,
    /// `workload.paused` v1
    WorkloadPaused(WorkloadPaused) = "workload.paused" v 1,
    /// `workload.resumed` v1
    WorkloadResumed(WorkloadResumed) = "workload.resumed" v 1,
    /// `workload.preempted` v1
    WorkloadPreempted(WorkloadPreempted) = "workload.preempted" v 1,
    /// `workload.requeued` v1
    WorkloadRequeued(WorkloadRequeued) = "workload.requeued" v 1,
    /// `workload.completed` v1
    WorkloadCompleted(WorkloadCompleted) = "workload.completed" v 1,
    /// `workload.failed` v1
    WorkloadFailed(WorkloadFailed) = "workload.failed" v 1,
    /// `workload.cancelled` v1
    WorkloadCancelled(WorkloadCancelled) = "workload.cancelled" v 1,
    /// `worker.registered` v1
    WorkerRegistered(WorkerRegistered) = "worker.registered" v 1,
    /// `worker.lost` v1
    WorkerLost(WorkerLost) = "worker.lost" v 1,
    /// `worker.heartbeat` v1 (worker reports)
    WorkerHeartbeat(WorkerHeartbeat) = "worker.heartbeat" v 1,
    /// `run.reported` v1 (worker reports)
    RunReported(RunReported) = "run.reported" v 1,
    /// `device.command` v1
    DeviceCommand(DeviceCommand) = "device.command" v 1,
    /// `market.price_observed` v1
    MarketPriceObserved(MarketPriceObserved) = "market.price_observed" v 1,
    /// `grid.demand_response_requested` v1
    DemandResponseRequested(DemandResponseRequested) = "grid.demand_response_requested" v 1,
    /// `grid.peak_warning_issued` v1
    PeakWarningIssued(PeakWarningIssued) = "grid.peak_warning_issued" v 1,
    /// `asic.telemetry_batch` v1
    AsicTelemetryBatch(AsicTelemetryBatch) = "asic.telemetry_batch" v 1,
    /// `asic.command_issued` v1
    AsicCommandIssued(AsicCommandIssued) = "asic.command_issued" v 1,
    /// `optimizer.decision_made` v1
    DecisionMade(DecisionMade) = "optimizer.decision_made" v 1,
    /// `optimizer.decision_confirmed` v1
    DecisionConfirmed(DecisionConfirmed) = "optimizer.decision_confirmed" v 1,
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, EnvelopeError> {
    serde_json::from_str(s).map_err(|e| EnvelopeError::InvalidPayload(e.to_string()))
}

impl EventType {
    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
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
        match (ty, version) {
            (EventType::WorkloadSubmitted, 1) => Ok(Event::WorkloadSubmitted(
                parse::<WorkloadSubmittedV1>(payload)?.into(),
            )),
            _ => Self::decode_current(ty, payload),
        }
    }

    /// The workload an event concerns, if any.
    pub fn workload_id(&self) -> Option<Uuid> {
        Some(match self {
            Event::WorkloadSubmitted(p) => p.workload_id,
            Event::WorkloadQueued(p) => p.workload_id,
            Event::WorkloadPlacementProposed(p) => p.workload_id,
            Event::WorkloadPlacementRejected(p) => p.workload_id,
            Event::WorkloadScheduled(p) => p.workload_id,
            Event::WorkloadStarted(p) => p.workload_id,
            Event::WorkloadCheckpointed(p) => p.workload_id,
            Event::WorkloadPaused(p) => p.workload_id,
            Event::WorkloadResumed(p) => p.workload_id,
            Event::WorkloadPreempted(p) => p.workload_id,
            Event::WorkloadRequeued(p) => p.workload_id,
            Event::WorkloadCompleted(p) => p.workload_id,
            Event::WorkloadFailed(p) => p.workload_id,
            Event::WorkloadCancelled(p) => p.workload_id,
            Event::RunReported(p) => p.workload_id,
            Event::DeviceCommand(p) => p.workload_id,
            Event::WorkerRegistered(_)
            | Event::WorkerLost(_)
            | Event::WorkerHeartbeat(_)
            | Event::MarketPriceObserved(_)
            | Event::DemandResponseRequested(_)
            | Event::PeakWarningIssued(_)
            | Event::AsicTelemetryBatch(_)
            | Event::AsicCommandIssued(_)
            | Event::DecisionMade(_)
            | Event::DecisionConfirmed(_) => return None,
        })
    }
}

/// The stream id of a workload.
pub fn workload_stream(workload_id: Uuid) -> String {
    format!("workload-{workload_id}")
}

/// The workload of a workload stream id ([`workload_stream`]'s inverse).
pub fn workload_of_stream(stream_id: &str) -> Option<Uuid> {
    stream_id
        .strip_prefix("workload-")
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// The stream id of a worker's resource events.
pub fn worker_stream(worker_id: &str) -> String {
    format!("worker-{worker_id}")
}

/// The stream id of a worker's reports (heartbeats, run reports) on `worker-reports`. These are
/// not in the event log; their sequence is the worker's monotonic clock in microseconds.
pub fn report_stream(worker_id: &str) -> String {
    format!("reports-{worker_id}")
}

/// The stream id of a site's ASIC commands and decisions.
pub fn site_stream(site: &str) -> String {
    format!("site-{site}")
}

/// The stream id of the ASIC commands sent to a site (kept apart from the site's decision
/// stream, which the optimizer owns).
pub fn asic_command_stream(site: &str) -> String {
    format!("asic-commands-{site}")
}

/// The stream id of a grid event (demand response, peak warning) source.
pub fn grid_stream(zone: &str) -> String {
    format!("grid-{zone}")
}

/// The stream id of the commands sent to one worker.
pub fn command_stream(worker_id: &str) -> String {
    format!("commands-{worker_id}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn embeddings_round_trip_exactly_through_base64() {
        let v = vec![vec![0.5f32, -1.25, f32::MIN_POSITIVE, 3.0e7], vec![0.0; 4]];
        let out = RunOutput::embeddings("all-MiniLM-L6-v2", &v, "cpu", 1.5);
        let RunOutput::Embeddings { dims, .. } = &out;
        assert_eq!(*dims, 4);
        let json = serde_json::to_string(&out).unwrap();
        let back: RunOutput = serde_json::from_str(&json).unwrap();
        assert_eq!(back.decode_vectors().unwrap(), v);
    }

    #[test]
    fn a_vector_of_the_wrong_length_is_named() {
        let mut out = RunOutput::embeddings("m", &[vec![1.0f32, 2.0], vec![3.0, 4.0]], "cpu", 0.0);
        let RunOutput::Embeddings { vectors_b64, .. } = &mut out;
        vectors_b64[1] = "AAAA".into();
        assert_eq!(
            out.decode_vectors().unwrap_err(),
            "vector 1: 3 bytes, expected 2 f32 values"
        );
    }
}
