//! Metric names owned by the bus, with descriptions.

/// Counter (label `consumer`): events applied.
pub const CONSUMER_APPLIED: &str = "hcp_consumer_applied_total";
/// Counter (label `consumer`): events skipped as already applied.
pub const CONSUMER_DUPLICATES: &str = "hcp_consumer_duplicates_skipped_total";
/// Counter (label `consumer`): messages sent to the dead-letter topic.
pub const CONSUMER_DEAD_LETTERED: &str = "hcp_consumer_dead_lettered_total";
/// Counter (label `consumer`): batches rolled back and retried.
pub const CONSUMER_RETRIES: &str = "hcp_consumer_batch_retries_total";
/// Histogram (label `consumer`): time to apply and commit one batch (seconds).
pub const CONSUMER_APPLY_DURATION: &str = "hcp_consumer_apply_duration_seconds";
/// Histogram (label `consumer`): events per applied batch.
pub const CONSUMER_BATCH_SIZE: &str = "hcp_consumer_batch_size";
/// Histogram (label `consumer`): broker timestamp of the message to its commit (seconds).
pub const PUBLISH_TO_APPLY: &str = "hcp_event_publish_to_apply_seconds";
/// Counter (label `topic`): messages the producer saw acknowledged.
pub const PRODUCED: &str = "hcp_kafka_produced_total";
/// Counter: events that travelled packed several to a message.
pub const PACKED_EVENTS: &str = "hcp_kafka_packed_events_total";

/// Registers descriptions with the global recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        CONSUMER_APPLIED,
        Unit::Count,
        "Events applied by a consumer."
    );
    describe_counter!(
        CONSUMER_DUPLICATES,
        Unit::Count,
        "Events skipped because the consumer had already applied them."
    );
    describe_counter!(
        CONSUMER_DEAD_LETTERED,
        Unit::Count,
        "Messages sent to the dead-letter topic with a reason."
    );
    describe_counter!(
        CONSUMER_RETRIES,
        Unit::Count,
        "Consumer batches rolled back after a transient failure and retried."
    );
    describe_histogram!(
        CONSUMER_APPLY_DURATION,
        Unit::Seconds,
        "Time to apply one batch and commit it with its positions."
    );
    describe_histogram!(
        CONSUMER_BATCH_SIZE,
        Unit::Count,
        "Events per consumer batch."
    );
    describe_histogram!(
        PUBLISH_TO_APPLY,
        Unit::Seconds,
        "From the broker timestamp of a message to the commit of its effects."
    );
    describe_counter!(
        PRODUCED,
        Unit::Count,
        "Messages acknowledged by the broker."
    );
    describe_counter!(
        PACKED_EVENTS,
        Unit::Count,
        "Events produced packed several to a Kafka message."
    );
}
