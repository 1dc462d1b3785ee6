//! HCP's event vocabulary: one versioned [`Envelope`] around typed payloads ([`Event`]),
//! the external [`WorkloadRequest`] message, topic and header names, and JSON Schema export.
//!
//! This crate deliberately has no I/O dependencies (no rdkafka, no sqlx) so that every service,
//! simulator and tool can share it without paying for the transport.

pub mod compact;
pub mod envelope;
pub mod pack;
pub mod payload;
pub mod request;
pub mod schema;
pub mod wire;

pub use envelope::{Envelope, EnvelopeError, RawEnvelope};
pub use payload::{
    asic_command_stream, command_stream, grid_stream, report_stream, site_stream, worker_stream,
    workload_stream, Event, EventType, Tier, WorkloadKind,
};
pub use request::WorkloadRequest;
pub use wire::{headers, Topic};
