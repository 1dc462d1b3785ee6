//! The ingest's metric names, in one place, with their descriptions.

/// Counter: samples written, by kind (`asic`, `gpu`).
pub const SAMPLES: &str = "hcp_ingest_samples_total";
/// Counter: Kafka messages handled, by outcome (`written`, `ignored`, `dead_lettered`,
/// `duplicate`).
pub const MESSAGES: &str = "hcp_ingest_messages_total";
/// Histogram: messages per committed batch.
pub const BATCH_SIZE: &str = "hcp_ingest_batch_messages_size";
/// Histogram: time to write one batch in its transaction (seconds).
pub const BATCH_DURATION: &str = "hcp_ingest_batch_seconds";
/// Histogram: from the envelope's `occurred_at` to the commit of its rows (seconds).
pub const LATENCY: &str = "hcp_ingest_latency_seconds";
/// Counter: messages dead-lettered, by reason.
pub const DEAD_LETTERS: &str = "hcp_ingest_dead_letters_total";
/// Histogram: time of one rollup pass (seconds).
pub const ROLLUP_DURATION: &str = "hcp_ingest_rollup_seconds";
/// Counter: minutes rolled up.
pub const ROLLUP_MINUTES: &str = "hcp_ingest_rollup_minutes_total";
/// Counter: partitions created ahead and dropped by retention, by action.
pub const PARTITIONS: &str = "hcp_ingest_partitions_total";

/// Registers descriptions (help text and units) with the global recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        SAMPLES,
        Unit::Count,
        "Telemetry samples written, by kind (asic, gpu)."
    );
    describe_counter!(
        MESSAGES,
        Unit::Count,
        "Telemetry messages handled, by outcome."
    );
    describe_histogram!(
        BATCH_SIZE,
        Unit::Count,
        "Kafka messages per committed ingest batch."
    );
    describe_histogram!(
        BATCH_DURATION,
        Unit::Seconds,
        "Time to write one ingest batch."
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "From a message's occurred_at to the commit of its rows."
    );
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Telemetry messages dead-lettered, by reason."
    );
    describe_histogram!(ROLLUP_DURATION, Unit::Seconds, "Time of one rollup pass.");
    describe_counter!(ROLLUP_MINUTES, Unit::Count, "Site-minutes rolled up.");
    describe_counter!(
        PARTITIONS,
        Unit::Count,
        "Partitions created ahead or dropped, by action."
    );
}
