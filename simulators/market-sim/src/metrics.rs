//! Metric names (one place) and their descriptions.

/// Events published, by `type` (counter).
pub const EVENTS: &str = "hcp_marketsim_events_published_total";
/// Trace intervals published (counter).
pub const ROWS: &str = "hcp_marketsim_rows_published_total";
/// Simulated time of the last published interval, Unix seconds (gauge).
pub const SIM_TIME: &str = "hcp_marketsim_simulated_time_seconds";
/// Batches the broker did not acknowledge (counter; retried).
pub const SEND_FAILURES: &str = "hcp_marketsim_send_failures_total";

/// Describes every metric (call once at startup).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(
        EVENTS,
        Unit::Count,
        "Market and grid events published, by type"
    );
    describe_counter!(ROWS, Unit::Count, "Trace intervals published");
    describe_gauge!(
        SIM_TIME,
        Unit::Seconds,
        "Simulated time of the last published interval"
    );
    describe_counter!(
        SEND_FAILURES,
        Unit::Count,
        "Batches not acknowledged (retried)"
    );
}
