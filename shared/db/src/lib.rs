//! PostgreSQL for HCP: the pool and migrator ([`pool`]), the append-only event store
//! ([`store`]), the transactional outbox and its relay ([`outbox`]), consumer positions and
//! idempotency ([`positions`]), projections with replay ([`projection`]), and a low-latency
//! tail of the log for acting ahead of a consumer ([`tail`]).
//!
//! This crate knows nothing about Kafka: the relay publishes through the [`outbox::OutboxSink`]
//! trait, which the bus crate implements.

pub mod error;
pub mod metrics_names;
pub mod outbox;
pub mod pool;
pub mod positions;
pub mod projection;
pub mod store;
pub mod tail;

pub use error::StoreError;
pub use outbox::{OutboxMessage, OutboxRelay, OutboxSink, RelaySettings};
pub use pool::{connect, migrate, DatabaseSettings, MIGRATOR};
pub use projection::{apply_once, rebuild, Applied, ApplyError, Projection};
pub use store::{AppendOutcome, EventStore, ExpectedVersion, Publish, RecordedEvent, StreamAppend};
pub use tail::LogTail;

/// Re-exported so that dependants name one sqlx.
pub use sqlx;
