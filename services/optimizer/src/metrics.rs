//! Metric names of the optimizer, in one place, with their descriptions.

/// Counter: decisions emitted, by `site`.
pub const DECISIONS: &str = "hcp_optimizer_decisions_total";
/// Gauge: the current target power per `site`, MW at the meter.
pub const TARGET_MW: &str = "hcp_optimizer_target_mw";
/// Counter: demand-response events answered, by `outcome` (`met`, `missed`).
pub const DR_EVENTS: &str = "hcp_optimizer_dr_events_total";
/// Counter: normal decisions confirmed, by `outcome` (`met`, `missed`, `unmeasured`).
pub const CONFIRMATIONS: &str = "hcp_optimizer_confirmations_total";
/// Histogram: from the triggering event's time to the decision being appended (seconds).
pub const DECISION_LATENCY: &str = "hcp_optimizer_decision_latency_seconds";

/// Describes every metric (call once at startup).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(DECISIONS, "Optimizer decisions emitted, by site");
    describe_gauge!(TARGET_MW, "Current target site power, MW at the meter");
    describe_counter!(DR_EVENTS, "Demand-response events by outcome (met, missed)");
    describe_counter!(
        CONFIRMATIONS,
        "Normal decisions confirmed from telemetry, by outcome"
    );
    describe_histogram!(
        DECISION_LATENCY,
        Unit::Seconds,
        "From the triggering event to the appended decision"
    );
}
