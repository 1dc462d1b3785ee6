//! Metric names owned by this crate, in one place, with their descriptions.

/// Histogram: time to append a batch of events (seconds).
pub const EVENT_APPEND_DURATION: &str = "hcp_event_append_duration_seconds";
/// Counter: events appended.
pub const EVENTS_APPENDED: &str = "hcp_events_appended_total";
/// Counter: append attempts rejected for a concurrency conflict.
pub const APPEND_CONFLICTS: &str = "hcp_event_append_conflicts_total";
/// Counter: events the relay saw acknowledged by the broker.
pub const OUTBOX_PUBLISHED: &str = "hcp_outbox_published_total";
/// Gauge: events waiting in the outbox at the last relay pass.
pub const OUTBOX_LAG: &str = "hcp_outbox_lag_events";
/// Histogram: time to publish one relay batch and have it acknowledged (seconds).
pub const OUTBOX_PUBLISH_DURATION: &str = "hcp_outbox_publish_duration_seconds";
/// Counter: relay batches that failed to publish (retried).
pub const OUTBOX_PUBLISH_FAILURES: &str = "hcp_outbox_publish_failures_total";

/// Registers descriptions (help text and units) with the global recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        EVENT_APPEND_DURATION,
        Unit::Seconds,
        "Time to append a batch of events to the store, including the outbox rows."
    );
    describe_counter!(
        EVENTS_APPENDED,
        Unit::Count,
        "Events appended to the store."
    );
    describe_counter!(
        APPEND_CONFLICTS,
        Unit::Count,
        "Appends refused because the stream moved (optimistic concurrency)."
    );
    describe_counter!(
        OUTBOX_PUBLISHED,
        Unit::Count,
        "Outbox events acknowledged by the broker and removed from the outbox."
    );
    describe_gauge!(
        OUTBOX_LAG,
        Unit::Count,
        "Events waiting in the outbox after the last relay pass."
    );
    describe_histogram!(
        OUTBOX_PUBLISH_DURATION,
        Unit::Seconds,
        "Time to publish one relay batch and receive every acknowledgement."
    );
    describe_counter!(
        OUTBOX_PUBLISH_FAILURES,
        Unit::Count,
        "Relay batches that failed to publish and were retried."
    );
}
