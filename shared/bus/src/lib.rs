//! Kafka for HCP, over rdkafka (librdkafka):
//! - [`KafkaSettings`]: one place for client tuning (latency-first defaults);
//! - [`Producer`]: idempotent, `acks=all`, key = stream id, headers = type, version, event id
//!   and W3C trace context;
//! - [`admin::ensure_topics`]: idempotent topic creation at startup;
//! - [`dead_letter`]: poison messages with the reason and the original bytes;
//! - [`trace`]: trace context into and out of Kafka headers;
//! - [`close::close_consumer`]: closes a consumer without letting a stuck librdkafka close hang
//!   the shutdown;
//! - with feature `postgres`, [`engine`]: the exactly-once consumer engine (a batch, a
//!   [`engine::BatchHandler`] and the partition offsets in one PostgreSQL transaction), and
//!   [`transactional`]: the outbox sink and the projections' handler.

pub mod admin;
pub mod close;
pub mod dead_letter;
#[cfg(feature = "postgres")]
pub mod engine;
pub mod message;
pub mod metrics_names;
pub mod pack;
pub mod producer;
pub mod settings;
pub mod trace;
#[cfg(feature = "postgres")]
pub mod transactional;

pub use close::close_consumer;
pub use producer::{OutgoingMessage, Producer};
pub use settings::KafkaSettings;

/// Errors talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The client could not be created (bad configuration).
    #[error("kafka client configuration: {0}")]
    Config(String),
    /// A message was not acknowledged.
    #[error("delivery to {topic} failed: {reason}")]
    Delivery {
        /// Topic.
        topic: String,
        /// librdkafka's reason.
        reason: String,
    },
    /// An admin operation failed.
    #[error("kafka admin: {0}")]
    Admin(String),
    /// Other client errors (transient).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}
