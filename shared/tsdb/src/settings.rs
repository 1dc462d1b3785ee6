//! The ingest's settings (`[telemetry_ingest]` in a service's configuration).

use serde::Deserialize;

/// How the ingest batches and how often it maintains the tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Ingest instances in the consumer group (each with its own partitions, transactions and
    /// database connection): PostgreSQL's `COPY` runs on one core per connection.
    pub consumers: usize,
    /// Most Kafka messages written in one transaction (an ASIC batch holds about 100 samples).
    pub max_batch_messages: usize,
    /// How long to keep gathering a batch after its first message, ms.
    pub batch_linger_ms: u64,
    /// Wait before retrying a batch that failed on the database, ms.
    pub retry_backoff_ms: u64,
    /// How often closed minutes are rolled up, ms.
    pub rollup_interval_ms: u64,
    /// How long after a minute ends before it counts as closed (late racks), ms.
    pub rollup_grace_ms: u64,
    /// How often partitions are created ahead and old ones dropped, s.
    pub maintenance_interval_s: u64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            consumers: 1,
            max_batch_messages: 500,
            batch_linger_ms: 20,
            retry_backoff_ms: 500,
            rollup_interval_ms: 10_000,
            rollup_grace_ms: 5_000,
            maintenance_interval_s: 600,
        }
    }
}
